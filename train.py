"""Train the Llama 4 model on TinyStories (or any text).

    python train.py                                   # scout-128m on TinyStories from the hub
    python train.py --preset tiny --data FILE --val_data FILE --max_minutes 10
    python train.py --run NAME --resume               # continue exactly where NAME stopped
    python train.py --run NAME --eval_only --val_data FILE
    python train.py --init_from CKPT --data FILE      # a new run from CKPT's weights (fine-tuning)
    torchrun --nproc_per_node 8 -- train.py ...       # DDP, same global batch as one process

One step: grad_accum micro-batches (split over DDP ranks), AdamW, linear warmup then cosine decay,
gradient clipping, bf16 autocast on CUDA. Loss = LM loss over real tokens + the router's
auxiliary terms, each logged apart. The run folder checkpoints/<run>/ holds last.pt, best.pt,
model.json / train.json, tokenizer.json, metrics.jsonl, loss.png (--plot), run.lock and the W&B
run (wandb_unfinished.txt while its upload is not finished).

How a training step flows (`run` calls setup, then run_job calls `loop`, which calls the rest in this order):
    setup        the RunPlan (runplan.py: settings, the checkpoint's when resuming, checked before any
                 work; the run folder locked), then data, model, optimizer: a Job, and the LoopState
    LoopState    step, tokens, clock, best validation, bad steps: what a checkpoint saves
    lr_at        the learning rate of this step (warmup, then cosine over steps or the clock)
    batches_at   this process's micro-batches of the step, a pure function of (seed, step, micro)
    train_step   forward + backward per micro-batch, clipping, the AdamW step (skipped on device
                 when the gradients are not finite): the unit a compiler can take whole
    first_steps  train_step, or eagerly where a compiled model's first steps fail to compile
    Window       the log window: losses, expert counts and skipped steps summed on the device
    agree        under torchrun: the ranks' stop requests and clock, agreed about every 10 s
    log_step     every log_every steps: one metrics record (with agree, the only host syncs of the
                 training steps)
    evaluate_and_save  every eval_every steps evaluate_step (run_eval: validation nats/token and
                 bits/byte, a metrics record, the plot; best.pt if it is the best), and every
                 save_every steps and on a signal, last.pt (both written by write_checkpoint)
    wrap_up      at the end: the final evaluation, best.pt if there is none (no_best), last.pt

What it holds, one section each, in this order:
    the training step   make_optimizer, load_optimizer, lr_at, micro_seed, seed_generators (the router
                        noise's), StepOutput, accumulate, clip_in_step, train_step, first_steps,
                        run_eagerly (a compile failure), batches_at
    what a run holds    LoopState, Job, Clock (the --max_minutes budget)
    evaluation          eval_batch_size, EvalSet, evaluate, evaluate_job, run_eval (and its record:
                        write_val_record)
    the log window      Window, log_step (and its record: write_train_record)
    checkpoints         write_checkpoint, finite
    signals             Stop, agree (the ranks' agreements under torchrun)
    setting a run up    load_data, make_log, setup, finished_run, build_job, init_from, start_state,
                        start_logging
    the run             run, run_job, loop, evaluate_and_save, wrap_up (no_best), evaluate_step,
                        evaluate_only
    stopping early      the last line's parts: peer_lost_error, memory_advice, resume_options,
                        left_to_resume
    the command line    main, leave (free_frames, leave_group)

How this departs from the obvious version:
- A step is a pure function of (seed, step): batches come from data.get_batch(seed, step, micro)
  and the router noise of each micro-batch is seeded by (seed, step, micro). So on CPU a resumed
  run is bit-identical to an uninterrupted one (on CUDA, atomic adds in index_add and attention
  backward leave float-rounding differences), and 1 process equals N DDP processes with the same
  global batch (rank r takes micro-batches r, r + N, ...). RNG states are saved all the same.
  With --max_minutes the schedule follows the clock, so a resumed run is not bit-identical (a
  checkpoint saves the clock as its save begins, the step's evaluation and best.pt counted: only
  the seconds of the save itself are not in the file).
- The loop does not wait for the device between log steps (under torchrun, nor between the ranks'
  agreements, about 10 s apart): losses, expert counts and the count of skipped steps stay on the
  device until a log step reads them, and a non-finite step is skipped inside the fused AdamW
  kernel (its found_inf flag) rather than by a test on the host. The kernel clips the gradients
  too (its grad_scale), as it reads them, rather than a pass of clip_grad_norm_ over them.
- Checkpoints are written atomically (temporary file, fsync, rename), loaded with
  weights_only=True, never written when non-finite. A full disk is one line; the old file stays.
  On CUDA (Linux) a forked child process writes them, and draws the loss plot, while training goes
  on (checkpoint.Saves, in_background): the run's end and a stop by a signal wait for it; a failed
  write is told at the next save.
  A console that goes away (`| head`, 2>/dev/full) does not stop the run (errors.Console).
- A checkpoint also holds the open log window (its loss sums, expert counts, steps, tokens): a resumed
  run goes on with it, so metrics.jsonl gets the records an uninterrupted run writes (the partial
  record written when the run stopped is replaced by the whole one). Resuming a finished run
  writes nothing, and reads no data (train.finished_run).
- One process owns a run folder: rank 0 holds an flock on run.lock from before anything is
  written until the end, so a second train.py on the folder stops with a line naming the first
  (--eval_only only reads, and takes no lock). A folder a failed run created and left empty is
  removed, as is a run.lock it made where it wrote no other file of a run (storage.RunFolder).
- Ctrl-C / SIGTERM finish the current step (under torchrun, the steps up to the ranks' next
  agreement, within about 10 s: agree), or cut an evaluation short at its next batch (the ranks
  agree in its one collective; it is put off into the checkpoint, as on an evaluation step), save
  last.pt and exit cleanly; a second signal aborts (exit status 130, one line), but never in the
  middle of a save: it waits for the file. One before this session's first step is done aborts at
  once (a compiled first step compiles for minutes; torchrun kills its workers 30 s after
  forwarding a signal).
- What is refused before any work (a bad setting: exit status 2) and what gets a warning line are
  runplan.py's: the run's settings, folder and checkpoint are planned and checked there first.
- A compiled model's first training steps and evaluations (where it compiles, and under CUDA
  graphs records) fall back to the eager model with one warning line if they fail: the failed
  step is taken again, eagerly, as a --compile false run takes it (first_steps). Under torchrun a
  failed training step is a one-line error naming --compile false instead (run_eagerly).
- --max_minutes lays the cosine over wall-clock time: the schedule's progress is the larger of
  steps done / max_steps and minutes spent / max_minutes, and the run ends when either is spent.
"""

import gc
import json
import math
import signal
import sys
import threading
import time
import traceback
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import errors  # first: a Ctrl-C during the slow imports below is one line, not a traceback

if __name__ == "__main__":  # ... and so is a SIGTERM (as the README says: one line, 130)
    SIGTERM_AT_START = errors.take_signal(signal.SIGTERM, signal.default_int_handler)
# isort: split
import numpy as np
import torch
import torch.distributed as dist

import checkpoint
import config
import data
import runlog
import runplan
import runtime
import storage
from config import ModelArgs, TrainArgs
from errors import CheckpointError, RunError, UserError, first_line, reports
from model import Llama4, count_parameters, flops_per_token, recomputed_layers, weight_decayed
from runplan import RunPlan
from runtime import World
from tokenizer import Tokenizer

# ---------------------------------------------------------------------------------------------
# The training step: optimizer, schedule, batches


def make_optimizer(model: Llama4, train_args: TrainArgs, device) -> torch.optim.AdamW:
    """AdamW (fused); weight decay on matrices only (model.weight_decayed: not norms, biases, nor the
    router noise projection). runplan.check_optimizer_groups refuses a checkpoint of other groups."""
    decay = [p for n, p in model.named_parameters() if weight_decayed(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not weight_decayed(n, p)]
    groups = [{"params": decay, "weight_decay": train_args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all parameters; on CPU ~3x faster than the default, which matters for
    # an MoE, whose optimizer state grows with its total (not active) parameters. It also takes
    # a found_inf flag, which lets a non-finite step be skipped without a host sync.
    return torch.optim.AdamW(groups, lr=train_args.lr, betas=(train_args.beta1, train_args.beta2),
                             fused=device.type in ("cuda", "cpu"))


def load_optimizer(opt: torch.optim.Optimizer, saved: dict, path="the checkpoint", fix: str = "") -> None:
    """The checkpoint's optimizer state (AdamW's moments and step counts) into `opt`, keeping the
    settings `opt` was built with (weight decay, betas, fused): load_state_dict would put back the
    checkpoint's, and a --weight_decay or --beta2 typed at resume would be ignored. A state of other
    parameter groups (an older version's, whose groups split the parameters otherwise) is a
    CheckpointError naming `path`, the file it came from, and advising `fix` (by default --init_from
    `path`)."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
    try:
        opt.load_state_dict(saved)
    except ValueError as e:  # (torch: "... a parameter group that doesn't match the size of ...")
        fix = fix or f"start a new run from its weights with --init_from {path}"
        raise CheckpointError(f"{path}: its optimizer state is not of this version's parameter groups "
                              f"({first_line(e)}); {fix}") from None
    for group, own in zip(opt.param_groups, settings, strict=True):
        group.update(own)


def lr_at(train_args: TrainArgs, step: int, minutes: float = 0.0) -> float:
    """Linear warmup for warmup_steps, then cosine from lr to min_lr. Progress is the larger of the
    step fraction and (with --max_minutes) the wall-clock fraction."""
    t = train_args
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    if t.max_minutes > 0:
        progress = max(progress, minutes / t.max_minutes)
    progress = min(progress, 1.0)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


def micro_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the router noise of one micro-batch: a pure function of (seed, step, micro)."""
    return int(np.random.SeedSequence([seed, step, micro, 1]).generate_state(1)[0])


def seed_generators(seed: int, device: torch.device) -> None:
    """torch.manual_seed(seed) for the generators a step draws from: the CPU's and `device`'s (the
    router noise's). torch.manual_seed also queues the seed for every accelerator torch has not
    started (on a CUDA machine XPU and MTIA; on the CPU CUDA too), formatting a traceback of the
    call for each: Python work on the host each micro-batch, where an eager step is host-bound."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":  # (started: the batch is there) the device's own, not the current one
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)


class StepOutput(NamedTuple):
    """One optimizer step, all on the device (reading any of it waits for the step to finish)."""
    losses: torch.Tensor  # (4,) loss, lm_loss, aux_loss, z_loss: means over this rank's micro-batches
    expert_counts: torch.Tensor | None  # (L_moe, E) assignments per expert, summed over micro-batches
    router_entropy: torch.Tensor | None  # (L_moe,) mean over micro-batches
    grad_norm: torch.Tensor  # () before clipping
    skipped: torch.Tensor  # () 1.0 when the gradients were not finite and the update was skipped


LOSSES = ("loss", "lm_loss", "aux_loss", "z_loss")


def accumulate(runner, batches, seed, step, micros, autocast, no_sync):
    """Forward and backward over this process's micro-batches; gradients summed over them with
    weight 1/len(batches) (DDP then averages over ranks, giving the mean over the global batch).
    Returns (losses (4,), expert counts, router entropy), detached, on the device, and owned: a
    model output is read before the next call (under CUDA graphs the next replay overwrites it)."""
    losses, counts, entropy = None, None, None
    for i, ((x, y), micro) in enumerate(zip(batches, micros, strict=True)):
        seed_generators(micro_seed(seed, step, micro), x.device)
        with nullcontext() if i == len(batches) - 1 else no_sync():  # DDP syncs on the last only
            with autocast:
                out = runner(x, targets=y)
            (out.loss / len(batches)).backward()
        parts = [getattr(out, k) for k in LOSSES]
        zero = torch.zeros((), device=out.loss.device)
        now = torch.stack([(p.detach().float() if p is not None else zero) for p in parts]) / len(batches)
        losses = now if losses is None else losses + now
        if out.expert_counts is not None:
            counts = out.expert_counts.clone() if counts is None else counts + out.expert_counts
            e = out.router_entropy / len(batches)
            entropy = e if entropy is None else entropy + e
    return losses, counts, entropy


def clip_in_step(opt: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """The total 2-norm of opt's gradients, () on the device, and clipping to max_norm (inf: none)
    left to the fused AdamW: its grad_scale (the flag torch's GradScaler sets), by which it divides
    each gradient as it reads it, is max(1, (norm + 1e-6) / max_norm). clip_grad_norm_'s update
    to within rounding (a division for its multiplication; none where nothing is clipped) without
    its pass over every gradient, a multiply in place (1 GB of memory traffic a step for
    scout-128m's 128M fp32 gradients, of which the kernel's write of the clipped gradients takes
    back half), its launches, nor its walk of the module tree for the parameters."""
    grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads).float()
    opt.grad_scale = ((norm + 1e-6) / max_norm).clamp(min=1.0)
    return norm


def train_step(job: "Job", batches, step: int, lr: float) -> StepOutput:
    """One optimizer step: accumulate, clip, AdamW. No host sync: a non-finite gradient norm sets
    the fused AdamW's found_inf flag, so the kernel leaves weights and moments as they were, and
    the kernel clips (clip_in_step)."""
    for group in job.opt.param_groups:
        group["lr"] = lr
    losses, counts, entropy = accumulate(job.runner, batches, job.train_args.seed, step, job.micros,
                                         job.autocast, job.no_sync)
    grad_norm = clip_in_step(job.opt, job.train_args.grad_clip or math.inf)
    skipped = (~torch.isfinite(grad_norm)).float()
    job.opt.found_inf = skipped
    job.opt.step()
    job.opt.zero_grad(set_to_none=True)
    return StepOutput(losses, counts, entropy, grad_norm, skipped)


def first_steps(job: "Job", batches, step: int, lr: float) -> StepOutput:
    """train_step, where a compiled model's first steps may still fail in the compiler (the first
    compiles forward and backward; under CUDA graphs the second records them): after such a
    failure, one warning line and the same step again, eagerly (its gradients cleared first; its
    batches and router seeds are the step's own, so it is the step an eager run takes: a run
    whose first step failed is a --compile false run; one whose recording failed, the same but
    for its first step's rounding)."""
    if job.trials == 0:
        return train_step(job, batches, step, lr)
    job.trials -= 1
    try:
        return train_step(job, batches, step, lr)
    except Exception as e:  # whatever stops the compiler or the recording, out of memory aside
        run_eagerly(job, e, f"training step {step + 1}")
        job.opt.zero_grad(set_to_none=True)
        return train_step(job, batches, step, lr)


def run_eagerly(job: "Job", e: Exception, what: str) -> None:
    """A compiled model's `what` (a training step, or an evaluation) failed: the eager model from
    now on, for evaluation only when it was an evaluation. Out of memory is re-raised (eager
    takes more), even wrapped in the compiler's exception; so is a training step's failure under
    torchrun, where the processes could not agree on a fallback."""
    why = runtime.compile_failure(e)
    training = what.startswith("training step")
    if training and job.world.size > 1:
        raise RunError(f"the compiled model failed at {what} ({why}); run with --compile false") from e
    job.log(f"warning: the compiled model failed at {what} ({why}); running it eagerly from here "
            "(--compile false skips compiling)")
    job.compiled, job.eval_trials = job.model, 0
    if training:
        job.runner, job.trials = job.model, 0
        torch._dynamo.reset()  # its graphs (and CUDA graph memory) are not used again


def batches_at(job: "Job", step: int) -> list:
    """This process's micro-batches (x, y) of `step`, on the device."""
    pin = job.device.type == "cuda"
    out = []
    for micro in job.micros:
        x, y = data.get_batch(job.train_data.tokens, job.train_args.batch_size, job.model_args.max_seq_len,
                              seed=job.train_args.seed, step=step, micro=micro)
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        out.append((x.to(job.device, non_blocking=pin), y.to(job.device, non_blocking=pin)))
    return out


# ---------------------------------------------------------------------------------------------
# What a run holds


@dataclass
class LoopState:
    """Where a run stands: what a checkpoint saves besides weights, optimizer state and settings."""
    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on
    elapsed: float = 0.0  # seconds of the run so far (the --max_minutes budget counts these)
    best_val: float = math.inf  # best validation nats/token
    bad_in_row: int = 0  # non-finite steps in a row, up to the last one
    skipped_steps: int = 0  # non-finite steps skipped in all
    eval_due: bool = False  # this step's evaluation was put off by a signal: a resumed run runs it first
    val_set: str = ""  # the validation windows best_val was measured on (EvalSet.key)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, tokens_per_step: int) -> "LoopState":
        defaults = asdict(cls())  # a weights-only checkpoint (for --eval_only) has the step alone
        state = cls(**{k: ckpt.get(k, v) for k, v in defaults.items()})
        state.tokens = ckpt.get("tokens", state.step * tokens_per_step)  # older checkpoints lack it
        return state

    def to_checkpoint(self, seed: int) -> dict:
        """The fields, the RNG states now, and the data position ((seed, step) picks every batch)."""
        return {**asdict(self), "rng": checkpoint.rng_state(),
                "data_position": {"seed": seed, "step": self.step}}


@dataclass
class Job:
    """What a run holds beside its LoopState, set up by build_job. Set or changed later: `clock` (at
    the end of build_job), `metrics`, `folder` and `stop` (as the run starts), `agreed` and `agree_at`
    (at each agreement), the trial counts, and `compiled` and `runner`, which a compile failure sets
    to `model`."""
    model_args: ModelArgs
    train_args: TrainArgs
    preset: str
    run_dir: Path
    device: torch.device
    world: World
    log: object  # print-like, rank 0 only
    tok: Tokenizer
    train_data: object  # data.TokenData (None for --eval_only)
    val: "EvalSet"
    model: Llama4
    compiled: object  # the model as evaluation calls it: compiled where --compile says so
    runner: object  # the model as the loop calls it: the compiled one, wrapped in DDP under torchrun
    opt: torch.optim.Optimizer | None
    autocast: object
    no_sync: object
    micros: list
    clock: "Clock"
    fpt: float  # training FLOPs per token
    peak: float | None  # the device's peak FLOP/s, for MFU
    ckpt_path: Path | None = None  # the checkpoint resumed or evaluated
    metrics: runlog.Metrics | None = None
    wandb_id: str | None = None  # the checkpoint's W&B run, to go on with (saves: Metrics.wandb_id)
    wandb_entity: str | None = None  # ... and its entity, where known (saves: Metrics.resumable_entity)
    folder: "storage.RunFolder | None" = None  # the run folder this process holds (rank 0, not --eval_only)
    stop: "Stop | None" = None  # the signal handler, while the loop runs
    resumed_window: dict | None = None  # the log window the checkpoint was saved in (Window.to_checkpoint)
    saves: checkpoint.Saves = field(default_factory=checkpoint.Saves)  # checkpoints being written (rank 0)
    drawing: tuple | None = None  # the loss plot a child process draws: (pid, its pipe, step), end_plot's
    continues: bool = False  # resumed into its own folder (a fork starts its folder's logs afresh)
    imported: bool = False  # the checkpoint is an import's (weights only: no training step of its own)
    agreed: tuple = (0, 0.0)  # under torchrun: the step and clock of the ranks' last agreement (agree)
    agree_at: int = 1  # ... and the step of the next one, log steps aside
    trials: int = 0  # compiled training steps left that may still fail in the compiler (first_steps)
    eval_trials: int = 0  # the same for evaluations (evaluate_job)
    eager_eval_s: float = 0.0  # seconds a compiled run's eager evaluations took (COMPILE_EVAL_AFTER_S)

    @property
    def tokens_per_step(self) -> int:
        return self.train_args.batch_size * self.train_args.grad_accum * self.model_args.max_seq_len

    def to_checkpoint(self, state: LoopState, window: dict) -> dict:
        """What last.pt and best.pt hold (checkpoint.py's docstring lists it); `window`: the open log
        window's Window.to_checkpoint."""
        dtype = runtime.compute_dtype(self.train_args.dtype, self.device)  # (runplan.device_change reads it)
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                **state.to_checkpoint(self.train_args.seed), "model_args": config.to_dict(self.model_args),
                "train_args": config.to_dict(self.train_args), "preset": self.preset,
                "tokenizer": {"file": "tokenizer.json", "sha256": self.tok.hash}, "window": window,
                "wandb_id": self.metrics.resumable_id if self.metrics is not None else None,
                "wandb_entity": self.metrics.resumable_entity if self.metrics is not None else None,
                "trained_on": {"device": str(self.device), "dtype": str(dtype).removeprefix("torch.")}}


class Clock:
    """The wall-clock budget (--max_minutes): the run's seconds so far, including earlier sessions
    of a resumed run (under torchrun, agree makes the ranks share it, so that all stop together and
    follow one schedule)."""

    def __init__(self, max_minutes: float, elapsed_before: float = 0.0):
        self.max_seconds = max_minutes * 60
        self.before, self.start = elapsed_before, time.time()
        self.mark = None  # (step, elapsed) when the ETA was first asked for

    def elapsed(self) -> float:
        return self.before + time.time() - self.start

    def spent(self, state: LoopState) -> bool:
        return self.max_seconds > 0 and state.elapsed >= self.max_seconds

    def minutes_left(self, state: LoopState, max_steps: int) -> float:
        """Until the budget or max_steps ends the run, whichever comes first: the steps left at the
        pace since this session's first call (after the compiling first steps, which are slower)."""
        left = max(0.0, self.max_seconds - state.elapsed)
        if self.mark is None:
            self.mark = (state.step, state.elapsed)
        elif state.step > self.mark[0]:
            pace = (state.elapsed - self.mark[1]) / (state.step - self.mark[0])  # seconds per step
            left = min(left, max(0, max_steps - state.step) * pace)
        return left / 60


# ---------------------------------------------------------------------------------------------
# Evaluation


EVAL_BATCHES_PER_TRAINING_BATCH = 4  # the auto --eval_batch_size's cap, in --batch_size's


def eval_batch_size(n: int, train_args: TrainArgs, n_layers: int) -> int:
    """Windows per validation batch for n windows: --eval_batch_size (at most n), or (0, auto) the fewest
    batches of at most eval_batch_multiple x --batch_size, evened out. A forward pass without
    gradients keeps no layer's activations for backward, so a larger batch fits where a training
    batch does, and a pass is fewer, larger launches (on a GPU an eager pass is bound by them);
    evened out, the last batch is not mostly padding (375 windows at --batch_size 128: one batch of
    375, not three of 128 with 9 of padding, nor two of 256 with 137)."""
    if train_args.eval_batch_size:  # (no more than there are windows: a batch of padding is no use)
        return max(1, min(train_args.eval_batch_size, n))
    cap = train_args.batch_size * eval_batch_multiple(train_args, n_layers)
    batches = max(1, -(-n // cap))
    return max(1, -(-n // batches))


def eval_batch_multiple(train_args: TrainArgs, n_layers: int) -> int:
    """The auto evaluation batch's cap in training batches: 4, or with --grad_checkpoint one more than
    the layers whose activations a training step keeps (a training batch sized to fit them and one
    layer's at a time, as an evaluation holds: 1 with every layer recomputed, 3 with the first 4 of 6;
    at most 4). The memory model holds each within its training step (tests/test_memory_model.py)."""
    if not train_args.grad_checkpoint:
        return EVAL_BATCHES_PER_TRAINING_BATCH
    recomputed = recomputed_layers(train_args.grad_checkpoint_layers, n_layers)
    return max(1, min(EVAL_BATCHES_PER_TRAINING_BATCH, n_layers - recomputed + 1))


class EvalSet:
    """This rank's share of the fixed validation windows, kept on the device, and the UTF-8 bytes
    their targets decode to (counted once). Evaluating reads the device once, at the end (on CUDA
    it also waits for the queued training steps first, to time the pass alone)."""

    def __init__(self, val, tok: Tokenizer, model_args: ModelArgs, train_args: TrainArgs, world: World,
                 device):
        T = model_args.max_seq_len
        n = data.n_val_windows(val.tokens, T, train_args.eval_windows)
        start, stop = data.rank_windows(n, world.rank, world.size)
        x, y = data.val_windows(val.tokens, T, train_args.eval_windows, start, stop, pad_id=model_args.pad_id)
        self.tokens, self.bytes = int((y >= 0).sum()), data.count_bytes(y, tok.token_bytes)
        self.key = f"{val.meta['sha256'][:16]}:{n}"  # which windows: the shard's content and their count
        self.held_out = val.meta.get("signature", {}).get("keep") == "val"  # a held-out slice of --data
        B = self.batch_size = eval_batch_size(len(x), train_args, model_args.n_layers)
        fill = -len(x) % B  # whole batches only (one shape for a compiled model): padding windows
        x = torch.cat([x, torch.full((fill, T), model_args.pad_id, dtype=x.dtype)])
        y = torch.cat([y, torch.full((fill, T), -1, dtype=y.dtype)])  # ... whose targets are ignored
        self.x, self.y = x.to(device), y.to(device)
        self.world = world


@torch.no_grad()
def evaluate(model, val: EvalSet, autocast, device, stop: "Stop | None" = None, bar=None) -> dict | None:
    """Loss over the fixed validation windows (this rank's share, summed over ranks), and the
    seconds the pass took (after the device has finished the training steps queued before it).
    None when a signal (`stop`, the loop's) cut it short: it is checked between batches (a flag on
    the host: no wait for the device), and whether any rank was cut short travels with the sums in
    the pass's one collective, so that every rank returns None alike, whatever batch each stopped at
    (a large --val_data takes minutes: past the 30 s torchrun gives its workers after a signal).
    A rank cut short says so in the job's store, where the others look about once a second (a signal
    to one process, or to one machine's of a job on several, stops them all in a second, not when
    they have finished their share). `bar` (a tqdm, --eval_only's) counts the batches."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    cut = False
    peers, look_at = stop is not None and val.world.size > 1, start + runtime.PEER_STOP_SECONDS
    if bar is not None:
        bar.reset(total=len(range(0, len(val.x), val.batch_size)))
    cutting = stop.during("this evaluation's batch (the evaluation is put off)") if stop else nullcontext()
    # one autocast for the pass: it casts its weights once, not once per batch (its cache); an eager
    # model on CUDA casts them all at once for the pass (Llama4.weights_cast_once)
    casting = model.weights_cast_once if isinstance(model, Llama4) else lambda whole_pass: nullcontext()
    try:
        with cutting, autocast, casting(whole_pass=True):  # (cutting: what a signal's line says it finishes)
            for i in range(0, len(val.x), val.batch_size):
                if stop is not None and stop.requested:
                    if peers:
                        runtime.tell_peers_stop()
                    cut = True
                    break
                if peers and time.perf_counter() >= look_at:  # (no collective: a rank may be cut short here)
                    look_at = time.perf_counter() + runtime.PEER_STOP_SECONDS
                    if runtime.peer_stopping():
                        cut = True
                        break
                x, y = val.x[i:i + val.batch_size], val.y[i:i + val.batch_size]
                # the loss alone: no (B, T, V) logits, no host read
                lm_loss = model(x, targets=y).lm_loss  # mean over this batch's real targets
                n = (y >= 0).sum()
                nats += torch.where(n > 0, lm_loss.double() * n, 0.0)  # (a batch of padding: no NaN mean)
                if bar is not None:
                    bar.update(1)
    except Exception as e:  # out of memory here: run()'s line advises a smaller evaluation batch
        if runtime.out_of_memory(e):
            e.eval_batch_size = val.batch_size
        raise
    finally:
        model.train(was_training)
    # the pass's seconds, the ranks' mean: the same on every rank (evaluate_job's switch to the
    # compiled model, COMPILE_EVAL_AFTER_S, is then taken at the same pass by all of them)
    nats, tokens, n_bytes, cut, seconds = runtime.all_reduce(
        [float(nats), val.tokens, val.bytes, float(cut), time.perf_counter() - start], device, val.world)
    if cut:
        return None
    per_token = nats / max(tokens, 1)
    return {"nats_per_token": per_token, "perplexity": math.exp(min(per_token, 50)),
            "bits_per_byte": data.bits_per_byte(nats, n_bytes) if n_bytes else float("nan"),
            "tokens": int(tokens), "bytes": int(n_bytes), "seconds": seconds / val.world.size}


# A compiled run's evaluations run the eager model until they have taken this long in all, then the
# compiled one: compiling the evaluation took 8 s for scout-128m on an H200 (the model compiled
# whole), where an eager pass over valid-lower.txt takes about 0.07 s (0.02 s compiled), so a run
# with a small validation set never pays to compile it, and one with a large set compiles once its
# eager passes have cost about as much as compiling does (at worst the two costs add). By regions
# the evaluation's tracing and lowering, most of a GPU's compile, took 2.07x less on a CPU
# (scripts/bench_compile.py: warm_eval_s), so about 4 s; --eval_only (one pass) never compiles
COMPILE_EVAL_AFTER_S = 4.0


def evaluate_job(job: Job, stop: "Stop | None" = None, bar=None) -> dict | None:
    """evaluate() on the job's model (None: `stop` cut it short): the eager model until the eager
    evaluations have taken COMPILE_EVAL_AFTER_S, then the compiled one, whose first evaluations fall
    back to eager as its first training steps do (first_steps), under torchrun too (each rank's
    evaluation is its own until the one collective at its end: run_eagerly)."""
    if job.compiled is not job.model and job.eager_eval_s < COMPILE_EVAL_AFTER_S:
        result = evaluate(job.model, job.val, job.autocast, job.device, stop, bar)
        job.eager_eval_s += result["seconds"] if result else 0.0
        return result
    if job.eval_trials == 0:
        return evaluate(job.compiled, job.val, job.autocast, job.device, stop, bar)
    job.eval_trials -= 1
    try:
        return evaluate(job.compiled, job.val, job.autocast, job.device, stop, bar)
    except Exception as e:  # whatever stops the compiler or the recording, out of memory aside
        run_eagerly(job, e, "an evaluation")
        return evaluate(job.compiled, job.val, job.autocast, job.device, stop, bar)


def run_eval(job: Job, state: LoopState, stop: "Stop | None" = None) -> bool | None:
    """Evaluate, write the val record and the loss plot; True when the result is the best yet, None
    when a signal cut the evaluation short (`stop`: nothing written, the best kept)."""
    r = evaluate_job(job, stop)
    if r is None:
        return None
    improved = r["nats_per_token"] < state.best_val
    state.best_val = min(state.best_val, r["nats_per_token"])
    with runtime.all_ranks_or_none(job.world, job.device, "writing metrics.jsonl"):  # (as write_train_record)
        if job.world.main:
            write_val_record(job, state, r)
    return improved


def write_val_record(job: Job, state: LoopState, r: dict) -> None:
    """The evaluation's line, its metrics record and the loss plot (rank 0 alone)."""
    job.log(f"step {state.step}: val {r['nats_per_token']:.4f} nats/token, {r['bits_per_byte']:.4f} "
            f"bits/byte, ppl {r['perplexity']:.2f} over {r['tokens']:,} tokens in {r['seconds']:.2f} s")
    job.metrics.write({"kind": "val", "step": state.step, "minutes": state.elapsed / 60,
                       "tokens": state.tokens, **{k: r[k] for k in ("nats_per_token", "perplexity",
                                                                    "bits_per_byte")},
                       "val_tokens": r["tokens"], "val_bytes": r["bytes"], "val_seconds": r["seconds"]})
    if job.train_args.plot:  # drawn after the write, so the plot has this point
        draw_plot(job, state.step)


def draw_plot(job: Job, step: int) -> None:
    """The loss plot (--plot) with this evaluation's point, drawn by a child process where the saves
    are (Job.saves.background; some 0.3 s a plot on our CPU, where the CUDA defaults evaluate every 5 s
    or so), once the previous one's end is told (end_plot); else here."""
    end_plot(job)
    folder, plot = job.run_dir, job.train_args.plot
    if job.saves.background:
        def draw() -> str:  # (in the child: the lines plot_loss says go back to the parent)
            said = []
            runlog.plot_loss(folder, plot, said.append)
            return "\n".join(said)
        if (child := storage.fork_call(draw)) is not None:
            job.drawing = (*child, step)
            return
    job.metrics.log_image("loss_plot", runlog.plot_loss(folder, plot, job.log), step)


def end_plot(job: Job) -> None:
    """Wait for the plot a child process draws, if any: the lines it said (a failure's) said here,
    else its image logged (W&B) at its evaluation's step."""
    if job.drawing is None:
        return
    (pid, read, step), job.drawing = job.drawing, None
    how, said = storage.child_end(pid, read)
    path = job.run_dir / job.train_args.plot
    if how is not None:  # (plot_loss says its own failures: this is the child's end)
        job.log(f"plot: could not draw {path} ({said or how}); training goes on")
    elif said:
        for line in said.splitlines():
            job.log(line)
    else:
        job.metrics.log_image("loss_plot", path, step)


# ---------------------------------------------------------------------------------------------
# The log window: steps summed on the device, read once per log step


class Window:
    """Sums over the steps since the last train record, on the device, and the time they took.

    A checkpoint saves the open window (summed over the ranks) and a resumed run goes on with it,
    so that its train records are those of an uninterrupted run: the record after a resume covers
    the steps before the checkpoint too, not just those after it."""

    def __init__(self, state: LoopState, device):
        self.device = device
        self.steps, self.start, self.paused, self.busy_before = 0, time.perf_counter(), 0.0, 0.0
        self.paused_at = None  # when the pause under way (pause) began
        self.losses = self.counts = self.entropy = None  # sums over the steps applied (not skipped)
        self.applied = torch.zeros((), device=device)  # steps applied, of this rank (rank 0: + those before)
        self.skipped = torch.zeros((), device=device)  # non-finite steps not yet counted in the state
        self.bad_in_row = torch.full((), float(state.bad_in_row), device=device)
        self.worst = self.bad_in_row.clone()  # the longest run of non-finite steps in the window
        self.settled = 0  # non-finite steps moved into the state (by a save) and not yet logged
        self.rank_steps_before = self.steps_before = 0  # what a resumed window holds from before
        self.tokens_before = None  # ... and their tokens (None: an older checkpoint's, at today's per step)
        self.possible_before = 0.0  # ... and the FLOPs their processes could have done (None: unknown)
        self.process_seconds_before = 0.0  # ... and their busy seconds summed over their processes
        self.grad_norm = torch.full((), math.nan, device=device)  # of the last applied step (NaN: none)

    def add(self, out: StepOutput):
        skip = out.skipped.bool()

        def plus(a, b):  # a skipped step's numbers (NaN, inf) are left out of the means
            return torch.where(skip, 0, b) if a is None else a + torch.where(skip, 0, b)
        self.steps += 1
        self.losses = plus(self.losses, out.losses)
        self.applied += 1 - out.skipped
        self.grad_norm = torch.where(skip, self.grad_norm, out.grad_norm)
        self.skipped += out.skipped
        self.bad_in_row = (self.bad_in_row + out.skipped) * out.skipped  # back to 0 after a good step
        self.worst = torch.maximum(self.worst, self.bad_in_row)
        if out.expert_counts is not None:
            self.counts = plus(self.counts, out.expert_counts)
            self.entropy = plus(self.entropy, out.router_entropy)

    def settle(self, state: LoopState) -> tuple[int, int]:
        """Move the count of skipped steps into the state (a host sync); returns how many the window
        skipped since it was last logged, and the most in a row."""
        counts = torch.stack([self.skipped, self.bad_in_row, self.worst]).tolist()
        skipped, bad, worst = (int(v) for v in counts)
        self.skipped.zero_()
        state.skipped_steps += skipped
        state.bad_in_row = bad
        self.settled += skipped
        return self.settled, worst

    @contextmanager
    def pause(self):
        """Evaluations and saves: not the window's training time. On CUDA the steps queued before
        it are waited for first: they are training time (a save or evaluation would wait for them
        inside the pause)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.paused_at = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - self.paused_at
            self.paused_at = None

    def busy(self) -> float:
        """The window's training seconds so far, a pause under way excluded too (a save after an
        evaluation saves the seconds before the evaluation)."""
        now = time.perf_counter() if self.paused_at is None else self.paused_at
        return self.busy_before + now - self.start - self.paused

    def rank_steps(self, world: World) -> int:
        """(process, step) pairs summed: a resumed window counts its steps from before at the number
        of processes that took them."""
        return self.rank_steps_before + (self.steps - self.steps_before) * world.size

    def tokens(self, job: Job) -> int:
        """Tokens the window's steps trained on: a resumed window's steps from before at the tokens per
        step they were taken with (another --batch_size or --grad_accum at resume)."""
        before = self.tokens_before
        if before is None:
            before = self.steps_before * job.tokens_per_step
        return before + (self.steps - self.steps_before) * job.tokens_per_step

    def process_seconds(self, world: World, busy: float) -> float:
        """The window's busy seconds (`busy`) summed over the processes: a resumed window's from before
        at the number of processes they had."""
        return self.process_seconds_before + (busy - self.busy_before) * world.size

    def possible_flops(self, job: Job, busy: float) -> float | None:
        """FLOPs the processes could have done in the window's busy seconds (`busy`), the MFU's
        denominator: a resumed window's from before at the peak and number of processes they had (the
        peak is measured anew at each start on CPU, and a resume may run on another device). None
        without a peak."""
        if not job.peak:
            return None
        before = self.possible_before
        if before is None:  # an older checkpoint's window, or one saved without a peak: at today's peak
            before = self.process_seconds_before * job.peak
        return before + (busy - self.busy_before) * job.world.size * job.peak

    def record(self, job: Job) -> dict:
        """Means over the window's applied steps and all ranks (this waits for the device); NaN
        where every step was skipped."""
        *losses, n = runtime.all_reduce(self.losses.tolist() + [float(self.applied)], job.device, job.world)
        rec = dict(zip(LOSSES, [v / n if n else math.nan for v in losses], strict=True))
        if self.counts is not None:
            counts, entropy = self.counts.clone(), self.entropy.clone()
            if job.world.size > 1:
                dist.all_reduce(counts)
                dist.all_reduce(entropy)
            share = (counts.float() / counts.sum(-1, keepdim=True)).tolist()
            rec["expert_share"] = [[round(s, 5) for s in layer] for layer in share]
            rec["router_entropy"] = [round(float(e) / n, 5) if n else math.nan for e in entropy]
        rec["busy_seconds"] = self.busy()
        return rec

    def to_checkpoint(self, job: Job) -> dict:
        """The open window, summed over the ranks, on the CPU (saves wait for the device anyway), and
        how many ranks its per-rank means (losses, entropy) and applied steps were summed over."""
        sums = {k: v for k, v in (("losses", self.losses), ("counts", self.counts), ("entropy", self.entropy),
                                  ("applied", self.applied if self.steps else None)) if v is not None}
        if job.world.size > 1:
            sums = {k: v.clone() for k, v in sums.items()}
            for v in sums.values():
                dist.all_reduce(v)
        busy = self.busy()
        return {"steps": self.steps, "rank_steps": self.rank_steps(job.world), "tokens": self.tokens(job),
                "busy_seconds": busy, "possible_flops": self.possible_flops(job, busy),
                "process_seconds": self.process_seconds(job.world, busy), "grad_norm": float(self.grad_norm),
                "worst": int(self.worst), "settled": self.settled, "processes": job.world.size,
                **{k: v.cpu() for k, v in sums.items()}}

    @classmethod
    def from_checkpoint(cls, state: LoopState, job: Job) -> "Window":
        """The window a checkpoint was saved in (rank 0 holds the sums of all ranks), or a new one."""
        window, saved = cls(state, job.device), job.resumed_window
        if saved and saved["steps"]:
            window.steps, window.busy_before = saved["steps"], saved["busy_seconds"]
            window.steps_before = saved["steps"]  # older checkpoints: taken by as many processes as now
            window.rank_steps_before = saved.get("rank_steps", saved["steps"] * job.world.size)
            window.tokens_before = saved.get("tokens")
            window.possible_before = saved.get("possible_flops")
            # older checkpoints: at the processes per step the window had
            window.process_seconds_before = saved.get(
                "process_seconds", window.busy_before * window.rank_steps_before / window.steps_before)
            window.grad_norm.fill_(saved.get("grad_norm", math.nan))  # older checkpoints: unknown
            window.settled = saved.get("settled", 0)  # for the warning and the streak check of the window
            window.worst.fill_(max(saved.get("worst", 0), state.bad_in_row))
            # the per-rank means and applied steps were summed over the saving run's processes: at
            # today's number, so that each step weighs in the record as in an uninterrupted run
            # (older checkpoints: as many processes as took the window's steps, on average)
            scale = job.world.size / saved.get("processes", window.rank_steps_before / window.steps_before)
            # an older checkpoint's: every step counted as applied (its sums hold a skipped step's loss)
            applied = saved.get("applied", window.rank_steps_before) * scale
            window.applied.fill_(applied if job.world.main else 0)
            for k in ("losses", "counts", "entropy"):
                if k in saved:
                    v = saved[k].to(job.device) * (1 if k == "counts" else scale)  # (counts: all tokens')
                    setattr(window, k, v if job.world.main else torch.zeros_like(v))
        return window


def log_step(job: Job, state: LoopState, window: Window, lr: float, bar) -> None:
    """Write the window's train record; then stop when too many non-finite steps came in a row (in
    this window: the check waits for the log step, the skipped updates changed nothing), the record
    that shows them written."""
    skipped, worst = window.settle(state)
    if skipped:
        job.log(f"step {state.step}: {skipped} non-finite loss or gradient step(s) in the last "
                f"{window.steps}, updates skipped (up to {worst} in a row)")
    write_train_record(job, state, window, lr, bar, worst)
    if worst >= job.train_args.max_bad_steps:  # (the record's bad_streak: what scripts/sweep.py reads)
        saved = ("last.pt holds the last good state" if (job.run_dir / "last.pt").exists()
                 else left_to_resume(job.run_dir))  # best.pt alone, or nothing yet
        # (every rank meets it alike, from the same summed streaks)
        raise runtime.met_alike(job.world,
            f"{worst} non-finite steps in a row (by step {state.step}); lower --lr, raise "
            f"--warmup_steps or check the data; {saved}")


def write_train_record(job: Job, state: LoopState, window: Window, lr: float, bar, worst: int) -> None:
    """The window's train record, to metrics.jsonl and W&B (rank 0), and the progress bar's figures;
    `worst`: the most non-finite steps in a row in the window (log_step stops the run at --max_bad_steps)."""
    rec = window.record(job)
    busy = rec.pop("busy_seconds")
    tok_s = window.tokens(job) / max(busy, 1e-9)
    possible = window.possible_flops(job, busy)  # FLOPs done over those the processes could have done
    mfu = window.tokens(job) * job.fpt / max(possible, 1e-9) if possible is not None else None
    # the gradient norm of the window's last applied step (the same on every rank; NaN: none applied)
    rec.update(kind="train", step=state.step, lr=lr, grad_norm=float(window.grad_norm), tokens_per_s=tok_s,
               mfu=mfu, tokens=state.tokens,
               minutes=state.elapsed / 60, skipped_steps=state.skipped_steps, window_steps=window.steps,
               bad_streak=worst)
    # rank 0 writes; the others learn whether it could (a full disk), rather than failing at their
    # next collective with a traceback of their own
    with runtime.all_ranks_or_none(job.world, job.device, "writing metrics.jsonl"):
        if job.world.main:
            t = job.train_args
            eta = {"eta": f"{job.clock.minutes_left(state, t.max_steps):.1f}min"} if t.max_minutes else {}
            bar.set_postfix(loss=f"{rec['lm_loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", **eta)
            job.metrics.write(rec)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def write_checkpoint(job: Job, state: LoopState, window: Window, name: str, wait: bool = False) -> None:
    """Write last.pt or best.pt (`name`) now, always (the window's skipped steps and the clock
    settled into the state first), in the background (checkpoint.Saves: training goes on as a child
    process writes it) unless `wait`; weights that are not finite are never written: a RunError ends
    the run, the old file intact."""
    window.settle(state)
    # the clock now, not agree's after the step: the step's evaluation and best.pt's save count too
    # (a resumed run would never count them); only the seconds of this save are not in its file
    state.elapsed = runtime.all_reduce([job.clock.elapsed()], job.device, job.world, op=dist.ReduceOp.MAX)[0]
    if not finite(job.model.parameters()):  # every rank agrees: same weights
        raise runtime.met_alike(job.world,
            f"weights are not finite at step {state.step}; not saving {name} (the previous checkpoint is "
            "intact): lower --lr or raise --warmup_steps")
    saved_window = window.to_checkpoint(job)  # a collective under DDP: every rank takes part
    with runtime.all_ranks_or_none(job.world, job.device, f"writing {name}"):  # (as write_train_record)
        if job.world.main:
            with job.stop.saving() if job.stop is not None else nullcontext():
                job.saves.wait(but=state.step)  # (the earlier saves: each failure is this one's too)
                job.saves.save(job.run_dir / name, job.to_checkpoint(state, saved_window), key=state.step)
                if wait:
                    job.saves.wait()


def in_background(setting: str, device: torch.device) -> bool:
    """Whether --save_in_background (auto, true, false) writes the saves and plots from a child process:
    where one can be forked (checkpoint.BACKGROUND), and for auto on CUDA alone. On the CPU the steps
    write the weights, moments and activations the fork shares with the child, and each page written
    is copied: a 1.2 GB tensor written took 2.0 s with a child alive against 0.07 s (our CPU, a VM),
    and the steps during a background save of scout-128m 4.1x their time, 3.96 s lost against 3.51 s
    for the save made at once (scripts/bench_save.py); on CUDA they live in the GPU's memory."""
    return checkpoint.BACKGROUND and (setting == "true" or (setting == "auto" and device.type == "cuda"))


def finite(tensors) -> bool:
    """Whether every value is finite, read with one host sync (a read per tensor was a wait per
    parameter on the GPU at each save)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


# ---------------------------------------------------------------------------------------------
# Signals, and the ranks' agreements under torchrun


class Stop:
    """SIGINT / SIGTERM ask the loop to stop after the current step (`until`: under torchrun, after
    the ranks' next agreement, within about AGREE_SECONDS); a second signal aborts, but never in
    the middle of a save: then it takes effect once the checkpoint is complete. Before this
    session's first step is done (`started`), a signal aborts at once, as one before the loop
    does: that step would add nothing worth saving, and a compiled model's takes minutes to
    compile, past the 30 s torchrun gives its workers before killing them. A signal the process
    was started to ignore (a non-interactive shell's background job ignores SIGINT) stays ignored.
    Under torchrun (`peers`) the save it promises is on a condition: torchrun also sends SIGTERM to
    the rest of a job one of whose processes has died, and then nothing can be saved (the ranks'
    next collective fails: run says so in one line)."""

    def __init__(self, log, until: str = "this step", peers: bool = False):
        self.requested, self.log, self.until, self.peers = False, log, until, peers
        self.in_save = self.abort = self.started = False
        main_thread = threading.current_thread() is threading.main_thread()  # the only one with handlers
        self.old = {s: errors.take_signal(s, self.handle)
                    for s in (signal.SIGINT, signal.SIGTERM) if main_thread}

    def handle(self, signum, frame):
        name = signal.Signals(signum).name
        if not (self.started or self.requested or self.in_save):  # (main() says what is left)
            self.restore()
            # (a compiled model's first backward is traced in anomaly mode, which would print
            # where its forward was called from as a warning)
            warnings.filterwarnings("ignore", "Error detected in", UserWarning)
            raise KeyboardInterrupt
        if self.requested and self.in_save:
            self.abort = True
            self.log(f"\n{name}: aborting as soon as the checkpoint being written is complete")
        elif self.requested:
            self.restore()
            raise KeyboardInterrupt
        else:
            self.requested = True
            if_all = (" if every process of the job is still running (torchrun also sends SIGTERM when one "
                      "has stopped; " if self.peers else " (")
            self.log(f"\n{name}: finishing {self.until}, then saving a resumable checkpoint{if_all}send it "
                     "again to abort)")

    @contextmanager
    def saving(self):
        """A save: a second signal meanwhile is held back until the file is complete."""
        self.in_save = True
        try:
            yield
        finally:
            self.in_save = False
        if self.abort:
            self.restore()
            raise KeyboardInterrupt

    @contextmanager
    def during(self, until: str):
        """What a signal's line says is finished first while the block runs (an evaluation: its batch)."""
        before, self.until = self.until, until
        try:
            yield
        finally:
            self.until = before

    def restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)


AGREE_SECONDS = 10.0  # under torchrun the ranks agree at least this often (see agree)


def agree(job: Job, state: LoopState, stop: Stop) -> bool:
    """Update the clock (agreed over the ranks, as is a stop request); True when a signal asks to stop.
    Under torchrun the ranks agree at log steps, at the last step, and every k steps in between,
    where k (at most log_every) keeps the agreements about AGREE_SECONDS apart at the pace measured
    between the last two (agreed clocks: the same k on every rank; the first step agrees, to
    measure it). Reading the collective's result waits for the step, which the steps between do
    not. So a signal takes effect within about AGREE_SECONDS, well inside the 30 s torchrun gives
    its workers after forwarding one, and the clock the schedule and the budget read moves in
    steps of k."""
    if job.world.size == 1:
        state.elapsed = job.clock.elapsed()
        return stop.requested
    t = job.train_args
    if state.step % t.log_every and state.step < t.max_steps and state.step < job.agree_at:
        return False
    stop_now, state.elapsed = runtime.all_reduce([float(stop.requested), job.clock.elapsed()], job.device,
                                                 job.world, op=dist.ReduceOp.MAX)
    step0, elapsed0 = job.agreed
    pace = (state.elapsed - elapsed0) / max(state.step - step0, 1)  # seconds per step
    k = min(t.log_every, int(AGREE_SECONDS / pace)) if pace > 0 else t.log_every
    job.agreed, job.agree_at = (state.step, state.elapsed), state.step + max(k, 1)
    return bool(stop_now)


# ---------------------------------------------------------------------------------------------
# Setting a run up


def load_data(plan: RunPlan, world: World, device, log):
    """(tokenizer, training shard or None for --eval_only, validation shard); rank 0 builds caches.
    A resumed or evaluated run's tokenizer (or --init_from's) is checked against its checkpoint first,
    before any data work, with advice about the tokenizer (a checkpoint's model settings cannot
    change)."""
    model_args, train_args = plan.model_args, plan.train_args
    ckpt, ckpt_path, fix = plan.ckpt, plan.ckpt_path, tokenizer_fix(plan)
    if plan.init is not None:  # (its model reads that tokenizer's ids)
        ckpt, ckpt_path = plan.init, plan.init_path
    if ckpt is not None and train_args.tokenizer:  # (no new one: "leave it empty to train one" is no way out)
        beside = ckpt_path.parent / "tokenizer.json"
        missing = (f"drop --tokenizer to take the one beside the checkpoint, {beside}" if beside.is_file()
                   else f"name the one {ckpt_path} was trained with")
        with runtime.all_ranks_or_none(world, device, "checking the tokenizer"):  # (one line, not one a rank)
            tok = Tokenizer.load(train_args.tokenizer, fix, missing=missing)
            checkpoint.check_tokenizer(tok, train_args.tokenizer, ckpt, ckpt_path, fix)
    with runtime.rank0_first(world, device):
        if train_args.eval_only:
            if not train_args.tokenizer:
                raise RunError(f"{plan.run_dir} has no tokenizer.json to evaluate with; {fix}")
            tok = Tokenizer.load(train_args.tokenizer)
            out = tok, None, data.prepare_eval(train_args, model_args, tok, log)
        else:
            out = data.prepare(train_args, model_args, log=log)
    if ckpt is not None:  # a tokenizer from the cache (the run's tokenizer.json was missing)
        if not train_args.tokenizer and (ckpt_path.parent / "tokenizer.json").exists():  # --tokenizer ''
            whose = "the one beside the checkpoint" if plan.forks else "the run's own"
            fix = f"drop --tokenizer '' to take {whose}, {ckpt_path.parent / 'tokenizer.json'}"
        checkpoint.check_tokenizer(out[0], train_args.tokenizer or "the cached tokenizer", ckpt, ckpt_path,
                                   fix)
    return out


def tokenizer_fix(plan: RunPlan) -> str:
    """load_data's advice where the tokenizer is not the checkpoint's, or there is none: the file to
    put back, or --tokenizer. A resume, in its own folder or a fork, is told that another tokenizer is a
    run from scratch, without --resume (not "a new --run": with --resume that is a fork, which refuses
    it too); --eval_only trains nothing, and an import's tokenizer came from its HF folder."""
    if plan.init is not None:
        return "pass --tokenizer FILE, the one it was trained with"
    beside = plan.ckpt_path.parent / "tokenizer.json" if plan.ckpt_path is not None else None
    if plan.train_args.eval_only and plan.ckpt is not None and "train_args" not in plan.ckpt:  # an import
        return (f"put back {beside}, the one its HF folder held (scripts/export_hf.py --import copies it), "
                "or pass it with --tokenizer FILE")
    if plan.train_args.eval_only:
        return f"put back {beside}, the run's own, or pass it with --tokenizer FILE"
    if plan.forks:
        return (f"put back {beside} (the forked run's) or pass it with --tokenizer FILE (another tokenizer "
                "is a run from scratch, without --resume)")
    return ("put back the run's own tokenizer.json or pass it with --tokenizer FILE (another tokenizer is a "
            "run from scratch, without --resume)")


def make_log(world: World, stderr: bool = False):
    """print for rank 0 alone, past the progress bar; on standard error where standard output holds a
    result (--eval_only's JSON line is then all of it)."""
    def log(msg: str):
        if world.main:
            from tqdm import tqdm
            tqdm.write(msg, file=sys.stderr if stderr else None)
    return log


def setup(model_args: ModelArgs, train_args: TrainArgs, preset: str, given) -> tuple[Job, LoopState]:
    """Everything before the first step: a Job (holding the run folder), and the LoopState to
    start from. Settings are checked before any work; the folder is locked before anything is
    written in it, and released (removed, if this run made it and left it empty) on failure."""
    device, world = runtime.setup_distributed(runtime.resolve_device(train_args.device))
    log = make_log(world, stderr=train_args.eval_only)
    # (the clock of rank 0: ranks that each read their own, a --init_from loaded more slowly on one,
    # named a new run's folder by different seconds, and the run hung at its end)
    started = runtime.all_reduce([time.time() if world.main else 0.0], device, world)[0]
    plan = folder = None
    try:  # (a checkpoint that fails on every rank: rank 0's line alone, not one per process)
        with runtime.all_ranks_or_none(world, device, "its settings or run folder checks"):
            plan = runplan.plan_run(model_args, train_args, preset, given, started)
            runplan.check_settings(plan, device, world)  # (its memory check reads each rank's own device)
            folder = runplan.claim_folder(plan) if world.main and not plan.train_args.eval_only else None
            # (after the claim: a run refused its folder said the warnings of its settings first)
            for line in runplan.setting_warnings(plan, given):
                log(line)
            dtype = runtime.compute_dtype(plan.train_args.dtype, device)
            if changes := runplan.resume_changes(plan, given, dtype):
                log(changes)
            if moved := runplan.device_change(plan, device, dtype, given):
                log(moved)
        if (done := finished_run(plan, log)) is not None:
            raise Finished(done)
        job, state = build_job(plan, device, world, log)
    except BaseException as e:
        if folder is not None:
            folder.release()
        if plan is not None and (isinstance(e, KeyboardInterrupt) or runtime.peer_lost(e)):
            e.run_dir = plan.run_dir  # main() tells what is left there to resume from
        raise
    job.folder = folder
    return job, state


class Finished(Exception):
    """setup's way out for a finished run resumed: run() returns the result it carries."""

    def __init__(self, result: dict):
        super().__init__(result["finished"])
        self.result = result


def finished_run(plan: RunPlan, log) -> dict | None:
    """A run resumed at its --max_steps or with its --max_minutes spent, that ended there (not one a
    signal stopped, resumed with a limit lowered to where it stopped: wrap_up ends that one), and no
    evaluation put off by a signal: it says so and gives the result, judged on the checkpoint before
    any data is read or model built (there is nothing to train; a lost cache or an offline hub does
    not matter). None where the run trains on or has yet to end, and for --eval_only."""
    if (limit := runplan.finished_limit(plan)) is None:
        return None
    state = LoopState.from_checkpoint(plan.ckpt, 0)
    which = plan.ckpt_path if plan.forks else plan.run_dir  # (a fork's folder is not made: the parent's)
    log(f"{which} already reached its --{limit} at step {state.step}; nothing written "
        f"(raise --{limit} to train on)")
    run_dir = plan.ckpt_path.parent if plan.forks else plan.run_dir
    return {"step": state.step, "best_val": state.best_val, "run_dir": str(run_dir),
            "finished": limit, "signalled": False}


def build_job(plan: RunPlan, device, world: World, log) -> tuple[Job, LoopState]:
    """Data, model, optimizer: the Job, and the LoopState to start from."""
    model_args, train_args, ckpt = plan.model_args, plan.train_args, plan.ckpt
    tok, train_data, val = load_data(plan, world, device, log)
    dtype = runtime.compute_dtype(train_args.dtype, device)
    torch.manual_seed(train_args.seed)
    model = Llama4(model_args).to(device)
    if ckpt is not None:
        fix = checkpoint.resume_fix(plan.ckpt_path, train_args.eval_only)
        checkpoint.build(model_args, ckpt["model"], device, plan.ckpt_path, fix, model)
    elif plan.init is not None:
        init_from(plan, model, device, log)
    model.set_grad_checkpointing(train_args.grad_checkpoint, train_args.grad_checkpoint_layers)
    opt = None if train_args.eval_only else make_optimizer(model, train_args, device)
    if ckpt is not None and opt is not None:
        # (other parameter groups were refused in planning: runplan.check_optimizer_groups)
        load_optimizer(opt, ckpt["optimizer"], plan.ckpt_path, runplan.init_from_fix(plan))
        log(f"resumed {plan.ckpt_path} at step {ckpt['step']}")
    compiled = runtime.compile_model(model, train_args.compile, device, log, train_args.compile_mode)
    # DDP wraps the compiled model, as torch's docs advise ("where to apply torch.compile"): Dynamo
    # compiles inside DDP's forward, sees the DDP module and splits the graph at its gradient buckets
    # (DDPOptimizer), so each bucket's all-reduce overlaps the rest of the backward
    runner = compiled
    if world.size > 1:
        runner = runtime.data_parallel(compiled, device, find_unused=model_args.vision)
    job = Job(model_args=model_args, train_args=train_args, preset=plan.preset, run_dir=plan.run_dir,
              device=device, world=world, log=log, tok=tok, train_data=train_data,
              val=EvalSet(val, tok, model_args, train_args, world, device),
              model=model, compiled=compiled, runner=runner, opt=opt,
              autocast=runtime.autocast(device, dtype),
              no_sync=runner.no_sync if world.size > 1 else nullcontext,
              micros=list(range(world.rank, train_args.grad_accum, world.size)), clock=None,
              saves=checkpoint.Saves(in_background(train_args.save_in_background, device)),
              fpt=flops_per_token(model_args, model_args.max_seq_len), peak=runtime.peak_flops(device, dtype),
              ckpt_path=plan.ckpt_path, wandb_id=runplan.wandb_id(plan, log if world.main else None),
              wandb_entity=(ckpt or {}).get("wandb_entity"), resumed_window=(ckpt or {}).get("window"),
              continues=ckpt is not None and not plan.forks,
              imported=ckpt is not None and "train_args" not in ckpt)
    if compiled is not model:  # the calls that compile (and under CUDA graphs, record)
        job.trials = job.eval_trials = 2 if train_args.compile_mode in config.CUDA_GRAPH_MODES else 1
    state = start_state(plan, job, log)
    job.clock = Clock(train_args.max_minutes, state.elapsed)
    if ckpt is not None and opt is not None:  # last: set-up draws (peak_flops' GEMM on the CPU)
        checkpoint.set_rng_state(ckpt["rng"])
    return job, state


def init_from(plan: RunPlan, model: Llama4, device, log) -> None:
    """--init_from: the checkpoint's weights into `model`, for a new run from step 0 with an optimizer
    of its own; the router noise projection dropped, or newly initialised, where --router_noise is not
    the checkpoint's."""
    saved_noise = config.from_dict(config.ModelArgs, plan.init["model_args"]).router_noise
    weights = checkpoint.init_state(model, plan.init["model"], saved_noise)
    checkpoint.build(plan.model_args, weights, device, plan.init_path, runplan.INIT_FIX, model)
    trained = "train_args" in plan.init  # (an import holds weights and model settings only)
    at = f"its step {plan.init.get('step', 0)}" if trained else "an import, weights only"
    noise = "" if saved_noise == plan.model_args.router_noise else ", router noise " + (
        "off: its projection dropped" if saved_noise else "on: its projection newly initialised")
    log(f"initialised from {plan.init_path} ({at}{noise}): a new run from step 0")


def start_state(plan: RunPlan, job: Job, log) -> LoopState:
    """The LoopState to start from: the checkpoint's (a new one without), its best validation forgotten
    where the validation windows are not those it was measured on."""
    ckpt, train_args = plan.ckpt, plan.train_args
    state = LoopState.from_checkpoint(ckpt, job.tokens_per_step) if ckpt is not None else LoopState()
    if not train_args.eval_only and state.val_set not in ("", job.val.key) and math.isfinite(state.best_val):
        log(f"the validation windows are not those the checkpoint's best ({state.best_val:.4f} nats/token) "
            "was measured on (another --val_data, --eval_windows or text): the best starts afresh, and "
            "the next evaluation replaces best.pt")
        state.best_val = math.inf
    if job.val.held_out and runplan.held_out_moved(plan, state.val_set, job.val.key):
        log("warning: the held-out slice of --data is not the one the checkpoint's run held out (files of "
            "--data were added, removed or changed since, or the version of this project that trained the "
            "run split them into other documents): unless text was only added at its end, it holds "
            "documents the run trained on, so its validation loss is not held out; put --data back as it "
            "was, or pass --val_data")
    state.val_set = job.val.key
    return state


def start_logging(job: Job, state: LoopState) -> None:
    """Settings files, the start-up summary, W&B and metrics.jsonl (rank 0). A fork's folder may
    hold the logs of a run killed before its first checkpoint: they are replaced, as for a new run."""
    model_args, train_args, log = job.model_args, job.train_args, job.log
    counts = count_parameters(job.model)
    T, B = model_args.max_seq_len, train_args.batch_size
    log(f"model: {counts['total']:,} parameters, {counts['active_per_token']:,} active per token "
        f"({counts['non_embedding']:,} non-embedding); {job.fpt / 1e6:.1f} MFLOPs per token")
    dtype = runtime.compute_dtype(train_args.dtype, job.device)
    mode = "" if train_args.compile_mode == "default" else f" ({train_args.compile_mode})"
    how = f"compiled{mode}" if job.compiled is not job.model else "eager"
    log(f"run: {job.run_dir} | device {job.device}, dtype {str(dtype).removeprefix('torch.')}, {how}, "
        f"world size {job.world.size} | {job.tokens_per_step:,} tokens per step "
        f"({train_args.grad_accum} x {B} x {T}) | "
        f"steps {state.step} -> {train_args.max_steps}"
        + (f" or {train_args.max_minutes:g} minutes" if train_args.max_minutes else "")
        + (f" | peak {job.peak / 1e12:.2f} TFLOP/s" if job.peak else ""))
    if job.trials:  # otherwise a still progress bar looks like a hang
        log("compiling: the first step takes longer (up to 23 s for scout-128m on an H200), and so "
            f"does the first compiled evaluation (up to 8 s), after {COMPILE_EVAL_AFTER_S:g} s of eager "
            "ones; --compile false skips it")
    # rank 0 writes; the others learn whether it could (a bad metrics.jsonl, a full disk), rather
    # than failing at the first step's collective with a traceback of their own
    with runtime.all_ranks_or_none(job.world, job.device, "starting the run's logs"):
        if job.world.main:
            open_logs(job, state)


def session_of(job: Job) -> dict:
    """Where and how this session trains, as --device auto, --dtype auto and --compile auto resolved
    (W&B's config: runs compared there by the settings they ran with, not the "auto" typed)."""
    dtype = runtime.compute_dtype(job.train_args.dtype, job.device)
    name = torch.cuda.get_device_name(job.device) if job.device.type == "cuda" else "cpu"
    return {"device": str(job.device), "device_name": name, "dtype": str(dtype).removeprefix("torch."),
            "processes": job.world.size, "compiled": bool(job.trials)}


def open_logs(job: Job, state: LoopState) -> None:
    """The settings files, the tokenizer, W&B and metrics.jsonl (rank 0 alone)."""
    model_args, train_args, log = job.model_args, job.train_args, job.log
    storage.save_json(job.run_dir / "model.json", config.to_dict(model_args), storage.OUT_FIX)
    storage.save_json(job.run_dir / "train.json", config.to_dict(train_args), storage.OUT_FIX)
    if not job.continues or not (job.run_dir / "tokenizer.json").exists():  # a killed run's may be there
        job.tok.save(job.run_dir / "tokenizer.json", fix=storage.OUT_FIX)
    counts = count_parameters(job.model)  # (W&B's config alone: MoE and dense runs compared there)
    settings = {"preset": job.preset, "model": config.to_dict(model_args),
                "train": config.to_dict(train_args), "wandb_id": job.wandb_id,
                "wandb_entity": job.wandb_entity,
                "parameters": {k: counts[k] for k in ("total", "active_per_token")},
                "session": session_of(job)}
    wandb_run = runlog.start_wandb(train_args, job.run_dir, settings, log)
    new_wandb = runlog.new_wandb_run(wandb_run, job.wandb_id, log)  # not the checkpoint's W&B run
    if new_wandb:
        runlog.say_superseded(wandb_run, job.run_dir, log)
    # an open window's record is written again only by a run that trains on (not one resumed for the
    # evaluation a signal put off, with its budget spent: it would lose the record)
    trains = state.step < train_args.max_steps and not job.clock.spent(state)
    job.metrics = runlog.Metrics(job.run_dir, wandb_run, state.step if job.continues else None, log,
                                 open_window=trains and bool((job.resumed_window or {}).get("steps")),
                                 backfill=new_wandb, eval_due=state.eval_due, moe_every=model_args.moe_every)


# ---------------------------------------------------------------------------------------------
# The run


def run(model_args: ModelArgs, train_args: TrainArgs, preset: str = config.DEFAULT_PRESET,
        given=frozenset()) -> dict:
    """Set up, then train (or evaluate, with --eval_only); the run folder is held until the end."""
    try:
        job, state = setup(model_args, train_args, preset, given)
    except Finished as e:
        return e.result
    try:
        try:
            return run_job(job, state)
        finally:  # (a run cut short: the saves it began complete before it ends)
            job.saves.finish(job.log)
    except KeyboardInterrupt as e:  # main() tells what is left to resume from (one in finish's wait too)
        e.run_dir = job.run_dir
        raise
    except Exception as e:  # out of memory: one line, with the batch this run uses (a checkpoint's)
        if runtime.peer_lost(e):  # (a rank killed: the others' collective fails, with a page of traceback)
            raise peer_lost_error(e, job.run_dir, job.train_args.eval_only) from e
        if not runtime.out_of_memory(e):
            raise
        advice = memory_advice(job.train_args.batch_size, getattr(e, "eval_batch_size", None), job.train_args,
                               job.model_args.n_layers)
        raise RunError(f"out of memory ({first_line(e)[:160]}); {advice}") from e
    finally:
        if job.folder is not None:
            job.folder.release()


def run_job(job: Job, state: LoopState) -> dict:
    """Train (or evaluate, with --eval_only) the job set up."""
    runtime.set_up_done()  # (the ranks waited for rank 0's data with a longer timeout)
    if job.train_args.eval_only:
        return evaluate_only(job, state)
    return loop(job, state)  # (a finished run resumed never gets here: finished_run)


def loop(job: Job, state: LoopState) -> dict:
    """The training loop: the run's logs started (start_logging) and the evaluation a signal put off
    run, then steps to max_steps, the budget or a signal, then the final evaluation and checkpoints."""
    t = job.train_args
    start_logging(job, state)
    from tqdm import tqdm
    bar = tqdm(total=None if t.max_minutes else t.max_steps, initial=state.step, disable=not job.world.main,
               dynamic_ncols=True, desc=job.run_dir.name)
    until = "this step" if job.world.size == 1 else f"the steps of the next {AGREE_SECONDS:g} s or so"
    job.stop = stop = Stop(job.log, until, peers=job.world.size > 1)
    job.agreed, job.agree_at = (state.step, state.elapsed), state.step + 1
    finished = "max_steps"
    job.model.train()
    window = Window.from_checkpoint(state, job)  # the window the checkpoint was saved in, if any
    evaluated = None  # the step evaluated last here, if it was the last step taken
    out = None  # the last step's output (None: no step in this session, nor its lr to log)
    signalled = False
    failed = True  # until the loop ends without an exception: the W&B run is then marked failed
    try:
        if state.eval_due:  # the evaluation a signal put off, before training on; saved at once, so
            with window.pause():  # that a crash before the next save does not run it again
                state.eval_due = False
                evaluated = evaluate_step(job, state, window)
                write_checkpoint(job, state, window, "last.pt")
        while state.step < t.max_steps:
            if job.clock.spent(state):
                finished = "max_minutes"
                break
            lr = lr_at(t, state.step, state.elapsed / 60)
            out = first_steps(job, batches_at(job, state.step), state.step, lr)
            state.step, state.tokens = state.step + 1, state.tokens + job.tokens_per_step
            window.add(out)
            signalled = agree(job, state, stop)
            stop.started = True
            # a signal at the last step (of max_steps or the budget) does not cut the run short
            stop_now = signalled and not (state.step >= t.max_steps or job.clock.spent(state))
            bar.update(1)
            if state.step % t.log_every == 0 or state.step == t.max_steps:
                log_step(job, state, window, lr, bar)
                window = Window(state, job.device)
            evaluated = evaluate_and_save(job, state, window, stop_now)
            # (eval_due: a signal cut this step's evaluation short; at the step the budget is spent, the
            # run's last, wrap_up saves and runs it whole, as for a signal there)
            if stop_now or (state.eval_due and not job.clock.spent(state)):
                finished = "signal"
                break
        if window.steps and out is not None:  # the last, partial window (a budget or a signal ended the run)
            with window.pause():  # its record's writing is no training time of the window the saves keep
                log_step(job, state, window, lr, bar)
        if finished != "signal":
            wrap_up(job, state, window, evaluated, signalled)
        failed = False
    finally:
        stop.restore()
        bar.close()
        try:
            end_plot(job)  # (its image to W&B before the W&B run ends)
        finally:
            if job.metrics is not None:
                job.metrics.finish(exit_code=1 if failed else 0)
    job.log((f"stopped by a signal at step {state.step}; checkpoints in {job.run_dir} (resume with "
             f"{resume_options(job.run_dir)})" if finished == "signal" else
             f"done at step {state.step} ({finished}); checkpoints in {job.run_dir}")
            + (f"; {state.skipped_steps} non-finite steps skipped" if state.skipped_steps else ""))
    # signalled: also a signal at the last step or after it, which cut nothing short (compare.py stops on it)
    return {"step": state.step, "best_val": state.best_val, "run_dir": str(job.run_dir), "finished": finished,
            "signalled": signalled or stop.requested}


def evaluate_and_save(job: Job, state: LoopState, window: Window, stop_now: bool) -> int | None:
    """After each step (none at max_steps: wrap_up's): the evaluation every eval_every steps (put
    off, not lost, when a signal stops the run here or cuts the evaluation short: state.eval_due, the
    run stops, and the resumed run evaluates this step first), last.pt every save_every steps and
    when stopping. The step evaluated, or None."""
    t, evaluated = job.train_args, None
    to_evaluate = state.step % t.eval_every == 0 and state.step < t.max_steps
    save = (state.step % t.save_every == 0 and state.step < t.max_steps) or stop_now
    if not (to_evaluate or save):
        return None  # (no pause: on CUDA it waits for the device)
    with window.pause():
        if to_evaluate and not stop_now:
            evaluated = evaluate_step(job, state, window, job.stop)
        if to_evaluate and evaluated is None:  # a signal at this step, or during its evaluation
            state.eval_due = True
        if save or state.eval_due:  # (the run stops: the file complete before it ends)
            write_checkpoint(job, state, window, "last.pt", wait=stop_now or state.eval_due)
    return evaluated


def wrap_up(job: Job, state: LoopState, window: Window, evaluated: int | None, signalled: bool) -> None:
    """The end of a run no signal cut short: the final evaluation (unless the loop evaluated this
    step), best.pt if there is none yet, then last.pt. A signal at the last step, or one that cuts the
    final evaluation short, saves last.pt first, with the evaluation put off in it (in case the rest
    of the grace period runs out), then runs the whole evaluation."""
    with window.pause():  # (the budget may end the run in the middle of a window: the saves hold it)
        if evaluated != state.step:
            if signalled or evaluate_step(job, state, window, job.stop) is None:
                state.eval_due = True
                write_checkpoint(job, state, window, "last.pt", wait=True)
                state.eval_due = False
                evaluate_step(job, state, window)
        if no_best(job):
            write_checkpoint(job, state, window, "best.pt")
        write_checkpoint(job, state, window, "last.pt", wait=True)  # (every save complete)


def no_best(job: Job) -> bool:
    """Whether the run has no best.pt yet, as rank 0 sees its folder (a collective under torchrun:
    another node's view of a shared folder may lag, and a rank that saw otherwise would leave the
    others waiting in write_checkpoint's collectives)."""
    best = job.run_dir / "best.pt"
    missing = float(job.world.main and not (best.exists() or job.saves.writing(best)))
    return runtime.all_reduce([missing], job.device, job.world, op=dist.ReduceOp.MAX)[0] > 0


def evaluate_step(job: Job, state: LoopState, window: Window, stop: "Stop | None" = None) -> int | None:
    """Evaluate, keep best.pt if the result is the best yet; the step evaluated (None: a signal, `stop`,
    cut the evaluation short)."""
    improved = run_eval(job, state, stop)
    if improved:
        write_checkpoint(job, state, window, "best.pt")
    return None if improved is None else state.step


def evaluate_only(job: Job, state: LoopState) -> dict:
    """--eval_only: one JSON line with the checkpoint's validation figures, its step and path. An
    import's step is null, and "imported": true says so (its "step": 0 read as an untrained model's).
    In a terminal a bar on standard error counts the batches (a whole valid-lower.txt takes minutes on
    a CPU); elsewhere (a log file, a pipe) it stays quiet."""
    from tqdm import tqdm
    with tqdm(desc="evaluating", unit="batch", leave=False, disable=None if job.world.main else True) as bar:
        result = evaluate_job(job, bar=bar)
    result.update(step=None if job.imported else state.step, checkpoint=str(job.ckpt_path))
    if job.imported:
        result["imported"] = True
    # rank 0 prints; the others learn whether it could (stdout on a full disk), rather than waiting for
    # ever at the last barrier (leave_group) for a rank 0 stuck leaving its process group
    with runtime.all_ranks_or_none(job.world, job.device, "printing the result"):
        if job.world.main:
            print(json.dumps(result), flush=True)
            if getattr(sys.stdout, "lost", False):  # (its one output: not to be lost as the log may be)
                raise RunError("cannot print the result: standard output is closed or its disk is full; send "
                               "it to a file with room, or to a terminal")
    return result


# ---------------------------------------------------------------------------------------------
# Stopping early: what the last line says, and what is left to resume from


def peer_lost_error(e: Exception, run_dir: Path | None, eval_only: bool = False,
                    resume: str = "") -> RunError:
    """The line for a collective that failed because another process of the job went away."""
    if isinstance(e, dist.DistNetworkError):
        why = first_line(e)[:120]
    else:  # (runtime.peer_lost found one of these in it)
        why = next(m for m in runtime.PEER_LOST if m in str(e))
    return RunError(f"another process of this torchrun job stopped ({why}: it was killed or failed, and "
                    f"torchrun's log names it); {left_to_resume(run_dir, eval_only, resume)}")


def memory_advice(batch_size: int | None = None, eval_batch: int | None = None,
                  train_args: TrainArgs | None = None, n_layers: int = 0) -> str:
    """What to do when a run runs out of memory (at set-up, before its batch is known: no batch; in
    an evaluation, eval_batch: the windows of its batches; at one, there is no lower to go). With
    the run's train_args (and its model's n_layers), checkpointing is advised as far as it is not on
    already."""
    if eval_batch and eval_batch > 1:
        return (f"it was an evaluation's batch of {eval_batch} windows: lower --eval_batch_size (0, the "
                "default, takes up to 4x --batch_size); the checkpoints already written are complete")
    now = f" (now {batch_size}; --grad_accum keeps the global batch)" if batch_size else ""
    more = " or set --grad_checkpoint true"
    if train_args is not None and train_args.grad_checkpoint:  # (every layer recomputed: nothing more)
        layers = train_args.grad_checkpoint_layers  # (as many as the model has: every one, as 0 is)
        some = layers > 0 and (n_layers == 0 or layers < n_layers)  # (n_layers 0: not known)
        more = f" or raise --grad_checkpoint_layers (now {layers}; 0 recomputes every layer)" if some else ""
    return f"lower --batch_size{now}{more}; the checkpoints already written are complete"


def resume_options(run_dir: Path) -> str:
    """The options that resume the run in run_dir: its name, and its --out_dir where not the default."""
    return f"{runplan.run_options(run_dir)} --resume"


def left_to_resume(run_dir: Path | None, eval_only: bool = False, resume: str = "") -> str:
    """What an interrupted run leaves to go on from. run_dir is None before its folder is known, when
    nothing was written (at --resume, `resume`: the checkpoints resumed from are as they were)."""
    if eval_only:
        return "nothing was written (--eval_only only reads)"
    if run_dir is None:
        return "no checkpoint was written" + (" (the resumed run's are as they were)" if resume else "")
    if (run_dir / "last.pt").exists():
        return f"the checkpoints written are complete (--resume {run_dir} continues from its last.pt)"
    if (run_dir / "best.pt").exists():
        return f"the checkpoints written are complete (--resume {run_dir / 'best.pt'} continues from it)"
    return "no checkpoint was written"


# ---------------------------------------------------------------------------------------------
# The command line


def main(argv=None):
    # at --resume and --eval_only the settings are checked once merged with the checkpoint's
    # (runplan.resume_settings): --lr 1e-5 is fine beside a checkpoint's --min_lr 0, not beside the
    # preset's; at --init_from, once on the checkpoint's preset (runplan.init_settings)
    parsed = config.parse_args([ModelArgs, TrainArgs], argv, prog="train.py", description=__doc__,
                               checked_later=lambda ns: bool(ns.resume or ns.init_from) or ns.eval_only)
    preset, (model_args, train_args) = parsed
    if hasattr(sys.stdout, "reconfigure"):  # a run folder's name that is not UTF-8 (made outside
        sys.stdout.reconfigure(errors="backslashreplace")  # train.py) is printed as stderr prints it
    restore_sigterm = errors.sigterm_interrupts()
    restore_consoles = errors.tolerant_consoles("train.py", warn=not train_args.eval_only)
    finished = None  # the result, once the run finished
    try:
        finished = run(model_args, train_args, preset, parsed.given)
        return finished
    except UserError as e:
        if reports(e):  # (under torchrun: a bad setting by rank 0 alone)
            print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:  # a second signal, or one before the loop: no traceback, status 130
        if errors.main_rank():  # (under torchrun every rank is signalled: one line)
            left = left_to_resume(getattr(e, "run_dir", None), train_args.eval_only, train_args.resume)
            print(f"\ntrain.py: interrupted; {left}", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if runtime.peer_lost(e):  # (in set-up: setup() names the run folder; the last barrier: leave_group)
            lost = peer_lost_error(e, getattr(e, "run_dir", None), train_args.eval_only,
                                   train_args.resume)
            print(f"train.py: error: {lost}", file=sys.stderr)
            sys.exit(1)
        if not runtime.out_of_memory(e):
            raise
        print(f"train.py: error: out of memory ({first_line(e)[:160]}); {memory_advice()}", file=sys.stderr)
        sys.exit(1)  # (set-up: loading a checkpoint or the model; run() names the batch of a step)
    finally:
        restore_sigterm()
        restore_consoles()
        if dist.is_initialized():
            leave(finished, train_args.eval_only, sys.exc_info()[1])


def leave(finished: dict | None, eval_only: bool, leaving: BaseException | None) -> None:
    """main's exit work under torchrun: free_frames, then leave_group. A signal that lands here comes
    after the run's last line: torchrun's SIGTERM to the rest of a job one of whose processes failed or
    was killed, once they said why (`leaving`: the exception on its way out), or a SIGTERM as a finished
    run exits. Its KeyboardInterrupt is dropped: not a second line (`train.py: interrupted`) under the
    last, and an end by SIGINT in place of the status chosen."""
    for work in (lambda: free_frames(leaving), lambda: leave_group(finished, eval_only)):
        try:
            work()
        except KeyboardInterrupt:
            pass


def free_frames(e: BaseException | None) -> None:
    """Clear the locals of the frames that an exception on its way out holds (its traceback's, and
    those of the exceptions it came from), and collect what they alone kept: the run's Job, and under
    torchrun its DDP wrapper, whose Reducer holds the process group. Kept past destroy_process_group,
    the Reducer was freed as the interpreter exited, in gloo's destructor, which joins its threads: a
    rank hung there at exit (once, under load). The traceback still prints (names and lines, no locals)."""
    if e is None:  # (a run that ended well: its Job went with run's frame)
        return
    chain, seen = [e], set()
    while chain:
        e = chain.pop()
        if e is not None and id(e) not in seen:
            seen.add(id(e))
            traceback.clear_frames(e.__traceback__)  # (main's own frame, still running, is left as it is)
            chain += [e.__cause__, e.__context__]
    gc.collect()  # (whatever the frames held in a reference cycle)


def leave_group(finished: dict | None, eval_only: bool) -> None:
    """Tear the process group down, a finished run once every rank is done with it; a process of the
    job lost meanwhile (rank 0 killed while it finishes its W&B run) is one line and status 1, not
    gloo's traceback."""
    try:
        if finished is not None:  # no rank tears the process group down while another still uses it
            runtime.wait_long()  # (rank 0 may be finishing its W&B run)
            dist.barrier()
    except KeyboardInterrupt:  # a second signal while the others finish: leave at once
        pass
    except Exception as e:
        if not runtime.peer_lost(e):
            raise
        run_dir = finished.get("run_dir")
        print(f"train.py: error: {peer_lost_error(e, run_dir and Path(run_dir), eval_only)}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    finally:  # the import's SIGTERM-as-Ctrl-C ends with main: a kill during the exit's work is a kill
        signal.signal(signal.SIGTERM, SIGTERM_AT_START or signal.SIG_DFL)
