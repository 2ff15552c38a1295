"""Overlay the loss curves of several runs, read from their metrics.jsonl files.

    python scripts/plot_runs.py checkpoints/run-a checkpoints/run-b    # -> checkpoints/compare.png

Left: training LM loss; right: validation bits per byte; both against tokens seen (or --x step /
minutes). The legend names each run with its key settings (from model.json and train.json).
The drawing is runlog.plot_runs (train.py draws each run's loss.png with it); this is its
command line.
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
    if out == "-":  # (it wrote an image file named -)
        p.error("--out -: the plot is an image file, not text for standard output; name it, "
                "e.g. --out compare.png")
    if problem := storage.not_an_image("--out", out):  # (--out RUN/metrics.jsonl replaced the log read;
        # --out /dev/null, as root, the device)
        p.error(problem)
    if Path(out).is_dir():
        p.error(f"--out {out} is a folder; name the image file, e.g. --out {Path(out) / 'compare.png'}")
    folder = Path(out).parent  # the nearest folder that exists must be one (a file there was errno 17)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        p.error(f"--out {out}: {folder} is a file, not a folder; pick another --out")


def main(argv=None):
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    p.add_argument("--out", default=None, help="image to write, its format by its name (.png, .svg, .pdf; "
                                               "default compare.png beside the first run's folder: "
                                               "checkpoints/compare.png for checkpoints/<run>)")
    p.add_argument("--x", choices=list(runlog.X_LABELS), default="tokens")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    if args.out is None:  # (compare.png in the current folder: an untracked file in the source tree)
        first = Path(os.path.normpath(args.runs[0]))
        first = Path(os.path.abspath(first)) if first.name in ("", "..") else first  # (`plot_runs.py .`)
        args.out = str(first.parent / "compare.png")
    check_out(p, args.out)
    try:
        out = runlog.plot_runs(args.runs, args.out, args.x, args.title,
                               warn=lambda m: print(f"plot_runs.py: warning: {m}", file=sys.stderr))
    except KeyError as e:  # a record without a field every train.py record has
        sys.exit(f"plot_runs.py: error: a metrics.jsonl record has no {e} field; pass run folders that "
                 "this project's train.py wrote")
    except (OSError, ValueError, UserError) as e:  # a bad metrics.jsonl line, a full disk ...
        sys.exit(f"plot_runs.py: error: {e}")
    print(out)  # (outside the try: a closed pipe is run_script's quiet 141, not an error)


if __name__ == "__main__":
    run_script(main, "plot_runs.py")
