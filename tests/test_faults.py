"""Faults a run must survive, or report in one line (exit status 2 for a bad setting, 1 otherwise,
130 when interrupted): a run folder another process holds, torn logs, full disks, signals during
saves, swapped tokenizers, checkpoints of other models, impossible sizes, a finished run resumed.
Each test reproduces the fault; see the README's Faults section for what is guaranteed."""

import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import typing
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, Crash, crash_after_saving, crash_in_step, stop_at, write_stories
from test_runlog import wandb_module
from test_storage import FullAfter
from test_train import args as train_args
from test_train import metrics

import checkpoint
import config
import data
import errors
import runplan
import runtime
import sample
import train
from config import ModelArgs, TrainArgs
from errors import ConfigError
from tokenizer import Tokenizer


@pytest.fixture(autouse=True)
def no_peak_timing(monkeypatch):
    """Skip the 0.3 s GEMM timing each run makes for MFU: nothing here reads MFU."""
    monkeypatch.setattr(runtime, "peak_flops", lambda device, dtype: 1e12)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_stories(tmp_path_factory.mktemp("corpus") / "stories.txt", seed=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def done(tmp_path_factory, corpus, cache):
    """A finished debug run (6 steps, saves and evaluations at 4 and 6) with the default --plot,
    written under umask 022; and the modification times of img/ before it ran."""
    tmp = tmp_path_factory.mktemp("done")
    img = {p.name: p.stat().st_mtime_ns for p in (ROOT / "img").iterdir()}
    old = os.umask(0o022)
    try:
        train.main(["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp / "ckpt"),
                    "--cache_dir", str(cache), "--max_steps", "6", "--run", "r"])
    finally:
        os.umask(old)
    return SimpleNamespace(run_dir=tmp / "ckpt" / "r", img=img)


def args(*a, **k):
    """test_train's arguments without the loss plot (a quarter of a second per evaluation)."""
    return train_args(*a, **k)[:-2] + ["--plot", "", *train_args(*a, **k)[-2:]]


def copy_run(done, tmp_path, name="r"):
    dest = tmp_path / "ckpt" / name
    shutil.copytree(done.run_dir, dest)
    return dest


def one_line_error(capsys, code, e):
    """The last stderr line (a progress bar may come before it): the error, with no traceback."""
    err = capsys.readouterr().err
    assert e.value.code == code, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# --- one process per run folder ---------------------------------------------------------------

HOLD = """
import sys, time
import storage
held = storage.lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_train_on_a_busy_run_folder_stops_naming_the_first(tmp_path, corpus, cache, capsys):
    run_dir = tmp_path / "ckpt" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / ".tmp-1-last.pt").write_bytes(b"the first run's save in progress")
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir / "run.lock")], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as e:
            train.main(args(tmp_path, corpus, cache, "--max_steps", "2"))
        line = one_line_error(capsys, 1, e)
        assert f"is in use by another train.py (pid {child.pid} on " in line
        # nothing written, and the first run's temporary file not swept away
        assert sorted(p.name for p in run_dir.iterdir()) == [".tmp-1-last.pt", "run.lock"]
    finally:
        child.kill()
        child.wait()
    train.main(args(tmp_path, corpus, cache, "--max_steps", "2"))  # a dead process's lock blocks nothing
    assert checkpoint.load_checkpoint(run_dir / "last.pt")["step"] == 2


def test_a_failed_run_leaves_no_empty_run_folder(tmp_path, corpus, cache, capsys):
    with pytest.raises(SystemExit):
        train.main(args(tmp_path, tmp_path / "missing.txt", cache, "--max_steps", "1"))
    assert "--data: no such file" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()  # (the --out_dir it made too; one there before stays)


# --- logs ---------------------------------------------------------------------------------------

def test_resume_survives_a_torn_metrics_line_and_plot_runs_names_a_bad_file(tmp_path, done, capsys):
    from scripts import plot_runs
    run_dir = copy_run(done, tmp_path)
    path = run_dir / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"kind": "train", "step": 7, "lo')  # a disk filled during the append
    train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume", "--max_steps", "8"])
    assert "dropped a torn last line" in capsys.readouterr().out
    assert [r["step"] for r in metrics(tmp_path)] == list(range(1, 9))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:25], *lines[2:]]) + "\n")
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(run_dir), "--out", str(tmp_path / "runs.png")])
    assert f"{path}: line 2 is not a JSON record" in str(e.value.code)
    path.write_text(json.dumps({"kind": "train", "step": 1, "lm_loss": 5.0}) + "\n")  # another program's
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(run_dir), "--out", str(tmp_path / "runs.png")])
    assert f"{path}: line 1 has no 'tokens' field" in str(e.value.code)
    path.write_text("")
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(run_dir), "--out", str(tmp_path / "runs.png")])
    assert "no train or validation records in" in str(e.value.code) and not (tmp_path / "runs.png").exists()


def test_the_default_plot_is_in_the_run_folder_and_files_are_readable_by_others(done):
    assert (done.run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.name: p.stat().st_mtime_ns for p in (ROOT / "img").iterdir()} == done.img  # img/ untouched
    for name in ("last.pt", "best.pt", "model.json", "train.json", "tokenizer.json", "loss.png"):
        assert (done.run_dir / name).stat().st_mode & 0o777 == 0o644, name  # umask 022, not 0600


def test_a_run_stopped_by_its_budget_logs_its_last_partial_window(tmp_path, corpus, cache, monkeypatch):
    clock = iter(range(0, 10**6, 10))  # 10 s a reading: the 1-minute budget is spent in a few steps
    monkeypatch.setattr(train.Clock, "elapsed", lambda self: self.before + next(clock))
    result = train.main(args(tmp_path, corpus, cache, "--max_minutes", "1", "--max_steps", "1000",
                             "--log_every", "100", "--eval_every", "1000"))
    assert result["finished"] == "max_minutes" and 1 <= result["step"] < 100
    records = metrics(tmp_path)
    assert [(r["step"], r["window_steps"]) for r in records] == [(result["step"], result["step"])]
    assert [r["step"] for r in metrics(tmp_path, kind="val")] == [result["step"]]


def test_a_bad_metrics_line_before_the_last_is_one_line_on_resume(tmp_path, done, capsys, monkeypatch):
    """Bug caught too: it was refused only after the data was prepared and the model built."""
    monkeypatch.setattr(data, "prepare", lambda *a, **k: pytest.fail("the data was prepared"))
    path = copy_run(done, tmp_path) / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:25], *lines[2:]]) + "\n")
    with pytest.raises(SystemExit) as e:
        train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume", "--max_steps", "8"])
    assert one_line_error(capsys, 1, e).endswith("line 2 is not a JSON record; fix or delete that line")


def test_the_budget_ending_on_an_evaluation_step_evaluates_it_once(tmp_path, corpus, cache, monkeypatch):
    clock = iter(range(0, 10**6, 10))  # 10 s a reading: the 1-minute budget is spent in a few steps
    monkeypatch.setattr(train.Clock, "elapsed", lambda self: self.before + next(clock))
    result = train.main(args(tmp_path, corpus, cache, "--max_minutes", "1", "--max_steps", "1000",
                             "--eval_every", "1"))
    assert result["finished"] == "max_minutes"
    assert [r["step"] for r in metrics(tmp_path, kind="val")] == list(range(1, result["step"] + 1))


# --- resume -------------------------------------------------------------------------------------

def test_resuming_a_finished_run_writes_nothing(tmp_path, done, capsys, monkeypatch):
    """Bug caught too: it prepared the data first (a lost cache was tokenized again, for nothing)."""
    monkeypatch.setattr(data, "prepare", lambda *a, **k: pytest.fail("the data was prepared"))
    run_dir = copy_run(done, tmp_path)
    log = run_dir / "metrics.jsonl"  # (a bad line in a log it never touches: no refusal, review's catch)
    log.write_text('{"broken\n' + log.read_text())
    def files():
        return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != "run.lock"}
    before = files()
    result = train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume"])
    assert result["step"] == 6 and "already reached its --max_steps at step 6" in capsys.readouterr().out
    assert files() == before  # no second val record, no checkpoint written again


def test_a_stopped_run_resumed_at_a_max_steps_lowered_to_its_step_ends_there(tmp_path, corpus, cache,
                                                                             monkeypatch, capsys):
    """A run a signal stopped at step 3, resumed with --max_steps 3, ends as a run of 3 steps does:
    the final evaluation, best.pt and last.pt; resumed again, it has finished.
    Bug caught: it was taken for a finished run: nothing written, no final evaluation, no best.pt."""
    base = ["--max_steps", "8", "--log_every", "2", "--eval_every", "100", "--save_every", "100"]
    undo = stop_at(monkeypatch, 3)
    assert train.main(args(tmp_path, corpus, cache, *base))["finished"] == "signal"
    undo()
    run_dir = tmp_path / "ckpt" / "r"
    assert not (run_dir / "best.pt").exists() and not metrics(tmp_path, kind="val")
    result = train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume", "--max_steps", "3"])
    assert result["finished"] == "max_steps" and result["step"] == 3
    assert "already reached" not in capsys.readouterr().out
    assert [r["step"] for r in metrics(tmp_path, kind="val")] == [3]
    assert [(r["step"], r["window_steps"]) for r in metrics(tmp_path)] == [(2, 2), (3, 1)]  # (kept, not lost)
    last, best = (checkpoint.load_checkpoint(run_dir / n) for n in ("last.pt", "best.pt"))
    assert last["step"] == best["step"] == 3 and last["best_val"] == result["best_val"] < math.inf
    again = train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume", "--max_steps", "3"])
    assert again["step"] == 3 and "already reached its --max_steps at step 3" in capsys.readouterr().out
    # the budget alike: stopped after 1 of its 10 minutes, resumed with --max_minutes 1, it ends there
    def limit(budget: float, now: TrainArgs):
        ckpt = {**train.LoopState(step=3, elapsed=60).to_checkpoint(0),
                "train_args": config.to_dict(TrainArgs(max_steps=8, max_minutes=budget))}
        return runplan.finished_limit(SimpleNamespace(ckpt=ckpt, train_args=now))
    assert limit(10, TrainArgs(max_steps=8, max_minutes=1)) is None
    assert limit(1, TrainArgs(max_steps=8, max_minutes=1)) == "max_minutes"  # (it ended on its budget)


SAME = ("step", "loss", "lm_loss", "aux_loss", "z_loss", "lr", "grad_norm", "tokens", "expert_share",
        "router_entropy", "skipped_steps", "window_steps")


def test_a_resumed_run_writes_the_records_of_an_uninterrupted_one(tmp_path, corpus, cache, monkeypatch):
    """Records every 3 steps, saves every 4: each resume starts inside a log window."""
    base = ["--max_steps", "7", "--log_every", "3", "--save_every", "4", "--eval_every", "100"]
    train.main(args(tmp_path, corpus, cache, *base, run="whole"))
    whole = [{k: r[k] for k in SAME} for r in metrics(tmp_path, "whole")]
    assert [r["window_steps"] for r in whole] == [3, 3, 1]
    undo = crash_after_saving(monkeypatch, 4)
    with pytest.raises(Crash):
        train.main(args(tmp_path, corpus, cache, *base, run="crashed"))
    undo()
    undo = stop_at(monkeypatch, 5)
    train.main(args(tmp_path, corpus, cache, *base, run="stopped"))
    assert [(r["step"], r["window_steps"]) for r in metrics(tmp_path, "stopped")] == [(3, 3), (5, 2)]
    undo()
    for run in ("crashed", "stopped"):
        train.main(args(tmp_path, corpus, cache, *base, "--resume", run=run))
        assert [{k: r[k] for k in SAME} for r in metrics(tmp_path, run)] == whole, run  # bit for bit


def test_an_evaluation_a_signal_put_off_is_run_by_the_resumed_run(tmp_path, corpus, cache, monkeypatch):
    """A signal on an evaluation step stops without evaluating (stopping soon is what it asks);
    the resumed run evaluates that step first, so the val records are an uninterrupted run's. A
    signal at the last step changes nothing: the final evaluation and best.pt are written."""
    base = ["--max_steps", "6", "--log_every", "3", "--eval_every", "2", "--save_every", "100"]
    train.main(args(tmp_path, corpus, cache, *base, run="whole"))
    whole = [(r["step"], r["nats_per_token"]) for r in metrics(tmp_path, "whole", kind="val")]
    assert [s for s, _ in whole] == [2, 4, 6]
    undo = stop_at(monkeypatch, 4)
    assert train.main(args(tmp_path, corpus, cache, *base, run="stopped"))["finished"] == "signal"
    assert [r["step"] for r in metrics(tmp_path, "stopped", kind="val")] == [2]
    undo()
    undo = crash_in_step(monkeypatch, 5)  # after the put-off evaluation, before any save
    with pytest.raises(Crash):
        train.main(args(tmp_path, corpus, cache, *base, "--resume", run="stopped"))
    undo()
    train.main(args(tmp_path, corpus, cache, *base, "--resume", run="stopped"))  # step 4 not evaluated again
    assert [(r["step"], r["nats_per_token"]) for r in metrics(tmp_path, "stopped", kind="val")] == whole
    undo = stop_at(monkeypatch, 6)
    real_eval = train.run_eval

    def killed_in_the_final_evaluation(job, state, stop):  # a grace period too short for the evaluation
        if state.step == 6:
            raise Crash()
        return real_eval(job, state, stop)
    monkeypatch.setattr(train, "run_eval", killed_in_the_final_evaluation)
    with pytest.raises(Crash):
        train.main(args(tmp_path, corpus, cache, *base, run="last"))
    undo()
    monkeypatch.setattr(train, "run_eval", real_eval)
    assert checkpoint.load_checkpoint(tmp_path / "ckpt" / "last" / "last.pt")["eval_due"]  # saved first
    result = train.main(args(tmp_path, corpus, cache, *base, "--resume", run="last"))
    assert result["finished"] == "max_steps" and result["best_val"] == min(v for _, v in whole)
    assert [(r["step"], r["nats_per_token"]) for r in metrics(tmp_path, "last", kind="val")] == whole
    assert (tmp_path / "ckpt" / "last" / "best.pt").exists()


def test_a_signal_during_an_evaluation_cuts_it_short_and_the_resumed_run_runs_it(tmp_path, corpus, cache,
                                                                                  monkeypatch):
    """Bug caught: a SIGTERM during an evaluation waited for the whole pass (minutes on a large
    --val_data; torchrun kills its workers 30 s after a signal, so the save was lost). Now the pass
    stops at its next batch, writes no val record, and is put off into last.pt as one a signal at
    its step puts off: the resumed run's records are an uninterrupted run's, bit for bit. The final
    evaluation too: cut short, last.pt saved with it put off, then run whole (here killed, as by
    torchrun's SIGKILL: the resumed run runs it)."""
    base = ["--max_steps", "6", "--log_every", "4", "--eval_every", "2", "--save_every", "100",
            "--batch_size", "1", "--eval_batch_size", "1"]  # evaluations of 4 batches (4 windows)

    def records(run):
        return {kind: [{k: r.get(k) for k in (*SAME, "nats_per_token")} for r in metrics(tmp_path, run, kind)]
                for kind in ("train", "val")}
    train.main(args(tmp_path, corpus, cache, *base, run="whole"))
    whole = records("whole")
    assert [r["step"] for r in whole["val"]] == [2, 4, 6]
    real = train.evaluate

    class SignalledAtItsSecondBatch(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.batches = model, 0

        def forward(self, x, targets):
            self.batches += 1
            if self.batches == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.model(x, targets=targets)
    for run, step in (("cut", 4), ("final", 6)):
        evals, cut = [], []

        def evaluate(model, *a, evals=evals, cut=cut, step=step):
            evals.append(1)
            if len(evals) > step // 2:  # the final evaluation taken again, whole: killed
                raise Crash()
            if len(evals) < step // 2:
                return real(model, *a)
            cut.append(SignalledAtItsSecondBatch(model))
            return real(cut[-1], *a)
        monkeypatch.setattr(train, "evaluate", evaluate)
        if run == "cut":
            assert train.main(args(tmp_path, corpus, cache, *base, run=run))["finished"] == "signal"
        else:
            with pytest.raises(Crash):
                train.main(args(tmp_path, corpus, cache, *base, run=run))
        monkeypatch.setattr(train, "evaluate", real)
        assert cut[0].batches == 2, run  # it stopped at the next batch
        assert [r["step"] for r in metrics(tmp_path, run, "val")] == list(range(2, step, 2)), run
        saved = checkpoint.load_checkpoint(tmp_path / "ckpt" / run / "last.pt")
        assert (saved["step"], saved["eval_due"]) == (step, True), run
        train.main(args(tmp_path, corpus, cache, *base, "--resume", run=run))
        assert records(run) == whole, run
        assert checkpoint.load_checkpoint(tmp_path / "ckpt" / run / "best.pt")["step"] == \
            min(whole["val"], key=lambda r: r["nats_per_token"])["step"], run


def test_a_signal_during_the_evaluation_at_the_step_the_budget_ends_changes_nothing(tmp_path, corpus, cache,
                                                                                     monkeypatch, capsys):
    """Bug caught: a signal during the evaluation of the step where --max_minutes ran out cut it short
    and stopped the run as "signal", to be resumed, though at the run's last step a signal changes
    nothing (README): now last.pt is saved with it put off, then it runs whole and the run ends on its
    budget, with its val record and best.pt."""
    monkeypatch.setattr(train.Clock, "spent", lambda clock, state: state.step >= 4)  # the budget
    real, batches = train.evaluate, []

    class SignalledAtItsSecondBatch(torch.nn.Module):  # (its first evaluation's second batch alone)
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x, targets):
            batches.append(1)
            if len(batches) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.model(x, targets=targets)

    def evaluate(model, *a):
        return real(SignalledAtItsSecondBatch(model), *a)
    monkeypatch.setattr(train, "evaluate", evaluate)
    result = train.main(args(tmp_path, corpus, cache, "--max_steps", "10", "--log_every", "4", "--eval_every",
                             "4", "--max_minutes", "1", "--batch_size", "1", "--eval_batch_size", "1"))
    assert (result["finished"], result["step"], result["signalled"]) == ("max_minutes", 4, True)
    assert "SIGTERM: finishing this evaluation's batch (the evaluation is put off)" in capsys.readouterr().out
    assert [r["step"] for r in metrics(tmp_path, kind="val")] == [4] and len(batches) == 2 + 4  # cut, whole
    saved = checkpoint.load_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    assert (saved["step"], saved["eval_due"]) == (4, False)
    assert (tmp_path / "ckpt" / "r" / "best.pt").exists()


def test_under_torchrun_a_sigterm_during_a_long_evaluation_saves_within_torchruns_grace(tmp_path, corpus,
                                                                                       cache):
    """Bug caught: `torchrun --nproc_per_node 2` sent SIGTERM during an evaluation of a large --val_data:
    the workers finished the whole pass before stopping, past the 30 s torchrun gives them before a
    SIGKILL (the save lost). Now every rank leaves the pass at its next batch, they agree in its one
    collective (no hang, whichever batch each stopped at), and last.pt is saved with it put off."""
    val = write_stories(tmp_path / "val.txt", n=2500, seed=2)  # about 4,000 windows: seconds per rank
    run_dir = tmp_path / "ckpt" / "r"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
           str(ROOT / "train.py"), *args(tmp_path, corpus, cache, "--val_data", str(val), "--batch_size", "1",
                                         "--eval_windows", "0", "--grad_accum", "2", "--max_steps", "1000",
                                         "--eval_every", "2", "--save_every", "1000")]
    job = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not any(r["step"] == 2 for r in (metrics(tmp_path) if (run_dir / "metrics.jsonl").exists()
                                                else [])):  # step 2 logged: its evaluation is next
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read() if job.poll() else ""
            time.sleep(0.05)
        job.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out = job.communicate(timeout=120)[0]
        took = time.monotonic() - sent
    finally:
        job.kill()
    assert "stopped by a signal at step 2" in out, out[-3000:]
    assert took < 20, f"{took:.1f} s from the signal to the end"  # (torchrun's grace: 30 s)
    saved = checkpoint.load_checkpoint(run_dir / "last.pt")
    assert (saved["step"], saved["eval_due"], metrics(tmp_path, kind="val")) == (2, True, [])


EVAL_RANK = """
import json, sys, time
from contextlib import nullcontext
from types import SimpleNamespace
import torch, torch.distributed as dist
import runtime, train
rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
runtime.PEER_STOP_SECONDS = 0.05
class Slow(torch.nn.Module):  # 5 ms a batch, counted
    calls = 0
    def forward(self, x, targets):
        Slow.calls += 1
        time.sleep(0.005)
        return SimpleNamespace(lm_loss=torch.tensor(1.0))
val = SimpleNamespace(x=torch.zeros(400, 4, dtype=torch.long), y=torch.zeros(400, 4, dtype=torch.long),
                      batch_size=1, tokens=1600, bytes=1600, world=runtime.World(rank, 2))
stop = SimpleNamespace(requested=rank == 1, during=lambda until: nullcontext())  # a SIGTERM to rank 1 alone
result = train.evaluate(Slow(), val, nullcontext(), "cpu", stop)
print(json.dumps({"result": result, "batches": Slow.calls}), flush=True)
dist.destroy_process_group()
"""


def test_a_sigterm_to_one_torchrun_worker_cuts_the_others_evaluation_short_too(tmp_path):
    """Bug caught: a SIGTERM to one worker of a torchrun job (or to one machine's torchrun, which forwards it
    to that machine's workers alone) during an evaluation cut that worker's pass short, but the others
    evaluated their whole share before the one collective told them (minutes on a large --val_data, past
    the 30 s torchrun gives the signalled workers before a SIGKILL: the save lost). Now the others see it
    in the job's store within a second (here 0.05 s) and every rank stops."""
    procs = [subprocess.Popen([sys.executable, "-c", EVAL_RANK, str(rank), str(tmp_path / "store")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for rank in (0, 1)]
    try:
        outs = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [o["result"] for o in outs] == [None, None]  # cut short on both: the evaluation is put off
    assert outs[1]["batches"] == 0 and outs[0]["batches"] < 100, outs  # (not all 400 of its share)


RANK0_FIRST_RANK = """
import sys, time
from contextlib import contextmanager
from pathlib import Path
import data, runtime, train
marks, block = Path(sys.argv[1]), runtime.rank0_first
def prepare(*args, **kwargs):  # rank 0's data preparation: slow (the hub's download, a BPE), never done here
    (marks / "preparing").touch()
    time.sleep(60)
    raise SystemExit("rank 0's preparation ran to its end: the test never stopped it")
@contextmanager
def rank0_first(world, device):  # (the test signals rank 1 once it is there)
    (marks / f"rank0_first{world.rank}").touch()
    with block(world, device):
        yield
data.prepare, runtime.rank0_first = prepare, rank0_first
train.main(sys.argv[2:])
"""


def test_a_sigterm_to_a_rank_waiting_for_rank_0s_data_stops_it_at_once(tmp_path, corpus, cache):
    """Bug caught (a torchrun chaos probe): a SIGTERM to a worker other than rank 0 while rank 0 alone
    prepared the data (runtime.rank0_first) took effect only once rank 0 was done, minutes later: the
    worker waited in a gloo collective, where Python runs no signal handler. Now it waits on the job's
    store, where Python runs them: it stops at once (status 130, silently: rank 0 speaks for the job),
    and torchrun's agent then stops rank 0 (here the test, as the agent does: a SIGTERM), which says
    the job's one line (another process stopped)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_USE_AGENT_STORE"}
    env.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               TORCHELASTIC_RUN_ID="test", OMP_NUM_THREADS="1")  # (torchrun's, as its workers get them)
    procs = [subprocess.Popen([sys.executable, "-c", RANK0_FIRST_RANK, str(marks),
                               *args(tmp_path, corpus, cache, "--grad_accum", "2")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
             for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not ((marks / "preparing").exists() and (marks / "rank0_first1").exists()):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, [
                p.communicate() for p in procs]
            time.sleep(0.05)
        time.sleep(0.5)  # (rank 1 waiting for rank 0's data)
        procs[1].send_signal(signal.SIGTERM)
        err1 = procs[1].communicate(timeout=30)[1]  # (its exit: a second or more on a loaded machine)
        assert procs[0].poll() is None, procs[0].communicate()  # (rank 0 still preparing: 60 s)
        procs[0].send_signal(signal.SIGTERM)
        err0 = procs[0].communicate(timeout=30)[1]
    finally:
        for p in procs:
            p.kill()
    assert (procs[1].returncode, "train.py:" in err1) == (130, False), err1  # (rank 0's line for all)
    assert procs[0].returncode == 1 and "Traceback" not in err0, err0  # (the job's line: rank 1 went first)
    assert err0.splitlines()[-1].startswith("train.py: error: another process of this torchrun job "
                                            "stopped"), err0


def test_a_resumed_run_that_trains_no_step_keeps_the_train_record_of_its_window(tmp_path, corpus, cache,
                                                                                monkeypatch):
    """Stopped on an evaluation step in the middle of a log window (step 4), then resumed with
    --max_steps 4: the resumed run dropped the partial train record of step 4 and trained no step,
    so the record was lost; a run that trains no more keeps it."""
    base = ["--log_every", "3", "--eval_every", "2", "--save_every", "100"]
    undo = stop_at(monkeypatch, 4)
    train.main(args(tmp_path, corpus, cache, "--max_steps", "6", *base))
    undo()
    partial = metrics(tmp_path)[-1]
    assert (partial["step"], partial["window_steps"]) == (4, 1)
    train.main(args(tmp_path, corpus, cache, "--max_steps", "4", *base, "--resume"))
    lines = (tmp_path / "ckpt" / "r" / "metrics.jsonl").read_text().splitlines()
    assert [(r["kind"], r["step"]) for r in map(json.loads, lines)] == [
        ("val", 2), ("train", 3), ("train", 4), ("val", 4)]  # as a run to step 4 writes them
    again = metrics(tmp_path)[-1]  # the same record, but for the timings
    timings = ("tokens_per_s", "mfu", "minutes")
    assert {k: v for k, v in again.items() if k not in timings} == {
        k: v for k, v in partial.items() if k not in timings}


def test_a_streak_of_non_finite_steps_survives_a_crash_and_resume(tmp_path, corpus, cache, monkeypatch,
                                                                  capsys):
    """Steps 0-5 non-finite, a save at step 8, a crash in step 9: the resumed run still stops at
    the log step 10 (the window's worst streak is in the checkpoint)."""
    real_accumulate = train.accumulate

    def poisoned(runner, batches, seed, step, *rest):
        out = real_accumulate(runner, batches, seed, step, *rest)
        if step < 6:
            next(runner.parameters()).grad.fill_(float("nan"))
        return out
    monkeypatch.setattr(train, "accumulate", poisoned)
    undo = crash_in_step(monkeypatch, 9)
    base = ["--max_steps", "12", "--log_every", "10", "--save_every", "8", "--max_bad_steps", "5"]
    with pytest.raises(Crash):
        train.main(args(tmp_path, corpus, cache, *base))
    undo()
    with pytest.raises(SystemExit) as e:
        train.main(args(tmp_path, corpus, cache, *base, "--resume"))
    assert "6 non-finite steps in a row (by step 10)" in one_line_error(capsys, 1, e)


def test_a_setting_a_checkpoint_saved_and_a_newer_version_refuses_can_be_typed_at_resume():
    from config import ModelArgs, TrainArgs
    ckpt = {"model_args": config.to_dict(ModelArgs()),
            "train_args": {**config.to_dict(TrainArgs()), "val_fraction": 0.9}}  # refused since
    with pytest.raises(config.ConfigError, match=r"--val_fraction: must be in \[1e-6, 0.5\], got 0.9"):
        runplan.resume_settings(ckpt, ModelArgs(), TrainArgs(), given=set())
    _, t = runplan.resume_settings(ckpt, ModelArgs(), TrainArgs(val_fraction=0.5), given={"val_fraction"})
    assert t.val_fraction == 0.5


def test_a_checkpoint_saved_with_an_empty_out_dir_resumes():
    """--out_dir "" was allowed before check_run refused it: a checkpoint that saved it resumes
    (plan_run puts the folder it lies in), and --resume does not blame an option nobody typed."""
    ckpt = {"model_args": config.to_dict(ModelArgs()),
            "train_args": {**config.to_dict(TrainArgs()), "out_dir": ""}}
    _, t = runplan.resume_settings(ckpt, ModelArgs(), TrainArgs(resume="run/last.pt"), given={"resume"})
    assert t.out_dir == TrainArgs().out_dir


def test_a_folder_with_best_pt_alone_is_not_a_new_run(tmp_path, done, corpus, cache, capsys):
    """A run killed after an evaluation but before its first last.pt leaves best.pt: a new run
    there would overwrite it, so it is refused, and --resume names the file to pass."""
    run_dir = copy_run(done, tmp_path)
    (run_dir / "last.pt").unlink()
    before = (run_dir / "best.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        train.main(args(tmp_path, corpus, cache, "--max_steps", "2"))
    assert f"already holds a checkpoint (best.pt); pass --resume {run_dir / 'best.pt'}" in \
        one_line_error(capsys, 1, e)
    with pytest.raises(SystemExit) as e:
        train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume"])
    assert f"has no last.pt, only best.pt; pass {run_dir / 'best.pt'}" in one_line_error(capsys, 1, e)
    assert (run_dir / "best.pt").read_bytes() == before
    train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume", str(run_dir / "best.pt"),
                "--max_steps", "7"])
    assert checkpoint.load_checkpoint(run_dir / "last.pt")["step"] == 7


def test_resuming_a_run_that_stopped_before_its_first_save_says_to_start_it_again(tmp_path, done, corpus,
                                                                                  cache, capsys):
    """A run killed before its first save leaves its settings and tokenizer, no checkpoint: --resume
    said `last.pt does not exist; pass ... a run folder` (a run folder was passed). It names what
    happened and the fix, exit status 2; sample.py and --eval_only too; a folder that is no run's
    is named as such."""
    run_dir = copy_run(done, tmp_path)
    for name in ("last.pt", "best.pt"):
        (run_dir / name).unlink()
    for how in (["--resume"], ["--resume", str(run_dir)], ["--resume", "r", "--run", "fork"]):
        with pytest.raises(SystemExit) as e:
            train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), *how])
        assert one_line_error(capsys, 2, e) == f"train.py: error: {run_dir} holds no checkpoint yet (its " \
            "run stopped before its first save, or has not reached it); start it again without --resume, " \
            f"with --run r --out_dir {tmp_path / 'ckpt'} and the settings it was started with (in its " \
            "model.json and train.json)", how
    with pytest.raises(SystemExit) as e:
        train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--eval_only"])
    assert one_line_error(capsys, 2, e).endswith(f"not reached it); {checkpoint.NOT_SAVED_FIX}")
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(run_dir)])
    assert "holds no checkpoint yet" in one_line_error(capsys, 2, e)
    with pytest.raises(SystemExit) as e:
        train.main(["--out_dir", str(tmp_path / "ckpt"), "--resume", str(tmp_path)])
    assert one_line_error(capsys, 1, e) == f"train.py: error: {tmp_path} is not a run folder (no last.pt " \
                                           "in it); pass a .pt file or a run folder"
    train.main(args(tmp_path, corpus, cache, "--max_steps", "1"))  # the advice holds
    assert checkpoint.load_checkpoint(run_dir / "last.pt")["step"] == 1


def two_runs(done, tmp_path, newer_saved: bool):
    """Runs "old" (its checkpoints) and "new" (stopped before its first save), "new" written to last
    (or "old", with `newer_saved`)."""
    old, new = copy_run(done, tmp_path, "old"), copy_run(done, tmp_path, "new")
    for name in ("last.pt", "best.pt"):
        (new / name).unlink()
    for run_dir, age in ((old, 100 if not newer_saved else 10), (new, 10 if not newer_saved else 100)):
        for f in run_dir.iterdir():
            os.utime(f, (f.stat().st_atime, f.stat().st_mtime - age))
    return old, new


def test_resume_without_run_refuses_when_the_newest_run_holds_no_checkpoint(tmp_path, done, capsys):
    """--resume (and --eval_only) without --run takes the newest run with a last.pt: a run written to
    since that holds none (stopped before its first save: most likely the run meant) was passed over,
    and an older run trained on, named only in the `run:` line. It is refused, naming both runs and
    both fixes, exit status 2, nothing written; a newer run with only best.pt is named with it."""
    old, new = two_runs(done, tmp_path, newer_saved=False)
    before = (old / "last.pt").read_bytes()
    out = ["--out_dir", str(tmp_path / "ckpt")]
    for how, fix in ((["--resume"], f"start it again without --resume, with --run new --out_dir {out[1]} and "
                                    "the settings it was started with (in its model.json and train.json), or "
                                    "pass --run old to resume"),
                    (["--eval_only"], "pass --run old to evaluate")):
        with pytest.raises(SystemExit) as e:
            train.main([*out, *how])
        assert one_line_error(capsys, 2, e) == f"train.py: error: the newest run, {new}, holds no last.pt " \
            f"(it stopped before its first save, or has not reached it); {fix} the newest run with one", how
    shutil.copy(old / "best.pt", new / "best.pt")
    with pytest.raises(SystemExit) as e:
        train.main([*out, "--resume"])
    assert f"has not reached it); pass --resume {new / 'best.pt'} to resume its best.pt, or pass --run old " \
           "to resume the newest run with one" in one_line_error(capsys, 2, e)
    assert (old / "last.pt").read_bytes() == before
    (new / "best.pt").unlink()
    for f in new.iterdir():  # a run without a checkpoint older than the newest with one: not the one meant
        os.utime(f, (f.stat().st_atime, f.stat().st_mtime - 1000))
    assert train.main([*out, "--resume", "--max_steps", "7"])["step"] == 7


def test_resume_of_a_run_that_does_not_exist_lists_the_runs_there(tmp_path, done, capsys):
    """--resume --run NOPE said `checkpoint checkpoints/NOPE does not exist` (a folder called a
    checkpoint): it says there is no such run under --out_dir and names those there, or that there
    are none; exit status 2."""
    two_runs(done, tmp_path, newer_saved=True)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(SystemExit) as e:
        train.main(["--out_dir", str(ckpt), "--resume", "--run", "nope"])
    assert one_line_error(capsys, 2, e) == f"train.py: error: there is no run nope under --out_dir {ckpt}/ " \
        "(its runs: old, new; pass one of them to --run, or drop --resume to start nope as a new run)"
    with pytest.raises(SystemExit) as e:
        train.main(["--out_dir", str(tmp_path / "empty"), "--eval_only", "--run", "nope"])
    assert one_line_error(capsys, 2, e) == f"train.py: error: there is no run nope under --out_dir " \
        f"{tmp_path / 'empty'}/ (nor any other run; pass the --out_dir it was trained in)"


def test_a_folder_of_runs_passed_as_a_checkpoint_names_its_newest_run(tmp_path, done, capsys):
    """sample.py --ckpt checkpoints (the folder of runs, not one run) said checkpoints/last.pt does
    not exist: it says what the folder is and names its newest run to pass; train.py --resume too."""
    two_runs(done, tmp_path, newer_saved=True)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpt)])
    assert one_line_error(capsys, 2, e) == f"sample.py: error: {ckpt} is a folder of runs, not a run; " \
        f"pass --ckpt {ckpt / 'old'} (the newest) or another of its runs (old, new)"
    with pytest.raises(SystemExit) as e:
        train.main(["--out_dir", str(ckpt), "--resume", str(ckpt)])
    assert f"pass --resume {ckpt / 'old'} (the newest)" in one_line_error(capsys, 2, e)


def test_a_new_run_writes_its_own_tokenizer_over_a_killed_runs(tmp_path, corpus, cache):
    run_dir = tmp_path / "ckpt" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "tokenizer.json").write_text("the tokenizer of a run killed before its first save")
    train.main(args(tmp_path, corpus, cache, "--max_steps", "2"))
    tok = Tokenizer.load(run_dir / "tokenizer.json")
    assert tok.hash == checkpoint.load_checkpoint(run_dir / "last.pt")["tokenizer"]["sha256"]


def test_a_window_resumed_with_another_number_of_processes_weighs_each_step_once():
    """Catches a window saved by 2 processes and resumed by 1 averaging over (rank, step) pairs: each
    step before the checkpoint then weighed twice what each step after it does, where an uninterrupted
    run (either number of processes: the global batch is the same) weighs every step once. Its sums
    (2 steps of 2 ranks whose means were 2.0) count as 2 steps of 2.0 for the one process, then 3.0."""
    job = SimpleNamespace(device=torch.device("cpu"), world=runtime.World(0, 1), resumed_window={
        "steps": 2, "rank_steps": 4, "busy_seconds": 1.0, "losses": torch.full((4,), 8.0), "processes": 2})
    window = train.Window.from_checkpoint(train.LoopState(step=2), job)
    window.add(train.StepOutput(torch.full((4,), 3.0), None, None, torch.tensor(1.0), torch.tensor(0.0)))
    assert window.record(job)["loss"] == pytest.approx((2.0 + 2.0 + 3.0) / 3)
    job.resumed_window |= {"applied": torch.tensor(2.0)}  # one of the 2 steps saved was skipped (both ranks)
    window = train.Window.from_checkpoint(train.LoopState(step=2), job)
    window.add(train.StepOutput(torch.full((4,), 3.0), None, None, torch.tensor(1.0), torch.tensor(0.0)))
    window.add(train.StepOutput(torch.full((4,), math.nan), None, None, torch.tensor(math.nan),
                                torch.tensor(1.0)))  # skipped: in no mean
    assert window.record(job)["loss"] == pytest.approx((4.0 + 3.0) / 2)
    job.resumed_window.pop("processes")  # an older checkpoint: summed over the processes that took its steps
    window = train.Window.from_checkpoint(train.LoopState(step=2), job)
    assert window.record(job)["loss"] == pytest.approx(4.0)
    job.resumed_window.pop("applied")
    job.resumed_window.pop("rank_steps")  # an older checkpoint: taken by as many processes as now
    window = train.Window.from_checkpoint(train.LoopState(step=2), job)
    window.add(train.StepOutput(torch.full((4,), 3.0), None, None, torch.tensor(1.0), torch.tensor(0.0)))
    assert window.record(job)["loss"] == pytest.approx((8.0 + 3.0) / 3)


def test_tokens_per_second_after_a_resume_with_another_batch_counts_the_tokens_each_step_took(
        tmp_path, corpus, cache, monkeypatch):
    """Stopped in the middle of a log window and resumed with --grad_accum 2: the window's record
    divides the tokens its steps trained on (2 steps of 256, then 2 of 512), not 4 steps at the new
    512, by its busy seconds (held at 1 here); MFU follows tokens/s."""
    real_record = train.Window.record
    monkeypatch.setattr(train.Window, "record", lambda window, job: {**real_record(window, job),
                                                                      "busy_seconds": 1.0})
    base = ["--max_steps", "6", "--log_every", "4", "--eval_every", "100", "--save_every", "100"]
    undo = stop_at(monkeypatch, 2)
    train.main(train_args(tmp_path, corpus, cache, *base))
    undo()
    train.main(train_args(tmp_path, corpus, cache, *base, "--resume", "--grad_accum", "2"))
    records = metrics(tmp_path)
    assert [(r["step"], r["tokens"]) for r in records] == [(4, 2 * 256 + 2 * 512), (6, 1536 + 2 * 512)]
    assert [r["tokens_per_s"] for r in records] == [1536, 1024]
    assert records[0]["mfu"] == pytest.approx(records[1]["mfu"] * 1536 / 1024)


class FakeWandbRun:
    """A W&B run as W&B keeps its history: rows at a step that only grows (a row logged at a step
    below the current one is dropped, with a warning W&B prints); a resumed run (its id seen before)
    goes on after its last row; a row logged without a step is a row of its own at the next one."""

    def __init__(self, run_id: str, rows: list):
        self.id, self.rows = run_id, rows
        self.step = rows[-1]["_step"] + 1 if rows else 0

    def define_metric(self, name, step_metric=None):
        pass

    def log(self, data, step=None):
        if step is not None and step < self.step:
            return  # "Tried to log to step 4 that is less than the current step 5 ... will be ignored"
        self.step = self.step if step is None else step
        if self.rows and self.rows[-1]["_step"] == self.step:
            self.rows[-1].update(data)
        else:
            self.rows.append({"_step": self.step, **data})
        self.step += step is None

    def finish(self, exit_code=0):
        pass

    def records(self) -> list:
        """(kind, step) of each record the rows hold, in order: what a chart against `step` shows."""
        return [(kind, row.get("step", row["_step"])) for row in self.rows for kind in ("train", "val")
                if any(k.startswith(kind + "/") for k in row)]


def test_the_wandb_run_of_a_stopped_crashed_and_resumed_run_holds_the_records_of_metrics_jsonl(
        tmp_path, corpus, cache, monkeypatch):
    """A signal at step 4 puts its evaluation off after its train record went to W&B; the resumed
    run evaluates step 4 (a W&B step the run has passed, where W&B would drop it), logs step 5 and
    crashes before its next save. Its resume drops metrics.jsonl's record past the checkpoint (step
    5's), which the W&B run got and cannot take back, so it starts a new W&B run: that one holds each
    record of metrics.jsonl once, in order, and the old one is left as it was.

    Bug caught: the resumed run went on with the W&B run that held the dropped records, so its
    charts showed the steps past the checkpoint twice (a rollback's with other values)."""
    runs = {}

    def start_wandb(targs, run_dir, settings, log):
        run_id = settings["wandb_id"] or f"w{len(runs)}"
        return FakeWandbRun(run_id, runs.setdefault(run_id, []))
    monkeypatch.setattr(train.runlog, "start_wandb", start_wandb)
    base = ["--max_steps", "6", "--log_every", "1", "--eval_every", "2", "--save_every", "4", "--plot", ""]
    undo = stop_at(monkeypatch, 4)
    train.main(train_args(tmp_path, corpus, cache, *base))
    undo()
    undo = crash_in_step(monkeypatch, 6)
    with pytest.raises(Crash):
        train.main(train_args(tmp_path, corpus, cache, *base, "--resume"))
    undo()
    train.main(train_args(tmp_path, corpus, cache, *base, "--resume"))
    lines = (tmp_path / "ckpt" / "r" / "metrics.jsonl").read_text().splitlines()
    records = [(r["kind"], r["step"]) for r in map(json.loads, lines)]
    assert records == [("train", 1), ("train", 2), ("val", 2), ("train", 3), ("train", 4), ("val", 4),
                       ("train", 5), ("train", 6), ("val", 6)]
    assert list(runs) == ["w0", "w1"]  # w0: the first two sessions; w1: the last, from the start
    assert FakeWandbRun("w1", runs["w1"]).records() == records
    assert FakeWandbRun("w0", runs["w0"]).records() == records[:7]  # (left as it was)


def test_the_wandb_config_names_the_device_dtype_and_compiling_the_run_resolved(tmp_path, corpus, cache,
                                                                                monkeypatch):
    """Bug caught (a W&B probe): W&B's config held --device, --dtype and --compile as typed, "auto"
    for all three by default, so runs compared there could not be told apart by the GPU or CPU, the
    dtype or the compiling they ran with. It holds them as resolved (`session`)."""
    seen = []

    def start_wandb(targs, run_dir, settings, log):
        seen.append(settings)
        return FakeWandbRun("w", [])
    monkeypatch.setattr(train.runlog, "start_wandb", start_wandb)
    train.main(train_args(tmp_path, corpus, cache, "--max_steps", "1", "--plot", "", "--compile", "false"))
    assert seen[0]["train"]["dtype"] == "auto"  # (as typed; the session's as resolved)
    assert seen[0]["session"] == {"device": "cpu", "device_name": "cpu", "dtype": "float32", "processes": 1,
                                  "compiled": False}


def test_every_key_logged_to_wandb_is_charted_against_the_step_value(tmp_path, monkeypatch):
    """Each row carries the optimizer step as `step`, not as W&B's own step: a key that no
    define_metric(..., step_metric="step") covers is charted against W&B's row count instead (a
    resumed run's put-off evaluation off by one, every image after a backfill off by its rows)."""
    import fnmatch

    import runlog

    class Run(FakeWandbRun):
        def define_metric(self, name, step_metric=None):
            axes[name] = step_metric
    axes, rows = {}, []
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Image=lambda path: path))
    m = runlog.Metrics(tmp_path, Run("w", rows), None)
    m.write({"kind": "train", "step": 3, "lm_loss": 2.5, "expert_share": [[0.5, 0.5]],
             "router_entropy": [0.7]})
    m.write({"kind": "val", "step": 3, "bits_per_byte": 1.5})
    m.log_image("loss_plot", tmp_path / "loss.png", 3)
    keys = {k for row in rows for k in row if k not in ("_step", runlog.STEP)}
    assert {"train/lm_loss", "experts/layer0/expert1", "router_entropy/layer0", "val/bits_per_byte",
            "loss_plot"} <= keys
    assert axes.pop(runlog.STEP) is None
    assert all(any(fnmatch.fnmatchcase(k, glob) for glob in axes) for k in keys), keys
    assert set(axes.values()) == {runlog.STEP} and all(row[runlog.STEP] == 3 for row in rows)


def test_wandb_falling_back_to_offline_is_a_new_run_of_the_group(tmp_path, monkeypatch):
    """--wandb_mode online without a login or network: the offline run it falls back to keeps the
    group and is as quiet as an offline run asked for, but is a new W&B run: W&B cannot resume an
    offline one (syncing it would replace the history of the run it resumed)."""
    import runlog
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        if kwargs["mode"] == "online":
            raise RuntimeError("api_key not configured (no-tty)")
        return "the run"
    monkeypatch.setitem(sys.modules, "wandb", wandb_module(init))
    targs = config.TrainArgs(wandb_mode="online", wandb_group="sweep")
    lines = []
    assert runlog.start_wandb(targs, tmp_path, {"wandb_id": "abc"}, log=lines.append) == "the run"
    online, offline = calls
    assert offline == {**online, "mode": "offline", "id": None} and online["id"] == "abc"
    assert offline["group"] == "sweep" and offline["settings"]["silent"]
    # Bug caught: a start online without a network waited its 60 s without a word
    assert lines[0] == ("wandb: connecting (up to 60 s without a network; offline after that, and "
                        "--wandb_mode offline skips the wait)")
    assert online["settings"]["init_timeout"] == runlog.WANDB_TIMEOUT == 60
    assert "logging offline instead" in lines[1] and len(lines) == 2


def test_a_run_that_logged_to_wandb_offline_resumes_into_a_new_wandb_run_with_the_whole_history(
        tmp_path, corpus, cache, monkeypatch):
    """An offline W&B run cannot be resumed: `wandb sync` of the resumed session's folder (same id)
    replaced the history the first folder gave the run, losing the steps before the checkpoint. The
    checkpoint now saves no offline run's id, so the resume is a new W&B run that gets them all."""
    runs = {}

    class OfflineRun(FakeWandbRun):
        offline = True

    def start_wandb(targs, run_dir, settings, log):
        run_id = settings["wandb_id"] or f"w{len(runs)}"
        return OfflineRun(run_id, runs.setdefault(run_id, []))
    monkeypatch.setattr(train.runlog, "start_wandb", start_wandb)
    base = ["--max_steps", "4", "--eval_every", "2", "--plot", ""]
    train.main(train_args(tmp_path, corpus, cache, *base, "--max_steps", "2"))
    assert checkpoint.load_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")["wandb_id"] is None
    train.main(train_args(tmp_path, corpus, cache, *base, "--resume"))
    lines = (tmp_path / "ckpt" / "r" / "metrics.jsonl").read_text().splitlines()
    records = [(r["kind"], r["step"]) for r in map(json.loads, lines)]
    assert sorted(runs) == ["w0", "w1"] and OfflineRun("w1", runs["w1"]).records() == records
    assert records[0] == ("train", 1) and records[-1] == ("val", 4)


def test_wandb_that_cannot_start_or_be_imported_leaves_the_run_to_metrics_jsonl(tmp_path, corpus, cache,
                                                                               monkeypatch, capsys):
    """W&B failing offline too (its folder unwritable), or not installed: one line, and the run
    trains on with metrics.jsonl, never a traceback after the data was prepared."""
    import runlog

    def init(**kwargs):
        raise NotADirectoryError(20, "Not a directory")
    monkeypatch.setitem(sys.modules, "wandb", wandb_module(init))
    lines = []
    assert runlog.start_wandb(TrainArgs(wandb_mode="online"), tmp_path, {}, log=lines.append) is None
    assert "offline instead" in lines[1] and "metrics.jsonl only" in lines[2] and len(lines) == 3
    lines.clear()  # asked for offline: one line, not "offline failed; logging offline instead"
    assert runlog.start_wandb(TrainArgs(wandb_mode="offline"), tmp_path, {}, log=lines.append) is None
    assert len(lines) == 1 and "offline start failed" in lines[0] and "metrics.jsonl only" in lines[0]
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: import wandb raises ImportError
    train.main(args(tmp_path, corpus, cache, "--max_steps", "2", "--wandb_mode", "offline"))
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "pip install wandb" in out.out
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2]


def test_wandb_turned_on_at_resume_gets_the_whole_history(tmp_path, corpus, cache, monkeypatch):
    """A run trained without W&B (or whose checkpoint holds no W&B run id) resumed with W&B: the
    new W&B run gets the records metrics.jsonl kept too, expert shares included, then the new ones."""
    runs = {}
    base = ["--max_steps", "6", "--eval_every", "2", "--plot", ""]
    train.main(train_args(tmp_path, corpus, cache, *base, "--max_steps", "4"))  # the debug preset: no W&B
    monkeypatch.setattr(train.runlog, "start_wandb", lambda targs, run_dir, settings, log: FakeWandbRun(
        settings["wandb_id"] or "w", runs.setdefault(settings["wandb_id"] or "w", [])))
    train.main(train_args(tmp_path, corpus, cache, *base, "--resume"))
    lines = (tmp_path / "ckpt" / "r" / "metrics.jsonl").read_text().splitlines()
    records = [(r["kind"], r["step"]) for r in map(json.loads, lines)]
    assert FakeWandbRun("w", runs["w"]).records() == records and records[-1] == ("val", 6)
    assert "experts/layer0/expert0" in runs["w"][0] and runs["w"][0]["step"] == 1


def test_a_resume_whose_wandb_run_the_server_lacks_gives_the_new_one_the_whole_history(
        tmp_path, corpus, cache, monkeypatch, capsys):
    """W&B resume="allow" with an id its server does not hold (another WANDB_BASE_URL than the
    checkpoint's run was on, a run moved to another project) starts an empty run of that id, which W&B
    says (run.resumed False): that run gets the history from the start, and a line says why.

    Bug caught: the resume logged only the steps after the checkpoint to it (it was taken for the
    checkpoint's W&B run), so its charts began at the checkpoint's step."""
    runs = {}

    class Run(FakeWandbRun):
        resumed = False  # (W&B's answer for a run of that id it did not hold)
    base = ["--max_steps", "4", "--eval_every", "2", "--save_every", "2", "--plot", ""]
    monkeypatch.setattr(train.runlog, "start_wandb", lambda targs, run_dir, settings, log: FakeWandbRun(
        "w", runs.setdefault("w", [])))
    train.main(train_args(tmp_path, corpus, cache, *base, "--max_steps", "2"))
    assert checkpoint.load_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")["wandb_id"] == "w"
    monkeypatch.setattr(train.runlog, "start_wandb", lambda targs, run_dir, settings, log: Run(
        settings["wandb_id"], runs.setdefault("elsewhere", [])))
    capsys.readouterr()
    train.main(train_args(tmp_path, corpus, cache, *base, "--resume"))
    lines = (tmp_path / "ckpt" / "r" / "metrics.jsonl").read_text().splitlines()
    records = [(r["kind"], r["step"]) for r in map(json.loads, lines)]
    assert Run("w", runs["elsewhere"]).records() == records and records[0] == ("train", 1)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wandb:")]
    assert said == ["wandb: W&B run w was not found where it was resumed (another server, WANDB_BASE_URL, "
                    "or it was moved to another project), so W&B started it anew: it gets the history "
                    "from the start"]


def test_wandb_refusing_its_settings_names_the_setting(tmp_path, monkeypatch):
    """WANDB_CONSOLE=bogus in the environment: W&B's error says "1 validation error for Settings"
    in its first line; the line names the setting and the value instead."""
    import pydantic

    import runlog

    class Settings(pydantic.BaseModel):
        console: typing.Literal["auto", "off"] = "auto"

    def init(**kwargs):
        Settings(console="bogus")
    monkeypatch.setitem(sys.modules, "wandb", wandb_module(init))
    lines = []
    assert runlog.start_wandb(TrainArgs(wandb_mode="offline"), tmp_path, {}, log=lines.append) is None
    assert len(lines) == 1 and "offline start failed (ValidationError: setting console: Input should be " \
        "'auto' or 'off' (got 'bogus'))" in lines[0]


def test_wandb_failing_in_the_middle_of_a_run_is_one_line_and_the_run_trains_on(tmp_path, corpus, cache,
                                                                                 monkeypatch, capsys):
    """W&B's service killed (or its disk full) after a few records: wandb.log raises from then on.
    One line; the run trains to its end, writes every record and checkpoint, and W&B's teardown
    (its exit hook would print a traceback) is called instead of finish."""
    calls = []

    class DyingRun(FakeWandbRun):
        def log(self, data, step=None):
            calls.append("log")
            if len(calls) > 3:
                raise ConnectionResetError("Connection lost")
            super().log(data, step)

        def finish(self, exit_code=0):
            calls.append("finish")
    monkeypatch.setattr(train.runlog, "start_wandb", lambda *a: DyingRun("w", []))
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(teardown=lambda: calls.append("teardown")))
    train.main(train_args(tmp_path, corpus, cache, "--max_steps", "6", "--plot", ""))
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("wandb:")]
    assert lines == ["wandb: logging failed (ConnectionResetError: Connection lost); this run logs to "
                     "metrics.jsonl only from here on"]
    assert "Traceback" not in out.err and calls == ["log"] * 4 + ["teardown"]
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert checkpoint.load_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")["step"] == 6


def test_a_fork_gets_a_wandb_run_of_its_own(tmp_path):
    """(A plan's train_args, which wandb_id reads for --wandb_project, are never None.)"""
    ckpt = {"wandb_id": "abc"}
    plan = runplan.RunPlan(tmp_path / "r", None, TrainArgs(), ckpt, tmp_path / "r" / "last.pt")
    assert runplan.wandb_id(plan) == "abc"  # resumed in its own folder: the same W&B run
    assert runplan.wandb_id(plan._replace(run_dir=tmp_path / "fork")) is None
    assert runplan.wandb_id(plan._replace(ckpt=None, ckpt_path=None)) is None


def test_a_checkpoint_of_another_model_is_refused_before_metrics_are_touched(tmp_path, done, corpus, cache,
                                                                            capsys):
    run_dir = copy_run(done, tmp_path)
    train.main(args(tmp_path, corpus, cache, "--max_steps", "1", "--top_k", "2", run="other"))
    shutil.copy(tmp_path / "ckpt" / "other" / "last.pt", run_dir / "last.pt")  # copied in by mistake
    before = (run_dir / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume", "--max_steps", "8"])
    line = one_line_error(capsys, 1, e)
    assert "is not this run's model" in line and "top_k: checkpoint 2, folder 1" in line
    assert "--run NEW_NAME" in line
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def test_eval_only_on_a_file_given_for_it_scores_all_of_it(tmp_path, done, corpus, capsys):
    assert json.loads((done.run_dir / "train.json").read_text())["eval_windows"] == 4  # the run's sample
    other = tmp_path / "other.txt"
    other.write_text("\n<|endoftext|>\n".join(corpus.read_text().split("\n<|endoftext|>\n")[:40]))
    capsys.readouterr()
    r = train.main(["--run", "r", "--out_dir", str(done.run_dir.parent), "--eval_only",
                    "--val_data", str(other)])
    found = re.search(r"validation: ([\d,]+) of ([\d,]+) targets", capsys.readouterr().err)
    covered, targets = (int(g.replace(",", "")) for g in found.groups())
    assert r["tokens"] == covered == targets > 4 * 64  # every target of the file, not 4 windows


def test_eval_only_whose_output_cannot_be_written_is_an_error(done, capsys, monkeypatch):
    """A training run goes on without its console; --eval_only, whose one output is its JSON line,
    does not end with status 0 having printed nothing."""
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(sys, "stdout", Full())
    with pytest.raises(SystemExit) as e:
        train.main(["--run", "r", "--out_dir", str(done.run_dir.parent), "--eval_only"])
    assert e.value.code == 1
    err = capsys.readouterr().err.splitlines()  # the log (standard error's), then the error
    assert err[-1] == ("train.py: error: cannot print the result: standard output is closed or its disk is "
                       "full; send it to a file with room, or to a terminal")
    assert all(line.startswith("data: ") for line in err[:-1])  # (not the training run's warning: it goes on)


# --- full disks and signals -----------------------------------------------------------------------

def test_a_full_disk_during_a_save_is_one_line_and_the_last_checkpoint_stays(tmp_path, corpus, cache,
                                                                           monkeypatch, capsys):
    real = torch.save

    def full_at_step_4(obj, f, *a, **k):
        return real(obj, FullAfter(f, 5000) if obj.get("step") == 4 else f, *a, **k)
    monkeypatch.setattr(torch, "save", full_at_step_4)
    with pytest.raises(SystemExit) as e:
        train.main(args(tmp_path, corpus, cache, "--max_steps", "6", "--save_every", "2",
                        "--eval_every", "100"))
    line = one_line_error(capsys, 1, e)
    run_dir = tmp_path / "ckpt" / "r"
    assert line.startswith(f"train.py: error: cannot write {run_dir / 'last.pt'}: the disk is full")
    assert "the previous file is intact" in line and "pick another --out_dir" in line
    assert checkpoint.load_checkpoint(run_dir / "last.pt")["step"] == 2
    assert not list(run_dir.glob(".tmp-*"))


@pytest.mark.parametrize("background", [False, True])
def test_a_second_signal_during_a_save_aborts_once_the_save_is_complete(tmp_path, corpus, cache,
                                                                       monkeypatch, capsys, background):
    """Two Ctrl-C while a save is written: train.py's own save (the signals sent as it writes), or
    (`background`) while it waits for its last save, which a child process writes (sent by the child:
    signals to train.py alone, as the child ignores them): the run ends at 130 once the file is complete.
    Bug caught (this test's own): the child sent its two signals at once, which the kernel or Python
    may deliver as one (a graceful stop, not an abort): the background case failed one run in three."""
    if background and not checkpoint.BACKGROUND:
        pytest.skip("in the background on Linux alone")
    real, step, handled = torch.save, 8 if background else 4, tmp_path / "handled"
    real_handle = train.Stop.handle

    def handle(self, signum, frame):  # (each signal train.py handled, told to the child that sends them)
        try:
            return real_handle(self, signum, frame)
        finally:
            with open(handled, "a") as f:
                f.write("x")
    monkeypatch.setattr(train.Stop, "handle", handle)

    def signals_during_save(obj, f, *a, **k):
        if obj.get("step") == step and os.readlink(f"/proc/self/fd/{f.fileno()}").endswith("last.pt"):
            train_py = os.getppid() if background else os.getpid()
            # the first: finish the step, save, stop; the second, in the middle of the save: abort (each
            # sent once the one before is handled: two sent at once to another process may be one)
            for n in (1, 2):
                os.kill(train_py, signal.SIGINT)
                deadline = time.monotonic() + 30
                while (not handled.exists() or len(handled.read_text()) < n) and time.monotonic() < deadline:
                    time.sleep(0.01)
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", signals_during_save)
    with pytest.raises(SystemExit) as e:
        train.main(args(tmp_path, corpus, cache, "--max_steps", "8", "--save_every", "4",
                        "--eval_every", "100", "--save_in_background", str(background).lower()))
    run_dir = tmp_path / "ckpt" / "r"
    assert one_line_error(capsys, 130, e) == f"train.py: interrupted; the checkpoints written are complete " \
                                             f"(--resume {run_dir} continues from its last.pt)"
    assert checkpoint.load_checkpoint(run_dir / "last.pt")["step"] == step  # the save went through
    assert not list(run_dir.glob(".tmp-*"))


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupt_before_training_is_one_line_and_leaves_no_run_folder(tmp_path, corpus, monkeypatch,
                                                                           capsys, how):
    """Ctrl-C, or SIGTERM (which killed the process with the run folder left behind), while the BPE
    trains: one line, status 130, no folder; SIGTERM's own handler is put back afterwards."""
    def interrupt(*args):
        if how == "sigterm":
            # errors.sigterm_interrupts's handler (kept by data.py), else it would kill pytest
            assert callable(signal.getsignal(signal.SIGTERM))
            os.kill(os.getpid(), signal.SIGTERM)  # its handler raises KeyboardInterrupt
        raise KeyboardInterrupt
    monkeypatch.setattr(Tokenizer, "train", interrupt)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        train.main(args(tmp_path, corpus, tmp_path / "fresh-cache", "--max_steps", "1"))
    assert one_line_error(capsys, 130, e) == "train.py: interrupted; no checkpoint was written"
    assert not (tmp_path / "ckpt" / "r").exists()
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_interrupt_line_names_what_is_left_to_resume_from(tmp_path, corpus, cache, monkeypatch, capsys):
    """A resumed run interrupted while it sets up still has its last.pt; best.pt alone is named by
    path; --eval_only wrote nothing; before the run folder is known, nothing was written (it said
    "the checkpoints already written are complete", of a new run)."""
    train.main(train_args(tmp_path, corpus, cache, "--max_steps", "1"))
    run_dir = tmp_path / "ckpt" / "r"

    def ctrl_c(*args):
        raise KeyboardInterrupt
    for slow in ["load_checkpoint", "load_data"]:  # loading the checkpoint, then the data
        with monkeypatch.context() as m:
            m.setattr(*((checkpoint, slow) if slow == "load_checkpoint" else (train, slow)), ctrl_c)
            with pytest.raises(SystemExit) as e:
                train.main(train_args(tmp_path, corpus, cache, "--max_steps", "2", "--resume"))
            assert one_line_error(capsys, 130, e) == "train.py: interrupted; the checkpoints written are " \
                f"complete (--resume {run_dir} continues from its last.pt)", slow
    monkeypatch.setattr(train, "load_data", ctrl_c)
    with pytest.raises(SystemExit) as e:
        train.main(train_args(tmp_path, corpus, cache, "--eval_only"))
    assert one_line_error(capsys, 130, e) == "train.py: interrupted; nothing was written " \
                                             "(--eval_only only reads)"
    (run_dir / "last.pt").rename(run_dir / "best.pt")
    assert train.left_to_resume(run_dir) == "the checkpoints written are complete " \
                                            f"(--resume {run_dir / 'best.pt'} continues from it)"
    assert train.left_to_resume(run_dir, eval_only=True).startswith("nothing was written")
    assert train.left_to_resume(None) == "no checkpoint was written"
    assert train.left_to_resume(None, resume="r") == \
        "no checkpoint was written (the resumed run's are as they were)"


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_first_step_aborts_at_once(tmp_path, corpus, cache, monkeypatch, capsys, how):
    """A signal before this session's first step is done is one before the loop: one line, status
    130, at once. It finished the step first, and a compiled model's first step compiles for
    minutes: under torchrun, which kills its workers 30 s after forwarding a signal, the run was
    killed with nothing saved, after promising a checkpoint."""
    real_step = train.train_step

    def compiling(job, batches, step, lr):
        os.kill(os.getpid(), how)
        return real_step(job, batches, step, lr)
    monkeypatch.setattr(train, "train_step", compiling)
    with pytest.raises(SystemExit) as e:
        train.main(args(tmp_path, corpus, cache, "--max_steps", "3"))
    assert one_line_error(capsys, 130, e) == "train.py: interrupted; no checkpoint was written"
    assert not (tmp_path / "ckpt" / "r" / "last.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_ignored_from_the_start_stays_ignored_outside_the_loop_too():
    """errors.sigterm_interrupts (train.py's set-up and export_hf.py) took an ignored SIGTERM."""
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        restore = errors.sigterm_interrupts()
        during = signal.getsignal(signal.SIGTERM)
        restore()
        assert during is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_signal_the_run_was_started_to_ignore_stays_ignored(tmp_path, corpus, cache, monkeypatch):
    """`python train.py &` from a script starts with SIGINT ignored (and a scheduler may ignore
    SIGTERM): start-up honoured that, but the loop's handler took the signal and stopped the run."""
    real_step = train.train_step

    def signalled(job, batches, step, lr):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(job, batches, step, lr)
    monkeypatch.setattr(train, "train_step", signalled)
    kept = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = train.main(args(tmp_path, corpus, cache, "--max_steps", "4"))
        after = [signal.getsignal(s) for s in kept]
    finally:
        for s, handler in kept.items():
            signal.signal(s, handler)
    assert result["finished"] == "max_steps" and result["step"] == 4 and not result["signalled"]
    assert after == [signal.SIG_IGN, signal.SIG_IGN]


def test_an_interrupt_is_one_line_from_rank_0_alone(monkeypatch, capsys):
    """torchrun forwards a signal to every worker: each printed the interrupt line."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "run", interrupted)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    line = "train.py: interrupted; no checkpoint was written"
    for rank, lines in [("1", []), ("0", ["", line])]:
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as e:
            train.main(["--preset", "debug"])
        assert e.value.code == 130 and capsys.readouterr().err.splitlines() == lines


@pytest.mark.parametrize("where", ["free_frames", "leave_group"])
def test_torchruns_sigterm_as_a_failed_job_exits_adds_no_interrupted_line(monkeypatch, capsys, where):
    """Bug caught: `kill -9` of one torchrun worker: the other said its one line (another process of this
    torchrun job stopped ...), then torchrun's SIGTERM to it landed in main's exit work (free_frames'
    gc.collect, leave_group), and its KeyboardInterrupt escaped main: rank 0 printed `train.py:
    interrupted` under that line, and each worker ended by SIGINT (exit -2) instead of status 1."""
    def peer_lost(*args, **kwargs):
        raise errors.RunError("another process of this torchrun job stopped (Connection closed by peer)")

    def sigterm_lands(*args, **kwargs):
        raise KeyboardInterrupt  # (what torchrun's SIGTERM raises there)
    monkeypatch.setattr(train, "run", peer_lost)
    monkeypatch.setattr(train.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(train, "free_frames", sigterm_lands if where == "free_frames" else lambda e: None)
    monkeypatch.setattr(train, "leave_group", sigterm_lands if where == "leave_group" else lambda *a: None)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("RANK", "0")
    try:
        train.main(["--preset", "debug"])
    except BaseException as e:  # (a KeyboardInterrupt let through would stop pytest itself)
        left = e
    assert (type(left), getattr(left, "code", None)) == (SystemExit, 1)
    assert capsys.readouterr().err.splitlines() == [
        "train.py: error: another process of this torchrun job stopped (Connection closed by peer)"]


def test_a_sigterm_as_a_finished_torchrun_job_exits_adds_no_interrupted_line(monkeypatch, capsys):
    """Bug caught: torchrun's SIGTERM landing in a finished run's exit work (leave_group's
    destroy_process_group) escaped main: `train.py: interrupted` under the run's last line, and an end
    by SIGINT, for a run whose checkpoints and final evaluation were all written."""
    def sigterm_lands(*args, **kwargs):
        raise KeyboardInterrupt  # (what torchrun's SIGTERM raises there)
    monkeypatch.setattr(train, "run", lambda *a: {"finished": True})
    monkeypatch.setattr(train.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(train, "leave_group", sigterm_lands)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("RANK", "0")
    try:
        left = train.main(["--preset", "debug"])
    except BaseException as e:  # (a KeyboardInterrupt let through would stop pytest itself)
        left = e
    assert left == {"finished": True} and capsys.readouterr().err == ""


@pytest.mark.parametrize("rank", ["0", "1"])
def test_an_interrupt_while_torch_imports_is_one_line(tmp_path, rank):
    """Ctrl-C in the seconds `import torch` takes, before main() can catch anything: Python's
    traceback was printed. One line (from rank 0 alone under torchrun), a SIGINT's status."""
    (tmp_path / "torch.py").write_text("raise KeyboardInterrupt  # Ctrl-C while torch imports\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "RANK": rank, "TORCHELASTIC_RUN_ID": "job"}
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "debug"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (130, -signal.SIGINT)  # (Python ends itself by SIGINT, as the shell expects)
    assert done.stderr == ("\ntrain.py: interrupted\n" if rank == "0" else "")


def test_a_sigterm_while_torch_imports_is_one_line_too(tmp_path):
    """SIGTERM in the seconds `import torch` takes (a scheduler's stop, before main() can take it) ended
    the process silently, by the signal: now as Ctrl-C, one line and a SIGINT's status."""
    (tmp_path / "torch.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\n"
                                       "time.sleep(30)\n")
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "debug"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (done.returncode in (130, -signal.SIGINT), done.stderr) == (True, "\ntrain.py: interrupted\n")


@pytest.mark.parametrize("script", ["sample.py", "data.py"])
def test_an_interrupt_while_sample_imports_torch_is_one_line(tmp_path, script):
    """sample.py as train.py: Ctrl-C in its first seconds (`import torch`) printed a traceback; data.py
    too (Bug caught: its imports came before errors')."""
    (tmp_path / "torch.py").write_text("raise KeyboardInterrupt  # Ctrl-C while torch imports\n")
    done = subprocess.run([sys.executable, str(ROOT / script), "--prompt", "x"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (done.returncode in (130, -signal.SIGINT), done.stderr) == (True, f"\n{script}: interrupted\n")


def test_an_interactive_sessions_interrupt_keeps_pythons_report(monkeypatch):
    """A Ctrl-C in a Python prompt that imported a project module printed ": interrupted" (no program
    name) in place of Python's KeyboardInterrupt."""
    seen = []
    monkeypatch.setattr(errors, "_excepthook", lambda *a: seen.append(a[0]))
    monkeypatch.setattr(sys, "argv", [""])
    errors._interrupted(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert seen == [KeyboardInterrupt]


def test_train_runs_off_the_main_thread(tmp_path, corpus, cache):
    """Python sets signal handlers on the main thread only: elsewhere train.main runs without them."""
    import threading
    got = []
    thread = threading.Thread(target=lambda: got.append(
        train.main(train_args(tmp_path, corpus, cache, "--max_steps", "1"))))
    thread.start()
    thread.join()
    assert got and got[0]["step"] == 1


def test_a_run_folder_named_in_other_bytes_than_utf8_resumes_under_its_name(tmp_path, done, monkeypatch):
    """A run copied into a folder made outside train.py (`mkdir $'r\\xff'`): --run refused its name
    (not UTF-8), the tokenizer beside the checkpoint could not be read (the Rust side takes only
    UTF-8 paths), and a strict stdout (a UTF-8 locale) failed on the first line naming it."""
    name = os.fsdecode(b"r\xff")
    run_dir = copy_run(done, tmp_path, name)
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="utf-8", errors="strict"))
    train.main(["--out_dir", str(run_dir.parent), "--run", name, "--resume", "--max_steps", "7"])
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 7
    sys.stdout.flush()
    assert b"r\\udcff | device cpu" in out.getvalue()
    with pytest.raises(ConfigError, match="is not UTF-8 text"):  # a new folder is still refused
        config.check_run(os.fsdecode(b"s\xff"), str(tmp_path))


def test_a_run_whose_last_pt_is_a_symlink_resumes_in_its_own_folder(tmp_path, corpus, cache):
    """(A fork is told from a resume by the checkpoint's folder, not by where a link points.)"""
    train.main(train_args(tmp_path, corpus, cache, "--max_steps", "1"))
    run_dir = tmp_path / "ckpt" / "r"
    (tmp_path / "store").mkdir()
    (run_dir / "last.pt").rename(tmp_path / "store" / "r-last.pt")
    (run_dir / "last.pt").symlink_to(tmp_path / "store" / "r-last.pt")
    train.main(train_args(tmp_path, corpus, cache, "--max_steps", "2", "--resume"))
    assert checkpoint.load_checkpoint(run_dir / "last.pt")["step"] == 2


# --- settings refused before any work --------------------------------------------------------------

@pytest.fixture
def no_data(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("data preparation started")
    monkeypatch.setattr(data, "prepare", fail)
    monkeypatch.setattr(data, "prepare_eval", fail)


@pytest.mark.parametrize("extra,message", [
    (["--vocab_size", "100"], "--vocab_size 100 is too small: a byte-level BPE needs at least 264"),
    (["--max_seq_len", "2000000", "--vocab_size", "4096", "--batch_size", "16"],
     "--max_seq_len 2000000 x --batch_size 16 needs at least 33"),
    (["--device", "tpu"], "--device tpu: not a device name; use auto, cpu, cuda or cuda:N"),
    # (once refused only after the tokenizer was trained, exit status 1)
    (["--eos_id", "300"], "--eos_id 300: the tokenizer this run trains has <|endoftext|> at id 0; drop"),
])
def test_bad_settings_exit_2_before_any_work(tmp_path, corpus, cache, monkeypatch, capsys, no_data, extra,
                                             message):
    monkeypatch.setattr(runtime, "device_memory", lambda device: 16 * 10**9, raising=False)  # 16 GB
    with pytest.raises(SystemExit) as e:
        train.main(args(tmp_path, corpus, cache, *extra))
    line = one_line_error(capsys, 2, e)
    assert line.startswith("train.py: error: ") and message in line
    assert not (tmp_path / "ckpt" / "r").exists()


def test_special_token_ids_are_refused_only_for_a_tokenizer_the_run_trains(tmp_path, monkeypatch):
    """A new run that trains its tokenizer has them at 0..7; a --tokenizer may have them elsewhere
    (checked against it), and a resumed run's are its checkpoint's (checked against the tokenizer,
    later)."""
    from dataclasses import replace
    _, (model_args, settings) = config.parse_args([ModelArgs, TrainArgs], ["--preset", "debug", "--eos_id",
                                                                            "1", "--pad_id", "0"])
    cpu, world = torch.device("cpu"), runtime.World()
    with pytest.raises(ConfigError, match="--eos_id 1: the tokenizer this run trains has .* at id 0"):
        runplan.check_settings(runplan.RunPlan(tmp_path, model_args, settings, None, None), cpu, world)
    ids = {name: getattr(model_args, name) for name in config.SPECIAL_TOKENS}  # a tokenizer with eos at 1
    given = SimpleNamespace(vocab_size=model_args.vocab_size, special_ids=lambda: ids)
    monkeypatch.setattr(runplan.Tokenizer, "load", lambda path: given)
    own = replace(settings, tokenizer=str(tmp_path / "tokenizer.json"))
    runplan.check_settings(runplan.RunPlan(tmp_path, model_args, own, None, None), cpu, world)
    ids["eos_id"] = 2
    with pytest.raises(ConfigError, match="has <\\|endoftext\\|> at id 2 but --eos_id is 1; pass --eos_id 2"):
        runplan.check_settings(runplan.RunPlan(tmp_path, model_args, own, None, None), cpu, world)
    resumed = runplan.RunPlan(tmp_path, model_args, settings, {"model_args": {}}, tmp_path / "last.pt")
    runplan.check_settings(resumed, cpu, world)


def test_cuda_graphs_take_one_micro_batch_per_process_on_cuda_only(tmp_path):
    """A CUDA graph replay overwrites the gradients of the micro-batch before it: refused with
    --grad_accum on CUDA; a CPU has no CUDA graphs, and reduce-overhead accumulates there."""
    argv = ["--preset", "debug", "--compile", "true", "--compile_mode", "reduce-overhead",
            "--grad_accum", "2"]
    _, (model_args, settings) = config.parse_args([ModelArgs, TrainArgs], argv)
    plan = runplan.RunPlan(tmp_path, model_args, settings, None, None)
    with pytest.raises(ConfigError, match="--compile_mode reduce-overhead replays CUDA graphs, and a replay "
                                          "overwrites the gradients"):
        runplan.check_settings(plan, torch.device("cuda"), runtime.World())
    runplan.check_settings(plan, torch.device("cpu"), runtime.World())


# --- checkpoints and tokenizers -----------------------------------------------------------------

def test_random_bytes_are_not_a_checkpoint_and_torch_unsafe_advice_is_not_repeated(tmp_path, done, capsys):
    run_dir = copy_run(done, tmp_path)
    (run_dir / "last.pt").write_bytes(os.urandom(5000))
    with pytest.raises(SystemExit) as e:
        train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume"])
    line = one_line_error(capsys, 1, e)
    assert "not a checkpoint" in line and "weights_only" not in line
    # the advice names the run's best.pt (it said "e.g. best.pt", also where there was none)
    assert line.endswith(f"it was left in place: pass --resume {run_dir / 'best.pt'}, or start a new --run")
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(run_dir)])
    line = one_line_error(capsys, 1, e)
    assert "not a checkpoint" in line and "weights_only" not in line
    # --eval_only takes its checkpoint from --resume too; a new --run evaluates nothing
    with pytest.raises(SystemExit) as e:
        train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--eval_only"])
    assert one_line_error(capsys, 1, e).endswith(f"it was left in place: pass --resume {run_dir / 'best.pt'} "
                                                 "to evaluate that one")
    (run_dir / "best.pt").unlink()
    with pytest.raises(SystemExit) as e:
        train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--eval_only"])
    assert one_line_error(capsys, 1, e).endswith("it was left in place: evaluate another checkpoint with "
                                                 "--resume (a .pt file or a run folder)")
    with pytest.raises(SystemExit) as e:
        train.main(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume"])
    assert one_line_error(capsys, 1, e).endswith("start a new --run, or pass --resume another checkpoint")


def test_sample_on_an_unknown_device_exits_2(done, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(done.run_dir), "--device", "tpu"])
    assert "--device tpu" in one_line_error(capsys, 2, e)


def swap_two_tokens(path):
    """Another tokenizer of the same size and special tokens."""
    spec = json.loads(path.read_text())
    vocab = spec["model"]["vocab"]
    a, b = [k for k, v in vocab.items() if v in (100, 101)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(spec))


def test_export_refuses_a_tokenizer_the_checkpoint_was_not_trained_with(tmp_path, done, capsys):
    from scripts.export_hf import main as export_main
    run_dir = copy_run(done, tmp_path)
    swap_two_tokens(run_dir / "tokenizer.json")
    with pytest.raises(SystemExit) as e:
        export_main([str(run_dir), str(tmp_path / "hf")])
    line = one_line_error(capsys, 1, e)
    assert "is not the tokenizer" in line and "nothing was exported" in line
    assert not (tmp_path / "hf").exists()


def test_export_and_import_destinations(tmp_path, done, capsys):
    """A destination under a file is one line; --import into a folder name writes its last.pt."""
    from scripts.export_hf import main as export_main
    blocker = tmp_path / "afile"
    blocker.write_text("a file where a folder would go")
    with pytest.raises(SystemExit) as e:
        export_main([str(done.run_dir), str(blocker / "hf")])
    assert f"cannot create the folder {blocker / 'hf'}" in one_line_error(capsys, 1, e)
    export_main([str(done.run_dir), str(tmp_path / "hf")])
    with pytest.raises(SystemExit) as e:
        export_main(["--import", str(tmp_path / "hf"), str(blocker / "last.pt")])
    assert f"cannot create the folder {blocker}" in one_line_error(capsys, 1, e)
    export_main(["--import", str(tmp_path / "hf"), str(tmp_path / "ckpt" / "imported")])  # a run folder
    assert sorted(p.name for p in (tmp_path / "ckpt" / "imported").iterdir()) == ["last.pt", "tokenizer.json"]
    assert sample.main(["--ckpt", str(tmp_path / "ckpt" / "imported"), "--max_new_tokens", "3", "--greedy"])


def test_export_and_import_never_replace_without_force(tmp_path, done, capsys):
    """--import into a run folder that holds a checkpoint (which has the optimizer state a resume
    needs), or an export into a folder that holds one, is refused unless --force."""
    from scripts.export_hf import main as export_main
    run_dir = copy_run(done, tmp_path)
    export_main([str(run_dir), str(tmp_path / "hf")])
    kept = [run_dir / "last.pt", tmp_path / "hf" / "model.safetensors"]
    before = [p.read_bytes() for p in kept]
    for argv, held in [(["--import", str(tmp_path / "hf"), str(run_dir)], f"{kept[0]} already exists"),
                       ([str(run_dir), str(tmp_path / "hf")], f"{tmp_path / 'hf'} already holds a model")]:
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        line = one_line_error(capsys, 1, e)
        assert held in line and "--force" in line
    assert [p.read_bytes() for p in kept] == before
    assert "optimizer" in checkpoint.load_checkpoint(run_dir / "last.pt")
    tok = run_dir / "tokenizer.json"  # the same tokenizer saved another way: the same one
    tok.write_text(json.dumps(json.loads(tok.read_text()), indent=4))
    export_main(["--import", str(tmp_path / "hf"), str(run_dir / "same.pt")])
    swap_two_tokens(tmp_path / "hf" / "tokenizer.json")  # an HF folder with another tokenizer
    with pytest.raises(SystemExit) as e:  # than its config.json records: not imported anywhere
        export_main(["--import", str(tmp_path / "hf"), str(tmp_path / "fresh")])
    assert "is not the tokenizer" in one_line_error(capsys, 1, e) and not (tmp_path / "fresh").exists()
    tokenizer = (run_dir / "tokenizer.json").read_bytes()
    with pytest.raises(SystemExit) as e:  # beside the run's checkpoints, under another name
        export_main(["--import", str(tmp_path / "hf"), str(run_dir / "imported.pt")])
    assert f"{run_dir / 'tokenizer.json'} is another tokenizer" in one_line_error(capsys, 1, e)
    assert (run_dir / "tokenizer.json").read_bytes() == tokenizer and not (run_dir / "imported.pt").exists()
    other = tmp_path / "other" / "tokenizer.json"  # nor does an export replace another tokenizer.json
    other.parent.mkdir()
    other.write_bytes((tmp_path / "hf" / "tokenizer.json").read_bytes())
    with pytest.raises(SystemExit) as e:
        export_main([str(run_dir), str(other.parent)])
    assert f"{other.parent} already holds another tokenizer.json" in one_line_error(capsys, 1, e)
    assert [p.name for p in other.parent.iterdir()] == ["tokenizer.json"]
    export_main([str(run_dir), str(tmp_path / "hf"), "--force"])
    export_main(["--import", str(tmp_path / "hf"), str(run_dir), "--force"])
    assert "optimizer" not in checkpoint.load_checkpoint(run_dir / "last.pt")


def test_an_export_without_a_tokenizer_says_so_and_keeps_no_older_one(tmp_path, done, capsys):
    from scripts.export_hf import main as export_main
    run_dir = copy_run(done, tmp_path)
    export_main([str(run_dir), str(tmp_path / "hf")])
    (run_dir / "tokenizer.json").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit):  # refused: the warning would speak of an export not made
        export_main([str(run_dir), str(tmp_path / "hf")])
    assert "warning" not in capsys.readouterr().err
    export_main([str(run_dir), str(tmp_path / "hf"), "--force"])  # over an export that had one
    assert f"warning: {run_dir / 'tokenizer.json'} is missing" in capsys.readouterr().err
    assert not list((tmp_path / "hf").glob("tokenizer*"))
    # into a folder holding a run's own tokenizer.json (not an export's): refused, as with a tokenizer
    # (it was kept beside a model that records none, and a second export with --force deleted it)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(done.run_dir / "tokenizer.json", other / "tokenizer.json")
    with pytest.raises(SystemExit) as e:
        export_main([str(run_dir), str(other)])
    assert e.value.code == 1 and "already holds another tokenizer.json" in capsys.readouterr().err
    assert (other / "tokenizer.json").exists() and not (other / "config.json").exists()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_an_export_into_a_training_runs_folder_is_refused(tmp_path, done, capsys, force, monkeypatch):
    """Bug caught: `export_hf.py RUN_A RUN_B` (a run folder as the destination: a run exported into its
    own folder, or a slip) wrote config.json and model.safetensors among RUN_B's files and rewrote its
    tokenizer.json, exit 0; --force, which replaces an export, does not make a run folder one."""
    from scripts.export_hf import main as export_main
    other = copy_run(done, tmp_path, "other")
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    monkeypatch.setattr(checkpoint, "load_model", None)  # (refused before the checkpoint is read)
    with pytest.raises(SystemExit) as e:
        export_main([str(done.run_dir), str(other), *force])
    assert one_line_error(capsys, 1, e) == (f"export_hf.py: error: {other} is a training run's folder (it "
                                            "holds last.pt); export into a folder of its own, e.g. "
                                            "hf_export/other")
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_an_export_into_a_folder_of_runs_is_refused(tmp_path, done, capsys, force, monkeypatch):
    """Bug caught: `export_hf.py ck/a ck` (the folder of runs, an --out_dir, as the destination: a slip for
    ck/a's export folder) taken, config.json and model.safetensors written among the run folders."""
    from scripts.export_hf import main as export_main
    run_dir = copy_run(done, tmp_path, "a")
    monkeypatch.setattr(checkpoint, "load_model", None)  # (refused before the checkpoint is read)
    with pytest.raises(SystemExit) as e:
        export_main([str(run_dir), str(run_dir.parent), *force])
    assert one_line_error(capsys, 1, e) == (f"export_hf.py: error: {run_dir.parent} is a folder of runs (a), "
                                            "not one run's export; export into a folder of its own, e.g. "
                                            "hf_export/a")
    assert [p.name for p in run_dir.parent.iterdir()] == ["a"]


def test_an_import_without_a_tokenizer_says_so_and_keeps_the_same_one_beside_it(tmp_path, done, capsys):
    # (and, beside a tokenizer already there, that it was not checked: it may be another model's)
    """Bug caught: an HF folder without tokenizer.json imported silently into a checkpoint that sample.py,
    --eval_only and --init_from then refuse; or an import beside the same tokenizer (a run folder's)
    rewriting the run's tokenizer.json as the HF folder saved it."""
    from scripts.export_hf import main as export_main
    run_dir = copy_run(done, tmp_path)
    export_main([str(run_dir), str(tmp_path / "hf")])
    before = (run_dir / "tokenizer.json").read_bytes()
    capsys.readouterr()
    export_main(["--import", str(tmp_path / "hf"), str(run_dir / "imported.pt")])
    assert (run_dir / "tokenizer.json").read_bytes() == before and "warning" not in capsys.readouterr().err
    (tmp_path / "hf" / "tokenizer.json").unlink()
    export_main(["--import", str(tmp_path / "hf"), str(tmp_path / "bare")])
    assert (f"export_hf.py: warning: {tmp_path / 'hf' / 'tokenizer.json'} is missing: the checkpoint got no "
            "tokenizer") in capsys.readouterr().err
    export_main(["--import", str(tmp_path / "hf"), str(run_dir / "again.pt")])  # the run's own is there
    assert f"the {run_dir / 'tokenizer.json'} already there is not checked against its weights" in \
        capsys.readouterr().err


def test_an_export_into_a_run_folder_before_its_first_save_is_refused(tmp_path):
    """Bug caught: a run folder that holds no checkpoint yet (train.json and metrics.jsonl: a run still
    before its first save, or killed there) taken as an export's destination, its files mixed with the
    export's; refused before the model is read, as a run folder with its last.pt is."""
    for name in ("train.json", "metrics.jsonl"):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_text("{}")
        held = re.escape(f"is a training run's folder (it holds {name})")
        with pytest.raises(errors.CheckpointError, match=held):
            checkpoint.export_hf(None, folder)
        assert [p.name for p in folder.iterdir()] == [name]


def test_an_import_with_force_replaces_another_tokenizer_beside_it(tmp_path, done):
    """Bug caught: --import --force into a folder holding another tokenizer.json kept that one beside the
    new checkpoint, which records the sha256 of the HF folder's: sample.py and --init_from then refused
    the pair (--force replaces it, as the refusal without --force says)."""
    from scripts.export_hf import main as export_main
    export_main([str(done.run_dir), str(tmp_path / "hf")])
    dest = tmp_path / "w"
    dest.mkdir()
    shutil.copy(tmp_path / "hf" / "tokenizer.json", dest / "tokenizer.json")
    swap_two_tokens(dest / "tokenizer.json")
    export_main(["--import", str(tmp_path / "hf"), str(dest), "--force"])
    assert (dest / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()
    checkpoint.load_model(dest / "last.pt")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_export_interrupted_as_it_replaces_another_leaves_one_whole(signum, tmp_path, done, monkeypatch,
                                                                        capsys):
    """export --force over an export, with Ctrl-C (or SIGTERM) between its new weights and its new
    config.json, left the new weights beside the old config.json. Now the signal waits for the last
    rename: the folder is the whole new export, then the interrupt's line and 130. SIGTERM is a
    Ctrl-C while the script runs (its hidden folder is removed), and put back after."""
    from scripts import export_hf
    from scripts.export_hf import main as export_main
    run_dir, hf, want = copy_run(done, tmp_path), tmp_path / "hf", tmp_path / "want"
    export_main([str(run_dir), str(hf)])
    (run_dir / "tokenizer.json").unlink()  # the new export: no tokenizer, no tokenizer_sha256 in config.json
    export_main([str(run_dir), str(want)])  # what the interrupted one must leave
    real_replace = os.replace

    def replace(src, dst):  # the signal lands as the new weights are in place
        real_replace(src, dst)
        if os.fspath(dst) == str(hf / "model.safetensors"):
            os.kill(os.getpid(), signum)

    def on_sigterm(signum, frame):  # (SIGTERM's own action would end pytest)
        raise KeyboardInterrupt
    load_model, handlers = export_hf.checkpoint.load_model, []

    def load(path):  # the SIGTERM handler while the script works
        handlers.append(signal.getsignal(signal.SIGTERM))
        return load_model(path)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(export_hf.checkpoint, "load_model", load)
    kept = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with pytest.raises(SystemExit) as e:
            export_main([str(run_dir), str(hf), "--force"])
        assert handlers == [signal.default_int_handler] and signal.getsignal(signal.SIGTERM) is on_sigterm
    finally:
        signal.signal(signal.SIGTERM, kept)
    assert e.value.code == 130 and "export_hf.py: interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in hf.iterdir()) == sorted(p.name for p in want.iterdir())  # nor .tmp-*
    assert all((hf / p.name).read_bytes() == p.read_bytes() for p in want.iterdir())
    gone = subprocess.Popen([sys.executable, "-c", ""])  # a process that has ended
    gone.wait()
    (hf / f".tmp-export-{gone.pid}-x").mkdir()  # what a kill -9 leaves: the next export removes it
    (hf / f".tmp-export-{gone.pid}-x" / "model.safetensors").write_bytes(b"part")
    (hf / f".tmp-export-{os.getpid()}-y").mkdir()  # a live export's (this process's) and a folder not
    (hf / ".tmp-export-mine").mkdir()  # of this kind: kept
    monkeypatch.undo()
    export_main([str(run_dir), str(hf), "--force"])
    assert sorted(p.name for p in hf.glob(".tmp-*")) == [f".tmp-export-{os.getpid()}-y", ".tmp-export-mine"]


def test_an_hf_folder_with_non_ascii_settings_loads_under_a_c_locale(tmp_path, done):
    """config.json is UTF-8 whatever the locale: under LC_ALL=C (without Python's UTF-8 mode) a
    folder whose config.json held non-ASCII text was "a folder that describes no model"."""
    from scripts.export_hf import main as export_main
    hf = tmp_path / "hf"
    export_main([str(copy_run(done, tmp_path)), str(hf)])
    cfg = json.loads((hf / "config.json").read_bytes())
    cfg["_name_or_path"] = "café ☀"
    (hf / "config.json").write_bytes(json.dumps(cfg, ensure_ascii=False).encode())
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    ran = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--hf", str(hf), "--prompt", "once",
                          "--max_new_tokens", "2", "--greedy"], env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr


def test_an_export_on_a_full_disk_names_the_file_it_was_to_become(tmp_path, done, capsys, monkeypatch):
    """A full disk while the export is staged named the hidden folder's file, a folder already gone;
    now the file it was to become, and that the folder is as it was (the old export, whole)."""
    import errno

    import storage
    from scripts.export_hf import main as export_main
    run_dir, hf = copy_run(done, tmp_path), tmp_path / "hf"
    export_main([str(run_dir), str(hf)])
    before = {p.name: p.read_bytes() for p in hf.iterdir()}
    real = storage.atomic_write

    def full(path, data, fix=None):
        if str(path).endswith("model.safetensors"):
            raise storage.write_error(path, OSError(errno.ENOSPC, "No space left on device"), fix)
        return real(path, data, fix)
    monkeypatch.setattr(storage, "atomic_write", full)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        export_main([str(run_dir), str(hf), "--force"])
    assert e.value.code == 1 and capsys.readouterr().err == (
        f"export_hf.py: error: cannot write {hf / 'model.safetensors'}: the disk is full (No space left on "
        f"device); free some space or export it elsewhere ({hf} is as it was)\n")
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before


@pytest.mark.parametrize("fault", ["full disk", "interrupt"])
def test_an_export_or_import_that_fails_leaves_no_new_folder(fault, tmp_path, done, capsys, monkeypatch):
    """Bug caught: an export (or import) into a new folder that failed (a full disk, Ctrl-C) left the
    folders it had made behind, empty, where the interrupt's line said the destination "holds what it
    held before". Now they go; a folder that was there already stays."""
    import errno

    import storage
    from scripts.export_hf import main as export_main
    run_dir = copy_run(done, tmp_path)
    export_main([str(run_dir), str(tmp_path / "hf")])
    real = storage.atomic_write

    def failing(path, data, fix=None):
        if str(path).endswith(("model.safetensors", "last.pt")):
            if fault == "interrupt":
                raise KeyboardInterrupt
            raise storage.write_error(path, OSError(errno.ENOSPC, "No space left on device"), fix)
        return real(path, data, fix)
    monkeypatch.setattr(storage, "atomic_write", failing)
    (tmp_path / "kept").mkdir()  # an empty folder that was there: left as it was
    for argv in ([str(run_dir), str(tmp_path / "kept" / "new" / "hf")],
                 ["--import", str(tmp_path / "hf"), str(tmp_path / "kept" / "new" / "run")]):
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        assert e.value.code == (130 if fault == "interrupt" else 1), capsys.readouterr().err
        assert list((tmp_path / "kept").iterdir()) == []


def test_an_import_whose_tokenizer_does_not_fit_leaves_no_checkpoint(tmp_path, done, capsys, monkeypatch):
    """Bug caught (on a real full tmpfs): --import into a new folder, the disk full after last.pt and
    before its tokenizer.json, left that last.pt alone (sample.py refuses it, without its tokenizer),
    said only that tokenizer.json could not be written, and the same command, once space was freed,
    was refused: "last.pt already exists; pass --force". Now nothing is left, and it says so."""
    import errno

    import storage
    from scripts.export_hf import main as export_main
    run_dir = copy_run(done, tmp_path)
    export_main([str(run_dir), str(tmp_path / "hf")])
    real = storage.atomic_write

    def full_at_tokenizer(path, data, fix=None):
        if str(path).endswith("tokenizer.json"):
            raise storage.write_error(path, OSError(errno.ENOSPC, "No space left on device"), fix)
        return real(path, data, fix)
    argv = ["--import", str(tmp_path / "hf"), str(tmp_path / "new" / "run")]
    with monkeypatch.context() as m:
        m.setattr(storage, "atomic_write", full_at_tokenizer)
        with pytest.raises(SystemExit) as e:
            export_main(argv)
    line = one_line_error(capsys, 1, e)
    tok = tmp_path / "new" / "run" / "tokenizer.json"
    assert line.startswith(f"export_hf.py: error: cannot write {tok}: the disk is full")
    assert line.endswith("(nothing was imported)")
    assert not (tmp_path / "new").exists()
    export_main(argv)  # space freed: the same command
    assert sorted(p.name for p in (tmp_path / "new" / "run").iterdir()) == ["last.pt", "tokenizer.json"]


def test_an_export_whose_staged_file_is_gone_keeps_the_folder(tmp_path, done, capsys, monkeypatch):
    """A staged file gone before its rename (another export sweeping the folder) was read as one this
    export lacks: the old file was deleted and the export said it succeeded, leaving an empty folder.
    Now it is an error, and the old export stays whole."""
    import checkpoint
    from scripts.export_hf import main as export_main
    run_dir, hf = copy_run(done, tmp_path), tmp_path / "hf"
    export_main([str(run_dir), str(hf)])
    before = {p.name: p.read_bytes() for p in hf.iterdir()}
    real = checkpoint._write_export

    def then_lost(model, stage, tokenizer_path, fix):
        real(model, stage, tokenizer_path, fix)
        (stage / "tokenizer.json").unlink()
    monkeypatch.setattr(checkpoint, "_write_export", then_lost)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        export_main([str(run_dir), str(hf), "--force"])
    assert e.value.code == 1 and capsys.readouterr().err.startswith(
        f"export_hf.py: error: cannot write {hf / 'tokenizer.json'}: ")
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before


def test_an_export_whose_file_cannot_be_put_in_place_is_one_line(tmp_path, done, capsys):
    """A rename into the destination that fails (a folder where model.safetensors goes) is one line
    naming the file, exit 1, and leaves no hidden folder, not an IsADirectoryError traceback."""
    from scripts.export_hf import main as export_main
    run_dir, hf = copy_run(done, tmp_path), tmp_path / "hf"
    (hf / "model.safetensors").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        export_main([str(run_dir), str(hf), "--force"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    assert err.startswith(f"export_hf.py: error: cannot write {hf / 'model.safetensors'}: ")
    assert not list(hf.glob(".tmp-*"))


def test_an_export_into_a_folder_that_takes_no_new_one_names_the_hidden_folder(tmp_path, done, capsys,
                                                                                 monkeypatch):
    """Bug caught: an export into a read-only folder (setpriv --reuid=65534 ... export_hf.py RUN RO,
    as root) said "cannot write RO/model.safetensors", a file not yet begun; what failed was making
    the hidden folder the export is written into first. Now that is named."""
    import errno
    import tempfile

    from scripts.export_hf import main as export_main
    run_dir, hf = copy_run(done, tmp_path), tmp_path / "hf"
    export_main([str(run_dir), str(hf)])
    before = {p.name: p.read_bytes() for p in hf.iterdir()}

    def refused(dir=None, prefix=None, **kwargs):  # (as root, chmod 555 would not stop it)
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x")
    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        export_main([str(run_dir), str(hf), "--force"])
    assert e.value.code == 1 and capsys.readouterr().err == (
        f"export_hf.py: error: cannot create the hidden folder {hf / '.tmp-export-*'} the export is written "
        f"into first: Permission denied; export it elsewhere ({hf} is as it was)\n")
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before


@pytest.mark.parametrize("script,argv,unbuffered", [("count_params.py", ["--preset", "debug"], "1"),
                                                     ("count_params.py", ["--preset", "debug"], ""),
                                                     ("export_hf.py", ["--help"], "")])
def test_a_script_whose_output_is_closed_early_ends_quietly(script, argv, unbuffered):
    """scripts/count_params.py | head -1: no BrokenPipeError traceback (at a print, or at the flush
    when Python exits with stdout block-buffered), and exit 141, as a SIGPIPE gives."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that is gone before the first write: no race with the pipe's buffer
    try:
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")



@pytest.mark.parametrize("lost,unbuffered", [("stdout", "1"), ("stdout", ""), ("stderr", "1")])
def test_a_run_whose_console_goes_away_trains_on_to_its_last_checkpoint(tmp_path, corpus, cache, lost,
                                                                        unbuffered):
    """`train.py | head -1` (stdout's reader gone: at a log line, or at the flush at the end) or
    `2>/dev/full` (the progress bar): the run trains on to its last.pt and exits 0, with one line
    on the other stream, instead of dying at the next write with the steps since its last save."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that is gone before the first write: no race with the pipe's buffer
    argv = [sys.executable, "train.py", *train_args(tmp_path, corpus, cache, "--max_steps", "3")]
    try:
        with open("/dev/full", "w") as full:
            streams = {"stdout": write_end, "stderr": subprocess.PIPE} if lost == "stdout" else \
                {"stdout": subprocess.PIPE, "stderr": full}
            done = subprocess.run(argv, cwd=ROOT, **streams, text=True, timeout=300,
                                  env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(write_end)
    said = done.stderr if lost == "stdout" else done.stdout
    why = "standard output (Broken pipe)" if lost == "stdout" else "standard error (No space left on device)"
    assert done.returncode == 0, said
    assert said.count("cannot write") == 1
    assert f"train.py: warning: cannot write to {why}; going on without it" in said
    assert checkpoint.load_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")["step"] == 3
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3]


def run_script_with(main_body: str, stdout) -> subprocess.CompletedProcess:
    """A script whose main() is `main_body`, run through errors.run_script with `stdout`."""
    code = (f"import os, sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom errors import DataError, ConfigError, "
            f"run_script\ndef main():\n    {main_body}\nrun_script(main, 'x.py')\n")
    return subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=60, env={**os.environ, "PYTHONUNBUFFERED": ""})


def test_a_script_whose_output_a_run_inside_it_lost_still_says_so():
    """compare.py runs train.main in its process: train.py's Console took the full disk of stdout and
    trained on, and compare ended 0 with its table gone. run_script now says it at the end, exit 1."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = run_script_with("import errors; c = errors.Console(sys.stdout, 'standard output', "
                               "'train.py'); c.write('x' * 100000); c.flush(); print('the table')", full)
    assert done.returncode == 1 and done.stderr == (
        "x.py: error: cannot write to standard output (No space left on device); send the output "
        "somewhere with room, or to a terminal\n")
    done = run_script_into_a_closed_pipe(  # `compare.py | head`: quiet, a SIGPIPE's status
        "import errors; c = errors.Console(sys.stdout, 'standard output', 'train.py'); "
        "c.write('x' * 100000); c.flush(); print('the table')")
    assert (done.returncode, done.stderr) == (141, "")


def test_a_run_started_with_stdout_closed_trains(tmp_path, corpus, cache):
    """`train.py ... >&-`: Python's sys.stdout is None, which the Console wrapped and failed on (exit
    120, a traceback, no checkpoint). It trains, printing nothing there."""
    argv = [sys.executable, "train.py", *train_args(tmp_path, corpus, cache, "--max_steps", "2")]
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=300, preexec_fn=lambda: os.close(1))
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr
    assert checkpoint.load_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")["step"] == 2


@pytest.mark.parametrize("at_start", ["SIG_DFL", "SIG_IGN"])
def test_train_py_run_as_a_script_leaves_sigterm_as_it_found_it(at_start):
    """The SIGTERM-as-Ctrl-C train.py installs when run as a script (for its imports) stayed after
    main(): a kill during the exit's work (W&B's, an atexit hook) was a traceback and exit 0. A
    SIGTERM ignored from the start is not taken at all, and is ignored after main() too."""
    code = (f"import runpy, signal, sys\nsignal.signal(signal.SIGTERM, signal.{at_start})\n"
            "sys.argv = ['train.py', '--help']\ntry:\n"
            "    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            f"print(signal.getsignal(signal.SIGTERM) == signal.{at_start})")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "True", done.stderr


def run_script_into_a_closed_pipe(main_body: str) -> subprocess.CompletedProcess:
    """run_script_with, its stdout a pipe whose reader is gone (`| head` that has stopped reading)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return run_script_with(main_body, write_end)
    finally:
        os.close(write_end)


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden():
    """A script's write to a subprocess or socket whose reader is gone was taken for `| head` closing
    stdout: exit 141 and nothing said. Only stdout's closed pipe is quiet now."""
    done = run_script_with("r, w = os.pipe(); os.close(r); os.write(w, b'x')", subprocess.PIPE)
    assert done.returncode == 1 and "BrokenPipeError" in done.stderr


def test_an_error_whose_output_is_closed_keeps_its_exit_status():
    """A UserError after output that meets a closed stdout at the final flush exited 141 (a SIGPIPE's),
    not the error's status: a caller checking for 2 (a bad setting) saw a quiet pipe."""
    done = run_script_into_a_closed_pipe("print('partial'); raise ConfigError('--x 1: bad; pass --x 2')")
    assert (done.returncode, done.stderr) == (2, "x.py: error: --x 1: bad; pass --x 2\n")


def test_a_bad_option_whose_output_is_closed_keeps_argparses_exit_status():
    """argparse's error (SystemExit(2), its line already on stderr) after output that meets a closed
    stdout at the final flush exited 141: the pipe's status replaced the one already chosen."""
    done = run_script_into_a_closed_pipe("print('partial'); import argparse; "
                                         "argparse.ArgumentParser(prog='x.py').parse_args(['--bad'])")
    assert done.returncode == 2
    assert done.stderr == "usage: x.py [-h]\nx.py: error: unrecognized arguments: --bad\n"


def test_a_failures_message_whose_output_is_closed_is_still_said():
    """Holds: sys.exit("<prog>: error: ...") (compare.py's, bench.py's), not yet said when its output
    meets a closed stdout at the final flush, is said then and exits 1, not the pipe's quiet 141."""
    done = run_script_into_a_closed_pipe("print('partial'); sys.exit('x.py: error: bad; pass --x 2')")
    assert (done.returncode, done.stderr) == (1, "x.py: error: bad; pass --x 2\n")


FULL = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
NO_ROOM = ("error: cannot write to standard output (No space left on device); send the output somewhere "
           "with room, or to a terminal\n")


@FULL
@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_script_whose_output_has_no_room_says_so_in_one_line(unbuffered):
    """scripts/count_params.py > FILE on a full disk ended in an OSError traceback (at a print,
    or at the final flush): only a closed pipe was handled. Now one line naming stdout, exit 1."""
    with open("/dev/full", "w") as full:
        script = ROOT / "scripts" / "count_params.py"
        done = subprocess.run([sys.executable, str(script), "--preset", "debug"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    assert (done.returncode, done.stderr) == (1, f"count_params.py: {NO_ROOM}")


@FULL
@pytest.mark.parametrize("body,status,first", [
    ("print('partial'); raise ConfigError('--x 1: bad; pass --x 2')", 2,
     "x.py: error: --x 1: bad; pass --x 2\n"),
    ("print('help'); raise SystemExit(0)", 1, ""),
    ("print('x' * 100000)", 1, "")])
def test_output_with_no_room_keeps_an_exit_status_already_chosen(body, status, first):
    """A UserError's 2 stays 2 when its output then finds no room (--help's 0 becomes 1), and the
    flush at exit says nothing more (stdout goes to devnull, as for a closed pipe)."""
    with open("/dev/full", "w") as full:
        done = run_script_with(body, full)
    assert (done.returncode, done.stderr) == (status, f"{first}x.py: {NO_ROOM}")


@FULL
@pytest.mark.parametrize("body,status", [("print('x' * 100000)", 1),
                                         ("print('partial'); raise SystemExit(3)", 3)])
def test_output_and_stderr_with_no_room_end_with_the_status(body, status):
    """Holds: with stdout and stderr both full (`> FILE 2>&1` on a full disk) the status still says
    the failure (1, or the one already chosen): the line stderr could not take is dropped with it, not
    met again by the flush at exit, which made every such end Python's 120."""
    code = (f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom errors import run_script\n"
            f"def main():\n    {body}\nrun_script(main, 'x.py')\n")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=full, timeout=60,
                              env={**os.environ, "PYTHONUNBUFFERED": ""})
    assert done.returncode == status


@FULL
def test_what_quiet_stderr_still_holds_is_dropped_when_it_ends():
    """Holds: a part of a line (no newline yet: a progress bar's) that a full stderr (2>/dev/full) still
    held under quiet_stderr is dropped by its restore, not met by the flush at exit, which made a story
    or an export that went well end with Python's 120."""
    code = (f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport errors\nrestore = errors.quiet_stderr()\n"
            "sys.stderr.write('50%')\nrestore()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (stderr's buffer holds it)
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", code], stderr=full, timeout=60, env=env)
    assert done.returncode == 0


def test_an_oserror_that_is_not_stdouts_is_not_taken_for_it():
    """Only stdout's failure is the output line: another file's OSError is not hidden behind it."""
    done = run_script_with("os.write(os.open(os.devnull, os.O_RDONLY), b'x')", subprocess.PIPE)
    assert done.returncode == 1 and "Traceback" in done.stderr and "standard output" not in done.stderr


def test_plot_runs_writes_the_format_its_name_asks_for(tmp_path, done):
    from scripts import plot_runs
    plot_runs.main([str(done.run_dir), "--out", str(tmp_path / "runs.svg")])
    assert (tmp_path / "runs.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(SystemExit) as e:  # a format matplotlib cannot write: refused (was a PNG of that name)
        plot_runs.main([str(done.run_dir), "--out", str(tmp_path / "runs.unknown")])
    assert e.value.code == 2 and not (tmp_path / "runs.unknown").exists()


def test_a_tokenizer_of_another_size_gets_advice_about_the_tokenizer(tmp_path, done, corpus, capsys):
    run_dir = copy_run(done, tmp_path)
    Tokenizer.train([corpus.read_text()], 300).save(run_dir / "tokenizer.json")  # the run's has 320
    for main, argv in [(sample.main, ["--ckpt", str(run_dir)]),
                       (train.main, ["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--resume",
                                     "--max_steps", "8"])]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        line = one_line_error(capsys, 1, e)
        assert "is not the tokenizer" in line and "put back" in line and "--vocab_size" not in line
    # a checkpoint that records no tokenizer (an import): the sizes are compared, the advice the same
    ckpt = {"model_args": json.loads((run_dir / "model.json").read_text())}
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.check_tokenizer(Tokenizer.load(run_dir / "tokenizer.json"), "tok.json", ckpt, "w.pt")
    assert "has 300 tokens but the model of w.pt has 320" in str(e.value)
    assert "--vocab_size" not in str(e.value)


def test_out_of_memory_is_one_line_with_the_batch_the_run_uses(tmp_path, corpus, cache, monkeypatch, capsys):
    """A resumed run trains on its checkpoint's batch: running out of memory names that one, not
    the default. Loading a checkpoint too large for the device is out of memory, not 'corrupt'."""
    train.main(train_args(tmp_path, corpus, cache, "--batch_size", "2", "--max_steps", "1"))

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(train, "train_step", oom)
    with pytest.raises(SystemExit) as e:
        train.main(train_args(tmp_path, corpus, cache, "--resume", "--max_steps", "2"))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 1
    assert line.startswith("train.py: error: out of memory (OutOfMemoryError: CUDA out of memory. Tried")
    assert "lower --batch_size (now 2; --grad_accum keeps the global batch)" in line
    assert checkpoint.load_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")["step"] == 1  # left as it was
    monkeypatch.setattr(torch, "load", oom)
    with pytest.raises(SystemExit) as e:
        train.main(train_args(tmp_path, corpus, cache, "--resume", "--max_steps", "2"))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith("train.py: error: out of memory (") and "corrupt" not in err
    assert "lower --batch_size or set --grad_checkpoint true" in err


def test_out_of_memory_in_an_evaluation_names_the_evaluation_batch(tmp_path, corpus, cache, monkeypatch,
                                                                   capsys):
    """Bug caught: an evaluation out of memory (its batches up to 4x the training batch since the auto
    --eval_batch_size) was told "lower --batch_size", where --eval_batch_size is what ran out, and the
    training batch fits."""
    real = train.Llama4.forward

    def oom_in_eval(model, *args, **kwargs):
        if not model.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, *args, **kwargs)
    monkeypatch.setattr(train.Llama4, "forward", oom_in_eval)
    with pytest.raises(SystemExit) as e:
        train.main(train_args(tmp_path, corpus, cache, "--batch_size", "2", "--max_steps", "2",
                              "--eval_every", "1", "--eval_batch_size", "3"))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 1 and line.startswith("train.py: error: out of memory (OutOfMemoryError")
    assert "an evaluation's batch of 3 windows: lower --eval_batch_size" in line
    assert "--batch_size (now" not in line


def test_a_home_that_cannot_be_written_costs_no_plot_and_prints_no_noise(tmp_path, corpus, cache):
    """HOME and XDG_CACHE_HOME unwritable (a read-only home on a cluster, HOME=/nonexistent in a
    container; a file here, which root cannot write under either): matplotlib warned "Matplotlib
    created a temporary cache directory ..." and W&B's service, without its debug log, printed its
    whole log ("ERROR main: failed to get logger path ..."). Now silent; the plot and the W&B offline
    run are written as before."""
    home = tmp_path / "home"
    home.write_text("not a folder")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPLCONFIGDIR", "WANDB_CACHE_DIR", "WANDB_MODE", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home), TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *train_args(tmp_path, corpus, cache),
                           "--max_steps", "1", "--wandb_mode", "offline"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.replace("\r", "\n").splitlines()  # (all but the progress bar)
             if line.strip() and not line.startswith("r: ")]
    (sync,) = [line for line in done.stdout.splitlines() if re.search("matplotlib|wandb|W&B", line, re.I)]
    assert noise == []
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    (offline,) = (tmp_path / "ckpt" / "r" / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
    # Bug caught: W&B started silent left no word of where the offline run is or how to upload it
    assert sync == f"wandb: logging offline; upload it later with: wandb sync {offline}"


def test_matplotlib_and_wandb_folders_move_only_where_unset_and_unwritable(tmp_path, monkeypatch):
    import tempfile

    import runlog
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for var in ("MPLCONFIGDIR", "WANDB_CACHE_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # writable: to be made, as the libraries would
    runlog.writable_home_dirs("MPLCONFIGDIR", "WANDB_CACHE_DIR")
    assert "MPLCONFIGDIR" not in os.environ and "WANDB_CACHE_DIR" not in os.environ
    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mine"))  # the user's choice is kept
    runlog.writable_home_dirs("MPLCONFIGDIR", "WANDB_CACHE_DIR")
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "mine")
    ours = tmp_path / f"llama4-tinystories-{os.getuid()}"
    assert os.environ["WANDB_CACHE_DIR"] == str(ours / "wandb") and (ours / "wandb").is_dir()
    monkeypatch.delenv("MPLCONFIGDIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home"))  # the config folder alone: moved too
    runlog.writable_home_dirs("MPLCONFIGDIR")
    assert os.environ["MPLCONFIGDIR"] == str(ours / "matplotlib")


def test_a_console_passes_on_an_error_that_is_not_its_streams():
    """Catches Console taking any exception for a lost console: a bug in the caller (bytes written
    to a text stream) went silent, and the stream was dropped for the rest of the run."""
    console = errors.Console(io.StringIO(), "standard output", "train.py")
    with pytest.raises(TypeError):
        console.write(b"bytes")
    assert not console.lost and console.write("text") == 4 and console.stream.getvalue() == "text"


def test_signals_kept_puts_the_handlers_back_after_its_block():
    """Catches signals_kept leaving its recording handler on SIGINT and SIGTERM after the block."""
    def mine(signum, frame):
        raise KeyboardInterrupt
    old, sigint = signal.signal(signal.SIGTERM, mine), signal.getsignal(signal.SIGINT)
    try:
        with errors.signals_kept():
            assert signal.getsignal(signal.SIGTERM) is not mine  # (recording what mine raises)
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_closed_stdout_met_outside_its_wrapper_ends_quietly_too():
    """Catches run_script knowing stdout's closed pipe only by its wrapper's mark: a write to fd 1 past
    sys.stdout (os.write, a library's own handle) met `| head` with a traceback and exit 1."""
    done = run_script_into_a_closed_pipe("os.write(1, b'x' * 100000)")
    assert (done.returncode, done.stderr) == (141, "")


# --- what a run's own checkpoints hold (checkpoint.py's units: test_checkpoint.py) --------

def test_a_training_checkpoint_holds_what_a_resume_needs(done):
    """Catches a training checkpoint missing or misstating a field a resume reads: its settings as
    the run had them, the optimizer's moments, the step, tokens seen, seconds spent, the data
    position, every random generator's state, the tokenizer beside it; best.pt is a save of the
    same run at its best evaluation."""
    last = checkpoint.load_checkpoint(done.run_dir / "last.pt")
    t, m = last["train_args"], last["model_args"]
    assert (last["step"], t["max_steps"], last["preset"]) == (6, 6, "debug")
    assert m == config.to_dict(ModelArgs(**m)) and config.to_dict(TrainArgs(**t)) == t
    assert last["tokens"] == 6 * t["batch_size"] * t["grad_accum"] * m["max_seq_len"]
    assert last["data_position"] == {"seed": t["seed"], "step": 6}
    assert 0 < last["elapsed"] and math.isfinite(last["best_val"]) and last["skipped_steps"] == 0
    assert set(last["rng"]) == {"python", "python_pos", "numpy", "numpy_pos", "torch", "cuda"}
    moments = last["optimizer"]["state"]
    assert len(moments) == len(list(checkpoint.Llama4(ModelArgs(**m)).parameters()))
    assert all(int(s["step"]) == 6 for s in moments.values())
    assert last["tokenizer"] == {"file": "tokenizer.json",
                                 "sha256": Tokenizer.load(done.run_dir / "tokenizer.json").hash}
    best = checkpoint.load_checkpoint(done.run_dir / "best.pt")
    assert best["step"] in (4, 6) and best["best_val"] == last["best_val"] and "optimizer" in best


def test_an_exports_tokenizer_files_match_the_model_and_the_tokenizer(tmp_path, done):
    """Catches tokenizer_config.json giving another context length than the model's (transformers
    would then encode prompts the model cannot take) or other special tokens, and config.json not
    recording the tokenizer's sha256 (which loading checks); tokenizer.json is copied as it was, but
    for a post-processor that starts a text with <|endoftext|> (transformers runs it; ours never does)."""
    from config import SPECIAL_TOKENS
    model, _ = checkpoint.load_model(done.run_dir / "last.pt")
    tok = done.run_dir / "tokenizer.json"
    out = checkpoint.export_hf(model, tmp_path / "hf", tok)
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["model_max_length"] == model.args.max_seq_len
    assert (settings["eos_token"], settings["bos_token"], settings["pad_token"]) == (
        SPECIAL_TOKENS["eos_id"], SPECIAL_TOKENS["eos_id"], SPECIAL_TOKENS["pad_id"])
    assert settings["tokenizer_class"] == "PreTrainedTokenizerFast"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tokenizer_sha256"] == Tokenizer.load(tok).hash
    assert (cfg["eos_token_id"], cfg["pad_token_id"]) == (model.args.eos_id, model.args.pad_id)
    assert (cfg["vocab_size"], cfg["max_position_embeddings"]) == (model.args.vocab_size,
                                                                   model.args.max_seq_len)
    exported, trained = json.loads((out / "tokenizer.json").read_text()), json.loads(tok.read_text())
    assert trained["post_processor"] is None and exported.pop("post_processor")["single"] == [
        {"SpecialToken": {"id": SPECIAL_TOKENS["eos_id"], "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}}]
    assert exported == {k: v for k, v in trained.items() if k != "post_processor"}  # the rest as it was
    assert not list(out.glob(".tmp-*"))


def test_a_checkpoint_recording_no_tokenizer_takes_any_that_fits_its_model(done):
    """Catches check_tokenizer's refusal losing the advice it is given; a checkpoint that records no
    tokenizer (one imported from a folder this project did not export) takes any that fits its model,
    and a recorded sha256 is compared. (Refusing where none is recorded shows only with a tokenizer
    holding a post-processor, whose legacy hash is not None: not this one.)"""
    ckpt = checkpoint.load_checkpoint(done.run_dir / "last.pt")
    tok = Tokenizer.load(done.run_dir / "tokenizer.json")
    checkpoint.check_tokenizer(tok, "tokenizer.json", {**ckpt, "tokenizer": None}, "imported.pt")
    unrecorded = {k: v for k, v in ckpt.items() if k != "tokenizer"}
    checkpoint.check_tokenizer(tok, "tokenizer.json", unrecorded, "imported.pt")
    checkpoint.check_tokenizer(tok, "tokenizer.json", ckpt, "last.pt")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.check_tokenizer(tok, "tokenizer.json", {**ckpt, "tokenizer": {"sha256": "0" * 64}},
                                   "last.pt", fix="put it back")
    assert str(e.value).startswith("tokenizer.json is not the tokenizer last.pt was trained with (sha256 ")
    assert str(e.value).endswith("!= 000000000000); put it back")


def test_an_import_refuses_a_tokenizer_its_export_did_not_record(tmp_path, done):
    """Catches import_hf skipping the tokenizer check: a folder whose tokenizer.json was swapped
    for another (same size, same special tokens) imported, and its checkpoint then recorded the
    wrong tokenizer as the one it was trained with."""
    model, _ = checkpoint.load_model(done.run_dir / "last.pt")
    hf = checkpoint.export_hf(model, tmp_path / "hf", done.run_dir / "tokenizer.json")
    spec = json.loads((hf / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = [k for k, v in vocab.items() if v in (100, 101)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (hf / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(checkpoint.CheckpointError, match="is not the tokenizer"):
        checkpoint.import_hf(hf, tmp_path / "back")
    assert not (tmp_path / "back" / "last.pt").exists()
