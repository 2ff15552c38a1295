"""The GPU check: what `make gpu-check` runs on a machine with one CUDA GPU, and what its --quick
mode runs on a CPU in a test so that it cannot rot.

    python scripts/gpu_check.py                  # on the GPU machine
    python scripts/gpu_check.py --only train,model   # the same in two commands, on a lease whose
    python scripts/gpu_check.py --only sample        # commands are limited to 10 minutes
    python scripts/gpu_check.py --quick --device cpu --out /tmp/gpu   # the smoke test

Compiling takes most of its time. Estimated from the last H200 run (bench_model 236 s with four
compiled variants, bench_sample 211 s, train 94 + 47 s) and the compiles taken out since: about 6
minutes for train,model and 5 for sample.

One after another, each in its own process:
  1. scripts/bench_model.py --device cuda --profile: MoE, dense, MoE + activation checkpointing
     and transformers at batch 32 and 128, eager, and compiled at 128 (the compiled goals are at
     128), bf16, with MFU and peak memory, the evaluation pass's pace beside the training step's,
     and a profile of the MoE step, eager and compiled (kernel time against wall time, launches,
     the top kernels: what to work on next);
  2. scripts/bench_sample.py --device cuda: decoding tokens/s, ours vs transformers' generate; then
     in float32, on one left-padded batch of 8 ragged prompts, whether our variants' greedy tokens
     agree (compiled with and without CUDA graphs, eager, uncached);
  3. train.py on train-lower.txt for 90 seconds (scout-128m, --vocab_size 8192, compiled, evaluating
     valid-lower.txt at the default cadence: the seconds per pass are reported), then
     --eval_only on valid-lower.txt, one sampled story, and the greedy story with the decode step
     compiled and eager, compared.
It writes to --out (default img/gpu/): bench_model.json, bench_sample.json, bench_sample_fp32.json,
train.json (the run's figures: steady-state and end-to-end tokens/s and MFU, the evaluation, the
stories), gpu.md (the tables the README's GPU section quotes) and log.txt; the run goes to --work
(checkpoints/gpu-check/, git-ignored). --compile_mode reduce-overhead compiles the model and train
parts with CUDA graphs. Data: --data / --val_data, by default gpu-data/ in the
checkout (`make gpu-prep` copies the shared files there, since ../shared does not travel to a
lent GPU machine), else ../shared/data/tinystories/.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import config  # noqa: E402

DATA_DIRS = [ROOT / "gpu-data", ROOT.parent / "shared" / "data" / "tinystories"]


def find(name: str) -> str:
    for folder in DATA_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return str(DATA_DIRS[-1] / name)


def sh(*argv, log) -> subprocess.CompletedProcess:
    """Run a command from the repository root; its output goes to the log and stdout."""
    cmd = [sys.executable, *map(str, argv)]
    log.write(f"$ {' '.join(cmd[1:])}\n")
    log.flush()
    t = time.time()
    out = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    log.write(out.stdout + out.stderr + f"[exit {out.returncode}, {time.time() - t:.0f} s]\n\n")
    log.flush()
    print(out.stdout[-3000:] + out.stderr[-2000:], flush=True)
    return out


def train_part(opts, out: Path, log) -> dict:
    """A budgeted train.py run, its --eval_only and one story; the figures as a dict."""
    work = Path(opts.work)
    run_dir = work / "gpu-check"
    if (run_dir / "last.pt").exists():  # a previous check's run: this one starts afresh
        import shutil
        shutil.rmtree(run_dir)
    common = ["--out_dir", work, "--cache_dir", work / "cache", "--run", "gpu-check"]
    if opts.quick:
        argv = ["--preset", "debug", "--max_steps", "6", "--eval_every", "3"]
    else:
        argv = ["--preset", "scout-128m", "--vocab_size", "8192", "--max_minutes", str(opts.minutes),
                "--max_steps", "1000000", "--save_every", "1000000"]  # evaluation: the default cadence
    argv += ["--data", opts.data, "--val_data", opts.val_data, "--compile", opts.compile,
             "--compile_mode", opts.compile_mode,
             "--device", opts.device, "--wandb_mode", "disabled", "--plot", "", *common]
    result = {"argv": [str(a) for a in argv], "train_exit": sh("train.py", *argv, log=log).returncode}
    metrics = run_dir / "metrics.jsonl"
    if result["train_exit"] != 0 or not metrics.exists():
        return result
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    steady = train[1:] or train  # the first window holds the compilation
    last = records[-1]
    result.update(steps=train[-1]["step"], tokens=train[-1]["tokens"], minutes=last["minutes"],
                  steady_tokens_per_s=sorted(r["tokens_per_s"] for r in steady)[len(steady) // 2],
                  steady_mfu=sorted((r["mfu"] or 0) for r in steady)[len(steady) // 2],
                  end_to_end_tokens_per_s=train[-1]["tokens"] / (last["minutes"] * 60))
    if train[-1]["mfu"]:
        mfu_per_token_s = train[-1]["mfu"] / train[-1]["tokens_per_s"]
        result["end_to_end_mfu"] = result["end_to_end_tokens_per_s"] * mfu_per_token_s
    val = [r for r in records if r["kind"] == "val"]
    passes = val[1:] or val  # the first pass compiles the evaluation graph
    if passes:
        seconds = sorted(r["val_seconds"] for r in passes)[len(passes) // 2]
        result.update(evaluations=len(val), eval_seconds=seconds, eval_tokens=passes[0]["val_tokens"],
                      eval_tokens_per_s=passes[0]["val_tokens"] / seconds)
        result["eval_over_train_speed"] = result["eval_tokens_per_s"] / result["steady_tokens_per_s"]
    ev = sh("train.py", "--run", "gpu-check", "--eval_only", "--val_data", opts.val_data,
            "--device", opts.device, "--compile", opts.compile, *common, log=log)
    if ev.returncode == 0:
        result["eval"] = json.loads(ev.stdout.strip().splitlines()[-1])
    story = sh("sample.py", "--ckpt", run_dir, "--prompt", "once upon a time", "--max_new_tokens", "100",
               "--seed", "1", "--device", opts.device, log=log)
    failed = f"(sample.py failed: {story.stderr[-300:]})"
    result["sample"] = story.stdout.strip() if story.returncode == 0 else failed
    result["greedy"] = greedy_agreement(opts, run_dir, log)
    return result


def greedy_agreement(opts, run_dir: Path, log) -> dict:
    """The trained model's greedy story with the decode step compiled (--compile, a CUDA graph on
    CUDA) and eager, in the default dtype: where do they part? Trained logits are rarely near-tied,
    unlike the random weights of bench_sample.py, so an early split points at the compiled step."""
    stories = {}
    for name, compile in [("compiled", opts.compile), ("eager", "false")]:
        r = sh("sample.py", "--ckpt", run_dir, "--prompt", "once upon a time", "--max_new_tokens", "200",
               "--greedy", "--device", opts.device, "--compile", compile, log=log)
        stories[name] = r.stdout.strip() if r.returncode == 0 else None
    a, b = stories["compiled"], stories["eager"]
    if a is None or b is None:
        return {"failed": True}
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return {"same": a == b, "same_characters": same, "characters": max(len(a), len(b))}


def markdown(out: Path) -> str:
    """gpu.md: the three parts as tables (whatever parts produced their JSON)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench
    lines = []
    if (out / "bench_model.json").exists():
        model = json.loads((out / "bench_model.json").read_text())
        lines.append(bench.markdown({"model": model}, {"cpus": os.cpu_count(), "cpu": model["device"],
                                                       "torch": model["config"]["torch"], "load_before": 0.0,
                                                       "date": time.strftime("%Y-%m-%d")}))
    for name in ["bench_sample.json", "bench_sample_fp32.json"]:  # greedy tokens must agree: say where not
        if (out / name).exists():
            sample = json.loads((out / name).read_text())
            if name == "bench_sample.json":  # the speed table: bf16, the default dtype
                lines += bench.sample_table(sample)
            for key, r in sample["results"].items():
                agree = r.get("share_of_tokens_as_cached", {})
                lines.append(f"{sample['config']['dtype']}, {key}: share of greedy tokens equal to the eager "
                             "cached loop's: " + ", ".join(f"{v} {share:.1%}" for v, share in agree.items()
                                                           if v != "cached"))
            lines.append("")
    if (out / "train.json").exists():
        t = json.loads((out / "train.json").read_text())
        lines += ["**train.py** " + " ".join(t["argv"]), "", "| figure | value |", "|---|---|"]
        for k in ["steps", "tokens", "minutes", "steady_tokens_per_s", "steady_mfu",
                  "end_to_end_tokens_per_s", "end_to_end_mfu", "evaluations", "eval_tokens", "eval_seconds",
                  "eval_tokens_per_s", "eval_over_train_speed"]:
            if k in t:
                lines.append(f"| {k} | {t[k]:,.4g} |" if isinstance(t[k], float) else f"| {k} | {t[k]:,} |")
        if "eval" in t:
            lines.append(f"| eval bits/byte | {t['eval']['bits_per_byte']:.4f} |")
        lines += ["", "Sample:", "", "> " + t.get("sample", "").replace("\n", "\n> "), ""]
        g = t.get("greedy", {})
        if "same" in g:
            verdict = "the same" if g["same"] else "different"
            lines += [f"Greedy story, compiled decode step vs eager: {verdict} ({g['same_characters']:,} of "
                      f"{g['characters']:,} characters agree before they part).", ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes and runs (a smoke test, also on CPU)")
    p.add_argument("--minutes", type=float, default=1.5, help="the train.py run's budget (default 1.5)")
    p.add_argument("--compile", default="true", choices=["auto", "true", "false"])
    p.add_argument("--compile_mode", default="default", choices=list(config.COMPILE_MODES),
                   help="torch.compile mode of the model and train parts (reduce-overhead and "
                        "max-autotune: CUDA graphs)")
    p.add_argument("--data", default=find("train-lower.txt"))
    p.add_argument("--val_data", default=find("valid-lower.txt"))
    p.add_argument("--out", default=str(ROOT / "img" / "gpu"), help="the JSON, gpu.md and log.txt")
    p.add_argument("--work", default=str(ROOT / "checkpoints" / "gpu-check"),
                   help="run folder and token cache of the train.py part (git-ignored by default)")
    p.add_argument("--only", default="model,sample,train",
                   help="comma-separated subset of model,sample,train")
    opts = p.parse_args(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = opts.only.split(",")
    quick = ["--quick"] if opts.quick else []
    with open(out / "log.txt", "a") as log:  # appended: a check run in parts keeps every part's log
        log.write(f"# gpu_check.py --only {opts.only}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        if "model" in parts:
            extra = ["--no-hf", "--compile", "false"] if opts.quick else []
            sh("scripts/bench_model.py", "--device", opts.device, *quick, *extra, "--profile",
               "--compile_mode", opts.compile_mode, "--out", out / "bench_model.json", log=log)
        if "sample" in parts:
            sh("scripts/bench_sample.py", "--device", opts.device, *quick,
               "--out", out / "bench_sample.json", log=log)
            # float32: near-ties are rarer than in bf16, so the variants' tokens should agree; with
            # and without CUDA graphs, to place a disagreement (speed is not the point here); one
            # left-padded batch of ragged prompts (each batch compiles anew; transformers is left
            # out there: it tunes the temperature by slot, so its padded rows differ by design).
            variants = "cached,uncached" if opts.quick else "cached,compiled,compiled-nograph,uncached"
            sh("scripts/bench_sample.py", "--device", opts.device, *quick, "--dtype", "float32",
               "--variants", variants, "--new_tokens", "128", "--repeats", "1", "--ragged",
               *([] if opts.quick else ["--batches", "8"]),
               "--out", out / "bench_sample_fp32.json", log=log)
        if "train" in parts:
            (out / "train.json").write_text(json.dumps(train_part(opts, out, log), indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(out))
    print((out / "gpu.md").read_text())
    return out


if __name__ == "__main__":
    main()
