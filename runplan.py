"""Setting a run up: what a run will be, and what is refused, before any work is done.

    plan = plan_run(model_args, train_args, preset, given)   # settings, run folder, checkpoint
    check_settings(plan, device, world)                       # refused: a ConfigError, exit status 2
    folder = claim_folder(plan)                               # the run folder, locked (rank 0; not
                                                              # at --eval_only, which only reads)
    setting_warnings(plan, given)                             # allowed, but probably not meant
    wandb_id(plan)                                            # the W&B run to go on with, if any

train.py's setup calls the first four in that order, then builds the data, model and optimizer
from the RunPlan (build_job, which asks wandb_id). Nothing here reads a token or builds a model in
memory (parameter counts come from the meta device); a resumed run's checkpoint is loaded here,
since its settings are the run's.

What it holds, one section each, in this order:
    a resumed run's settings  RunPlan; resume_settings (the checkpoint's, with those typed on top),
                              run_settings (an older checkpoint's corrected), init_settings
                              (--init_from's), check_init, text_read
    naming runs               run_options, fork_options, start_again (advice that names a run
                              folder), run_to_resume (--resume without a path)
    planning                  plan_run, load_resumed, check_optimizer_groups, init_from_fix, absolute
                              (a path setting as saved), saved_paths
    before any work           memory_floor, check_settings (refused; check_step_batches), setting_warnings
                              (warned of: unscored_source, held_out_of_saved_data), resume_changes and
                              device_change (said; trained_on); held_out_moved (train.py's warning once
                              the validation text is read)
    a finished run            finished_limit, limit_reached (train.py says so, and trains nothing)
    the run folder            claim_folder, check_no_later_last, check_same_model
    W&B                       wandb_id

How this departs from the obvious version:
- A resumed run's settings are its checkpoint's, with the training settings typed on the command
  line on top (`given`: the options typed); model settings typed must agree with the checkpoint,
  but for the router losses' weights, training-loss weights that a resume changes as it does --lr.
  A resume that names another --run forks beside the checkpoint's folder (or into --out_dir, typed).
  The checkpoint's --data and --val_data must still be there (unless typed again), and its
  optimizer state be of this version's parameter groups (check_optimizer_groups); its tokenizer
  is the copy beside it, and path settings (an --hf_dataset that is a local folder too) are saved
  absolute, so that a resume from another folder reads the same files.
- --resume without a path takes --run's last.pt, else the newest run's; a newest run that holds
  no last.pt is refused rather than passed over (it is most likely the run meant).
- --init_from CKPT is a new run (plan.ckpt None: step 0, its own optimizer and W&B run) holding
  the checkpoint in plan.init: its model settings and the tokenizer.json beside it, and the
  training settings typed on its preset's (init_settings); build_job loads its weights.
- What can be refused before any work is: a vocabulary below 264, special-token ids that the
  tokenizer the run trains does not have, a --tokenizer whose size or special ids are not the
  model settings' (a new run from scratch), a batch that does not split over the processes, a
  micro-batch whose weights, loss chunk and residual stream alone exceed the device's memory (or
  a --grad_accum whose micro-batches, all drawn before a step, do with them: check_step_batches),
  CUDA graphs with more than one micro-batch per process, a --plot named as a file of the run or
  one already there other than an image (exit status 2, as for any bad setting).
  Settings that are allowed but probably not meant get a warning line: training settings typed
  beside --eval_only (or a --run, --out_dir, or --data beside the run's --val_data, it does not
  use), a warmup as long as the run, a --val_fraction with a validation source or other than the
  checkpoint's at --resume or --eval_only, a --val_text_field for a .txt --val_data (and
  sources.py warns of --val_data files inside --data).
- The run folder is locked (storage.RunFolder) before what only its holder can check: a new run
  never takes a folder with a checkpoint, nor does a fork (another folder's checkpoint resumed
  into it), nor does a checkpoint resumed in its folder (best.pt) whose last.pt is at a later step
  (it would be written over), and a resumed checkpoint must be the model the folder's model.json
  describes.
"""

import glob
import json
import os
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

import checkpoint
import config
import errors
import runlog
import runtime
import sources
import storage
from config import ModelArgs, TrainArgs
from errors import CheckpointError, ConfigError, DeviceError, RunError
from model import LOSS_CHUNK, count_parameters, summed_over_layers, weight_decayed
from runtime import World
from tokenizer import Tokenizer, check_tokenizer, too_small

# ---------------------------------------------------------------------------------------------
# The plan, and a resumed run's settings


class RunPlan(NamedTuple):
    """What plan_run settles before any work: the run folder, the settings, the checkpoint."""
    run_dir: Path
    model_args: ModelArgs
    train_args: TrainArgs
    ckpt: dict | None  # the checkpoint to resume or evaluate
    ckpt_path: Path | None
    preset: str = config.DEFAULT_PRESET  # the preset the run's settings started from (the checkpoint's)
    init: dict | None = None  # --init_from's checkpoint: a new run starts from its weights
    init_path: Path | None = None

    @property
    def forks(self) -> bool:
        """Another folder's checkpoint resumed into this run folder (--resume CKPT --run NEW_NAME)."""
        return self.ckpt is not None and self.ckpt_path.parent.resolve() != self.run_dir.resolve()


def resume_settings(ckpt: dict, model_args, train_args, given,
                    ckpt_path=None) -> tuple[ModelArgs, TrainArgs]:
    """Settings for a resumed run: the checkpoint's, with the train settings typed on the command
    line applied on top. Model settings typed on the command line must agree with the checkpoint
    (the advice names --init_from ckpt_path where it could take them), but for the router losses'
    weights (RESUME_MAY_CHANGE), which a resume takes as it takes --lr. --eval_only on a --val_data
    typed for it scores all of it, unless --eval_windows is typed too."""
    saved_model = config.from_dict(ModelArgs, ckpt["model_args"], "checkpoint")
    what = "--preset (it sets every model setting) and the model options" if "preset" in given else "them"
    typed = set(given) | (set(config.to_dict(model_args)) if "preset" in given else set())
    now = config.to_dict(train_args)
    # (as the run goes on with them: load_resumed corrected an older checkpoint's, run_settings; a
    # weights-only checkpoint, an import or export, has none)
    saved_train = ckpt.get("train_args") or now
    text = text_read({k: (now if k in given else saved_train).get(k) for k in TEXT_SETTINGS})  # (it reads)
    # the router losses' weights are training-loss weights, which a resume may change as it may --lr
    # (--eval_only keeps the checkpoint's: a warning says they do nothing)
    free = set(RESUME_MAY_CHANGE)
    # (--eval_only trains no new --run: that advice, a model from scratch, was no fix for an evaluation)
    if train_args.eval_only:
        fix = f"drop {what}: --eval_only evaluates the checkpoint's model as it was trained"
    else:
        other = other_model_fix(saved_model, model_args, typed - free, ckpt_path, text)
        fix = f"drop {what} to use the checkpoint's{other}"
    check_model_typed(saved_model, model_args, typed - free, fix)
    if not train_args.eval_only:
        saved_model = typed_on(saved_model, model_args, RESUME_MAY_CHANGE, given)
    # the typed settings go on top before the checks, so that one a newer version refuses (a saved
    # --val_fraction 0.9) can be set right on the command line; after the corrections (run_settings, in
    # load_resumed), so that a value they correct, typed, is refused as for a new run
    keep = {**saved_train, **{k: v for k, v in now.items() if k in given}}
    # (the saved --out_dir is not used: plan_run puts where the run lies; one saved as "" before
    # check_run refused it would stop the resume; the saved --device neither: train.setup runs where the
    # --device typed, or auto, says, and that one is recorded: device_change says where it is another)
    keep.update(resume=train_args.resume, eval_only=train_args.eval_only, run=train_args.run,
                out_dir=train_args.out_dir, device=train_args.device)
    if train_args.eval_only and "val_data" in given and "eval_windows" not in given:
        keep["eval_windows"] = 0  # a file given to be scored is scored whole, not the run's sample of it
    # a typed value out of range: the fix is the run's own (an import has none: the default, not the typed)
    start, whose = (saved_train, "the run's") if ckpt.get("train_args") else (config.to_dict(TrainArgs()),
                                                                             "the default")
    return saved_model, in_range(lambda: config.from_dict(TrainArgs, keep, "checkpoint"), given, start,
                                 lambda name: whose)


def run_settings(saved: dict) -> dict:
    """A checkpoint's training settings as its run goes on with them, which load_resumed puts in the
    checkpoint it loads (resume_settings puts the typed ones on top; resume_changes, saved_paths and
    the held-out checks read these): an older version's values that this one refuses read as they were
    meant, and a ~ left in a path as the home folder (TrainArgs makes a typed one so). (An older
    --compile, a bool, load_resumed makes "true" or "false" before the types are checked.)"""
    run = dict(saved)
    if run.get("cache_dir") == "":  # (saved before --cache_dir '' was refused: it meant the current folder)
        run["cache_dir"] = "."
    if run.get("text_field") == "":  # (saved before it was refused: beside .txt text, which has no fields)
        run["text_field"] = "text"
    if not config.wandb_project_ok(run.get("wandb_project", "")):  # (saved before it was refused: that
        run["wandb_project"] = TrainArgs.wandb_project  # W&B run never started, nor will one under it)
    for name in config.PATH_FIELDS["TrainArgs"]:
        if isinstance(run.get(name), str):
            run[name] = storage.expand_home(run[name])
    return run


def differing(saved: ModelArgs, model_args: ModelArgs, typed) -> dict:
    """The model settings typed (names in `typed`) that are not the checkpoint's: name -> (the
    checkpoint's value, the value asked)."""
    asked = config.to_dict(model_args)
    return {k: (v, asked[k]) for k, v in config.to_dict(saved).items() if k in typed and v != asked[k]}


def check_model_typed(saved: ModelArgs, model_args: ModelArgs, typed, fix: str) -> None:
    """The model settings typed (names in `typed`) must be the checkpoint's: a ConfigError (exit status 2:
    the options typed) listing those that differ, advising `fix`."""
    pairs = differing(saved, model_args, typed)
    diffs = [f"{k}: checkpoint {v!r}, asked {a!r}" for k, (v, a) in pairs.items()]
    if diffs:
        raise ConfigError("model settings differ from the checkpoint's (" + "; ".join(diffs) + f"); {fix}")


def other_model_fix(saved: ModelArgs, model_args: ModelArgs, typed, ckpt_path, text: dict) -> str:
    """The rest of the advice for a resume with other model settings typed: a new run from the
    checkpoint's weights (--init_from) where it may change them all (INIT_MAY_CHANGE), with the
    --data and --val_data the resume reads (`text`: --init_from takes the model alone, and without
    them trained on the hub's TinyStories), else one from scratch (a new --run with --resume is a
    fork, which refuses them too)."""
    differ = set(differing(saved, model_args, typed))
    if ckpt_path is None or not differ <= set(INIT_MAY_CHANGE):
        return ", or start a new --run with them, without --resume"
    options = " ".join(f"--{k}" for k in sorted(differ))
    init = init_from_options(ckpt_path, text)
    return f", or keep its weights in a new run at the new {options}: {init}, without --resume"


# the settings that say what text a run reads, which a new run from its weights must be given again
# (--init_from takes the model alone: without them it would read the hub's TinyStories)
TEXT_SETTINGS = ("data", "val_data", "hf_dataset", "text_field", "val_text_field", "val_fraction")


def text_read(settings: dict) -> dict:
    """Of `settings` (TrainArgs fields by name), the TEXT_SETTINGS a new run must be typed to read the
    same text: those not the default, less those another makes moot (--hf_dataset beside --data,
    --val_fraction beside --val_data or without --data, --val_text_field without --val_data, a text
    field that plain text has no use for: sources.plain_text_fields; each warned of where typed)."""
    default = config.to_dict(TrainArgs())
    data, val_data = settings.get("data") or "", settings.get("val_data") or ""
    moot = {"hf_dataset": data, "val_fraction": val_data or not data, "val_text_field": not val_data}
    plain = sources.plain_text_fields(data, val_data, settings.get("val_text_field") or "")
    moot |= dict.fromkeys(plain, True)
    return {k: settings[k] for k in TEXT_SETTINGS
            if settings.get(k) is not None and settings[k] != default[k] and not moot.get(k)}


def init_from_options(ckpt_path, text: dict) -> str:
    """The options of a new run from the weights of ckpt_path (--init_from), in a NEW_NAME folder
    beside its run, reading `text` (text_read's: --init_from takes the model alone, and without them a
    run trains on the hub's TinyStories)."""
    sources_read = "".join(f" --{k} {shlex.quote(str(v))}" for k, v in text.items() if v != "")
    return (f"--init_from {shlex.quote(str(ckpt_path))} "
            f"{run_options(beside(Path(ckpt_path).parent) / 'NEW_NAME')}{sources_read}")


# model settings that --init_from may change, as no weight depends on them: the context (RoPE has no
# learned positions), the router losses' weights (a fine-tune of an import, with HF's aux weight
# and no z-loss, refused both), and router noise, a training extra that eval() never reads: on, its
# projection starts from init_weights (an import has none), off, the file's is dropped
# (checkpoint.init_state)
INIT_MAY_CHANGE = ("max_seq_len", "router_aux_loss_coef", "router_z_loss_coef", "router_noise")
# and that a resume may change: the router losses' weights (the context would change the windows, and
# so the batches a resumed step draws)
RESUME_MAY_CHANGE = ("router_aux_loss_coef", "router_z_loss_coef")
INIT_FIX = "pass --init_from another checkpoint (a .pt file, e.g. the run's best.pt)"


def init_settings(ckpt: dict, model_args: ModelArgs, train_args: TrainArgs, preset: str,
                  given) -> tuple[ModelArgs, TrainArgs, str]:
    """--init_from's settings: the checkpoint's model (model options typed must agree: its weights are
    that model's), and the training settings typed on those of the preset, which is the checkpoint's
    unless --preset is typed (a tiny model goes on with tiny's batch and learning rate; an import,
    which names none, with the default's). --preset picks training settings only here. INIT_MAY_CHANGE
    may differ (a fine-tune at another context, with other router loss weights, or router noise
    turned on or off)."""
    saved_model = config.from_dict(ModelArgs, ckpt["model_args"], "checkpoint")
    check_model_typed(saved_model, model_args, set(given) - set(INIT_MAY_CHANGE), "drop them: --init_from "
                      "takes the checkpoint's model (another model starts from scratch: drop --init_from)")
    saved_model = typed_on(saved_model, model_args, INIT_MAY_CHANGE, given)
    if "preset" not in given and ckpt.get("preset") in config.PRESETS:
        preset = ckpt["preset"]
    typed = {k: v for k, v in config.to_dict(train_args).items() if k in given}
    start = config.to_dict(config.preset(preset, TrainArgs))
    train_args = in_range(lambda: TrainArgs(**{**start, **typed}), typed, start,
                          lambda name: config.whose_value(preset, TrainArgs, name))
    return saved_model, train_args, preset


def in_range(make, typed, start: dict, whose):
    """make(), where a value typed (a name in `typed`) out of range is refused with start's value
    (whose(name) it is: the run's, the checkpoint's, the preset's) as its fix, not the class's default."""
    try:
        return make()
    except ConfigError as e:
        name, value, rule = getattr(e, "out_of_range", (None,) * 3)
        if name not in typed or name not in start:
            raise
        raise ConfigError(config.range_error(name, value, rule, start[name], whose(name))) from None


def typed_on(saved: ModelArgs, model_args: ModelArgs, names, given) -> ModelArgs:
    """The checkpoint's model settings with those of `names` that were typed (`given`) on top,
    range-checked together (an out-of-range value's advice names the checkpoint's)."""
    changed = {name: getattr(model_args, name) for name in names if name in given}
    if not changed:
        return saved
    base = config.to_dict(saved)
    return in_range(lambda: ModelArgs(**{**base, **changed}), changed, base, lambda name: "the checkpoint's")


def check_init(train_args: TrainArgs, given) -> None:
    """--init_from names a checkpoint, and starts a new run: not beside --resume or --eval_only. Beside
    either, --tokenizer '' is refused (--resume takes it: the tokenizer cached for the data)."""
    if "init_from" in given and not train_args.init_from:  # (an unset $CKPT: a run from scratch)
        raise ConfigError("--init_from '': name a checkpoint (a .pt file, a run folder or a run), or drop "
                          "--init_from to start from scratch")
    if train_args.init_from and train_args.resume:
        raise ConfigError("--init_from starts a new run from a checkpoint's weights and --resume goes on "
                          "with a run; drop one of them (--resume CKPT --run NEW_NAME forks a run, with its "
                          "optimizer state and step)")
    if (train_args.init_from or train_args.eval_only) and "tokenizer" in given and not train_args.tokenizer:
        # (an unset $TOK; --eval_only said the run "has no tokenizer.json", which was there all along)
        why = ("would train a new tokenizer, whose ids the checkpoint's model never learnt" if
               train_args.init_from else "names no file")
        option = "--init_from" if train_args.init_from else "--eval_only"
        raise ConfigError(f"--tokenizer '' beside {option} {why}; drop --tokenizer to take the one beside "
                          "the checkpoint, or name it")
    if train_args.init_from and train_args.eval_only:
        raise ConfigError("--eval_only evaluates the checkpoint of --resume (or --run's latest), and "
                          "--init_from starts training; pass the checkpoint with --resume instead")


# ---------------------------------------------------------------------------------------------
# Naming runs: their folders, and the options that name them


def beside(folder: Path) -> Path:
    """The folder that holds `folder`, as typed where that names it ("." or ".." made absolute)."""
    return folder.parent if folder.name not in ("", ".", "..") else Path(os.path.abspath(folder)).parent


def run_options(run_dir: Path, fork_of: Path | None = None) -> str:
    """The options that name the run in run_dir: --run NAME, and --out_dir where not the default
    (quoted for the shell; --run=NAME for a name that begins with -): checkpoints, or for a fork of
    the checkpoint `fork_of` (--resume fork_of --run NAME), where it goes by default (fork_home)."""
    if run_dir.name in ("", ".", ".."):  # (--resume last.pt from inside the run folder: run_dir is ".")
        run_dir = run_dir.resolve()
    def option(name, value):  # (--run -x is taken for an option: --run=-x)
        return f"--{name}{'=' if value.startswith('-') else ' '}{shlex.quote(value)}"
    default = run_dir.parent == (Path(TrainArgs.out_dir) if fork_of is None else fork_home(fork_of))
    return option("run", run_dir.name) + ("" if default else " " + option("out_dir", str(run_dir.parent)))


def fork_home(ckpt_path: Path) -> Path:
    """Where a fork of ckpt_path goes without --out_dir: beside the checkpoint's run folder (one
    train.py made: it holds train.json), else (a loose file, a download) under the default --out_dir."""
    folder = Path(ckpt_path).parent
    return beside(folder) if (folder / "train.json").is_file() else Path(TrainArgs.out_dir)


def fork_options(plan: RunPlan) -> str:
    """The options that fork the checkpoint plan resumes into a new folder beside the run's,
    --run NEW_NAME (and --out_dir where that folder is not beside the checkpoint's)."""
    return run_options(beside(plan.run_dir) / "NEW_NAME", plan.ckpt_path)


def start_again(run_dir: Path) -> str:
    """The advice for a run folder whose run stopped before its first save: a new run there, with the
    settings it was started with (a run started again with none typed is the default preset's), and
    where they are recorded: model.json and train.json, where the run got as far as writing them."""
    saved = [name for name in ("model.json", "train.json") if (run_dir / name).is_file()]
    where = f" (in its {' and '.join(saved)})" if saved else ""
    return (f"start it again without --resume, with {run_options(run_dir)} and the settings it was started "
            f"with{where}")


def run_to_resume(train_args: TrainArgs, out: Path) -> Path:
    """The run folder of --resume without a path (or --eval_only): --run's, which must exist, else the
    newest run with a last.pt. A run written to since that holds none (it stopped before its first
    save) is refused, not passed over: it is most likely the run meant, and resuming another one
    would train that one on."""
    verb, runs = ("evaluate" if train_args.eval_only else "resume"), checkpoint.run_folders(out)
    if out.exists() and not out.is_dir():  # (it was "no run with a last.pt under" it, or "no run x under" it)
        raise CheckpointError(f"--out_dir {out} is a file, not a folder of runs; pass the --out_dir the run "
                              "was trained in, or --resume a .pt file or a run folder")
    if train_args.run:
        if (out / train_args.run).exists():
            return out / train_args.run
        new = "" if train_args.eval_only else f", or drop --resume to start {train_args.run} as a new run"
        there = (f"its runs: {checkpoint.named_runs(runs)}; pass one of them to --run{new}" if runs else
                 f"nor any other run; pass the --out_dir it was trained in{new}")
        raise ConfigError(f"there is no run {train_args.run} under --out_dir {out}/ ({there})")
    run_dir = checkpoint.latest_run(out, option="--resume ")
    newest = runs[0] if runs else run_dir
    if newest != run_dir and not (newest / "last.pt").exists():
        best = newest / "best.pt"
        first = "" if train_args.eval_only else start_again(newest)
        if best.exists():
            first = f"pass --resume {best} to {verb} its best.pt"
        raise ConfigError(f"the newest run, {newest}, holds no last.pt (it stopped before its first save, or "
                          f"has not reached it); {first}{', or ' if first else ''}pass --run {run_dir.name} "
                          f"to {verb} the newest run with one")
    return run_dir


# ---------------------------------------------------------------------------------------------
# Planning: the run folder, the checkpoint and the settings


def plan_run(model_args: ModelArgs, train_args: TrainArgs, preset: str, given,
             started: float | None = None) -> RunPlan:
    """Run folder, settings (the checkpoint's when resuming), the checkpoint, its path and the preset.
    A new run without --run is named by its preset and `started` (time.time(); now by default: under
    torchrun, rank 0's, which every rank must name the same folder by)."""
    # --run and --out_dir checked before they are used as paths (at --resume, before a checkpoint is
    # looked for under them)
    config.check_run(train_args.run, train_args.out_dir)
    if "resume" in given and not train_args.resume:  # (an unset $CKPT: it started a new run)
        raise ConfigError("--resume '': name a checkpoint, a run folder or a run, or give --resume alone "
                          "for the run's latest checkpoint")
    check_init(train_args, given)
    out = Path(train_args.out_dir)
    # a run folder whose run stopped before its first save: a new run there is what is left
    not_saved = checkpoint.NOT_SAVED_FIX if train_args.eval_only else start_again  # (given the folder)
    init = init_path = None
    if train_args.resume not in ("", "latest"):  # a checkpoint file or run folder
        ckpt_path = checkpoint.find_checkpoint(train_args.resume, out, not_saved, option="--resume ")
        # no --run, or one naming the checkpoint's own run, continues it where it lies (from another
        # directory too); with --out_dir typed it forks into --out_dir under that name (without --run,
        # a typed --out_dir was ignored); another name forks beside the checkpoint's run folder
        # (fork_home: wherever the shell is, not into ./checkpoints, which from inside the run folder
        # is inside the run), or into --out_dir where typed
        name = train_args.run or Path(os.path.abspath(ckpt_path.parent)).name
        own = train_args.run in ("", ckpt_path.parent.name) and "out_dir" not in given
        forks_to = out if "out_dir" in given else fork_home(ckpt_path)
        run_dir = ckpt_path.parent if own else forks_to / name
    elif train_args.resume == "latest" or train_args.eval_only:  # the latest checkpoint of --run
        run_dir = run_to_resume(train_args, out)
        ckpt_path = checkpoint.find_checkpoint(str(run_dir), out, not_saved)
    else:  # a new run, from scratch or from --init_from's weights
        if train_args.init_from:
            init_path = checkpoint.find_checkpoint(train_args.init_from, out, INIT_FIX, option="--init_from ")
            init = checkpoint.load_checkpoint(init_path, INIT_FIX)
            init.pop("optimizer", None)  # (a new optimizer: its moments, twice the weights, are not kept)
            model_args, train_args, preset = init_settings(init, model_args, train_args, preset, given)
            # (saved as the file it was: a run name or folder names another file once the run goes on)
            tokenizer = train_args.tokenizer if "tokenizer" in given else str(init_tokenizer(init_path))
            train_args = replace(train_args, init_from=str(init_path.resolve()), tokenizer=tokenizer)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
        run_dir = out / (train_args.run or f"{preset}-{stamp}")
        ckpt_path = None
    ckpt = None
    if ckpt_path is not None:
        ckpt = load_resumed(ckpt_path, run_dir, train_args.eval_only)
        model_args, train_args = resume_settings(ckpt, model_args, train_args, given, ckpt_path)
        preset = preset if "preset" in given else ckpt.get("preset", preset)
    where = {"run": run_dir.name, "out_dir": str(run_dir.parent)}  # (a resumed run: where it lies)
    train_args = TrainArgs(**{**config.to_dict(train_args), **where})
    # a resumed run uses its checkpoint's tokenizer: the copy beside it (or, that gone, the run
    # folder's), unless --tokenizer is typed (a saved path may be gone: a fork's parent folder, a
    # renamed run folder); load_data checks it against the checkpoint's sha256
    if ckpt is not None and "tokenizer" not in given:
        for candidate in (ckpt_path.parent / "tokenizer.json", run_dir / "tokenizer.json"):
            if candidate.exists():
                train_args = TrainArgs(**{**config.to_dict(train_args), "tokenizer": str(candidate)})
                break
    plan = RunPlan(run_dir, model_args, train_args, ckpt, ckpt_path, preset, init, init_path)
    check_saved_paths(plan, given)
    paths = {k: absolute(getattr(train_args, k)) for k in PATHS}  # (as saved: a resume reads the same files)
    hub = sources.saved_hf_dataset(train_args.hf_dataset)  # (a local folder: absolute too)
    plan = plan._replace(train_args=replace(train_args, **paths, hf_dataset=hub))
    check_optimizer_groups(plan)
    return plan


def load_resumed(ckpt_path: Path, run_dir: Path, eval_only: bool) -> dict:
    """The checkpoint a run resumes (or --eval_only evaluates), loaded and checked before its settings
    are read: training settings of types this version builds (an older checkpoint's --compile, a bool
    before auto was one of its values, as "true" or "false"), the fields a resume reads of the types it
    reads (check_resumed_fields), and an optimizer state to resume (an import's weights alone can be
    evaluated, not resumed)."""
    fix = checkpoint.resume_fix(ckpt_path, eval_only)
    try:
        ckpt = checkpoint.load_checkpoint(ckpt_path, fix)
    except KeyboardInterrupt as e:  # (the slow part of a resume's set-up)
        e.run_dir = run_dir  # main() tells what is left there to resume from
        raise
    saved = ckpt.get("train_args")
    if isinstance(saved, dict) and isinstance(saved.get("compile"), bool):  # (a checkpoint from before
        saved["compile"] = "true" if saved["compile"] else "false"  # --compile auto: it ran as it said)
    try:  # (types only: a setting a newer version refuses can be typed over, as resume_settings allows)
        config.typed_fields(TrainArgs, ckpt.get("train_args") or {}, "training settings")
        check_resumed_fields(ckpt, eval_only)
    except ConfigError as e:  # the file's fault, not an option's: exit status 1, naming it
        raise CheckpointError(f"{ckpt_path} is damaged or from another version of this project ({e}); "
                              f"{fix}") from None
    if isinstance(saved, dict):  # every reader of the run's settings reads them as the run goes on
        ckpt["train_args"] = run_settings(saved)
    if "optimizer" not in ckpt and not eval_only:
        raise CheckpointError(f"{ckpt_path} holds weights only (an import), with no optimizer state or "
                              "step to resume: it can be evaluated (--eval_only) or sampled, and a new "
                              f"run trains on from its weights with --init_from {ckpt_path}")
    return ckpt


# what a resume reads of a checkpoint beside weights and settings (train.LoopState's fields, the RNG states,
# the open log window, the W&B run, the device and dtype it trained on), by type; an older checkpoint may
# lack all but step and rng (kept by hand: tests/test_runplan.py holds it to what train.Job.to_checkpoint
# writes)
NUMBER, NONE = (int, float), type(None)
RESUMED_FIELDS = {"step": int, "tokens": int, "elapsed": NUMBER, "best_val": NUMBER, "bad_in_row": int,
                  "skipped_steps": int, "eval_due": bool, "val_set": str, "rng": dict, "window": (dict, NONE),
                  "wandb_id": (str, NONE), "wandb_entity": (str, NONE), "preset": str, "trained_on": dict}


def check_resumed_fields(ckpt: dict, eval_only: bool) -> None:
    """A ConfigError naming the first field a resume reads that a trained checkpoint lacks (step; rng,
    where it trains) or that is of another type (a string step, an int window): a traceback otherwise."""
    required = ("step",) if eval_only else ("step", "rng")
    for name, kind in RESUMED_FIELDS.items():
        if name not in ckpt:
            if name in required and "optimizer" in ckpt:  # (an import has neither)
                raise ConfigError(f"no {name} in it")
        elif not isinstance(ckpt[name], kind) or (kind is int and isinstance(ckpt[name], bool)):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            kinds = " or ".join("None" if k is NONE else k.__name__ for k in kinds)
            raise ConfigError(f"its {name} is of type {type(ckpt[name]).__name__}, not {kinds}")


def check_optimizer_groups(plan: RunPlan) -> None:
    """A checkpoint resumed to train on must hold an optimizer state torch can load (its "state" and
    "param_groups": else it is damaged, and was a KeyError's traceback) of this version's parameter
    groups (train.make_optimizer's, by model.weight_decayed): the first version's split them otherwise
    and cannot be loaded. Refused here, before any data is prepared, with the --init_from command that
    keeps its weights (and the text the run reads: text_read); a finished run, which loads nothing,
    passes, and so does an import, which holds none (load_resumed's to refuse)."""
    if plan.ckpt is None or "optimizer" not in plan.ckpt or plan.train_args.eval_only or finished_limit(plan):
        return
    saved = plan.ckpt["optimizer"]
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not (isinstance(groups, list) and isinstance(saved.get("state"), dict) and all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        raise CheckpointError(f"{plan.ckpt_path} is damaged or from another version of this project (its "
                              f"optimizer state holds no parameter groups and state torch can load); "
                              f"{init_from_fix(plan)}")

    def split(model):
        decayed = [weight_decayed(n, p) for n, p in model.named_parameters()]
        return {"decay": sum(decayed), "no_decay": len(decayed) - sum(decayed)}
    sizes, own = [len(g["params"]) for g in groups], summed_over_layers(plan.model_args, split)
    if sizes != [own["decay"], own["no_decay"]]:
        raise CheckpointError(f"{plan.ckpt_path}: its optimizer state is not of this version's parameter "
                              f"groups (of {sizes} parameter tensors, not "
                              f"[{own['decay']}, {own['no_decay']}]); {init_from_fix(plan)}")


def init_from_fix(plan: RunPlan) -> str:
    """The advice for a checkpoint that cannot be resumed but whose weights can be kept: a new run
    from them (--init_from), reading the run's text (text_read: --init_from takes the model alone,
    and without them a run trains on the hub's TinyStories)."""
    text = text_read(config.to_dict(plan.train_args))
    return f"start a new run from its weights: train.py {init_from_options(plan.ckpt_path, text)}"


# settings naming the text a run reads (empty --data: the hub); not --cache_dir, which is found by its
# contents: a relative one is the working directory's (a moved project keeps its cache)
PATHS = ("data", "val_data", "tokenizer")


def init_tokenizer(init_path: Path) -> Path:
    """The tokenizer of --init_from's checkpoint: the tokenizer.json beside it (train.py and an import
    write one there); load_data checks it against the checkpoint's sha256."""
    path = init_path.parent / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"--init_from: there is no tokenizer.json beside {init_path} (the tokenizer "
                              "its model reads); pass --tokenizer FILE, the one it was trained with")
    return path


def absolute(path: str) -> str:
    """A path setting made absolute against the working directory, as it is saved with the run, so
    that a resume from another folder reads the same files ('' stays: none, or the hub; a glob's
    folder is escaped, its name taken literally; a file that is not there, or a glob that matches
    nothing, stays as typed, for the error that names it; a ~ the shell left is the home folder)."""
    path = storage.expand_home(path)
    if not path or os.path.isabs(path):
        return path
    cwd, pattern = os.getcwd(), any(c in path for c in "*?[") and not os.path.lexists(path)
    if not (glob.glob(path, recursive=True) if pattern else os.path.lexists(path)):
        return path  # (nothing there)
    return str(Path(glob.escape(cwd) if pattern else cwd) / path)


def check_saved_paths(plan: RunPlan, given) -> None:
    """The checkpoint's paths a resume reads without their being typed again (saved_paths) must still
    be there: a DataError naming the first that is not."""
    for name, value in saved_paths(plan, given):
        if not (os.path.lexists(value) or glob.glob(value, recursive=True)):
            what = "folder" if name == "hf_dataset" else "file"  # (relative: an older checkpoint's)
            problem = ("no longer exists" if os.path.isabs(value) else "is relative to the folder its run "
                       f"was started in, and there is no such {what} here ({os.getcwd()})")
            fix = "FOLDER, or --data FILE" if name == "hf_dataset" else "PATH"
            raise errors.DataError(f"--{name}: the checkpoint's {value} {problem}; pass --{name} {fix}")


def saved_paths(plan: RunPlan, given) -> list[tuple[str, str]]:
    """The --data and --val_data the checkpoint saved (absolute, or an older checkpoint's as typed:
    relative to the folder its run was started in, which it does not record), and the --hf_dataset
    where it saved a local folder (an absolute path, or an older checkpoint's folder as typed where it
    cannot be a hub name, sources.path_like: ./corpus; OWNER/NAME may be either, and is left to the hub),
    that this session reads without their being typed again: (name, path) pairs, as the run goes on
    with them (run_settings: an older checkpoint's ~ is the home folder)."""
    saved, t = (plan.ckpt or {}).get("train_args") or {}, plan.train_args
    names = ["val_data"] + ([] if t.eval_only and t.val_data else ["data"])  # (--eval_only: --val_data alone)
    hub = not t.data and not (t.eval_only and t.val_data)  # (the hub is read: for a split no file gives)
    names += ["hf_dataset"] if hub and sources.path_like(saved.get("hf_dataset", "")) else []
    return [(n, saved[n]) for n in names if n not in given and saved.get(n)]


# ---------------------------------------------------------------------------------------------
# Before any work: what is refused, and what is warned of


_COUNTED: dict[str, dict] = {}  # count_parameters() of each model's settings (repr) met so far


def parameters(model_args: ModelArgs, kind: str = "total") -> int:
    """The model's parameter count (`kind`: a count_parameters key, "vision" for the vision stub's), from
    meta-device models of one or two layers (model.summed_over_layers): no time spent building each of
    a huge --n_layers. Counted once per settings (sweep.py checks ~600 candidates, of ~20 models)."""
    key = repr(model_args)
    if key not in _COUNTED:
        _COUNTED[key] = summed_over_layers(model_args, count_parameters)
    return _COUNTED[key][kind]


def memory_floor(model_args: ModelArgs, train_args: TrainArgs, world_size: int = 1) -> dict:
    """A lower bound, in bytes, on what one micro-batch needs (the real need is higher), the larger
    of two moments of a training step: its loss, in the forward (the weights and AdamW's two moments,
    12 bytes a parameter, 4 for the vision stub's, which training on text leaves without gradients or
    moments; one chunk of the fused loss's fp32 logits and their log-softmax, the whole (B*T, V)
    logits never held; the residual stream each layer keeps for backward), and the end of its
    backward (the weights, moments and gradients, 16 bytes a parameter, the activations freed). The
    gradients count at the loss too where this process takes more than one micro-batch a step
    (--grad_accum over `world_size`): the earlier micro-batches' are held there. Evaluation
    (--eval_only): the weights and the loss chunk. The values add up to the floor."""
    try:
        n_params, untrained = parameters(model_args), parameters(model_args, "vision")
    except (RuntimeError, OverflowError):  # a tensor past torch's sizes (--n_experts, --dim ... near 2^31)
        raise ConfigError("the model settings ask for a weight tensor larger than torch can hold; lower "
                          "--vocab_size, --dim, --n_experts or --expert_dim") from None
    tokens = train_args.batch_size * model_args.max_seq_len
    V = model_args.vocab_size
    chunk = min(tokens, max(1, LOSS_CHUNK // V)) * V * 4 * 2
    if train_args.eval_only:
        return {"weights": n_params * 4, "loss chunk": chunk, "activations": 0}
    held, grads = _weight_bytes(n_params, untrained)
    loss = {"loss chunk": chunk, "activations": tokens * model_args.dim * 4 * model_args.n_layers}
    if train_args.grad_accum // world_size > 1:  # the gradients of the micro-batches before
        return {"weights and optimizer state": held, "gradients": grads, **loss}
    # (a step's peak is at one moment: before its first gradient or after its last activation is freed)
    later = loss if sum(loss.values()) > grads else {"gradients": grads}
    return {"weights and optimizer state": held, **later}


def _weight_bytes(n_params: int, untrained: int) -> tuple[int, int]:
    """In training, (the weights and AdamW's two moments, the gradients): 4 bytes a parameter, and 8 and
    4 more of each trained one (the vision stub's are not: training on text gives them no gradient)."""
    trained = n_params - untrained
    return n_params * 4 + trained * 8, trained * 4


def fixed_memory(model_args: ModelArgs, train_args: TrainArgs) -> int:
    """What no batch or context lowers (after memory_floor, which refuses a model too large to count):
    the weights, and in training their gradients and AdamW's two moments."""
    n_params = parameters(model_args)
    if train_args.eval_only:
        return n_params * 4
    return sum(_weight_bytes(n_params, parameters(model_args, "vision")))


def check_settings(plan: RunPlan, device, world: World) -> None:
    """What can be refused before any work, as a bad setting (ConfigError, exit status 2): a
    vocabulary smaller than a byte-level BPE, a vocabulary size or special-token ids other than those
    of the tokenizer the run will train or was given (--tokenizer), a batch that does not split over
    the processes, CUDA graphs with more than one micro-batch per process, more layers to recompute
    (--grad_checkpoint_layers) than the model has, a micro-batch whose weights, loss chunk and
    residual stream alone exceed the device's memory, or a step's micro-batches with them
    (check_step_batches), a --plot that would replace a file of the run (metrics.jsonl, last.pt: a
    plot is written at every evaluation)."""
    model_args, train_args = plan.model_args, plan.train_args
    plot = "" if train_args.eval_only else train_args.plot  # (--eval_only draws no plot)
    if problem := storage.not_an_image("--plot", plot, plan.run_dir):
        raise ConfigError(problem)
    scratch = plan.ckpt is None and plan.init is None  # (resumed, or --init_from: the checkpoint's model)
    if scratch and (problem := too_small(model_args.vocab_size)):
        raise ConfigError(problem)
    if scratch and train_args.tokenizer:  # (before any data is read)
        where = f"--tokenizer {train_args.tokenizer}"
        check_tokenizer(Tokenizer.load(train_args.tokenizer), model_args, where)
    if plan.ckpt is None and not train_args.tokenizer:  # one trained here puts them at ids 0, 1, ...
        preset = config.PRESETS.get(plan.preset, {}).get("ModelArgs", {})
        for i, (name, token) in enumerate(config.SPECIAL_TOKENS.items()):
            value = getattr(model_args, name)
            if value != i:  # (a preset's, the released ones: "drop --eos_id" named an option never typed)
                fix = (f"the {plan.preset} preset sets it; pick another --preset" if preset.get(name) == value
                       else f"drop --{name}")
                raise ConfigError(f"--{name} {value}: the tokenizer this run trains has {token} at id {i}; "
                                  f"{fix} (other ids need a --tokenizer that has them)")
    # (micro-batches are training's: --eval_only splits its windows over the ranks, whatever the
    # checkpoint's --grad_accum, which refused a run trained on 4 processes evaluated on 3; nor has a
    # finished run resumed, which was told to split its batch before it was told it had finished)
    if train_args.grad_accum % world.size and not train_args.eval_only and finished_limit(plan) is None:
        fit = -(-train_args.grad_accum // world.size) * world.size  # (the preset's 1, often: untyped)
        # (a step's batch is --batch_size x --grad_accum sequences, whatever the processes: --grad_accum
        # 2 over 2 doubles a run's batch of 1 x 32, --batch_size 16 --grad_accum 2 keeps it)
        batch = train_args.batch_size * train_args.grad_accum
        keep = (f" (a step's batch is --batch_size x --grad_accum sequences: --batch_size {batch // fit} "
                f"--grad_accum {fit} keeps its {batch})" if batch % fit == 0 else "")
        raise ConfigError(f"--grad_accum {train_args.grad_accum} does not split over {world.size} processes; "
                          f"use a multiple of {world.size}, e.g. --grad_accum {fit}{keep}")
    layers = model_args.n_layers
    if train_args.grad_checkpoint_layers > layers:  # (--eval_only too: it sizes the evaluation's batch)
        raise ConfigError(f"--grad_checkpoint_layers {train_args.grad_checkpoint_layers}: the model has "
                          f"{layers} decoder layers; recompute at most {layers} (0 = all of them)")
    per_process = 1 if train_args.eval_only else train_args.grad_accum // world.size
    graphs = train_args.compile_mode in config.CUDA_GRAPH_MODES and device.type == "cuda"  # none on a CPU
    if graphs and per_process > 1 and runtime.wants_compile(train_args.compile, device):
        raise ConfigError(f"--compile_mode {train_args.compile_mode} replays CUDA graphs, and a replay "
                          f"overwrites the gradients of the micro-batch before it, so it takes one "
                          f"micro-batch per process (here {per_process}); use --grad_accum {world.size}, "
                          "or --compile_mode max-autotune-no-cudagraphs")
    need, have = memory_floor(model_args, train_args, world.size), runtime.device_memory(device)
    total = sum(need.values())
    # the CPU's memory is the machine's: the job's processes there share it, each needing its own
    # (and each would print the line: it is said once a machine); a GPU's is its own process's
    procs = runtime.local_processes() if device.type == "cpu" else 1
    if have and total * procs > have:
        parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in need.items() if v)
        shared = f" a process ({parts}), {total * procs / 1e9:.1f} GB for the {procs} processes here," \
            if procs > 1 else f" ({parts})"
        error = errors.MachineError if device.type == "cpu" else DeviceError
        what = "weights" if train_args.eval_only else "weights and optimizer state"
        weights = fixed_memory(model_args, train_args)
        if weights * procs > have:  # (no batch or context is small enough: --vocab_size 10**9 was told so)
            fixed = plan.ckpt is not None or plan.init is not None  # (the model options are refused there)
            fix = "use a device with more memory (a checkpoint's model is as it was trained)" if fixed else \
                "use a smaller model (--vocab_size, --dim, --n_layers, --n_experts, --expert_dim" + \
                (", --vision_dim, --vision_layers)" if model_args.vision else ")")
            fewer = "run fewer processes, or " if weights <= have else ""  # (one fits: the CPU's, shared)
            raise error(f"the model's {what} alone need {weights * procs / 1e9:.1f} GB"
                        f"{f' for the {procs} processes here' if procs > 1 else ''} but {device} has "
                        f"{have / 1e9:.1f} GB; {fewer}{fix}")
        raise error(f"--max_seq_len {model_args.max_seq_len} x --batch_size {train_args.batch_size} "
                    f"needs at least {total / 1e9:.1f} GB{shared} but {device} has "
                    f"{have / 1e9:.1f} GB; lower --max_seq_len or --batch_size (raise --grad_accum to "
                    "keep the batch), or use a smaller model")
    if have and not train_args.eval_only and finished_limit(plan) is None:
        check_step_batches(plan, device, world, total * procs, have, procs)


def check_step_batches(plan: RunPlan, device, world: World, floor: int, have: int, procs: int) -> None:
    """A step draws all its micro-batches (this process's share of --grad_accum: int64 inputs and
    targets) before it trains on them (train.batches_at): where those past the first, which the memory
    floor (`floor` bytes, for the `procs` processes on this device) stands for, and the floor exceed the
    device's `have`, a refusal naming --grad_accum. (--grad_accum 300000000 read the data and built the
    model, then ran out of memory advising a lower --batch_size.)"""
    t, T = plan.train_args, plan.model_args.max_seq_len
    micros = -(-t.grad_accum // world.size)  # (rank 0's: ranks r, r + size, ...)
    held = (micros - 1) * t.batch_size * T * 16 * procs
    if floor + held > have:
        error = errors.MachineError if device.type == "cpu" else DeviceError
        share = f" (this process's share of {world.size})" if world.size > 1 else ""
        each = f" each, for the {procs} processes here" if procs > 1 else ""
        raise error(f"--grad_accum {t.grad_accum}: a step draws its {micros:,} micro-batches{share} of "
                    f"--batch_size {t.batch_size} x --max_seq_len {T} tokens before it trains on them "
                    f"({held / 1e9:.1f} GB past the first{each}, on top of the {floor / 1e9:.1f} GB their "
                    f"micro-batch needs), but {device} has {have / 1e9:.1f} GB; lower --grad_accum")


# The settings of training alone: typed beside --eval_only, they change nothing (a warning says so).
# (Not --grad_checkpoint nor its --grad_checkpoint_layers: they size the evaluation's auto batch,
# train.eval_batch_multiple.)
TRAINING_ONLY = ("grad_accum", "max_steps", "max_minutes", "lr", "min_lr",
                 "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "eval_every", "log_every",
                 "save_every", "save_in_background", "max_bad_steps", "tokenizer_train_mb", "plot",
                 "wandb_mode", "wandb_project", "wandb_group", "wandb_name")


def setting_warnings(plan: RunPlan, given) -> list[str]:
    """Settings that are allowed but are probably not what was meant: training settings typed beside
    --eval_only (and a --run or --out_dir that do not name --resume's checkpoint, a --data or --hf_dataset
    where the run's --val_data is scored, another --data whose held-out slice alone is), a warmup that
    outlasts the run, a --grad_checkpoint_layers without --grad_checkpoint, a --compile_mode beside
    --compile false, a new model of a context sample.py cannot generate from (--max_seq_len 1) or put
    an image in (a --vision model's), a new model's llama3 RoPE scaling from a context no shorter
    than its own, a --val_text_field for a .txt --val_data, a --val_fraction typed where a validation
    source is given (it holds nothing out), another held-out slice than the checkpoint's (at --resume
    or --eval_only)."""
    t, lines = plan.train_args, []
    unused = TRAINING_ONLY + RESUME_MAY_CHANGE  # (the router losses' weights: not in the loss evaluated)
    ignored = [f"--{name}" for name in unused if name in given] if t.eval_only else []
    if ignored:  # (train.py --eval_only --lr 5 --max_steps 3 said nothing of them)
        verb = "has" if len(ignored) == 1 else "have"
        lines.append(f"--eval_only trains nothing: {', '.join(ignored)} {verb} no effect")
    elsewhere = [f"--{name}" for name in ("run", "out_dir") if name in given] if t.eval_only else []
    if elsewhere and plan.forks:  # (--eval_only --resume CKPT --run zz said nothing: it scores CKPT there)
        verb = "has" if len(elsewhere) == 1 else "have"
        lines.append(f"--eval_only scores {plan.ckpt_path} where it lies and writes nothing: "
                     f"{' and '.join(elsewhere)} {verb} no effect")
    lines += unscored_source(plan, given)
    # (said once, at the run's start: not again where a resume has the run's own, typed or not)
    run = (plan.ckpt or {}).get("train_args") or {}
    resumed_as_is = plan.ckpt is not None and all(run.get(k) == getattr(t, k) for k in ("warmup_steps",
                                                                                       "max_steps"))
    # (a run at its limit takes no step: finished, it is told "raise --max_steps"; stopped there by a
    # signal, or with an evaluation put off, it only ends)
    trains = not t.eval_only and (plan.ckpt is None or limit_reached(plan.ckpt, t) is None)
    if t.warmup_steps >= t.max_steps and trains and not resumed_as_is:
        last = t.lr * t.max_steps / t.warmup_steps  # the last step's (train.lr_at's warmup)
        lines.append(f"--warmup_steps {t.warmup_steps} is not below --max_steps {t.max_steps}: the learning "
                     f"rate rises to {last:.2g} (--lr {t.lr:g}) and never decays; "
                     "lower --warmup_steps")
    if plan.model_args.max_seq_len < 2 and trains and plan.ckpt is None:  # (said at the run's start)
        lines.append("--max_seq_len 1: sample.py cannot generate from a model of a 1-token context (the "
                     "story's start token fills it); use 2 or more for a model to sample from")
    m, image = plan.model_args, 4 + plan.model_args.image_tokens  # (sample.image_prompt, and its start token)
    if m.vision and m.max_seq_len > 1 and m.max_seq_len <= image and trains and plan.ckpt is None:
        lines.append(f"--max_seq_len {m.max_seq_len}: sample.py --image cannot use this --vision model, an "
                     f"image takes {image} tokens of its context; use {image + 1} or more for room to write")
    if (m.rope_scaling == "llama3" and m.rope_original_max_seq_len >= m.max_seq_len > 1 and trains
            and plan.ckpt is None and plan.init is None):  # (an import's own L0 is its pretraining's)
        fit = min(m.max_seq_len - 1, max(1, int(m.max_seq_len / m.rope_factor)))
        lines.append(f"--rope_scaling llama3 stretches a context of --rope_original_max_seq_len "
                     f"{m.rope_original_max_seq_len} to a longer one, and --max_seq_len {m.max_seq_len} is "
                     "not longer (transformers warns of it at export); pass --rope_original_max_seq_len "
                     f"{fit} (--max_seq_len / --rope_factor), or --rope_scaling none")
    if ("grad_checkpoint_layers" in given and t.grad_checkpoint_layers and not t.grad_checkpoint
            and (trains or t.eval_only)):
        lines.append(f"--grad_checkpoint_layers {t.grad_checkpoint_layers} has no effect without "
                     "--grad_checkpoint true (no layer is recomputed); pass both, or drop it")
    if "compile_mode" in given and t.compile_mode != "default" and t.compile == "false":  # (said nothing)
        lines.append(f"--compile_mode {t.compile_mode} has no effect with --compile false (nothing is "
                     "compiled); drop it, or pass --compile true to compile in that mode")
    lines += sources.source_warnings(t, given)
    saved = (plan.ckpt or {}).get("train_args") or {}
    if held_out_of_saved_data(saved, t) and "val_fraction" in given and saved.get("val_fraction") not in (
            None, t.val_fraction):
        # the checkpoint's validation text was a held-out slice of this --data: another slice overlaps
        did = "scores documents it trained on" if t.eval_only else "trains on documents it held out"
        every = sources.held_out_every(saved["val_fraction"])
        lines.append(f"--val_fraction {t.val_fraction:g} is not the checkpoint's: its validation text was 1 "
                     f"in {every} documents of --data, held out; this slice {did}, so its validation loss "
                     "is not held out: type the run's own, or --val_data")
    return [f"warning: {line}" for line in lines]


# settings a resume always sets anew, whatever its run saved (where it lies, what it was asked to do, the
# tokenizer copy it reads: checked by its hash, the device this session runs on: device_change)
RESUME_SETS = ("resume", "eval_only", "run", "out_dir", "tokenizer", "device")


def resume_changes(plan: RunPlan, given, dtype: torch.dtype | None = None) -> str | None:
    """At a resume that trains, the settings typed that are not the run's (its training settings and the
    router losses' weights: RESUME_MAY_CHANGE) as one line, so that a value from a shell's history or a
    script, not meant for this run, is seen: a resume takes them (only the model's others are refused).
    None where none differs, at --eval_only (setting_warnings says they do nothing), for a finished run
    (it trains nothing: told to raise its limit) and for a checkpoint with no run's settings (an import's
    weights: refused as a resume). One at its limit that has yet to end trains no step: not "in force"
    (_trains_no_step). A --dtype typed is the run's where it is the dtype the run trained in (_dtype_named;
    `dtype`: this session's, resolved)."""
    saved = (plan.ckpt or {}).get("train_args")
    if not isinstance(saved, dict) or plan.train_args.eval_only or finished_limit(plan):
        return None
    train = config.to_dict(plan.train_args)  # (in the dataclass's order)
    # (the run's own as it goes on with them, run_settings: an older checkpoint's --cache_dir '' is .)
    pairs = [(train, saved, [k for k in train if k not in RESUME_SETS]),
             (config.to_dict(plan.model_args), plan.ckpt.get("model_args") or {}, RESUME_MAY_CHANGE)]
    changed = {k: f"--{k} {_shown(now[k])} (the run's {_shown(was[k])})" for now, was, names in pairs
               for k in names if k in given and k in now and k in was
               and not _same(k, now[k], was[k], plan.run_dir)}
    if "dtype" in changed and not _dtype_named(plan, given, dtype):
        del changed["dtype"]
    if (limit := limit_reached(plan.ckpt, plan.train_args)) is not None:
        return _trains_no_step(plan, limit, changed)
    return f"resume: {', '.join(changed.values())}, in force from here" if changed else None


def _trains_no_step(plan: RunPlan, limit: str, changed: dict) -> str | None:
    """resume_changes' line for a resume at a limit it has reached (a run a signal stopped, resumed
    with --max_steps or --max_minutes lowered to where it stopped, or with an evaluation put off there):
    it trains no step (train.wrap_up ends it), so no change typed is in force; None where none is typed.
    `changed`: the settings typed that are not the run's, by name, as the line names them."""
    if not changed:
        return None
    t, step = plan.train_args, plan.ckpt.get("step", 0)
    named = changed.pop(limit, f"--{limit} {_shown(getattr(t, limit))}")
    at = (f"is not above its step {step}" if limit == "max_steps"
          else f"is spent by its {plan.ckpt.get('elapsed', 0.0) / 60:.1f} minutes so far")
    others = ", ".join(f"--{k}" for k in changed)
    moot = f"; {others} {'has' if len(changed) == 1 else 'have'} no effect" if changed else ""
    ends = "it trains no step, and ends there (its final evaluation, then last.pt)"
    return f"resume: {named} {at}: {ends}{moot}"


def _same(name: str, now, was, run_dir) -> bool:
    """Whether a setting typed at a resume is the run's: --data, --val_data and --cache_dir as the files
    they name, --plot as the file it names in `run_dir`, where a relative one lies (as
    held_out_of_saved_data: ../data/x.txt from another folder, a folder's trailing slash, an older
    checkpoint's relative path, ./cache for the run's cache, ./loss.png for its plot, all the run's
    own, were said to be changes)."""
    if now == was:
        return True
    if not (name in ("data", "val_data", "cache_dir", "plot") and now and was):
        return False
    folder = str(run_dir) if name == "plot" else ""  # (os.path.join: an absolute path is itself)
    return os.path.realpath(os.path.join(folder, now)) == os.path.realpath(os.path.join(folder, was))


def device_change(plan: RunPlan, device: torch.device, dtype: torch.dtype, given) -> str | None:
    """At a resume that trains, one line where this session trains on another kind of device (cpu,
    cuda) than the run last trained on, or in another dtype (--dtype auto: bfloat16 on a GPU from sm80
    on, float32 on a CPU): --device is where this session runs, as --out_dir is where it lies (a run
    started with --device cpu on a GPU machine, resumed without it, trains on the GPU), so a resume is
    not bit for bit the run it continues. It names the option that goes back, where this machine can.
    `device`, `dtype`: this session's, resolved. None where both are the run's (another GPU is no
    change), where the checkpoint cannot tell (trained_on), where nothing trains (as resume_changes:
    --eval_only, a finished run, one at its limit), and for the dtype where a --dtype other than the
    run's is typed (resume_changes names it, _dtype_named; the run's own, auto, may resolve to another)."""
    saved = (plan.ckpt or {}).get("train_args")
    if not isinstance(saved, dict) or plan.train_args.eval_only or limit_reached(plan.ckpt, plan.train_args):
        return None
    if (was := trained_on(plan.ckpt)) is None:
        return None
    was_device, was_dtype = was
    now_dtype = str(dtype).removeprefix("torch.")
    kind = torch.device(was_device).type
    named = _dtype_named(plan, given, dtype)  # (resume_changes')
    other_dtype = was_dtype not in (None, now_dtype) and not named
    if kind == device.type and not other_dtype:
        return None
    line = (f"resume: on {device} in {now_dtype} (the run trained on {was_device}"
            f"{f' in {was_dtype}' if was_dtype else ''}): its steps from here are not bit for bit the run's")
    if kind != device.type:
        back = f"--device {kind}" if kind == "cpu" or torch.cuda.is_available() else None
    else:
        back = f"--dtype {was_dtype}"
    return f"{line}; {back} goes on as it did" if back else line


def _dtype_named(plan: RunPlan, given, dtype: torch.dtype | None) -> bool:
    """Whether resume_changes names a --dtype typed at a resume (and so device_change leaves the dtype
    to it): typed, not the run's saved --dtype, and not the dtype the run trained in (trained_on) as
    resolved now: --dtype float32 where the run's auto trained in float32 (on a CPU), or auto that
    resolves to the float32 the run's --dtype float32 trained in, changes nothing. `dtype`: this
    session's, resolved (None: a typed auto stays unresolved, and is named)."""
    saved, typed = plan.ckpt.get("train_args") or {}, plan.train_args.dtype
    if "dtype" not in given or saved.get("dtype") in (None, typed):
        return False
    now = str(dtype).removeprefix("torch.") if dtype is not None else None if typed == "auto" else typed
    was = trained_on(plan.ckpt)
    return was is None or was[1] is None or now != was[1]


def trained_on(ckpt: dict) -> tuple[str, str | None] | None:
    """The device and dtype a checkpoint's run last trained on, as it records them ("trained_on", from
    train.Job.to_checkpoint); an older checkpoint's from its saved --device and --dtype where they tell
    (--dtype auto is float32 on a CPU, on a GPU as its generation said: None). None where its --device
    does not tell: auto (a GPU or the CPU, by the machine of the day), or no device's name."""
    record = ckpt.get("trained_on")
    if isinstance(record, dict):
        name, dtype = record.get("device"), record.get("dtype")
    else:
        saved = ckpt.get("train_args") or {}
        name, dtype = saved.get("device"), saved.get("dtype", "auto")
        if dtype == "auto":
            dtype = "float32" if name == "cpu" else None
    try:
        kind = torch.device(name).type if isinstance(name, str) else None
    except RuntimeError:  # (auto, or a damaged record)
        kind = None
    return (name, dtype if isinstance(dtype, str) else None) if kind in ("cpu", "cuda") else None


def _shown(value) -> str:
    """A setting's value as typed on a command line (a float in full where :g rounds it: 0.00123456789
    and 0.001234568 were both 0.00123457)."""
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value).lower() if isinstance(value, bool) else shlex.quote(str(value))  # ('' for none)


def held_out_of_saved_data(saved: dict, t: TrainArgs) -> bool:
    """Whether the validation text is a held-out slice of the checkpoint's own --data, as its was
    (saved: the checkpoint's training settings, as its run goes on with them: run_settings; an older
    checkpoint's relative --data is as typed)."""
    return bool(saved.get("data") and t.data and os.path.realpath(saved["data"]) == os.path.realpath(t.data)
                and not saved.get("val_data") and not t.val_data)


def held_out_moved(plan: RunPlan, saved_key: str, key: str) -> bool:
    """Whether a held-out slice of the checkpoint's --data, at its --val_fraction, holds other
    documents than those the run held out (the checkpoint's val_set and this run's, train.EvalSet.key:
    the shard's content, then the window count): a file of --data added before another shifts which
    documents are 1 in round(1 / --val_fraction), so the slice holds documents the run trained on (text
    added at the end alone leaves the old slice where it was: the warning says so, as the shard's sha256
    cannot tell it)."""
    saved, t = (plan.ckpt or {}).get("train_args") or {}, plan.train_args
    return (held_out_of_saved_data(saved, t) and saved.get("val_fraction") == t.val_fraction
            and bool(saved_key) and saved_key.split(":")[0] != key.split(":")[0])


def unscored_source(plan: RunPlan, given) -> list[str]:
    """The warning for text typed beside --eval_only that is not scored as the user may think: a
    --data or --hf_dataset where the run has its own --val_data, which is scored instead (--eval_only
    --data valid.txt scored it and said nothing), none where --data names that --val_data, nor for an
    --hf_dataset beside a --data (sources.source_warnings says so); and a --data other than the run's,
    of which 1 in round(1 / --val_fraction) documents alone are scored, as a run on it would hold out."""
    t = plan.train_args
    saved = (plan.ckpt or {}).get("train_args") or {}
    if t.eval_only and not t.val_data and "data" in given and t.data and not held_out_of_saved_data(saved, t):
        every = sources.held_out_every(t.val_fraction)
        return [f"--eval_only scores 1 in {every} documents of --data {t.data}, the slice a run on it "
                f"would hold out (--val_fraction {t.val_fraction:g}), not all of it; pass --val_data "
                f"{t.data} to score it whole"]
    if not (t.eval_only and t.val_data and "val_data" not in given):
        return []
    scored = f"--eval_only scores the run's --val_data {t.val_data}"
    if "data" in given and t.data:
        if os.path.realpath(t.data) == os.path.realpath(t.val_data):
            return []
        return [f"{scored}, not a slice of --data: --data has no effect; pass --val_data {t.data} to score "
                "it"]
    if "hf_dataset" in given and not t.data:  # (--val_data takes files: the hub's split is scored without it)
        return [f"{scored}, not the validation split of --hf_dataset: --hf_dataset has no effect; pass "
                "--val_data '' to score that split"]
    return []


# ---------------------------------------------------------------------------------------------
# A finished run


def finished_limit(plan: RunPlan) -> str | None:
    """The limit a resumed run's checkpoint has reached (max_steps, or max_minutes: its time so far),
    with no evaluation put off by a signal, written at its run's end (ended): there is nothing to
    train (train.finished_run). None where the run trains on or has yet to end (a run a signal
    stopped, resumed with --max_steps lowered to its step: train.wrap_up ends it), and for
    --eval_only."""
    ckpt, t = plan.ckpt, plan.train_args
    if ckpt is None or t.eval_only or ckpt.get("eval_due") or not ended(ckpt):
        return None
    return limit_reached(ckpt, t)


def limit_reached(ckpt: dict, t: TrainArgs) -> str | None:
    """The limit of `t` a checkpoint is at: max_steps, or max_minutes (its time so far); else None."""
    if ckpt.get("step", 0) >= t.max_steps:
        return "max_steps"
    return "max_minutes" if t.max_minutes and ckpt.get("elapsed", 0.0) >= t.max_minutes * 60 else None


def ended(ckpt: dict) -> bool:
    """Whether a checkpoint was written at its run's end (train.wrap_up: the final evaluation done),
    not before it (a signal, --save_every, a best.pt on the way): its step at the --max_steps it was
    saved with, or its time at that --max_minutes. One without training settings counts as ended."""
    saved = ckpt.get("train_args") or {}
    if "max_steps" not in saved or ckpt.get("step", 0) >= saved["max_steps"]:
        return True
    budget = saved.get("max_minutes") or 0
    return budget > 0 and ckpt.get("elapsed", 0.0) >= budget * 60


# ---------------------------------------------------------------------------------------------
# The run folder: claimed, then checked by its holder


def claim_folder(plan: RunPlan) -> storage.RunFolder:
    """Lock the run folder, then check what only the folder's holder can check: a new run never
    takes a folder with a checkpoint, nor does a fork (another folder's checkpoint resumed into it:
    it would replace the folder's checkpoints and cut its metrics.jsonl to the other run's), nor
    does a best.pt resumed over its folder's later last.pt, a resumed checkpoint must be the model
    of the folder, and the metrics.jsonl a resumed run goes on with must read (before any data
    work, not after the data and the model are built)."""
    folder = storage.RunFolder(plan.run_dir)
    try:
        held = [n for n in ("last.pt", "best.pt") if (plan.run_dir / n).exists()]
        how = "--resume" if "last.pt" in held else f"--resume {plan.run_dir / 'best.pt'}"
        if plan.init is not None:  # (--resume beside --init_from is refused)
            how = f"{how} without --init_from"
        if plan.ckpt is None and held:  # best.pt alone: a run killed before its first last.pt
            raise RunError(f"{plan.run_dir} already holds a checkpoint ({held[0]}); pass {how} to continue "
                           "it or pick another --run")
        if held and plan.forks:
            raise RunError(f"{plan.run_dir} already holds a run of its own ({held[0]}), which resuming "
                           f"{plan.ckpt_path} there would replace; fork into a new folder (--resume "
                           f"{plan.ckpt_path} {fork_options(plan)}), or continue that run with "
                           f"{run_options(plan.run_dir)} {how}")
        check_same_model(plan)
        check_no_later_last(plan)
        log = plan.run_dir / "metrics.jsonl"  # (its own log, which it goes on with: not a finished run's)
        if plan.ckpt is not None and not plan.forks and log.exists() and not finished_limit(plan):
            runlog.resumed_records(log)
    except BaseException:
        folder.release()
        raise
    return folder


def check_no_later_last(plan: RunPlan) -> None:
    """Another checkpoint of the run folder resumed there (its best.pt) while the folder's last.pt is
    at a later step is refused before anything is written: the resumed run would write its own
    last.pt over that one and cut metrics.jsonl back to the earlier step. A last.pt that cannot be
    read (the reason best.pt is resumed, often) is no obstacle; nor is a finished run, which writes
    nothing."""
    last = plan.run_dir / "last.pt"
    if plan.ckpt is None or plan.forks or finished_limit(plan) or not last.is_file() \
            or last.resolve() == plan.ckpt_path.resolve():
        return
    try:  # (mmap: the step alone is read, not the weights)
        later = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception:  # not readable, or not a checkpoint: nothing good is lost by writing over it
        return
    step = plan.ckpt.get("step", 0)
    if isinstance(later, int) and later > step:
        raise RunError(f"{last} is at step {later}, later than {plan.ckpt_path} (step {step}), and resuming "
                       f"that here would write over it and drop metrics.jsonl's records after step {step}; "
                       f"fork it into a new folder (--resume {plan.ckpt_path} "
                       f"{fork_options(plan)}), resume last.pt (--resume "
                       f"{plan.run_dir}), or move {last} away first")


def check_same_model(plan: RunPlan) -> None:
    """A checkpoint resumed into a folder whose model.json describes another model (one copied in
    from another run) is refused before anything is written: resuming it would cut the folder's
    metrics.jsonl to the other run's history."""
    saved = plan.run_dir / "model.json"
    if plan.ckpt is None or not saved.exists():
        return
    try:
        folder = json.loads(saved.read_text())
    except ValueError:
        return  # not ours to judge: start_logging rewrites it
    diffs = [f"{k}: checkpoint {v!r}, folder {folder[k]!r}" for k, v in plan.ckpt["model_args"].items()
             if k in folder and folder[k] != v and k not in RESUME_MAY_CHANGE]  # (a resume may change them)
    if diffs:
        raise CheckpointError(f"{plan.ckpt_path} is not this run's model: its settings differ from {saved} ("
                              + "; ".join(diffs) + f"); resume it into a folder of its own (--resume "
                              f"{plan.ckpt_path} {fork_options(plan)}), or put "
                              "this run's own checkpoint back")


# ---------------------------------------------------------------------------------------------
# The W&B run to go on with


def wandb_id(plan: RunPlan, log=None) -> str | None:
    """The W&B run to go on with: the checkpoint's, unless it is resumed into another folder (a
    fork, --resume CKPT --run NEW_NAME, gets a W&B run of its own), that W&B run failed to finish
    (it may lack records: a new one gets the whole history), or metrics.jsonl holds records past the
    checkpoint's step (a run killed after its last save, or a rollback: last.pt moved away), which
    that W&B run got and cannot take back: a new one gets the history the resumed run keeps, with
    each step once (the old one is left as it was, which `log` says), or another --wandb_project is
    typed (W&B would start an empty run of that id there: a new one gets the whole history; another
    entity is start_wandb's to find, W&B's settings read)."""
    if plan.ckpt is None or plan.forks:
        return None
    run_id = plan.ckpt.get("wandb_id")
    if run_id is None or run_id in runlog.unfinished_wandb(plan.run_dir):
        return None
    says = log is not None and plan.train_args.wandb_mode != "disabled" and not plan.train_args.eval_only
    project, now = (plan.ckpt.get("train_args") or {}).get("wandb_project"), plan.train_args.wandb_project
    if project is not None and project != now:
        if says:
            log(f"wandb: W&B run {run_id} is in project {project}, not --wandb_project {now}; a new W&B run "
                f"in {now} gets the history from the start (the old one is left as it was)")
        return None
    step, path = plan.ckpt.get("step", 0), plan.run_dir / "metrics.jsonl"
    try:
        past = sum(r["step"] > step for r in runlog.resumed_records(path)) if path.exists() else 0
    except RunError:  # (claim_folder refused it already)
        past = 0
    if past and says:
        log(f"wandb: metrics.jsonl holds {past} record{'s' * (past != 1)} past step {step}, which W&B run "
            f"{run_id} may have got and cannot take back; a new W&B run gets the history from the start (the "
            "old one is left as it was)")
    return None if past else run_id


