"""scripts/gpu_check.py, the one command for whoever has a GPU, in its quick mode on the CPU: each
part runs and leaves its file, so the check cannot rot between GPU sessions."""

import json
import math
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import option_helps, write_stories

from errors import UserError
from scripts import gpu_check

LEAST = str(gpu_check.MIN_PART_S)  # the least --deadline taken: what parse() took of it leaves under
# MIN_PART_S for the first part, which is skipped (a deadline that leaves no time is a bad option)


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-data")
    write_stories(folder / "train-lower.txt")
    write_stories(folder / "valid-lower.txt", n=30, seed=1)
    return folder


@pytest.fixture(autouse=True)
def default_texts(gpu_data, monkeypatch):
    """The default --data and --val_data (gpu-data/'s or ../shared's, checked before any part with the
    train part runs) as toy texts, so that a test that leaves them out does not need ../shared beside
    the clone."""
    monkeypatch.setattr(gpu_check, "DATA_DIRS", [gpu_data])


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
    assert "moe against dense, aten ops (self CPU time) by kind, per step (ms, calls):" in md
    assert "eval_over_train_speed" in md and "evaluation pass tokens/s / training step tokens/s" in md


def slow_command(tmp_path) -> Path:
    """A command that starts a child, writes both pids, prints (without flushing), looks whether the
    check's log (argv[1]) holds that line yet, says so, and sleeps."""
    script = tmp_path / "slow.py"
    script.write_text("import os, subprocess, sys, time\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                      f"open({str(tmp_path / 'pids')!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
                      "sys.stdout.buffer.write(b'\\xff stray byte\\n')\n"
                      "print('begun')\n"
                      "time.sleep(1)\n"
                      "print('log had it:', 'begun' in open(sys.argv[1], encoding='utf-8').read())\n"
                      "time.sleep(60)\n"
                      "print('never')\n")
    return script


def gone(pid: str) -> bool:
    """Whether process `pid` has ended (a zombie counts: ended, not yet reaped), waiting up to 5 s."""
    status = Path(f"/proc/{pid}/status")
    for _ in range(50):
        if not status.exists() or "\tZ" in status.read_text():
            return True
        time.sleep(0.1)
    return False


def test_a_command_past_the_deadline_is_stopped_with_its_children_and_its_output_kept(tmp_path):
    """--deadline: the check stops its own commands before a lease's time limit stops it, and what
    they printed is in the log as they print it (they run unbuffered; a byte that is not UTF-8
    does not stop the pump)."""
    script, log_path = slow_command(tmp_path), tmp_path / "log.txt"
    t = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        r = gpu_check.sh(script, log_path, log=log, until=time.monotonic() + 6)
    assert time.monotonic() - t < 30
    assert r.returncode == gpu_check.STOPPED
    assert r.stdout == "\ufffd stray byte\nbegun\nlog had it: True\n"
    assert f"[exit 124 ({-signal.SIGTERM}), stopped at the check's deadline" in log_path.read_text()
    assert all(gone(pid) for pid in (tmp_path / "pids").read_text().split())  # its child went too
    with open(log_path, "a", encoding="utf-8") as log:  # past the deadline: not started
        assert gpu_check.sh(script, log_path, log=log, until=time.monotonic()).returncode == gpu_check.STOPPED
    assert "[not started: past the check's deadline]" in log_path.read_text()


def test_an_interrupted_check_stops_its_command_with_its_children(tmp_path):
    """Ctrl-C (or SIGTERM, which the script turns into an exit) while a command runs: the command
    and its children are stopped too, not left running on the GPU."""
    script, log_path = slow_command(tmp_path), tmp_path / "log.txt"

    def interrupt(*_):
        raise KeyboardInterrupt
    before = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 3)
    t = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), open(log_path, "w", encoding="utf-8") as log:
            gpu_check.sh(script, log_path, log=log)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    assert time.monotonic() - t < 30
    assert all(gone(pid) for pid in (tmp_path / "pids").read_text().split())


def test_a_part_without_time_left_is_skipped_and_its_old_files_removed(tmp_path):
    """A part with no time left is skipped, its files from before removed, and it is named in gpu.md
    as cut by the deadline, with exit 1 (it was only logged: a check that looked done)."""
    out = tmp_path / "gpu"
    out.mkdir()
    (out / "bench_model.json").write_text('{"config": {}, "batches": {}, "params": 1}')  # an earlier run's:
    # it must not pass for this one's
    reserved = " before the 210 s kept for the train part"
    with pytest.raises(SystemExit, match=rf"error: the model part \(cut by the deadline: under 30 s left"
                                         rf"{reserved}, not begun\), the train part \(cut by the deadline"):
        gpu_check.main(["--quick", "--device", "cpu", "--deadline", LEAST, "--out", str(out),
                        "--work", str(tmp_path / "work"), "--only", "model,train"])
    for name, part, kept in [("bench_model.json", "model", reserved), ("train.json", "train", "")]:
        assert json.loads((out / name).read_text()) == {  # (what --render reads)
            "not_measured": f"the {part} part (cut by the deadline: under 30 s left{kept}, not begun)"}
    log = (out / "log.txt").read_text()
    assert "# model: skipped" in log and "# train: skipped" in log
    assert (out / "gpu.md").read_text().startswith("**Failed:** the model part (cut by the deadline")


def test_a_smoke_test_never_replaces_the_readmes_figures(tmp_path, capsys):
    """`gpu_check.py --quick` (or an abbreviation of it) without --out emptied img/gpu/ and wrote a
    failed check's gpu.md there; a check off the defaults now writes to --work/results/, and a
    CUDA check without a GPU stops before touching anything."""
    figures = gpu_check.ROOT / "img" / "gpu"
    before = {f.name: f.read_bytes() for f in figures.iterdir()}
    with pytest.raises(SystemExit, match="cut by the deadline"):  # (every part skipped)
        gpu_check.main(["--quick", "--device", "cpu", "--deadline", LEAST, "--work", str(tmp_path / "work")])
    out = tmp_path / "work" / "results"
    assert (out / "gpu.md").exists()
    assert "not written to" in capsys.readouterr().err
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            gpu_check.main(["--work", str(tmp_path / "work2")])
        assert e.value.code == 2
        assert "--device cuda: no CUDA GPU here; for the smoke test" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in figures.iterdir()} == before


@pytest.mark.parametrize("device, message", [
    ("mps", "--device mps: this project runs on cpu or cuda"),
    ("cpu:1", "--device cpu:1: there is one CPU device; use --device cpu")])
def test_a_device_the_project_refuses_is_one_line_before_any_part(tmp_path, monkeypatch, device, message):
    """Bug caught: `--quick --device mps` (or cpu:1) ran every part, each refusing it (exit 2), and
    the check said only "bench_model.py (exit 2), bench_sample.py (exit 2), train.py (exit 2) failed;
    see log.txt". Now the device's own line, exit 2, and nothing written."""
    monkeypatch.setattr(gpu_check, "sh", lambda *a, **k: pytest.fail("a part ran"))
    with pytest.raises(UserError) as e:
        gpu_check.main(["--quick", "--device", device, "--out", str(tmp_path / "gpu")])
    assert e.value.exit_code == 2 and message in str(e.value)
    assert not (tmp_path / "gpu").exists()


def test_a_check_on_other_text_writes_beside_its_run(tmp_path, monkeypatch, capsys):
    """--data or --val_data on other text than the README's (wherever that lies) is off the defaults."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (parse only: nothing runs)
    work = ["--work", str(tmp_path / "work")]
    assert gpu_check.parse([*work, "--data", "gpu-data/train-lower.txt"])[1] == gpu_check.ROOT / "img" / "gpu"
    for flag in ("--data", "--val_data"):
        assert gpu_check.parse([*work, flag, str(tmp_path / "other.txt")])[1] == tmp_path / "work" / "results"
        assert f"(this one sets {flag})" in capsys.readouterr().err


def test_an_unknown_part_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--quick", "--out", str(tmp_path), "--only", "model,speed"])
    assert e.value.code == 2 and "--only model,speed: each part must be one of model,sample,train" in \
        capsys.readouterr().err


def test_a_failed_command_is_named_in_gpu_md_and_the_check_exits_1(tmp_path):
    """train.py failing (here: its text is shorter than a vocabulary) must not pass for a finished
    check: a GPU session would be spent on it."""
    out = tmp_path / "gpu"
    (tmp_path / "short.txt").write_text("a story too short to train a tokenizer on\n")
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--quick", "--device", "cpu", "--out", str(out), "--work", str(tmp_path / "work"),
                        "--data", str(tmp_path / "short.txt"), "--only", "train"])
    assert "train.py (exit 1) failed" in str(e.value.code)
    assert (out / "gpu.md").read_text().startswith("**Failed:** train.py (exit 1); see log.txt.")


def test_a_variant_bench_model_could_not_measure_fails_the_check(tmp_path, monkeypatch):
    """bench_model.py goes on without a variant that fails (a compiler failure on the GPU); the
    check names it at the top of gpu.md and exits 1, so that the table is not taken as whole."""
    import subprocess

    def fake_sh(*argv, log, until=None):
        result = {"device": "NVIDIA H200", "config": {"max_seq_len": 256, "dim": 512, "n_layers": 8,
                                                      "n_experts": 16, "top_k": 1, "dtype": "bfloat16",
                                                      "repeats": 10, "torch": "2.11"},
                  "batches": {"128": {"step_seconds": {"moe": 0.05}, "tokens_per_second": {"moe": 6.5e5},
                                      "mfu": None, "ops_per_step": {}, "peak_step_memory_mb": {},
                                      "ratios": {}, "failed": {"moe+compile": "InductorError: boom"}}}}
        Path(argv[argv.index("--out") + 1]).write_text(json.dumps(result))
        return subprocess.CompletedProcess(argv, 0, "", "")
    monkeypatch.setattr(gpu_check, "sh", fake_sh)
    with pytest.raises(SystemExit, match="bench_model.py moe[+]compile at batch 128 failed"):
        gpu_check.main(["--only", "model", "--device", "cpu", "--out", str(tmp_path / "gpu")])
    md = (tmp_path / "gpu" / "gpu.md").read_text()
    assert md.startswith("**Failed:** bench_model.py moe+compile at batch 128; see log.txt")
    assert "| moe+compile | failed: InductorError: boom | |" in md


def test_a_run_that_fell_back_to_eager_fails_the_check(tmp_path, monkeypatch, capsys):
    """train.py and sample.py asked to compile go on eagerly, with one warning line, where
    compiling fails: the check must not report those figures as compiled ones. It reads each
    warning the project prints (produced here by the code that prints them)."""
    import subprocess
    from types import SimpleNamespace

    import torch

    import runtime
    import sample
    import train
    from runtime import World
    said = []
    monkeypatch.setattr(runtime, "compile_problem", lambda device: "no C compiler")
    runtime.compile_model(torch.nn.Linear(2, 2), "true", torch.device("cpu"), said.append)
    train.run_eagerly(SimpleNamespace(world=World(), log=said.append, model=None), RuntimeError("x"),
                      "an evaluation")
    monkeypatch.setattr(sample.DecodeStep, "failures", [])

    def fail(*args, **kwargs):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(torch, "compile", fail)
    from conftest import debug_args

    from model import Llama4
    sample.generate(Llama4(debug_args()).eval(), [[5, 6, 7]], 3, greedy=True, compile=True)
    said.append(capsys.readouterr().err)
    assert len(said) == 3
    for line in said:
        proc = subprocess.CompletedProcess([], 0, f"step 1\n{line}\n", "")
        assert gpu_check.fell_back(proc) == line.strip()
    assert gpu_check.fell_back(subprocess.CompletedProcess([], 0, "warning: something else\n", "")) is None

    def fake_sh(*argv, log, until=None):  # a train.py that compiled nothing, and wrote no metrics
        return subprocess.CompletedProcess(argv, 0, f"model: ...\n{said[1]}\n", "")
    monkeypatch.setattr(gpu_check, "sh", fake_sh)
    monkeypatch.setattr(gpu_check, "FAILED", [])
    opts = SimpleNamespace(work=str(tmp_path), quick=True, data="t.txt", val_data="v.txt", compile="true",
                           compile_mode="default", device="cpu", until=None)
    result = gpu_check.train_part(opts, tmp_path, log=None)
    assert result["fell_back_to_eager"].startswith("warning: the compiled model failed at an evaluation")
    assert gpu_check.train_failures(result) == ["train.py (evaluated eagerly)"]
    out = tmp_path / "gpu"  # and --render, from the JSON two device calls brought back, says the same
    out.mkdir()
    (out / "train.json").write_text(json.dumps({**result, "argv": [], "greedy": {"fell_back_to_eager": "w"}}))
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--render", "--out", str(out)])
    assert str(e.value.code) == ("gpu_check: error: train.py (evaluated eagerly), sample.py --greedy (ran "
                                 "eagerly) failed")


def test_quick_sample_part_compares_with_the_reference_moe_path(tmp_path):
    """The decode part: the float32 agreement, which now also decodes with the MoE's reference path
    eagerly (what the compiled step runs in fp32 on CUDA), and says so; then the speed pass."""
    out = gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", "sample",
                          "--work", str(tmp_path / "work")])
    fp32 = json.loads((out / "bench_sample_fp32.json").read_text())
    assert fp32["config"]["variants"] == ["cached", "reference", "uncached"] and fp32["config"]["warmup"] == 0
    r = fp32["results"]["batch2"]
    assert r["share_of_tokens_as_reference"]["cached"] == 1.0
    md = (out / "gpu.md").read_text()
    assert "equal to the eager reference MoE path's: cached 100.0%, uncached 100.0%" in md


def test_the_gpu_plan_leaves_out_what_no_goal_counts(tmp_path, monkeypatch):
    """On a GPU (commands recorded, not run): the bf16 decode pass leaves out the slow uncached
    variant, the float32 one adds the reference path and skips eager warm-ups. The float32 one, the
    correctness question, runs first: a deadline then cuts the speed figures instead (it ran last,
    and the deadline cut it)."""
    import subprocess
    ran = []
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append([str(a) for a in argv])
                        or subprocess.CompletedProcess(argv, 0, "", ""))
    gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", "sample"])
    agree, speed = ran
    assert speed[speed.index("--variants") + 1] == "cached,compiled,hf"
    assert agree[agree.index("--variants") + 1] == "cached,reference,compiled,compiled-nograph"
    assert agree[agree.index("--warmup") + 1] == "0" and agree[agree.index("--dtype") + 1] == "float32"


def test_render_puts_two_calls_files_together(tmp_path):
    """A check made in two device calls comes back as two sets of files: --render writes gpu.md
    from the JSON in --out, running nothing (and needing no GPU), failures in them named."""
    out = tmp_path / "gpu"
    out.mkdir()
    (out / "train.json").write_text(json.dumps({"argv": ["--preset", "x"], "steps": 5, "steady_mfu": 0.3,
                                                "fell_back_to_eager": "warning: ..."}))
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--render", "--out", str(out)])
    md = (out / "gpu.md").read_text()
    assert "| steps | 5 |" in md and "| steady_mfu | 0.3 |" in md
    assert md.startswith("**Failed:** train.py (ran")
    assert "eagerly" in str(e.value.code) and not (out / "log.txt").exists()
    (out / "train.json").write_text(json.dumps({"argv": [], "train_exit": 1, "greedy": {"failed": True,
                                                                                      "exits": [1, 124]}}))
    with pytest.raises(SystemExit) as e:  # failed commands too, as far as the JSON tells
        gpu_check.main(["--render", "--out", str(out)])
    assert str(e.value.code) == "gpu_check: error: train.py (exit 1), sample.py --greedy (exit 1) failed"


def test_make_gpu_check_writes_where_the_device_tool_collects(tmp_path):
    """On a lent machine only what lands under $OUT comes back: `make gpu-check` passes it as
    --out (ARGS, after it, may still name another folder)."""
    import os
    import shutil
    import subprocess

    from conftest import ROOT
    if shutil.which("make") is None:
        pytest.skip("no make here")
    dry = subprocess.run(["make", "-n", "gpu-check", "ARGS=--only sample"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "OUT": str(tmp_path)})
    assert f"scripts/gpu_check.py --out {tmp_path} --only sample" in dry.stdout


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    """--out under a file (or on a read-only disk) was a traceback. Bugs caught: /proc/g was "cannot
    create the folder /proc/g: No such file or directory" (of /proc, which is there), now /proc
    takes no new folders; /proc itself (a folder that takes no file) was log.txt's traceback."""
    from errors import run_script
    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "a_file" / "gpu"
    cases = [(["--quick", "--device", "cpu", "--out", str(bad)], f"cannot create the folder {bad}")]
    if Path("/proc/self").is_dir():  # (Linux's procfs: mkdir there says ENOENT)
        cases.append((["--quick", "--device", "cpu", "--out", "/proc/g"],
                      "cannot create the folder /proc/g: /proc takes no new folders; pick another --out"))
        cases.append((["--quick", "--device", "cpu", "--out", "/proc"],
                      "cannot write in the folder /proc: it takes no new files; pick another --out"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            run_script(lambda argv=argv: gpu_check.main(argv), "gpu_check.py")
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 1 and err[-1].startswith(f"gpu_check.py: error: {message}")
        assert err[-1].endswith("pick another --out")


@pytest.mark.parametrize("flag, value", [("--deadline", "nan"), ("--deadline", "-5"), ("--deadline", "0"),
                                         ("--deadline", "29.5"), ("--minutes", "-1"), ("--minutes", "inf")])
def test_a_deadline_or_budget_that_is_not_a_time_is_refused(tmp_path, capsys, flag, value):
    """--deadline nan stopped every command at once and the check exited 0 with an empty gpu.md;
    a negative --minutes failed train.py only after the benchmarks had spent the lease. Bug caught
    (0, 29.5): a deadline under MIN_PART_S was taken, began no part and named each "cut by the
    deadline", exit 1; now a bad option, exit 2, naming the least it takes."""
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path / "gpu"), flag, value])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    least = "30 or more (no part is begun with under 30 s left)" if flag == "--deadline" else "0 or more"
    said = f"argument {flag}: expected a finite number, got {value!r}" if value in ("nan", "inf") else \
        f"{flag}: must be a finite number, {least}, got {value}"  # (nan, inf: read as train.py reads them)
    assert e.value.code == 2 and f"error: {said}" in err
    assert not (tmp_path / "gpu").exists()


def test_minutes_0_needs_a_deadline(tmp_path, capsys):
    """--minutes 0 is train.py's "no budget": beside the train part's --max_steps 1000000, and with
    no --deadline to fit the run into, the check trained for hours; with one, or with no train
    part, it is allowed."""
    out = str(tmp_path / "gpu")
    with pytest.raises(SystemExit) as e:  # (parse: without the check, main would run it)
        gpu_check.parse(["--device", "cpu", "--out", out, "--minutes", "0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "error: --minutes 0 (no budget of its own) needs a --deadline" in err
    for allowed in (["--deadline", "300"], ["--only", "model,sample"], ["--quick"]):
        assert gpu_check.parse(["--device", "cpu", "--out", out, "--minutes", "0", *allowed])[0].minutes == 0


def test_a_small_train_budget_is_passed_on_unrounded(tmp_path, monkeypatch):
    """--minutes 0.004 was passed as --max_minutes 0.00, which train.py reads as no budget at all
    (a run of --max_steps 1000000). Commands recorded, not run."""
    import subprocess
    ran = []
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append([str(a) for a in argv])
                        or subprocess.CompletedProcess(argv, 1, "", ""))
    gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", "train",
                    "--minutes", "0.004", "--work", str(tmp_path / "work")])
    train = ran[0]
    assert train[train.index("--max_minutes") + 1] == "0.004"


@pytest.mark.parametrize("files, message", [
    (None, "--render: {out} does not exist; pass --out the folder a check wrote its JSON to"),
    ({}, "--render: {out} holds none of bench_model.json, bench_sample.json, bench_sample_fp32.json, "
         "train.json; pass --out"),
    ({"bench_model.json": '{"batches": {"32": '}, "--render: {out}/bench_model.json is not a check's JSON "
                                                  "(JSONDecodeError: "),
    ({"train.json": "[]"}, "--render: {out}/train.json is not a check's JSON "
                           "(ValueError: not a JSON object)"),
    ({"bench_sample.json": "{}"}, "--render: the JSON in {out} is not what this gpu_check.py writes "
                                  "(KeyError: 'results'); run those parts again"),
    ({"train.json": '{"steps": 3}'}, "--render: the JSON in {out} is not what this gpu_check.py writes "
                                     "(KeyError: 'argv')"),
])
def test_render_of_missing_or_partial_results_is_one_line_and_keeps_gpu_md(tmp_path, capsys, files, message):
    """--render on a folder that is not there said it could not write gpu.md there; on a folder without
    results it wrote an empty gpu.md and exited 0; a JSON file cut short (a copy that stopped) or of
    another shape was a traceback. Now one line, exit 1, and gpu.md as it was."""
    from errors import run_script
    out = tmp_path / "gpu"
    if files is not None:
        out.mkdir()
        (out / "gpu.md").write_text("Machine: the last good one\n")
        for name, text in files.items():
            (out / name).write_text(text)
    with pytest.raises(SystemExit) as e:
        run_script(lambda: gpu_check.main(["--render", "--out", str(out)]), "gpu_check.py")
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith("gpu_check.py: error: " + message.format(out=out)), err
    assert files is None or (out / "gpu.md").read_text() == "Machine: the last good one\n"


def test_render_of_a_file_says_it_is_a_file(tmp_path, capsys):
    """Bug caught: --render --out RUN/train.json (a file, not the check's folder) said the file "does not
    exist". Now it says it is a file, in one line."""
    from errors import run_script
    out = tmp_path / "train.json"
    out.write_text("{}")
    with pytest.raises(SystemExit) as e:
        run_script(lambda: gpu_check.main(["--render", "--out", str(out)]), "gpu_check.py")
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"gpu_check.py: error: --render: {out} is a file, not a folder; pass --out"), err


def fake_train_run(tmp_path, monkeypatch, windows: int, follow_ups: dict, exit: int = 0, steps: int = 10,
                   lm_loss: list[float] | None = None):
    """gpu_check.sh recording the commands (argv and what train.json held as each began): a train.py
    run that logs `windows` train windows of `steps` steps (with lm_loss[i], where given) and two
    evaluations and exits `exit`, and follow-ups answering follow_ups[name] = (exit, stdout)."""
    import subprocess
    ran = []

    def fake_sh(*argv, log, until=None):
        argv = [str(a) for a in argv]
        kept = tmp_path / "gpu" / "train.json"
        ran.append((argv, json.loads(kept.read_text()) if kept.exists() else None))
        if argv[0] == "train.py" and "--eval_only" not in argv:
            run_dir = tmp_path / "work" / "gpu-check"
            run_dir.mkdir(parents=True)
            records = [{"kind": "train", "step": steps * (i + 1), "tokens": 1000 * (i + 1),
                        "minutes": 0.1 * (i + 1), "tokens_per_s": 50.0 if i == 0 else 100.0 + i, "mfu": None}
                       | ({} if lm_loss is None else {"lm_loss": lm_loss[i]}) for i in range(windows)]
            records += [{"kind": "val", "minutes": 0.1 * windows, "val_seconds": 2.0, "val_tokens": 500}] * 2
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            return subprocess.CompletedProcess(argv, exit, "", "")
        name = "eval_only" if "--eval_only" in argv else f"greedy {argv[-1]}" if "--greedy" in argv \
            else "story"
        code, out = follow_ups[name]
        return subprocess.CompletedProcess(argv, code, out, "")
    monkeypatch.setattr(gpu_check, "sh", fake_sh)
    return ran


def test_the_greedy_comparison_runs_first_and_what_the_deadline_cuts_is_named(tmp_path, monkeypatch):
    """After the train.py run: the greedy comparison first (it matters most), then --eval_only and
    the story; train.json is written after the run and after each of them (a kill there keeps the
    figures); a follow-up stopped at the deadline (exit 124) is named at the top of gpu.md as cut,
    and an --eval_only whose last line is not its figures is a failure, not a traceback. The run
    leaves FOLLOW_UP_S (140 s: start-up and four commands) of the deadline to them."""
    ran = fake_train_run(tmp_path, monkeypatch, windows=3, follow_ups={
        "greedy true": (0, "once upon a time"), "greedy false": (gpu_check.STOPPED, ""),
        "eval_only": (0, ""), "story": (gpu_check.STOPPED, "")})
    out = tmp_path / "gpu"
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--device", "cpu", "--out", str(out), "--work", str(tmp_path / "work"),
                        "--only", "train", "--minutes", "0", "--deadline", "1000"])
    commands = [(argv[0], "--eval_only" in argv, "--greedy" in argv) for argv, _ in ran]
    assert commands == [("train.py", False, False), ("sample.py", False, True), ("sample.py", False, True),
                        ("train.py", True, False), ("sample.py", False, False)]
    train = ran[0][0]
    assert float(train[train.index("--max_minutes") + 1]) <= (1000 - 140) / 60
    assert [kept and kept["steps"] for _, kept in ran] == [None, 30, 30, 30, 30]  # kept before the follow-ups
    assert ran[4][1]["greedy"] == {"failed": True, "exits": [0, gpu_check.STOPPED]}
    cut = "sample.py --greedy (eager) (cut by the deadline), sample.py (story) (cut by the deadline), " \
          "train.py --eval_only (no figures)"
    assert str(e.value.code).startswith(f"gpu_check: error: {cut} failed")
    result = json.loads((out / "train.json").read_text())
    assert result["cut"] == ["sample.py --greedy (eager)", "sample.py (story)"]
    assert "no JSON figures" in result["eval_failed"] and "eval" not in result
    assert (out / "gpu.md").read_text().startswith(f"**Failed:** {cut}; see log.txt.")
    with pytest.raises(SystemExit) as e:  # and --render, from train.json alone, says the same
        gpu_check.main(["--render", "--out", str(out)])
    assert str(e.value.code) == f"gpu_check: error: {cut} failed"
    with pytest.raises(ValueError, match="no JSON figures"):
        gpu_check.eval_result("evaluating...\nnot json\n")
    assert gpu_check.eval_result('x\n{"bits_per_byte": 1.5}\n') == {"bits_per_byte": 1.5}


def test_a_train_run_the_deadline_stopped_names_what_it_cut(tmp_path, monkeypatch):
    """train.py stopped at the deadline keeps the figures of its windows, but the commands on its
    checkpoint (the greedy comparison first) do not run: named as cut, not lost in silence."""
    ran = fake_train_run(tmp_path, monkeypatch, windows=3, follow_ups={}, exit=gpu_check.STOPPED)
    out = tmp_path / "gpu"
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--device", "cpu", "--out", str(out), "--work", str(tmp_path / "work"),
                        "--only", "train"])
    assert len(ran) == 1 and json.loads((out / "train.json").read_text())["steps"] == 30
    cut = "train.py (cut by the deadline), the commands on its checkpoint (cut by the deadline)"
    assert str(e.value.code).startswith(f"gpu_check: error: {cut} failed")
    assert (out / "gpu.md").read_text().startswith(f"**Failed:** {cut}; see log.txt.")


def test_a_run_with_one_window_reports_no_steady_state(tmp_path, monkeypatch):
    """A run whose budget the first step's compiling filled logs one train window: the compile's, not
    a steady state. Its steady figures are left out (None, and gpu.md says so), not that window's."""
    fake_train_run(tmp_path, monkeypatch, windows=1, follow_ups={
        "greedy true": (0, "a"), "greedy false": (0, "a"), "eval_only": (0, '{"bits_per_byte": 2.0}'),
        "story": (0, "b")})
    out = gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--work", str(tmp_path / "work"),
                          "--only", "train"])
    result = json.loads((out / "train.json").read_text())
    assert result["steady_windows"] == 0 and result["steady_tokens_per_s"] is None
    assert result["steady_mfu"] is None and "eval_over_train_speed" not in result
    assert result["end_to_end_tokens_per_s"] > 0 and result["eval"] == {"bits_per_byte": 2.0}
    md = (out / "gpu.md").read_text()
    assert "| steady_tokens_per_s | none: no window after the first, which compiled |" in md
    assert "| steady_windows | 0 |" in md


def test_a_train_part_without_datasets_stops_before_the_slow_parts(tmp_path, monkeypatch):
    """make gpu-check installs datasets from .whl; a check run without it (.whl not carried) ran the
    benchmarks for minutes and then failed train.py. Now one line, at once."""
    import sys

    from errors import UserError
    ran = []
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append(argv))
    monkeypatch.setitem(sys.modules, "datasets", None)  # (import datasets: ImportError)
    with pytest.raises(UserError, match="the train part needs datasets .*: carry .whl"):
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", "model,train",
                        "--work", str(tmp_path / "work")])
    assert ran == [] and not (tmp_path / "gpu").exists()


def test_a_python_without_torch_stops_the_check_at_once_naming_the_python_to_use(tmp_path, monkeypatch):
    """Bug caught: make gpu-check (python3) on a machine whose python3 lacks torch ran each part into a
    child's ModuleNotFoundError traceback, wrote a gpu.md of failures, or advised carrying .whl."""
    import sys

    from errors import UserError
    ran = []
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append(argv))
    monkeypatch.setitem(sys.modules, "torch", None)  # (import torch: ImportError)
    with pytest.raises(UserError, match=r"has no torch \(.*\); run the check with the project's Python "
                                        r"\(\.venv/bin/python scripts/gpu_check\.py\)"):
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", "model,train",
                        "--work", str(tmp_path / "work")])
    assert ran == [] and not (tmp_path / "gpu").exists()


def test_make_gpu_check_on_a_python_without_torch_is_one_line_at_its_default_device(tmp_path, monkeypatch):
    """Bug caught: `make gpu-check` (python3, --device cuda by default) on a laptop whose python3 lacks
    torch was a ModuleNotFoundError traceback from parse's CUDA check, before main's one line."""
    ran = []
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append(argv))
    monkeypatch.setitem(sys.modules, "torch", None)  # (import torch: ImportError)
    with pytest.raises(UserError, match=r"has no torch .*\.venv/bin/python scripts/gpu_check\.py"):
        gpu_check.main(["--out", str(tmp_path / "gpu"), "--work", str(tmp_path / "work")])
    assert ran == [] and not (tmp_path / "gpu").exists()


def test_a_skipped_cuda_graph_is_counted_and_fails_the_check(tmp_path, monkeypatch):
    """Inductor skips a CUDA graph it cannot record without an error (and, by default, a word): the
    compiled decode step then runs without one. bench_sample.py counts the skips per compiled
    variant (its counter, monkeypatched here: no CUDA graphs on a CPU), and the check names a
    nonzero count as it names a variant that fell back to eager."""
    from collections import Counter

    from torch._dynamo.utils import counters

    from scripts import bench_sample
    monkeypatch.setitem(counters, "inductor", Counter())

    def fake_decode(variant, model, hf, prompts, new_tokens, ragged=False):
        if variant == "compiled":
            counters["inductor"]["cudagraph_skips"] += 2
        return [[1] * new_tokens for _ in range(prompts.shape[0])]
    monkeypatch.setattr(bench_sample, "decode", fake_decode)
    out = tmp_path / "gpu"
    result = bench_sample.main(["--quick", "--variants", "cached,compiled",
                                "--out", str(out / "bench_sample.json")])
    assert result["results"]["batch1"]["cudagraph_skips"] == {"compiled": 2}
    monkeypatch.setitem(counters, "inductor", Counter())  # none skipped: 0, and nothing named
    bench_sample.main(["--quick", "--variants", "cached,compiled-nograph", "--out", str(tmp_path / "b.json")])
    assert gpu_check.failed_variants(tmp_path / "b.json") == []
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--render", "--out", str(out)])
    named = ", ".join(f"bench_sample.py compiled at batch{b} (CUDA graphs skipped: 2)" for b in (1, 2))
    assert str(e.value.code) == f"gpu_check: error: {named} failed"
    assert (out / "gpu.md").read_text().startswith(f"**Failed:** {named}; see log.txt")


def test_make_gpu_check_stops_at_once_on_a_python_the_wheels_do_not_fit(tmp_path):
    """make gpu-prep downloads wheels for Python 3.12 (multiprocess is built per version): on another
    python3, pip install --target failed with pip's error. Now one line first; 3.12 goes on. Wheels
    that fail to install are a warning line, and the check goes on (only its train part needs them)."""
    import os
    import shutil
    import subprocess

    from conftest import ROOT
    if shutil.which("make") is None:
        pytest.skip("no make here")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").write_text(  # a python3 of version $FAKE, running nothing
        '#!/bin/sh\ncase "$1" in -V) echo "Python $FAKE";; -c) [ "${FAKE%.*}" = 3.12 ];; '
        '-m) [ -z "$PIP_FAILS" ] || exit 1; echo "$@" >> ran;; *) echo "$@" >> ran;; esac\n')
    (tmp_path / "bin" / "python3").chmod(0o755)
    (tmp_path / ".whl").mkdir()
    for version, code in [("3.11.7", 2), ("3.12.3", 0)]:
        env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE": version}
        env.pop("OUT", None)
        r = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "gpu-check"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
        assert r.returncode == code, r.stderr
        if code:
            assert r.stderr.splitlines()[0] == ("gpu-check: .whl holds wheels for Python 3.12 (make "
                                                "gpu-prep), but python3 is Python 3.11.7; run it on the GPU "
                                                "machine, or remove .whl (only the check's train part needs "
                                                "them)")
            assert not (tmp_path / "ran").exists()  # (neither pip nor the check ran)
    assert r.stderr == "" and "scripts/gpu_check.py" in (tmp_path / "ran").read_text()
    (tmp_path / "ran").unlink()  # wheels that fail to install: one warning line, and the check goes on
    r = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "gpu-check"], cwd=tmp_path,
                       capture_output=True, text=True, env={**env, "PIP_FAILS": "1"})
    assert r.returncode == 0 and r.stderr.splitlines() == [
        "gpu-check: warning: the wheels in .whl did not install; a check without its train part goes "
        "on, one with it stops (it needs datasets)"]
    assert (tmp_path / "ran").read_text().startswith("scripts/gpu_check.py")


def test_run_figures_are_the_medians_of_the_steady_windows_and_later_passes(tmp_path):
    """The train part's figures from metrics.jsonl: medians over the windows after the first (which
    compiled) and the evaluation passes after the first; end to end over the whole run, in seconds;
    the first window's seconds beyond the steady pace (the compiling's); catches the first window's
    or the mean's tokens/s, minutes for seconds, an inverted ratio."""
    train = [(10, 0.5, 10.0, 0.01), (20, 1.0, 100.0, 0.1), (30, 1.5, 300.0, 0.3), (40, 2.0, 200.0, 0.2)]
    records = [{"kind": "train", "step": s, "tokens": 100 * s, "minutes": m, "tokens_per_s": t, "mfu": f}
               for s, m, t, f in train]
    records += [{"kind": "val", "minutes": 2.5, "val_seconds": s, "val_tokens": 900}
                for s in (10.0, 2.0, 3.0, 4.0)]  # the first pass compiled
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    got = gpu_check.run_figures(tmp_path / "metrics.jsonl")
    assert got["steps"] == 40 and got["steady_windows"] == 3
    assert got["steady_tokens_per_s"] == 200.0 and got["steady_mfu"] == 0.2
    assert got["first_window_extra_s"] == pytest.approx(30 - 1000 / 200)  # (its compiling, mostly)
    assert got["end_to_end_tokens_per_s"] == pytest.approx(4000 / 150)
    assert got["end_to_end_mfu"] == pytest.approx(4000 / 150 * 0.2 / 200)  # the last window's MFU per tok/s
    assert got["evaluations"] == 4 and got["eval_seconds"] == 3.0 and got["eval_tokens_per_s"] == 300.0
    assert got["eval_over_train_speed"] == pytest.approx(1.5)


def test_greedy_agreement_says_where_the_stories_part(tmp_path):
    """The compiled decode step's greedy story against the eager one's: catches a comparison that
    always agrees, a wrong count of agreeing characters, and a compiled run that fell back to
    eager compared as compiled."""
    import subprocess
    from types import SimpleNamespace
    opts = SimpleNamespace(compile="true", device="cpu")
    stories = {"compiled": "once upon a time", "eager": "once upon a dog!"}

    def run(name, *argv, warn=""):
        story = stories["compiled" if "(compiled)" in name else "eager"]
        return subprocess.CompletedProcess(argv, 0, story + "\n", warn if "(compiled)" in name else "")
    assert gpu_check.greedy_agreement(opts, tmp_path, run) == {"same": False, "same_characters": 12,
                                                                "characters": 16}
    stories["eager"] = "once upon a time, a cat"  # one the other's start: they part where it ends
    assert gpu_check.greedy_agreement(opts, tmp_path, run) == {"same": False, "same_characters": 16,
                                                                "characters": 23}
    warning = "warning: compiling the decode step failed (RuntimeError: x); decoding eagerly"
    said = gpu_check.greedy_agreement(opts, tmp_path, lambda *a: run(*a, warn=warning + "\n"))
    assert said == {"fell_back_to_eager": warning}


def test_a_train_run_that_ends_past_the_deadline_runs_nothing_on_its_checkpoint(tmp_path, monkeypatch):
    """train.py exits 0 but the deadline has passed: the follow-ups are not started, and they are
    named as cut (catches the `past` test dropped from either place)."""
    from types import SimpleNamespace
    ran = fake_train_run(tmp_path, monkeypatch, windows=3, follow_ups={})
    (tmp_path / "gpu").mkdir()
    opts = SimpleNamespace(work=str(tmp_path / "work"), quick=True, data="t.txt", val_data="v.txt",
                           compile="true", compile_mode="default", device="cpu", until=time.monotonic() - 1)
    result = gpu_check.train_part(opts, tmp_path / "gpu", log=None)
    assert len(ran) == 1 and result["steps"] == 30 and result["train_exit"] == 0
    assert gpu_check.train_failures(result) == ["the commands on its checkpoint (cut by the deadline)"]


def test_the_train_budget_is_the_smaller_of_minutes_and_what_the_deadline_leaves(tmp_path, monkeypatch):
    """--minutes within --deadline: the run gets the smaller (a max let it overrun the lease)."""
    import subprocess
    ran = []
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append([str(a) for a in argv])
                        or subprocess.CompletedProcess(argv, 1, "", ""))
    for minutes, deadline in [("1", "1000"), ("30", "440")]:
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", "train",
                        "--minutes", minutes, "--deadline", deadline, "--work", str(tmp_path / "work")])
    budgets = [float(argv[argv.index("--max_minutes") + 1]) for argv in ran]
    assert budgets[0] == 1 and 4.5 < budgets[1] <= (440 - 140) / 60


def test_the_parts_before_train_leave_it_its_reserve_of_the_deadline(tmp_path, monkeypatch):
    """With train due after them, the model and sample parts stop TRAIN_RESERVE_S before the deadline
    (catches a benchmark that ran long leaving the training run its 15-second floor and every
    command after it cut); without train they have it all. On a GPU bench_model skips the memory
    model (CPU work on the lease's time); the quick check keeps it, to test it."""
    import subprocess
    ran = []
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append(
        ([str(a) for a in argv], until)) or subprocess.CompletedProcess(argv, 0, "", ""))
    monkeypatch.setattr(gpu_check, "train_part",
                        lambda opts, out, log: ran.append((["train"], opts.until)) or {})
    monkeypatch.setitem(sys.modules, "datasets", object())
    for only in ["model,sample,train", "model,sample"]:
        ran.clear()
        start = time.monotonic()
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", only,
                        "--deadline", "600"])
        (model, until), *rest = ran
        reserve = gpu_check.TRAIN_RESERVE_S if "train" in only else 0
        assert start + 600 - reserve <= until <= time.monotonic() + 600 - reserve, only
        assert all(u == until for _, u in rest[:2]) and "--no-modelled" in model
        if "train" in only:
            assert rest[2] == (["train"], until + reserve)
    assert gpu_check.TRAIN_RESERVE_S >= gpu_check.FOLLOW_UP_S + 60
    ran.clear()  # the reserve less than MIN_PART_S away: the benchmarks are not begun, train is
    with pytest.raises(SystemExit, match=r"the model part \(cut by the deadline: under 30 s left before the "
                                         r"210 s kept for the train part, not begun\), the sample part .cut"):
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", "model,sample,train",
                        "--deadline", str(gpu_check.TRAIN_RESERVE_S + 10)])
    assert [argv for argv, _ in ran] == [["train"]]
    ran.clear()
    monkeypatch.setattr(gpu_check, "run_bench", lambda *argv, log, until: ran.append(argv))
    gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path / "q"), "--only", "model"])
    assert "--no-modelled" not in ran[0]


def test_a_part_with_under_min_part_s_left_is_not_begun(tmp_path, monkeypatch):
    """A deadline leaving under MIN_PART_S (30 s) skips every part, not only at 0 s left."""
    ran, out = [], tmp_path / "gpu"
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append(argv))
    with pytest.raises(SystemExit, match="the model part .cut by the deadline: under 30 s left, not begun., "
                                         "the sample part .cut by the deadline"):
        gpu_check.main(["--device", "cpu", "--out", str(out), "--only", "model,sample", "--deadline", LEAST])
    assert ran == [] and "# model: skipped" in (out / "log.txt").read_text()


def test_render_names_fp32_failures_tables_the_bf16_speeds_and_the_eval(tmp_path):
    """--render: a fallback in the float32 agreement pass fails the check too; the speed table is
    bench_sample.json's (bf16), not the fp32 pass's; a stopped train.py is "cut", not "exit 124";
    the checkpoint's bits/byte is in the table."""
    out = tmp_path / "gpu"
    out.mkdir()
    config = {"new_tokens": 8, "prompt": 16, "preset": "debug", "repeats": 1, "variants": ["cached"]}
    for name, dtype, tok_s in [("bench_sample.json", "bfloat16", 1111.0),
                               ("bench_sample_fp32.json", "float32", 2222.0)]:
        results = {"batch1": {"tokens_per_s": {"cached": tok_s}}}
        if dtype == "float32":
            results["batch1"]["fell_back_to_eager"] = {"compiled": "RuntimeError: x"}
        (out / name).write_text(json.dumps({"config": {**config, "dtype": dtype}, "results": results}))
    (out / "train.json").write_text(json.dumps({"argv": [], "train_exit": gpu_check.STOPPED,
                                                "cut": ["train.py"], "eval": {"bits_per_byte": 1.2345}}))
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--render", "--out", str(out)])
    assert str(e.value.code) == ("gpu_check: error: bench_sample.py compiled at batch1 (fell back to eager), "
                                 "train.py (cut by the deadline) failed")
    md = (out / "gpu.md").read_text()
    assert "| 1 | 1,111 |" in md and "2,222" not in md and "| eval bits/byte | 1.2345 |" in md


def test_a_fallback_in_the_fp32_sample_pass_fails_the_check(tmp_path, monkeypatch):
    """The float32 agreement pass's compiled variant that fell back to eager is named, as the bf16
    pass's is (its files written by a fake bench_sample.py)."""
    import subprocess

    def fake_sh(*argv, log, until=None):
        fell = {"fell_back_to_eager": {"compiled": "E"}} if "float32" in argv else {}
        result = {"config": {"new_tokens": 8, "prompt": 16, "preset": "debug", "repeats": 1,
                             "dtype": "float32", "variants": ["cached"]},
                  "results": {"batch1": {"tokens_per_s": {"cached": 1.0}, **fell}}}
        Path(argv[argv.index("--out") + 1]).write_text(json.dumps(result))
        return subprocess.CompletedProcess(argv, 0, "", "")
    monkeypatch.setattr(gpu_check, "sh", fake_sh)
    with pytest.raises(SystemExit, match="bench_sample.py compiled at batch1 .fell back to eager. failed"):
        gpu_check.main(["--only", "sample", "--device", "cpu", "--out", str(tmp_path / "gpu")])


def test_render_elsewhere_keeps_the_gpu_runs_machine_and_day(tmp_path, monkeypatch):
    """gpu.md's "Machine:" line gave the core count and the day of the machine that ran --render
    (img/gpu/gpu.md said "2 CPU cores (NVIDIA H200)"): now the GPU run's, from bench_model.json."""
    out = tmp_path / "gpu"
    out.mkdir()
    config = {"max_seq_len": 256, "dim": 512, "n_layers": 8, "n_experts": 16, "top_k": 1, "dtype": "bfloat16",
              "repeats": 10, "torch": "2.11"}
    model = {"device": "NVIDIA H200", "cpus": 16, "date": "2026-11-27", "config": config, "batches": {}}
    (out / "bench_model.json").write_text(json.dumps(model))
    monkeypatch.setattr(gpu_check.os, "cpu_count", lambda: 2)
    gpu_check.main(["--render", "--out", str(out)])
    md = (out / "gpu.md").read_text()
    assert md.startswith("Machine: 16 CPU cores (NVIDIA H200), torch 2.11, 2026-11-27.")


def test_render_of_json_that_recorded_no_machine_or_day_does_not_make_them_up(tmp_path, monkeypatch):
    """Bug caught: a bench_model.json without "cpus" and "date" (img/gpu's, from before they were
    recorded) rendered "Machine: 2 CPU cores (NVIDIA H200), ..., <today>": the cores of the machine
    that ran --render and the day it ran. Now it says neither was recorded."""
    out = tmp_path / "gpu"
    out.mkdir()
    config = {"max_seq_len": 256, "dim": 512, "n_layers": 8, "n_experts": 16, "top_k": 1, "dtype": "bfloat16",
              "repeats": 10, "torch": "2.11"}
    (out / "bench_model.json").write_text(json.dumps({"device": "NVIDIA H200", "config": config,
                                                      "batches": {}}))
    monkeypatch.setattr(gpu_check.os, "cpu_count", lambda: 2)
    gpu_check.main(["--render", "--out", str(out)])
    first = (out / "gpu.md").read_text().splitlines()[0]
    assert first == ("Machine: NVIDIA H200 (its host's CPU cores not recorded), torch 2.11, "
                     "date not recorded."), first


def test_the_machine_line_of_a_cpu_check_says_each_fact_once(tmp_path):
    """Bug caught: gpu.md of a check on the CPU (--quick, the smoke test) began "Machine: 2 CPU cores
    (cpu (2 cores, 2 threads))": bench_model.py's CPU device already names its cores. The same
    markdown() writes gpu.md after each part and for --render."""
    out = tmp_path / "gpu"
    out.mkdir()
    config = {"max_seq_len": 64, "dim": 64, "n_layers": 2, "n_experts": 4, "top_k": 1, "dtype": "float32",
              "repeats": 1, "torch": "2.11"}
    model = {"device": "cpu (2 cores, 2 threads)", "cpus": 2, "date": "2026-12-03", "config": config,
             "batches": {}}
    (out / "bench_model.json").write_text(json.dumps(model))
    gpu_check.main(["--render", "--out", str(out)])
    first = (out / "gpu.md").read_text().splitlines()[0]
    assert first == "Machine: CPU (2 cores, 2 threads), torch 2.11, 2026-12-03.", first


def test_every_option_has_a_help_text_naming_its_default(monkeypatch):
    """Bug caught: --device, --compile, --data and --val_data had no help text (--help showed the
    bare option, and not that the data is looked for in gpu-data/ first)."""
    helps = option_helps(monkeypatch, gpu_check.parse)
    assert [name for name, text in helps.items() if not text] == []
    for name in ("--device", "--compile", "--data", "--val_data"):
        assert "default" in helps[name], name


def test_only_a_failed_command_not_one_stopped_at_the_deadline_is_named_by_sh(tmp_path, monkeypatch):
    """sh() names a command that failed in FAILED ("exit 3"), not one the deadline stopped, which
    its caller names as cut, saying what was kept (run_bench, train_part): catches the `code is None`
    test dropped, which named a stopped command as "exit 124"."""
    monkeypatch.setattr(gpu_check, "FAILED", [])
    (tmp_path / "fails.py").write_text("import sys; sys.exit(3)\n")
    (tmp_path / "sleeps.py").write_text("import time; time.sleep(30)\n")
    with open(tmp_path / "log.txt", "w", encoding="utf-8") as log:
        assert gpu_check.sh(tmp_path / "fails.py", log=log).returncode == 3
        stopped = gpu_check.sh(tmp_path / "sleeps.py", log=log, until=time.monotonic() + 1)
    assert stopped.returncode == gpu_check.STOPPED and gpu_check.FAILED == ["fails.py (exit 3)"]


def test_a_command_that_ends_leaving_a_child_on_its_pipes_does_not_hang_the_check(tmp_path, monkeypatch):
    """A command that exits while a child of its own still holds its stdout: the pumps never end,
    so the group is killed KILL_GRACE_S later (catches that SIGKILL dropped: the check waited for
    the child, a whole lease)."""
    monkeypatch.setattr(gpu_check, "KILL_GRACE_S", 1)
    script = tmp_path / "leaves.py"
    script.write_text("import subprocess, sys\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(20)'])\n"
                      f"open({str(tmp_path / 'pid')!r}, 'w').write(str(child.pid))\n"
                      "print('parent done')\n")
    t = time.monotonic()
    with open(tmp_path / "log.txt", "w", encoding="utf-8") as log:
        r = gpu_check.sh(script, log=log)
    assert time.monotonic() - t < 15 and r.returncode == 0 and r.stdout == "parent done\n"
    assert gone((tmp_path / "pid").read_text())


def test_a_fallback_warning_on_stderr_is_found():
    """train.py's and sample.py's fallback warnings go to stderr: fell_back reads it as well as
    stdout (catches stdout alone)."""
    import subprocess
    line = "warning: compiling the decode step failed (RuntimeError: x); decoding eagerly"
    assert gpu_check.fell_back(subprocess.CompletedProcess([], 0, "once upon a time\n", line + "\n")) == line


def test_a_deadline_leaving_little_time_still_gives_train_py_a_budget(tmp_path, monkeypatch):
    """Under FOLLOW_UP_S left: the run gets the 0.25 minute floor, never --max_minutes 0, which
    train.py reads as no budget at all (a run of --max_steps 1000000, stopped only by the deadline)."""
    import subprocess
    ran = []
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append([str(a) for a in argv])
                        or subprocess.CompletedProcess(argv, 1, "", ""))
    for minutes in ("0", "1"):
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", "train",
                        "--minutes", minutes, "--deadline", "100", "--work", str(tmp_path / "work")])
    assert [float(argv[argv.index("--max_minutes") + 1]) for argv in ran] == [0.25, 0.25]


def test_a_train_run_without_a_window_runs_nothing_on_its_checkpoint(tmp_path, monkeypatch):
    """train.py exits 0 without logging a train window: no figures, and nothing to go on with
    (catches the `"steps" not in result` test dropped); an old run folder is removed first."""
    stale = tmp_path / "work" / "gpu-check"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 999, "tokens": 1, "minutes": 1,
                                                     "tokens_per_s": 1.0, "mfu": None}) + "\n")
    ran = fake_train_run(tmp_path, monkeypatch, windows=0, follow_ups={})
    out = gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--work", str(tmp_path / "work"),
                          "--only", "train"])
    result = json.loads((out / "train.json").read_text())
    assert len(ran) == 1 and result["train_exit"] == 0 and "steps" not in result


def test_a_failed_follow_up_is_not_cut_by_the_deadline(tmp_path, monkeypatch):
    """A command on the checkpoint that fails (exit 1: sh names it) is not "cut by the deadline",
    and a failed --eval_only is not read for its figures (catches `returncode == STOPPED` made
    `returncode`, and the `ev.returncode == 0` test dropped); the story says why it is missing."""
    fake_train_run(tmp_path, monkeypatch, windows=3, follow_ups={
        "greedy true": (0, "a"), "greedy false": (1, ""), "eval_only": (1, "Traceback"), "story": (1, "")})
    out = gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--work", str(tmp_path / "work"),
                          "--only", "train"])
    result = json.loads((out / "train.json").read_text())
    assert "cut" not in result and "eval_failed" not in result and "eval" not in result
    assert result["greedy"] == {"failed": True, "exits": [0, 1]}
    assert result["sample"].startswith("(sample.py failed")


def test_a_single_evaluation_pass_still_gives_the_eval_figures(tmp_path):
    """A short run evaluates once: that pass's figures are given (it compiled, but it is all
    there is), not none (catches `val[1:] or val` made `val[1:]`)."""
    records = [{"kind": "train", "step": s, "tokens": 100 * s, "minutes": s / 10, "tokens_per_s": 10.0 * s,
                "mfu": None} for s in (1, 2)]
    records.append({"kind": "val", "minutes": 0.3, "val_seconds": 4.0, "val_tokens": 800})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    got = gpu_check.run_figures(tmp_path / "metrics.jsonl")
    assert got["evaluations"] == 1 and got["eval_seconds"] == 4.0 and got["eval_tokens_per_s"] == 200.0
    assert got["eval_over_train_speed"] == 10.0


def test_render_says_whether_the_greedy_stories_agree(tmp_path):
    """gpu.md's greedy line: "the same" only where the stories are (catches the verdict inverted),
    and why they were not compared when a run failed or was stopped."""
    out = tmp_path / "gpu"
    out.mkdir()
    for greedy, line in [({"same": False, "same_characters": 12, "characters": 1600},
                          "compiled decode step vs eager: different (12 of 1,600 characters agree"),
                         ({"same": True, "same_characters": 16, "characters": 16},
                          "compiled decode step vs eager: the same (16 of 16 characters agree"),
                         ({"failed": True, "exits": [0, gpu_check.STOPPED]},
                          "compiled decode step vs eager: not compared (exits [0, 124]).")]:
        (out / "train.json").write_text(json.dumps({"argv": [], "greedy": greedy}))
        gpu_check.main(["--render", "--out", str(out)])
        assert line in (out / "gpu.md").read_text()


def test_only_and_deadline_keep_the_readmes_folder(tmp_path, monkeypatch):
    """The two calls a lease takes (--only, --deadline) write img/gpu/ as a full check does; --quick
    does not (catches "only" and "deadline" dropped from what results_path ignores)."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (parse only: nothing runs)
    work = ["--work", str(tmp_path / "work")]
    for argv in (["--only", "train,model", "--deadline", "450"], ["--only", "sample", "--deadline", "280"]):
        assert gpu_check.parse([*work, *argv])[1] == gpu_check.ROOT / "img" / "gpu"
    assert gpu_check.parse([*work, "--only", "sample", "--quick"])[1] == tmp_path / "work" / "results"


def test_a_part_removes_its_half_written_files_from_before(tmp_path):
    """A write a kill cut short leaves .tmp-*-NAME: removed with the part's files when it begins."""
    out = tmp_path / "gpu"
    out.mkdir()
    (out / ".tmp-123-bench_model.json").write_text("{")
    with pytest.raises(SystemExit, match="cut by the deadline"):
        gpu_check.main(["--quick", "--device", "cpu", "--deadline", LEAST, "--out", str(out),
                        "--only", "model"])
    assert not list(out.glob(".tmp-*"))


def test_the_compile_mode_reaches_the_model_and_train_parts(tmp_path, monkeypatch):
    """--compile_mode reduce-overhead is passed to bench_model.py and train.py (catches it dropped
    from the model part: its compiled variants timed in the default mode, as if with CUDA graphs);
    the float32 agreement pass decodes 8 ragged prompts (catches --ragged dropped)."""
    import subprocess
    ran = []
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append([str(a) for a in argv])
                        or subprocess.CompletedProcess(argv, 1, "", ""))
    with pytest.raises(SystemExit, match=r"bench_model.py \(exit 1\)"):  # (every command fails here)
        gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--work", str(tmp_path / "work"),
                        "--compile_mode", "reduce-overhead"])
    model, agree, _, train = ran
    for argv in (model, train):
        assert argv[argv.index("--compile_mode") + 1] == "reduce-overhead", argv
    assert "--ragged" in agree and agree[agree.index("--batches") + 1] == "8"


def test_the_data_is_found_in_gpu_data_first_else_in_shared(tmp_path, monkeypatch):
    """gpu-data/ (what make gpu-prep fills) before ../shared; where neither holds the file, the
    shared path, the one the README names (catches the first folder given as the fallback)."""
    first, shared = tmp_path / "gpu-data", tmp_path / "shared"
    monkeypatch.setattr(gpu_check, "DATA_DIRS", [first, shared])
    shared.mkdir()
    (shared / "a.txt").write_text("x")
    assert gpu_check.find("a.txt") == str(shared / "a.txt")
    assert gpu_check.find("b.txt") == str(shared / "b.txt")
    first.mkdir()
    (first / "a.txt").write_text("x")
    assert gpu_check.find("a.txt") == str(first / "a.txt")


def test_a_benchmark_the_deadline_stopped_is_named_and_render_names_it_again(tmp_path, monkeypatch):
    """A benchmark the deadline stopped was not named (only the train part's commands were), so a
    gpu.md without a batch size or without the decoding table looked complete. Now its JSON, which
    holds the batch sizes it finished, is marked cut, and --render reads that back; one stopped
    before writing any JSON is named as having measured nothing."""
    import subprocess
    out = tmp_path / "gpu"

    def fake_sh(*argv, log, until=None):
        path = Path(argv[argv.index("--out") + 1])
        if path.name == "bench_model.json":  # batch 32 done, then stopped
            config = {"max_seq_len": 256, "dim": 512, "n_layers": 6, "n_experts": 16, "top_k": 1,
                      "dtype": "bfloat16", "repeats": 10, "torch": "2.11"}
            batch = {"step_seconds": {"moe": 0.05}, "tokens_per_second": {"moe": 1.6e5}, "mfu": None,
                     "ops_per_step": {}, "peak_step_memory_mb": {}, "ratios": {}}
            path.write_text(json.dumps({"device": "NVIDIA H200", "config": config, "batches": {"32": batch}}))
        return subprocess.CompletedProcess(argv, gpu_check.STOPPED, "", "")
    monkeypatch.setattr(gpu_check, "sh", fake_sh)
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--only", "model,sample", "--device", "cpu", "--out", str(out)])
    model = "bench_model.json (cut by the deadline: the batch sizes it lists are done)"
    named = (f"{model}, bench_sample_fp32.json (cut by the deadline: nothing measured), "
             "bench_sample.json (cut by the deadline: nothing measured)")
    assert str(e.value.code) == f"gpu_check: error: {named} failed; see {out / 'log.txt'}"
    assert (out / "gpu.md").read_text().startswith(f"**Failed:** {named}; see log.txt")
    kept = json.loads((out / "bench_model.json").read_text())
    assert kept["incomplete"] == model and list(kept["batches"]) == ["32"]
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--render", "--out", str(out)])
    nothing = "(cut by the deadline: nothing measured)"
    assert str(e.value.code) == (f"gpu_check: error: {model}, bench_sample.json {nothing}, "
                                 f"bench_sample_fp32.json {nothing} failed")


def test_render_names_a_skipped_part_and_a_failed_benchmark_and_shows_no_table_for_them(tmp_path,
                                                                                        monkeypatch):
    """--render sees only files: a part the deadline skipped and a benchmark that failed before
    writing its JSON left none, so the two calls' merged gpu.md said nothing of them and exited 0.
    Each now leaves a JSON naming what was not measured; gpu.md names it, with no table for it, and
    a failure named by sh and again from its JSON is named once."""
    import subprocess
    import time
    from types import SimpleNamespace
    out, calls, clock = tmp_path / "gpu", [], [0.0]

    def fake_sh(*argv, log, until=None):  # bench_model.py fails after 230 s (out of memory at last)
        calls.append(argv[0])
        clock[0] += 230
        gpu_check.FAILED.append("bench_model.py (exit 3)")  # (as sh names it)
        return subprocess.CompletedProcess(argv, 3, "", "")
    monkeypatch.setattr(gpu_check, "sh", fake_sh)
    monkeypatch.setattr(gpu_check, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                           strftime=time.strftime))
    with pytest.raises(SystemExit, match=r"error: bench_model.py \(exit 3\), the train part \(cut by the "
                                         r"deadline: under 30 s left, not begun\) failed"):
        gpu_check.main(["--only", "model,train", "--device", "cpu", "--out", str(out), "--deadline",
                        str(gpu_check.TRAIN_RESERVE_S + 40), "--work", str(tmp_path / "work")])
    assert calls == ["scripts/bench_model.py"]
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--render", "--out", str(out)])
    assert str(e.value.code) == ("gpu_check: error: bench_model.py (exit 3), the train part (cut by the "
                                 "deadline: under 30 s left, not begun) failed")
    md = (out / "gpu.md").read_text()
    assert "**Training step**" not in md and "**train.py**" not in md


def test_a_skipped_part_removes_each_of_its_files_from_before(tmp_path):
    """Catches only a part's first file removed: a sample part skipped at the deadline left an older
    check's bench_sample_fp32.json, whose agreement lines --render then showed as this check's."""
    out = tmp_path / "gpu"
    out.mkdir()
    old = {"config": {"dtype": "float32"}, "results": {"batch8": {"share_of_tokens_as_cached": {"x": 0.5}}}}
    for name in ("bench_sample.json", "bench_sample_fp32.json"):
        (out / name).write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=r"the sample part \(cut by the deadline"):
        gpu_check.main(["--quick", "--device", "cpu", "--deadline", LEAST, "--out", str(out),
                        "--only", "sample"])
    assert not (out / "bench_sample_fp32.json").exists()
    assert list(json.loads((out / "bench_sample.json").read_text())) == ["not_measured"]
    with pytest.raises(SystemExit):
        gpu_check.main(["--render", "--out", str(out)])
    assert "share of greedy tokens" not in (out / "gpu.md").read_text()


def test_a_decode_benchmark_the_deadline_cut_after_a_batch_size_is_named(tmp_path, monkeypatch):
    """Catches bench_sample.py's "incomplete" mark dropped by failed_variants (only bench_model.py's
    was read): a speed pass stopped after batch 1 kept its JSON and passed for a whole one; its
    fallbacks are still named beside the cut."""
    import subprocess
    path = tmp_path / "bench_sample.json"

    def fake_sh(*argv, log, until=None):  # batch 1 done (its compiled step fell back), then stopped
        batch = {"tokens_per_s": {"cached": 1.0}, "fell_back_to_eager": {"compiled": "E"}}
        result = {"config": {"dtype": "bfloat16"}, "results": {"batch1": batch}}
        path.write_text(json.dumps(result))
        return subprocess.CompletedProcess(argv, gpu_check.STOPPED, "", "")
    monkeypatch.setattr(gpu_check, "sh", fake_sh)
    monkeypatch.setattr(gpu_check, "FAILED", [])
    gpu_check.run_bench(path, "scripts/bench_sample.py", log=None, until=None)
    cut = "bench_sample.json (cut by the deadline: the batch sizes it lists are done)"
    assert gpu_check.FAILED == [cut, "bench_sample.py compiled at batch1 (fell back to eager)"]
    assert gpu_check.failed_variants(path) == gpu_check.FAILED  # (what --render reads back)


def test_each_benchmark_of_the_gpu_plan_gets_the_device_and_its_settings(tmp_path, monkeypatch):
    """The command lines the benchmarks get on a GPU (recorded, not run): catches --device dropped
    from one (bench_sample.py's default is the CPU: a lease spent timing it), and the float32 pass's
    128 tokens, single repeat and batch 8, the model part's profile and its JSON paths dropped."""
    import subprocess

    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (parse only: nothing runs on it)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # (cuda:1 is checked before the parts)
    ran, out = [], tmp_path / "gpu"
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: ran.append([str(a) for a in argv])
                        or subprocess.CompletedProcess(argv, 0, "", ""))
    gpu_check.main(["--device", "cuda:1", "--out", str(out), "--only", "model,sample"])
    model, agree, speed = ran

    def value(argv, flag):
        return argv[argv.index(flag) + 1]
    assert [argv[0] for argv in ran] == ["scripts/bench_model.py", "scripts/bench_sample.py",
                                         "scripts/bench_sample.py"]
    assert [value(argv, "--device") for argv in ran] == ["cuda:1"] * 3
    assert [value(argv, "--out") for argv in ran] == [str(out / name) for name in
                                                     ("bench_model.json", "bench_sample_fp32.json",
                                                      "bench_sample.json")]
    assert "--profile" in model and "--no-modelled" in model and "--quick" not in model + agree + speed
    assert value(model, "--ckpt_layers") == "4"  # (4 of scout-128m's 6 layers: --grad_checkpoint_layers)
    assert [value(agree, flag) for flag in ("--new_tokens", "--repeats", "--batches")] == ["128", "1", "8"]


def test_gpu_md_is_rewritten_after_each_benchmark(tmp_path, monkeypatch):
    """A lease's limit may kill the check during any command: gpu.md sums up what is done after each
    benchmark (catches the write after the model part or after the float32 pass dropped: a kill in
    the next command left no gpu.md, or one without what had finished)."""
    import subprocess
    out, seen = tmp_path / "gpu", []

    def fake_sh(*argv, log, until=None):  # each benchmark fails, writing nothing
        seen.append((out / "gpu.md").read_text() if (out / "gpu.md").exists() else None)
        return subprocess.CompletedProcess(argv, 3, "", "")
    monkeypatch.setattr(gpu_check, "sh", fake_sh)
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--out", str(out), "--only", "model,sample"])
    assert seen[0] is None
    assert seen[1].startswith("**Failed:** bench_model.py (exit 3); see")
    assert seen[2].startswith("**Failed:** bench_model.py (exit 3), bench_sample.py (exit 3); see")


def test_render_alone_reads_the_readmes_folder(tmp_path, monkeypatch):
    """`gpu_check.py --render` without --out puts the README's img/gpu/ together, as the two calls of
    a lease wrote it (catches "render" dropped from what results_path ignores: --render then read
    --work/results/, where no lease's files are). Nothing runs: no GPU needed."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["--render"], ["--render", "--only", "sample"]):
        assert gpu_check.parse([*argv, "--work", str(tmp_path / "work")])[1] == gpu_check.ROOT / "img" / "gpu"


def test_the_deadline_counts_from_before_the_options_are_read(tmp_path, monkeypatch):
    """parse() may import torch (seconds, on a GPU machine): the deadline counts from the check's
    start, not from after it (catches `start` made time.monotonic() after parse: every command's
    deadline that much later, past a lease's limit)."""
    import subprocess
    import time
    from types import SimpleNamespace
    clock, deadlines = [1000.0], []
    monkeypatch.setattr(gpu_check, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                           strftime=time.strftime))
    parse = gpu_check.parse

    def slow_parse(argv):
        clock[0] += 50  # importing torch
        return parse(argv)
    monkeypatch.setattr(gpu_check, "parse", slow_parse)
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: deadlines.append(until)
                        or subprocess.CompletedProcess(argv, 0, "", ""))
    gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--only", "model",
                    "--deadline", "300"])
    assert deadlines == [1300.0]


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, monkeypatch):
    """Catches the SIGKILL after KILL_GRACE_S dropped from stop_group: a command that does not end on
    SIGTERM (one saving as it stops, a hung CUDA call) was waited for without end, past a lease's limit."""
    monkeypatch.setattr(gpu_check, "KILL_GRACE_S", 1)
    script = tmp_path / "stubborn.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "print('begun', flush=True)\ntime.sleep(20)\n")
    t = time.monotonic()
    with open(tmp_path / "log.txt", "w", encoding="utf-8") as log:
        r = gpu_check.sh(script, log=log, until=time.monotonic() + 3)
    assert r.returncode == gpu_check.STOPPED and r.stdout == "begun\n" and time.monotonic() - t < 12
    log = (tmp_path / "log.txt").read_text()
    assert f"[exit 124 ({-signal.SIGKILL}), stopped at the check's deadline" in log


def test_a_second_call_keeps_the_first_calls_files_and_log(tmp_path, monkeypatch):
    """The two calls of a lease may share --out: --only sample must not remove the files of the parts
    it was not asked for (catches the removal of a part's old files made before the `part not in
    parts` test: train.json and bench_model.json gone), and log.txt is appended to, not replaced."""
    import subprocess
    out = tmp_path / "gpu"
    out.mkdir()
    first = {"bench_model.json": '{"not_measured": "x"}', "train.json": '{"not_measured": "y"}'}
    for name, text in first.items():
        (out / name).write_text(text)
    (out / "log.txt").write_text("# gpu_check.py --only train,model, the first call\n")
    done = subprocess.CompletedProcess([], 0, "", "")
    monkeypatch.setattr(gpu_check, "sh", lambda *argv, log, until=None: done)
    gpu_check.main(["--device", "cpu", "--out", str(out), "--only", "sample"])
    assert {name: (out / name).read_text() for name in first} == first
    log = (out / "log.txt").read_text()
    assert log.startswith("# gpu_check.py --only train,model, the first call\n"
                          "# gpu_check.py --only sample, ")


def test_the_train_part_gives_each_command_its_data_device_and_compile(tmp_path, monkeypatch):
    """The train part's command lines (recorded, not run): catches the run's --vocab_size dropped
    (another model), its saves or plot turned off (end to end would not be what a run at the defaults
    pays: a save held the loop about 2 s on an H200 before saves went to the background), --eval_only
    without its --val_data, --device or --compile false, and the story compiled (~20 s of a lease each)."""
    ran = fake_train_run(tmp_path, monkeypatch, windows=3, follow_ups={
        "greedy true": (0, "a"), "greedy false": (0, "a"), "eval_only": (0, '{"bits_per_byte": 2.0}'),
        "story": (0, "b")})
    data, val = str(tmp_path / "t.txt"), str(tmp_path / "v.txt")
    for text in (data, val):  # (checked before any part)
        Path(text).write_text("a story\n")
    gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "gpu"), "--work", str(tmp_path / "work"),
                    "--only", "train", "--data", data, "--val_data", val])
    train, compiled, eager, ev, story = [argv for argv, _ in ran]

    def value(argv, flag):
        return argv[argv.index(flag) + 1]
    flags = ("--preset", "--vocab_size", "--data", "--val_data", "--compile")
    assert [value(train, flag) for flag in flags] == ["scout-128m", "8192", data, val, "true"]
    assert "--save_every" not in train and "--plot" not in train and "--eval_every" not in train
    assert [value(argv, "--compile") for argv in (compiled, eager, ev, story)] == ["true"] + ["false"] * 3
    assert [value(argv, "--device") for argv in (train, compiled, eager, ev, story)] == ["cpu"] * 5
    assert "--eval_only" in ev and value(ev, "--val_data") == val


def test_a_run_that_learnt_nothing_is_a_failure(tmp_path, monkeypatch):
    """The train part's run whose loss after LEARNT_AFTER steps is still near its first window's
    learnt nothing (torch 2.11 compiled the fused loss to zero gradients: fast steps, the loss of a
    uniform guess): named at the top of gpu.md, exit 1; its first and last windows' lm_loss are in
    the table. A run that learnt is no failure. Catches the check dropped or inverted."""
    follow_ups = {"greedy true": (0, "a"), "greedy false": (0, "a"),
                  "eval_only": (0, '{"bits_per_byte": 2.0}'), "story": (0, "b")}
    argv = ["--device", "cpu", "--work", str(tmp_path / "work"), "--only", "train"]
    out = tmp_path / "gpu"
    fake_train_run(tmp_path, monkeypatch, 3, follow_ups, steps=100, lm_loss=[9.0, 8.95, 8.9])
    with pytest.raises(SystemExit) as e:
        gpu_check.main([*argv, "--out", str(out)])
    md = (out / "gpu.md").read_text()
    named = "train.py (learnt nothing: lm_loss 8.90 after 300 steps, 9.00 in its first window)"
    assert str(e.value.code).startswith(f"gpu_check: error: {named} failed")
    assert md.startswith(f"**Failed:** {named}; see log.txt.")
    assert "| first_lm_loss | 9 |\n| lm_loss | 8.9 |" in md
    gpu_check.FAILED.clear()
    import shutil
    shutil.rmtree(tmp_path / "work")
    fake_train_run(tmp_path, monkeypatch, 3, follow_ups, steps=100, lm_loss=[9.0, 7.5, 6.5])
    gpu_check.main([*argv, "--out", str(tmp_path / "gpu2")])
    assert "Failed" not in (tmp_path / "gpu2" / "gpu.md").read_text()


def test_learnt_nothing_judges_only_a_run_long_enough():
    """learnt_nothing: no verdict before LEARNT_AFTER steps (warm-up is 100 steps; --quick's 6) or
    without the losses (an older train.json); a NaN loss learnt nothing; the bound is LEARNT_SHARE
    of the first window's loss."""
    base = {"steps": gpu_check.LEARNT_AFTER, "first_lm_loss": 9.0}
    assert gpu_check.learnt_nothing({**base, "lm_loss": 8.5})
    assert not gpu_check.learnt_nothing({**base, "lm_loss": 8.5, "steps": gpu_check.LEARNT_AFTER - 1})
    assert not gpu_check.learnt_nothing({"steps": 1000, "lm_loss": 8.5})
    assert gpu_check.learnt_nothing({**base, "lm_loss": math.nan})
    assert not gpu_check.learnt_nothing({**base, "lm_loss": 0.89 * 9.0})
    assert gpu_check.learnt_nothing({**base, "lm_loss": 0.91 * 9.0})


def test_a_training_runs_folder_is_refused_as_out(tmp_path, capsys):
    """Bug caught: --out checkpoints/a (a training run's folder) let the train part remove the run's
    train.json (its settings) and write the check's figures in its place. Refused before any work,
    exit 2, one line; the run's files left as they were (--render, which writes only gpu.md, aside)."""
    run = tmp_path / "run"
    run.mkdir()
    files = {"train.json": '{"lr": 0.001}', "last.pt": "a checkpoint", "metrics.jsonl": '{"step": 1}\n'}
    for name, text in files.items():
        (run / name).write_text(text)
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--quick", "--device", "cpu", "--out", str(run), "--only", "train"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].endswith(
        f"error: --out {run} is a training run's folder (it holds last.pt), whose train.json the check's "
        f"would replace; name a folder of its own, e.g. --out {run.parent / (run.name + '-gpu-check')}")
    assert {p.name: p.read_text() for p in run.iterdir()} == files


def test_render_takes_an_out_that_holds_a_training_runs_files(tmp_path):
    """Bug caught: --render (which writes gpu.md alone, from the figures there) refused as --out a folder
    holding a run's files, as a check that would replace the run's train.json is."""
    for name in ("last.pt", "metrics.jsonl"):
        (tmp_path / name).write_text("a run's")
    opts, out = gpu_check.parse(["--render", "--out", str(tmp_path)])
    assert opts.render and out == tmp_path


@pytest.mark.parametrize("flag", ["--data", "--val_data"])
def test_missing_train_text_is_one_line_before_any_part(tmp_path, monkeypatch, flag):
    """Bug caught: a mistyped --data or --val_data (or gpu-data/ not carried to the GPU machine) was
    found by train.py, the last part, after minutes of benchmarks. Now train.py's own line (exit 1)
    before any part runs or anything is written; a default that is nowhere advises make gpu-prep; a
    check without the train part does not read them."""
    monkeypatch.setattr(gpu_check, "sh", lambda *a, **k: pytest.fail("a part ran"))
    monkeypatch.setattr(gpu_check, "run_bench", lambda *a, **k: pytest.fail("a part ran"))
    base = ["--quick", "--device", "cpu", "--out", str(tmp_path / "gpu"), "--work", str(tmp_path / "work")]
    typo = str(tmp_path / "trian-lower.txt")
    with pytest.raises(UserError) as e:
        gpu_check.main([*base, flag, typo])
    assert e.value.exit_code == 1 and str(e.value) == f"{flag}: no such file '{typo}'; check the path"
    with pytest.raises(UserError, match=f"{flag}: no files match '.*nope/\\*.txt'"):  # (a glob, as train.py)
        gpu_check.main([*base, flag, str(tmp_path / "nope" / "*.txt")])
    (tmp_path / "empty.txt").write_text("")  # Bug caught: an empty file, which train.py refuses, let by
    with pytest.raises(UserError, match=f"{flag}: '.*empty.txt' is empty; remove it or point {flag} at text"):
        gpu_check.main([*base, flag, str(tmp_path / "empty.txt")])
    monkeypatch.setattr(gpu_check, "DATA_DIRS", [tmp_path / "gpu-data", tmp_path / "shared"])
    with pytest.raises(UserError) as e:  # (the defaults: in neither folder)
        gpu_check.main(base)
    assert str(e.value) == (f"--data: train-lower.txt is neither in gpu-data/ nor in {tmp_path / 'shared'}; "
                            "run make gpu-prep (and carry gpu-data to a GPU machine), or pass --data PATH")
    assert not (tmp_path / "gpu").exists()
    monkeypatch.setattr(gpu_check, "run_bench", lambda *a, **k: None)
    gpu_check.main([*base, "--only", "model", flag, typo])  # (no train part: not read)


@pytest.mark.parametrize("typed, meant", [("0", "false"), ("off", "false"), ("Yes", "true"),
                                          ("auto", "auto")])
def test_compile_takes_what_train_py_takes(tmp_path, typed, meant):
    """Bug caught: gpu_check.py --compile 0 (or off, yes) was refused as no choice of auto/true/false,
    where train.py and sample.py take it (config.switch); the train part passes it on as true or false."""
    out = str(tmp_path / "gpu")
    opts, _ = gpu_check.parse(["--device", "cpu", "--quick", "--out", out, "--compile", typed])
    assert opts.compile == meant


@pytest.mark.parametrize("name, text", [
    ("train.json", '{"lr": 0.001, "notes": "my records"}'),  # a user's, not a run's folder
    ("bench_model.json", '{"device": "cpu", "rows": []}'),  # another benchmark's
    ("bench_sample_fp32.json", "not JSON"),
    ("gpu.md", "# My notes on the GPU\n")])
def test_a_folder_holding_files_not_of_the_check_is_refused_as_out(tmp_path, monkeypatch, capsys, name, text):
    """Bug caught: a part removed the files under its names in --out when it began (an older check's,
    so that a part cut short left none of its figures), and gpu.md was rewritten after each part,
    whatever they were: a user's train.json or gpu.md notes, another benchmark's bench_model.json, gone
    without a word. Refused now before any part, exit 2, one line, every file left; --render, which
    writes only gpu.md, refuses a gpu.md that is not the check's."""
    out = tmp_path / "gpu"
    out.mkdir()
    (out / name).write_text(text)
    monkeypatch.setattr(gpu_check, "sh", lambda *a, **k: pytest.fail("a part ran"))
    for argv in [["--quick", "--device", "cpu", "--only", "model"], ["--render"]]:
        if argv == ["--render"] and name != "gpu.md":
            continue
        with pytest.raises(SystemExit) as e:
            gpu_check.main([*argv, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1].endswith(
            f"error: --out {out}: {name} there is not an earlier result of gpu_check.py, and the results "
            "would replace it; pick another --out, or move it away"), err
        assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == text


def test_every_gpu_md_and_json_a_check_writes_is_taken_as_its_own(tmp_path):
    """The refusal above must never block a check or a --render on its own earlier files: the README's
    img/gpu/, and gpu.md as a check in any state writes it (nothing measured, a part failed, only the
    fp32 decode pass, only the train part)."""
    from storage import foreign_files
    assert foreign_files("--out", gpu_check.ROOT / "img" / "gpu", gpu_check.RESULTS) == []
    out = tmp_path / "gpu"
    out.mkdir()
    fp32 = {"config": {"dtype": "float32"}, "results": {"batch8": {"share_of_tokens_as_cached": {"x": 0.5}}}}
    train = json.loads((gpu_check.ROOT / "img" / "gpu" / "train.json").read_text())
    for failed, files in [([], {}), (["x"], {}), ([], {"bench_sample_fp32.json": fp32}),
                          ([], {"train.json": train}), ([], {"bench_model.json": {"not_measured": "x"}})]:
        for f in out.iterdir():
            f.unlink()
        for f, doc in files.items():
            (out / f).write_text(json.dumps(doc))
        gpu_check.FAILED[:] = failed
        gpu_check.write_summary(out)
        assert foreign_files("--out", out, gpu_check.RESULTS) == [], (out / "gpu.md").read_text()[:80]
    gpu_check.FAILED.clear()
