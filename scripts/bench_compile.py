"""Compile-time benchmark: how long the first compiled training step takes, and the first compiled
evaluation after it, the model compiled whole against by regions (runtime.RegionalModel: each
decoder layer and the head on its own, what train.py compiles), and how fast each then steps.

    python scripts/bench_compile.py                  # CPU: scout-128m at vocabulary 8192, batch 1, fp32
    python scripts/bench_compile.py --device cuda    # GPU: the same at batch 32, bf16 autocast
    python scripts/bench_compile.py --quick          # the debug preset, one round, one cache (smoke test)

The step is train.py's (bench_model.make_step: forward, backward, clipping, fused AdamW). Each
first step runs in a fresh process with an empty Inductor cache of its own: `cold` is its time
there (tracing, lowering and building every kernel: what a new machine's first run pays), and
`cold_eval` that of the evaluation of one batch of train.py's auto validation batch (4x the training
batch) after it, on the same compiled model (eval mode and no gradients: graphs of its own). `warm` is
the same again in that cache, its graph caches off, so that only the kernels are built already: the
tracing and lowering, which the CPU's C++ compiler otherwise hides (on a GPU Triton builds kernels
in parallel workers, and the compile is mostly this Python). Rounds alternate the two scopes; the
least of the rounds is reported. Then one process compiles both and times their steps side by side
(`steady`, two of each in turn, the median). The ratios are whole / regional; the device is named
in the output: compare ratios, not seconds, across machines (this one is shared and noisy).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import errors  # noqa: E402, F401  first: a Ctrl-C while torch imports is one line, no traceback

# isort: split

import torch  # noqa: E402

import config  # noqa: E402
import runtime  # noqa: E402
import storage  # noqa: E402
from errors import run_script  # noqa: E402
from scripts import bench_model  # noqa: E402

SCOPES = ("whole", "regional")
RESULT_KEYS = ("scopes", "ratios")  # in its JSON: an existing --out without them is refused


def build(scope: str, base: dict, batch: int, device: torch.device):
    """train.py's training step of `scope`'s compiled model, and what it holds (bench_model's)."""
    bench_model.COMPILE_WHOLE = scope == "whole"
    return bench_model.make_step("moe+compile", base, batch, device, runtime.compute_dtype("auto", device))


def timed(step, device) -> float:
    start = time.perf_counter()
    step()
    bench_model.sync(device)
    return time.perf_counter() - start


def first_step(scope: str, base: dict, batch: int, device: str, warm: bool) -> dict:
    """In this (fresh) process: the seconds of `scope`'s first training step (compiling it), and of
    the first evaluation after it (compiling the evaluation's graphs)."""
    if warm:  # the kernels are in the cache directory already; trace and lower everything again
        from torch._functorch import config as functorch_config
        from torch._inductor import config as inductor_config
        inductor_config.fx_graph_cache = False
        functorch_config.enable_autograd_cache = False
    device = torch.device(device)
    step, job = build(scope, base, batch, device)
    first = timed(step, device)
    evaluate = evaluation(job.runner, base, batch, device)  # (after a step, as in train.py: its own graphs)
    return {"first_s": first, "eval_first_s": timed(evaluate, device), "compiled": type(job.runner).__name__}


def evaluation(runner, base: dict, batch: int, device: torch.device):
    """train.py's evaluation of one batch of its auto validation batch at this training batch (4x its
    sequences, bench_model.rows) on the compiled `runner`: its first call compiles the evaluation's
    graphs (eval mode, no gradients: others than the training step's)."""
    args = bench_model.variant_args("moe", base)
    x = torch.randint(0, args.vocab_size, (bench_model.rows("moe+eval", batch), args.max_seq_len),
                      generator=torch.Generator().manual_seed(1)).to(device)
    return bench_model.evaluation(runner, x, runtime.autocast(device, runtime.compute_dtype("auto", device)),
                                  device)


def steady(base: dict, batch: int, device: str, steps: int) -> dict:
    """In this process: both scopes compiled, then `steps` rounds of two steps of each, interleaved;
    per scope the median step's ms."""
    device = torch.device(device)
    built = {scope: build(scope, base, batch, device)[0] for scope in SCOPES}
    for step in built.values():  # (compiling, then the optimizer's state)
        for _ in range(2):
            step()
    times = {scope: [] for scope in SCOPES}
    for _ in range(steps):
        for scope, step in built.items():
            times[scope].append((timed(step, device) + timed(step, device)) / 2)
    return {scope: statistics.median(t) * 1e3 for scope, t in times.items()}


def child(what: str, base: dict, batch: int, device: str, cache: str, steps: int = 0, warm: bool = False):
    """Run `what` (a scope's first step, or "steady") in a fresh process with the Inductor cache
    directory `cache`; its JSON result."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, __file__, "--child", what, "--base", json.dumps(base),
                          "--batch", str(batch), "--device", device]
                         + (["--steps", str(steps)] if steps else []) + (["--warm"] if warm else []),
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_compile: the {what} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(base: dict, batch: int, device: str, steps: int, rounds: int, warm: bool, shared=None) -> dict:
    """Per scope the least over rounds of the cold (and warm) first step's seconds, then the steady
    step's ms; the ratios whole / regional. `shared`: one cache directory for all (--quick: each
    child reuses the kernels the ones before built)."""
    got = {s: {"cold_s": [], "warm_s": [], "cold_eval_s": [], "warm_eval_s": []} for s in SCOPES}
    compiled_as = {}  # what each scope's child compiled: a check that the scopes differ
    for _ in range(rounds):
        for scope in SCOPES:
            with tempfile.TemporaryDirectory() as fresh:
                r = child(scope, base, batch, device, shared or fresh)
                got[scope]["cold_s"].append(r["first_s"])
                got[scope]["cold_eval_s"].append(r["eval_first_s"])
                compiled_as[scope] = r["compiled"]
                if warm:
                    r = child(scope, base, batch, device, shared or fresh, warm=True)
                    got[scope]["warm_s"].append(r["first_s"])
                    got[scope]["warm_eval_s"].append(r["eval_first_s"])
    best = {s: {k: min(v) for k, v in got[s].items() if v} for s in SCOPES}
    with tempfile.TemporaryDirectory() as fresh:
        for scope, ms in child("steady", base, batch, device, shared or fresh, steps).items():
            best[scope]["step_ms"] = ms
    ratios = {f"whole_over_regional_{k}": best["whole"][k] / best["regional"][k] for k in best["regional"]}
    return {"scopes": best, "ratios": ratios, "compiled_as": compiled_as}


def main(argv=None):
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--preset", default=None, choices=sorted(config.PRESETS),
                   help="a preset's model (scout-128m; debug with --quick)")
    p.add_argument("--vocab_size", type=config.at_least_1, default=8192,
                   help="the model's vocabulary (the GPU check's)")
    p.add_argument("--batch", type=config.at_least_1, default=None, help="sequences a step (CPU 1, CUDA 32)")
    p.add_argument("--steps", type=config.at_least_1, default=10,
                   help="rounds of steady steps (two of each scope, interleaved)")
    p.add_argument("--rounds", type=config.at_least_1, default=2,
                   help="rounds of both scopes (the least is reported)")
    p.add_argument("--quick", action="store_true", help="the debug preset, one round, no warm runs")
    p.add_argument("--out", default=None, type=storage.expand_home,
                   help="a .json file, new or an earlier result of this benchmark, for the results too "
                        "(the README's: img/bench_compile.json)")
    p.add_argument("--child", choices=[*SCOPES, "steady"], help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.child == "steady":
        print(json.dumps(steady(json.loads(opts.base), opts.batch, opts.device, opts.steps)))
        return None
    if opts.child:
        print(json.dumps(first_step(opts.child, json.loads(opts.base), opts.batch, opts.device, opts.warm)))
        return None
    if problem := storage.not_a_result("--out", opts.out, "bench_compile.json", RESULT_KEYS):
        p.error(problem)  # (before the work)
    device = str(runtime.resolve_device(opts.device))
    preset = opts.preset or ("debug" if opts.quick else "scout-128m")
    base = dict(config.PRESETS[preset]["ModelArgs"])
    if not opts.quick:
        base["vocab_size"] = opts.vocab_size
    batch = opts.batch or (32 if device.startswith("cuda") else 1)
    rounds = 1 if opts.quick else opts.rounds
    with tempfile.TemporaryDirectory() as shared:
        result = run(base, batch, device, opts.steps, rounds, warm=not opts.quick,
                     shared=shared if opts.quick else None)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    result.update(device=name, preset=preset, base=base, batch=batch, rounds=rounds, torch=torch.__version__)
    for scope, r in result["scopes"].items():
        print(f"{scope:>8}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios"].items())
    print(f"{ratios} ({name}, {preset}, batch {batch})")
    if opts.out:
        storage.save_json(opts.out, result, "pick another --out", sort_keys=False)
    return result


if __name__ == "__main__":
    run_script(main, "bench_compile.py")
