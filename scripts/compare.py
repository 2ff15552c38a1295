"""MoE vs dense at equal compute: three training runs in one command, one table and three plots.

    python scripts/compare.py                          # 3 x 10 minutes, about 31 minutes on 2 CPU cores
    python scripts/compare.py --minutes 2 --dim 96     # shorter; unknown options go to every run

Trains, one after the other in this process, with the same data, tokenizer, seed, batch and
wall-clock budget on the same machine:
  moe            our model at the `tiny` preset: 16 routed experts + 1 shared, top-1, noisy routing,
                 switch balancing loss 0.001
  dense          the same model with dense SwiGLU layers only, of width (1 + top_k) x expert_dim:
                 the shared expert plus the routed expert(s) a token uses, so the active parameters
                 per token match (checked on the meta device and printed; routers are the gap)
  moe-ablation   the MoE without router noise and without the balancing loss
and writes to --out (default img/, the README's figures, for a run at the defaults; --out_dir for any
other, so that a short run never replaces them):
  compare_bpb.png       validation bits/byte against wall-clock minutes and against tokens seen
  compare_experts.png   token share of each expert per MoE layer over training (heatmaps), both MoE runs
  compare_entropy.png   mean router entropy per MoE layer over training, both MoE runs
  compare.json          the table, the settings, each run's command line and machine info
  compare.md            the table as markdown (also printed)

How this departs from the obvious version:
- Runs go through train.main, the trainer users run, not a copy of its loop. Each run is `train.py
  --preset tiny` plus the shared settings, then any options compare.py does not know itself (e.g.
  `--dim 96 --log_every 5`: they apply to all three runs), then the variant's own overrides.
- The budget is wall clock as train.py counts it (evaluations and best.pt saves included), with the
  cosine laid over it; --max_steps is 10**9 unless given, so the clock stops each run. The runs
  are sequential on a machine that may be shared: the load average before each is recorded.
- Run folders are --out_dir/compare-{moe,dense,moe-ablation}; compare.py deletes those three (and
  nothing else) before it starts, so copy them elsewhere to keep them (a file or link of one of those
  names, or an --out inside one, is refused). Each run's settings are checked first, as train.py
  checks them before any work (a batch too large for the memory), and the data is prepared before
  that deletion too (the tokenizer trained and the text tokenized once, into --cache_dir, which the
  runs share: outside every run's budget), so bad settings or a bad --data or --val_data (an empty
  file, a checkpoint, text that is not UTF-8) are refused with the last comparison's runs still there.
  The previous compare.json, .md and PNGs are replaced only at the end: a run that fails or is
  interrupted leaves them as they were. The three runs' tokenizer.json files are checked to be
  identical.
- Ctrl-C (or SIGTERM) stops the run in progress as train.py stops (last.pt saved), then compare.py:
  one line, last, exit status 130, no comparison written. compare.py cannot go on from its runs
  (train.py's hint to --resume trains that one run on by itself; a rerun starts the three again). A
  signal at a run's last step lets that run finish, then stops compare.py; at the last run's, every
  run is whole and the comparison is written first (then the line, and 130).
- tokens/s is the tokens of the logged windows over their training time (evaluation excluded): the
  token-weighted harmonic mean of train.py's per-window rates. MFU is train.py's (against a peak it
  measures at the start of each run). Final validation is the last val record (train.py evaluates at
  the end of every run). Expert shares are train.py's: each expert's share of the assignments of
  every step in a logging window.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import errors  # noqa: E402, F401  first: a Ctrl-C while torch imports is one line, no traceback

# isort: split

import torch  # noqa: E402

import config  # noqa: E402
import data  # noqa: E402
import runplan  # noqa: E402
import runtime  # noqa: E402
import sources  # noqa: E402
import storage  # noqa: E402
import train  # noqa: E402
from config import ModelArgs, TrainArgs  # noqa: E402
from errors import ConfigError, DataError, run_script  # noqa: E402
from model import Llama4, count_parameters, flops_per_token  # noqa: E402
from runlog import read_metrics, writable_home_dirs  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "tinystories"
CACHE = ROOT / "cache"  # --cache_dir's default, in the project folder (as a run there: train.py's cache/)
VARIANTS = ["moe", "dense", "moe-ablation"]
MOE_RUNS = ["moe", "moe-ablation"]
# train.py options that compare.py refuses to pass through: why, and what to do instead.
OWNED = {"run": "compare.py names each run's folder (--out_dir/compare-NAME); pick the folder with --out_dir",
         "resume": "every run of a comparison starts from scratch; rerun compare.py to train the three "
                   "again",
         "init_from": "every run of a comparison starts from scratch, as the table compares them",
         "eval_only": "compare.py trains the three runs; score one with `train.py --eval_only --out_dir "
                      "OUT_DIR --run compare-moe` (its --out_dir: checkpoints/compare by default)",
         "plot": "compare.py draws its own plots (in --out); plot_runs.py draws a run's loss curves",
         "max_minutes": "set each run's budget with compare.py's own --minutes",
         "tokenizer": "the three runs share one tokenizer, trained on --data and kept in --cache_dir"}
# compare.py's options that reach train.py under their own names, with defaults of compare.py's (a range
# error names those; --batch_size's default is the preset's, as train.py's error says; --max_steps has none)
OWN_DEFAULTS = ["seed", "eval_every", "eval_windows"]


def parse(argv):
    p = config.Parser(prog="compare.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any other option (e.g. --dim 96 --log_every 5) goes to train.py, "
                                       "for all three runs.")
    add, integer = p.add_argument, config.number(int)  # (numbers read as train.py reads its own)
    add("--preset", default="tiny", choices=list(config.PRESETS),
        help="train.py preset of the runs (default tiny)")
    add("--minutes", type=config.number(float), default=10.0, help="wall-clock budget per run (default 10)")
    add("--max_steps", type=integer, default=None,
        help="also stop each run after this many steps (default: none, the budget decides)")
    add("--data", default=str(SHARED / "train-lower.txt"),
        help="training text (default ../shared/data/tinystories/train-lower.txt)")
    add("--val_data", default=str(SHARED / "valid-lower.txt"),
        help="validation text (default ../shared/data/tinystories/valid-lower.txt)")
    add("--out", default=None, help="folder for the plots, compare.json and .md (default: img/ for a run at "
                                     "the defaults, the README's; --out_dir for any other)")
    add("--out_dir", default=str(ROOT / "checkpoints" / "compare"),
        help="folder for the three run folders (default checkpoints/compare/)")
    add("--cache_dir", default=str(CACHE), help="tokenizer and token shard cache (default cache/)")
    add("--seed", type=integer, default=1337, help="the same for the three runs (default 1337)")
    add("--batch_size", type=integer, default=None, help="sequences per micro-batch (default: the preset's)")
    add("--eval_every", type=integer, default=500, help="evaluate every N steps and at the end (default 500)")
    add("--eval_windows", type=integer, default=0,
        help="validation windows per evaluation (default 0: all of --val_data, the same for every run)")
    add("--wandb_mode", default="disabled", choices=["auto", "online", "offline", "disabled"],
        help="Weights & Biases for the runs, group 'compare' (default disabled)")
    opts, extra = p.parse_known_args(argv)
    config.check_pass_through(p, extra, OWNED)
    for name in ("data", "val_data", "out", "out_dir", "cache_dir"):  # (a quoted ~, as train.py reads it)
        if getattr(opts, name):
            setattr(opts, name, storage.expand_home(getattr(opts, name)))
    if not (math.isfinite(opts.minutes) and opts.minutes >= 0):  # (train.py would name its --max_minutes)
        p.error(f"--minutes: must be a finite number of minutes, 0 or more, got {opts.minutes:g}")
    if opts.minutes <= 0 and opts.max_steps is None:
        p.error("--minutes 0 needs --max_steps, or the runs never end")
    for name in ("data", "val_data", "out_dir", "cache_dir"):  # (train.py's fix named its own defaults)
        if getattr(opts, name) == "":  # (--data '': the runs went to the Hugging Face Hub)
            what = "file" if "data" in name else "folder"
            p.error(f"--{name} is empty (an unset variable?); name a {what}, or leave --{name} out for its "
                    f"default ({os.path.relpath(p.get_default(name), ROOT)})")
    shared = checked_settings(p, opts, extra)  # an unknown or bad pass-through option: one line, here
    if shared.is_dense:  # (three dense runs, two of them tabled as MoE, and no warning: routers were 0)
        p.error(f"--moe_every {shared.moe_every} is above --n_layers {shared.n_layers}: the moe runs would "
                "have no MoE layer, and nothing would be compared; lower --moe_every to at most --n_layers")
    opts.results = storage.results_path(p, opts, ROOT / "img", extra=extra, fallback=Path(opts.out_dir),
                                        ignore=("out_dir", "cache_dir", "wandb_mode"))  # (not the results)
    check_out(p, opts)
    return opts, extra


def check_out(p, opts) -> None:
    """One line for an --out that would not do what it says: --out - (it made a folder named -), an
    --out in a run folder (deleted with it by the next comparison), a compare.json or compare.md there
    that is no earlier comparison's (a user's notes)."""
    if opts.out == "-":
        p.error("--out -: the results are files (plots, compare.json and .md), not text for standard "
                "output; name a folder, e.g. --out results")
    results = opts.results.resolve()
    for run_dir in (Path(opts.out_dir).resolve() / f"compare-{name}" for name in VARIANTS):
        if results == run_dir or run_dir in results.parents:
            p.error(f"--out {opts.out}: results in the run folder {run_dir}, which the next comparison "
                    "deletes (results and all); pick a folder outside it, e.g. --out_dir itself")
    files = {"compare.json": ("runs", "settings"), "compare.md": b"| run | steps |"}
    option = storage.results_option(opts.results, opts.out, opts.out_dir)
    if problem := storage.foreign_results(option, opts.results, files, "compare.py",
                                          storage.results_fix(opts.results, opts.out_dir)):
        p.error(problem)  # (a user's compare.md was replaced after the three runs)


def shared_argv(opts, extra) -> list[str]:
    """train.py arguments common to the three runs (then the variant's overrides, then --run)."""
    steps = 10**9 if opts.max_steps is None else opts.max_steps  # (0 is train.py's to refuse)
    return ["--preset", opts.preset, "--data", opts.data, "--val_data", opts.val_data,
            "--seed", str(opts.seed),
            *(["--batch_size", str(opts.batch_size)] if opts.batch_size is not None else []),
            "--max_minutes", str(opts.minutes), "--eval_windows", str(opts.eval_windows),
            "--max_steps", str(steps), "--save_every", str(steps),
            "--eval_every", str(opts.eval_every), "--out_dir", opts.out_dir, "--cache_dir", opts.cache_dir,
            "--plot", "", "--wandb_mode", opts.wandb_mode, "--wandb_group", "compare", *extra]


def checked_settings(p, opts, extra) -> ModelArgs:
    """The runs' shared model settings. A range error in an option of compare.py's own names compare.py's
    default as its fix (train.py's named its own: `--preset debug --eval_every 0` said "e.g. --eval_every
    4 (the debug preset's)" of compare.py's 500, and --max_steps 0 named train.py's 5000)."""
    argv = shared_argv(opts, extra)
    parsed = config.parse_args([ModelArgs, TrainArgs], argv, prog="compare.py", checked_later=lambda ns: True)
    try:
        TrainArgs(**config.to_dict(parsed[1][1]))
    except ConfigError as e:
        name, value, rule = getattr(e, "out_of_range", (None,) * 3)
        if name == "max_steps":  # (compare.py's default: none)
            p.error(f"--max_steps: must be {rule}, got {value}; " + (
                f"e.g. --max_steps {TrainArgs.max_steps} (train.py's default)" if opts.minutes <= 0 else
                "leave it out (compare.py's default: no limit, the --minutes budget stops each run)"))
        if name in OWN_DEFAULTS:
            p.error(config.range_error(name, value, rule, p.get_default(name), "compare.py's default"))
    return settings_of(argv)[0]  # (any other error: train.py's, as it would say it)


def variant_overrides(name: str, m: ModelArgs) -> list[str]:
    if name == "dense":  # no MoE layer; SwiGLU as wide as the shared expert + the routed expert(s)
        twin = m.dense_twin()
        return ["--moe_every", str(twin.moe_every), "--mlp_dim", str(twin.mlp_dim)]
    if name == "moe-ablation":
        return ["--router_noise", "false", "--router_aux_loss_coef", "0"]
    return []


def settings_of(argv) -> tuple[ModelArgs, TrainArgs]:
    """What train.py will make of argv (a bad override exits here, before any training)."""
    return config.parse_args([ModelArgs, TrainArgs], argv, prog="compare.py")[1]


def size_of(m: ModelArgs) -> dict:
    with torch.device("meta"):
        model = Llama4(m)
    counts = count_parameters(model)
    routers = sum(p.numel() for n, p in model.named_parameters() if ".router" in n)  # router, its noise
    return {"params": counts["total"], "active_params": counts["active_per_token"], "router_params": routers,
            "flops_per_token": flops_per_token(m, m.max_seq_len)}


# ---------------------------------------------------------------------------------------------
# Reading a finished run


def load_run(name: str, run_dir) -> dict:
    """A run's records and settings."""
    run_dir = Path(run_dir)
    train_recs, val_recs = read_metrics(run_dir)
    m = json.loads((run_dir / "model.json").read_text())
    t = json.loads((run_dir / "train.json").read_text())
    per_step = t["batch_size"] * t["grad_accum"] * m["max_seq_len"]
    if config.from_dict(ModelArgs, m, where=str(run_dir / "model.json")).is_dense:
        desc = f"no MoE, SwiGLU {m['mlp_dim']}"
    else:
        noise = "noisy" if m["router_noise"] else "no noise"
        desc = f"{m['n_experts']} experts top-{m['top_k']}, {noise}, aux {m['router_aux_loss_coef']:g}"
    return {"name": name, "label": f"{name}: {desc}", "dir": run_dir, "model": m, "train": train_recs,
            "val": val_recs, "tokens_per_step": per_step, "batch_size": t["batch_size"],
            "grad_accum": t["grad_accum"],
            "moe_layers": [i for i in range(m["n_layers"]) if (i + 1) % m["moe_every"] == 0]}


def summarize(run: dict, steps: int) -> dict:
    """The table row of a run."""
    recs, last_val = run["train"], run["val"][-1] if run["val"] else {}
    tok_s = mfu = None
    if recs:  # tokens over training time of the logged windows
        steps_at = [0] + [r["step"] for r in recs]
        tokens = [(b - a) * run["tokens_per_step"] for a, b in zip(steps_at, steps_at[1:], strict=False)]
        tok_s = sum(tokens) / sum(n / r["tokens_per_s"] for n, r in zip(tokens, recs, strict=True))
        if recs[-1]["mfu"] is not None:
            mfu = tok_s * recs[-1]["mfu"] / recs[-1]["tokens_per_s"]
    routed = recs[-1] if recs and "expert_share" in recs[-1] else None
    entropy = routed and routed["router_entropy"]
    return {"run": run["name"], "steps": steps, "tokens": steps * run["tokens_per_step"],
            # (steps train.py skipped as non-finite, the loss NaN: the run trained nothing in those)
            "skipped_steps": recs[-1].get("skipped_steps", 0) if recs else 0,
            "val_nats_per_token": last_val.get("nats_per_token"),
            "val_bits_per_byte": last_val.get("bits_per_byte"), "tokens_per_s": tok_s, "mfu": mfu,
            "minutes": last_val.get("minutes"),
            "max_expert_share": max(max(layer) for layer in routed["expert_share"]) if routed else None,
            "router_entropy": sum(entropy) / len(entropy) if routed else None}


# ---------------------------------------------------------------------------------------------
# Plots: each function returns its Figure (so tests can check the series) after writing the PNG


def new_figure(**kw):
    writable_home_dirs("MPLCONFIGDIR")  # (before matplotlib's first import: its warning)
    from matplotlib.figure import Figure
    return Figure(layout="constrained", **kw)


def save(fig, out) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    storage.atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))


def no_data(out, message: str):
    """A figure that says why the plot is empty, so that every promised file exists."""
    fig = new_figure(figsize=(8, 2))
    fig.text(0.5, 0.5, message, ha="center", va="center")
    save(fig, out)
    return fig


def plot_bpb(runs: list[dict], out, budget: str = "wall-clock budget"):
    """Validation bits/byte against wall-clock minutes (left) and tokens seen (right); `budget` is what
    the runs share (a number of steps, for --minutes 0)."""
    fig = new_figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        bpb = [r["bits_per_byte"] for r in run["val"]]
        left.plot([r["minutes"] for r in run["val"]], bpb, "o-", ms=3, color=f"C{i}", label=run["label"])
        right.plot([r["tokens"] for r in run["val"]], bpb, "o-", ms=3, color=f"C{i}", label=run["label"])
    left.set(xlabel="wall-clock minutes", ylabel="validation bits per byte", title="per unit of time")
    right.set(xlabel="tokens seen", ylabel="validation bits per byte", title="per token")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"MoE vs dense at the same active parameters and {budget}")
    save(fig, out)
    return fig


def plot_experts(runs: list[dict], out):
    """One heatmap per (MoE run, MoE layer): expert (rows) x step (columns), colour = token share."""
    runs = [r for r in runs if any("expert_share" in t for t in r["train"])]
    if not runs:
        return no_data(out, "expert load: no routing records (runs shorter than --log_every steps?)")
    n_layers = max(len(r["moe_layers"]) for r in runs)
    fig = new_figure(figsize=(3.2 * n_layers + 1.5, 3.0 * len(runs)))
    from matplotlib.ticker import MaxNLocator  # (after new_figure, which readies matplotlib's folders)
    axes = fig.subplots(len(runs), n_layers, squeeze=False)
    vmax = max(max(max(layer) for layer in t["expert_share"]) for r in runs for t in r["train"]
               if "expert_share" in t)
    mesh = None
    for row, run in zip(axes, runs, strict=True):
        recs = [t for t in run["train"] if "expert_share" in t]
        steps = [t["step"] for t in recs]
        for j, ax in enumerate(row):
            if j >= len(run["moe_layers"]):
                ax.set_visible(False)
                continue
            share = [[t["expert_share"][j][e] for t in recs] for e in range(len(recs[0]["expert_share"][j]))]
            mesh = ax.pcolormesh(steps, range(len(share)), share, shading="nearest", vmin=0, vmax=vmax,
                                 cmap="viridis")
            ax.set(title=f"{run['name']}: layer {run['moe_layers'][j]}", xlabel="step", ylabel="expert")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    n_experts = runs[0]["model"]["n_experts"]
    fig.colorbar(mesh, ax=axes, label=f"token share (uniform = 1/{n_experts} = {1 / n_experts:.3f})")
    fig.suptitle("expert load over training")
    save(fig, out)
    return fig


def plot_entropy(runs: list[dict], out):
    """Mean router entropy per MoE layer over training: colour = layer, line style = run."""
    runs = [r for r in runs if any("router_entropy" in t for t in r["train"])]
    if not runs:
        return no_data(out, "router entropy: no routing records (runs shorter than --log_every steps?)")
    fig = new_figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for style, run in zip(["-", "--", ":", "-."], runs, strict=False):
        recs = [t for t in run["train"] if "router_entropy" in t]
        for j, layer in enumerate(run["moe_layers"]):
            ax.plot([t["step"] for t in recs], [t["router_entropy"][j] for t in recs], style, color=f"C{j}",
                    label=f"{run['name']}: layer {layer}")
    n_experts = runs[0]["model"]["n_experts"]
    ax.axhline(math.log(n_experts), color="gray", lw=0.8, label=f"uniform router: ln {n_experts}")
    ax.set(xlabel="step", ylabel="router entropy (nats per token)", title="router entropy over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    save(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# The table


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def budget_of(minutes: float, max_steps: int | None) -> str:
    """Each run's budget in words: --minutes 0 is none of time (not "0 minutes or 6 steps"); 1 is singular."""
    return " or ".join([f"{minutes:g} minute{'s' * (minutes != 1)}"] * bool(minutes)
                       + [f"{max_steps} step{'s' * (max_steps != 1)}"] * bool(max_steps))


def markdown(report: dict) -> str:
    s, mach = report["settings"], report["machine"]
    lines = ["| run | steps | tokens | val nats/token | val bits/byte | tokens/s | MFU | active params "
             "| max expert share | router entropy | load avg before |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        skipped = f" ({r['skipped_steps']:,} non-finite, skipped)" if r.get("skipped_steps") else ""
        lines.append(f"| {r['label']} | {r['steps']:,}{skipped} | {r['tokens']:,} "
                     f"| {fmt(r['val_nats_per_token'], '.4f')} | {fmt(r['val_bits_per_byte'], '.4f')} "
                     f"| {fmt(r['tokens_per_s'], ',.0f')} "
                     f"| {fmt(r['mfu'], '.2%')} | {r['active_params']:,} "
                     f"| {fmt(r['max_expert_share'], '.3f')} | {fmt(r['router_entropy'], '.3f')} "
                     f"| {r['load_avg_before']:.2f} |")
    budget = budget_of(s["minutes"], s["max_steps"])
    accum = s.get("grad_accum", 1)  # (a step's batch: it said "batch 4" of a step of 2 micro-batches of 4)
    batch = f"{s['batch_size'] * accum} x {s['seq_len']} tokens"
    batch += f" ({accum} micro-batches of {s['batch_size']})" if accum > 1 else ""
    data = f"{Path(s['data']).name} / {Path(s['val_data']).name}"
    lines += ["", f"Runs were sequential, not interleaved, on the same machine ({mach['cpu_count']} CPUs, "
              f"{mach['torch_threads']} torch threads, torch {mach['torch']}), each with a budget of "
              f"{budget}, batch {batch}, seed {s['seed']}, the same "
              f"tokenizer ({s['tokenizer_sha256'][:12]}) and data ({data}). "
              "Load average = 1-minute load just before each run (the previous run of this comparison "
              "counts in it); tokens/s excludes evaluation; MFU against "
              "the peak train.py measured at the start of each run; max expert share and router entropy "
              f"(nats, uniform = ln {s['n_experts']} = {math.log(s['n_experts']):.3f}) at the last log step, "
              "over MoE layers."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The command


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def clear_run_folders(out_dir: Path) -> None:
    """Delete a previous comparison's run folders (ours only), so that it does not block this one.
    All three are checked before any is deleted: another comparison on its second run still needs
    its first run's folder. A file or a link where a run folder goes is refused, before any run (a file
    failed the second run, after the first had trained; a link was a traceback from rmtree)."""
    for d in (out_dir / f"compare-{name}" for name in VARIANTS):
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            what = "a link" if d.is_symlink() else "a file"
            sys.exit(f"compare.py: error: {d} is {what}, where compare.py puts a run folder (and deletes the "
                     "last comparison's); move it away, or pick another --out_dir")
    run_dirs = [d for d in (out_dir / f"compare-{name}" for name in VARIANTS) if d.is_dir()]
    with ExitStack() as held:  # (their locks held until they are gone: no train.py starts there between)
        for run_dir in run_dirs:
            try:  # not while a train.py holds it (another comparison running)
                held.enter_context(storage.lock(run_dir / "run.lock", full_ok=True))
            except storage.Busy as e:
                sys.exit(f"compare.py: error: {run_dir} is in use by another train.py ({e.holder}); wait "
                         "for it to end, or pick another --out_dir")
            except PermissionError as e:  # (another user's folder; a full disk deletes: full_ok)
                cannot_delete(run_dir, e)
            except OSError:  # (no room to make a run.lock: deleting makes room; rmtree says what else fails)
                pass
        for run_dir in run_dirs:
            try:
                shutil.rmtree(run_dir)
            except OSError as e:
                cannot_delete(run_dir, e)


def cannot_delete(run_dir: Path, e: OSError):
    """One line, exit status 1, for a last comparison's run folder we may not delete (another user's)."""
    sys.exit(f"compare.py: error: cannot delete the last comparison's run folder {run_dir} "
             f"({e.strerror or e}); delete it yourself, or pick another --out_dir")


def interrupted(name: str, whole: bool = False):
    """Ctrl-C or SIGTERM: one line and status 130, as train.py and sweep.py, not a traceback or 1."""
    when = f"after the {name} run (which finished)" if whole else f"during the {name} run"
    # (train.py's own line may have said how to --resume the run: true of train.py, not of a comparison)
    print(f"\ncompare.py: interrupted {when}; no comparison written, and compare.py cannot go on from its "
          "runs: a rerun starts the three again, deleting their folders (kept until then: train.py --resume "
          "trains one on, by itself)", file=sys.stderr)
    sys.exit(130)


def train_variants(argvs: dict, sizes: dict) -> tuple[list[dict], list[dict], bool]:
    """The three runs, one after the other: their table rows, what load_run read of each, and whether
    a signal came at the last run's last step (every run whole: the comparison is still made)."""
    rows, runs, signalled = [], [], False
    for name in VARIANTS:
        load = [round(x, 2) for x in os.getloadavg()]
        print(f"\n=== {name} (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}): train.py "
              + shlex.join(argvs[name]), flush=True)  # (as a shell reads it: --plot '', not --plot)
        try:
            result = train.main(argvs[name])
            # train.py stopped cleanly (status 0), its run cut short, or whole when the signal came at its
            # last step (or later): either way the user asked to stop, not to train the next run
            cut, signalled = result["finished"] == "signal", result.get("signalled", False)
            run = None if cut else load_run(name, result["run_dir"])
        except KeyboardInterrupt:  # (outside train.py's training loop, which takes the signal itself)
            interrupted(name)
        except SystemExit as e:  # train.main's exit 130: a signal before its first step, or a second one
            if e.code == 130:
                interrupted(name)
            raise
        if cut or (signalled and name != VARIANTS[-1]):  # (outside the try: interrupted's own SystemExit
            interrupted(name, whole=not cut)  # would print its line again)
        runs.append(run)
        rows.append({**summarize(run, result["step"]), "label": run["label"], **sizes[name],
                     "load_avg_before": load[0], "load_avg_before_1_5_15": load,
                     "finished": result["finished"], "run_dir": result["run_dir"]})
    return rows, runs, signalled


def check_runs(argvs: dict) -> None:
    """Each run's settings, refused as train.py refuses them before any work (runplan.check_settings: a
    batch too large for the machine's memory, ...), before the data is prepared and the last
    comparison's run folders are deleted: train.py refused them only after (the old runs lost for
    nothing). plan_run reads no folder for a new run; what train.py checks of its folder
    (claim_folder: the old runs' checkpoints) is for once they are deleted."""
    for name, argv in argvs.items():
        parsed = config.parse_args([ModelArgs, TrainArgs], argv, prog="compare.py")
        preset, (model_args, train_args) = parsed
        try:
            plan = runplan.plan_run(model_args, train_args, preset, parsed.given)
            runplan.check_settings(plan, runtime.resolve_device(train_args.device), runtime.World())
        except ConfigError as e:  # (a DeviceError or MachineError too: their exit status kept)
            raise type(e)(f"the {name} run: {e}") from None


def prepare_data(opts, train_args: TrainArgs, model_args: ModelArgs) -> None:
    """The runs' data, checked and prepared (the tokenizer trained, the text tokenized, into
    --cache_dir, where the runs find it) before the last comparison's run folders are deleted: a bad
    --data or --val_data that train.py refused once it read it (text that is not UTF-8, a .jsonl
    without the text field) came after clear_run_folders, the old runs lost for nothing. The files are
    found first (an empty one, a checkpoint: refused before --out is made), then --out is made and a
    file made in it (one that cannot be: refused before the data work), and removed again if the data
    is refused. Ctrl-C there: one line, status 130, nothing deleted."""
    sources.resolve_sources(train_args, log=lambda *_: None)
    made = storage.missing_folder(opts.results)
    # (not after the runs: a folder there that takes no new file, /proc or a read-only disk, too)
    storage.writable_folder(opts.results, storage.results_fix(opts.results, opts.out_dir))
    print("preparing the data, once for the three runs", flush=True)
    try:
        data.prepare(train_args, model_args)
    except BaseException as e:
        storage.remove_made(opts.results, made)
        if isinstance(e, KeyboardInterrupt):
            print("\ncompare.py: interrupted while preparing the data; no run trained, and the last "
                  "comparison's runs are as they were", file=sys.stderr)
            sys.exit(130)
        raise


def main(argv=None) -> dict:
    opts, extra = parse(sys.argv[1:] if argv is None else list(argv))
    for what, path in [("training data", opts.data), ("validation data", opts.val_data)]:
        if not Path(path).exists():
            print(f"compare.py: error: {what} {path} does not exist; pass --data / --val_data (defaults: "
                  "../shared/data/tinystories/train-lower.txt and valid-lower.txt)", file=sys.stderr)
            sys.exit(1)
    base = shared_argv(opts, extra)
    shared_model, shared_train = settings_of(base)
    # the variant's own overrides come after the options passed through (in base)
    argvs = {name: base + variant_overrides(name, shared_model) + ["--run", f"compare-{name}"]
             for name in VARIANTS}
    check_runs(argvs)  # (before the data work, as train.py checks them, and before clear_run_folders)
    prepare_data(opts, shared_train, shared_model)  # (before clear_run_folders)
    fix = storage.results_fix(opts.results, opts.out_dir)
    sizes = {name: size_of(settings_of(argv)[0]) for name, argv in argvs.items()}
    moe, dense = sizes["moe"]["active_params"], sizes["dense"]["active_params"]
    routers, gap = sizes["moe"]["router_params"], dense / moe - 1
    print(f"active parameters per token: moe {moe:,} ({routers:,} of them in routers), dense {dense:,} "
          f"({gap:+.2%}; {dense - moe + routers:+,} routers aside)", flush=True)
    if dense != moe - routers:
        print("WARNING: the dense run does not match the MoE's active width; check the overrides")
    elif abs(gap) > 0.01:
        print("note: at these sizes the routers are more than 1% of the active parameters")

    clear_run_folders(Path(opts.out_dir))

    rows, runs, signalled = train_variants(argvs, sizes)
    load_after = [round(x, 2) for x in os.getloadavg()]

    hashes = {sha256(r["dir"] / "tokenizer.json") for r in runs}
    if len(hashes) != 1:
        raise DataError(f"the three runs used different tokenizers (the tokenizer.json files of "
                        f"{', '.join(str(r['dir']) for r in runs)} differ); clear --cache_dir "
                        f"({opts.cache_dir}) and run again")
    m0 = runs[0]["model"]
    report = {
        "runs": rows,
        "settings": {"minutes": opts.minutes, "max_steps": opts.max_steps, "data": opts.data,
                     "val_data": opts.val_data,
                     "seed": opts.seed, "batch_size": runs[0]["batch_size"],
                     "grad_accum": runs[0]["grad_accum"], "seq_len": m0["max_seq_len"],
                     "n_experts": m0["n_experts"], "eval_every": opts.eval_every,
                     "eval_windows": opts.eval_windows, "passed_through": extra,
                     "tokenizer_sha256": hashes.pop(), "out_dir": opts.out_dir, "cache_dir": opts.cache_dir,
                     "train_argv": argvs},
        "machine": {"sequential": True, "order": VARIANTS, "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_before": {r["run"]: r["load_avg_before_1_5_15"] for r in rows},
                    "load_avg_after": load_after},
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = storage.make_folder(opts.results, fix)
    paths = {"bpb": out / "compare_bpb.png", "experts": out / "compare_experts.png",
             "entropy": out / "compare_entropy.png", "json": out / "compare.json", "md": out / "compare.md"}
    budget = "wall-clock budget" if opts.minutes else "number of steps"  # (--minutes 0: no budget of time)
    figures = {"bpb": plot_bpb(runs, paths["bpb"], budget),
               "experts": plot_experts([r for r in runs if r["name"] in MOE_RUNS], paths["experts"]),
               "entropy": plot_entropy([r for r in runs if r["name"] in MOE_RUNS], paths["entropy"])}
    report["files"] = {k: str(v) for k, v in paths.items()}
    storage.save_json(paths["json"], report)
    table = markdown(report)
    storage.atomic_write(paths["md"], table.encode())
    print("\n" + table + "\n" + "\n".join(str(p) for p in paths.values()))
    if signalled:  # nothing was cut short, but the user asked to stop: a calling script stops too
        print(f"\ncompare.py: interrupted as the last run ended; every run finished, comparison written to "
              f"{out}", file=sys.stderr)
        sys.exit(130)
    return {**report, "figures": figures}


if __name__ == "__main__":
    run_script(main, "compare.py")
