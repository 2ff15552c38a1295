"""What 10 CPU minutes should train: a small sweep over the `tiny` preset's shape, learning rate,
schedule, batch and tokenizer, measured rather than guessed.

    python scripts/sweep.py --no_compile         # about 3 hours on 2 CPU cores (the README's img/sweep.*)
    python scripts/sweep.py --screen_minutes 1 --confirm_minutes 2 --only tiny-2026-11,d192-e8
    (any other option, e.g. --num_proc 1, goes to every train.py run, after the candidate's own;
    those sweep.py sets for every run, such as --max_minutes or --seed, are refused, and so is one
    that any stage's candidate cannot take, before the first run: see every_candidate (what train.py
    refuses before reading any text: --vocab_size 100, a --data it cannot read); --compile
    only with --no_compile, as the sweep makes the compiled run itself)

Each run is a `train.py --preset tiny` subprocess with the candidate's overrides on
../shared/data/tinystories/train-lower.txt, validated at the end on all of valid-lower.txt (the
tokenizers and token shards the runs need are made first, in --cache_dir, as train.py makes them: one
that takes no new file is refused before the first run, not at stage 2's first new vocabulary):
  1. screen every shape in SHAPES for --screen_minutes (2.5) of wall clock;
  2. screen each of VARIATIONS (learning rate, schedule, batch, tokenizer size) on the best shape;
  3. screen the variations that helped, combined (one per option: every pair, and all together);
  4. confirm the three best screened for --confirm_minutes (10), the budget the README's demo uses
     (and report any other screened candidate that an earlier sweep confirmed);
  5. run the best confirmed candidate again with another seed (--seed 2), to show the noise, and
     with --compile true (torch.compile on the CPU: faster steps, for a minute of compiling that
     the budget pays); every other run then gets --compile false, so the compiled run is compared
     with eager ones on any device (--compile auto compiles every run on CUDA);
  6. regularise the best confirmed candidate (each of FOLLOWUPS, seeds 1 and 2, --confirm_minutes):
     10 minutes read train-lower.txt about 7 times and the MoE overfits it, which a 2.5-minute
     screen is too short to show. The pick is the lowest mean over the two seeds.
It writes img/sweep.json (every run: settings, steps, tokens/s, parameters, validation),
img/sweep.md (the tables) and img/sweep.png (bits/byte of each candidate, screened and confirmed; a
run with no score, diverged or NaN, named in its row);
a sweep with other settings writes them to --out_dir instead (or to --out), never over the
README's.

How this departs from the obvious version:
- The budget is wall clock, as train.py counts it, and each run's cosine is laid over it, so a
  candidate is scored by what it reaches in the time, not per step: a slower step must earn its
  keep. Evaluation runs once, after the budget (--eval_every is huge), over every window of
  valid-lower.txt (--eval_windows 0), so it neither costs budget nor samples the validation set.
- Runs are sequential on one machine that may be shared: the load average before each run is
  recorded beside it. A run whose folder holds sweep-result.json (written after its final
  validation) is read back, not run again, so an interrupted sweep continues where it stopped; any
  other folder of a candidate (a run cut short) is deleted and run again, but one a train.py still
  holds (another sweep's on this --out_dir, or the train.py of a sweep killed with kill -9) is refused.
  A result is read back only for the same train.py options on the same text: it records the sha256
  of the token shards of --data and --val_data (the validation windows as train.py's EvalSet.key), so
  a file edited since, or a relative path that names another file, is refused, not ranked beside
  runs on other text (a file touched or moved, its text the same, is not). The key is taken again after
  each run: a file edited while the sweep runs stops it there, in one line, that run's result not
  written (it may have read either text), the runs before it kept as on the text they had.
- A candidate that diverges (train.py stops it after --max_bad_steps non-finite steps in a row, exit
  status 1, its last record's bad_streak that many) is a result too, "diverged" in the tables and
  sweep.png (a hatched row, not a gap): it ranks last, is never varied, confirmed or picked, and a
  rerun reads it back; any other failure of train.py (a bad setting, out of memory, a crash) stops
  the sweep, the runs finished kept.
- Candidates are named lists of train.py overrides, applied on top of `--preset tiny`; the first
  shape spells out the 2026-11 tiny preset in full, so it stays the baseline whatever the preset
  becomes, and every other shape starts from it.
"""

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import errors  # noqa: E402, F401  first: a Ctrl-C while torch imports is one line, no traceback

# isort: split

import torch  # noqa: E402

import config  # noqa: E402
import data  # noqa: E402
import runlog  # noqa: E402
import runplan  # noqa: E402
import runtime  # noqa: E402
import sources  # noqa: E402
import storage  # noqa: E402
from errors import ConfigError, run_script, sigterm_interrupts  # noqa: E402
from model import Llama4, count_parameters  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "tinystories"
# Stage 1: shapes at the learning rate the tiny preset had when the sweep ran (2e-3). Stage 2:
# variations on the winner (the first option each sets is its kind: one of each kind is combined
# in stage 3).
SHAPES = {
    "tiny-2026-11": ["--dim", "128", "--n_layers", "4", "--n_heads", "4", "--n_kv_heads", "2",
                     "--n_experts", "16", "--expert_dim", "128", "--mlp_dim", "256",
                     "--vocab_size", "4096", "--batch_size", "16", "--lr", "2e-3", "--min_lr", "2e-4",
                     "--warmup_steps", "50", "--weight_decay", "0.1"],
    "d192-e8": ["--dim", "192", "--n_heads", "6", "--n_kv_heads", "2", "--n_experts", "8",
                "--expert_dim", "192", "--mlp_dim", "384"],
    "d192-e4-w256": ["--dim", "192", "--n_heads", "6", "--n_kv_heads", "2", "--n_experts", "4",
                     "--expert_dim", "256", "--mlp_dim", "512"],
    "d256-e4": ["--dim", "256", "--n_heads", "8", "--n_kv_heads", "2", "--n_experts", "4",
                "--expert_dim", "256", "--mlp_dim", "512"],
    "d192-L6-e4": ["--dim", "192", "--n_layers", "6", "--n_heads", "6", "--n_kv_heads", "2",
                   "--n_experts", "4", "--expert_dim", "192", "--mlp_dim", "384"],
    "d128-L6-e8": ["--n_layers", "6", "--n_experts", "8"],
    "d192-e4-top2": ["--dim", "192", "--n_heads", "6", "--n_kv_heads", "2", "--n_experts", "4",
                     "--expert_dim", "192", "--mlp_dim", "384", "--top_k", "2"],
}
VARIATIONS = {
    "lr3e-3": ["--lr", "3e-3", "--min_lr", "3e-4"],
    "lr1e-3": ["--lr", "1e-3", "--min_lr", "1e-4"],
    "cosine-to-0": ["--min_lr", "0"],
    "batch8": ["--batch_size", "8"],
    "batch32": ["--batch_size", "32"],
    "vocab2048": ["--vocab_size", "2048"],
    "vocab8192": ["--vocab_size", "8192"],
}
# Stage 6: regularisation, at the full budget only.
FOLLOWUPS = {
    "wd1.0": ["--weight_decay", "1.0"],
    "wd2.0": ["--weight_decay", "2.0"],
    # the baseline's decay (tiny-2026-11's), rerun: stages 1-5 ran before the fused loss made the step
    # about 5% faster
    "wd0.1": ["--weight_decay", "0.1"],
}


def shapes() -> dict[str, list[str]]:
    """Stage 1, name -> train.py overrides (on top of --preset tiny): each shape starts from the
    2026-11 tiny preset's settings."""
    base = SHAPES["tiny-2026-11"]
    return {name: base if name == "tiny-2026-11" else base + over for name, over in SHAPES.items()}


def variations(best: str, overrides: list[str]) -> dict[str, list[str]]:
    """Stage 2: the variations on the best shape."""
    return {f"{best}+{name}": overrides + over for name, over in VARIATIONS.items()}


def ranking(r: dict) -> tuple[bool, bool, float]:
    """The key of every ranking of runs, best first: the lowest bits/byte, a NaN (an evaluation that
    overflowed) last, and after it a run that diverged (no score). On the bare scores min() kept a NaN
    that came first, and sorted() left a list with a NaN unsorted."""
    return diverged(r), math.isnan(r["bits_per_byte"]), r["bits_per_byte"]


def diverged(r: dict) -> bool:
    """Whether a run's result is of a train.py stopped by --max_bad_steps non-finite steps in a row."""
    return r.get("status") == "diverged"


def best_of(runs: list[dict], what: str) -> dict:
    """The best of `runs`, which must not have diverged: one that did is never varied, confirmed or
    picked (a sweep whose every `what` diverged stops, in one line)."""
    best = min(runs, key=ranking)
    if diverged(best):
        sys.exit(f"sweep.py: error: every {what} diverged (train.py stopped each after --max_bad_steps "
                 f"non-finite steps in a row): nothing to go on from; check the data, or pass train.py "
                 f"options that keep them finite (a lower --lr, more --warmup_steps); {KEPT}")
    return best


def combinations(best: str, overrides: list[str], screened: list[dict]) -> dict[str, list[str]]:
    """Stage 3: the variations that beat the best shape, one per option they set (the best lr, the
    best batch, ...), combined: every pair of them, and all of them together."""
    score = {r["name"]: ranking(r) for r in screened}
    unscreened = (True, True, math.inf)  # (ranks with the diverged runs: beats nothing)
    winners, options = [], set()
    for name in sorted(VARIATIONS, key=lambda v: score.get(f"{best}+{v}", unscreened)):
        option = VARIATIONS[name][0]
        if score.get(f"{best}+{name}", unscreened) < score[best] and option not in options:
            winners.append(name)
            options.add(option)
    groups = [list(pair) for pair in itertools.combinations(winners, 2)]
    groups += [winners] if len(winners) > 2 else []
    return {"+".join([best, *group]): overrides + sum((VARIATIONS[v] for v in undone_last(group)), [])
            for group in groups}


def undone_last(group: list[str]) -> list[str]:
    """The group's variations in an order where none undoes another: one whose option another sets
    too (cosine-to-0's --min_lr, which lr3e-3 sets to 3e-4) comes after it, or it would not count."""
    return sorted(group, key=lambda v: any(VARIATIONS[v][0] in VARIATIONS[w][2::2] for w in group if w != v))


def every_candidate(stage1: dict[str, list[str]], opts) -> dict[str, list[str]]:
    """Every run the sweep may make, name -> overrides, so that each is checked before the first: each
    shape with any variations (at most one per option, as stage 3 combines them), and the first
    shape with those and each follow-up or --compile true, of the stages the sweep runs (the options
    passed through apply to all, and may clash with a later stage's: --min_lr 1.5e-3 with lr1e-3
    failed at stage 2)."""
    kinds: dict[str, list] = {}
    for name, over in ({} if opts.no_variations else VARIATIONS).items():
        kinds.setdefault(over[0], [None]).append(name)
    groups = [[v for v in pick if v] for pick in itertools.product(*kinds.values())]
    after = {} if opts.no_followups else dict(FOLLOWUPS)
    after |= {} if opts.no_compile else {"compile": ["--compile", "true"]}
    candidates = {"+".join([shape, *g]): over + sum((VARIATIONS[v] for v in undone_last(g)), [])
                  for shape, over in stage1.items() for g in groups}
    first = list(candidates.items())[:len(groups)]
    return candidates | {f"{name}+{later}": over + more for name, over in first
                         for later, more in after.items()}


def check_pass_through(p, opts) -> None:
    """The options for train.py: none that sweep.py sets itself, nor --compile beside the compiled run
    (it comes after that run's --compile true)."""
    config.check_pass_through(p, opts.extra, OWNED)
    if not opts.no_compile and any(w.split("=")[0] == "--compile" for w in opts.extra):
        p.error("--compile would set every run's, the sweep's own compiled run of the best candidate too "
                "(a copy of another then); leave it out, or add --no_compile to pass it to every run")


def check_candidates(p, stage1: dict[str, list[str]], opts) -> tuple[torch.device, list]:
    """A bad value for any run of the sweep: one line naming the run now, not hours in. Each run's
    train.py command goes through what train.py refuses before any data work: its option checks
    (config), then its settings checks (runplan: a vocabulary too small for a BPE, a --tokenizer of
    another size, a batch too large for the device's memory, ...); then the --data and --val_data
    (sources: no such file, an empty one, a checkpoint, a folder with no text; exit status 1). Returns
    the device the runs train on, and the settings of each data the runs need (prepare_data)."""
    needs = {}
    for name, over in every_candidate(stage1, opts).items():
        said = io.StringIO()
        run = result_path(name, opts.screen_minutes, 1, opts).parent.name
        argv = train_argv(train_setting(over, opts.screen_minutes, 1, opts), run, opts)
        try:
            with contextlib.redirect_stderr(said):
                parsed = config.parse_args([config.ModelArgs, config.TrainArgs], argv, prog="sweep.py")
        except SystemExit:
            p.error(f"candidate {name}: {said.getvalue().strip().removeprefix('sweep.py: error: ')}")
        preset, (model_args, train_args) = parsed
        try:
            plan = runplan.plan_run(model_args, train_args, preset, parsed.given)
            device = runtime.resolve_device(train_args.device)
            runplan.check_settings(plan, device, runtime.World())
        except ConfigError as e:
            p.error(f"candidate {name}: {e}")
        # (the text options are the same for all, the sweep's and those passed through: a vocabulary
        # of a variation's is another tokenizer, and other shards)
        needs.setdefault((model_args.vocab_size, model_args.max_seq_len), (train_args, model_args))
    sources.resolve_sources(train_args, log=lambda *_: None)  # (the same --data and --val_data for all)
    return device, list(needs.values())


def prepare_data(needs: list, results: Path, made: Path | None) -> dict:
    """The tokenizer and token shards of every run, as train.py prepares them, before the first run: a
    --cache_dir that takes no new file (read-only, or not ours) failed the first run of a vocabulary
    not cached yet, stage 2's vocab2048 after the whole of stage 1. A read-only cache that holds them
    all is used (data.prepare's cache hits), so it is not refused for being read-only. A refusal
    removes the results folder the sweep made and left empty (missing_folder's `made`).
    Returns what identifies the text of the runs of each (vocabulary, window length), which each result
    records (text_of): the training shard's sha256, and the validation windows' key as train.py's
    EvalSet.key (the shard's sha256 and the windows' count). A shard is the text's tokens, under a
    tokenizer trained on --data (deterministic): other text, other sha256; the same text, touched,
    copied or moved, the same."""
    print(f"preparing the data of the runs: {len(needs)} vocabulary size(s), in --cache_dir", flush=True)
    texts = {}
    try:
        for train_args, model_args in needs:
            texts[model_args.vocab_size, model_args.max_seq_len] = text_key(train_args, model_args)
    except BaseException as e:
        storage.remove_made(results, made)
        if isinstance(e, KeyboardInterrupt):
            print("\nsweep.py: interrupted while preparing the data; no run started", file=sys.stderr)
            sys.exit(130)
        raise
    return texts


_KEYS: dict[str, dict] = {}  # text_key's, by what its files' signatures were (paths, sizes, times)


def text_key(train_args, model_args, log=print, note: str = "") -> dict:
    """What identifies the text of a run of these settings (prepare_data's), its data prepared as its
    train.py prepares it: cache hits where that text was prepared before. Files whose signatures are
    the ones keyed before are not prepared again (check_text_kept after every run: a stat each); where
    they are not, `note` is said first (a file touched or edited: its tokenizer and shards are made
    again, minutes on TinyStories, not in silence)."""
    try:
        splits = sources.resolve_sources(train_args, log=lambda *_: None)
        seen = json.dumps([[split.signature for split in splits], model_args.vocab_size,
                           model_args.max_seq_len, train_args.eval_windows], sort_keys=True, default=str)
    except (errors.UserError, OSError):  # (a file gone or unreadable: data.prepare says it in one line)
        seen = None
    if seen in _KEYS:
        return _KEYS[seen]
    if note:
        log(note)
    _, train, val = data.prepare(train_args, model_args, log)
    windows = data.n_val_windows(val.tokens, model_args.max_seq_len, train_args.eval_windows)
    key = {"--data": train.meta["sha256"][:16], "--val_data": f"{val.meta['sha256'][:16]}:{windows}"}
    if seen is not None:
        _KEYS[seen] = key
    return key


def check_text_kept(text: dict | None, argv: list[str], run: str, opts) -> None:
    """After a run, before its result is written: the key of its text taken again. The keys are taken
    when the sweep starts (prepare_data), but a --data or --val_data edited while it ran gave the later
    runs' results the start's key, recorded as on the old text. Where the text changed since the start,
    this run (which read it at some point of its own: before or after the edit) is not recorded, and
    the sweep stops in one line; the runs before it are kept, results on the text they had. A file
    touched, its text the same, changes nothing (the same shards); files not written to are not
    prepared again (text_key)."""
    if not text:
        return
    model_args, train_args = settings_of(argv)
    now = text_key(train_args, model_args, note=f"sweep.py: --data or --val_data was written to while {run} "
                   "ran: preparing its text again, to tell whether it changed")
    if now != text:
        flag = next(f for f in text if now[f] != text[f])
        sys.exit(f"sweep.py: error: {flag} {opts.data if flag == '--data' else opts.val_data} changed while "
                 f"the sweep ran: {run} may have read either text, so its result is not kept (it runs "
                 "again); the runs before it are kept, on the text from before: put that back and rerun "
                 "sweep.py to go on, or sweep the new text with another --out_dir")


def machine(device: torch.device) -> str:
    """Where the runs trained, in words, for sweep.md and sweep.png: `2 CPU cores`, or the GPU's name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"


def repeated(opts) -> list[str]:
    """The variations and follow-ups the sweep runs whose option (the first each sets) is passed
    through as well: it comes after theirs, so each would repeat the run it varies."""
    flags = {w.split("=")[0] for w in opts.extra}
    stages = ({} if opts.no_variations else VARIATIONS) | ({} if opts.no_followups else FOLLOWUPS)
    return [name for name, over in stages.items() if over[0] in flags]


def pick_best(runs: list[dict]) -> dict:
    """The candidate with the lowest mean bits/byte over its seeds: name, overrides, mean (not one that
    diverged with any seed)."""
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        by_name.setdefault(r["name"], []).append(r)
    means = [{"name": n, "bits_per_byte": sum(r["bits_per_byte"] for r in rs) / len(rs),
              "status": "diverged" if any(map(diverged, rs)) else None} for n, rs in by_name.items()]
    best = min(means, key=ranking)
    if diverged(best):  # (a candidate that diverged with either seed is never picked)
        sys.exit(f"sweep.py: error: every candidate of the pick diverged with seed 1 or 2 "
                 f"({', '.join(by_name)}): nothing to pick; {KEPT}")
    return {"name": best["name"], "overrides": by_name[best["name"]][0]["overrides"],
            "mean": best["bits_per_byte"]}


def size_of(overrides: list[str]) -> dict:
    m = config.parse_args([config.ModelArgs, config.TrainArgs], ["--preset", "tiny", *overrides],
                          prog="sweep.py")[1][0]
    with torch.device("meta"):
        c = count_parameters(Llama4(m))
    return {"params": c["total"], "active_params": c["active_per_token"]}


def result_path(name: str, minutes: float, seed: int, opts) -> Path:
    """Where a candidate's run keeps its score: the run folder is named by candidate, budget, seed."""
    return Path(opts.out_dir) / f"{name}-{minutes:g}m-s{seed}" / "sweep-result.json"


# train.py options sweep.py refuses to pass through: why, and what to do instead. run_one sets most
# after the options passed through; each candidate starts from scratch.
SET = "sweep.py sets it for every run"
OWNED = {"preset": f"{SET} (tiny, with each candidate's overrides)",
         "max_minutes": f"{SET}; use sweep.py's own --screen_minutes and --confirm_minutes",
         "max_steps": f"{SET} (none: the budget in minutes stops each run); use --screen_minutes and "
                      "--confirm_minutes",
         "eval_every": f"{SET} (one evaluation, after the budget, which it does not cost)",
         "save_every": f"{SET} (a save at the end only)",
         "eval_windows": f"{SET} (0: all of --val_data, so that every run is scored on the same text)",
         "seed": f"{SET} (1, and 2 for the best candidate's noise run)",
         "plot": f"{SET} (no plot per run; sweep.png is the sweep's)",
         "wandb_mode": f"{SET} (disabled)",
         "run": "sweep.py names each run's folder after its candidate; pick the folder with --out_dir",
         "resume": "every candidate starts from scratch; rerun sweep.py with the same options to go on "
                   "from the finished runs",
         "init_from": "every candidate starts from scratch, as the sweep compares them",
         "eval_only": "sweep.py trains its candidates; score a run with `train.py --eval_only --out_dir "
                      "OUT_DIR --run RUN` (its --out_dir: checkpoints/sweep by default)"}


# the fields of train.py's records that run_one reads (runlog.read_metrics names a record without one)
NEED = {"train": ("tokens", "tokens_per_s"),
        "val": ("step", "tokens", "bits_per_byte", "nats_per_token", "val_tokens")}
KEPT = "the runs finished so far are kept, and a rerun goes on from them"  # (each error of run_one)


def train_setting(overrides: list[str], minutes: float, seed: int, opts) -> list[str]:
    """A run's train.py options, as its result records them (train_argv)."""
    # Beside the compiled run, every other is eager: --compile auto compiles them all on CUDA
    eager = [] if opts.no_compile or "--compile" in overrides else ["--compile", "false"]
    return ["--preset", "tiny", *eager, *overrides, *opts.extra, "--data", opts.data,
            "--val_data", opts.val_data, "--max_minutes", str(minutes), "--max_steps", "1000000000",
            "--eval_every", "1000000000", "--save_every", "1000000000", "--eval_windows", "0",
            "--seed", str(seed)]


def same_setting(recorded: list[str], setting: list[str], device: torch.device | None) -> bool:
    """Whether a finished run's train.py options (its result's) make the run `setting` would: the same
    options, or the same but for the --compile false that train_setting adds beside a compiled run,
    where the device's --compile auto is eager too (a sweep with --no_compile on the CPU, rerun
    without it to add its compiled run: every run was refused)."""
    def eager_left_out(argv):
        return argv[:2] + argv[4:] if argv[2:4] == ["--compile", "false"] else argv  # (after --preset tiny)
    return recorded == setting or (device is not None and not runtime.wants_compile("auto", device)
                                   and eager_left_out(recorded) == eager_left_out(setting))


def train_argv(setting: list[str], run: str, opts) -> list[str]:
    """The whole train.py command line of a run: its setting, with where it goes."""
    return [*setting, "--plot", "", "--wandb_mode", "disabled", "--out_dir", opts.out_dir,
            "--cache_dir", opts.cache_dir, "--run", run]


def clear_cut_short(run_dir: Path, name: str) -> None:
    """Delete the folder of a run of `name` cut short, to run it again; not one a train.py still holds
    (another sweep on this --out_dir, or the train.py of a sweep killed with `kill -9`, which lives on):
    its files, its lock too, were deleted under it, and the train.py started there ran beside it. The lock
    is held while the folder goes, so that no train.py starts there in between."""
    import shutil
    held = None
    try:
        held = storage.lock(run_dir / "run.lock", full_ok=True)  # (a full disk: the room is wanted)
    except storage.Busy as e:
        sys.exit(f"sweep.py: error: {run_dir} is in use by another train.py ({e.holder}); wait for it to "
                 "end (another sweep on this --out_dir?) or stop it, then rerun sweep.py; or pick another "
                 "--out_dir")
    except OSError:  # (a folder we may not write: rmtree says so below)
        pass
    try:
        shutil.rmtree(run_dir)
    except OSError as e:  # (a traceback)
        sys.exit(f"sweep.py: error: cannot delete {run_dir}, a run of {name} cut short, to run it again "
                 f"({e.strerror or e}); delete it yourself, then rerun sweep.py")
    finally:
        if held is not None:
            held.close()


def settings_of(setting: list[str]) -> tuple:
    """(ModelArgs, TrainArgs) of a run's train.py options (checked before the first run)."""
    return config.parse_args([config.ModelArgs, config.TrainArgs], setting, prog="sweep.py")[1]


def text_of(setting: list[str], opts) -> dict | None:
    """What identifies the text a run of `setting` trains and is scored on (prepare_data's, for its
    vocabulary and window length); None where the sweep did no data work (a test's)."""
    if not getattr(opts, "texts", None):
        return None
    m = settings_of(setting)[0]
    return opts.texts.get((m.vocab_size, m.max_seq_len))


def read_back(result_file: Path, name: str, setting: list[str], text: dict | None, opts) -> dict | None:
    """A finished run's result (None where there is none), where it is one of the same train.py options
    on the same text; else one line (results from before either was recorded are kept)."""
    run_dir = result_file.parent
    try:
        found = result_file.exists()
        result = json.loads(result_file.read_text()) if found else None
    except ValueError as e:  # (save_json is atomic: edited by hand, or another file)
        result = f"{type(e).__name__}: {e}"
    except IsADirectoryError:  # (not a result that "make it readable" would let it read)
        sys.exit(f"sweep.py: error: {result_file} is a folder, not a result sweep.py wrote; delete {run_dir} "
                 f"to run {name} again")
    except OSError as e:  # (a run's folder or result we may not read: a traceback, or advice to delete it)
        sys.exit(f"sweep.py: error: cannot read {result_file} ({e.strerror or e}); make it and its folder "
                 f"readable, or delete {run_dir} to run {name} again")
    if not found:
        return None
    if not isinstance(result, dict):
        sys.exit(f"sweep.py: error: {result_file} is not a result sweep.py wrote ({str(result)[:80]}); "
                 f"delete {run_dir} to run {name} again")
    if not same_setting(result.get("train_argv", setting), setting, getattr(opts, "device", None)):
        sys.exit(f"sweep.py: error: {run_dir} holds a run made with other train.py options "
                 f"({shlex.join(result['train_argv'])}); pick another --out_dir for these, or delete it")
    # (the options name the files, not their text: one edited since, or a relative path typed elsewhere)
    if (was := result.get("text")) and text and was != text:
        flag = next(f for f in text if was.get(f) != text[f])
        sys.exit(f"sweep.py: error: {run_dir} holds a run scored on other text than {flag} "
                 f"{opts.data if flag == '--data' else opts.val_data} holds now (the file changed since, or "
                 "the path names another); pick another --out_dir for these runs, or delete it")
    return result


def run_one(name: str, overrides: list[str], minutes: float, seed: int, opts) -> dict:
    """One budgeted train.py run (or its earlier result, made with the same train.py options on the
    same text), scored on all of --val_data; a run that diverged is a result too, never run again."""
    result_file = result_path(name, minutes, seed, opts)
    run_dir, run = result_file.parent, result_file.parent.name
    setting = train_setting(overrides, minutes, seed, opts)
    text = text_of(setting, opts)
    if (result := read_back(result_file, name, setting, text, opts)) is not None:
        return result
    if run_dir.exists():  # an interrupted run: start it again
        clear_cut_short(run_dir, name)
    argv = train_argv(setting, run, opts)
    load = os.getloadavg()[0]
    # (as a shell reads it: --plot '', not --plot; a --data path with a space, one word)
    print(f"\n=== {run} (load {load:.2f}): train.py {shlex.join(argv)}", flush=True)
    t = time.time()
    restore_sigterm = sigterm_interrupts()  # a kill (timeout, a scheduler) is a Ctrl-C: train.py was left
    try:  # running on its own; now subprocess.run ends it, as on a Ctrl-C (this run starts again anyway)
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv])  # (in our cwd, as the paths)
    except KeyboardInterrupt:  # Ctrl-C (train.py gets it too): one line, not a traceback, status 130
        print(f"\nsweep.py: interrupted during {run}; {KEPT} (this one starts again)", file=sys.stderr)
        sys.exit(130)
    finally:
        restore_sigterm()
    result = {"name": name, "run": run, "minutes": minutes, "seed": seed, "overrides": overrides,
              "train_argv": setting, **({"text": text} if text else {}),
              **scores(run_dir, run, done.returncode, settings_of(setting)[1].max_bad_steps),
              "load_avg_before": round(load, 2), "wall_seconds": round(time.time() - t, 1),
              **size_of(overrides + opts.extra)}
    check_text_kept(text, argv, run, opts)  # (the key recorded is of the text the run read)
    storage.save_json(result_file, result)
    if diverged(result):
        print(f"sweep.py: {run} diverged ({result['reason']}): it ranks last, and the sweep goes on",
              file=sys.stderr)
    return result


def scores(run_dir: Path, run: str, status: int, max_bad_steps: int) -> dict:
    """What a train.py run's log gives its result: the score of its last evaluation, or for a run that
    train.py stopped after --max_bad_steps non-finite steps in a row (status 1; see divergence) the
    status "diverged", the reason, and no score (NaN); any other failure stops the sweep, in one line."""
    failed = f"sweep.py: error: train.py failed for {run} (exit {status}, its error is above); {KEPT}"
    if status not in (0, 1):
        sys.exit(failed)
    try:  # (none yet where train.py stopped before its first record; a record without a field named)
        train, val = runlog.read_metrics(run_dir, need=NEED, fix=f"{KEPT} (this one starts again)")
    except (OSError, ValueError) as e:
        sys.exit(failed if status else f"sweep.py: error: {e}")
    # (the steps train.py skipped as non-finite: a candidate whose loss went NaN, scored on the weights
    # from before, finished a clean-looking run when its budget came before --max_bad_steps)
    skipped = train[-1].get("skipped_steps", 0) if train else 0
    if status:
        if (reason := divergence(train, val, max_bad_steps)) is None:
            sys.exit(failed)
        return {"status": "diverged", "reason": reason, "steps": train[-1]["step"],
                "tokens": train[-1]["tokens"], "bits_per_byte": math.nan, "nats_per_token": math.nan,
                "val_tokens": None, "tokens_per_s": tokens_per_s(train), "skipped_steps": skipped}
    if not val:  # a signal to train.py alone: it stops cleanly (status 0) before its final evaluation
        sys.exit(f"sweep.py: error: train.py stopped before its final evaluation for {run} (a signal?); "
                 f"{KEPT}")
    val = val[-1]
    return {"steps": val["step"], "tokens": val["tokens"], "bits_per_byte": val["bits_per_byte"],
            "nats_per_token": val["nats_per_token"], "val_tokens": val["val_tokens"],
            "tokens_per_s": tokens_per_s(train), "skipped_steps": skipped}


def divergence(train: list[dict], val: list[dict], max_bad_steps: int) -> str | None:
    """Why train.py (exit status 1) stopped a run, where its log shows it was for --max_bad_steps
    non-finite steps in a row: it stops right after the train record of the window they came in, whose
    bad_streak (the most in a row, a streak from the window before counted whole) is then at least
    --max_bad_steps. None for any other failure (a bad setting or data, out of memory, a crash): no
    such record last (the run's skipped_steps, its total, could reach it with steps skipped apart)."""
    if val or not train or train[-1].get("bad_streak", 0) < max_bad_steps:
        return None
    last = train[-1]
    return (f"train.py stopped it: {last['bad_streak']:,} non-finite steps in a row by step {last['step']:,} "
            f"(--max_bad_steps {max_bad_steps}), {last.get('skipped_steps', 0):,} skipped in all")


def tokens_per_s(train: list[dict]) -> float | None:
    """The run's tokens over its training seconds (evaluation excluded), i.e. the token-weighted
    harmonic mean of its windows' rates, as compare.py's; None (n/a in the tables) for a run with no
    train record, whose budget ran out before its first step: its score still ranks, and the sweep
    goes on (rather than a ZeroDivisionError, the runs after it not made)."""
    seconds, before = 0.0, 0
    for r in train:  # (records carry the running total of tokens: each window's own over its rate)
        seconds += (r["tokens"] - before) / r["tokens_per_s"]
        before = r["tokens"]
    return train[-1]["tokens"] / seconds if train else None


def table(rows: list[dict], title: str) -> list[str]:
    lines = [f"**{title}**", "", "| candidate | minutes | seed | steps | tokens/s | params (active) | "
             "valid bits/byte | load avg before |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=ranking):
        speed = "n/a" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"
        skipped = f" ({r['skipped_steps']:,} non-finite, skipped)" if r.get("skipped_steps") else ""
        score = "diverged" if diverged(r) else f"{r['bits_per_byte']:.4f}"
        lines.append(f"| {r['name']} | {r['minutes']:g} | {r['seed']} | {r['steps']:,}{skipped} | "
                     f"{speed} | {r['params'] / 1e6:.2f}M "
                     f"({r['active_params'] / 1e6:.2f}M) | {score} | "
                     f"{r['load_avg_before']:.2f} |")
    return lines + [""]


def plot(screen: list[dict], confirm: list[dict], out: Path, val_name: str = "valid-lower.txt",
         where: str = "2 CPU cores"):
    """Bits/byte of each candidate, screened (bars) and confirmed (points); returns the Figure (so tests
    can check its axes) after writing the PNG."""
    runlog.writable_home_dirs("MPLCONFIGDIR")  # (before matplotlib's first import: its warning)
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    # Candidates run only at the full budget (stage 6) get a row without a bar, at the top.
    extra = list(dict.fromkeys(r["name"] for r in confirm if r["name"] not in {s["name"] for s in screen}))
    fig = Figure(figsize=(10, 0.35 * (len(screen) + len(extra)) + 2), layout="constrained")
    ax = fig.subplots()
    order = sorted(screen, key=ranking, reverse=True)  # the worst (a NaN) first: the bottom row
    names = [r["name"] for r in order] + extra
    ax.barh(names, [r["bits_per_byte"] for r in order] + [math.nan] * len(extra), color="C0", alpha=0.6,
            label=f"screen: {screen[0]['minutes']:g} min")
    for r in confirm:
        if r["name"] in names:
            ax.plot(r["bits_per_byte"], names.index(r["name"]), "o", color="C3" if r["seed"] == 1 else "C2",
                    label=f"{r['minutes']:g} min, seed {r['seed']}")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    mark_unscored(ax, names, screen, confirm)
    shown = [r["bits_per_byte"] for r in screen + confirm if math.isfinite(r["bits_per_byte"])]
    if shown:  # every point, confirmed ones worse than any screened too (not off the right edge)
        ax.set_xlim(min(shown) - 0.05, max(shown) + 0.02)
    ax.set(xlabel=f"{val_name} bits per byte (lower is better)", title=f"tiny on {where}: the sweep")
    ax.grid(alpha=0.3, axis="x")
    storage.atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))
    return fig


def mark_unscored(ax, names: list[str], screen: list[dict], confirm: list[dict]) -> None:
    """Name in its row, at the left of the axes, each run with no score, which has no bar or point: it
    was an empty row, a diverged candidate read as a gap. "diverged" (a screened one's row also gets
    a grey hatched bar across the axes) or "NaN score" (an evaluation that overflowed); a confirmed or
    follow-up run's with its budget and seed."""
    said: dict[str, list[str]] = {}
    for r in screen + confirm:
        if math.isfinite(r["bits_per_byte"]) or r["name"] not in names:
            continue
        row = names.index(r["name"])
        what = "diverged" if diverged(r) else "NaN score"
        screened = any(r is s for s in screen)
        said.setdefault(r["name"], []).append(what if screened else
                                              f"{what} ({r['minutes']:g} min, seed {r['seed']})")
        if screened and diverged(r):
            ax.axhspan(row - 0.4, row + 0.4, facecolor="0.85", edgecolor="0.6", hatch="//", lw=0)
    for name, what in said.items():  # (x in axes coordinates, y in rows: whatever the limits)
        ax.text(0.01, names.index(name), "; ".join(what), transform=ax.get_yaxis_transform(), va="center",
                fontsize=8, color="0.25", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})


def summary(report: dict, opts, where: str) -> str:
    """sweep.md: the command and machine, a table per stage, and the pick."""
    best = min(opts.confirm, len(report["screen"]))  # (fewer screened than --confirm: all of them)
    confirmed = f"the best {best} screened" if best > 1 else "the best screened"
    followup = report["followup"]
    return "\n".join([f"`{report['command']}` on {where}, torch {torch.__version__}; "
                      f"validation on all of {Path(opts.val_data).name} after each run's budget.", "",
                      *table(report["screen"], f"Screening: {opts.screen_minutes:g} minutes each"),
                      *table(report["confirm"], f"Confirmation: {confirmed} (and any confirmed earlier) "
                                                f"for {opts.confirm_minutes:g} minutes; the best again with "
                                                "seed 2" + ("" if opts.no_compile else ", and compiled")),
                      *(table(followup, f"Regularisation of the best: {opts.confirm_minutes:g} minutes, "
                                        "seeds 1 and 2") if followup else []),
                      f"Pick (lowest mean over seeds 1 and 2): **{report['pick']}**, "
                      f"{report['pick_mean_bits_per_byte']:.4f} bits/byte: "
                      f"`{shlex.join(report['pick_overrides'] + opts.extra)}`"])


def results_folder(p, opts) -> Path:
    """img/ for the README's sweep (`--no_compile`, any --out_dir or --cache_dir), else --out_dir (opts.device
    is the runs' device, which main sets: not an option)."""
    return storage.results_path(p, opts, ROOT / "img", extra=opts.extra, fallback=Path(opts.out_dir),
                                ignore=("extra", "no_compile", "out_dir", "cache_dir", "device"))


def check_options(p, opts) -> list[str]:
    """A one-line error (exit 2), before any run, for a bad option of the sweep's own or one passed
    through; the --only shapes."""
    only = [s for s in (opts.only or "").split(",") if s]
    if opts.only is not None and not only:  # (an empty shell variable: it ran the whole sweep, ~3 hours)
        p.error(f"--only is empty; name shapes to screen, e.g. --only {','.join(list(shapes())[:2])}, or "
                "leave --only out to screen them all")
    unknown = sorted(set(only) - set(shapes()))
    if unknown:
        p.error(f"--only: unknown shape(s) {', '.join(unknown)}; choose from {', '.join(shapes())}")
    for name in ("screen_minutes", "confirm_minutes", "confirm"):  # (0 minutes: no budget, no end)
        if not getattr(opts, name) > 0:
            p.error(f"--{name}: must be above 0, got {getattr(opts, name):g}")
        if not math.isfinite(getattr(opts, name)):  # train.py refuses it, but only at that stage's first run
            p.error(f"--{name}: must be a finite number, got {getattr(opts, name):g}")
    check_pass_through(p, opts)
    return only


def parser() -> config.Parser:
    """sweep.py's options (any other goes to train.py: check_pass_through)."""
    p = config.Parser(prog="sweep.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--screen_minutes", type=config.number(float), default=2.5,
                   help="wall-clock budget of each screening run, stages 1-3 (default 2.5)")
    p.add_argument("--confirm_minutes", type=config.number(float), default=10.0,
                   help="wall-clock budget of each run of stages 4-6: confirming, noise, compiled, "
                        "follow-ups (default 10)")
    p.add_argument("--confirm", type=config.number(int), default=3,
                   help="how many screened candidates to confirm (default 3)")
    p.add_argument("--only", default=None, help="comma-separated shape names to screen (default: all)")
    p.add_argument("--no_variations", action="store_true", help="screen shapes only")
    p.add_argument("--no_compile", action="store_true", help="skip the compiled run of the best candidate")
    p.add_argument("--no_followups", action="store_true", help="skip stage 6 (regularisation)")
    p.add_argument("--data", default=str(SHARED / "train-lower.txt"), type=storage.expand_home,
                   help="training text of every run (default ../shared/data/tinystories/train-lower.txt)")
    p.add_argument("--val_data", default=str(SHARED / "valid-lower.txt"), type=storage.expand_home,
                   help="validation text, all of it scored after each run (default valid-lower.txt, "
                        "beside the default --data)")
    p.add_argument("--out_dir", default=str(ROOT / "checkpoints" / "sweep"), type=storage.expand_home,
                   help="folder of the run folders, <candidate>-<minutes>m-s<seed>; a finished one is read "
                        "back, not run again (default checkpoints/sweep/)")
    p.add_argument("--cache_dir", default=str(ROOT / "cache"), type=storage.expand_home,
                   help="tokenizer and token shard cache of the runs, train.py's --cache_dir "
                        "(default cache/)")
    p.add_argument("--out", default=None, type=storage.expand_home,
                   help="folder for sweep.json, sweep.md, sweep.png (default: img/ for the README's sweep, "
                        "the defaults with or without --no_compile; --out_dir for any other)")
    return p


def main(argv=None):
    p = parser()
    opts, opts.extra = p.parse_known_args(argv)
    only = check_options(p, opts)
    stage1 = {k: v for k, v in shapes().items() if not only or k in only}
    device, needs = check_candidates(p, stage1, opts)
    opts.device = device  # (run_one: whether --compile auto was eager, see same_setting)
    where = machine(device)
    if again := repeated(opts):  # (allowed: --vocab_size 512 for all is a smaller sweep)
        print(f"sweep.py: warning: {', '.join(again)} would repeat the run each varies, as the "
              "options passed through come after theirs; leave those out, or add --no_variations or "
              "--no_followups", file=sys.stderr)
    results = results_folder(p, opts)  # (no --out: the results go to --out_dir, which the advice names)
    fix = storage.results_fix(results, opts.out_dir)
    files = {"sweep.json": ("screen", "confirm"), "sweep.md": b"`python scripts/sweep.py"}
    option = storage.results_option(results, opts.out, opts.out_dir)
    if problem := storage.foreign_results(option, results, files, "sweep.py", fix):
        p.error(problem)  # (a user's sweep.md was replaced after every run)
    made = storage.missing_folder(results)
    out = storage.writable_folder(results, fix)  # before the runs, not after (sweep.json comes hours in)
    opts.texts = prepare_data(needs, results, made)  # (after the folder check: the data may take minutes)
    screen = [run_one(name, over, opts.screen_minutes, 1, opts) for name, over in stage1.items()]
    best = best_of(screen, "shape screened")
    if not opts.no_variations:
        stage2 = variations(best["name"], best["overrides"])
        screen += [run_one(name, over, opts.screen_minutes, 1, opts) for name, over in stage2.items()]
        stage3 = combinations(best["name"], best["overrides"], screen)
        screen += [run_one(name, over, opts.screen_minutes, 1, opts) for name, over in stage3.items()]
    # The best --confirm screened, and any other screened candidate an earlier sweep confirmed (none
    # at --confirm_minutes equal to --screen_minutes: every screened run's result is where its would be).
    # A candidate that diverged is never confirmed.
    ranked = [r for r in sorted(screen, key=ranking) if not diverged(r)]
    earlier = opts.confirm_minutes != opts.screen_minutes
    confirm = [run_one(r["name"], r["overrides"], opts.confirm_minutes, 1, opts) for i, r in enumerate(ranked)
               if i < opts.confirm or (earlier and result_path(r["name"], opts.confirm_minutes, 1,
                                                               opts).exists())]
    best = best_of(confirm, "candidate confirmed")
    confirm.append(run_one(best["name"], best["overrides"], opts.confirm_minutes, 2, opts))
    if not opts.no_compile:
        confirm.append(run_one(best["name"] + "+compile", best["overrides"] + ["--compile", "true"],
                               opts.confirm_minutes, 1, opts))
    followup = [run_one(f"{best['name']}+{name}", best["overrides"] + over, opts.confirm_minutes, seed, opts)
                for name, over in ({} if opts.no_followups else FOLLOWUPS).items() for seed in (1, 2)]
    pick = pick_best([r for r in confirm if r["name"] == best["name"]] + followup)
    report = {"screen": screen, "confirm": confirm, "followup": followup, "best": best["name"],
              "best_overrides": best["overrides"], "pick": pick["name"], "pick_overrides": pick["overrides"],
              "pick_mean_bits_per_byte": pick["mean"],
              "machine": {"cpu_count": os.cpu_count(), "device": where, "torch": torch.__version__},
              "command": "python scripts/sweep.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "created": time.strftime("%Y-%m-%d %H:%M")}
    storage.save_json(out / "sweep.json", report)
    md = summary(report, opts, where)
    storage.atomic_write(out / "sweep.md", (md + "\n").encode())
    plot(screen, confirm + followup, out / "sweep.png", Path(opts.val_data).name, where)
    print("\n" + md)
    return report


if __name__ == "__main__":
    run_script(main, "sweep.py")
