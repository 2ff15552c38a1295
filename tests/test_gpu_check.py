"""scripts/gpu_check.py, the one command for whoever has a GPU, in its quick mode on the CPU: each
part runs and leaves its file, so the check cannot rot between GPU sessions."""

import json
import signal
import time
from pathlib import Path

import pytest
from conftest import write_stories

from scripts import gpu_check


def test_quick_gpu_check_runs_every_part_on_cpu(tmp_path):
    write_stories(tmp_path / "train.txt")
    write_stories(tmp_path / "valid.txt", n=30, seed=1)
    out = gpu_check.main(["--quick", "--device", "cpu", "--compile", "false", "--out", str(tmp_path / "gpu"),
                          "--work", str(tmp_path / "work"), "--data", str(tmp_path / "train.txt"),
                          "--val_data", str(tmp_path / "valid.txt"), "--only", "model,train"])
    model = json.loads((out / "bench_model.json").read_text())
    assert set(model["batches"]["8"]["step_seconds"]) == {"moe", "dense", "moe+ckpt", "moe+plain-loss",
                                                                 "moe+eval"}
    measured = model["batches"]["8"]["peak_step_memory_mb"]
    assert measured.keys() == {"moe", "moe+ckpt", "moe+plain-loss"}
    modelled = model["batches"]["8"]["modelled_step_memory_mb"]  # the memory model, checked
    assert modelled.keys() == measured.keys()
    for v, mb in modelled.items():
        assert abs(mb - measured[v]) <= max(3.0, 0.10 * measured[v]), (v, mb, measured[v])
    assert model["batches"]["8"]["ops_per_step"]["moe"] > 0
    profile = model["batches"]["8"]["profile"]["moe"]  # where the step's time goes (CPU: aten ops)
    assert profile["wall_ms"] > 0 and profile["top"] and profile["top"][0][0].startswith("aten::")
    run = json.loads((out / "train.json").read_text())
    assert run["train_exit"] == 0 and run["steps"] == 6 and run["eval"]["bits_per_byte"] > 0
    assert run["evaluations"] == 2 and run["eval_seconds"] > 0 and run["eval_over_train_speed"] > 0
    assert run["sample"] and not run["sample"].startswith("(sample.py failed")
    assert run["greedy"]["same"] and run["greedy"]["same_characters"] == run["greedy"]["characters"] > 0
    md = (out / "gpu.md").read_text()
    assert "Training step" in md and "modelled (MB)" in md
    assert "steady_tokens_per_s" in md and "Greedy story" in md
    assert "Where a moe step's time goes" in md
    assert "eval_over_train_speed" in md and "evaluation pass tokens/s / training step tokens/s" in md


def test_a_command_past_the_deadline_is_killed_with_its_children_and_its_output_kept(tmp_path):
    """--deadline: the check stops its own commands before a lease's time limit stops it, and what
    they printed is in the log by then (it is written line by line, not at their end; a byte that
    is not UTF-8 does not stop it)."""
    pid_file = tmp_path / "child.pid"
    script = tmp_path / "slow.py"
    script.write_text("import subprocess, sys, time\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                      f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                      "sys.stdout.buffer.write(b'\\xff stray byte\\n')\n"
                      "print('begun', flush=True)\n"
                      "time.sleep(60)\n"
                      "print('never')\n")
    t = time.monotonic()
    with open(tmp_path / "log.txt", "w", encoding="utf-8") as log:
        r = gpu_check.sh(script, log=log, until=time.monotonic() + 5)
        assert "begun" in (tmp_path / "log.txt").read_text()
    assert time.monotonic() - t < 30
    assert r.returncode == gpu_check.STOPPED and r.stdout == "\ufffd stray byte\nbegun\n"
    stopped = f"[exit 124 ({-signal.SIGTERM}), stopped at the check's deadline"
    assert stopped in (tmp_path / "log.txt").read_text()
    with open(tmp_path / "log.txt", "a", encoding="utf-8") as log:  # past the deadline: not started
        assert gpu_check.sh(script, log=log, until=time.monotonic()).returncode == gpu_check.STOPPED
    assert "[not started: past the check's deadline]" in (tmp_path / "log.txt").read_text()
    status = Path(f"/proc/{pid_file.read_text()}/status")  # its child went too (or is a zombie)
    for _ in range(50):
        if not status.exists() or "\tZ" in status.read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the command's child outlived the deadline")


def test_a_part_without_time_left_is_skipped_and_its_old_files_removed(tmp_path):
    out = tmp_path / "gpu"
    out.mkdir()
    (out / "bench_model.json").write_text("{}")  # an earlier run's: must not pass for this one's
    gpu_check.main(["--quick", "--device", "cpu", "--deadline", "0", "--out", str(out),
                    "--work", str(tmp_path / "work"), "--only", "model,train"])
    assert not (out / "bench_model.json").exists() and not (out / "train.json").exists()
    log = (out / "log.txt").read_text()
    assert "# model: skipped" in log and "# train: skipped" in log
    assert (out / "gpu.md").exists()


def test_an_unknown_part_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--quick", "--out", str(tmp_path), "--only", "model,speed"])
    assert e.value.code == 2 and "--only model,speed: each part must be one of model,sample,train" in \
        capsys.readouterr().err
