"""All benchmarks in one go: model (training step), data (tokenizer + shards), sampling (decode).

    python scripts/bench.py                 # img/bench.json and img/bench.md
    python scripts/bench.py --only model,sample   # the data tables are read back from img/bench_data.json
    python scripts/bench.py --quick         # each part at a toy size: a check that the bench works

Runs scripts/bench_model.py, bench_data.py and bench_sample.py one after another, each in its own
process (so one's memory and threads do not disturb the next), then gathers their JSON into
img/bench.json and writes the markdown tables the README quotes into img/bench.md. Each script
measures its own comparisons side by side in one run; the ratios are what to read, since this
machine is shared and noisy.

--quick runs each part at a toy size, a few minutes in all on 2 CPU cores, to check that the bench
works before a long run: bench_model.py and bench_sample.py with their own --quick, bench_data.py on
train-sample.txt (78 KB) with a 512-token vocabulary and 2 copies. Its results are not the README's:
they go to a temporary folder, deleted at the end, unless --out_dir says where.

The files it writes in --out_dir (bench.json, bench.md, each part's JSON) must be new, empty or
an earlier result of theirs, and the folder must take a new file: else one line before any work,
as for each part's --out (a user's own bench.md was replaced; /sys failed after the parts ran).
The JSON of a part not run, read back for bench.md, must be an earlier result too (an empty one
is no table).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import config  # noqa: E402
import storage  # noqa: E402
from errors import run_script  # noqa: E402

PARTS = {"model": "bench_model.py", "data": "bench_data.py", "sample": "bench_sample.py"}
FIX = "pick another --out_dir"  # where writing the results fails
QUICK_DATA = ROOT.parent / "shared" / "data" / "tinystories" / "train-sample.txt"
QUICK = {"model": ["--quick"], "data": ["--data", str(QUICK_DATA), "--repeat", "2", "--vocab_size", "512"],
         "sample": ["--quick"]}  # each part's options under --quick


def run_part(name: str, out_dir: Path, extra=()) -> dict:
    out = out_dir / f"bench_{name}.json"
    cmd = [sys.executable, str(ROOT / "scripts" / PARTS[name]), "--out", str(out), *extra]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    try:
        done = subprocess.run(cmd)  # (in our cwd: a relative --out_dir means the same folder to both)
    except KeyboardInterrupt:  # Ctrl-C (the part gets it too): one line, not a traceback, status 130
        print(f"\nbench.py: interrupted during scripts/{PARTS[name]}; bench.json and bench.md are left as "
              "they were", file=sys.stderr)
        sys.exit(130)
    if done.returncode:
        sys.exit(f"bench.py: error: scripts/{PARTS[name]} failed (exit {done.returncode}, its output is "
                 "above); bench.json and bench.md are left as they were")
    return json.loads(out.read_bytes())


RATIO_ROWS = [  # bench_model.py's ratios in the model table: key, what it is, format, target on the CPU,
    # target on a GPU (the training-speed issue's goals; "" where there is none)
    ("moe_over_dense_time", "our MoE / our dense (same active parameters), time", ".2f", "<= 1.3", "<= 1.25"),
    ("moe_over_dense_time_compiled", "our MoE / our dense, time, both compiled", ".2f", "", "<= 1.15"),
    ("hf_over_ours_time", "transformers Llama4ForCausalLM / ours, time", ".2f", ">= 4", ">= 2 (batch 32)"),
    ("hf_over_ours_compiled_time", "transformers Llama4ForCausalLM (eager) / ours compiled, time", ".2f", "",
     ">= 5 (batch 128)"),
    ("eager_over_compiled_time", "our MoE eager / compiled, time", ".2f", "", ""),
    ("ckpt_memory_saving", "activation checkpointing: memory saved", ".0%", ">= 40%", ">= 40%"),
    ("ckpt_over_moe_time", "activation checkpointing: time / without", ".2f", "<= 1.4", "<= 1.3"),
    ("ckpt_memory_saving_compiled", "activation checkpointing, both compiled: memory saved", ".0%", "",
     ">= 40%"),
    ("ckpt_over_moe_time_compiled", "activation checkpointing, both compiled: time / without", ".2f", "",
     "<= 1.3"),
    # ({layers}: bench_model's --ckpt_layers, in its config)
    ("ckpt_part_memory_saving", "checkpointing the first {layers} layers: memory saved", ".0%", "", ">= 40%"),
    ("ckpt_part_over_moe_time", "checkpointing the first {layers} layers: time / without", ".2f", "",
     "<= 1.3"),
    ("ckpt_part_memory_saving_compiled", "checkpointing the first {layers} layers, both compiled: memory "
     "saved", ".0%", "", ">= 40%"),
    ("ckpt_part_over_moe_time_compiled", "checkpointing the first {layers} layers, both compiled: time / "
     "without", ".2f", "", "<= 1.3"),
    ("plain_loss_over_fused_time",
     "plain loss (lm_head + F.cross_entropy) / fused linear cross-entropy, time", ".2f", "not slower (~1)",
     "not slower (~1)"),
    ("fused_loss_memory_saving", "fused linear cross-entropy: memory saved", ".0%", "> 0", "> 0"),
    ("eval_over_train_speed", "evaluation pass tokens/s / training step tokens/s", ".2f", ">= 3 (GPU)",
     ">= 3"),
    ("eval_over_train_speed_compiled", "evaluation pass tokens/s / training step tokens/s, compiled", ".2f",
     ">= 3 (GPU)", ">= 3"),
]


def target(goal: str, batch: str) -> str:
    """A ratio's goal, in the table of the batch size it is set at (">= 5 (batch 128)": none at 32)."""
    return "" if "(batch " in goal and f"(batch {batch})" not in goal else goal


def added_mb(r: dict, kind: str) -> float:
    """As bench_data.py reports it: MB that prepare() added to its child's peak `kind` memory ("rss" or
    "anon") over the figure after its imports, which the text does not change (at least 1)."""
    return max(r[f"peak_{kind}_mb"] - r[f"baseline_{kind}_mb"], 1.0)


def variant_name(v: str, r: dict) -> str:
    """A variant's name in the training-step table, an evaluation's with its own batch (older JSON
    has none: its evaluations took the training batch)."""
    return f"{v} (batch {r['eval_batch']})" if v.startswith("moe+eval") and "eval_batch" in r else v


def markdown(results: dict, machine: dict) -> str:
    load = machine.get("load_before")  # (None where unknown: the GPU check's)
    back = [name for name in results if name not in machine.get("parts_run", PARTS)]
    cpu = machine["cpu"]
    if cpu.startswith("cpu ("):  # bench_model.py's CPU device (gpu_check.py's), "cpu (2 cores, 2 threads)",
        cores = f"CPU {cpu[4:]}"  # names the cores: "2 CPU cores (cpu (2 cores, 2 threads))" said them twice
    elif machine["cpus"]:
        cores = f"{machine['cpus']} CPU cores ({cpu})"
    else:  # (gpu_check.py --render of older JSON)
        cores = f"{cpu} (its host's CPU cores not recorded)"
    lines = [f"Machine: {cores}, torch {machine['torch']}, "
             + (f"load average {load:.2f} before the run, " if load is not None else "")
             + (machine["date"] or "date not recorded")
             + (f" (the {', '.join(back)} tables read back from an earlier run's JSON)" if back else "")
             + ".", ""]
    if "model" in results:
        m = results["model"]
        c = m["config"]
        for batch, r in m["batches"].items():
            s, mem = r["step_seconds"], r["peak_step_memory_mb"]
            modelled = r.get("modelled_step_memory_mb", {})  # older JSON: none
            lines += [f"**Training step** (train.train_step: forward + backward + clipping + fused AdamW), "
                      f"batch {batch} x {c['max_seq_len']}, dim {c['dim']}, {c['n_layers']} layers, "
                      f"{c['n_experts']} experts top-{c['top_k']}, {c['dtype']}, {m['device']}, "
                      f"median of {c['repeats']} interleaved runs:", "",
                      "| variant | step (ms) | tokens/s | MFU | aten ops per step | peak step memory (MB) "
                      "| modelled (MB) |",
                      "|---|---|---|---|---|---|---|"]
            for v in s:
                mfu = f"{r['mfu'][v]:.1%}" if r["mfu"] else ""
                ops = f"{r['ops_per_step'][v]:,}" if v in r["ops_per_step"] else ""
                tok_s = f"{r['tokens_per_second'][v]:,.0f}"
                lines.append(f"| {variant_name(v, r)} | {s[v] * 1e3:.1f} | {tok_s} | {mfu} | {ops} | "
                             + " | ".join(f"{col[v]:,.0f}" if v in col else "" for col in (mem, modelled))
                             + " |")
            ratio, gpu = r["ratios"], not m["device"].startswith("cpu")
            lines += ["", "| ratio | measured | target |", "|---|---|---|"]
            layers = m["config"].get("ckpt_layers") or "N"
            lines += [f"| {label.format(layers=layers)} | {ratio[key]:{fmt}} | "
                      f"{target(on_gpu if gpu else on_cpu, batch)} |"
                      for key, label, fmt, on_cpu, on_gpu in RATIO_ROWS
                      if key in ratio]  # (a variant that failed leaves its ratios out)
            lines += [f"| {v} | failed: {why} | |" for v, why in r.get("failed", {}).items()]
            lines += [f"| {v} | disagrees with eager: {why} | |"
                      for v, why in r.get("disagrees_with_eager", {}).items()]
            lines.append("")
            lines += profile_tables(r.get("profile", {}))
    if "sample" in results:
        lines += sample_table(results["sample"])
    if "data" in results:
        d = results["data"]
        e, rep, tok = d["end_to_end"], d["end_to_end_repeated"], d["tokenization"]
        lines += [f"**Data** ({d['data']}, vocabulary {d['vocab_size']}):", "",
                  "| measurement | value |", "|---|---|",
                  f"| end to end (read, train BPE, tokenize), cold cache | "
                  f"{e['mb'] / e['seconds']:.2f} MB/s |",
                  f"| tokenization: parallel path / single-threaded loop | "
                  f"{tok['loop_s'] / tok['parallel_s']:.2f}x |",
                  *[f"| {what} prepare() adds (above {e[f'baseline_{kind}_mb']:.0f} MB after imports), the "
                    f"file vs the file x{round(rep['mb'] / e['mb'])} | {added_mb(e, kind):.0f} MB vs "
                    f"{added_mb(rep, kind):.0f} MB (ratio {added_mb(rep, kind) / added_mb(e, kind):.2f}) |"
                    for what, kind in (("anonymous memory", "anon"), ("RSS (its mapped files too)", "rss"))],
                  ""]
    return "\n".join(lines)


def profile_tables(profiles: dict) -> list[str]:
    """bench_model.py --profile: per profiled variant, wall vs kernel time and the top ops."""
    lines = []
    for v, prof in profiles.items():
        head = f"Where a {v} step's time goes (torch.profiler, {prof['steps']} steps): " \
               f"wall {prof['wall_ms']:.1f} ms"
        if prof["device_ms"] is not None:
            head += (f", kernels {prof['device_ms']:.1f} ms in {prof['kernels']:,.0f} launches, "
                     f"{prof['device_reads']:g} device reads")
        lines += [head + " per step:", "", "| op or kernel | ms per step | calls per step |", "|---|---|---|"]
        lines += [f"| `{name}` | {ms:.2f} | {calls:g} |" for name, ms, calls in prof["top"][:10]] + [""]
    for moe, dense in [("moe", "dense"), ("moe+compile", "dense+compile")]:
        if "by_kind" in profiles.get(moe, {}) and "by_kind" in profiles.get(dense, {}):
            lines += kind_table(moe, profiles[moe], dense, profiles[dense])
    return lines


def kind_table(moe: str, a: dict, dense: str, b: dict) -> list[str]:
    """The MoE step's kernels (CPU: aten ops) beside its dense twin's, by kind (bench_model.KERNEL_KINDS),
    the kinds that add most time first: where the MoE's extra time goes."""
    ka, kb = a["by_kind"], b["by_kind"]
    kinds = sorted(ka.keys() | kb.keys(), key=lambda k: -(ka.get(k, [0, 0])[0] - kb.get(k, [0, 0])[0]))
    what = "kernels" if a["device_ms"] is not None else "aten ops (self CPU time)"
    lines = [f"{moe} against {dense}, {what} by kind, per step (ms, calls):", "",
             f"| kind | {moe} | {dense} | difference |", "|---|---|---|---|"]
    for k in kinds + ["all"]:
        (ma, ca), (mb, cb) = [(sum(t for t, _ in d.values()), sum(c for _, c in d.values())) if k == "all"
                              else d.get(k, (0.0, 0.0)) for d in (ka, kb)]
        lines.append(f"| {k} | {ma:.2f} ({ca:,.0f}) | {mb:.2f} ({cb:,.0f}) | "
                     f"{ma - mb:+.2f} ({ca - cb:+,.0f}) |")
    return lines + [""]


def sample_table(sm: dict) -> list[str]:
    """The decoding table: tokens/s of each variant bench_sample.py ran, and ours over the others."""
    c = sm["config"]
    names = {"cached": "cached", "compiled": "compiled", "uncached": "uncached", "hf": "transformers"}
    variants = [v for v in names if v in c.get("variants", ["cached", "uncached", "hf"])]
    ratios = [(a, b) for a in ["cached", "compiled"] for b in ["uncached", "hf"]
              if a in variants and b in variants]
    lines = [f"**Decoding** {c['new_tokens']} new tokens after a {c['prompt']}-token prompt, preset "
             f"{c['preset']}, greedy, {c.get('dtype', 'float32')}, {c.get('device_name', '2 CPU threads')}, "
             f"median of {c['repeats']}:", "",
             "| batch | " + " | ".join(f"{names[v]} tok/s" for v in variants) + " | "
             + " | ".join(f"{names[a]} / {names[b]}" for a, b in ratios) + " |",
             "|---" * (1 + len(variants) + len(ratios)) + "|"]
    for key, r in sm["results"].items():
        t = r["tokens_per_s"]
        lines.append(f"| {key.removeprefix('batch')} | " + " | ".join(f"{t[v]:,.0f}" for v in variants)
                     + " | " + " | ".join(f"{r[f'{a}_over_{b}']:.1f}" for a, b in ratios) + " |")
    fell_back = [f"At batch {key.removeprefix('batch')}, {v} could not compile ({why}): it was timed eagerly."
                 for key, r in sm["results"].items() for v, why in r.get("fell_back_to_eager", {}).items()]
    return lines + ([""] + fell_back if fell_back else []) + [""]


def main(argv=None):
    p = config.Parser(prog="bench.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated subset of model,data,sample")
    p.add_argument("--out_dir", default=None, type=storage.expand_home,
                   help="where the JSON and bench.md go (default: img/; with --quick, a temporary "
                        "folder, deleted at the end)")
    p.add_argument("--quick", action="store_true", help="each part at a toy size, a few minutes in all: "
                                                        "a check that the bench works (not the README's "
                                                        "results)")
    opts = p.parse_args(argv)
    import torch
    machine = {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "load_before": os.getloadavg()[0],
               "date": time.strftime("%Y-%m-%d")}
    only = [name.strip() for name in opts.only.split(",") if name.strip()]  # ("model, data" too)
    unknown = sorted(set(only) - set(PARTS))
    if not only:  # (rather than "unknown part(s) ;", an empty name)
        p.error(f"--only: name one or more of {', '.join(PARTS)}")
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if opts.out_dir == "":  # (an unset variable: not img/, the README's figures, even with --quick)
        p.error("--out_dir is empty (an unset variable?); name a folder, e.g. --out_dir bench-quick, or "
                "leave --out_dir out for its default")
    if opts.quick and opts.out_dir is None:
        with tempfile.TemporaryDirectory(prefix="bench-quick-") as tmp:
            return run(opts, only, machine, Path(tmp))
    out_dir = ROOT / "img" if opts.out_dir is None else Path(opts.out_dir)
    if problem := not_ours(out_dir, only):
        p.error(problem)
    return run(opts, only, machine, out_dir)


def not_ours(out_dir: Path, only: list[str]) -> str | None:
    """Why bench.py may not write in out_dir, or None, said before any work: bench.json, bench.md or
    a part's JSON there that is not an earlier result of theirs (a user's own notes were replaced).
    Empty files and new names are fine, as for each part's --out (storage.not_a_result). The JSON of
    a part not run is read back for bench.md: one there that is not a result (a traceback after the
    parts ran) is refused too; an empty one is left out, as a missing one is."""
    import importlib
    keys = {f"bench_{name}.json": importlib.import_module(f"scripts.{PARTS[name][:-3]}").RESULT_KEYS
            for name in PARTS}
    # (bench.md: ours begins with the machine line, see markdown(); a folder there: after the parts)
    wrote = {"bench.json": ("machine",), **{n: k for n, k in keys.items() if n[6:-5] in only},
             "bench.md": b"Machine: "}
    theirs = storage.foreign_files("--out_dir", out_dir, wrote)
    read = [name for name, k in keys.items() if name not in wrote
            and storage.not_a_result("--out_dir", str(out_dir / name), name, k)]
    if not theirs and not read:
        return None
    said = []
    for names, what in ((theirs, "the results would replace {}"), (read, "bench.md would read {} back")):
        if names:
            named, it = storage.not_earlier_results(names, "bench.py")
            said.append(f"{named}, and {what.format(it)}")
    it = "it" if len(theirs + read) == 1 else "them"
    return f"--out_dir {out_dir}: {'; '.join(said)}; pick another --out_dir, or move {it} away"


def run(opts, only: list[str], machine: dict, out_dir: Path) -> None:
    """Run the parts named, read the others back from out_dir, write bench.json and bench.md there."""
    out_dir = storage.writable_folder(out_dir, FIX)  # (before the work: /sys failed after it)
    # The parts not rerun are read back from their last JSON, so bench.md always holds every table.
    results = {}
    for name in PARTS:
        saved = out_dir / f"bench_{name}.json"
        if name in only:
            results[name] = run_part(name, out_dir, QUICK[name] if opts.quick else [])
        elif saved.exists() and saved.stat().st_size:  # (empty: none, as not_ours lets it be)
            results[name] = json.loads(saved.read_bytes())
    machine["parts_run"] = only
    storage.save_json(out_dir / "bench.json", {"machine": machine, **results}, FIX, sort_keys=False)
    md = markdown(results, machine)
    storage.atomic_write(out_dir / "bench.md", (md + "\n").encode(), FIX)
    print(md)


if __name__ == "__main__":
    run_script(main, "bench.py")
