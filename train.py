"""Train the Llama 4 model on TinyStories (or any text).

    python train.py                                   # scout-128m on TinyStories from the hub
    python train.py --preset tiny --data FILE --val_data FILE --max_minutes 10
    python train.py --run NAME --resume               # continue exactly where NAME stopped
    python train.py --run NAME --eval_only --val_data FILE
    torchrun --nproc_per_node 8 train.py ...          # DDP, same global batch as one process

One step: grad_accum micro-batches (split over DDP ranks), AdamW, linear warmup then cosine decay,
gradient clipping, bf16 autocast on CUDA. Loss = LM loss over real tokens + the router's
auxiliary terms, each logged apart. The run folder checkpoints/<run>/ holds last.pt, best.pt,
model.json / train.json, tokenizer.json, metrics.jsonl and the W&B run.

How this departs from the obvious version:
- A step is a pure function of (seed, step): batches come from data.get_batch(seed, step, micro)
  and the router noise of each micro-batch is seeded by (seed, step, micro). So on CPU a resumed
  run is bit-identical to an uninterrupted one (on CUDA, atomic adds in index_add and attention
  backward leave float-rounding differences), and 1 process equals N DDP processes with the same
  global batch (rank r takes micro-batches r, r + N, ...). RNG states are saved all the same.
  With --max_minutes the schedule follows the clock, so a resumed run is not bit-identical.
- Checkpoints are written atomically (temporary file, fsync, rename), loaded with
  weights_only=True, never written when non-finite; a non-finite step is skipped, not applied.
- Ctrl-C / SIGTERM finish the current step, save last.pt and exit cleanly.
- --max_minutes lays the cosine over wall-clock time: the schedule's progress is the larger of
  steps done / max_steps and minutes spent / max_minutes, and the run ends when either is spent.
"""

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import config
import data
from config import ConfigError, ModelArgs, TrainArgs
from model import Llama4, build_from_state, count_parameters


class TrainError(Exception):
    """A run cannot start or continue; the message says why and what to do."""


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or does not match the settings."""


def log(msg: str):
    if RANK == 0:
        from tqdm import tqdm
        tqdm.write(msg)


RANK, WORLD = 0, 1

# ---------------------------------------------------------------------------------------------
# Devices and processes


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def setup_distributed(device: torch.device) -> torch.device:
    """Under torchrun: join the process group (NCCL on CUDA, gloo on CPU), one GPU per process."""
    global RANK, WORLD
    if "RANK" not in os.environ:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    RANK, WORLD = dist.get_rank(), dist.get_world_size()
    return device


def all_reduce(values: list[float], device, op=None) -> list[float]:
    """Sum (or `op`, e.g. dist.ReduceOp.MAX) of a few numbers over the ranks."""
    if WORLD == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


@contextmanager
def rank0_first():
    """Rank 0 runs the block first (building the data caches); the other ranks then run it (and
    find the caches built). Two processes writing one cache would delete each other's files."""
    if RANK != 0:
        dist.barrier()
    yield
    if RANK == 0 and WORLD > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Checkpoints


def latest_run(out_dir) -> Path:
    runs = [p.parent for p in Path(out_dir).glob("*/last.pt")]
    if not runs:
        raise CheckpointError(f"no run with a last.pt under {out_dir}/; train one first or pass a path")
    return max(runs, key=lambda p: (p / "last.pt").stat().st_mtime)


def find_checkpoint(path_or_run: str, out_dir="checkpoints") -> Path:
    """A checkpoint file from a file, a run folder, a run name, or "" (the most recent run)."""
    p = Path(path_or_run) if path_or_run else latest_run(out_dir)
    if not p.exists() and (Path(out_dir) / path_or_run).exists():
        p = Path(out_dir) / path_or_run
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; pass a .pt file or a run folder")
    return p


def load_checkpoint(path, device="cpu") -> dict:
    """torch.load with weights_only=True: tensors and plain data only, no pickled code runs."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
            raise ValueError("not a checkpoint of this project")
        return ckpt
    except Exception as e:  # truncated zip, bad pickle, foreign file ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is corrupt or unreadable ({reason}); it was left in place: "
                              "resume from another checkpoint (e.g. best.pt) or start a new --run") from e


def save_checkpoint(path, state: dict):
    config.atomic_write(path, lambda f: torch.save(state, f))


def load_model(path, device="cpu") -> tuple[Llama4, Path]:
    """A checkpoint -> (model in eval mode, run folder)."""
    ckpt = load_checkpoint(path, device)
    args = config.from_dict(ModelArgs, ckpt["model_args"], where=str(path))
    return build_from_state(args, ckpt["model"], device).eval(), Path(path).parent


def save_model_only(model: Llama4, path):
    """A checkpoint holding only weights and settings (for sample.py and export)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": model.state_dict(), "model_args": config.to_dict(model.args), "step": 0})


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
            "numpy": np_state["state"]["key"].tolist(), "numpy_pos": int(np_state["state"]["pos"]),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict):
    random.setstate((3, tuple(s["python"]), s["python_pos"]))
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np.array(s["numpy"], dtype=np.uint32), "pos": s["numpy_pos"]},
                         "has_gauss": 0, "gauss": 0.0})
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---------------------------------------------------------------------------------------------
# Optimisation


def make_optimizer(model: Llama4, a: TrainArgs, device) -> torch.optim.AdamW:
    """AdamW (fused); weight decay on matrices only (not norms, biases, nor the router noise projection,
    which sets the noise scale: decaying it would push the noise to a constant, not to zero)."""
    def decays(name, p):
        return p.dim() >= 2 and ".router_noise." not in name
    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all parameters; on CPU ~3x faster than the default, which matters for
    # an MoE, whose optimizer state grows with its total (not active) parameters
    return torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), fused=device.type in ("cuda", "cpu"))


def lr_at(a: TrainArgs, step: int, minutes: float = 0.0) -> float:
    """Linear warmup for warmup_steps, then cosine from lr to min_lr. Progress is the larger of the
    step fraction and (with --max_minutes) the wall-clock fraction."""
    if step < a.warmup_steps:
        return a.lr * (step + 1) / a.warmup_steps
    progress = (step - a.warmup_steps) / max(1, a.max_steps - a.warmup_steps)
    if a.max_minutes > 0:
        progress = max(progress, minutes / a.max_minutes)
    progress = min(progress, 1.0)
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1 + math.cos(math.pi * progress))


def micro_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the router noise of one micro-batch: a pure function of (seed, step, micro)."""
    return int(np.random.SeedSequence([seed, step, micro, 1]).generate_state(1)[0])


def accumulate(model, batches, seed, step, micros, autocast, no_sync):
    """Forward and backward over this process's micro-batches; gradients summed over them with
    weight 1/len(batches) (DDP then averages over ranks, giving the mean over the global batch).
    Returns summed detached stats."""
    stats = {"loss": 0.0, "lm_loss": 0.0, "aux_loss": 0.0, "z_loss": 0.0}
    counts = entropy = None
    for i, ((x, y), micro) in enumerate(zip(batches, micros, strict=True)):
        torch.manual_seed(micro_seed(seed, step, micro))
        with nullcontext() if i == len(batches) - 1 else no_sync():  # DDP syncs on the last only
            with autocast:
                out = model(x, targets=y)
            (out.loss / len(batches)).backward()
        for k in stats:
            value = getattr(out, k)
            stats[k] += float(value.detach()) / len(batches) if value is not None else 0.0
        if out.expert_counts is not None:
            counts = out.expert_counts if counts is None else counts + out.expert_counts
            e = out.router_entropy / len(batches)
            entropy = e if entropy is None else entropy + e
    return stats, counts, entropy


# ---------------------------------------------------------------------------------------------
# Throughput


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token: 6 x active matmul parameters (embedding lookups excluded) plus
    attention's score and value matmuls, 12 x heads x head_dim x mean keys per query (causal: about
    half the context, or half the chunk on chunked layers)."""
    with torch.device("meta"):
        counts = count_parameters(Llama4(args))
    matmul = counts["active_per_token"] - counts["embedding"] - counts["router_noise"]
    attn = 0.0
    for i in range(args.n_layers):
        span = min(seq_len, args.attn_chunk_size) if args.uses_rope(i) else seq_len
        attn += 12 * args.n_heads * args.head_dim * (span + 1) / 2
    return 6 * matmul + attn


GPU_BF16_PEAK = {  # dense bf16 tensor-core FLOP/s, by substring of the device name
    "H200": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10G": 125e12,
    "A10": 125e12, "A6000": 155e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12,
    "T4": 65e12, "B200": 2250e12,
}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak: a table of GPU bf16 peaks on CUDA; a GEMM measured now on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_BF16_PEAK.items() if k in name), None)
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t, reps = time.perf_counter(), 0
    while time.perf_counter() - t < 0.3:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t)


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model, val, tok, args: ModelArgs, a: TrainArgs, device, autocast) -> dict:
    """Loss over the fixed validation windows (this rank's share, summed over ranks)."""
    was_training = model.training
    model.eval()
    n = data.n_val_windows(val.tokens, args.max_seq_len, a.eval_windows)
    start, stop = data.rank_windows(n, RANK, WORLD)
    nats = tokens = n_bytes = 0.0
    for x, y in data.val_batches(val.tokens, a.batch_size, args.max_seq_len, a.eval_windows, start, stop,
                                 pad_id=args.pad_id):
        x, y = x.to(device), y.to(device)
        with autocast:
            logits = model(x).logits
        nats += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1,
                                      reduction="sum"))
        tokens += int((y >= 0).sum())
        n_bytes += data.count_bytes(y, tok.token_bytes)
    nats, tokens, n_bytes = all_reduce([nats, tokens, n_bytes], device)
    model.train(was_training)
    per_token = nats / max(tokens, 1)
    return {"nats_per_token": per_token, "perplexity": math.exp(min(per_token, 50)),
            "bits_per_byte": data.bits_per_byte(nats, n_bytes) if n_bytes else float("nan"),
            "tokens": int(tokens), "bytes": int(n_bytes)}


# ---------------------------------------------------------------------------------------------
# Logging: tqdm, metrics.jsonl, W&B, the loss plot


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def start_wandb(a: TrainArgs, run_dir: Path, settings: dict, run_name: str):
    mode = a.wandb_mode
    if mode == "disabled":
        return None
    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
    import wandb
    try:
        return wandb.init(project=a.wandb_project, group=a.wandb_group or None, name=a.wandb_name or run_name,
                          id=settings.get("wandb_id"), resume="allow", dir=str(run_dir), mode=mode,
                          config=settings, settings=wandb.Settings(init_timeout=60, silent=True))
    except Exception as e:  # no network, no login: never crash a run over its dashboard
        log(f"wandb: {mode} start failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "logging offline instead")
        return wandb.init(project=a.wandb_project, name=a.wandb_name or run_name, dir=str(run_dir),
                          mode="offline", config=settings)


class Metrics:
    """metrics.jsonl in the run folder (rank 0), mirrored to W&B."""

    def __init__(self, run_dir: Path, wandb_run, keep_until_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        self.wandb = wandb_run
        if keep_until_step is not None and self.path.exists():  # drop lines a crashed run wrote
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln)["step"] <= keep_until_step]
            config.atomic_write(self.path, "".join(ln + "\n" for ln in kept).encode())
        elif keep_until_step is None and self.path.exists():
            self.path.unlink()

    def write(self, record: dict, wandb_extra: dict | None = None):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            prefix = record["kind"]
            flat = {f"{prefix}/{k}": v for k, v in record.items()
                    if isinstance(v, (int, float)) and k not in ("step", "kind")}
            self.wandb.log({**flat, **(wandb_extra or {})}, step=record["step"])


def new_window() -> dict:
    """Sums over the steps since the last log line (this rank's)."""
    return {"steps": 0, "busy": 0.0, "loss": 0.0, "lm_loss": 0.0, "aux_loss": 0.0, "z_loss": 0.0,
            "counts": None, "entropy": None}


def add_to_window(w: dict, stats: dict, counts, entropy):
    w["steps"] += 1
    for k in stats:
        w[k] += stats[k]
    if counts is not None:
        w["counts"] = counts.detach() if w["counts"] is None else w["counts"] + counts.detach()
        w["entropy"] = entropy if w["entropy"] is None else w["entropy"] + entropy


def window_record(w: dict, device) -> dict:
    """Means over the window's steps and all ranks: losses, each expert's share of the tokens per
    MoE layer, router entropy per layer."""
    n = w["steps"] * WORLD
    losses = all_reduce([w["loss"], w["lm_loss"], w["aux_loss"], w["z_loss"]], device)
    record = dict(zip(["loss", "lm_loss", "aux_loss", "z_loss"], [v / n for v in losses], strict=True))
    if w["counts"] is not None:
        counts, entropy = w["counts"].clone(), w["entropy"].clone()
        if WORLD > 1:
            dist.all_reduce(counts)
            dist.all_reduce(entropy)
        share = (counts.float() / counts.sum(-1, keepdim=True)).tolist()
        record["expert_share"] = [[round(s, 5) for s in layer] for layer in share]
        record["router_entropy"] = [round(float(e) / n, 5) for e in entropy]
    return record


# ---------------------------------------------------------------------------------------------
# The run


class Stop:
    """SIGINT / SIGTERM ask the loop to stop after the current step; a second signal aborts."""

    def __init__(self):
        self.requested = False
        self.old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(self, signum, frame):
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        log(f"\n{signal.Signals(signum).name}: finishing this step, then saving a resumable checkpoint "
            "(send it again to abort)")

    def restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)


def check_writable(run_dir: Path):
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"cannot write to {run_dir} ({e.strerror}); pick another --out_dir or --run") from e
    for stale in run_dir.glob(".tmp-*"):  # left by a save that was killed; the real files are intact
        stale.unlink(missing_ok=True)


def resume_settings(ckpt: dict, model_args, train_args, given) -> tuple[ModelArgs, TrainArgs]:
    """Settings for a resumed run: the checkpoint's, with the train settings typed on the command
    line applied on top. Model settings typed on the command line must agree with the checkpoint."""
    saved_model = config.from_dict(ModelArgs, ckpt["model_args"], "checkpoint")
    asked = config.to_dict(model_args)
    typed = {k for k in asked if k in given} | (set(asked) if "preset" in given else set())
    diffs = [f"{k}: checkpoint {v!r}, asked {asked[k]!r}" for k, v in config.to_dict(saved_model).items()
             if k in typed and v != asked[k]]
    if diffs:
        raise CheckpointError("model settings differ from the checkpoint's (" + "; ".join(diffs)
                              + "); drop them to resume, or start a new --run")
    now = config.to_dict(train_args)
    saved_train = config.to_dict(config.from_dict(TrainArgs, ckpt["train_args"], "checkpoint")) \
        if "train_args" in ckpt else now  # a weights-only checkpoint (import, export) has none
    keep = {k: (now[k] if k in given else v) for k, v in saved_train.items()}
    keep.update(resume=train_args.resume, eval_only=train_args.eval_only, run=train_args.run)
    return saved_model, TrainArgs(**keep)


def setup_run(model_args: ModelArgs, a: TrainArgs, preset: str, given) -> tuple:
    """Run folder, settings (the checkpoint's when resuming), the checkpoint and its path."""
    out = Path(a.out_dir)
    if a.resume not in ("", "latest"):  # a checkpoint file or run folder
        ckpt_path = find_checkpoint(a.resume, out)
        run_dir = out / a.run if a.run else ckpt_path.parent
    elif a.resume == "latest" or a.eval_only:  # the latest checkpoint of --run (or the newest run)
        run_dir = out / a.run if a.run else latest_run(out)
        ckpt_path = find_checkpoint(str(run_dir), out)
    else:  # a new run
        run_dir, ckpt_path = out / (a.run or f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"), None
        if (run_dir / "last.pt").exists():
            raise TrainError(f"{run_dir} already holds a checkpoint; pass --resume to continue it or pick "
                             "another --run")
    ckpt = None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        if "optimizer" not in ckpt and not a.eval_only:
            raise CheckpointError(f"{ckpt_path} holds weights only (an import); it can be evaluated "
                                  "(--eval_only) or sampled, not resumed: start a new --run")
        model_args, a = resume_settings(ckpt, model_args, a, given)
    a = TrainArgs(**{**config.to_dict(a), "run": run_dir.name})
    return run_dir, model_args, a, ckpt, ckpt_path


def main(argv=None):
    parsed = config.parse_args([ModelArgs, TrainArgs], argv, prog="train.py", description=__doc__)
    preset, (model_args, train_args) = parsed
    try:
        return run(model_args, train_args, preset, parsed.given)
    except (TrainError, CheckpointError, data.DataError, ConfigError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(model_args: ModelArgs, a: TrainArgs, preset: str = config.DEFAULT_PRESET, given=frozenset()):
    device = setup_distributed(resolve_device(a.device))
    run_dir, model_args, a, ckpt, ckpt_path = setup_run(model_args, a, preset, given)
    if RANK == 0:
        check_writable(run_dir)
    if a.grad_accum % WORLD:
        raise TrainError(f"--grad_accum {a.grad_accum} does not split over {WORLD} processes; "
                         f"use a multiple of {WORLD}")

    # --- data: a resumed run uses its checkpoint's tokenizer ---
    tok_file = run_dir / "tokenizer.json"
    if ckpt is not None and not a.tokenizer:
        for candidate in (tok_file, ckpt_path.parent / "tokenizer.json"):
            if candidate.exists():
                a = TrainArgs(**{**config.to_dict(a), "tokenizer": str(candidate)})
                break
    quiet = log if RANK == 0 else (lambda m: None)
    with rank0_first():
        if a.eval_only:
            if not a.tokenizer:
                raise TrainError(f"{run_dir} has no tokenizer.json to evaluate with")
            tok = data.Tokenizer.load(a.tokenizer)
            val = data.prepare_eval(a, model_args, tok, quiet)
        else:
            tok, train_data, val = data.prepare(a, model_args, log=quiet)
    expected = (ckpt or {}).get("tokenizer", {}).get("sha256")
    if expected and tok.hash != expected:
        raise CheckpointError(f"tokenizer {a.tokenizer} is not the one the checkpoint was trained with "
                              f"(sha256 {tok.hash[:12]} != {expected[:12]}); restore the run's "
                              "tokenizer.json")

    # --- model and optimizer ---
    dtype = torch.bfloat16 if a.dtype == "bfloat16" or (a.dtype == "auto" and device.type == "cuda") \
        else torch.float32
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    torch.manual_seed(a.seed)
    model = Llama4(model_args).to(device)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.set_grad_checkpointing(a.grad_checkpoint)

    if a.eval_only:
        result = evaluate(model, val, tok, model_args, a, device, autocast)
        result.update(step=ckpt["step"], checkpoint=str(ckpt_path))
        if RANK == 0:
            print(json.dumps(result), flush=True)
        return result

    opt = make_optimizer(model, a, device)
    step, elapsed, best, bad_in_row, skipped = 0, 0.0, float("inf"), 0, 0
    settings = {"preset": preset, "model": config.to_dict(model_args), "train": config.to_dict(a)}
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed, best = ckpt["step"], ckpt["elapsed"], ckpt["best_val"]
        bad_in_row, skipped = ckpt["bad_in_row"], ckpt["skipped_steps"]
        settings["wandb_id"] = ckpt.get("wandb_id")
        set_rng_state(ckpt["rng"])
        log(f"resumed {ckpt_path} at step {step}")
    if RANK == 0:
        config.save_json(run_dir / "model.json", config.to_dict(model_args))
        config.save_json(run_dir / "train.json", config.to_dict(a))
        if not tok_file.exists():
            tok.save(tok_file)

    runner = model
    if a.compile:
        runner = torch.compile(model)
    if WORLD > 1:
        runner = torch.nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model_args.vision)
    no_sync = runner.no_sync if WORLD > 1 else nullcontext

    # --- start-up summary ---
    counts = count_parameters(model)
    T, B = model_args.max_seq_len, a.batch_size
    tokens_per_step = B * T * a.grad_accum
    fpt = flops_per_token(model_args, T)
    peak = peak_flops(device, dtype)
    log(f"model: {counts['total']:,} parameters, {counts['active_per_token']:,} active per token "
        f"({counts['non_embedding']:,} non-embedding); {fpt / 1e6:.1f} MFLOPs per token")
    log(f"run: {run_dir} | device {device}, dtype {str(dtype).removeprefix('torch.')}, world size {WORLD} | "
        f"{tokens_per_step:,} tokens per step ({a.grad_accum} x {B} x {T}) | steps {step} -> {a.max_steps}"
        + (f" or {a.max_minutes:g} minutes" if a.max_minutes else "")
        + (f" | peak {peak / 1e12:.2f} TFLOP/s" if peak else ""))

    wandb_run = start_wandb(a, run_dir, settings, run_dir.name) if RANK == 0 else None
    metrics = Metrics(run_dir, wandb_run, step if ckpt is not None else None) if RANK == 0 else None

    def state(best_val):
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
                "best_val": best_val, "bad_in_row": bad_in_row, "skipped_steps": skipped, "rng": rng_state(),
                "data_position": {"seed": a.seed, "step": step}, "model_args": config.to_dict(model_args),
                "train_args": config.to_dict(a), "preset": preset,
                "tokenizer": {"file": "tokenizer.json", "sha256": tok.hash},
                "wandb_id": wandb_run.id if wandb_run is not None else settings.get("wandb_id")}

    def save(name, best_val):
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # every rank agrees: same weights
            raise TrainError(f"weights are not finite at step {step}; not saving {name} (the previous "
                             "checkpoint is intact): lower --lr or raise --warmup_steps")
        if RANK == 0:
            save_checkpoint(run_dir / name, state(best_val))

    def run_eval():
        nonlocal best
        r = evaluate(model, val, tok, model_args, a, device, autocast)
        improved = r["nats_per_token"] < best
        best = min(best, r["nats_per_token"])
        if RANK == 0:
            log(f"step {step}: val {r['nats_per_token']:.4f} nats/token, {r['bits_per_byte']:.4f} bits/byte, "
                f"ppl {r['perplexity']:.2f} over {r['tokens']:,} tokens")
            record = {"kind": "val", "step": step, "minutes": elapsed / 60, "tokens": step * tokens_per_step,
                      **{k: r[k] for k in ("nats_per_token", "perplexity", "bits_per_byte")},
                      "val_tokens": r["tokens"], "val_bytes": r["bytes"]}  # tokens = tokens trained on
            metrics.write(record)
            plot_path = plot_loss(run_dir, a.plot) if a.plot else None  # after the write: with this point
            if wandb_run is not None and plot_path:
                import wandb
                wandb_run.log({"loss_plot": wandb.Image(str(plot_path))}, step=step)
        return improved

    # --- the loop ---
    from tqdm import tqdm
    # with a wall-clock budget the step count is open, so the bar's ETA is the budget left instead
    bar = tqdm(total=None if a.max_minutes else a.max_steps, initial=step, disable=RANK != 0,
               dynamic_ncols=True, desc=run_dir.name)
    stop = Stop()
    model.train()
    micros = list(range(RANK, a.grad_accum, WORLD))
    window = new_window()
    finished, t_start, elapsed_before = "max_steps", time.time(), elapsed
    try:
        while step < a.max_steps:
            if a.max_minutes and elapsed >= a.max_minutes * 60:
                finished = "max_minutes"
                break
            t0 = time.time()
            lr = lr_at(a, step, elapsed / 60)
            for g in opt.param_groups:
                g["lr"] = lr
            batches = [tuple(t.to(device) for t in
                             data.get_batch(train_data.tokens, B, T, seed=a.seed, step=step, micro=m))
                       for m in micros]
            stats, counts_, entropy = accumulate(runner, batches, a.seed, step, micros, autocast, no_sync)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip or float("inf"))
            if torch.isfinite(grad_norm):
                opt.step()
                bad_in_row = 0
            else:
                skipped, bad_in_row = skipped + 1, bad_in_row + 1
                log(f"step {step}: non-finite loss or gradients; update skipped ({bad_in_row} in a row)")
                if bad_in_row >= a.max_bad_steps:
                    raise TrainError(f"{bad_in_row} non-finite steps in a row (step {step}); lower --lr, "
                                     "raise --warmup_steps or check the data; last.pt holds the last good "
                                     "state")
            opt.zero_grad(set_to_none=True)
            step += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            window["busy"] += time.time() - t0
            add_to_window(window, stats, counts_, entropy)
            # the ranks agree on the clock (for the schedule and the budget) and on stopping
            stop_now, elapsed = all_reduce([float(stop.requested), elapsed_before + time.time() - t_start],
                                           device, op=dist.ReduceOp.MAX if WORLD > 1 else None)
            bar.update(1)

            if step % a.log_every == 0 or step == a.max_steps:
                record = window_record(window, device)
                tok_s = window["steps"] * tokens_per_step / window["busy"]
                record.update(kind="train", step=step, lr=lr, grad_norm=float(grad_norm),
                              tokens_per_s=tok_s, mfu=tok_s * fpt / (peak * WORLD) if peak else None,
                              tokens=step * tokens_per_step, minutes=elapsed / 60, skipped_steps=skipped)
                window = new_window()
                if RANK == 0:
                    eta = {"eta": f"{max(0.0, a.max_minutes - elapsed / 60):.1f}min"} if a.max_minutes else {}
                    bar.set_postfix(loss=f"{record['lm_loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                                    **eta)
                    extra = {}
                    if "expert_share" in record:
                        extra = {f"experts/layer{i}/expert{e}": s for i, layer in
                                 enumerate(record["expert_share"]) for e, s in enumerate(layer)}
                        extra.update({f"router_entropy/layer{i}": h for i, h in
                                      enumerate(record["router_entropy"])})
                    metrics.write(record, extra)

            if step % a.eval_every == 0 and step < a.max_steps and not stop_now:
                if run_eval():
                    save("best.pt", best)
            if (step % a.save_every == 0 and step < a.max_steps) or stop_now:
                save("last.pt", best)
            if stop_now:
                finished = "signal"
                break
        if finished != "signal":
            if run_eval() or not (run_dir / "best.pt").exists():
                save("best.pt", best)
            save("last.pt", best)
    finally:
        stop.restore()
        bar.close()
        if wandb_run is not None:
            wandb_run.finish()
    log(f"{'stopped by signal' if finished == 'signal' else 'done'} at step {step} ({finished}); "
        f"checkpoints in {run_dir}" + (f"; {skipped} non-finite steps skipped" if skipped else ""))
    return {"step": step, "best_val": best, "run_dir": str(run_dir), "finished": finished}


def plot_loss(run_dir: Path, out) -> Path | None:
    """Train and validation curves of this run (img/loss.png by default)."""
    from scripts.plot_runs import plot_runs
    try:
        return plot_runs([run_dir], out, title=f"{run_dir.name}: loss")
    except OSError as e:
        log(f"plot: could not write {out} ({e}); training goes on")
        return None


if __name__ == "__main__":
    main()
