"""A/B of two source trees: the same eager steps of scripts/bench_model.py, each tree's code in
processes of its own, taking turns, on one machine.

    git worktree add /tmp/old <commit>
    python scripts/ab_trees.py /tmp/old . --device cuda --variants moe:128,moe+eval:128,moe:32

Why: one benchmark run compares variants of one tree, side by side; two runs on two machines (or
two GPU leases) differ by more than most changes (one lease's host ran every host-bound figure,
transformers' included, 15-55% slower than another's). Here each round runs tree A, then tree B,
one process each (a module imported is imported once: a process per tree), and the rounds
alternate their order, so that a drift of the machine falls on both trees alike. Each process
warms a variant up (3 steps), times `--repeats` steps (synchronised on CUDA) and, with --profile,
sums over 2 steps what torch.profiler says of the host: kernels launched, and the time the host
spent waiting on the device (cudaStreamSynchronize, cudaDeviceSynchronize), which tells a pass bound
by the GPU (the host waits at the end) from one bound by the host. Per variant and tree it prints
the median and the least of every round's steps, the sequences a step takes and the median per
sequence (an evaluation at VARIANT:BATCH takes 4 x BATCH since the auto --eval_batch_size, so older
trees' take fewer: compare them per sequence). Nothing is written but the report (and --out's
JSON); the trees are only read.

--host (CPU only, bf16 autocast): the host's share of an eager step, where a GPU's step is bound by it
(batch 32 on the H200: 15 ms of kernels in a 34 ms step). Each tree's CUDA-only code paths are switched
on for the CPU (CUDA_PATHS, the `model` tuples a tree has: the weights cast at once, the shared expert
in the grouped GEMMs; not FP32_OUT_DEVICES, whose fp32-out GEMM the CPU lacks: the loss's GEMMs take a
cast more each), and the three functions whose CPU kernels cost far more than a GPU's launch are
stood in for by one op each way (zeros of the output's shape; gradients laid out like the inputs, as
CUDA's kernels write them): `F.grouped_mm` (on the CPU a loop over the groups, a matmul and a host
read of each offset), attention (its output laid out as flash attention's) and `F.rms_norm` (six ops
on the CPU, one fused kernel on CUDA). At a small shape (`--preset debug`, batch 1) the step's time
is then what the host spends dispatching it: its ops, autograd and Python; not the launches' own
cost. The losses are nonsense (the stand-ins' zeros); only the time is read.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "--child" in sys.argv:  # a tree's process: that tree's modules, before any of them is imported
    _tree = sys.argv[sys.argv.index("--child") + 1]
    sys.path[:0] = [_tree, str(Path(_tree) / "scripts")]
else:
    sys.path.insert(0, str(ROOT))
import errors  # noqa: E402, F401  first: a Ctrl-C while torch imports is one line, no traceback

# isort: split

import config  # noqa: E402
import storage  # noqa: E402
from errors import UserError, run_script  # noqa: E402

WARMUP = 3
# --host: the `model` tuples naming the devices that take CUDA-only paths (those a tree has)
CUDA_PATHS = ("CAST_ONCE_DEVICES", "SHARED_IN_GROUPS_DEVICES")
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")


def child(tree: str, spec: dict) -> dict:
    """In a process of its own, whose modules are `tree`'s (sys.path, above): its bench_model
    steps, timed (and profiled on CUDA), as JSON."""
    import bench_model
    import torch
    if spec.get("host"):
        host_proxy()
    if spec.get("ckpt_layers"):  # (moe+ckpt-part's layers)
        if not hasattr(bench_model, "CKPT_LAYERS"):  # (its make_step took moe+ckpt-part for moe+ckpt)
            raise UserError("this tree has no moe+ckpt-part (--grad_checkpoint_layers): it would "
                            "checkpoint every layer; A/B moe+ckpt instead")
        bench_model.CKPT_LAYERS = spec["ckpt_layers"]
    device = torch.device(spec["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    base = config.to_dict(config.ModelArgs(**config.PRESETS[spec["preset"]]["ModelArgs"]))
    dtype = getattr(torch, spec["dtype"])
    out = {}
    for name in spec["variants"]:
        variant, batch = name.split(":")
        step, _ = bench_model.make_step(variant, base, int(batch), device, dtype)
        for _ in range(WARMUP):
            step()
        sync()
        times = []
        for _ in range(spec["repeats"]):
            t = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t)
        # sequences a step takes: an evaluation takes 4x its batch since train.py's auto --eval_batch_size
        rows = bench_model.rows(variant, int(batch)) if hasattr(bench_model, "rows") else int(batch)
        out[name] = {"seconds": times, "rows": rows}
        if spec["profile"] and device.type == "cuda":
            out[name].update(host_profile(step, sync))
        del step
    return out


def host_proxy():
    """--host, in a tree's process: its CUDA-only paths on for the CPU, and the functions whose CPU
    kernels cost more than a GPU's launch (grouped_mm's loop, attention, RMSNorm's six ops) one op
    each way."""
    import torch
    import torch.nn.functional as F

    import model

    class StandIn(torch.autograd.Function):  # zeros of the output's shape; backward, zeros like
        @staticmethod  # each input (its layout: CUDA's kernels write their gradients so)
        def forward(ctx, shape, *inputs):
            ctx.save_for_backward(*inputs)
            return inputs[0].new_zeros(shape)

        @staticmethod
        def backward(ctx, grad):
            return None, *(None if t is None else torch.zeros_like(t) for t in ctx.saved_tensors)

    def grouped_mm(x, w, offs=None, **kwargs):  # (M, K) x (G, K, N) -> (M, N)
        return StandIn.apply((x.shape[0], w.shape[-1]), x, w)

    def attention(q, k, v, *args, **kwargs):  # (B, H, T, D) -> (B, H, T, Dv), laid out (B, T, H, Dv)
        *batch, H, T, _ = q.shape  # (as flash attention's output: heads merged by a view, not a copy)
        return StandIn.apply((*batch, T, H, v.shape[-1]), q, k, v).transpose(-3, -2)

    def rms_norm(x, shape, weight=None, eps=None):
        return StandIn.apply(x.shape, x, weight)

    for name in CUDA_PATHS:
        if hasattr(model, name):
            setattr(model, name, (*getattr(model, name), "cpu"))
    F.grouped_mm, F.scaled_dot_product_attention, F.rms_norm = grouped_mm, attention, rms_norm


def host_profile(step, sync) -> dict:
    """Per step, over 2: kernels launched and the host's wait on the device, in seconds."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        sync()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
    wait = sum(e.self_cpu_time_total for e in events if e.key in WAITS) / 1e6
    return {"launches": launches / 2, "device_wait_s": wait / 2}


def run_child(tree: Path, spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(tree), "--spec", json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"the steps of {tree} failed: {last}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise UserError(f"the steps of {tree} printed no figures")
    return json.loads(lines[-1])


def summary(runs: list[dict]) -> dict:
    """Each variant's figures over the rounds of one tree: median and least step, the profile's means."""
    out = {}
    for name in runs[0]:
        seconds = [s for r in runs for s in r[name]["seconds"]]
        median, rows = statistics.median(seconds), runs[0][name]["rows"]
        out[name] = {"median_ms": 1000 * median, "min_ms": 1000 * min(seconds), "rows": rows,
                     "median_us_per_sequence": 1e6 * median / rows}
        for key in ("launches", "device_wait_s"):
            if key in runs[0][name]:
                out[name][key] = statistics.mean(r[name][key] for r in runs)
    return out


def parser() -> config.Parser:
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="the first source tree (a checkout, e.g. a git worktree of the old commit)")
    p.add_argument("b", help="the second source tree (. for this one)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--preset", default="scout-128m", choices=sorted(config.PRESETS), help="model shape")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="autocast dtype")
    p.add_argument("--variants", default="moe:128,moe+eval:128",
                   help="comma-separated bench_model variants with their batch, VARIANT:BATCH (eager ones: "
                        "moe, dense, moe+ckpt, moe+ckpt-part with --ckpt_layers, moe+plain-loss, moe+eval)")
    p.add_argument("--rounds", type=config.at_least_1, default=2,
                   help="rounds of one process per tree, in alternating order")
    p.add_argument("--repeats", type=config.at_least_1, default=10,
                   help="timed steps per variant and process")
    p.add_argument("--profile", action="store_true",
                   help="on CUDA, also kernels launched and the host's wait on the device")
    p.add_argument("--ckpt_layers", type=config.at_least_1, default=None,
                   help="the layers moe+ckpt-part recomputes (train.py's --grad_checkpoint_layers)")
    p.add_argument("--host", action="store_true",
                   help="CPU only: the host's share of a step (CUDA's paths; slow CPU kernels one op)")
    p.add_argument("--out", default=None, type=storage.expand_home,
                   help="also write the figures as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    if argv is None and "--child" in sys.argv:  # before the parser, whose names its tree may lack
        i = sys.argv.index("--child")
        print(json.dumps(child(sys.argv[i + 1], json.loads(sys.argv[sys.argv.index("--spec") + 1]))))
        return None
    p = parser()
    opts = p.parse_args(argv)
    trees = [Path(opts.a).resolve(), Path(opts.b).resolve()]
    for tree in trees:
        if not (tree / "scripts" / "bench_model.py").is_file():
            p.error(f"{tree} holds no scripts/bench_model.py; give the root of a checkout of this project")
    variants = [v.strip() for v in opts.variants.split(",") if v.strip()]
    for v in variants:
        name, _, batch = v.partition(":")
        if not batch.isdigit() or int(batch) < 1 or name.endswith("+compile") or name == "hf":
            p.error(f"--variants {v}: write an eager variant and its batch, as moe:128")
    if any(v.startswith("moe+ckpt-part") for v in variants) != bool(opts.ckpt_layers):
        p.error("--variants moe+ckpt-part and --ckpt_layers N go together: it checkpoints the first N layers")
    layers = config.ModelArgs(**config.PRESETS[opts.preset]["ModelArgs"]).n_layers
    if (opts.ckpt_layers or 0) > layers:  # (every layer recomputed: moe+ckpt, under another name)
        p.error(f"--ckpt_layers {opts.ckpt_layers}: the {opts.preset} preset has {layers} layers; "
                "give at most that")
    if opts.host and opts.device != "cpu":
        p.error("--host stands in for a GPU's kernels on the CPU; drop --device or --host")
    if opts.host and opts.dtype != "bfloat16":  # (CUDA's fp32 experts loop over the groups: not stood in)
        p.error("--host times CUDA's bf16 autocast step (its paths are bf16's); drop --dtype float32")
    if problem := storage.not_a_result("--out", opts.out, "ab.json", ("trees", "figures")):
        p.error(problem)
    spec = {"device": opts.device, "preset": opts.preset, "dtype": opts.dtype, "variants": variants,
            "repeats": opts.repeats, "profile": opts.profile, "host": opts.host,
            "ckpt_layers": opts.ckpt_layers}
    runs = {0: [], 1: []}
    for r in range(opts.rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            runs[i].append(run_child(trees[i], spec))
    # one tree twice (its variants side by side, in processes of their own): the second named apart,
    # not merged into the first's figures under one name
    names = [str(trees[0]), str(trees[1]) + (" (again)" if trees[1] == trees[0] else "")]
    result = {"trees": names, **spec, "rounds": opts.rounds,
              "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "figures": {names[i]: summary(runs[i]) for i in (0, 1)}}
    for name in variants:
        for tree in names:
            f = result["figures"][tree][name]
            extra = "".join(f", {k} {f[k]:,.4g}" for k in ("launches", "device_wait_s") if k in f)
            print(f"{name:>18}  {tree}: median {f['median_ms']:.1f} ms, least {f['min_ms']:.1f}, "
                  f"{f['rows']} sequences ({f['median_us_per_sequence']:.1f} us each){extra}")
    if opts.out is not None:
        storage.save_json(opts.out, result, "pick another --out")
    return result


if __name__ == "__main__":
    run_script(main, "ab_trees.py")
