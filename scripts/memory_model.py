"""Memory model: what a training step needs on a GPU, computed on a machine without one.

    python scripts/memory_model.py                    # scout-128m, bf16 autocast, batch 32, 128, 512
    python scripts/memory_model.py --batches 8 --dtype float32 --preset tiny
    python scripts/memory_model.py --preset tiny --top_k 2 --max_seq_len 512   # any ModelArgs override
    python scripts/memory_model.py --ckpt_layers 4    # also moe+ckpt-part: the first 4 layers recomputed

Each variant's training step (bench_model.make_step: train.train_step, forward + backward +
clipping + fused AdamW) runs on fake tensors: torch's FakeTensorMode gives every tensor its shape,
dtype and storage but no data, so nothing is computed and scout-128m at batch 512 takes seconds on
two cores. MemTracker adds up the live tensors as it goes, which is what CUDA's caching allocator
reports as max_memory_allocated. The result is bench_model's "peak step memory" (the bytes a step
takes above what is held between steps) for a GPU that is not there, under bf16 autocast as on
CUDA (the CPU's autocast casts the same ops, but for rms_norm, which CUDA's runs in fp32 from
torch 2.13 on; every norm's input is fp32 here anyway). Where CUDA's kernels keep other tensors
for backward than the CPU's, it models CUDA's (--device cuda, the default): RMSNorm, one fused
kernel there that keeps x and 1/rms, where the CPU's composite ops also keep the normed x.

How far to trust it: run on the commit the last H200 measurement came from (a842e28), it gave that
measurement to within 0.2% (MoE step memory 5,416 vs 5,420 MB at batch 32, 21,029 vs 21,039 MB at
128; with activation checkpointing 3,754 vs 3,754 and 14,920 vs 14,920). bench_model.py records this
model beside each measurement it takes (on the CPU, modelling the CPU's kernels: in fp32 within 2 MB
of the measured peak RSS); the GPU check skips it (bench_model.py --no-modelled: CPU work on a
lease's time), so set a GPU run's measured peaks beside this script's figures for the same settings.
It cannot see what the allocator keeps cached but unused (fragmentation), nor what kernels allocate
outside torch's tensors (workspaces: cuBLAS, SDPA; on the CPU in bf16 the measured RSS runs 9-13 MB
above the model at bench_model's --quick shape, where fp32 agrees), nor a compiled step's different
lifetimes (Inductor frees and fuses differently).

Only the fused loss costs more time at a larger batch (a loop over chunks of logits, as long on
fake tensors as the kernels' launches on real ones), so a batch that needs over 4,096 of them
(scout-128m: above 16,384) is refused with one line, before any work; so is a --vocab_size below 264
(8 special tokens + 256 bytes), a model train.py refuses.

Reports per batch: the step memory of moe, moe+ckpt (and with --ckpt_layers N, moe+ckpt-part:
train.py's --grad_checkpoint_layers N), moe+plain-loss and dense (MB; its parts by
kind in the JSON), what is held between steps (fp32 parameters and AdamW's two moments), and the
ratios the README quotes: memory saved by activation checkpointing and by the fused loss.
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import errors  # noqa: E402, F401  first: a Ctrl-C while torch imports is one line, no traceback

# isort: split

import bench_model  # noqa: E402
import torch  # noqa: E402

import config  # noqa: E402
import model  # noqa: E402
import storage  # noqa: E402
from config import ModelArgs  # noqa: E402
from errors import run_script  # noqa: E402
from tokenizer import too_small  # noqa: E402

VARIANTS = ["moe", "moe+ckpt", "moe+plain-loss", "dense"]
# The fused loss loops over chunks of model.LOSS_CHUNK logits, and on fake tensors each chunk costs
# about as much as one on real ones does launching its kernels: 512 chunks took 30 s on two cores.
MAX_LOSS_CHUNKS = 4096
MD_START = "Step memory modelled on fake tensors (scripts/memory_model.py)"  # the table's start (the .md)


def measure(base: dict, batches: list[int], dtype, variants=VARIANTS, cuda: bool = True) -> dict:
    out = {}
    for b in batches:
        step = {v: bench_model.modelled_step_memory(v, base, b, dtype, cuda) for v in variants}
        mb = {v: s["step"] / 2**20 for v, s in step.items()}
        out[str(b)] = {"step_memory_mb": mb,
                       "held_mb": {v: s["held"] / 2**20 for v, s in step.items()},
                       "parts_mb": {v: {k: x / 2**20 for k, x in s.items() if k not in ("step", "held")}
                                    for v, s in step.items()},
                       "ratios": bench_model.memory_ratios(mb)}
    return out


TABLE_RATIOS = ("ckpt_memory_saving", "ckpt_part_memory_saving", "fused_loss_memory_saving")  # the ratio
# table's columns, in order (the partial checkpointing's where --ckpt_layers ran it):
# of the eager steps this script models (not bench_model's compiled ones)


def markdown(result: dict) -> str:
    c = result["config"]
    preset = " ".join([c["preset"], *c.get("overrides", [])])  # (none before they were taken)
    lines = [f"{MD_START}, {preset}, context "
             f"{c['max_seq_len']}, vocabulary {c['vocab_size']}, {c['dtype']}, as on {c['device']}, "
             f"torch {c['torch']}:", "",
             "| batch | variant | step memory (MB) | held between steps (MB) | step + held (GB) |",
             "|---|---|---|---|---|"]
    for b, r in result["batches"].items():
        for v, mb in r["step_memory_mb"].items():
            held = r["held_mb"][v]
            lines.append(f"| {b} | {v} | {mb:,.0f} | {held:,.0f} | {(mb + held) / 1024:.1f} |")
    layers = c.get("ckpt_layers")
    columns = [k for k in TABLE_RATIOS if layers or k != "ckpt_part_memory_saving"]
    titles = {"ckpt_memory_saving": "activation checkpointing: memory saved",
              "ckpt_part_memory_saving": f"checkpointing the first {layers} layers: memory saved",
              "fused_loss_memory_saving": "fused loss: memory saved"}
    lines += ["", f"| batch | {' | '.join(titles[k] for k in columns)} |", "|---" * (len(columns) + 1) + "|"]
    for b, r in result["batches"].items():
        ratios, pairs = r["ratios"], bench_model.MEMORY_RATIOS
        cells = [f"{ratios[k]:.0%}" if k in ratios else  # (a blank cell read as lost)
                 f"n/a (no {' or '.join(v for v in sorted(pairs[k]) if v not in r['step_memory_mb'])} run)"
                 for k in columns]
        lines.append(f"| {b} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def check_out(p, out: str | None) -> None:
    """A one-line error, before any work, for an --out that would not keep the JSON."""
    if out == "-":  # (it wrote a file named -)
        p.error("--out -: the table already goes to standard output; --out names the JSON file to write "
                "(its .md beside it), e.g. --out memory.json")
    if out is not None and Path(out).suffix.lower() == ".md":  # (the table beside it replaced the JSON)
        p.error(f"--out {out}: the table is written beside the JSON as {Path(out).with_suffix('.md').name}; "
                f"name the JSON file, e.g. --out {Path(out).with_suffix('.json')}")
    # (a folder: found only after the work; a device, or a checkpoint, became the JSON; "" was taken for
    # the current folder)
    # (bench_model.py's results hold these keys too, and its "params": not one of ours)
    if problem := storage.not_a_result("--out", out, "memory_model.json", ("config", "batches"), ("params",)):
        p.error(problem)
    md = Path(out).with_suffix(".md") if out else None  # (the table beside it: a user's notes.md was
    # replaced; a folder there failed after the work, the JSON written)
    try:
        theirs = md is not None and (storage.not_a_file_to_write("--out", str(md), md.name) is not None or (
            md.is_file() and md.stat().st_size > 0 and not md.read_bytes().startswith(MD_START.encode())))
    except OSError:  # (unreadable: its write fails later, in a line of its own)
        theirs = False
    if theirs:
        p.error(f"--out {out}: the table goes beside it as {md}, which is not an earlier table of this "
                "script and would be replaced; name another --out, or move it away")


def check_batches(p, batches: list[int], args: ModelArgs) -> None:
    """A one-line error, before any work, for a batch whose loss loop would run for hours
    (--batches 100000000 on scout-128m: 25 million chunks; all else costs the same at any batch)."""
    rows = max(1, model.LOSS_CHUNK // args.vocab_size)  # as model.linear_cross_entropy chunks
    chunks = -(-max(batches) * args.max_seq_len // rows)
    if chunks <= MAX_LOSS_CHUNKS:
        return
    largest = MAX_LOSS_CHUNKS * rows // args.max_seq_len
    fix = (f"give batches up to {largest}" if largest else
           f"lower --max_seq_len to at most {MAX_LOSS_CHUNKS * rows} or --vocab_size")
    p.error(f"--batches {max(batches)}: its step runs the loss in {chunks:,} chunks of {rows:,} rows, more "
            f"than the {MAX_LOSS_CHUNKS:,} (minutes on fake tensors) this script models; {fix}")


def main(argv=None):
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="scout-128m", choices=sorted(config.PRESETS), help="model shape")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                   help="bfloat16: autocast, as train.py trains on CUDA")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="whose kernels' saved tensors to model where they differ (RMSNorm)")
    p.add_argument("--batches", default="32,128,512", help="comma-separated batch sizes (sequences)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--ckpt_layers", type=config.at_least_1, default=None,
                   help="also moe+ckpt-part: activation checkpointing of the first N layers alone "
                        "(train.py's --grad_checkpoint_layers)")
    p.add_argument("--out", default=None, type=storage.expand_home,
                   help="JSON out, the markdown table beside it (.md) (default, for a run with every "
                        "other option at its default: img/memory_model.json; other runs write only where "
                        "--out says)")
    opts, overrides = p.parse_known_args(argv)  # the model's settings, as train.py and count_params.py
    config.refuse_training_settings(p, overrides, "not a model one; drop it (--batches are the batch sizes, "
                                    "--variants moe+ckpt is --grad_checkpoint, --dtype is this script's own)")
    model_options = [f"--{f.name}" for f in dataclasses.fields(ModelArgs)]
    for flag in (word.split("=")[0] for word in overrides):  # unknown: the nearest of this script's too
        if flag.startswith("--") and flag not in model_options:
            p.error(p.unknown([flag], model_options))
    _, (model_args,) = config.parse_args([ModelArgs], ["--preset", opts.preset, *overrides], prog=p.prog)
    if problem := too_small(model_args.vocab_size):  # (a model train.py refuses, modelled: exit 0)
        p.error(problem)
    if model_args.is_dense:  # (every "moe" row was a dense model's, and the dense twin another width)
        p.error(f"--moe_every {model_args.moe_every} is above --n_layers {model_args.n_layers}: the moe "
                "variants would have no MoE layer; lower --moe_every to at most --n_layers")
    variants = opts.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "moe" not in variants:
        what = f"{', '.join(map(repr, unknown))} unknown" if unknown else "moe is missing"
        p.error(f"--variants: {what}; choose from {', '.join(VARIANTS)}, "
                "moe included (the ratios are to it)")
    if twice := sorted({v for v in variants if variants.count(v) > 1}):  # (it ran each once, silently)
        p.error(f"--variants: {', '.join(twice)} named twice; name each variant once")
    if opts.ckpt_layers:
        if opts.ckpt_layers > model_args.n_layers:
            p.error(f"--ckpt_layers {opts.ckpt_layers}: the model has {model_args.n_layers} layers; give at "
                    "most that")
        variants.insert(variants.index("moe+ckpt" if "moe+ckpt" in variants else "moe") + 1, "moe+ckpt-part")
        bench_model.CKPT_LAYERS = opts.ckpt_layers
    batches = p.counts("--batches", opts.batches)
    check_batches(p, batches, model_args)
    check_out(p, opts.out)  # (before the results_file line: an error is the one line printed)
    out = storage.results_file(p, opts, ROOT / "img" / "memory_model.json", extra=overrides)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    base = config.to_dict(model_args)
    dtype = getattr(torch, opts.dtype)
    result = {"config": {"preset": opts.preset, "overrides": overrides, **base, "dtype": opts.dtype,
                         "device": opts.device, "torch": torch.__version__, "ckpt_layers": opts.ckpt_layers},
              "batches": measure(base, batches, dtype, variants, opts.device == "cuda")}
    md = markdown(result)
    print(md, end="")
    if out is not None:
        storage.save_json(out, result, sort_keys=False, fix="pick another --out")
        storage.atomic_write(out.with_suffix(".md"), md.encode(), "pick another --out")
    return result


if __name__ == "__main__":
    run_script(main, "memory_model.py")
