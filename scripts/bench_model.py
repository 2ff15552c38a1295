"""Model benchmark: one training step as train.py takes it (train.train_step: forward + backward,
clipping, fused AdamW), on the CPU or a GPU.

    python scripts/bench_model.py                      # CPU: dim 256, fp32, 2 threads, batch 8
    python scripts/bench_model.py --device cuda        # GPU: scout-128m, bf16 autocast, batch 32 and 128,
                                                       # eager; compiled at 128 (--compile_batches)
    python scripts/bench_model.py --quick              # tiny shapes, for a smoke test

Compares, on the same token batch and in one run (timings interleaved, medians reported):
  moe         our MoE model (16 routed experts + shared, top-1, sparse dispatch)
  dense       our model with dense SwiGLU layers of the same active width (ModelArgs.dense_twin)
  moe+ckpt    our MoE model with activation checkpointing
  moe+ckpt-part  with --ckpt_layers N: checkpointing of the first N layers alone (train.py's
              --grad_checkpoint_layers), and moe+ckpt-part+compile where the others compile
  moe+plain-loss  our MoE model with lm_head + F.cross_entropy (loss_impl "reference") instead of
              the fused linear cross-entropy, which never holds the (B*T, V) logits
  moe+eval    not a training step: train.evaluate on one batch of train.py's auto validation batch at
              this training batch, 4x as many sequences (eval mode, no gradients, the loss without
              logits), the pace of train.py's validation passes
  hf          transformers' Llama4ForCausalLM with identical weights (it runs every expert), eager
  moe+compile, dense+compile, moe+eval+compile, moe+ckpt+compile   the same, torch.compile'd (with
              --compile; on by default on CUDA, where train.py compiles by default), at the largest
              batch only unless --compile_batches says otherwise; the batches that compile are
              measured first (a run cut at a deadline keeps them)
and reports per variant: step time, tokens/s, MFU (train.py's FLOPs per token against the device
peak: the GPU table, or a GEMM timed now on CPU; a third of them for evaluation, which has no
backward pass), aten ops per step of the eager variants (a CPU
proxy for kernel launches: view ops excluded) and the peak memory of a step for moe, moe+ckpt and
moe+plain-loss, and on CUDA for moe+compile and moe+ckpt+compile, checkpointing's saving as train.py
runs it there (torch.cuda.max_memory_allocated on CUDA; on CPU the peak RSS above the post-setup
baseline, in a fresh subprocess per variant), beside what scripts/memory_model.py computes for it
on fake tensors (so that each run checks that model; --no-modelled skips that CPU work). Ratios
are what the README quotes. A compiled variant's warm-up steps (the weights, batch and router
noise of its eager twin's, which warms up as many) must give the eager lm_loss and gradient norm
within AGREE_TOL, the first (compiled) and the last (a CUDA graph's replay, where one is recorded):
one that does not is named (disagrees_with_eager), since a fast step with wrong gradients is none;
so must moe+ckpt's give moe's (a checkpointed layer is recomputed by torch's reentrant checkpoint,
eager: from another forward than the loss's, were its kernels another's).
--profile adds, for moe and dense, eager and compiled, and the eager evaluation pass (moe+eval),
where a step's time goes (torch.profiler): on CUDA the kernels' time against the wall time (host- or
device-bound), their count, the top kernels, and their time by kind (GEMM, grouped GEMM, Inductor's
fused kernels, sorts...), which the report sets beside the dense twin's: where the MoE's extra time
goes.
"""

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import errors  # noqa: E402, F401  first: a Ctrl-C while torch imports is one line, no traceback

# isort: split

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import config  # noqa: E402
import model as model_module  # noqa: E402
import runtime  # noqa: E402
import storage  # noqa: E402
import train  # noqa: E402
from config import ModelArgs, TrainArgs  # noqa: E402
from errors import UserError, first_line, run_script  # noqa: E402
from model import Llama4, Output, count_parameters, flops_per_token  # noqa: E402

# The benchmark's own shapes, not presets: no run trains them (the README's CPU tables are at CPU_SHAPE)
CPU_SHAPE = dict(vocab_size=4096, dim=256, n_layers=4, n_heads=8, n_kv_heads=2, expert_dim=512, mlp_dim=1024,
                 n_experts=16, top_k=1, max_seq_len=256, attn_chunk_size=64, attn_floor_scale=64)
QUICK_SHAPE = dict(CPU_SHAPE, dim=64, n_layers=2, expert_dim=64, mlp_dim=128, max_seq_len=64, n_heads=4)


def variant_args(variant: str, base: dict) -> ModelArgs:
    args = ModelArgs(**base)
    return args.dense_twin() if variant.startswith("dense") else args


class HFRunner(torch.nn.Module):
    """transformers' model called the way train.accumulate calls ours (labels: the same compute)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x, targets=None):
        loss = self.hf(input_ids=x, labels=x).loss
        return Output(logits=None, loss=loss, lm_loss=loss)


COMPILE_MODE = "default"  # torch.compile's mode for the +compile variants (--compile_mode)
COMPILE_WHOLE = False  # the +compile variants' model compiled whole, not by regions (--compile_whole)
CKPT_LAYERS = 0  # the layers moe+ckpt-part recomputes (--ckpt_layers: train.py's --grad_checkpoint_layers)
RESULT_KEYS = ("config", "batches", "params")  # in its JSON: an existing --out without them is refused


def is_eval(variant: str) -> bool:
    return variant.startswith("moe+eval")


def rows(variant: str, batch: int) -> int:
    """Sequences a call of `variant` takes at training batch `batch`: an evaluation takes train.py's
    auto validation batch (train.eval_batch_size: 4 x the training batch, where the validation set
    has that many windows)."""
    return train.EVAL_BATCHES_PER_TRAINING_BATCH * batch if is_eval(variant) else batch


def make_step(variant: str, base: dict, batch: int, device, dtype):
    """Build `variant` and return (a function running one step, what it holds: .model, .opt)."""
    torch.manual_seed(0)
    args = variant_args(variant, base)
    ours = Llama4(args).train()
    if device.type != "cpu":  # (skipped on the CPU, where it is a no-op that fake tensors refuse)
        ours = ours.to(device)
    model = ours
    if variant == "hf":
        from transformers import Llama4ForCausalLM
        from transformers.utils import logging as hf_logging

        from checkpoint import export_hf
        hf_logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as d:
            export_hf(ours.cpu(), d)
            model = Llama4ForCausalLM.from_pretrained(d, attn_implementation="sdpa").to(device).train()
    part = variant.startswith("moe+ckpt-part")
    if part and not CKPT_LAYERS:  # (0 would checkpoint them all, as moe+ckpt)
        raise UserError(f"{variant} checkpoints the first --ckpt_layers layers; give --ckpt_layers")
    ours.set_grad_checkpointing(variant.startswith("moe+ckpt"), CKPT_LAYERS if part else 0)
    ours.loss_impl = "reference" if variant == "moe+plain-loss" else "fused"
    runner = HFRunner(model) if variant == "hf" else model
    if variant.endswith("+compile"):  # static shapes, as train.py compiles: one graph per batch size
        runner = runtime.static_compile(runner, COMPILE_MODE, whole=COMPILE_WHOLE)
    autocast = runtime.autocast(device, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab_size, (rows(variant, batch), args.max_seq_len), generator=g).to(device)
    if is_eval(variant):
        return evaluation(runner, x, autocast, device), SimpleNamespace(model=model, opt=None)
    train_args = TrainArgs(batch_size=batch)
    job = SimpleNamespace(model=model, runner=runner, train_args=train_args, micros=[0], no_sync=None,
                          opt=train.make_optimizer(model, train_args, device), autocast=autocast)
    batches = [(x, x)]

    def step():
        return train.train_step(job, batches, 0, 1e-4)  # a train.StepOutput
    return step, job


def evaluation(runner, x: torch.Tensor, autocast, device):
    """train.py's validation pass over one batch of windows x (B, T), its own batch size: a function."""
    n = x.numel()
    val = SimpleNamespace(x=x, y=x, batch_size=len(x), tokens=n, bytes=n, world=runtime.World())
    return lambda: train.evaluate(runner, val, autocast, device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --profile's variants: the MoE step and its dense twin, eager and compiled (bench.profile_tables sets
# each MoE step's kernels beside its twin's, by kind: where the MoE's extra time goes), and the eager
# evaluation pass (train.py evaluates eagerly until its evaluations have cost what compiling does)
PROFILED = ["moe", "dense", "moe+eval", "moe+compile", "dense+compile"]

# on CUDA, the step memory of these is taken after their warm-up (peak_memory would compile them again):
# checkpointing's saving as train.py runs it there
COMPILED_PEAKS = ("moe+compile", "moe+ckpt+compile", "moe+ckpt-part+compile")


def time_variants(variants, base, batch, repeats, device, dtype, profiled=(), failed=None, warm=None,
                  peaks=None):
    """Median seconds per step of each variant, and a profile of those in `profiled`. A variant
    that fails to build or warm up (a compiler failure, out of memory at a large batch) is left
    out with a warning, and its reason goes to `failed`: the others are still measured (a GPU
    lease is too short to lose them). `warm` gets each training variant's warm-up steps'
    (lm_loss, gradient norm), for `disagreements`; an eager twin of a compiled variant there
    then warms up as many steps as it. `peaks` gets, on CUDA, the step memory of the
    COMPILED_PEAKS variants (bytes, as peak_memory), from one more step after their warm-up; not
    under CUDA graphs, whose private pool, recorded in the warm-up, is all held between steps."""
    steps = {}
    for v in variants:
        try:
            steps[v], _ = make_step(v, base, batch, device, dtype)
            twin = warm is not None and f"{v}+compile" in variants and f"{v}+compile" in AGREE_WITH
            for _ in range(3 if v.endswith("+compile") or twin else 1):  # (compiling, optimizer state)
                out = steps[v]()
                if warm is not None and hasattr(out, "grad_norm"):  # (a host read, in the warm-up)
                    warm.setdefault(v, []).append((float(out.losses[1]), float(out.grad_norm)))
            sync(device)
            if peaks is not None and v in COMPILED_PEAKS and device.type == "cuda" \
                    and COMPILE_MODE not in config.CUDA_GRAPH_MODES:  # (a CUDA graph's pool is held)
                peaks[v] = cuda_step_memory(steps[v], device)
        except UserError:  # a bad setting: every variant's, said in one line
            raise
        except Exception as e:
            steps.pop(v, None)
            if failed is None:
                raise
            failed[v] = first_line(e)[:300]
            print(f"bench_model.py: warning: {v} at batch {batch} failed ({failed[v]}); not measured",
                  file=sys.stderr)
        if v in (failed or {}) and device.type == "cuda":  # (not in the except: its traceback
            torch.cuda.empty_cache()  # holds the failed step's tensors there)
    times = {v: [] for v in steps}
    for _ in range(repeats):  # interleaved, so machine noise hits every variant alike
        for v in steps:
            sync(device)
            t = time.perf_counter()
            steps[v]()
            sync(device)
            times[v].append(time.perf_counter() - t)
    profiles = {}
    for v in [v for v in profiled if v in steps]:
        try:  # (CUPTI on a GPU: a failure must not take the timings with it)
            profiles[v] = profile_step(steps[v], device)
        except Exception as e:
            print(f"bench_model.py: warning: profiling {v} at batch {batch} failed ({first_line(e)[:300]}); "
                  "no profile", file=sys.stderr)
    return {v: statistics.median(ts) for v, ts in times.items()}, profiles


def profile_step(step, device, n: int = 3, top: int = 15) -> dict:
    """Where a step's time goes (torch.profiler over n steps, per step): wall time (profiled, so a
    little slow), and on CUDA the kernels' time and count (time > wall: the device is the limit;
    well below: the host is), the kernels that take most, and the host's reads of device values
    (aten::_local_scalar_dense: .item(), .tolist(), a data-dependent shape; each one a wait); on
    CPU the aten ops that take most."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(n):
            step()
        sync(device)
    wall = (time.perf_counter() - t) / n
    events = prof.key_averages()

    def self_time(e):  # microseconds, summed over the n steps
        if cuda:
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        return e.self_cpu_time_total
    if cuda:  # kernels, copies and memsets; not the spans of record_function ranges (annotations)
        timed = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                 and not getattr(e, "is_user_annotation", False)]
        if not timed:
            print("warning: the profiler recorded no CUDA kernels (CUPTI unavailable?)", file=sys.stderr)
    else:
        timed = [e for e in events if e.key.startswith("aten::")]
    timed.sort(key=self_time, reverse=True)
    reads = sum(e.count for e in events if e.key == "aten::_local_scalar_dense")
    kinds = {}  # kind -> [ms, calls] per step
    for e in timed:
        k = kinds.setdefault(kernel_kind(e.key), [0.0, 0.0])
        k[0] += self_time(e) / n / 1e3
        k[1] += e.count / n
    return {"steps": n, "wall_ms": wall * 1e3,
            "device_ms": sum(map(self_time, timed)) / n / 1e3 if cuda else None,
            "kernels": sum(e.count for e in timed) / n if cuda else None,
            "device_reads": reads / n if cuda else None,
            "top": [[e.key[:90], self_time(e) / n / 1e3, e.count / n] for e in timed[:top]],
            "by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1][0]))}


# What a CUDA kernel (or, on the CPU, an aten op) does, from its name: the first pattern that matches.
# Inductor's kernels first (their names list the ops they fuse: "triton_poi_fused_index_select_mul_0"),
# but for its templates (max-autotune's GEMMs: "triton_tem_fused_mm_3"); torch's grouped GEMM (CUTLASS,
# GroupProblemShape) and attention before the other GEMMs (cuBLAS: nvjet, xmma).
KERNEL_KINDS = [
    ("grouped GEMM", r"^triton_tem_.*grouped_mm"),  # (max-autotune's tuned GEMMs: Inductor's templates)
    ("GEMM", r"^triton_tem_"),
    ("fused by Inductor", r"^triton_|^cpp_fused"),
    ("grouped GEMM", r"grouped_mm|GroupProblemShape|[Gg]rouped"),
    ("attention", r"(?i)flash|fmha|sdpa|attention"),  # (before GEMM: CUTLASS's fmha kernels)
    ("GEMM", r"(?i)gemm|gemv|nvjet|xmma|cublas|cutlass|^aten::(mm|addmm|bmm)$"),  # (matmul calls mm)
    ("sort, top-k, search", r"(?i)sort|topk|radix|searchsorted"),
    ("optimizer, foreach", r"(?i)multi_tensor_apply|foreach|adam"),
    ("gather, scatter", r"(?i)index|gather|scatter|embedding"),
    ("copy, cast, fill", r"(?i)copy|memcpy|memset|catarray|^aten::cat$|fill|^aten::(clone|contiguous)$"),
    ("softmax, norm, reduction", r"(?i)softmax|norm(?!al)|GammaBeta|reduce|^aten::(sum|mean|logsumexp)$"),
    ("elementwise", r"(?i)elementwise|^aten::(mul|add|sub|div|silu|sigmoid|exp|pow|rsqrt|neg|where|normal)"),
]


def kernel_kind(name: str) -> str:
    """The KERNEL_KINDS kind of a kernel's or an aten op's name, "other" where none matches."""
    return next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, name)), "other")


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that run (forward, backward and optimizer), view ops excluded."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(variant, base, batch, device, dtype) -> int:
    step, _ = make_step(variant, base, batch, device, dtype)
    step()
    with OpCounter() as counter:
        step()
    return counter.ops


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def peak_memory_child(variant: str, base: dict, batch: int, dtype) -> int:
    """In a fresh process (CPU): peak RSS of one training step above the post-warm-up baseline."""
    torch.set_num_threads(2)
    step, _ = make_step(variant, base, batch, torch.device("cpu"), dtype)
    step()
    import gc
    gc.collect()
    baseline = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    step()
    return (_rss_kb("VmHWM") - baseline) * 1024


def cuda_step_memory(step, device) -> int:
    """Bytes one more call of `step` takes on CUDA above what is held before it."""
    sync(device)
    torch.cuda.empty_cache()
    held = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - held


def peak_memory(variant, base, batch, device, dtype) -> int:
    """Bytes a training step takes above what is held between steps."""
    if device.type == "cuda":
        step, _ = make_step(variant, base, batch, device, dtype)
        step()
        return cuda_step_memory(step, device)
    # glibc otherwise keeps freed memory, so RSS would show the allocator's history, not the step's
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--base", json.dumps(base),
                          "--batches", str(batch), "--dtype", str(dtype).removeprefix("torch."),
                          *(["--ckpt_layers", str(CKPT_LAYERS)] if CKPT_LAYERS else [])],
                         capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


class CudaRMSNormMemory(torch.autograd.Function):
    """F.rms_norm with CUDA's memory, for modelled_step_memory (fake tensors: shapes only, no
    values). CUDA's fused kernel keeps x and 1/rms for backward; the CPU's composite ops also keep
    the normed x for the weight's gradient, one (B, T, dim) fp32 more per weighted norm. Assumes
    an fp32 input, as every norm's is here (torch 2.13's CUDA autocast would also upcast a bf16 one)."""

    @staticmethod
    def forward(ctx, x, shape, weight=None, eps=None):
        rstd = x.new_empty(x.shape[:-1] + (1,), dtype=torch.float32)
        ctx.save_for_backward(x, rstd, weight)
        return torch.rms_norm(x, shape, weight, eps)  # (F.rms_norm is this, while modelling)

    @staticmethod
    def backward(ctx, grad):
        x, _, weight = ctx.saved_tensors
        return torch.empty_like(x), None, None if weight is None else torch.empty_like(weight), None


def modelled_step_memory(variant, base, batch, dtype, cuda: bool = True) -> dict:
    """What peak_memory measures (bytes a training step takes above what is held between steps),
    computed instead: the step runs on the CPU on fake tensors (FakeTensorMode: shapes, dtypes
    and storage sizes, no data, no arithmetic; seconds even for scout-128m at batch 512) while
    MemTracker adds up the live tensors, which is what the CUDA caching allocator's
    max_memory_allocated counts. So a machine with no GPU can tell what a step needs on one.
    cuda: what CUDA's kernels keep for backward where they differ from the CPU's (RMSNorm), and
    the fused loss's CUDA path (GEMMs that write fp32: model.fp32_out_gemm) and the shared expert
    in the experts' grouped GEMMs (model.SHARED_IN_GROUPS_DEVICES) and the weights cast at once
    (model.CAST_ONCE_DEVICES); the experts are
    modelled on grouped_mm, which CUDA runs in bf16 only (fp32 there loops over the experts: the
    same saved tensors, other temporaries).
    Returns bytes: {"step", "held" (parameters and optimizer state), and the step's parts by
    MemTracker's kinds: "act", "temp", "grad", ...}; training variants only (not hf, eval or
    compiled ones)."""
    if variant == "hf" or is_eval(variant) or variant.endswith("+compile"):
        raise ValueError(f"{variant}: the memory model runs our eager training steps only")
    with modelling(cuda):
        step, job = make_step(variant, base, batch, torch.device("cpu"), dtype)
        step()  # the optimizer's state appears here, and is held between steps from now on
        return tracked(step, job.model, job.opt)


def modelled_eval_memory(base, windows: int, dtype, cuda: bool = True) -> dict:
    """modelled_step_memory of an eager evaluation of one batch of `windows` (train.evaluate's work
    a batch: eval mode, no gradients, the weights cast at once for the pass, the loss alone): its
    "step" is what the pass takes above the parameters ("held"; a training run's optimizer state
    and nothing else of its step is held beside it, the gradients set to None)."""
    with modelling(cuda):
        torch.manual_seed(0)
        ours = Llama4(variant_args("moe", base)).eval()
        x = torch.zeros(windows, ours.args.max_seq_len, dtype=torch.long)

        def evaluate():
            with torch.no_grad(), runtime.autocast(torch.device("cpu"), dtype), \
                    ours.weights_cast_once(whole_pass=True):
                return ours(x, targets=x).lm_loss
        return tracked(evaluate, ours, None)


@contextlib.contextmanager
def modelling(cuda: bool):
    """Fake tensors (FakeTensorMode), and with `cuda` CUDA's code paths and RMSNorm's saved tensors
    (modelled_step_memory)."""
    from unittest import mock

    from torch._subclasses.fake_tensor import FakeTensorMode
    with contextlib.ExitStack() as stack:
        stack.enter_context(FakeTensorMode())
        if cuda:
            stack.enter_context(mock.patch.object(
                F, "rms_norm", lambda input, normalized_shape, weight=None, eps=None:
                CudaRMSNormMemory.apply(input, normalized_shape, weight, eps)))
            for name in ("FP32_OUT_DEVICES", "SHARED_IN_GROUPS_DEVICES", "CAST_ONCE_DEVICES"):
                stack.enter_context(mock.patch.object(model_module, name, ("cpu",)))
        yield


def tracked(step, model: torch.nn.Module, opt) -> dict:
    """MemTracker's peak over one call of `step` (in modelling()): bytes {"step": above "held"
    (parameters, buffers and the optimizer's state), "held", and the step's parts by kind}."""
    from torch.distributed._tools.mem_tracker import MemTracker
    tracker = MemTracker()
    tracker.track_external(*(t for t in (model, opt) if t is not None))
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    kinds = {str(k).rsplit(".", 1)[-1].lower(): v for k, v in peak.items()}
    held = kinds.pop("param", 0) + kinds.pop("buffer", 0) + kinds.pop("opt", 0)
    return {"step": kinds.pop("total") - held, "held": held, **{k: v for k, v in kinds.items() if v}}


def modelled_mb(variant, base, batch, dtype, cuda: bool) -> float | None:
    """modelled_step_memory's step memory in MB, or None with a warning if it fails: it rests on
    private torch tools (MemTracker) that another torch version may have changed, and a GPU run's
    measurements must not be lost to it."""
    try:
        return modelled_step_memory(variant, base, batch, dtype, cuda)["step"] / 2**20
    except Exception as e:
        print(f"bench_model.py: warning: the memory model failed on {variant} ({first_line(e)}); "
              "no modelled figure", file=sys.stderr)
        return None


MEMORY_RATIOS = {  # name: (with, without) the saving, of step memory: 1 - with / without
    "ckpt_memory_saving": ("moe+ckpt", "moe"),
    "ckpt_memory_saving_compiled": ("moe+ckpt+compile", "moe+compile"),
    "ckpt_part_memory_saving": ("moe+ckpt-part", "moe"),
    "ckpt_part_memory_saving_compiled": ("moe+ckpt-part+compile", "moe+compile"),
    "fused_loss_memory_saving": ("moe", "moe+plain-loss"),
}


def memory_ratios(mem: dict) -> dict:
    """Step memory saved by activation checkpointing and by the fused loss (fractions), where both
    variants of each were measured."""
    return {k: 1 - mem[a] / mem[b] for k, (a, b) in MEMORY_RATIOS.items() if a in mem and b in mem}


TIME_RATIOS = {  # name: (numerator, denominator) of seconds per token, where both were measured
    "moe_over_dense_time": ("moe", "dense"),
    "ckpt_over_moe_time": ("moe+ckpt", "moe"),
    "ckpt_over_moe_time_compiled": ("moe+ckpt+compile", "moe+compile"),
    "ckpt_part_over_moe_time": ("moe+ckpt-part", "moe"),
    "ckpt_part_over_moe_time_compiled": ("moe+ckpt-part+compile", "moe+compile"),
    "plain_loss_over_fused_time": ("moe+plain-loss", "moe"),
    "eval_over_train_speed": ("moe", "moe+eval"),  # validation tokens/s over training tokens/s
    "hf_over_ours_time": ("hf", "moe"),
    "moe_over_dense_time_compiled": ("moe+compile", "dense+compile"),
    "eager_over_compiled_time": ("moe", "moe+compile"),
    "eval_over_train_speed_compiled": ("moe+compile", "moe+eval+compile"),
    "hf_over_ours_compiled_time": ("hf", "moe+compile"),
}


# a variant: the step it must equal (compiled: its eager twin; checkpointed: the step that keeps its
# activations, which recomputing them changes in no value)
AGREE_WITH = {"moe+compile": "moe", "dense+compile": "dense", "moe+ckpt+compile": "moe+ckpt",
              "moe+ckpt": "moe", "moe+ckpt-part+compile": "moe+ckpt-part", "moe+ckpt-part": "moe"}
AGREE_TOL = {"lm_loss": 0.01, "gradient norm": 0.05}  # relative, step by step (the same weights, batch
# and router noise): bf16 rounding and a routing tie or two, not a lost gradient (under torch.compile,
# torch 2.11 once took every gradient through the fused loss as 0: the loss, a fast step, nothing learnt)


def disagreements(warm: dict) -> dict:
    """The variants whose lm_loss or gradient norm at a warm-up step is not that of the step they
    must equal (AGREE_WITH: a compiled one's eager twin, moe+ckpt's moe) at that step (within
    AGREE_TOL), each with the figures of the first such step; warm: {variant: [(lm_loss, grad_norm)
    per warm-up step]}."""
    out = {}
    for v, eager in AGREE_WITH.items():
        twin = "eager" if v.endswith("+compile") else eager
        for i, (ours, theirs) in enumerate(zip(warm.get(v, []), warm.get(eager, []), strict=False)):
            wrong = [f"warm-up step {i + 1}'s {name} {a:.4g}, {twin} {b:.4g}"
                     for (name, tol), a, b in zip(AGREE_TOL.items(), ours, theirs, strict=True)
                     if not abs(a - b) <= tol * abs(b)]  # (NaN too)
            if wrong:
                out[v] = wrong[0]
                break
    return out


def measure_batch(variants, base, batch, repeats, device, dtype, peak, profiled=(),
                  model_memory=True) -> dict:
    failed, warm, peaks = {}, {}, {}
    secs, profiles = time_variants(variants, base, batch, repeats, device, dtype, profiled, failed, warm,
                                   peaks)
    fpt = flops_per_token(ModelArgs(**base), base["max_seq_len"])
    tok_s = {v: rows(v, batch) * base["max_seq_len"] / s for v, s in secs.items()}
    measured = [v for v in ["moe", "moe+ckpt", "moe+ckpt-part", "moe+plain-loss"] if v in secs]
    mem = {v: peak_memory(v, base, batch, device, dtype) / 2**20 for v in measured}
    mem |= {v: peaks[v] / 2**20 for v in peaks if v in secs}  # (CUDA's compiled steps, from their warm-up)
    cuda = device.type == "cuda"
    modelled = {v: m for v in measured if model_memory and (m := modelled_mb(v, base, batch, dtype, cuda))}
    out = {"step_seconds": secs, "tokens_per_second": tok_s,
           "mfu": {v: t * fpt / (3 if is_eval(v) else 1) / peak for v, t in tok_s.items()} if peak else None,
           "ops_per_step": {v: ops_per_step(v, base, batch, device, dtype) for v in secs
                            if not v.endswith("+compile")},
           "peak_step_memory_mb": mem,
           "modelled_step_memory_mb": modelled,  # scripts/memory_model.py: a check of the model
           "ratios": {k: tok_s[b] / tok_s[a] for k, (a, b) in TIME_RATIOS.items() if a in secs and b in secs}
           | memory_ratios(mem)}
    if any(map(is_eval, secs)):  # (older JSON has none: its evaluations took the training batch)
        out["eval_batch"] = rows("moe+eval", batch)
    out["warm_up_steps"] = {v: [{"lm_loss": loss, "grad_norm": norm} for loss, norm in steps]
                            for v, steps in warm.items()}
    if wrong := disagreements(warm):  # (measured, but not the eager step: gpu_check.py names it)
        out["disagrees_with_eager"] = wrong
    if profiles:
        out["profile"] = profiles
    if failed:
        out["failed"] = failed
    return out


def report(result: dict) -> None:
    c = result["config"]
    for batch, r in result["batches"].items():
        print(f"training step, batch {batch} x {c['max_seq_len']}, dim {c['dim']}, {c['n_experts']} experts, "
              f"{c['dtype']}, {result['device']}, median of {c['repeats']}")
        print(f"{'variant':16s} {'step ms':>9s} {'tok/s':>10s} {'MFU':>7s} {'ops':>6s} {'peak MB':>8s} "
              f"{'modelled':>8s}")
        for v, s in r["step_seconds"].items():
            mfu = f"{r['mfu'][v]:7.1%}" if r["mfu"] else f"{'':7s}"
            ops = f"{r['ops_per_step'][v]:6d}" if v in r["ops_per_step"] else f"{'':6s}"
            mem = " ".join(f"{r[k][v]:8.0f}" if v in r.get(k, {}) else f"{'':8s}"
                           for k in ("peak_step_memory_mb", "modelled_step_memory_mb"))
            print(f"{v:16s} {s * 1e3:9.1f} {r['tokens_per_second'][v]:10,.0f} {mfu} {ops} {mem}"
                  + (f"  (batch {r['eval_batch']})" if is_eval(v) and "eval_batch" in r else ""))
        for v, why in r.get("failed", {}).items():
            print(f"{v:16s} failed: {why}")
        for v, why in r.get("disagrees_with_eager", {}).items():
            print(f"{v:16s} disagrees with eager: {why}")
        for k, ratio in r["ratios"].items():
            print(f"  {k:30s} {ratio:6.2f}")
        for v, prof in r.get("profile", {}).items():
            device = f", device {prof['device_ms']:.1f} ms in {prof['kernels']:,.0f} kernels" \
                if prof["device_ms"] is not None else ""
            reads = f", {prof['device_reads']:g} device reads" if prof["device_reads"] is not None else ""
            print(f"profile {v}: wall {prof['wall_ms']:.1f} ms{device}{reads}")
            for name, ms, calls in prof["top"][:8]:
                print(f"  {ms:8.2f} ms {calls:6.0f}x  {name}")


def parser() -> config.Parser:
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="compute dtype, as train.py's --dtype (auto: bf16 autocast on CUDA from sm80, "
                        "else fp32)")
    p.add_argument("--preset", default=None, choices=sorted(config.PRESETS),
                   help="model shape (default: scout-128m on CUDA, dim 256 on CPU)")
    p.add_argument("--batches", default=None,
                   help="comma-separated batch sizes (default 8 on CPU, 32,128 on CUDA)")
    p.add_argument("--compile", choices=["auto", "true", "false"], default="auto", type=config.switch,
                   help="also time compiled variants (auto: on CUDA)")
    p.add_argument("--compile_batches", default=None,
                   help="comma-separated batch sizes that also time the compiled variants (default: the "
                        "largest of --batches; compiling dominates a GPU run's time)")
    p.add_argument("--compile_mode", default="default",
                   choices=list(config.COMPILE_MODES),
                   help="torch.compile mode of the compiled variants (reduce-overhead and max-autotune: "
                        "CUDA graphs), as train.py's --compile_mode")
    p.add_argument("--compile_whole", action="store_true",
                   help="compile the model whole, not by regions (each layer and the head on its own, "
                        "as train.py compiles: runtime.RegionalModel), to time one against the other")
    p.add_argument("--ckpt_layers", type=config.at_least_1, default=None,
                   help="also time moe+ckpt-part: checkpointing of the first N layers alone (train.py's "
                        "--grad_checkpoint_layers), eager and where the others compile")
    p.add_argument("--repeats", type=config.at_least_1, default=None,
                   help="timed steps per variant (default 9 on CPU, 10 on CUDA)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny shape of its own (no --preset), 2 repeats unless --repeats says (smoke test)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    p.add_argument("--no-modelled", action="store_true",
                   help="skip the memory model's figures (CPU work, seconds each: scripts/memory_model.py "
                        "gives them anywhere; the GPU check skips them)")
    p.add_argument("--profile", action="store_true",
                   help="also profile moe and dense, eager and compiled, and moe+eval (torch.profiler, "
                        "3 steps): kernels, their time against the wall time, the top ones, the MoE's time "
                        "by kind of kernel beside its dense twin's (the GPU check does)")
    p.add_argument("--out", default=None, type=storage.expand_home,
                   help="a .json file, new or an earlier result of this benchmark (default, for a run with "
                        "every other option at its default: img/bench_model.json, or bench_model_cuda.json "
                        "on CUDA; other runs write only where --out says)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    global COMPILE_MODE, COMPILE_WHOLE, CKPT_LAYERS
    p = parser()
    opts = p.parse_args(argv)
    COMPILE_MODE, COMPILE_WHOLE, CKPT_LAYERS = opts.compile_mode, opts.compile_whole, opts.ckpt_layers or 0
    if opts.child:
        dtype = getattr(torch, opts.dtype)
        print(peak_memory_child(opts.child, json.loads(opts.base), int(opts.batches), dtype))
        return None
    if problem := storage.not_a_result("--out", opts.out, "bench_model.json", RESULT_KEYS):
        p.error(problem)  # (before the work: a device or a checkpoint there became the JSON, a folder failed)
    device = runtime.resolve_device(opts.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(2)
    dtype = runtime.compute_dtype(opts.dtype, device)
    if opts.quick and opts.preset:
        p.error("--quick times its own tiny shape, not a preset; drop --preset or --quick")
    if opts.quick:
        base, repeats = QUICK_SHAPE, opts.repeats or 2
    else:
        preset = opts.preset or ("scout-128m" if cuda else None)
        base = dict(config.PRESETS[preset]["ModelArgs"]) if preset else CPU_SHAPE
        base = config.to_dict(ModelArgs(**base))
        repeats = opts.repeats or (10 if cuda else 9)
    if CKPT_LAYERS > base["n_layers"]:
        p.error(f"--ckpt_layers {CKPT_LAYERS}: the model has {base['n_layers']} layers; give at most that")
    batches = p.counts("--batches", opts.batches or ("32,128" if cuda else "8"))
    compiled = runtime.wants_compile(opts.compile, device)
    compile_batches = p.counts("--compile_batches", opts.compile_batches or str(max(batches)))
    if not set(compile_batches) <= set(batches):  # (also when nothing compiles: not ignored)
        p.error(f"--compile_batches {opts.compile_batches}: each must be one of --batches {batches}")
    figure = ROOT / "img" / ("bench_model_cuda.json" if cuda else "bench_model.json")
    out = storage.results_file(p, opts, figure, ignore=("device",))  # (before the work)
    part = ["moe+ckpt-part"] if CKPT_LAYERS else []
    variants = ["moe", "dense", "moe+ckpt", *part, "moe+plain-loss", "moe+eval"] + ([] if opts.no_hf
                                                                                  else ["hf"])

    def variants_at(batch):  # compiling takes most of a GPU run's time: at the batches asked only
        compiling = compiled and batch in compile_batches
        return variants + (["moe+compile", "dense+compile", "moe+eval+compile", "moe+ckpt+compile",
                            *(f"{v}+compile" for v in part)] if compiling else [])
    peak = runtime.peak_flops(device, dtype)
    with torch.device("meta"):
        counts = {v: count_parameters(Llama4(variant_args(v, base))) for v in ["moe", "dense"]}
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores, 2 threads)",
        "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),  # (the run's, for gpu_check.py --render)
        "config": {**base, "dtype": str(dtype).removeprefix("torch."), "repeats": repeats,
                   "compile_mode": opts.compile_mode, "compile_whole": opts.compile_whole,
                   "ckpt_layers": CKPT_LAYERS,
                   "compile_batches": compile_batches if compiled else [],
                   "torch": torch.__version__, "peak_flops": peak},
        "params": {v: {"total": c["total"], "active_per_token": c["active_per_token"]}
                   for v, c in counts.items()},
        "batches": {},
    }
    # the compiling batches first: a run stopped at a time limit (a GPU lease) loses the eager rows of
    # the others rather than every compiled figure; written after each batch, in the order of --batches
    done = {}
    for b in sorted(batches, key=lambda b: not (compiled and b in compile_batches)):
        done[b] = measure_batch(variants_at(b), base, b, repeats, device, dtype, peak,
                                PROFILED if opts.profile else [],
                                model_memory=not opts.no_modelled)
        result["batches"] = {str(x): done[x] for x in batches if x in done}
        report({**result, "batches": {str(b): done[b]}})
        if out is not None:
            storage.save_json(out, result, "pick another --out", sort_keys=False)
    return result


if __name__ == "__main__":
    run_script(main, "bench_model.py")
