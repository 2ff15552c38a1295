"""What careless command lines met, found by trying them: each test names the bug it catches."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from scripts import export_hf, plot_runs


def fake_export(monkeypatch, tmp_path) -> list:
    """export_hf.py's conversions faked: the destinations they were asked to write."""
    calls = []
    monkeypatch.setattr(export_hf.checkpoint, "find_checkpoint", lambda source: tmp_path / "run" / "last.pt")
    monkeypatch.setattr(export_hf.checkpoint, "load_model", lambda path: (None, {}))
    monkeypatch.setattr(export_hf.checkpoint, "export_hf", lambda model, dest, *a: calls.append(dest))
    monkeypatch.setattr(export_hf.checkpoint, "import_hf", lambda src, dest, *a: calls.append(dest) or dest)
    return calls


@pytest.mark.parametrize("argv", [["run", ""], ["", "hf"], ["--import", "hf", ""]])
def test_export_hf_refuses_an_empty_path_instead_of_writing_into_the_current_folder(argv, tmp_path,
                                                                                     monkeypatch, capsys):
    """Catches export_hf.py taking an empty source or dest (an unset shell variable) as the current
    folder: `export_hf.py RUN ""` wrote config.json, model.safetensors and tokenizer.json into the
    working directory (the source tree), and `--import HF ""` a last.pt there, with exit status 0."""
    calls = fake_export(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        export_hf.main(argv)
    assert e.value.code == 2 and calls == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is empty; name a path" in err


def test_export_hf_refuses_an_export_already_there_before_it_reads_the_checkpoint(tmp_path, monkeypatch,
                                                                                  capsys):
    """Bug caught: export_hf.py without --force into a folder that holds an export read the whole
    checkpoint (minutes, for a large one) before it refused to replace it."""
    calls = fake_export(monkeypatch, tmp_path)
    monkeypatch.setattr(export_hf.checkpoint, "load_model", lambda path: pytest.fail("it was read"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")])
    assert e.value.code == 1 and calls == []
    err = capsys.readouterr().err
    assert err == (f"export_hf.py: error: {tmp_path / 'hf'} already holds a model (config.json); "
                   "pass --force to replace it, or export to another folder\n")


def test_export_hf_advises_putting_back_the_runs_tokenizer_when_it_is_unreadable(tmp_path, monkeypatch,
                                                                                  capsys):
    """Catches export_hf.py's advice for a run folder's corrupt tokenizer.json: "pass a tokenizer.json
    written by this project", for a script that takes no tokenizer option."""
    calls = fake_export(monkeypatch, tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tokenizer.json").write_text('{"x":')
    with pytest.raises(SystemExit) as e:
        export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and calls == [] and err.count("\n") == 1
    assert "put back the tokenizer.json of the run" in err and "nothing was exported" in err
    assert "pass a tokenizer.json" not in err


@pytest.mark.parametrize("init, fix", [(False, "put back the run's own tokenizer.json or pass it with "
                                                "--tokenizer FILE (another tokenizer is a run from scratch, "
                                                "without --resume)"),
                                       (True, "pass --tokenizer FILE, the one it was trained with")])
def test_resume_advises_putting_back_the_runs_tokenizer_when_it_is_unreadable(tmp_path, init, fix):
    """Catches train.py --resume of a run whose tokenizer.json is corrupt advising "pass a
    tokenizer.json written by this project" (no --tokenizer was typed; another tokenizer is a new run)
    instead of putting the run's own back; at --init_from (a new run: nothing of its own to put back),
    the advice names the checkpoint's tokenizer. Bug caught: the resume's advice said "(another is a new
    --run)", and --resume with a new --run is a fork, which refuses another tokenizer too."""
    import train
    tok = tmp_path / "tokenizer.json"
    tok.write_text("")
    plan = SimpleNamespace(model_args=None, train_args=SimpleNamespace(tokenizer=str(tok), eval_only=False),
                           ckpt=None if init else {}, ckpt_path=None if init else tmp_path / "last.pt",
                           init={} if init else None, init_path=tmp_path / "last.pt" if init else None,
                           run_dir=tmp_path, forks=False)
    with pytest.raises(train.UserError) as e:
        train.load_data(plan, train.World(), "cpu", print)
    assert fix in str(e.value)
    assert Path(tok).read_text() == ""


def test_a_tokenizer_every_rank_refuses_is_rank_0s_line_alone(tmp_path, monkeypatch):
    """Catches load_data's tokenizer check outside the ranks' agreement: under torchrun, a --tokenizer
    that is not the checkpoint's was printed once per process."""
    import runtime
    import train
    tok = tmp_path / "tokenizer.json"
    tok.write_text("")
    monkeypatch.setattr(runtime, "all_reduce", lambda values, *a, **k: [1.0, 1.0])  # rank 0 failed too
    plan = SimpleNamespace(model_args=None, train_args=SimpleNamespace(tokenizer=str(tok), eval_only=False),
                           ckpt={}, ckpt_path=tmp_path / "last.pt", init=None, init_path=None,
                           run_dir=tmp_path, forks=False)
    with pytest.raises(train.errors.RankError, match="rank 0 failed checking the tokenizer too"):
        train.load_data(plan, train.World(1, 2), "cpu", print)


def test_init_from_with_an_empty_tokenizer_checks_the_one_the_data_work_trained(tmp_path, monkeypatch):
    """Catches `train.py --init_from CKPT --tokenizer ""` (no tokenizer file to check before the data
    work, so data.prepare trains a new BPE) going on with that tokenizer: the second check, of the one
    the data work found or trained, skipped for --init_from's checkpoint (it ran for a resume's only)."""
    import runtime
    import train
    trained = SimpleNamespace(hash="a" * 64, legacy_hash="b" * 64)
    monkeypatch.setattr(train.data, "prepare", lambda *a, **k: (trained, None, None))
    plan = SimpleNamespace(model_args=None, train_args=SimpleNamespace(tokenizer="", eval_only=False),
                           ckpt=None, ckpt_path=None, init={"tokenizer": {"sha256": "c" * 64}},
                           init_path=tmp_path / "last.pt", run_dir=tmp_path, forks=False)
    with pytest.raises(train.UserError) as e:
        train.load_data(plan, runtime.World(), "cpu", print)
    assert str(e.value).startswith(f"the cached tokenizer is not the tokenizer {tmp_path / 'last.pt'} was "
                                   "trained with") and "pass --tokenizer FILE" in str(e.value)


def test_resume_with_an_empty_tokenizer_is_told_to_drop_it_not_to_put_the_file_back(tmp_path, monkeypatch):
    """Bug caught: `--resume --tokenizer ''` on other --data (the cached tokenizer for it: a new BPE) was
    refused with "put back the run's own tokenizer.json", which was there all along."""
    import runtime
    import train
    trained = SimpleNamespace(hash="a" * 64, legacy_hash="b" * 64)
    monkeypatch.setattr(train.data, "prepare", lambda *a, **k: (trained, None, None))
    (tmp_path / "tokenizer.json").write_text("{}")
    plan = SimpleNamespace(model_args=None, train_args=SimpleNamespace(tokenizer="", eval_only=False),
                           ckpt={"tokenizer": {"sha256": "c" * 64}}, ckpt_path=tmp_path / "last.pt",
                           init=None, init_path=None, run_dir=tmp_path, forks=False)
    with pytest.raises(train.UserError) as e:
        train.load_data(plan, runtime.World(), "cpu", print)
    assert str(e.value).startswith(f"the cached tokenizer is not the tokenizer {tmp_path / 'last.pt'} was ")
    assert str(e.value).endswith(f"; drop --tokenizer '' to take the run's own, {tmp_path}/tokenizer.json")


@pytest.mark.parametrize("beside", [False, True])
def test_a_fork_with_an_empty_tokenizer_is_told_of_its_parents_tokenizer(tmp_path, monkeypatch, beside):
    """Bug caught: `--resume PARENT --run FORK --tokenizer ''` (a fork, already a new --run) refused with
    "put back the run's own tokenizer.json ... (another is a new --run)": the fork has none of its own,
    and another --run takes the same tokenizer. The advice names the parent's file."""
    import runplan
    import runtime
    import train
    trained = SimpleNamespace(hash="a" * 64, legacy_hash="b" * 64)
    monkeypatch.setattr(train.data, "prepare", lambda *a, **k: (trained, None, None))
    parent = tmp_path / "parent"
    parent.mkdir()
    if beside:
        (parent / "tokenizer.json").write_text("{}")
    plan = runplan.RunPlan(tmp_path / "fork", None, SimpleNamespace(tokenizer="", eval_only=False),
                           {"tokenizer": {"sha256": "c" * 64}}, parent / "last.pt")
    with pytest.raises(train.UserError) as e:
        train.load_data(plan, runtime.World(), "cpu", print)
    fix = (f"drop --tokenizer '' to take the one beside the checkpoint, {parent / 'tokenizer.json'}" if beside
           else f"put back {parent / 'tokenizer.json'} (the forked run's) or pass it with --tokenizer FILE "
           "(another tokenizer is a run from scratch, without --resume)")
    assert str(e.value).endswith(f"; {fix}") and "the run's own" not in str(e.value)


@pytest.mark.parametrize("name", ["metrics.jsonl", "train.json", "last.pt"])
def test_plot_runs_refuses_an_out_that_would_replace_a_runs_own_file(name, tmp_path, capsys):
    """Catches plot_runs.py --out RUN/metrics.jsonl (or train.json, last.pt: a slip of tab completion)
    replacing that file of the run with a PNG, exit status 0: the run's log, settings or checkpoint lost."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 5, "tokens": 1280, "minutes": 0.1,
                                                   "lm_loss": 5.5}) + "\n")
    target = run / name
    if not target.exists():
        target.write_bytes(b"a checkpoint")
    before = target.read_bytes()
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(run), "--out", str(target)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "would replace that file with an image" in err
    assert target.read_bytes() == before


def test_plot_runs_without_out_writes_beside_the_runs_not_into_the_current_folder(tmp_path, monkeypatch,
                                                                                    capsys):
    """Catches plot_runs.py without --out writing compare.png into the current folder: from the repo
    root, an untracked file in the source tree. It lands beside the first run's folder (for
    checkpoints/<run>, git-ignored checkpoints/), from anywhere, `plot_runs.py .` in a run folder too."""
    runs = tmp_path / "checkpoints"
    for name in ("a", "b"):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 5, "tokens": 1280,
                                                               "minutes": 0.1, "lm_loss": 5.5}) + "\n")
    monkeypatch.chdir(tmp_path)
    plot_runs.main(["checkpoints/a", "checkpoints/b"])
    assert capsys.readouterr().out == "checkpoints/compare.png\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"] and (runs / "compare.png").is_file()
    (runs / "compare.png").unlink()
    monkeypatch.chdir(runs / "b")
    plot_runs.main(["."])
    assert (runs / "compare.png").is_file() and not (runs / "b" / "compare.png").exists()


@pytest.mark.parametrize("name", ["metrics.jsonl", "train.json", "last.pt"])
def test_train_refuses_a_plot_named_as_a_runs_own_file(name, tmp_path, capsys):
    """Catches train.py --plot metrics.jsonl (or train.json, last.pt) writing its loss plot over that
    file of the run folder at each evaluation: the log and settings became PNGs, and last.pt was one
    from each evaluation to the next save. Refused as a bad setting, before any work."""
    import train
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "debug", "--data", str(tmp_path / "none.txt"), "--plot", name,
                    "--out_dir", str(tmp_path / "ck"), "--cache_dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"train.py: error: --plot {name}: the plot would replace" in err
    assert not (tmp_path / "ck").exists()


def test_plot_names_that_replace_nothing_are_taken(tmp_path):
    """Catches the plot-name check refusing what runlog writes: an image format, no suffix (a PNG), or
    this plot from before under another suffix (a run resumed). Bug caught: a new file of another
    suffix (--plot model.pt: a PNG of that name) and a folder (a warning at every evaluation) taken."""
    import storage
    for name in ["loss.png", "a/b.SVG", "x.pdf", "loss", ""]:
        assert storage.not_an_image("--plot", name, tmp_path) is None
    assert storage.not_an_image("--plot", "model.pt", tmp_path) == (
        "--plot model.pt: matplotlib writes no .pt file, and the format comes from the name; name a .png, "
        ".svg or .pdf file")
    (tmp_path / "notes.txt").write_text("mine")
    assert "would replace that file" in storage.not_an_image("--out", "notes.txt", tmp_path)
    (tmp_path / "loss.txt").write_bytes(b"\x89PNG\r\n\x1a\n...")  # this plot from before (--resume)
    (tmp_path / "plots.d").mkdir()
    assert storage.not_an_image("--plot", "loss.txt", tmp_path) is None
    assert storage.not_an_image("--plot", "plots.d", tmp_path) == (
        "--plot plots.d is a folder; name the image file, e.g. --plot plots.d/loss.png")
    assert "names a folder" in storage.not_an_image("--plot", "new/", tmp_path)  # (a file "new" was written)
    for name in ["loss-0.1", "runs/lr3e-4_wd0.1"]:  # numbers, no format's suffix: a PNG
        assert storage.not_an_image("--plot", name, tmp_path) is None, name
    assert "at most 255" in storage.not_an_image("--plot", "a" * 300 + ".png", tmp_path)  # (errno 36 once)


@pytest.mark.parametrize("spec", ["runs", "runs/*.txt"])
def test_data_inside_out_dir_is_named_as_left_out_not_as_missing(spec, tmp_path, monkeypatch):
    """Catches `--data runs --out_dir runs` (text kept beside the runs) saying "folder 'runs' holds no
    .txt ... file" or "no files match" of a folder that holds one: its files are left out because it is
    the run's --out_dir, and the line now says so and how to fix it."""
    import sources
    from errors import DataError
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "stories.txt").write_text("Once upon a time.\n")
    with pytest.raises(DataError) as e:
        sources.resolve_files(spec, "--data", skip=["runs", "cache"])
    assert ("holds no .txt, .jsonl, .json, .parquet or .arrow file outside this run's --out_dir and "
            "--cache_dir") in str(e.value)


def test_an_hf_folder_given_as_a_checkpoint_is_named_as_one(tmp_path):
    """Catches `sample.py --ckpt hf_export/x` (or train.py --resume of one) saying only "is not a run
    folder (no last.pt in it)" of an exported Hugging Face folder, without naming --hf or --import."""
    import checkpoint
    from errors import CheckpointError
    (tmp_path / "config.json").write_text("{}")
    want = r"is not a run folder .*Hugging Face folder: sample.py takes it as --hf, and scripts/export_hf.py"
    with pytest.raises(CheckpointError, match=want):
        checkpoint.find_checkpoint(str(tmp_path))
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError) as e:
        checkpoint.find_checkpoint(str(tmp_path))
    assert "Hugging Face" not in str(e.value)


def test_every_format_matplotlib_writes_is_an_image_name():
    """Catches a plot format missing from storage.IMAGE_SUFFIXES: a run trained with --plot loss.gif
    (a real GIF) was refused at --resume, its own plot taken for a file the plot would replace."""
    from matplotlib.figure import Figure

    import storage
    formats = {f".{kind}" for kind in Figure().canvas.get_supported_filetypes()}
    assert formats <= set(storage.IMAGE_SUFFIXES), formats - set(storage.IMAGE_SUFFIXES)


def test_eval_only_and_resume_are_not_refused_over_their_own_saved_settings(tmp_path):
    """Catches --eval_only refused over a --plot it never draws, and a checkpoint that saved
    --cache_dir '' (before it was refused: the current folder) stopping its own resume."""
    from conftest import DEBUG

    import runplan
    import runtime
    from config import TrainArgs, to_dict
    (tmp_path / "notes.txt").write_text("mine")
    args = TrainArgs(out_dir=str(tmp_path), run="r", plot=str(tmp_path / "notes.txt"))
    plan = runplan.RunPlan(tmp_path / "r", DEBUG, args, None, None)
    with pytest.raises(runplan.ConfigError, match="would replace that file"):
        runplan.check_settings(plan, runtime.resolve_device("cpu"), runtime.World())
    evaluating = plan._replace(train_args=TrainArgs(out_dir=str(tmp_path), run="r", plot=args.plot,
                                                    eval_only=True))
    runplan.check_settings(evaluating, runtime.resolve_device("cpu"), runtime.World())
    saved = {"model_args": to_dict(DEBUG),  # (as load_resumed gives it: run_settings)
             "train_args": runplan.run_settings({**to_dict(TrainArgs()), "cache_dir": ""})}
    _, resumed = runplan.resume_settings(saved, DEBUG, TrainArgs(resume="latest"), frozenset({"resume"}))
    assert resumed.cache_dir == "."


@pytest.mark.parametrize("data, want", [
    ("once upon\n".encode("utf-16"), "UTF-16 text, not UTF-8 (it starts with a UTF-16 byte-order mark, "
                                     "FF FE); convert it: iconv -f UTF-16 -t UTF-8 {path} > {new}"),
    ("\ufeffonce\n".encode("utf-16-be"), "UTF-16 byte-order mark, FE FF); convert it: iconv -f UTF-16 "),
    ("once\n".encode("utf-32"), "UTF-32 byte-order mark, FF FE 00 00); convert it: iconv -f UTF-32 "),
    ("once upon a time\n".encode("utf-16-be"), "are NUL, every other one: UTF-16BE without a byte-order "
                                               "mark?); convert it, e.g. iconv -f UTF-16BE -t UTF-8 "),
    ("caf\u00e9\n".encode("utf-16-le"), "are NUL, every other one: UTF-16LE without a byte-order mark?)"),
    ("hi\n".encode("utf-32-be"), "are NUL, three in every four: UTF-32BE without a byte-order mark?); "
                                 "convert it, e.g. iconv -f UTF-32BE -t UTF-8 "),
    ("once upon\n".encode("utf-32-le"), "three in every four: UTF-32LE without a byte-order mark?)"),
    (b"once\0upon\n", "not text (1 NUL byte: a binary file?)"),
    (b"PK\3\4" + bytes(400), "not text (400 NUL bytes: a binary file?)")],  # (last.pt, zeros and all)
    ids=["utf16-bom", "utf16be-bom", "utf32-bom", "utf16be", "utf16le", "utf32be", "utf32le", "binary",
         "zeros"])
def test_a_utf16_prompt_file_is_named_as_utf16_with_the_command_that_converts_it(data, want, tmp_path):
    """Catches sample.py --prompt_file of a UTF-16 (or UTF-32) file saying "not UTF-8 text (byte 0); save
    it as UTF-8" without naming the encoding or its BOM; and one without a BOM (valid UTF-8, NUL every other
    byte) read silently as a prompt of NUL characters."""
    import config
    import sample
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    args = config.ModelArgs(**config.PRESETS["debug"]["ModelArgs"])
    with pytest.raises(sample.SampleError) as e:
        sample.prompts_from(config.SampleArgs(prompt_file=str(path)), None, args, print)
    assert want.format(path=path, new=tmp_path / "prompts-utf8.txt") in str(e.value)
    assert str(e.value).startswith(f"--prompt_file {path}: ")
    assert path.read_bytes() == data


def special_out(tmp_path) -> Path:
    """A named pipe where an output file would go (as /dev/null or /dev/full would be)."""
    import os
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    return fifo


def test_plot_runs_refuses_to_replace_a_device_or_fifo_given_as_out(tmp_path, capsys):
    """Catches plot_runs.py --out /dev/null (or /dev/full, a FIFO) renaming its PNG over that name:
    run as root it replaced the device node with a regular file, exit status 0 (found on /dev/full)."""
    import stat
    fifo = special_out(tmp_path)
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 5, "tokens": 1280, "minutes": 0.1,
                                                   "lm_loss": 5.5}) + "\n")
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(run), "--out", str(fifo)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and stat.S_ISFIFO(fifo.stat().st_mode)
    assert f"--out {fifo} is a named pipe (FIFO), not a file" in err and "name a file to write" in err


@pytest.mark.parametrize("script, work", [("bench_data", "run_child"), ("bench_sample", "measure"),
                                          ("bench_model", "measure_batch"), ("memory_model", "measure")])
def test_benchmarks_refuse_to_replace_a_device_or_fifo_given_as_out(script, work, tmp_path, monkeypatch,
                                                                      capsys):
    """Catches scripts/bench_*.py and memory_model.py --out /dev/null (a device, a FIFO) replaced by the
    JSON written over its name (as root: /dev/null became a regular file), after minutes of work."""
    import importlib
    import stat
    module = importlib.import_module(f"scripts.{script}")

    def begun(*a, **k):
        raise AssertionError("the work began")
    monkeypatch.setattr(module, work, begun)
    fifo = special_out(tmp_path)
    argv = {"bench_data": ["--data", str(Path(__file__))],
            "memory_model": ["--preset", "debug", "--batches", "2"]}
    with pytest.raises(SystemExit) as e:
        module.main([*argv.get(script, ["--quick"]), "--out", str(fifo)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and stat.S_ISFIFO(fifo.stat().st_mode)
    assert f".py: error: --out {fifo} is a named pipe (FIFO), not a file" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("script, work", [("bench_data", "run_child"), ("bench_sample", "measure"),
                                          ("bench_model", "measure_batch")])
def test_benchmarks_refuse_an_empty_out_or_a_folder_before_the_work(script, work, tmp_path, monkeypatch,
                                                                     capsys):
    """Catches scripts/bench_*.py --out FOLDER failing only after the whole benchmark ("cannot write
    FOLDER: Is a directory; the previous file is intact"), and --out "" (an unset variable) saying
    "cannot write .: Device or resource busy"."""
    import importlib
    module = importlib.import_module(f"scripts.{script}")

    def begun(*a, **k):
        raise AssertionError("the work began")
    monkeypatch.setattr(module, work, begun)
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["--data", str(Path(__file__))] if script == "bench_data" else ["--quick"]
    for out, want in [(str(tmp_path), f"--out {tmp_path} is a folder; name the file to write, e.g. --out "
                                      f"{tmp_path / script}.json"),
                      ("", f"--out is empty; name the file to write, e.g. --out {script}.json")]:
        with pytest.raises(SystemExit) as e:
            module.main([*argv, "--out", out])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and want in err[-1], err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bench_sample_refuses_a_negative_warmup(capsys):
    """Catches bench_sample.py --warmup -1 taken without a word (run as no warm-up, recorded as -1 in its
    JSON), where every other count of the script is refused below its least value."""
    from scripts import bench_sample
    for value, said in [("-1", "'-1' is not a whole number, 0 or more"),
                        ("x", "expected an integer, got 'x'")]:  # (read as config.number(int) reads it)
        with pytest.raises(SystemExit) as e:
            bench_sample.parse(["--quick", "--warmup", value])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.count("\n") == 0
        assert err.endswith(f"argument --warmup: {said}")
    assert bench_sample.parse(["--quick", "--warmup", "0"]).warmup == 0


def test_a_run_folder_given_as_hf_is_named_as_one(tmp_path, capsys):
    """Catches `sample.py --hf checkpoints/run` saying only "checkpoints/run/config.json is missing; is
    it an exported HF folder?" of a run folder, without naming --ckpt (the way back, an HF folder
    given as --ckpt, names --hf)."""
    import sample
    (tmp_path / "last.pt").write_bytes(b"a checkpoint")
    with pytest.raises(SystemExit) as e:
        sample.main(["--hf", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    assert f"--hf {tmp_path} is a run folder (it holds last.pt)" in err
    assert err.endswith(f"pass it as --ckpt {tmp_path}\n")
    assert (tmp_path / "last.pt").read_bytes() == b"a checkpoint"


@pytest.mark.parametrize("script", ["compare", "sweep", "gpu_check"])
def test_an_empty_results_folder_is_refused_instead_of_the_current_folder(script, tmp_path, monkeypatch,
                                                                          capsys):
    """Catches compare.py, sweep.py and gpu_check.py taking an empty --out (an unset shell variable) as
    the current folder: the JSON, markdown and plots were written into the working directory (the source
    tree), over any file of those names there, after the runs (storage.results_path refuses it)."""
    from scripts import compare, gpu_check, sweep
    monkeypatch.setattr(sweep, "run_one", lambda *args: pytest.fail("ran first"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        if script == "compare":
            compare.parse(["--out", "", "--minutes", "0.1"])
        elif script == "sweep":
            sweep.main(["--only", "tiny-2026-11", "--out", ""])
        else:  # (its gpu.md, JSON and log.txt went into the current folder too)
            gpu_check.main(["--quick", "--device", "cpu", "--out", ""])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--out is empty (an unset variable?)" in err
    assert not list(tmp_path.iterdir())


def test_a_results_folder_that_cannot_be_made_names_the_option_that_chose_it(tmp_path, monkeypatch, capsys):
    """Catches `sweep.py --out_dir FILE` (no --out: the results go to --out_dir) advising "pick another
    --out", an option that was not typed."""
    from errors import run_script
    from scripts import sweep
    monkeypatch.setattr(sweep, "run_one", lambda *args: pytest.fail("ran first"))
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(SystemExit) as e:
        run_script(lambda: sweep.main(["--only", "tiny-2026-11", "--screen_minutes", "1",
                                       "--out_dir", str(tmp_path / "a_file")]), "sweep.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and err[-1].endswith("pick another --out_dir (or a --out)")
    assert (tmp_path / "a_file").read_text() == "mine"


def test_train_refuses_a_device_or_fifo_as_plot(tmp_path, capsys):
    """Catches train.py --plot /dev/null (a device, a FIFO) passing the plot check: the loss plot, written
    atomically at every evaluation, would put a regular file in the device's place (as root)."""
    import stat

    import train
    fifo = special_out(tmp_path)
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "debug", "--data", str(tmp_path / "none.txt"), "--plot", str(fifo),
                    "--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"train.py: error: --plot {fifo} is a named pipe (FIFO), not a file" in err
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_an_atomic_write_never_replaces_a_device_or_fifo(tmp_path):
    """Catches storage.atomic_write renaming its new file over a device or FIFO (as root, /dev/full and
    /dev/null became regular files): a StorageError naming it, the node left as it was."""
    import stat

    import errors
    import storage
    fifo = special_out(tmp_path)
    with pytest.raises(errors.StorageError) as e:
        storage.atomic_write(fifo, b"data", "write it elsewhere")
    assert str(e.value) == (f"cannot write {fifo}: it is a named pipe (FIFO), which a file written there "
                            "would replace; write it elsewhere")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and not list(tmp_path.glob(".tmp-*"))


def test_plot_runs_without_out_from_below_a_run_folder_writes_beside_the_run(tmp_path, monkeypatch):
    """Bug caught: `plot_runs.py ..` (the run folder, from a folder inside it) without --out took ".."
    as a name and wrote compare.png into the current folder, inside the run; it lands beside the run."""
    run = tmp_path / "checkpoints" / "a"
    (run / "sub").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 5, "tokens": 1280, "minutes": 0.1,
                                                   "lm_loss": 5.5}) + "\n")
    monkeypatch.chdir(run / "sub")
    plot_runs.main([".."])
    assert (tmp_path / "checkpoints" / "compare.png").is_file() and not (run / "sub" / "compare.png").exists()


LONG = "x" * 300  # a name past the 255 bytes a file system takes


@pytest.mark.parametrize("script, argv, code, option", [
    ("train", ["--preset", "debug", "--run", LONG], 2, "--run"),
    ("train", ["--preset", "debug", "--out_dir", f"/tmp/{LONG}/ckpt"], 2, "--out_dir"),
    ("train", ["--preset", "debug", "--init_from", LONG], 1, "--init_from"),
    ("train", ["--eval_only", "--resume", f"/tmp/{LONG}"], 1, "--resume"),
    ("sample", ["--ckpt", f"/tmp/{LONG}"], 1, "--ckpt"),
    ("plot_runs", [f"/tmp/{LONG}"], 2, "a run"),
])
def test_a_name_too_long_for_a_file_system_is_one_line(script, argv, code, option, tmp_path, monkeypatch,
                                                        capsys):
    """Bug caught: pathlib's is_dir()/exists() raising on a name past NAME_MAX (errno 36, "File name too
    long"): a traceback from train.py's --run/--out_dir/--init_from/--resume, sample.py's --ckpt and
    plot_runs.py, where a missing file is one line."""
    import sample
    import train
    monkeypatch.chdir(tmp_path)
    main = {"train": train.main, "sample": sample.main, "plot_runs": plot_runs.main}[script]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert (f"{option} names xxxxxxxxxxxxxxxxxxxx...xxxxxxxxxx, 300 bytes long; a file or folder name takes "
            "at most 255: use a shorter one") in err


def test_a_new_runs_name_with_a_control_character_is_refused_but_an_existing_folders_resumes(tmp_path):
    """Bug caught: --run 'a<TAB>b' or 'a<NEWLINE>b' taken (the newline split the log's lines, the tab was a
    raw matplotlib warning in the plot's title); a folder already named so (made outside train.py) is
    the run's own and stays resumable."""
    import config
    from errors import ConfigError
    for name in ("a\tb", "a\nb", "a\x7fb"):
        with pytest.raises(ConfigError, match="holds a control character"):
            config.check_run(name, str(tmp_path))
    (tmp_path / "a\tb").mkdir()
    config.check_run("a\tb", str(tmp_path))


def test_a_taken_folder_at_init_from_says_to_resume_without_it(tmp_path):
    """Bug caught: `--init_from A --run B`, B holding a checkpoint, advised "pass --resume", which the
    --init_from beside it then refused."""
    from conftest import DEBUG

    import runplan
    from config import TrainArgs
    from errors import RunError
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "last.pt").write_bytes(b"")
    for init, advice in ((None, "pass --resume to continue it"), ({}, "pass --resume without --init_from")):
        with pytest.raises(RunError, match=advice):
            runplan.claim_folder(runplan.RunPlan(tmp_path / "b", DEBUG, TrainArgs(), None, None, init=init))


def test_an_evaluation_on_the_hubs_text_offline_advises_local_validation_text(tmp_path):
    """Bug caught: --eval_only of an import (no data settings: the hub's validation split) on a machine
    without the hub advised `pass --data FILE (and --val_data FILE) to train on local text`."""
    import sources
    from config import TrainArgs
    from errors import DataError
    args = TrainArgs(cache_dir=str(tmp_path / "cache"))
    for need_train, fix in ((False, "pass --val_data FILE to evaluate on local text"),
                            (True, "pass --data FILE (and --val_data FILE) to train on local text")):
        _, val = sources.resolve_sources(args, log=lambda *_: None, need_train=need_train)
        with pytest.raises(DataError, match=fix.replace("(", r"\(").replace(")", r"\)")):
            val.load()


def test_plot_runs_takes_a_runs_name_as_train_py_does(tmp_path, monkeypatch):
    """Bug caught: `plot_runs.py parent ft1` (the names train.py's --run, --resume and --init_from take)
    refused as folders that do not exist."""
    monkeypatch.chdir(tmp_path)
    for run in ("parent", "ft1"):
        (tmp_path / "checkpoints" / run).mkdir(parents=True)
        (tmp_path / "checkpoints" / run / "metrics.jsonl").write_text(json.dumps(
            {"kind": "train", "step": 5, "tokens": 1280, "minutes": 0.1, "lm_loss": 5.5}) + "\n")
    plot_runs.main(["parent", "ft1", "--out", str(tmp_path / "both.png")])
    assert (tmp_path / "both.png").read_bytes().startswith(b"\x89PNG")


def test_plot_runs_draws_a_run_given_twice_once(tmp_path, monkeypatch, capsys):
    """Bug caught: a run given twice (ck/a and ./ck/a/, or ck/a/metrics.jsonl: a glob that holds a run
    named beside it) was drawn twice, one curve over the other, two rows of one label in the legend."""
    drawn = []
    monkeypatch.setattr(plot_runs.runlog, "plot_runs", lambda runs, out, *a, **k: drawn.append(runs) or out)
    monkeypatch.chdir(tmp_path)
    for run in ("a", "b"):
        (tmp_path / "ck" / run).mkdir(parents=True)
        (tmp_path / "ck" / run / "metrics.jsonl").write_text(json.dumps(
            {"kind": "train", "step": 5, "tokens": 1280, "minutes": 0.1, "lm_loss": 5.5}) + "\n")
    plot_runs.main(["ck/a", "ck/b", "./ck/a/", "ck/a/metrics.jsonl", str(tmp_path / "ck" / "b"),
                    "--out", "both.png"])
    assert drawn == [["ck/a", "ck/b"]]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"plot_runs.py: warning: {typed} is the run {first} given again; it is drawn once"
                   for typed, first in (("./ck/a/", "ck/a"), ("ck/a/metrics.jsonl", "ck/a"),
                                        (str(tmp_path / "ck" / "b"), "ck/b"))]


@pytest.mark.parametrize("name", ["last.pt", "model.json", "stray.txt"])
def test_plot_runs_names_the_run_folder_of_a_file_typed_as_a_run(name, tmp_path, capsys):
    """Bug caught: `plot_runs.py RUN/last.pt` (or any file as a run) said "RUN/last.pt/metrics.jsonl does
    not exist; is RUN/last.pt a run folder?", as if the file were a folder; it names the file's run folder
    now, where it has one."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(
        {"kind": "train", "step": 5, "tokens": 1280, "minutes": 0.1, "lm_loss": 5.5}) + "\n")
    (run / "last.pt").write_bytes(b"x")
    (run / "model.json").write_text("{}")
    (tmp_path / "stray.txt").write_text("x")
    typed = tmp_path / "stray.txt" if name == "stray.txt" else run / name
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(typed), "--out", str(tmp_path / "out.png")])
    err = capsys.readouterr().err.strip().splitlines()
    fix = "pass a run folder (one with metrics.jsonl)" if name == "stray.txt" else f"pass its folder {run}"
    assert e.value.code == 2 and len(err) == 1 and err[0].endswith(f" error: {typed} is a file, not a run "
                                                                   f"folder; {fix}")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("imported", [False, True])
def test_eval_only_without_a_tokenizer_is_not_told_another_is_a_new_run(tmp_path, imported):
    """Bug caught: `--eval_only` of a run (or of an import, whose tokenizer came from its HF folder)
    with no tokenizer.json beside it was told "put back the run's own tokenizer.json ... (another is
    a new --run)": an evaluation starts no run. The advice names the file to put back."""
    import runplan
    import runtime
    import train
    ckpt = {"model_args": {}} if imported else {"model_args": {}, "train_args": {}}
    plan = runplan.RunPlan(tmp_path, None, SimpleNamespace(tokenizer="", eval_only=True), ckpt,
                           tmp_path / "last.pt")
    with pytest.raises(train.UserError) as e:
        train.load_data(plan, runtime.World(), "cpu", print)
    whose = ("the one its HF folder held (scripts/export_hf.py --import copies it)" if imported
             else "the run's own")
    assert str(e.value) == (f"{tmp_path} has no tokenizer.json to evaluate with; put back "
                            f"{tmp_path / 'tokenizer.json'}, {whose}, or pass it with --tokenizer FILE")


@pytest.mark.parametrize("beside", [False, True])
def test_a_tokenizer_path_that_is_no_file_beside_a_checkpoint_is_not_told_to_train_one(tmp_path, beside):
    """Bug caught: `--eval_only` (or --resume, --init_from) with a --tokenizer path that is not there was
    told "leave it empty to train one": --tokenizer '' is refused there (or trains a tokenizer the
    checkpoint's model never read). The way out is the tokenizer beside the checkpoint."""
    import runplan
    import runtime
    import train
    if beside:
        (tmp_path / "tokenizer.json").write_text("{}")
    args = SimpleNamespace(tokenizer=str(tmp_path / "nope.json"), eval_only=True)
    plan = runplan.RunPlan(tmp_path, None, args, {"model_args": {}, "train_args": {}}, tmp_path / "last.pt")
    with pytest.raises(train.UserError) as e:
        train.load_data(plan, runtime.World(), "cpu", print)
    way = (f"drop --tokenizer to take the one beside the checkpoint, {tmp_path / 'tokenizer.json'}" if beside
           else f"name the one {tmp_path / 'last.pt'} was trained with")
    assert str(e.value) == f"--tokenizer: no such file '{tmp_path / 'nope.json'}'; check the path, or {way}"


@pytest.mark.parametrize("title", [r"$\foo$", "$x^$"])
def test_plot_runs_refuses_a_title_whose_math_matplotlib_cannot_read(title, tmp_path, capsys):
    """Bug caught: plot_runs.py --title '$\\foo$' (math matplotlib cannot parse) ended in a four-line
    error that began with an empty line and named neither --title nor a fix. Now one line naming the
    option and how to write a dollar sign as text, before any drawing; escaped, the title draws."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 5, "tokens": 1280, "minutes": 0.1,
                                                   "lm_loss": 5.5}) + "\n")
    out = tmp_path / "p.png"
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(run), "--out", str(out), "--title", title])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"error: --title '{title}': matplotlib cannot" in err
    assert r"\$" in err and not out.exists()
    plot_runs.main([str(run), "--out", str(out), "--title", title.replace("$", r"\$")])
    assert out.is_file()
