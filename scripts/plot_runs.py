"""Overlay the loss curves of several runs, read from their metrics.jsonl files.

    python scripts/plot_runs.py checkpoints/run-a checkpoints/run-b --out img/compare.png

Left: training LM loss; right: validation bits per byte; both against tokens seen (or --x step /
minutes). The legend names each run with its key settings (from model.json and train.json).
train.py calls plot_runs([run_dir], ...) for img/loss.png at each evaluation.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import config  # noqa: E402

X_LABELS = {"tokens": "tokens seen", "step": "optimizer step", "minutes": "wall-clock minutes"}


def read_metrics(run_dir) -> tuple[list, list]:
    """(train records, val records) of a run."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a run folder?")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "val"]


def run_label(run_dir) -> str:
    """Run name and the settings that tell runs apart."""
    run_dir = Path(run_dir)
    try:
        m = json.loads((run_dir / "model.json").read_text())
        t = json.loads((run_dir / "train.json").read_text())
    except (OSError, ValueError):
        return run_dir.name
    moe = (f"{m['n_experts']}e top-{m['top_k']}" + ("" if m["router_noise"] else " no-noise")
           if m["moe_every"] <= m["n_layers"] else "dense")
    return (f"{run_dir.name}: d{m['dim']} L{m['n_layers']} {moe}, aux {m['router_aux_loss_coef']:g}, "
            f"lr {t['lr']:g}, batch {t['batch_size'] * t['grad_accum']}x{m['max_seq_len']}")


def plot_runs(run_dirs, out, x="tokens", title=None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, run_dir in enumerate(run_dirs):
        train, val = read_metrics(run_dir)
        color = f"C{i}"
        label = run_label(run_dir)
        if train:
            left.plot([r[x] for r in train], [r["lm_loss"] for r in train], color=color, alpha=0.8,
                      label=label)
        if val:
            right.plot([r[x] for r in val], [r["bits_per_byte"] for r in val], "o-", color=color, label=label)
            if len(run_dirs) == 1:  # a single run: its validation nats/token next to the train curve
                left.plot([r[x] for r in val], [r["nats_per_token"] for r in val], "o-",
                          color="C1", label="validation")
    left.set(xlabel=X_LABELS[x], ylabel="LM loss (nats/token)", title="training loss")
    right.set(xlabel=X_LABELS[x], ylabel="bits per byte", title="validation bits per byte")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config.atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    p.add_argument("--out", default="img/compare.png")
    p.add_argument("--x", choices=list(X_LABELS), default="tokens")
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    try:
        print(plot_runs(a.runs, a.out, a.x, a.title))
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"plot_runs.py: error: {e}")


if __name__ == "__main__":
    main()
