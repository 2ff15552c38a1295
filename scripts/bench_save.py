"""Benchmark of train.py's checkpoint saves: one made at once against one a child process writes
(checkpoint.Saves, train.py's way on Linux), and what each costs the training loop.

    python scripts/bench_save.py [--preset scout-128m] [--vocab_size 8192] [--device cpu|cuda]
                                 [--rounds 3] [--dir checkpoints] [--out FILE]

A model of --preset with its AdamW moments (one step taken), saved as train.py saves it (weights,
optimizer, settings) into a temporary folder under --dir (the disk the runs write to):
1. at once: save_checkpoint's seconds, what each save held the training loop before;
2. in the background: the seconds Saves.save holds the loop (a GPU's tensors copied to the CPU, the
   fork) and the seconds until the file is complete;
3. the loop's pace meanwhile: training steps (forward, backward, AdamW) on one batch of --batch x
   --seq tokens, timed while the child writes, against as many with nothing written: what the
   child's share of the machine and the pages the fork makes the next steps copy cost; the loop's
   cost of the background save is the seconds held plus the steps' time beyond their pace, against
   the save made at once (train.py's --save_in_background auto: on CUDA alone, by these figures).
Medians over --rounds, side by side in one process; prints a table and writes JSON (--out).
"""

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import checkpoint  # noqa: E402
import config  # noqa: E402
import runtime  # noqa: E402
import storage  # noqa: E402
from config import ModelArgs  # noqa: E402
from errors import run_script  # noqa: E402
from model import Llama4  # noqa: E402

RESULT_KEYS = ("at_once_s", "rounds")  # in its JSON: an existing --out without them is refused


def parser():
    p = config.Parser(prog="bench_save.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="scout-128m", choices=sorted(config.PRESETS))
    p.add_argument("--vocab_size", type=config.at_least(264), default=8192)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 autocast, as train.py there)")
    p.add_argument("--batch", type=config.at_least(1), default=1)
    p.add_argument("--seq", type=config.at_least(2), default=64)
    p.add_argument("--rounds", type=config.at_least(1), default=3)
    p.add_argument("--dir", default=str(ROOT / "checkpoints"), help="where the temporary folder goes")
    p.add_argument("--out", default=None, help="JSON of the figures (none: printed alone)")
    return p


def build(opts, device: torch.device):
    """The model, its optimizer after one step, and the step itself (synchronised: timed whole)."""
    args = dataclasses.replace(config.preset(opts.preset, ModelArgs), vocab_size=opts.vocab_size,
                               max_seq_len=max(opts.seq, 2))
    torch.manual_seed(0)
    model = Llama4(args).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    tokens = torch.randint(args.vocab_size, (opts.batch, opts.seq), device=device)

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            model(tokens, tokens).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    step()
    return model, opt, args, step


def one_round(path: Path, state, step) -> dict:
    """One save at once, one in the background with steps taken until it is complete, then as many
    steps with nothing written: their seconds."""
    began = time.perf_counter()
    checkpoint.save_checkpoint(path, state())
    at_once = time.perf_counter() - began
    saves, steps = checkpoint.Saves(background=True), []
    began = time.perf_counter()
    saves.save(path, state(), key=0)
    held = time.perf_counter() - began
    while saves.busy():
        t = time.perf_counter()
        step()
        steps.append(time.perf_counter() - t)
    saves.wait()
    complete = time.perf_counter() - began
    idle = []
    for _ in range(max(len(steps), 3)):
        t = time.perf_counter()
        step()
        idle.append(time.perf_counter() - t)
    idle_s = statistics.median(idle)
    return {"at_once_s": at_once, "held_s": held, "complete_s": complete, "steps_while_writing": len(steps),
            "step_s_writing": statistics.median(steps) if steps else None, "step_s_idle": idle_s,
            "loop_cost_s": held + sum(steps) - len(steps) * idle_s}  # (the loop's loss to the child)


def measure(opts) -> dict:
    device = runtime.resolve_device(opts.device)
    model, opt, args, step = build(opts, device)

    def state():  # what train.py's Job.to_checkpoint holds, less the loop's small fields
        return {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "model_args": config.to_dict(args), "step": 1}
    storage.make_folder(Path(opts.dir), "pass another --dir")
    with tempfile.TemporaryDirectory(dir=opts.dir, prefix=".bench-save-") as folder:
        rounds = [one_round(Path(folder) / "last.pt", state, step) for _ in range(opts.rounds)]
        size = os.path.getsize(Path(folder) / "last.pt")

    def median(key):
        values = [r[key] for r in rounds if r[key] is not None]
        return statistics.median(values) if values else None
    figures = {k: median(k) for k in rounds[0]}
    slow = (figures["step_s_writing"] / figures["step_s_idle"]) if figures["step_s_writing"] else None
    return {"device": device_name(device), "preset": opts.preset, "vocab_size": opts.vocab_size,
            "checkpoint_mb": size / 1e6, "rounds": rounds, **figures,
            "held_over_at_once": figures["held_s"] / figures["at_once_s"],
            "loop_cost_over_at_once": figures["loop_cost_s"] / figures["at_once_s"],
            "step_slowdown_while_writing": slow,
            "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "torch": torch.__version__}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv=None):
    p = parser()
    opts = p.parse_args(argv)
    if problem := storage.not_a_result("--out", opts.out, "bench_save.json", RESULT_KEYS):
        p.error(problem)  # (before the work)
    if not checkpoint.BACKGROUND:
        raise SystemExit("bench_save.py: error: saves are made in the background on Linux alone; "
                         "run it there")
    r = measure(opts)
    rows = [("checkpoint", f"{r['checkpoint_mb']:,.0f} MB"), ("save at once", f"{r['at_once_s']:.2f} s"),
            ("background: loop held", f"{r['held_s']:.3f} s ({r['held_over_at_once']:.3f}x)"),
            ("background: file complete", f"{r['complete_s']:.2f} s"),
            ("background: loop's cost", f"{r['loop_cost_s']:.2f} s ({r['loop_cost_over_at_once']:.2f}x the "
                                        "save at once: held + the steps' time beyond their pace)"),
            ("step while writing / idle", "none taken" if r["step_slowdown_while_writing"] is None else
             f"{r['step_s_writing']:.3f} s / {r['step_s_idle']:.3f} s "
             f"({r['step_slowdown_while_writing']:.2f}x)")]
    print(f"checkpoint saves, {r['preset']} (vocabulary {r['vocab_size']}), {r['device']}, median of "
          f"{opts.rounds}")
    for name, value in rows:
        print(f"  {name:<28}{value}")
    if opts.out:
        storage.save_json(opts.out, r, "pick another --out", sort_keys=False)
    return r


if __name__ == "__main__":
    run_script(main, "bench_save.py")
