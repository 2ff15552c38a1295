"""runlog.py: what metrics.jsonl and the W&B run get, row by row (fast: no training)."""

import json
import math
import sys
from types import SimpleNamespace

import runlog


class Rows:
    """A W&B run that keeps the rows logged to it."""

    def __init__(self, run_id="w"):
        self.id, self.rows = run_id, []

    def define_metric(self, name, step_metric=None):
        pass

    def log(self, data, step=None):
        self.rows.append(data)

    def finish(self, exit_code=0):
        pass


def write_records(run_dir, records):
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_wandb_row_holds_each_records_numbers_under_its_kind_and_each_experts_share_and_entropy():
    """Catches a W&B row at another step than its record's, a number dropped (an int: tokens,
    window_steps), a val figure logged as train/, and expert shares or router entropies logged as
    their indices rather than their values."""
    rec = {"kind": "train", "step": 7, "loss": 2.5, "tokens": 1024, "window_steps": 4, "mfu": None,
           "expert_share": [[0.75, 0.25], [0.375, 0.625]], "router_entropy": [0.625, 0.25]}
    assert runlog._wandb_row(rec) == {
        "step": 7, "train/loss": 2.5, "train/tokens": 1024, "train/window_steps": 4,
        "experts/layer0/expert0": 0.75, "experts/layer0/expert1": 0.25, "experts/layer1/expert0": 0.375,
        "experts/layer1/expert1": 0.625, "router_entropy/layer0": 0.625, "router_entropy/layer1": 0.25}
    assert runlog._wandb_row({"kind": "val", "step": 8, "bits_per_byte": 1.5, "val_tokens": 900}) == {
        "step": 8, "val/bits_per_byte": 1.5, "val/val_tokens": 900}


def test_a_resumed_runs_new_wandb_run_gets_the_records_kept_and_no_others(tmp_path):
    """Catches the backfill of a resumed run's new W&B run logging the records dropped from
    metrics.jsonl too (those after the checkpoint, which the resumed run writes again: twice in W&B),
    or none of the records kept."""
    write_records(tmp_path, [{"kind": "train", "step": s, "loss": float(s)} for s in range(1, 5)]
                  + [{"kind": "val", "step": 2, "bits_per_byte": 1.0}])
    run = Rows()
    runlog.Metrics(tmp_path, run, 2, log=lambda msg: None, backfill=True)
    assert [(row["step"], sorted(row)) for row in run.rows] == [
        (1, ["step", "train/loss"]), (2, ["step", "train/loss"]), (2, ["step", "val/bits_per_byte"])]
    train, val = runlog.read_metrics(tmp_path)
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in val] == [2]
    run = Rows()
    runlog.Metrics(tmp_path, run, 2, log=lambda msg: None)  # the checkpoint's own W&B run: nothing again
    assert run.rows == []


def test_a_new_run_starts_metrics_jsonl_afresh_and_each_record_is_a_line_and_a_wandb_row(tmp_path,
                                                                                        monkeypatch):
    """Catches a new run (keep_until_step None) appending to the metrics.jsonl an earlier run left in
    its folder, a record written to the file but not to W&B, and the loss plot's image logged
    without the step of its evaluation (charted against W&B's own row count)."""
    write_records(tmp_path, [{"kind": "train", "step": 9, "loss": 1.0}])
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Image=lambda path: f"image of {path}"))
    run = Rows()
    m = runlog.Metrics(tmp_path, run, None)
    m.write({"kind": "train", "step": 1, "loss": 3.0, "grad_norm": math.nan})
    m.write({"kind": "val", "step": 1, "bits_per_byte": 2.0})
    m.log_image("loss_plot", tmp_path / "loss.png", 1)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 1]
    assert [row["step"] for row in run.rows] == [1, 1, 1]
    assert run.rows[0]["train/loss"] == 3.0 and run.rows[1] == {"step": 1, "val/bits_per_byte": 2.0}
    assert run.rows[2] == {"step": 1, "loss_plot": f"image of {tmp_path / 'loss.png'}"}
