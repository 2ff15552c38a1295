"""Model benchmark: one training step (forward + backward + AdamW), fp32, 2 CPU threads.

    python scripts/bench_model.py                      # writes img/bench_model.json
    python scripts/bench_model.py --quick              # smaller, for a smoke test

Compares, on the same token batch and in one run (timings interleaved, medians reported):
  moe         our MoE model (16 routed experts + shared, top-1, sparse dispatch)
  dense       our model with dense SwiGLU layers of the same active width (shared + 1 expert)
  hf          transformers' Llama4ForCausalLM with identical weights (it runs every expert)
  moe+ckpt    our MoE model with activation checkpointing
and measures the peak memory of a step (peak RSS above the post-setup baseline, in a fresh
subprocess per variant) for moe and moe+ckpt. Ratios are what the README quotes.
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

import torch  # noqa: E402

from config import ModelArgs  # noqa: E402
from model import Llama4, count_parameters  # noqa: E402

BENCH = dict(vocab_size=4096, dim=256, n_layers=4, n_heads=8, n_kv_heads=2, expert_dim=512,
             mlp_dim=1024, n_experts=16, top_k=1, max_seq_len=256, attn_chunk_size=64,
             attn_floor_scale=64)
QUICK = dict(BENCH, dim=64, n_layers=2, expert_dim=64, mlp_dim=128, max_seq_len=64, n_heads=4)


def variant_args(variant: str, base: dict) -> ModelArgs:
    if variant == "dense":  # same active FFN width: shared expert + the routed expert(s)
        return ModelArgs(**base).dense_twin()
    return ModelArgs(**base)


def make_step(variant: str, base: dict, batch: int):
    """Build the model for `variant` and return a function running one training step."""
    torch.manual_seed(0)
    args = variant_args(variant, base)
    ours = Llama4(args).train()
    if variant == "hf":
        from transformers import Llama4ForCausalLM
        from transformers.utils import logging as hf_logging

        from checkpoint import export_hf
        hf_logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as d:
            export_hf(ours, d)
            model = Llama4ForCausalLM.from_pretrained(d, attn_implementation="sdpa").train()
    else:
        model = ours
        model.set_grad_checkpointing(variant == "moe+ckpt")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as train.py makes it
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab_size, (batch, args.max_seq_len), generator=g)

    def step():
        if variant == "hf":
            loss = model(input_ids=x, labels=x).loss
        else:
            loss = model(x, targets=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step, model


def time_variants(variants, base, batch, repeats):
    steps = {}
    for v in variants:
        steps[v], _ = make_step(v, base, batch)
        steps[v]()  # warm-up (and optimizer state)
    times = {v: [] for v in variants}
    for _ in range(repeats):  # interleaved, so machine noise hits every variant alike
        for v in variants:
            t = time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - t)
    return {v: statistics.median(ts) for v, ts in times.items()}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def peak_memory_child(variant: str, base: dict, batch: int) -> int:
    """In a fresh process: peak RSS of one training step above the post-warm-up baseline (bytes)."""
    torch.set_num_threads(2)
    step, _ = make_step(variant, base, batch)
    step()
    import gc
    gc.collect()
    baseline = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    step()
    return (_rss_kb("VmHWM") - baseline) * 1024


def peak_memory(variant, base, batch):
    # glibc otherwise keeps freed memory, so RSS would show the allocator's history, not the step's
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--base", json.dumps(base),
                          "--batch", str(batch)], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 repeats (smoke test)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    p.add_argument("--out", default=str(ROOT / "img" / "bench_model.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.child:
        print(peak_memory_child(opts.child, json.loads(opts.base), opts.batch))
        return None
    torch.set_num_threads(2)
    base, repeats = (QUICK, 2) if opts.quick else (BENCH, opts.repeats)
    variants = ["moe", "dense", "moe+ckpt"] + ([] if opts.no_hf else ["hf"])
    secs = time_variants(variants, base, opts.batch, repeats)
    mem = {v: peak_memory(v, base, opts.batch) for v in ["moe", "moe+ckpt"]}
    with torch.device("meta"):
        counts = {v: count_parameters(Llama4(variant_args(v, base))) for v in ["moe", "dense"]}
    tokens = opts.batch * base["max_seq_len"]
    result = {
        "config": {**base, "batch": opts.batch, "dtype": "float32", "threads": 2, "repeats": repeats,
                   "torch": torch.__version__},
        "params": {v: {"total": c["total"], "active_per_token": c["active_per_token"]}
                   for v, c in counts.items()},
        "step_seconds": secs,
        "tokens_per_second": {v: tokens / s for v, s in secs.items()},
        "peak_step_memory_mb": {v: m / 2**20 for v, m in mem.items()},
        "ratios": {
            "moe_over_dense_time": secs["moe"] / secs["dense"],
            "ckpt_over_moe_time": secs["moe+ckpt"] / secs["moe"],
            "ckpt_memory_saving": 1 - mem["moe+ckpt"] / mem["moe"],
        },
    }
    if "hf" in secs:
        result["ratios"]["hf_over_ours_time"] = secs["hf"] / secs["moe"]
    print(f"training step, batch {opts.batch} x {base['max_seq_len']}, dim {base['dim']}, "
          f"{base['n_experts']} experts, fp32, 2 threads, median of {repeats}")
    print(f"{'variant':10s} {'step s':>8s} {'tok/s':>9s} {'active params':>14s} {'peak MB':>8s}")
    for v in variants:
        active = counts.get(v if v in counts else "moe")["active_per_token"]
        m = f"{mem[v] / 2**20:8.0f}" if v in mem else f"{'':8s}"
        print(f"{v:10s} {secs[v]:8.3f} {tokens / secs[v]:9.0f} {active:14,d} {m}")
    for k, r in result["ratios"].items():
        print(f"{k:24s} {r:6.2f}")
    os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
