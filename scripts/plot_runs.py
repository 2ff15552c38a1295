"""Overlay the loss curves of several runs, read from their metrics.jsonl files.

    python scripts/plot_runs.py checkpoints/run-a checkpoints/run-b    # -> checkpoints/compare.png

Left: training LM loss; right: validation bits per byte; both against tokens seen (or --x step /
minutes). The legend names each run with its key settings (from model.json and train.json), and a
fine-tune (--init_from) the checkpoint it started from: "ft (from base/last.pt): ..." (its curve
counts its own tokens, from 0).
The drawing is runlog.plot_runs (train.py draws each run's loss.png with it); this is its
command line, which takes a run's metrics.jsonl for its folder, draws a run given twice once, and
refuses an --out whose name asks for a format matplotlib cannot write (runlog.plot_runs would write a
PNG under that name).
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config  # noqa: E402
import runlog  # noqa: E402
import storage  # noqa: E402
from errors import UserError, run_script  # noqa: E402


def check_out(p, out: str) -> None:
    """A one-line error, before any work, for an --out that cannot be an image file."""
    if not out:  # (an unset shell variable: it said "--out  is a folder")
        p.error("--out is empty (an unset variable?); name the image file, e.g. --out compare.png, or leave "
                "--out out for its default")
    if out == "-":  # (it wrote an image file named -)
        p.error("--out -: the plot is an image file, not text for standard output; name it, "
                "e.g. --out compare.png")
    if problem := storage.not_an_image("--out", out, example="compare.png"):  # (--out RUN/metrics.jsonl
        # replaced the log read; --out /dev/null, as root, the device; --out cmp.xyz was a PNG so named)
        p.error(problem)
    folder = Path(out).parent  # the nearest folder that exists must be one (a file there was errno 17)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        p.error(f"--out {out}: {folder} is a file, not a folder; pick another --out")


def run_folder(p, run: str) -> str:
    """The run folder of what was typed: RUN/metrics.jsonl (a file, or a folder made by mistake) is
    RUN; another file (RUN/last.pt) is a one-line error naming its run folder; a folder of runs (an
    --out_dir) is a one-line error naming its runs, the newest first (it said "no metrics.jsonl; is it
    a run folder?")."""
    if problem := storage.too_long("a run", run):  # (a traceback, errno 36)
        p.error(problem)
    path = Path(run)
    named = Path(config.TrainArgs.out_dir) / run
    if not path.exists() and named.exists():  # a run's name, as train.py takes it (under checkpoints/),
        path = named  # or its RUN/metrics.jsonl
        if path.is_dir():
            return str(path)
    if path.name == "metrics.jsonl" and (path.is_file() or path.is_dir() and not (path / path.name).exists()):
        return str(path.parent)  # (a folder so named: plot_runs says it is no log, not "is RUN/metrics.jsonl
        # a run folder?")
    if path.is_file():  # (RUN/last.pt, tab completion gone a level too far: "RUN/last.pt/metrics.jsonl
        # does not exist; is RUN/last.pt a run folder?")
        fix = f"pass its folder {path.parent}" if (path.parent / "metrics.jsonl").is_file() else \
            "pass a run folder (one with metrics.jsonl)"
        p.error(f"{run} is a file, not a run folder; {fix}")
    if path.is_dir() and not (path / "metrics.jsonl").exists():
        try:
            runs = [d for d in path.iterdir() if (d / "metrics.jsonl").is_file()]
        except OSError:  # (unreadable: plot_runs says so)
            runs = []
        runs.sort(key=lambda d: (d / "metrics.jsonl").stat().st_mtime, reverse=True)
        if runs:
            more = f" and {len(runs) - 5} more" if len(runs) > 5 else ""
            p.error(f"{run} is a folder of runs, not a run; pass {runs[0]} (the newest) or others of its "
                    f"runs ({', '.join(d.name for d in runs[:5])}{more})")
    return run


def once(runs: list[tuple[str, str]]) -> list[str]:
    """The run folders of (what was typed, its run folder), each once, with a warning for one given
    again (ck/a and ck/a/metrics.jsonl, a glob that holds a run named beside it): it was drawn twice,
    one curve over the other, under one label in the legend."""
    seen = {}
    for typed, folder in runs:
        if (key := os.path.realpath(folder)) in seen:
            print(f"plot_runs.py: warning: {typed} is the run {seen[key][0]} given again; it is drawn once",
                  file=sys.stderr)
        else:
            seen[key] = typed, folder
    return [folder for _, folder in seen.values()]


def check_title(p, title: str | None) -> None:
    """A --title whose $...$ math matplotlib cannot parse is refused in one line (savefig's error was
    four lines, none naming --title); a title with an even count of unescaped $ is math to matplotlib."""
    unescaped = (title or "").replace(r"\$", "").count("$")
    if not unescaped or unescaped % 2:  # (no math: drawn as written)
        return
    runlog.writable_home_dirs("MPLCONFIGDIR")
    from matplotlib.mathtext import MathTextParser
    try:
        MathTextParser("path").parse(title)
    except ValueError as e:
        why = ([line for line in str(e).splitlines() if line.strip()] or ["a parse error"])[-1]
        why = why.split(": ", 1)[-1].split("  (at char")[0].strip()  # (pyparsing's type and position go)
        why = why if len(why) <= 80 else why[:77] + "..."
        p.error(f"--title '{title}': matplotlib cannot read its $...$ math ({why}); write each $ as \\$ for "
                "a plain dollar sign")


def main(argv=None):
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=storage.expand_home,
                   help="run folders (each with metrics.jsonl), or their metrics.jsonl")
    p.add_argument("--out", default=None, type=storage.expand_home,
                   help="image to write, its format by its name (.png, .svg, .pdf; default compare.png "
                        "beside the first run's folder: checkpoints/compare.png for checkpoints/<run>)")
    p.add_argument("--x", choices=list(runlog.X_LABELS), default="tokens",
                   help="x axis: tokens seen, optimizer step or wall-clock minutes (default tokens)")
    p.add_argument("--title", default=None, help="a title above both plots (default: none)")
    args = p.parse_args(argv)
    args.runs = once([(run, run_folder(p, run)) for run in args.runs])
    if args.out is None:  # (compare.png in the current folder: an untracked file in the source tree)
        first = Path(os.path.normpath(args.runs[0]))
        first = Path(os.path.abspath(first)) if first.name in ("", "..") else first  # (`plot_runs.py .`)
        args.out = str(first.parent / "compare.png")
    check_out(p, args.out)
    check_title(p, args.title)
    try:
        out = runlog.plot_runs(args.runs, args.out, args.x, args.title,
                               warn=lambda m: print(f"plot_runs.py: warning: {m}", file=sys.stderr))
    except (OSError, ValueError, UserError) as e:  # a bad metrics.jsonl line (or one without a field
        # train.py writes: read_metrics names its file and line), a full disk ...
        sys.exit(f"plot_runs.py: error: {e}")
    print(out)  # (outside the try: a closed pipe is run_script's quiet 141, not an error)


if __name__ == "__main__":
    run_script(main, "plot_runs.py")
