"""The GPU check: what `make gpu-check` runs on a machine with one CUDA GPU; its --quick mode runs on
a CPU in tests/test_gpu_check.py, so that it cannot rot. The README's GPU section has the detail.

    python scripts/gpu_check.py                                     # all three parts, on the GPU machine
    python scripts/gpu_check.py --only train,model --deadline 450   # the same in two calls, within
    python scripts/gpu_check.py --only sample --deadline 280        # a 15-minute lease (at once)
    python scripts/gpu_check.py --render --out img/gpu              # gpu.md from both calls' JSON
    python scripts/gpu_check.py --quick --device cpu --out /tmp/gpu # the smoke test

The parts, in this order, each command in its own process (compiling takes most of the time: about
6 minutes for train,model and 3 for sample on an H200):
  model   scripts/bench_model.py: training steps of MoE, dense, MoE + activation checkpointing (of
          every layer, and of the first 4: --grad_checkpoint_layers) and transformers, bf16, eager
          at batch 32 and 128 and compiled at 128: time, MFU, peak memory, the evaluation pass's
          pace, and a profile of the MoE step beside its dense twin's;
  sample  scripts/bench_sample.py: first whether our decode variants' greedy tokens agree (fp32, a
          left-padded batch of 8 ragged prompts), then decoding tokens/s against transformers'
          generate (bf16);
  train   a 90-second compiled train.py run (scout-128m, --vocab_size 8192) on train-lower.txt,
          evaluating valid-lower.txt; then on its checkpoint the greedy story compiled vs eager,
          --eval_only and one sampled story. It needs datasets (make gpu-check installs it).

Results go to --out: bench_model.json, bench_sample.json, bench_sample_fp32.json, train.json, gpu.md
(the tables the README quotes) and log.txt. The default is img/gpu/ for a run at the defaults
(--only, --deadline, --work and the folder train-lower.txt and valid-lower.txt lie in aside), else
--work/results/, so that a smoke test never replaces the README's; the training run goes to --work
(checkpoints/gpu-check/); a training run's folder is refused as --out (train.json would replace the
run's), as is a folder holding a file under those names that no check wrote (a user's notes in gpu.md,
another benchmark's JSON). Data: gpu-data/ (make gpu-prep), else ../shared/data/tinystories/.

Files are written as the check goes (a part's old files removed when it begins), so a lease's
time limit keeps what was done; --deadline SECONDS makes the check stop itself first (a part with
under 30 s left is skipped, the parts before train leave it TRAIN_RESERVE_S (210 s), the
train.py run is shortened to fit). What failed, fell back to eager, learnt nothing or was cut by
the deadline is named at the top of gpu.md, and the check exits 1.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import config  # noqa: E402
import storage  # noqa: E402
from errors import DataError, UserError, first_line, run_script  # noqa: E402

PARTS = {"model": ["bench_model.json"], "sample": ["bench_sample.json", "bench_sample_fp32.json"],
         "train": ["train.json"]}  # each part's files under --out, in the order the parts run
RESULTS = {"bench_model.json": ("config", "batches", "params"), "bench_sample.json": ("config", "results"),
           "bench_sample_fp32.json": ("config", "results"), "train.json": ("argv", "train_exit"),
           "gpu.md": [b"**Failed:** ", b"Machine: ", b"**Decoding** ", b"float32, ", b"bfloat16, ",
                      b"float16, ", b"**train.py** ", b"\n"]}  # what the files a check replaces hold (the
# keys of its JSON, the starts of gpu.md by what was measured), so that --out refuses a file of another's
STOPPED = 124  # sh()'s exit code for a command stopped at the deadline, or not started past it
KILL_GRACE_S = 10  # --deadline: from SIGTERM to SIGKILL for a command still running at the deadline
MIN_PART_S = 30  # --deadline: a part is not begun with less time than this left
GPU_CKPT_LAYERS = 4  # the model part's moe+ckpt-part: 4 of scout-128m's 6 layers (the memory model: 42% and
# 52% less step memory at batch 32 and 128, the goal's 40%, for two thirds of the recomputation)
FOLLOW_UP_S = 140  # --deadline: what the train part keeps back from its run's budget for what that
# budget does not count (the run's start-up before its clock starts, ~34 s on the H200 with the data
# cached, its last evaluation and saves) and the four follow-ups (--eval_only, three sample.py runs,
# one compiling the decode step: 70-95 s); the budget counts the first step's compiling
TRAIN_RESERVE_S = FOLLOW_UP_S + 60 + KILL_GRACE_S  # --deadline: what the parts before a train part due
# after them leave it (its FOLLOW_UP_S, a minute of training, and the grace of a benchmark stopped at
# its own deadline): the benchmark before it is cut, not the run
LEARNT_AFTER = 200  # steps (warm-up: 100): the H200's run went from 8.8 nats in its first window to 3.1
LEARNT_SHARE = 0.9  # by step 143 (2026-11-27); a run whose last window is still above this share of its
# first's then learnt nothing (a lost gradient: torch 2.11's compiled fused loss stayed at ln(vocab))
DATA_DIRS = [ROOT / "gpu-data", ROOT.parent / "shared" / "data" / "tinystories"]
FAILED: list[str] = []  # what of this check failed: commands, benchmark variants, runs that fell back
# to eager, and what the deadline stopped or skipped ("cut by the deadline")


def find(name: str) -> str:
    """A default data file: `name` in the first of DATA_DIRS that holds it, else the last one's path
    (which check_data's error names)."""
    for folder in DATA_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return str(DATA_DIRS[-1] / name)


def sh(*argv, log, until=None) -> subprocess.CompletedProcess:
    """Run a command from the repository root. Its output goes to the log and to our own stdout and
    stderr line by line as it comes (the command runs unbuffered), so that a check stopped from
    outside (a lease's time limit) keeps what every command printed up to then. `until`
    (time.monotonic()): the command is stopped there, or not started once it has passed: exit code
    STOPPED either way, what it printed returned as usual. The command runs in its own process
    group (in our session, so that whatever ends the session ends it too), stopped whole: at the
    deadline, and if this check itself is interrupted or ends leaving some of it behind."""
    cmd = [sys.executable, *map(str, argv)]
    log.write(f"$ {' '.join(cmd[1:])}\n")
    if until is not None and time.monotonic() >= until:
        log.write("[not started: past the check's deadline]\n\n")
        log.flush()
        return subprocess.CompletedProcess(cmd, STOPPED, "", "")
    log.flush()
    t = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace",  # a stray byte must not stop the pump
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, process_group=0)
    lock = threading.Lock()

    def pump(pipe, kept: list, echo):  # drains the pipe to its end, whatever happens to the writes
        for line in pipe:
            kept.append(line)
            with lock:
                for f in (log, echo):
                    try:
                        f.write(line)
                        f.flush()
                    except (OSError, ValueError):  # closed (the check is ending): drain on
                        pass
    out, err = [], []
    pumps = [threading.Thread(target=pump, args=(proc.stdout, out, sys.stdout), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, err, sys.stderr), daemon=True)]
    for th in pumps:
        th.start()
    code = None
    try:
        proc.wait(timeout=None if until is None else max(0.0, until - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop_group(proc)
        code = STOPPED
    except BaseException:  # interrupted (Ctrl-C, SIGTERM made an exception in main): the command too
        stop_group(proc)
        raise
    for th in pumps:  # the pipes close when the last process holding them ends
        th.join(timeout=KILL_GRACE_S)
    if any(th.is_alive() for th in pumps):  # something of the command's lives on: end it
        signal_group(proc, signal.SIGKILL)
        for th in pumps:
            th.join()
    note = "" if code is None else f" ({proc.returncode}), stopped at the check's deadline"
    log.write(f"[exit {code or proc.returncode}{note}, {time.monotonic() - t:.0f} s]\n\n")
    log.flush()
    if code is None and proc.returncode:
        FAILED.append(f"{Path(str(argv[0])).name} (exit {proc.returncode})")
    return subprocess.CompletedProcess(cmd, code or proc.returncode, "".join(out), "".join(err))


def signal_group(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the whole group has ended
        pass


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's process group (train.py stops cleanly), SIGKILL after KILL_GRACE_S
    if the command has not ended, and to whatever of the group is left once it has."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc, signal.SIGKILL)
    proc.wait()


FALLBACK_WARNINGS = ("warning: torch.compile is unavailable here", "warning: the compiled model failed",
                     "warning: compiling the decode step failed")  # (runtime.py, train.py, sample.py)


def fell_back(proc: subprocess.CompletedProcess) -> str | None:
    """The warning line of a train.py or sample.py that was asked to compile and ran eagerly."""
    lines = f"{proc.stdout or ''}\n{proc.stderr or ''}".splitlines()
    return next((line.strip() for line in lines if line.strip().startswith(FALLBACK_WARNINGS)), None)


def train_part(opts, out: Path, log) -> dict:
    """A budgeted train.py run, then on its checkpoint the greedy comparison, --eval_only and one
    story; the figures as a dict, written to train.json after each command. A run killed at the
    deadline still gives the figures of the windows it logged (train_exit says it was stopped), and
    the steps that need its checkpoint are left out."""
    work = Path(opts.work)
    run_dir = work / "gpu-check"
    if run_dir.exists():  # a previous check's run, finished or not: this one starts afresh
        import shutil
        shutil.rmtree(run_dir)
    common = ["--out_dir", work, "--cache_dir", work / "cache", "--run", "gpu-check"]
    if opts.quick:
        argv = ["--preset", "debug", "--max_steps", "6", "--eval_every", "3"]
    else:
        minutes = opts.minutes
        if opts.until is not None:  # within the deadline, leaving some for compiling and what follows
            fits = max(0.25, (opts.until - time.monotonic() - FOLLOW_UP_S) / 60)
            minutes = min(minutes, fits) if minutes > 0 else fits  # (0: no budget of its own)
        # evaluations, saves (in the background) and the plot at the defaults' cadence: end to end is
        # what a user's run pays
        argv = ["--preset", "scout-128m", "--vocab_size", "8192", "--max_minutes", f"{minutes:g}",
                "--max_steps", "1000000"]
    argv += ["--data", opts.data, "--val_data", opts.val_data, "--compile", opts.compile,
             "--compile_mode", opts.compile_mode, "--device", opts.device, "--wandb_mode", "disabled",
             *common]
    trained = sh("train.py", *argv, log=log, until=opts.until)
    result = {"argv": [str(a) for a in argv], "train_exit": trained.returncode}

    def keep():  # train.json after each command: a kill during the follow-ups keeps the figures so far
        storage.save_json(out / "train.json", result, "pick another --out", sort_keys=False)
    if (why := fell_back(trained)) and opts.compile != "false":  # eager figures, not compiled ones
        result["fell_back_to_eager"] = why  # (a failure: train_failures)
    result.update(run_figures(run_dir / "metrics.jsonl"))
    past = opts.until is not None and time.monotonic() >= opts.until
    if trained.returncode == STOPPED or (trained.returncode == 0 and past):  # (a failure: train_failures)
        result["cut"] = ["train.py"] * (trained.returncode == STOPPED) + ["the commands on its checkpoint"]
    keep()
    if "steps" not in result or trained.returncode != 0 or past:
        return result  # not a window logged, stopped at the deadline, or failed: nothing to go on with

    def follow_up(name, *argv):  # a command on the checkpoint; one stopped at the deadline is named
        r = sh(*argv, log=log, until=opts.until)
        if r.returncode == STOPPED:  # (a failure: train_failures)
            result.setdefault("cut", []).append(name)
        return r
    # first what matters most, the greedy comparison; then the checkpoint evaluates and samples
    # (eagerly: the run's own evaluations timed the pass, compiled once they had taken
    # train.COMPILE_EVAL_AFTER_S, and greedy_agreement compiled the decode step; two more compiles
    # would cost ~40 s)
    result["greedy"] = greedy_agreement(opts, run_dir, follow_up)
    keep()
    ev = follow_up("train.py --eval_only", "train.py", "--run", "gpu-check", "--eval_only", "--val_data",
                   opts.val_data, "--device", opts.device, "--compile", "false", *common)
    if ev.returncode == 0:
        try:
            result["eval"] = eval_result(ev.stdout)
        except ValueError as e:  # (a failure: train_failures)
            result["eval_failed"] = first_line(e)
    keep()
    story = follow_up("sample.py (story)", "sample.py", "--ckpt", run_dir, "--prompt", "once upon a time",
                      "--max_new_tokens", "100", "--seed", "1", "--device", opts.device, "--compile", "false")
    failed = "(stopped at the deadline)" if story.returncode == STOPPED else \
        f"(sample.py failed: {story.stderr[-300:]})"
    result["sample"] = story.stdout.strip() if story.returncode == 0 else failed
    keep()
    return result


def run_figures(metrics: Path) -> dict:
    """The figures of a train.py run from its metrics.jsonl: steps, steady-state and end-to-end
    tokens/s and MFU, the first window's seconds beyond the steady pace (compiling), the
    evaluation's pace; none before its first train window."""
    records = []
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # blank, or the last line of a run stopped while writing it
            pass
    train = [r for r in records if r["kind"] == "train"]
    if not train:
        return {}
    steady = train[1:]  # the first window holds the compilation: with no other, no steady state
    last = records[-1]
    result = dict(steps=train[-1]["step"], tokens=train[-1]["tokens"], minutes=last["minutes"],
                  steady_windows=len(steady),
                  steady_tokens_per_s=sorted(r["tokens_per_s"] for r in steady)[len(steady) // 2]
                  if steady else None,
                  steady_mfu=sorted((r["mfu"] or 0) for r in steady)[len(steady) // 2] if steady else None,
                  end_to_end_tokens_per_s=train[-1]["tokens"] / (last["minutes"] * 60))
    if steady:  # the first window's seconds beyond its tokens' at the steady pace: its compiling, mostly
        first, pace = train[0], result["steady_tokens_per_s"]
        result["first_window_extra_s"] = first["minutes"] * 60 - first["tokens"] / pace
    if "lm_loss" in train[-1]:  # the first window's and the last's (learnt_nothing)
        result.update(first_lm_loss=train[0]["lm_loss"], lm_loss=train[-1]["lm_loss"])
    if train[-1]["mfu"]:
        mfu_per_token_s = train[-1]["mfu"] / train[-1]["tokens_per_s"]
        result["end_to_end_mfu"] = result["end_to_end_tokens_per_s"] * mfu_per_token_s
    val = [r for r in records if r["kind"] == "val"]
    # the first pass warms up (eager: train.py compiles its evaluations only once they have taken
    # train.COMPILE_EVAL_AFTER_S, and the pass that compiles is then a later one)
    passes = val[1:] or val
    if passes:
        seconds = sorted(r["val_seconds"] for r in passes)[len(passes) // 2]
        result.update(evaluations=len(val), eval_seconds=seconds, eval_tokens=passes[0]["val_tokens"],
                      eval_tokens_per_s=passes[0]["val_tokens"] / seconds)
        if steady:
            result["eval_over_train_speed"] = result["eval_tokens_per_s"] / result["steady_tokens_per_s"]
    return result


def eval_result(stdout: str) -> dict:
    """The figures train.py --eval_only prints as its last line, JSON; ValueError if that is not them."""
    lines = stdout.strip().splitlines()
    try:
        figures = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        figures = None
    if not isinstance(figures, dict) or "bits_per_byte" not in figures:
        raise ValueError(f"train.py --eval_only printed no JSON figures as its last line: {lines[-1:]}")
    return figures


def greedy_agreement(opts, run_dir: Path, run) -> dict:
    """The trained model's greedy story with the decode step compiled (--compile, a CUDA graph on
    CUDA) and eager, in the default dtype: where do they part? Trained logits are rarely near-tied,
    unlike the random weights of bench_sample.py, so an early split points at the compiled step.
    run(name, *argv): sh, the command named."""
    stories, runs = {}, []
    for name, compile in [("compiled", opts.compile), ("eager", "false")]:
        r = run(f"sample.py --greedy ({name})", "sample.py", "--ckpt", run_dir, "--prompt",
                "once upon a time", "--max_new_tokens", "200", "--greedy", "--device", opts.device,
                "--compile", compile)
        stories[name] = r.stdout.strip() if r.returncode == 0 else None
        runs.append(r)
    a, b = stories["compiled"], stories["eager"]
    if a is None or b is None:
        return {"failed": True, "exits": [r.returncode for r in runs]}
    if (why := fell_back(runs[0])) and opts.compile != "false":  # eager against eager: no comparison
        return {"fell_back_to_eager": why}  # (a failure: train_failures)
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return {"same": a == b, "same_characters": same, "characters": max(len(a), len(b))}


def train_failures(result: dict, exits: bool = False) -> list[str]:
    """The train part's runs asked to compile that ran eagerly or that learnt nothing, its commands
    on the checkpoint cut by the deadline (the greedy comparison first), and an --eval_only without
    its figures, as FAILED names; with exits (for --render, where no command's exit is at hand), its
    commands that failed too."""
    if "not_measured" in result:  # (the part was skipped)
        return [result["not_measured"]]
    out = [f"{name} (cut by the deadline)" for name in result.get("cut", [])]
    if "eval_failed" in result:
        out.append("train.py --eval_only (no figures)")
    if exits and result.get("train_exit") not in (0, STOPPED, None):
        out.append(f"train.py (exit {result['train_exit']})")
    if exits and result.get("greedy", {}).get("failed"):
        failed = [code for code in result["greedy"]["exits"] if code not in (0, STOPPED)]
        out += [f"sample.py --greedy (exit {code})" for code in failed]
    if why := result.get("fell_back_to_eager"):
        out.append(f"train.py ({'evaluated' if 'at an evaluation' in why else 'ran'} eagerly)")
    if learnt_nothing(result):
        out.append(f"train.py (learnt nothing: lm_loss {result['lm_loss']:.2f} after {result['steps']:,} "
                   f"steps, {result['first_lm_loss']:.2f} in its first window)")
    if "fell_back_to_eager" in result.get("greedy", {}):
        out.append("sample.py --greedy (ran eagerly)")
    return out


def learnt_nothing(result: dict) -> bool:
    """Whether the train part's run, LEARNT_AFTER steps or more, ended with a loss still above
    LEARNT_SHARE of its first window's: fast steps that learn nothing are no result. (Relative to
    the run itself, not to ln(vocab): any text, and --quick's few steps are never judged.)"""
    loss, first = result.get("lm_loss"), result.get("first_lm_loss")
    return (loss is not None and first is not None and result.get("steps", 0) >= LEARNT_AFTER
            and not loss < LEARNT_SHARE * first)  # (NaN too)


def not_measured(path: Path, name: str) -> None:
    """In place of the JSON a part or a benchmark did not write, what it was not measured for (a
    FAILED name): --render, which sees only files, names it too; gpu.md has no table for it."""
    storage.save_json(path, {"not_measured": name}, "pick another --out")


def measured(path: Path) -> dict | None:
    """A part's JSON, None where there is none or it was not measured."""
    result = json.loads(path.read_text()) if path.exists() else None
    return None if result is None or "not_measured" in result else result


def run_bench(path: Path, *argv, log, until) -> None:
    """A benchmark writing `path`. One the deadline stopped or that failed is named in its JSON
    ("incomplete": it rewrites that after each batch size, so what it measured is kept), or, with no
    JSON yet, in one saying nothing was measured, so that --render names it too (a failure under
    the name sh gave it)."""
    code = sh(*argv, "--out", path, log=log, until=until).returncode
    if code:
        kept = path.exists()
        what = "the batch sizes it lists are done" if kept else "nothing measured"
        name = f"{path.name} (cut by the deadline: {what})" if code == STOPPED else \
            f"{Path(str(argv[0])).name} (exit {code})"
        if kept:
            done = {**json.loads(path.read_text()), "incomplete": name}
            storage.save_json(path, done, "pick another --out", sort_keys=False)
        else:
            not_measured(path, name)
    FAILED.extend(failed_variants(path))


def failed_variants(path: Path) -> list[str]:
    """What a benchmark could not measure as asked, as FAILED names: all of it (its part skipped, or
    nothing measured before the deadline or a failure) or all it had left, bench_model.py's variants
    that failed (it goes on without them), bench_sample.py's compiled ones that fell back to eager or
    ran without their CUDA graphs (Inductor skipped them, saying nothing)."""
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    if "not_measured" in result:
        return [result["not_measured"]]
    cut = [result["incomplete"]] if "incomplete" in result else []
    if "batches" in result:
        return cut + [f"bench_model.py {v} at batch {b}{note}" for b, r in result["batches"].items()
                      for key, note in [("failed", ""), ("disagrees_with_eager", " (not the eager step)")]
                      for v in r.get(key, {})]
    names = cut
    for key, r in result["results"].items():
        names += [f"bench_sample.py {v} at {key} (fell back to eager)"
                  for v in r.get("fell_back_to_eager", {})]
        names += [f"bench_sample.py {v} at {key} (CUDA graphs skipped: {n})"
                  for v, n in r.get("cudagraph_skips", {}).items() if n]
    return names


def markdown(out: Path) -> str:
    """gpu.md: the three parts as tables (whatever parts produced their JSON)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench
    lines = [f"**Failed:** {', '.join(FAILED)}; see log.txt. The figures below are what the rest gave.", ""] \
        if FAILED else []
    if model := measured(out / "bench_model.json"):
        # the run's machine and day, not those of a --render elsewhere (older JSON has neither: said so,
        # where it gave this machine's cores and today, "2 CPU cores (NVIDIA H200)")
        machine = {"cpus": model.get("cpus"), "cpu": model["device"], "load_before": None,
                   "torch": model["config"]["torch"], "date": model.get("date")}
        lines.append(bench.markdown({"model": model}, machine))
    for name in ["bench_sample.json", "bench_sample_fp32.json"]:  # greedy tokens must agree: say where not
        if sample := measured(out / name):
            if name == "bench_sample.json":  # the speed table: bf16, the default dtype
                lines += bench.sample_table(sample)
            for key, r in sample["results"].items():
                for ref, what in [("cached", "the eager cached loop's"),
                                  ("reference", "the eager reference MoE path's")]:
                    if agree := r.get(f"share_of_tokens_as_{ref}"):
                        lines.append(f"{sample['config']['dtype']}, {key}: share of greedy tokens equal to "
                                     f"{what}: " + ", ".join(f"{v} {share:.1%}" for v, share in agree.items()
                                                             if v != ref))
            lines.append("")
    if t := measured(out / "train.json"):
        lines += ["**train.py** " + " ".join(t["argv"]), "", "| figure | value |", "|---|---|"]
        for k in ["steps", "tokens", "minutes", "first_window_extra_s", "first_lm_loss", "lm_loss",
                  "steady_windows", "steady_tokens_per_s", "steady_mfu", "end_to_end_tokens_per_s",
                  "end_to_end_mfu", "evaluations", "eval_tokens", "eval_seconds", "eval_tokens_per_s",
                  "eval_over_train_speed"]:
            if k in t and t[k] is None:  # (the steady figures of a run with one window)
                lines.append(f"| {k} | none: no window after the first, which compiled |")
            elif k in t:
                lines.append(f"| {k} | {t[k]:,.4g} |" if isinstance(t[k], float) else f"| {k} | {t[k]:,} |")
        if "eval" in t:
            lines.append(f"| eval bits/byte | {t['eval']['bits_per_byte']:.4f} |")
        lines += ["", "Sample:", "", "> " + t.get("sample", "").replace("\n", "\n> "), ""]
        g = t.get("greedy", {})
        if "same" in g:
            verdict = "the same" if g["same"] else "different"
            lines += [f"Greedy story, compiled decode step vs eager: {verdict} ({g['same_characters']:,} of "
                      f"{g['characters']:,} characters agree before they part).", ""]
        elif "fell_back_to_eager" in g:
            lines += ["Greedy story, compiled decode step vs eager: not compared "
                      f"({g['fell_back_to_eager']}).", ""]
        elif g.get("failed"):  # (exit 124: stopped at the deadline, or not started)
            lines += ["Greedy story, compiled decode step vs eager: not compared "
                      f"(exits {g.get('exits')}).", ""]
    return "\n".join(lines) + "\n"


def parse(argv):
    """The options, checked, and the folder the results go to."""
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="where every part runs (default cuda; cpu with --quick "
                                                    "for the smoke test)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and runs (a smoke test, also on CPU)")
    p.add_argument("--minutes", type=config.number(float), default=1.5,
                   help="the train.py run's budget (default 1.5; 0: what --deadline leaves)")
    p.add_argument("--compile", default="true", choices=["auto", "true", "false"], type=config.switch,
                   help="the train part's --compile, of train.py and the greedy story's sample.py (default "
                        "true)")
    p.add_argument("--compile_mode", default="default", choices=list(config.COMPILE_MODES),
                   help="torch.compile mode of the model and train parts (reduce-overhead and "
                        "max-autotune: CUDA graphs)")
    p.add_argument("--data", default=find("train-lower.txt"), type=storage.expand_home,
                   help="the train part's training text (default train-lower.txt in gpu-data/, else in "
                        "../shared/data/tinystories/)")
    p.add_argument("--val_data", default=find("valid-lower.txt"), type=storage.expand_home,
                   help="the train part's validation text (default valid-lower.txt, found as --data's)")
    p.add_argument("--out", default=None, type=storage.expand_home,
                   help="folder for the JSON, gpu.md and log.txt (default: img/gpu/, the README's, for a "
                        "run at the defaults, --only, --deadline and --work aside; --work/results for any "
                        "other)")
    p.add_argument("--work", default=str(ROOT / "checkpoints" / "gpu-check"), type=storage.expand_home,
                   help="run folder and token cache of the train.py part (git-ignored by default)")
    p.add_argument("--only", default="model,sample,train",
                   help="comma-separated subset of model,sample,train (they run in that order)")
    p.add_argument("--render", action="store_true",
                   help="run nothing: write gpu.md from the JSON already in --out (the files of a check "
                        "made in two calls, put together)")
    p.add_argument("--deadline", type=config.number(float), default=None,
                   help=f"seconds, {MIN_PART_S} or more: end within this (and 10 s), every file written (a "
                        f"command stopped there, a part with under {MIN_PART_S} s left skipped, the train.py "
                        "run shortened to fit); set it below a lease's time limit, so that the check stops "
                        "itself first")
    opts = p.parse_args(argv)
    if not set(opts.only.split(",")) <= set(PARTS):
        p.error(f"--only {opts.only}: each part must be one of {','.join(PARTS)}")
    # (nan stopped every command at once; train.py refused a negative --minutes only after the other
    # parts had run; --deadline 0 began no part, and named each "cut by the deadline")
    for name, least in [("minutes", 0), ("deadline", MIN_PART_S)]:
        value = getattr(opts, name)
        if value is not None and not (math.isfinite(value) and value >= least):
            why = f" (no part is begun with under {least} s left)" if least else ""
            p.error(f"--{name}: must be a finite number, {least} or more{why}, got {value:g}")
    trains = "train" in opts.only.split(",") and not (opts.quick or opts.render)
    if trains and opts.minutes == 0 and opts.deadline is None:  # (--max_steps 1000000: hours on a GPU)
        p.error("--minutes 0 (no budget of its own) needs a --deadline, or the train part never ends")
    if opts.device.startswith("cuda") and not opts.render:
        check_torch()  # (a python3 without torch: one line, not this import's traceback)
        import torch
        if not torch.cuda.is_available():  # every part would fail, and gpu.md say only that
            p.error(f"--device {opts.device}: no CUDA GPU here; for the smoke test on a CPU pass --quick "
                    "--device cpu")
    # the README's text wherever it lies (../shared or gpu-data/) is the default; other text is not
    same_text = [k for k in ("data", "val_data")
                 if Path(getattr(opts, k)).name == Path(p.get_default(k)).name]
    out = storage.results_path(p, opts, ROOT / "img" / "gpu", fallback=Path(opts.work) / "results",
                               ignore=("only", "deadline", "work", "render", *same_text))
    run = storage.run_files(out, but=("train.json",))
    if run and not opts.render:  # (the train part replaced the run's settings)
        beside = out.parent / f"{out.name}-gpu-check"
        p.error(f"--out {out} is a training run's folder (it holds {run[0]}), whose train.json the check's "
                f"would replace; name a folder of its own, e.g. --out {beside}")
    files = {"gpu.md": RESULTS["gpu.md"]} if opts.render else RESULTS  # (a part removes its files first)
    if problem := storage.foreign_results("--out", out, files, "gpu_check.py", "pick another --out"):
        p.error(problem)  # (a user's train.json or gpu.md notes went without a word)
    return opts, out


def write_summary(out: Path) -> None:
    """gpu.md from the JSON in `out`, written atomically (a kill at a deadline leaves the old one)."""
    storage.atomic_write(out / "gpu.md", markdown(out).encode(), "pick another --out")


def render(out: Path) -> Path:
    """--render: gpu.md from the JSON a check left in `out`, its failures named (exit 1). A file that
    is not a check's JSON is a one-line error, and gpu.md is left as it was."""
    names = [name for files in PARTS.values() for name in files]
    if not out.is_dir():  # (it said it could not write gpu.md there; of a file, that it did not exist)
        what = "is a file, not a folder" if out.exists() else "does not exist"
        raise UserError(f"--render: {out} {what}; pass --out the folder a check wrote its JSON to")
    if not any((out / name).is_file() for name in names):  # (it wrote an empty gpu.md, exit 0)
        raise UserError(f"--render: {out} holds none of {', '.join(names)}; pass --out the folder a "
                        "check wrote them to")
    try:
        for name in names:
            if (out / name).is_file() and not isinstance(json.loads((out / name).read_text()), dict):
                raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:  # (a copy cut short was a JSONDecodeError traceback)
        raise UserError(f"--render: {out / name} is not a check's JSON ({first_line(e)}); copy it again "
                        "from the check, or run that part again") from None
    try:
        for name in ["bench_model.json", "bench_sample.json", "bench_sample_fp32.json"]:
            FAILED.extend(failed_variants(out / name))
        if (out / "train.json").exists():
            FAILED.extend(train_failures(json.loads((out / "train.json").read_text()), exits=True))
        md = markdown(out)
    except (KeyError, TypeError, AttributeError) as e:  # (JSON of another program, or of an older check)
        raise UserError(f"--render: the JSON in {out} is not what this gpu_check.py writes "
                        f"({first_line(e)}); run those parts again") from None
    storage.atomic_write(out / "gpu.md", md.encode(), "pick another --out")
    print(md)
    if FAILED:
        sys.exit(f"gpu_check: error: {', '.join(FAILED)} failed")
    return out


def check_torch() -> None:
    """torch, which every part runs the project with, as one line (a UserError): a python3 without it
    (not the GPU machine's) failed each part."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise UserError(f"{sys.executable} has no torch ({first_line(e)}); run the check with the project's "
                        "Python (.venv/bin/python scripts/gpu_check.py), or make gpu-check on the GPU "
                        "machine, whose python3 has it") from None


def check_tools(device: str, parts: list[str]) -> None:
    """What every part needs, as one line before any of them runs (a UserError): torch, a --device
    the project takes, and for the train part datasets."""
    check_torch()
    import runtime  # (--device mps, cpu:1: every part refused it, exit 2, and the check named only their
    runtime.resolve_device(device)  # exits)
    if "train" in parts:  # before the slow parts: train.py needs datasets, which a lent GPU machine lacks
        try:
            import datasets  # noqa: F401
        except ImportError as e:
            raise UserError(f"the train part needs datasets ({first_line(e)}): carry .whl (make gpu-prep "
                            "fills it) and run make gpu-check, which installs it") from None


def check_data(opts, parts: list[str]) -> None:
    """The train part's --data and --val_data, checked as train.py reads them before any part runs
    (a DataError; train.py found a missing one only after the benchmarks' minutes). A default that
    is in neither of DATA_DIRS advises make gpu-prep; an empty value is train.py's to take (and the
    warning of an empty file in a folder, which it leaves out)."""
    if "train" not in parts:
        return
    import sources  # (numpy and tokenizers: after check_tools has found the project's Python)
    for name, default in [("data", find("train-lower.txt")), ("val_data", find("valid-lower.txt"))]:
        value = getattr(opts, name)
        if not value:  # (train.py's: the hub's text, or a slice of --data held out)
            continue
        try:
            files = sources.resolve_files(value, f"--{name}", skip=(opts.work,))  # (train.py skips --work)
            sources.with_text(files, value, f"--{name}", log=lambda line: None)  # (an empty file alone)
        except DataError:
            if value != default or os.path.exists(value):
                raise
            raise DataError(f"--{name}: {Path(value).name} is neither in gpu-data/ nor in {DATA_DIRS[-1]}; "
                            "run make gpu-prep (and carry gpu-data to a GPU machine), or pass "
                            f"--{name} PATH") from None


def main(argv=None):
    start = time.monotonic()  # (before parse, which may import torch: the deadline counts it)
    opts, out = parse(argv)
    parts = opts.only.split(",")
    opts.until = None if opts.deadline is None else start + opts.deadline
    FAILED.clear()
    if opts.render:
        return render(out)
    check_tools(opts.device, parts)
    check_data(opts, parts)
    storage.writable_folder(out, "pick another --out")  # (/proc, /sys: log.txt's traceback)
    quick = ["--quick"] if opts.quick else []
    with open(out / "log.txt", "a", encoding="utf-8") as log:  # appended: every part's log kept
        log.write(f"# gpu_check.py --only {opts.only}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

        def due(part: str, until) -> bool:  # asked for, and time left for it; its old files removed
            if part not in parts:
                return False
            for name in PARTS[part]:  # (a part stopped early must not leave an older run's figures)
                for f in [out / name, *out.glob(f".tmp-*-{name}")]:  # (and a write cut short by a kill)
                    f.unlink(missing_ok=True)
            if until is not None and until - time.monotonic() < MIN_PART_S:
                kept = "" if until == opts.until else \
                    f" before the {TRAIN_RESERVE_S} s kept for the train part"
                log.write(f"# {part}: skipped, under {MIN_PART_S} s left{kept or ' before the deadline'}\n")
                print(f"gpu_check: {part} skipped (deadline)", flush=True)
                name = f"the {part} part (cut by the deadline: under {MIN_PART_S} s left{kept}, not begun)"
                not_measured(out / PARTS[part][0], name)  # (in its first file: named once)
                FAILED.append(name)
                return False
            return True

        before_train = opts.until  # the deadline of the parts before train, TRAIN_RESERVE_S sooner
        if opts.until is not None and "train" in parts:
            before_train = opts.until - TRAIN_RESERVE_S
        if due("model", before_train):  # (the memory model is CPU work: not on a lease's time)
            # (and checkpointing the first 4 of scout-128m's 6 layers: train.py's --grad_checkpoint_layers)
            extra = ["--no-hf", "--compile", "false"] if opts.quick else \
                ["--no-modelled", "--ckpt_layers", str(GPU_CKPT_LAYERS)]
            run_bench(out / "bench_model.json", "scripts/bench_model.py", "--device", opts.device, *quick,
                      *extra, "--profile", "--compile_mode", opts.compile_mode, log=log, until=before_train)
            write_summary(out)  # after each part: what is done is summed up
        if due("sample", before_train):
            # first the correctness question (a deadline cuts what runs last: better the speed
            # figures): in float32, near-ties are rarer than in bf16, so the variants' tokens should
            # agree; with and without CUDA graphs, and the MoE's reference path eager (what a compiled
            # step runs where grouped_mm is missing, as in fp32 on CUDA), to place a disagreement
            # (speed is not the point here: no eager warm-up); one left-padded batch of ragged prompts
            # (each batch compiles anew; transformers is left out there: it tunes the temperature by
            # slot, so its padded rows differ by design).
            variants = "cached,reference," + ("uncached" if opts.quick else "compiled,compiled-nograph")
            run_bench(out / "bench_sample_fp32.json", "scripts/bench_sample.py", "--device", opts.device,
                      *quick, "--dtype", "float32", "--variants", variants, "--new_tokens", "128",
                      "--repeats", "1", "--ragged", "--warmup", "0",
                      *([] if opts.quick else ["--batches", "8"]), log=log, until=before_train)
            write_summary(out)
            # then speed, in bf16 (on a GPU without the uncached variant: no goal counts it, and it
            # is the slowest)
            run_bench(out / "bench_sample.json", "scripts/bench_sample.py", "--device", opts.device, *quick,
                      *([] if opts.quick else ["--variants", "cached,compiled,hf"]), log=log,
                      until=before_train)
            write_summary(out)
        if due("train", opts.until):
            result = train_part(opts, out, log)
            FAILED.extend(train_failures(result))  # (train.json: written as it went)
    FAILED[:] = dict.fromkeys(FAILED)  # (a failed benchmark: named by sh, then from its JSON)
    write_summary(out)
    print((out / "gpu.md").read_text())
    if FAILED:  # a check that looks done but is not would cost a GPU session
        sys.exit(f"gpu_check: error: {', '.join(FAILED)} failed; see {out / 'log.txt'}")
    return out


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the command running is stopped too
    run_script(main, "gpu_check.py")
