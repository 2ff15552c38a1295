"""Checkpoints and Hugging Face folders: finding, loading, saving, converting. Used by train.py,
sample.py and scripts/export_hf.py alike.

    find_checkpoint(path_or_run)     a .pt file from a file, a run folder, a run name, or the newest run
    run_folders(out_dir)             the run folders under an --out_dir, the one written to last first
    load_checkpoint / save_checkpoint   torch.load(weights_only=True) / an atomic torch.save
    Saves                            save_checkpoint in a child process while training goes on (Linux)
    check_tokenizer                  a tokenizer.json is the one a checkpoint was trained with
    load_model / save_model_only     a checkpoint <-> a model in eval mode (weights and settings only)
    init_state                       --init_from's weights for a model with router noise turned on or off
    rng_state / set_rng_state        every random generator, as plain data a checkpoint can hold
    export_hf / load_hf / import_hf  our model <-> a transformers Llama 4 folder (config.json,
                                     model.safetensors or its shards, tokenizer files)
    check_hf_tokenizer               a folder's tokenizer.json is the one its export recorded
                                     (config.json's tokenizer_sha256)

A checkpoint is a dict: "model" (state dict), "model_args" and "train_args" (settings as plain data),
"tokenizer" ({"file", "sha256"}), "preset", "wandb_id" and "wandb_entity", and for a resumable one
"optimizer", the open log window ("window": train.Window.to_checkpoint), the device and dtype it trained
on ("trained_on": {"device": "cuda:0", "dtype": "bfloat16"}) and the training loop's state
(train.LoopState: step, tokens, elapsed, best_val, ..., rng, data_position). A weights-only checkpoint
(save_model_only, an import) holds "model", "model_args", "step" and maybe "tokenizer".

How this departs from the obvious version:
- Loading never runs pickled code (weights_only=True); a file that is not a checkpoint of this
  project is named as such, without torch's advice to load it unsafely. A save that fails (a full
  disk) is one line, and the previous checkpoint stays as it was (storage.atomic_write).
- train.py's saves are written by a forked child process (Saves), not a thread: torch.save holds
  Python's lock as it writes.
- Our parameter names are transformers', so the HF state dict only gains prefixes ("model." for
  the text decoder, "language_model." in front of that with vision); the router noise projection
  is ours alone and is dropped on export (an imported model has router_noise off; a run from it
  may turn it on: init_state).
- A folder that this project did not write (e.g. Meta's, whose eos_token_id is not 0) imports
  too: the special-token ids come from its config, those it does not name from its tokenizer.json
  (ours name no <|image|> or tile token: a run trained with them elsewhere came back with other ids),
  and the rest take free ids.
"""

import contextlib
import copy
import dataclasses
import json
import os
import random
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

import config
import runtime
import storage
from config import SPECIAL_TOKENS, ModelArgs
from errors import CheckpointError, ConfigError, DataError, StorageError, first_line
from model import Llama4, build_from_state
from tokenizer import Tokenizer
from tokenizer import check_tokenizer as check_model_tokenizer

# ---------------------------------------------------------------------------------------------
# Checkpoint files


def latest_run(out_dir, option: str = "") -> Path:
    """The run under out_dir whose last.pt was written last; none is an error advising `option` (e.g.
    "--ckpt ", the caller's option for a path; "" for a positional one); so is an out_dir that is a file."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():  # (it was "no run with a last.pt under" it)
        raise CheckpointError(f"{out_dir} is a file, not a folder of runs; move it away, or pass {option}a "
                              ".pt file or a run folder")
    runs = [p.parent for p in Path(out_dir).glob("*/last.pt")]
    if not runs:
        raise CheckpointError(f"no run with a last.pt under {out_dir}/; train one first or pass {option}a "
                              ".pt file or a run folder")
    return max(runs, key=lambda p: (p / "last.pt").stat().st_mtime)


CHECKPOINTS = ("last.pt", "best.pt")  # a run's checkpoints: one makes a folder a run's, run.lock or not


def run_folders(out_dir) -> list[Path]:
    """The run folders under out_dir (storage.run_folder_files: train.py's, from its first file on; or
    holding a checkpoint, a run copied without its run.lock), the one written to last first."""
    runs = [p for p in Path(out_dir).glob("*")
            if any((p / name).exists() for name in CHECKPOINTS) or storage.run_folder_files(p)]
    return sorted(runs, key=_written, reverse=True)


def _written(folder: Path) -> float:
    """When a file in `folder` was last written (0 for a folder that cannot be read; a file gone
    meanwhile, a save's temporary renamed, is skipped)."""
    times = []
    try:
        for f in folder.iterdir():
            try:
                times.append(f.stat().st_mtime)
            except OSError:
                pass
    except OSError:
        pass
    return max(times, default=0.0)


def not_runs(folder, verb: str, example) -> None:
    """A folder of runs (an --out_dir) as an export's or import's destination is a CheckpointError (it
    would mix two kinds of folder), advising to `verb` ("export", "import") into a folder of its own
    such as example() (a function: an import's is worked out from the folders there)."""
    if runs := run_folders(folder):
        whose = "one run's export" if verb == "export" else "one run's"
        raise CheckpointError(f"{folder} is a folder of runs ({named_runs(runs)}), not {whose}; {verb} into "
                              f"a folder of its own, e.g. {example()}")


def named_runs(runs: list[Path], most: int = 5) -> str:
    """Up to `most` run names, and how many more there are."""
    more = f" and {len(runs) - most} more" if len(runs) > most else ""
    return ", ".join(p.name for p in runs[:most]) + more


NOT_SAVED_FIX = "pass another run folder or a .pt file, or train this run again"


def find_checkpoint(path_or_run: str, out_dir="checkpoints", not_saved_fix=NOT_SAVED_FIX,
                    option: str = "") -> Path:
    """A checkpoint file from a file, a run folder, a run name, or "" (the most recent run). A run
    folder its run made but wrote no checkpoint into (stopped before its first save, or still
    before it) is a ConfigError (exit status 2: the option is wrong, not a file) advising
    `not_saved_fix` (a string, or a function of that folder that gives one); so is a folder of runs
    (an --out_dir), advising `option` (e.g. "--ckpt ") and its newest run; `option` is also the
    advice when "" finds no run."""
    if problem := storage.too_long(option.strip() or "the checkpoint", path_or_run):  # (a traceback)
        raise CheckpointError(problem)
    p = Path(storage.expand_home(path_or_run)) if path_or_run else latest_run(out_dir, option)  # (a quoted ~)
    if not p.exists() and (Path(out_dir) / path_or_run).exists():
        p = Path(out_dir) / path_or_run
    if p.is_dir():
        last = p / "last.pt"
        if not last.exists() and (p / "best.pt").is_file():  # killed before its first last.pt
            raise CheckpointError(f"{p} has no last.pt, only best.pt; pass {p / 'best.pt'} to use it")
        if not last.exists() and not last.is_symlink():  # (a dangling link is named below)
            if storage.run_folder_files(p):  # (its run.lock: a train.json of gpu_check.py's makes none)
                fix = not_saved_fix(p) if callable(not_saved_fix) else not_saved_fix
                raise ConfigError(f"{p} holds no checkpoint yet (its run stopped before its first save, or "
                                  f"has not reached it); {fix}")
            runs = run_folders(p)
            if runs:  # --out_dir itself, not one of its runs
                raise ConfigError(f"{p} is a folder of runs, not a run; pass {option}{runs[0]} (the newest) "
                                  f"or another of its runs ({named_runs(runs)})")
            hf = ("; it is a Hugging Face folder: sample.py takes it as --hf, and scripts/export_hf.py "
                  "--import makes a checkpoint of it" if (p / "config.json").is_file() else "")
            raise CheckpointError(f"{p} is not a run folder (no last.pt in it); pass a .pt file or a run "
                                  f"folder{hf}")
        p = last
    if not p.is_file():
        kind = "a folder" if p.is_dir() else storage.special_kind(p)  # (a last.pt folder, --ckpt /dev/null:
        # "does not exist" said the wrong thing)
        problem = f"is {kind}, not a file" if kind else "does not exist"
        raise CheckpointError(f"checkpoint {p} {problem}; pass a .pt file or a run folder")
    return p


def other_checkpoint(path) -> Path | None:
    """The other of the last.pt and best.pt beside the checkpoint `path` (not best.pt when `path` is
    best.pt), where there is one."""
    path = Path(path)
    return next((other for other in (path.with_name("last.pt"), path.with_name("best.pt"))
                 if other.name != path.name and other.is_file()), None)


def _kept(path) -> str:
    """The advice's opening for a checkpoint that cannot be loaded: that it was left in place (not
    removed), said of a .pt file; a file of another kind (a tokenizer.json passed by mistake) was
    never a checkpoint to keep."""
    return "it was left in place: " if Path(path).suffix == ".pt" else ""


def other_fix(path) -> str:
    """The advice when the checkpoint `path` cannot be loaded: its run's other checkpoint, if any."""
    other = other_checkpoint(path)
    return _kept(path) + (f"pass {other} instead" if other else "pass another checkpoint")


def resume_fix(path, eval_only: bool = False) -> str:
    """The advice when the checkpoint `path` cannot be resumed (or, `eval_only`, evaluated: --eval_only
    takes its checkpoint from --resume too): the other of its folder's last.pt and best.pt where
    there is one (not best.pt when it is best.pt that failed), else a new run (or another checkpoint)."""
    if other := other_checkpoint(path):
        if eval_only:
            return f"{_kept(path)}pass --resume {other} to evaluate that one"
        return f"{_kept(path)}pass --resume {other}, or start a new --run"
    if eval_only:
        return f"{_kept(path)}evaluate another checkpoint with --resume (a .pt file or a run folder)"
    return f"{_kept(path)}start a new --run, or pass --resume another checkpoint"


def load_checkpoint(path, fix: str | None = None) -> dict:
    """torch.load onto the CPU with weights_only=True: tensors and plain data only, no pickled
    code runs. A file that is no checkpoint is a CheckpointError advising `fix` (resume_fix by default)."""
    fix = fix or resume_fix(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, a pickle with code in it ...
        if runtime.out_of_memory(e):  # a good file too large for memory: not "corrupt"
            raise
        raise CheckpointError(f"{path} {_unreadable(path, e)}; {fix}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is corrupt or unreadable (not a checkpoint of this project: no model "
                              f"or settings in it); {fix}")
    weights = ckpt["model"]
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{path} is corrupt or unreadable (not a checkpoint of this project: its model "
                              f"is not a dict of tensors); {fix}")
    try:  # settings this version cannot build: the file's fault, not an option's (exit status 1, not 2)
        config.from_dict(ModelArgs, ckpt["model_args"], where="model settings")
    except ConfigError as e:
        raise CheckpointError(f"{path} is damaged or from another version of this project ({e}); "
                              f"{fix}") from None
    return ckpt


def _unreadable(path, e: Exception) -> str:
    """Why torch.load failed, in a few words, without torch's advice to load the file with
    weights_only=False (which runs whatever code a file of unknown origin holds)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as oe:
        return f"cannot be read ({oe.strerror})"
    if head != b"PK\x03\x04":
        return "is corrupt or not a checkpoint at all (not a zip archive, which torch.save writes)"
    if not zipfile.is_zipfile(path):  # (a zip's start without its end: the central directory is last)
        return (f"is cut short ({os.path.getsize(path):,} bytes, a zip archive without its end: a save or "
                "a copy that did not finish)")
    if "weights_only" in str(e) or "Weights only load failed" in str(e):
        return ("is not a checkpoint of this project (it holds Python objects, which ours never do; it "
                "was not loaded, as that could run code)")
    return f"is corrupt or unreadable ({first_line(e).split('. ')[0]})"


def save_checkpoint(path, state: dict, fix: str = storage.OUT_FIX) -> None:
    """An atomic torch.save; a full disk is a StorageError that leaves the previous file intact."""
    storage.atomic_write(path, lambda f: torch.save(state, f), fix)


# A checkpoint written by a child process (Linux: fork), so that training goes on as the file is
# written: torch.save holds Python's lock as it writes (a thread writing scout-128m's 1.2 GB left the
# training thread 14% of its time), and a save took 3.6-4 s on our CPU and about 2 s on an H200 (the
# gap after best.pt's first save in img/gpu/log.txt), where the CUDA defaults evaluate every 5 s or so
# of training (writing best.pt when it improves) and save last.pt every 10 s (train.in_background: by
# default on CUDA alone)
BACKGROUND = sys.platform == "linux"


class Saves:
    """save_checkpoint, in the background where a child process can be forked (BACKGROUND): the
    child writes the state as it was when `save` was called (the fork's copy of the memory, tensors on
    a GPU copied to the CPU first), with signals ignored (Ctrl-C and torchrun's SIGTERM reach a whole
    process group: a save is never cut short by them), and keeps the parent's files open, its run
    folder's lock included (a run killed outright stays locked until its last save is complete). A
    save that fails there raises its one line (a full disk's, the previous file intact) at `wait`:
    before the next save and at the end of the run. Where no child can be forked (memory, process
    limits), or elsewhere than Linux, the save is done at once."""

    def __init__(self, background: bool | None = None):
        self.background = BACKGROUND if background is None else background
        self.pending = []  # (key, path, pid, read end of the child's pipe): saves being written

    def save(self, path, state: dict, key=None) -> None:
        """Begin writing `state` at `path`, once an earlier save to it is complete (else the older of
        two could be renamed into place last); `key` (a step) marks saves of one state: wait(but=key)
        leaves them be."""
        self._wait([p for p in self.pending if Path(p[1]) == Path(path)])
        if self.background:
            host = to_host(state)  # (what the child writes; a tensor on the CPU is the fork's copy)
            child = storage.fork_call(lambda: save_checkpoint(path, host))  # (its end: child_result)
            if child is not None:
                self.pending.append((key, path, *child))
                return
        save_checkpoint(path, state)

    def busy(self) -> bool:
        """Whether a save begun is still being written."""
        return any(storage.running(pid) for _, _, pid, _ in self.pending)

    def writing(self, path) -> bool:
        """Whether a save to `path` is under way."""
        return any(Path(p[1]) == Path(path) for p in self.pending)

    def wait(self, but=None) -> None:
        """Until every save begun (but those of key `but`) is complete; the first that failed raises its
        StorageError."""
        self._wait([p for p in self.pending if but is None or p[0] != but])

    def _wait(self, done: list) -> None:
        self.pending = [p for p in self.pending if p not in done]
        results = [child_result(pid, fd, path) for _, path, pid, fd in done]  # (each waited for)
        if failed := [r for r in results if r]:
            raise StorageError(failed[0])

    def finish(self, log) -> None:
        """wait, by a run that is ending anyway (an error, a signal): a failed save is a line, not an
        error over the one under way."""
        try:
            self.wait()
        except StorageError as e:
            log(f"{e}")


def to_host(obj):
    """A checkpoint's dict with each tensor not on the CPU copied there (dicts, lists and tuples
    rebuilt): what a child process writes (it cannot use the GPU; the device's weights change at the
    next step). A tensor on the CPU is left as it is: the fork copies the memory. A dict keeps its
    type and attributes (a state dict's OrderedDict and its _metadata, the modules' versions): the
    file is the one a save made at once writes, but that a GPU's tensors are recorded as the CPU's
    (load_checkpoint maps every tensor to the CPU)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.to("cpu")
    if isinstance(obj, dict):
        host = copy.copy(obj)
        for k, v in obj.items():
            host[k] = to_host(v)
        return host
    if type(obj) in (list, tuple):
        return type(obj)(to_host(v) for v in obj)
    return obj


def child_result(pid: int, read: int, path) -> str | None:
    """Wait for the child writing `path` (storage.fork_call's): None where it succeeded, else its
    failure's line (a StorageError's own)."""
    how, text = storage.child_end(pid, read)
    if how is None:
        return None
    if text.startswith("cannot write"):
        return text
    return (f"cannot write {path}: the process writing it failed ({text or how}); the previous "
            f"{Path(path).name}, if any, is intact; resume from it")


TOKENIZER_FIX = "put back the tokenizer.json of the run that wrote the checkpoint"


def check_tokenizer(tok: Tokenizer, tok_path, ckpt: dict, ckpt_path, fix: str = TOKENIZER_FIX) -> None:
    """`tok` (read from tok_path) must be the tokenizer the checkpoint was trained with: the same
    sha256 where the checkpoint records one (train.py always does), the vocabulary size and
    special-token ids of the checkpoint's model in any case. Train, --eval_only, sample.py and the
    Hugging Face export all check this way; the advice is about the tokenizer, never the model's
    settings (a checkpoint's model cannot change)."""
    expected = (ckpt.get("tokenizer") or {}).get("sha256")
    if expected and expected not in (tok.hash, tok.legacy_hash):
        raise CheckpointError(f"{tok_path} is not the tokenizer {ckpt_path} was trained with (sha256 "
                              f"{tok.hash[:12]} != {expected[:12]}); {fix}")
    model_args = config.from_dict(ModelArgs, ckpt["model_args"], where=str(ckpt_path))
    try:
        check_model_tokenizer(tok, model_args, str(tok_path), model=f"the model of {ckpt_path}", fix=fix)
    except DataError as e:
        raise CheckpointError(str(e)) from None


def load_model(path, device="cpu", dtype: torch.dtype | None = None) -> tuple[Llama4, dict]:
    """A checkpoint -> (model in eval mode on `device`, weights in `dtype` (None: as saved), the
    checkpoint's other contents, on the CPU: the optimizer's moments, twice the weights, never
    reach the GPU)."""
    fix = other_fix(path)
    ckpt = load_checkpoint(path, fix)
    model_args = config.from_dict(ModelArgs, ckpt["model_args"], where=str(path))
    state = to_device(ckpt.pop("model"), device, dtype)
    return build(model_args, state, device, path, fix).eval(), ckpt


def to_device(state: dict, device, dtype: torch.dtype | None) -> dict:
    """Each tensor moved to `device`, a floating one cast to `dtype` first, where it was read (the
    CPU): the GPU never holds the fp32 weights of a model it runs in bf16, which took 1.5 times
    the memory of fp32 weights alone while model.to(bf16) made its copy."""
    cast = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in state.items()}
    return {k: v.to(device) for k, v in cast.items()}


def build(model_args: ModelArgs, state: dict, device, where, fix: str, model: Llama4 | None = None) -> Llama4:
    """build_from_state (or model.load_state_dict, where the model is built already), with weights
    that do not fit the settings (missing, extra or misshapen: a damaged or hand-edited file) a
    CheckpointError naming the file."""
    try:
        if model is None:
            return build_from_state(model_args, state, device)
        model.load_state_dict(state)
        return model
    except RuntimeError as e:  # load_state_dict lists every problem, one per line
        raise CheckpointError(f"{where}: its weights do not fit its settings ({weight_problems(e)}); "
                              f"{fix}") from None


def init_state(model: Llama4, state: dict, saved_noise: bool) -> dict:
    """--init_from's weights for `model`, whose router noise (model.args.router_noise) may differ
    from the checkpoint's (`saved_noise`): turned on (an import, which has none), the noise projection
    is the model's own, as init_weights left it (zero weight, noise std ROUTER_NOISE_INIT whatever the
    input: the routing is the checkpoint's up to that noise, and exactly it in eval()); turned off, the
    file's projection is dropped (a training extra no other weight reads). Every other weight is the
    file's, loaded strictly: a file that holds a projection its settings deny is still refused."""
    if model.args.router_noise == saved_noise:
        return state
    if not model.args.router_noise:
        return {k: v for k, v in state.items() if ".router_noise." not in k}
    return {**state, **{k: v for k, v in model.state_dict().items() if ".router_noise." in k}}


MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
                      r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)")


def weight_problems(e: RuntimeError, room: int = 300) -> str:
    """load_state_dict's problems (one a line) in about `room` characters, none cut in the middle (a
    shape cut at 300 characters read "torch.Size(["): a misshapen weight as its name and both shapes,
    missing and unexpected keys the first few, and how many more problems there are."""
    lines = [line.strip().rstrip(".") for line in str(e).splitlines()[1:] if line.strip()] or [first_line(e)]
    said, left = [], len(lines)
    for line in lines:
        if m := MISMATCH.match(line):
            line = f"{m[1]} is {m[2]} in the file, {m[3]} by the settings"
        elif len(line) > room and '"' in line:  # Missing key(s) in state_dict: "a", "b", ...
            head, keys = line.split('"')[0].rstrip(), line.split('"')[1::2]
            n = 1
            while n < len(keys) and sum(len(k) + 4 for k in keys[:n + 1]) < room // 2:
                n += 1
            line = f"{head} " + ", ".join(f'"{k}"' for k in keys[:n]) + \
                (f" and {len(keys) - n} more" if n < len(keys) else "")
        elif len(line) > room:  # (none of load_state_dict's kinds: cut, and said to be)
            line = line[:room] + "..."
        if said and sum(map(len, said)) + len(line) > room:
            break
        said.append(line)
        left -= 1
    return "; ".join(said) + (f"; and {left} more problem{'s' * (left > 1)}" if left else "")


def save_model_only(model: Llama4, path, tokenizer_sha256: str | None = None) -> None:
    """A checkpoint holding only weights and settings (for sample.py, --eval_only and export)."""
    storage.make_folder(Path(path).parent, "write it elsewhere")
    state = {"model": model.state_dict(), "model_args": config.to_dict(model.args), "step": 0}
    if tokenizer_sha256:
        state["tokenizer"] = {"file": "tokenizer.json", "sha256": tokenizer_sha256}
    save_checkpoint(path, state, fix="write it elsewhere")


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    # (python_pos is gauss_next, not a position: the name is historical; the MT position ends "python")
    return {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
            "numpy": np_state["state"]["key"].tolist(), "numpy_pos": int(np_state["state"]["pos"]),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    random.setstate((3, tuple(s["python"]), s["python_pos"]))
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np.array(s["numpy"], dtype=np.uint32), "pos": s["numpy_pos"]},
                         "has_gauss": 0, "gauss": 0.0})
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():  # (saved where more GPUs were visible: the first ones)
        torch.cuda.set_rng_state_all(s["cuda"][:torch.cuda.device_count()])


# ---------------------------------------------------------------------------------------------
# Hugging Face folders

HF_FIX = "export the folder again with scripts/export_hf.py"
TOP_LEVEL = {"boi_token_index", "eoi_token_index", "image_token_index"}  # Llama4Config, not text
# transformers' values (Llama4TextConfig, Llama4VisionConfig; a RoPE base, the class's default_theta) for
# each key args_from_hf reads, by ModelArgs' `hf` names, where a config.json leaves it out: ours read a
# hand-written config as another model, silently (64-token chunks, 4 vision heads for 16, a 256-token
# context). Special-token ids are not here: one left out takes a free id (_free_special_ids).
HF_DEFAULTS = {
    "vocab_size": 202048, "hidden_size": 5120, "num_hidden_layers": 48, "num_attention_heads": 40,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
    "num_local_experts": 16, "num_experts_per_tok": 1, "interleave_moe_layer_step": 1,
    "no_rope_layer_interval": 4, "max_position_embeddings": 131072, "rope_parameters.rope_theta": 500000.0,
    "use_qk_norm": True, "attention_chunk_size": 8192, "attn_temperature_tuning": True, "floor_scale": 8192,
    "attn_scale": 0.1, "rms_norm_eps": 1e-5, "initializer_range": 0.02, "router_aux_loss_coef": 0.001,
    "vision.hidden_size": 768, "vision.num_hidden_layers": 34, "vision.num_attention_heads": 16,
    "vision.intermediate_size": 5632, "vision.image_size": 448, "vision.patch_size": 14,
    "vision.pixel_shuffle_ratio": 0.5, "vision.projector_input_dim": 4096,
    "vision.projector_output_dim": 4096, "vision.rope_parameters.rope_theta": 10000.0,
}
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor")  # (transformers has no default for these)


def _set(d: dict, dotted: str, value):
    *path, last = dotted.split(".")
    for key in path:
        d = d.setdefault(key, {})
    d[last] = value


def hf_config(model_args: ModelArgs, dtype: str = "float32") -> dict:
    """config.json for Llama4ForCausalLM, or Llama4ForConditionalGeneration with vision; `dtype`, that
    of the weights (torch_dtype: what from_pretrained(dtype="auto") loads them as)."""
    text, vision, top = {}, {}, {}
    for f in dataclasses.fields(ModelArgs):
        name = f.metadata.get("hf")
        if name is None:
            continue
        value = getattr(model_args, f.name)
        if name.startswith("vision."):
            _set(vision, name.removeprefix("vision."), value)
        elif name in TOP_LEVEL:
            top[name] = value
        else:
            _set(text, name, value)
    rope = text["rope_parameters"]
    if model_args.rope_scaling == "none":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": rope["rope_theta"]}
    vision["rope_parameters"]["rope_type"] = "default"
    text.update(model_type="llama4_text", architectures=["Llama4ForCausalLM"], head_dim=model_args.head_dim,
                bos_token_id=model_args.eos_id, hidden_act="silu", attention_bias=False,
                tie_word_embeddings=False, torch_dtype=dtype)
    if not model_args.vision:
        return text
    vision.update(model_type="llama4_vision_model", vision_output_dim=model_args.projector_output_dim,
                  num_channels=3, hidden_act="gelu")
    text.pop("architectures")
    return {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
            "text_config": text, "vision_config": vision, "tie_word_embeddings": False,
            "torch_dtype": dtype, **top}


def hf_state_dict(model: Llama4) -> dict:
    """Our state dict under HF's names (router noise dropped); an import's tied output layer (its
    embedding, one tensor) is written twice, as config.json says tie_word_embeddings false (safetensors
    refuses tensors that share memory)."""
    text_prefix = "language_model." if model.args.vision else ""
    out = {}
    for name, tensor in model.state_dict().items():
        if ".router_noise." in name:
            continue
        if name.startswith(("vision_model.", "multi_modal_projector.")):
            out[name] = tensor
        elif name.startswith("lm_head."):
            out[text_prefix + name] = tensor
        else:
            out[text_prefix + "model." + name] = tensor
    out, seen = {k: v.detach().contiguous().cpu() for k, v in out.items()}, set()
    for name, tensor in out.items():
        if tensor.untyped_storage().data_ptr() in seen:
            out[name] = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
    return out


EXPORT_FILES = ("tokenizer.json", "tokenizer_config.json", "model.safetensors", "generation_config.json",
                "config.json")


def export_hf(model: Llama4, out_dir, tokenizer_path=None, replace: bool = False) -> Path:
    """Write config.json, generation_config.json, model.safetensors and (given a tokenizer.json) the
    tokenizer files, with the tokenizer's sha256 in config.json ("tokenizer_sha256", which loading
    checks). A folder that already holds an export, or another tokenizer.json (a run folder's), is
    refused unless `replace`; a training run's folder always is (an export there mixed HF files into
    the run's): check_export_folder. The export it replaces goes whole: its shards and index too (a
    re-save by transformers), not the folder's other files (a tokenizer_config.json without a
    tokenizer.json among them: _dropped_tokenizer_files).

    The files are written into a hidden .tmp-export-* folder in out_dir, then renamed into place,
    config.json last, with Ctrl-C and SIGTERM put off until all are there: a full disk or an
    interrupt leaves the folder as it was or the whole new export, never a mix (the hidden folder a
    kill -9 leaves is removed by the next export there, once its process is gone; one killed between
    its renames, or whose rename failed half way, is kept, marked, until an export there completes,
    and load_hf refuses the mix). The
    folders made for an export that fails or is interrupted are removed too, where they are left empty."""
    held = check_export_folder(out_dir, tokenizer_path, replace)
    made, fix = storage.missing_folder(out_dir), "export it elsewhere"
    out = storage.make_folder(out_dir, fix)
    try:
        _place_export(model, out, tokenizer_path, held, made is None, fix)
    except BaseException:  # (an interrupt, a full disk: a new folder was left behind, empty)
        storage.remove_made(out, made)
        raise
    return out


def _place_export(model: Llama4, out: Path, tokenizer_path, held: list[str], existed: bool, fix: str) -> None:
    """export_hf's files, staged in a hidden folder in `out` and renamed into place (held:
    check_export_folder's list of what they replace; existed: whether `out` was there before)."""
    import shutil
    import tempfile
    _sweep_stages(out)
    kept = f"{out} is as it was" if existed else "nothing was exported"
    try:
        stage = Path(tempfile.mkdtemp(dir=out, prefix=f".tmp-export-{os.getpid()}-"))
    except OSError as e:  # (named as what failed: no file of the export was begun)
        why = storage.REASONS.get(e.errno) or e.strerror or str(e)
        raise StorageError(f"cannot create the hidden folder {out / '.tmp-export-*'} the export is written "
                           f"into first: {why}; {storage.advice(e, fix)} ({kept})") from None
    wrote = set(EXPORT_FILES) if tokenizer_path is not None and Path(tokenizer_path).exists() else \
        set(EXPORT_FILES) - {"tokenizer.json", "tokenizer_config.json"}
    dropped = _dropped_tokenizer_files(out, held) if len(wrote) < len(EXPORT_FILES) else set()
    mixed = False  # (whether a failed rename left new files beside the old export's config.json)
    try:
        try:
            _write_export(model, stage, tokenizer_path, fix)
            storage.atomic_write(stage / RENAMING, b"", fix)  # (a kill -9 from here on: _mixed)
        except StorageError as e:  # named as the file it was to become (the hidden folder is gone)
            raise StorageError(f"{str(e).replace(str(stage), str(out))} ({kept})") from None
        changed = False  # (whether the folder holds any file of this export yet)
        with storage.signals_put_off():
            for name in EXPORT_FILES:
                try:
                    if name == "config.json" and held:  # the replaced export's other files go first
                        for path in _other_export_files(out):
                            path.unlink(missing_ok=True)
                            changed = True
                    if name in wrote:  # (a staged file gone is an error, not a file this export lacks)
                        os.replace(stage / name, out / name)
                        changed = True
                    elif name in dropped:  # the replaced export's tokenizer, when this one has none
                        (out / name).unlink(missing_ok=True)
                        changed = True
                except OSError as e:  # (a rename that fails half way: a full disk, a quota, a read-only
                    # folder; the stage stays marked, as a kill -9's does, so load_hf refuses the mix)
                    said = _mark_failed(stage, out) if changed else kept
                    mixed = changed and (out / "config.json").exists()
                    raise StorageError(f"{storage.write_error(out / name, e, fix)} ({said})") from None
            storage.sync_folder(out)
        _sweep_stages(out, done=True)  # (the mix a killed export left is gone: its mark goes too)
    finally:
        if mixed:  # the stage stays, marked (its other files go: the space); where FAILED could not be
            _sweep_stages(out)  # put, whole, marked RENAMING: a mix once this process is gone (_mixed)
        else:
            shutil.rmtree(stage, ignore_errors=True)


def _mark_failed(stage: Path, out: Path) -> str:
    """Mark a stage whose renames stopped half way beside an old export's config.json (FAILED: _mixed,
    whatever its process), and say what `out` holds. (Without one, no model is read from `out`.)"""
    if not (out / "config.json").exists():
        return f"{out} holds part of this export, without its config.json: export into it again with --force"
    with contextlib.suppress(OSError):
        os.replace(stage / RENAMING, stage / FAILED)
    return f"{out} holds a mix of two exports: export into it again with --force"


OTHER_TOKENIZER = "another tokenizer.json (a run's checkpoints may need it)"  # (check_export_folder's word)


def _dropped_tokenizer_files(out: Path, held: list[str]) -> set[str]:
    """The tokenizer files an export without a tokenizer removes from `out`, which it replaces (held:
    check_export_folder's list): those the replaced export wrote (its config.json records a
    tokenizer_sha256), and a tokenizer.json check_export_folder named (another one: --force removes
    it) with the tokenizer_config.json that configured it (left, it described a tokenizer no longer
    there: transformers' AutoTokenizer failed on it). A tokenizer_config.json without a tokenizer.json
    is the folder's own, named nowhere: it is left, not removed."""
    if not held:
        return set()
    if recorded_tokenizer(out) is not None or OTHER_TOKENIZER in held:
        return {"tokenizer.json", "tokenizer_config.json"}
    return set()


def _other_export_files(out: Path) -> list[Path]:
    """The files of an export in `out` that ours do not hold, and so would not replace: what
    transformers' save_pretrained adds (special_tokens_map.json) and its weights in shards
    (model.safetensors.index.json, the model-*-of-*.safetensors it lists)."""
    index = out / "model.safetensors.index.json"
    names = {"special_tokens_map.json", index.name}
    names |= {p.name for p in out.glob("model-*-of-*.safetensors")}
    try:
        listed = json.loads(index.read_bytes())["weight_map"].values()
        names |= {n for n in listed if isinstance(n, str) and n.endswith(".safetensors")
                  and Path(n).name == n}  # (a file of this folder, not one a path in the index names)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none there, or not an index
        pass
    return [out / n for n in sorted(names - set(EXPORT_FILES)) if (out / n).is_file()]


def check_export_folder(out_dir, tokenizer_path=None, replace: bool = False, name: str = "NAME") -> list[str]:
    """What an export into out_dir would replace (an export, another tokenizer.json): a CheckpointError
    unless `replace`. A training run's folder is no export's (a run's best.pt exported into its own
    folder, or another run's named as the destination: HF files among the run's), nor is a folder of
    runs (an --out_dir: HF files among the run folders): a CheckpointError, --force or not (`name`:
    the run exported, for the advice). scripts/export_hf.py asks before it loads the checkpoint (it
    may be large)."""
    run = storage.run_files(out_dir, but=("tokenizer.json",))
    if run:
        raise CheckpointError(f"{out_dir} is a training run's folder (it holds {run[0]}); export into a "
                              f"folder of its own, e.g. hf_export/{Path(out_dir).resolve().name}")
    # (checkpoints/demo into checkpoints: HF files among the run folders)
    not_runs(out_dir, "export", lambda: f"hf_export/{name}")
    held = [f"a model ({n})" for n in ("config.json", "model.safetensors", "model.safetensors.index.json")
            if (Path(out_dir) / n).exists()]
    writes_tokenizer = tokenizer_path is not None and Path(tokenizer_path).exists()
    settings = ["generation_config.json"] + ["tokenizer_config.json"] * writes_tokenizer
    held += [f"an export's {n}" for n in settings if (Path(out_dir) / n).exists()]  # (the files it writes)
    theirs = Path(out_dir) / "tokenizer.json"
    if tokenizer_path is None:  # this export has none: an old export's own may go, not a run's
        same = _exported_with(theirs)
    else:
        same = theirs.exists() and same_tokenizer(Path(tokenizer_path), theirs)
    if theirs.exists() and not same:
        held.append(OTHER_TOKENIZER)
    if held and not replace:  # (an export without a tokenizer removes another one: it said "replace")
        verb = "remove" if tokenizer_path is None and held[0] == OTHER_TOKENIZER else "replace"
        raise CheckpointError(f"{out_dir} already holds {held[0]}; pass --force to {verb} it, or export to "
                              "another folder")
    return held


RENAMING = ".renaming"  # in an export's stage from when all its files are written until it ends
FAILED = ".failed"  # instead, in the stage of one whose renames failed half way (it is over, not killed)


def _mixed(stage: Path) -> bool:
    """Whether a killed export's stage (its process gone), or a failed one's, marks its folder as a
    mix of two exports: it had begun renaming its files into place, and config.json, renamed last,
    is still there."""
    return (stage / "config.json").exists() and ((stage / FAILED).exists() or (stage / RENAMING).exists()
                                                 and _gone(stage.name.split("-")[2]))


def _sweep_stages(out: Path, done: bool = False) -> None:
    """Remove the hidden .tmp-export-PID-* folders that exports killed (kill -9) left in out: those
    whose process is gone (not another export's at work there, nor a folder named otherwise). One
    killed as it renamed its files (_mixed: load_hf refuses the folder) keeps its mark until an
    export there is `done`: its other files go (the space)."""
    import shutil
    for stage in out.glob(".tmp-export-*-*"):
        if not done and _mixed(stage):
            for path in stage.iterdir():
                if path.name not in (RENAMING, FAILED, "config.json"):
                    with contextlib.suppress(OSError):
                        path.unlink()
        elif _gone(stage.name.split("-")[2]) or (stage / FAILED).exists():
            shutil.rmtree(stage, ignore_errors=True)


def _gone(pid: str) -> bool:
    """Whether no process has the id `pid` (as a stage's name holds it): False for a live one, another
    user's too, and for text that is no pid (a file not of ours)."""
    try:
        os.kill(int(pid), 0)
    except ValueError:  # not one of ours
        return False
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


# an import's stage (_place_import), or atomic_write's temporary of one: .tmp-RANDOM-.tmp-import-PID-NAME
IMPORT_STAGE = re.compile(r"(?:\.tmp-[a-z0-9_]+-)?\.tmp-import-(\d+)-")


def _sweep_import_stages(folder: Path) -> None:
    """Remove the hidden .tmp-import-PID-* files that imports killed (kill -9) before or between their
    renames left in `folder` (_place_import), with the temporaries of their writes: those whose process
    is gone (not another import's at work there, nor a file named otherwise)."""
    for stage in folder.glob(".tmp-*"):
        match = IMPORT_STAGE.match(stage.name)
        if match and not stage.is_dir() and _gone(match[1]):
            with contextlib.suppress(OSError):  # (gone meanwhile, or a read-only folder: the import says so)
                stage.unlink()


def _exported_with(tok: Path) -> bool:
    """Whether tok (a folder's tokenizer.json) is the one the folder's export recorded (config.json's
    tokenizer_sha256), not a run's own."""
    sha = recorded_tokenizer(tok.parent)
    try:
        return sha is not None and Tokenizer.load(tok, exact=False).hash == sha
    except DataError:  # not ours to read
        return False


def recorded_tokenizer(folder) -> str | None:
    """The tokenizer sha256 an HF folder's config.json records (our exports do); None without one."""
    try:
        return json.loads((Path(folder) / "config.json").read_bytes()).get("tokenizer_sha256")
    except (OSError, ValueError, AttributeError):  # no export there, or not a settings object
        return None


def with_story_start(tokenizer_json: bytes, start_id: int) -> bytes:
    """The tokenizer.json with a post-processor that puts the model's eos_id (<|endoftext|>) before a
    text, as every story began in training and as sample.py prompts: transformers'
    tokenizer("the cat") runs it (ours never does: encode passes add_special_tokens=False). Without
    it, transformers users prompted the model mid-story. The tokenizer's hash leaves the
    post-processor out: it is the same tokenizer (tokenizer.identity)."""
    import tokenizers
    tok = tokenizers.Tokenizer.from_str(tokenizer_json.decode())
    start = tok.id_to_token(start_id)
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{start} $A", pair=f"{start} $A {start} $B:1", special_tokens=[(start, start_id)])
    fields = json.loads(tokenizer_json)  # the file as it was, but for the post-processor
    fields["post_processor"] = json.loads(tok.to_str())["post_processor"]
    return json.dumps(fields, ensure_ascii=False, indent=2).encode()


def _write_export(model: Llama4, out: Path, tokenizer_path, fix: str) -> None:
    """export_hf's files, into an empty folder."""
    from safetensors.torch import save
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # (an import's bf16: not float32)
    cfg = hf_config(model.args, dtype)
    if tokenizer_path is not None and Path(tokenizer_path).exists():
        cfg["tokenizer_sha256"] = Tokenizer.load(tokenizer_path, exact=False).hash
        tokenizer_json = with_story_start(Path(tokenizer_path).read_bytes(), model.args.eos_id)
        storage.atomic_write(out / "tokenizer.json", tokenizer_json, fix)
        storage.save_json(out / "tokenizer_config.json", {  # (left padding: a padded batch generates;
            # split_special_tokens: a typed "<|endoftext|>" is text, as in a training story and a prompt)
            "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIAL_TOKENS["eos_id"],
            "bos_token": SPECIAL_TOKENS["eos_id"], "pad_token": SPECIAL_TOKENS["pad_id"],
            "padding_side": "left", "model_max_length": model.args.max_seq_len,
            "clean_up_tokenization_spaces": False, "split_special_tokens": True}, fix)
    weights = save(hf_state_dict(model), metadata={"format": "pt"})
    storage.atomic_write(out / "model.safetensors", weights, fix)
    storage.save_json(out / "generation_config.json", hf_generation_config(model.args), fix, sort_keys=False)
    storage.save_json(out / "config.json", cfg, fix, sort_keys=False)


def hf_generation_config(model_args: ModelArgs) -> dict:
    """generation_config.json: transformers' generate as sample.py decodes by default (SampleArgs:
    sampling at its temperature, top_k and top_p; without them generate was greedy), stopping at
    <|endoftext|> and never drawing the special tokens no training target holds (ModelArgs.never_drawn;
    without it an undertrained model's story took "<|patch|>" there, not in sample.py). The length is
    left to generate's max_new_tokens (sample.py's 256 could run past a smaller model's context).
    A model whose RoPE layers attend within chunks of 1 token decodes with transformers' static cache:
    its default one keeps every key of such a layer where it should keep none (transformers 5.23,
    DynamicSlidingWindowLayer: `[-window + 1:]` is `[-0:]`), and generate told another story."""
    ours = config.SampleArgs()
    settings = {"bos_token_id": model_args.eos_id, "eos_token_id": model_args.eos_id,
                "pad_token_id": model_args.pad_id, "suppress_tokens": model_args.never_drawn,
                "do_sample": not ours.greedy, "temperature": ours.temperature, "top_k": ours.top_k,
                "top_p": ours.top_p}
    if model_args.attn_chunk_size == 1 and model_args.nope_every != 1:  # (1: every layer NoPE, no chunk)
        settings["cache_implementation"] = "static"
    return settings


def _free_special_ids(values: dict, tokenizer_ids: dict | None = None) -> None:
    """Special-token ids: the folder's where its config names them; else its tokenizer's (tokenizer_ids:
    name -> id, where free: config.json names no <|image|> or tile token, and a text model's none of the
    image ones), else the first free ids."""
    for name in ("eos_id", "pad_id"):
        value = values.get(name)
        if isinstance(value, list):  # Meta's configs list several end tokens: the first ends a story
            values[name] = value[0] if value else None
    for name in SPECIAL_TOKENS:
        if values.get(name) is None:
            values.pop(name, None)
    taken = {values[n] for n in SPECIAL_TOKENS if n in values}
    vocab = values["vocab_size"]
    for name, i in (tokenizer_ids or {}).items():
        if name not in values and isinstance(vocab, int) and 0 <= i < vocab and i not in taken:
            values[name] = i
            taken.add(i)
    free = (i for i in range(vocab) if i not in taken)
    for name in SPECIAL_TOKENS:
        if name not in values:
            values[name] = next(free, None)
            if values[name] is None:
                raise ConfigError(f"vocab_size {vocab} is too small: no free id is left for "
                                  f"{SPECIAL_TOKENS[name]}; a vocabulary must hold all {len(SPECIAL_TOKENS)} "
                                  "special tokens")


def hf_rope(text: dict) -> dict:
    """A text (or vision) config's RoPE settings as transformers reads them: `rope_parameters`, or, in folders
    saved before transformers 5 (the released Llama 4 ones), `rope_scaling` (which wins when both
    are there) beside a top-level `rope_theta`."""
    rope = dict(text.get("rope_scaling") or text.get("rope_parameters") or {})
    if "type" in rope and "rope_type" not in rope:  # the oldest spelling
        rope["rope_type"] = rope.pop("type")
    rope.setdefault("rope_type", "default")
    if "rope_theta" in text:  # (a null one too: transformers takes it, as it takes a null nested one)
        rope.setdefault("rope_theta", text["rope_theta"])
    return rope


def _check_head_dim(text: dict, values: dict):
    """Refuse another head width than hidden_size / num_attention_heads, the only one ModelArgs builds
    (transformers' default 128 for a head_dim config.json leaves out: its q_proj would not fit the
    weights, and from_pretrained refuses them)."""
    head_dim, dim, heads = text.get("head_dim", HF_DEFAULTS["head_dim"]), values["dim"], values["n_heads"]
    if heads >= 1 and head_dim * heads != dim:
        left_out = [k for k in ("num_attention_heads", "head_dim") if k not in text]
        note = (f", with transformers' default{'s' * (len(left_out) > 1)} for the {' and '.join(left_out)} "
                "config.json leaves out") if left_out else ""
        ratio = dim // heads if dim % heads == 0 else f"{dim} / {heads}"
        raise ConfigError(f"head_dim {head_dim} differs from hidden_size / num_attention_heads = {ratio}"
                          f"{note}; only that head width is supported")


def _check_hf_layout(text: dict, args: ModelArgs):
    """Refuse what transformers would build otherwise than ModelArgs can: explicit lists of NoPE,
    MoE or chunked-attention layers off the intervals, attention biases, another activation than SiLU."""
    layers = range(args.n_layers)
    derived = {"no_rope_layers": [int(args.uses_rope(i)) for i in layers],
               "moe_layers": [i for i in layers if args.is_moe_layer(i)],
               "layer_types": ["chunked_attention" if args.uses_rope(i) else "full_attention"
                               for i in layers]}
    for key, want in derived.items():
        got = text.get(key)
        given = bool(got) if key == "no_rope_layers" else got is not None  # (transformers' own tests)
        if given and list(got) != want:
            raise ConfigError(f"{key} {list(got)} is not every n-th layer ({want} from the interval); "
                              "only interval layouts are supported")
    if text.get("attention_bias"):
        raise ConfigError("attention_bias true is not supported (Llama 4 has no attention biases)")
    if text.get("hidden_act", "silu") not in ("silu", "swish"):  # (transformers' two names for it)
        raise ConfigError(f"hidden_act {text['hidden_act']!r} is not supported (Llama 4's experts use silu)")


_LEFT_OUT = object()


def _hf_value(cfg: dict, text: dict, name: str):
    """The value config.json gives a ModelArgs `hf` name (vision.*: its vision_config's; the image
    token ids: the top level's), or _LEFT_OUT."""
    section = cfg["vision_config"] if name.startswith("vision.") else cfg if name in TOP_LEVEL else text
    for key in name.removeprefix("vision.").split("."):
        if not isinstance(section, dict) or key not in section:
            return _LEFT_OUT
        section = section[key]
    return section


def _hf_defaults(cfg: dict, text: dict, vision: bool) -> dict:
    """HF_DEFAULTS' values for the keys config.json leaves out; a key it sets to null, where transformers
    builds or runs no model (its config refuses it; a null attention_chunk_size fails in its forward), is
    refused, as is a llama3 RoPE without its factors."""
    taken = {}
    for name, default in HF_DEFAULTS.items():
        if name.startswith("vision.") and not vision:
            continue
        value = _hf_value(cfg, text, name)
        key = name.replace("vision.", "vision_config.") if name.startswith("vision.") or not vision else \
            f"text_config.{name}"
        if value is None:
            raise ConfigError(f"{key} is null, which transformers cannot run either; give a value, or leave "
                              f"it out for transformers' default {default}")
        if value is _LEFT_OUT:
            taken[name] = default
    if text["rope_parameters"]["rope_type"] == "llama3":
        for key in LLAMA3_KEYS:
            if text["rope_parameters"].get(key) is None:
                raise ConfigError(f"rope_type llama3 needs rope_parameters.{key}, and config.json gives "
                                  "none; transformers refuses that too")
        if text["rope_parameters"].get("original_max_position_embeddings") is None:  # (transformers' default)
            context = taken.get("max_position_embeddings", _hf_value(cfg, text, "max_position_embeddings"))
            taken["rope_parameters.original_max_position_embeddings"] = context
    return taken


def args_from_hf(cfg: dict, tokenizer_ids: dict | None = None) -> ModelArgs:
    """ModelArgs from a transformers Llama 4 config.json (ours, or one this project did not write):
    what it leaves out is transformers' default (HF_DEFAULTS), not ours; a special-token id it leaves
    out is the folder's tokenizer's (tokenizer_ids), or a free one."""
    vision = cfg.get("model_type") == "llama4"
    text = cfg["text_config"] if vision else cfg
    text = {**text, "rope_parameters": hf_rope(text)}
    if vision:  # (its RoPE base too: a top-level rope_theta in older folders)
        seen = cfg["vision_config"]
        cfg = {**cfg, "vision_config": {**seen, "rope_parameters": hf_rope(seen)}}
    if isinstance(text.get("attn_temperature_tuning"), int):  # released folders say 4: any non-zero is on
        text["attn_temperature_tuning"] = bool(text["attn_temperature_tuning"])
    defaults = _hf_defaults(cfg, text, vision)
    values = {"vision": vision, "router_noise": False}
    for f in dataclasses.fields(ModelArgs):
        name = f.metadata.get("hf")
        if name is None or not vision and (name.startswith("vision.") or name in TOP_LEVEL):
            continue
        value = defaults.get(name, _hf_value(cfg, text, name))
        if value is not _LEFT_OUT and (value is not None or f.name in SPECIAL_TOKENS):
            values[f.name] = value
    _free_special_ids(values, tokenizer_ids)
    rope_type = text["rope_parameters"]["rope_type"]
    values["rope_scaling"] = "llama3" if rope_type == "llama3" else "none"
    if rope_type not in ("default", "llama3"):
        raise ConfigError(f"rope_type {rope_type!r} is not supported (default or llama3)")
    fields = {f.name: f.type for f in dataclasses.fields(ModelArgs)}
    values = {k: (float(v) if fields[k] is float else v) for k, v in values.items()}
    values = config.typed_fields(ModelArgs, values, where="config.json")
    _check_head_dim(text, values)
    args = ModelArgs(**values)
    _check_hf_layout(text, args)
    return args


def hf_weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards model.safetensors.index.json lists (a folder saved with
    save_pretrained's max_shard_size, as released Llama 4 folders are)."""
    index = folder / "model.safetensors.index.json"
    if not (folder / "model.safetensors").exists() and index.exists():
        try:
            shards = sorted(set(json.loads(index.read_bytes())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index ({first_line(e)}); save the model "
                                  "again with save_pretrained") from None
        return [folder / name for name in shards]
    return [folder / "model.safetensors"]


def tokenizer_special_ids(path: Path) -> dict:
    """The ids a tokenizer.json gives this project's special tokens, by ModelArgs name (those it has);
    {} where there is none, or none that `tokenizers` reads (load_hf's caller names it)."""
    import tokenizers
    try:
        tok = tokenizers.Tokenizer.from_str(path.read_bytes().decode("utf-8"))
    except Exception:  # (none there, not UTF-8, not a tokenizer: the Rust side's own exception type)
        return {}
    ids = {name: tok.token_to_id(text) for name, text in SPECIAL_TOKENS.items()}
    return {name: i for name, i in ids.items() if i is not None}


def load_hf(folder, device="cpu", dtype: torch.dtype | None = None) -> Llama4:
    """An HF folder (config.json + model.safetensors, or its shards) -> our model (eval mode, on
    `device`, weights in `dtype`; None: as saved), read on the CPU and cast there. Another
    model_type than Llama 4's is refused; a model saved with tie_word_embeddings (no lm_head.weight; with
    vision, its text_config's) gets the embedding as its output layer, as transformers loads it."""
    from safetensors.torch import load_file
    folder = Path(folder)
    if not folder.is_dir():  # (a path to nothing was "not a folder", as a file is)
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CheckpointError(f"{folder} {what}; pass an HF folder (config.json, "
                              "model.safetensors), such as one scripts/export_hf.py writes")
    mixed = next((stage for stage in folder.glob(".tmp-export-*-*") if _mixed(stage)), None)
    if mixed is not None:  # (a kill -9 between its renames: new files beside the old export's)
        raise CheckpointError(f"{folder} holds a mix of two exports (one was stopped while putting its files "
                              f"in place: {mixed.name} is left); export into it again with "
                              "scripts/export_hf.py --force")
    weights = hf_weight_files(folder)
    for path in [folder / "config.json", *weights]:
        if not path.exists():
            raise CheckpointError(f"{path} is missing; is {folder} an exported HF folder?")
    try:
        cfg = json.loads((folder / "config.json").read_bytes())
        kind = cfg.get("model_type", "llama4_text")  # (a Llama 3 folder was read as Llama 4 lacking experts)
        if kind not in ("llama4_text", "llama4"):
            raise CheckpointError(f"{folder / 'config.json'} is not a Llama 4 model's (model_type {kind!r}, "
                                  "not llama4_text, or llama4 with the vision stub); pass a Llama 4 folder")
        model_args = args_from_hf(cfg, tokenizer_special_ids(folder / "tokenizer.json"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # bad JSON, a missing section, ConfigError
        why = str(e) if isinstance(e, ConfigError) else first_line(e)
        raise CheckpointError(f"{folder / 'config.json'} describes no model this project builds ({why}); "
                              f"{HF_FIX}") from None
    state = {}
    for path in weights:
        try:
            state.update(load_file(str(path)))
        except Exception as e:  # safetensors' own error type: a truncated or foreign file
            if runtime.out_of_memory(e):  # a good file too large for memory: not "corrupt"
                raise
            raise CheckpointError(f"{path} is corrupt or unreadable ({first_line(e)}); {HF_FIX}") from None
    prefix = "language_model." if model_args.vision else ""
    ours = {}
    for name, tensor in state.items():
        if name.startswith(prefix + "model."):
            name = name.removeprefix(prefix + "model.")
        elif name.startswith(prefix + "lm_head."):
            name = name.removeprefix(prefix)
        ours[name] = tensor
    ours = to_device(ours, device, dtype)
    text = cfg["text_config"] if model_args.vision else cfg  # (the language model's own flag ties it)
    if text.get("tie_word_embeddings") and "lm_head.weight" not in ours \
            and "embed_tokens.weight" in ours:  # tied: saved once, and transformers' lm_head is the embedding
        ours["lm_head.weight"] = ours["embed_tokens.weight"]
    where = weights[0] if len(weights) == 1 else folder / "model.safetensors.index.json"
    return build(model_args, ours, device, where, HF_FIX).eval()


def check_hf_tokenizer(tok: Tokenizer, tok_path, folder, model_args: ModelArgs, fix: str = HF_FIX) -> None:
    """check_tokenizer for an HF folder: the sha256 its config.json records (our exports do), the
    vocabulary size and special-token ids in any case."""
    sha = recorded_tokenizer(folder)  # (None where it cannot be read: load_hf has read it, so changed since)
    check_tokenizer(tok, tok_path, {"model_args": config.to_dict(model_args), "tokenizer": {"sha256": sha}},
                    folder, fix)


def same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two tokenizer.json files are one tokenizer (its hash, as checkpoints record it; the
    bytes for files this project cannot read)."""
    try:
        return Tokenizer.load(a, exact=False).hash == Tokenizer.load(b, exact=False).hash
    except DataError:
        return a.read_bytes() == b.read_bytes()


def new_folder(parent: Path, name: str) -> Path:
    """parent/name, or parent/name-import (-import-2, ...) where that is taken: the folder an import's
    advice names (hf_export/demo, exported from checkpoints/demo, named that training run, which
    --force then replaced with the import)."""
    folder, n = parent / name, 1
    while os.path.lexists(folder):
        folder, n = parent / f"{name}-import{f'-{n}' * (n > 1)}", n + 1
    return folder


def import_hf(folder, dest, replace: bool = False) -> Path:
    """An HF folder -> a weights-only checkpoint at `dest`, with the folder's tokenizer.json beside it.
    A `dest` that is a folder, a name without .pt or one ending in a slash, is a run folder: the
    checkpoint is its last.pt.

    A checkpoint already at `dest` (a run's, with its optimizer state), or another tokenizer.json
    beside it (the one its run's checkpoints were trained with), is refused unless `replace`; the
    same tokenizer beside it is left as it is (not rewritten as the HF folder saved it). A `dest` in
    an HF folder, or a folder of runs (an --out_dir) as `dest`, is refused, --force or not (its
    last.pt made the folder a run's, which exports refuse; or a run among the runs). A training
    run's folder or checkpoint as `folder` is the export mistaken for an import: said so. A
    checkpoint or tokenizer that cannot be written (a full disk, an interrupt) leaves no new file (the
    checkpoint and tokenizer --force was to replace as they were: never one new beside one old), nor
    any of the folders made for it. The folder's run.lock is held while it writes (_hold): a train.py
    started there meanwhile is refused, and an import into a live train.py's folder too."""
    source, what = Path(folder), None
    if source.is_file() and source.suffix == ".pt":
        what = "a checkpoint"
    elif source.is_dir() and not (source / "config.json").is_file():
        run = storage.run_files(source, but=("tokenizer.json",))
        what = f"a training run's folder (it holds {run[0]})" if run else None
    if what:
        raise CheckpointError(f"{folder} is {what}, not an HF folder; drop --import to export it "
                              "(--import makes a checkpoint of an HF folder)")
    folder_named = os.fspath(dest).endswith(("/", os.sep))  # (runs/x.pt/ was the file x.pt: Path drops /)
    dest = Path(dest)
    # (--import hf checkpoints: its last.pt among the runs)
    not_runs(dest, "import", lambda: new_folder(dest, source.resolve().name))
    if dest.is_dir() or dest.suffix != ".pt" or folder_named:
        dest = dest / "last.pt"
    hf = [n for n in ("config.json", "model.safetensors") if (dest.parent / n).is_file()]
    if hf:  # (an export's folder, the source's too: its last.pt made it a run folder that exports refused)
        own = new_folder(Path("checkpoints"), dest.parent.resolve().name)
        raise CheckpointError(f"{dest.parent} is an HF folder (it holds {hf[0]}); import into a folder "
                              f"of its own, e.g. {own}")
    if dest.exists() and not replace:
        raise CheckpointError(f"{dest} already exists; pass --force to replace it (a training checkpoint "
                              "loses its optimizer state and cannot be resumed), or import to another path")
    tok, theirs = Path(folder) / "tokenizer.json", dest.parent / "tokenizer.json"
    if tok.exists() and theirs.exists() and not same_tokenizer(tok, theirs) and not replace:
        raise CheckpointError(f"{theirs} is another tokenizer (its run's checkpoints need it); import into "
                              "a folder of its own, or pass --force to replace it")
    model = load_hf(folder)
    sha = None
    if tok.exists():
        try:
            ours = Tokenizer.load(tok, exact=False)  # (one older versions trained with, too)
        except DataError:  # not a tokenizer of this project's kind: keep the weights, record no hash
            ours = None
        if ours is not None:
            check_hf_tokenizer(ours, tok, folder, model.args)  # the sha256 our export recorded, if any
            sha = ours.hash
    made = storage.missing_folder(dest.parent)
    try:
        held = _hold(dest.parent)  # (a train.py started meanwhile swept its hidden files as a killed save's)
        try:
            _sweep_import_stages(dest.parent)
            if tok.exists() and not (theirs.exists() and same_tokenizer(tok, theirs)):
                _place_import(model, dest, sha, tok, theirs)
            else:
                save_model_only(model, dest, sha)
        finally:
            _let_go(held, dest.parent)
    except BaseException as e:  # (a full disk, an interrupt: a new last.pt without its tokenizer, which
        storage.remove_made(dest.parent, made)  # the same command then refused, and the new folder, were
        if isinstance(e, StorageError):  # left behind; with --force, beside the old run's tokenizer)
            raise StorageError(f"{e} (nothing was imported)") from None
        raise
    return Path(dest)


def _hold(folder: Path):
    """The run.lock of `folder` (made if need be), taken as storage.RunFolder takes it, held while an
    import writes there: a train.py is not let take the folder meanwhile (it would sweep the import's
    hidden files as a killed save's), nor the import write beside a live train.py's files."""
    storage.make_folder(folder, "write it elsewhere")
    try:
        return storage.lock(folder / storage.RunFolder.LOCK, who=storage.IMPORTING)
    except storage.Busy as e:
        by = "another import" if e.holder.startswith(storage.IMPORTING) else "a train.py"
        raise CheckpointError(f"{folder} is in use by {by} ({e.holder}); wait for it to end or stop it, or "
                              "import to another path") from None
    except OSError:  # (a read-only folder, a full disk: the import's write says so, in its own words)
        return None


def _let_go(held, folder: Path) -> None:
    """Let go of _hold's lock, its run.lock removed where the import made it (an import is no run of
    train.py's: its folder holds a last.pt and a tokenizer.json); a previous run's stays."""
    if held is None:
        return
    try:
        if held.made and storage.same_file(held, folder / storage.RunFolder.LOCK):
            with contextlib.suppress(OSError):  # (a folder made read-only meanwhile: the lock stays)
                (folder / storage.RunFolder.LOCK).unlink()
    finally:
        held.close()


def _place_import(model: Llama4, dest: Path, sha: str | None, tok: Path, theirs: Path) -> None:
    """import_hf's checkpoint and tokenizer, written to hidden names beside them and renamed into place,
    the tokenizer first: where the checkpoint's rename then fails, the tokenizer it replaced is put
    back (the new one removed, where none was there), so the folder holds the old pair or the new one,
    never a new last.pt beside an old tokenizer.json (that decodes it with another vocabulary). The
    hidden files a kill -9 leaves are removed by the next import there, once their process is gone."""
    staged = {p: p.with_name(f".tmp-import-{os.getpid()}-{p.name}") for p in (dest, theirs)}
    old = theirs.read_bytes() if theirs.exists() else None
    try:
        try:
            save_model_only(model, staged[dest], sha)
            storage.atomic_write(staged[theirs], tok.read_bytes(), "write it elsewhere")
        except StorageError as e:  # named as the file it was to become
            raise StorageError(str(e).replace(staged[dest].name, dest.name)
                               .replace(staged[theirs].name, theirs.name)) from None
        with storage.signals_put_off():
            try:
                os.replace(staged[theirs], theirs)
            except OSError as e:
                raise storage.write_error(theirs, e, "write it elsewhere", intact=old is not None) from None
            try:
                os.replace(staged[dest], dest)
            except OSError as e:
                error = storage.write_error(dest, e, "write it elsewhere", intact=dest.exists())
                try:
                    if old is None:
                        theirs.unlink()
                    else:
                        storage.atomic_write(theirs, old)
                except (OSError, StorageError):  # (a full disk): no tokenizer rather than the wrong one
                    theirs.unlink(missing_ok=True)
                    error = StorageError(f"{error}; {theirs} could not be put back, so it was removed")
                raise error from None
            storage.sync_folder(dest.parent)
    finally:
        for path in staged.values():  # (none written: gone, or a file where its folder goes)
            with contextlib.suppress(OSError):
                path.unlink()
