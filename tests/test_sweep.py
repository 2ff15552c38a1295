"""scripts/sweep.py on toy settings: the stages run, the report names the best candidate,
the table, plot and JSON are written, and a finished run is read back rather than run again."""

import argparse
import json
import os

import pytest
import torch
from conftest import write_stories

import config
import model
from scripts import sweep

TOY = ["--vocab_size", "300", "--num_proc", "1"]  # passed to every run, after the candidate's own


def toy_texts(folder, train: str, valid: str):
    write_stories(folder / train)
    write_stories(folder / valid, n=20, seed=1)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return toy_texts(tmp_path_factory.mktemp("corpus"), "train.txt", "valid.txt")


@pytest.fixture(scope="module")
def toy_shared(tmp_path_factory):
    return toy_texts(tmp_path_factory.mktemp("shared"), "train-lower.txt", "valid-lower.txt")


PREPARE_DATA = sweep.prepare_data  # (the tests that run the sweep's data work put it back)


def finished_at_once(argv, **kwargs):
    """A train.py (subprocess.run's stand-in) whose run finishes at once, with one evaluation."""
    run_dir = sweep.Path(argv[argv.index("--out_dir") + 1]) / argv[argv.index("--run") + 1]
    finished_run(run_dir, step=2, tokens=512, tokens_per_s=100.0, bpb=2.0, nats=5.0, val_tokens=100)
    return sweep.subprocess.CompletedProcess(argv, 0)


@pytest.fixture(autouse=True)
def default_texts(toy_shared, monkeypatch):
    """The default --data and --val_data (../shared's, checked before the first run) as toy texts, so
    that a test that leaves them out does not need ../shared beside the clone; the data work before
    the first run is skipped (tiny's 4096 tokens are more than the toy texts fill, and --cache_dir's
    default is the clone's) but where a test puts sweep.prepare_data back (PREPARE_DATA)."""
    monkeypatch.setattr(sweep, "SHARED", toy_shared)
    monkeypatch.setattr(sweep, "prepare_data", lambda *args: None)
    monkeypatch.setattr(sweep, "_KEYS", {})  # (text_key's, a test's own)


def test_sweep_screens_confirms_reseeds_and_regularises(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "prepare_data", PREPARE_DATA)
    monkeypatch.setattr(sweep, "VARIATIONS", {"lr3e-3": ["--lr", "3e-3"]})
    monkeypatch.setattr(sweep, "FOLLOWUPS", {"wd0.5": ["--weight_decay", "0.5"]})
    argv = ["--no_compile", "--screen_minutes", "0.01", "--confirm_minutes", "0.02", "--confirm", "1",
            "--only", "tiny-2026-11", "--data", str(corpus / "train.txt"),
            "--val_data", str(corpus / "valid.txt"), "--out_dir", str(tmp_path / "runs"),
            "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "img"), *TOY]
    report = sweep.main(argv)
    assert [r["name"] for r in report["screen"]] == ["tiny-2026-11", "tiny-2026-11+lr3e-3"]
    assert [r["seed"] for r in report["confirm"]] == [1, 2] and report["confirm"][0]["name"] == report["best"]
    best = report["best"]
    wd = f"{best}+wd0.5"
    assert [(r["name"], r["seed"]) for r in report["followup"]] == [(wd, 1), (wd, 2)]
    assert report["followup"][0]["overrides"][-2:] == ["--weight_decay", "0.5"]
    assert report["pick"] in (best, wd)
    for r in report["screen"] + report["confirm"] + report["followup"]:
        assert r["bits_per_byte"] > 0 and r["steps"] >= 1 and r["params"] > r["active_params"] > 0
    assert json.loads((tmp_path / "img" / "sweep.json").read_text())["best"] == report["best"]
    md = (tmp_path / "img" / "sweep.md").read_text()
    assert "Screening" in md and "Regularisation" in md and f"**{report['pick']}**" in md
    assert (tmp_path / "img" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "validation on all of valid.txt" in md  # the --val_data given, not the README's
    again = sweep.main(argv)  # every run is finished: read back, not rerun
    assert again["screen"] == report["screen"] and again["followup"] == report["followup"]
    with pytest.raises(SystemExit) as e:  # ... but not for other train.py options: refused
        sweep.main([*argv[:-4], "--vocab_size", "310", "--num_proc", "1"])
    assert "holds a run made with other train.py options" in str(e.value.code)
    monkeypatch.setattr(sweep, "ROOT", tmp_path / "repo")  # (a regression must not write the real img/)
    i = argv.index("--out")
    sweep.main(argv[:i] + argv[i + 2:])  # a sweep of its own without --out: not over the README's
    assert (tmp_path / "runs" / "sweep.json").exists() and not (tmp_path / "repo").exists()


def test_pick_is_the_lowest_mean_over_seeds():
    def run(name, bpb):
        return {"name": name, "overrides": [f"--{name}"], "bits_per_byte": bpb}
    runs = [run("a", 0.97), run("a", 1.01), run("b", 0.98), run("b", 0.985)]  # a has the best single run
    assert sweep.pick_best(runs) == {"name": "b", "overrides": ["--b"], "mean": pytest.approx(0.9825)}


def test_combinations_join_the_variations_that_helped_one_per_option(monkeypatch):
    monkeypatch.setattr(sweep, "VARIATIONS", {
        "lr3e-3": ["--lr", "3e-3"], "lr1e-3": ["--lr", "1e-3"], "batch8": ["--batch_size", "8"],
        "batch32": ["--batch_size", "32"], "vocab2048": ["--vocab_size", "2048"]})
    scores = {"s": 1.20, "s+lr3e-3": 1.15, "s+lr1e-3": 1.18, "s+batch8": 1.14, "s+batch32": 1.25,
              "s+vocab2048": 1.17}
    screened = [{"name": k, "bits_per_byte": v} for k, v in scores.items()]
    combos = sweep.combinations("s", ["--dim", "96"], screened)
    # lr1e-3 helped too, but lr3e-3 helped more: one learning rate only; batch32 did not help
    assert combos == {"s+batch8+lr3e-3": ["--dim", "96", "--batch_size", "8", "--lr", "3e-3"],
                      "s+batch8+vocab2048": ["--dim", "96", "--batch_size", "8", "--vocab_size", "2048"],
                      "s+lr3e-3+vocab2048": ["--dim", "96", "--lr", "3e-3", "--vocab_size", "2048"],
                      "s+batch8+lr3e-3+vocab2048": ["--dim", "96", "--batch_size", "8", "--lr", "3e-3",
                                                    "--vocab_size", "2048"]}
    assert sweep.combinations("s", [], screened[:2]) == {}  # one variation helped: nothing to combine


def test_an_unknown_shape_and_a_failed_run_are_one_line(corpus, tmp_path, capfd):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--only", "nosuchshape"])
    assert e.value.code == 2 and "--only: unknown shape(s) nosuchshape; choose from" in capfd.readouterr().err
    for argv, message in [  # refused before any run
            (["--minuts", "2"], "unknown option --minuts (did you mean --screen_minutes?)"),
            (["--max_minutes", "3"],  # it was ignored
             "--max_minutes cannot be passed through to train.py: sweep.py sets it for every run; use "
             "sweep.py's own --screen_minutes"),
            (["--only", "tiny-2026-11", "--min_lr", "3e-3"],
             "candidate tiny-2026-11: --min_lr: 0.003 is above --lr 0.002"),
            (["--screen_minutes", "0"], "--screen_minutes: must be above 0, got 0"),  # it never ended
            (["--confirm_minutes", "inf"],  # hours in
             "argument --confirm_minutes: expected a finite number, got 'inf'"),
            (["--confirm", "0"], "--confirm: must be above 0, got 0")]:
        with pytest.raises(SystemExit) as e:
            sweep.main([*argv, "--out_dir", str(tmp_path / "runs")])
        assert e.value.code == 2 and f"sweep.py: error: {message}" in capfd.readouterr().err, argv
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as e:  # train.py refuses it: here, not at the first run
        sweep.main(["--out_dir", "", "--data", str(tmp_path / "no.txt")])
    assert e.value.code == 2 and "--out_dir: must name a folder, got ''" in capfd.readouterr().err
    with pytest.raises(sweep.sources.DataError, match="^--data: no such file"):  # before train.py starts
        sweep.main(["--no_compile", "--no_variations", "--only", "tiny-2026-11",
                    "--data", str(tmp_path / "no.txt"), "--val_data", str(corpus / "valid.txt"),
                    "--out_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache"),
                    "--out", str(tmp_path / "img"), *TOY])
    assert not (tmp_path / "runs").exists()


def test_an_empty_only_is_refused_not_the_whole_sweep(tmp_path, monkeypatch, capsys):
    """Bug caught: `--only ""` (an empty shell variable) screened every shape, the ~3-hour sweep,
    where --only nosuchshape is refused."""
    stop_at_the_first_run(monkeypatch)
    for only in ("", ","):
        with pytest.raises(SystemExit) as e:
            sweep.main(["--only", only, "--out_dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith("sweep.py: error: --only is empty; name shapes to screen, e.g. --only "
                              "tiny-2026-11,d192-e8, or leave --only out"), err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(Started):  # no --only: every shape, as before
        sweep.main(["--out_dir", str(tmp_path / "runs")])


def test_a_missing_data_file_is_named_even_beside_earlier_runs(corpus, tmp_path, monkeypatch):
    """Bug caught: a mistyped --data in an --out_dir holding an earlier sweep's finished run said that
    run "holds a run made with other train.py options ... pick another --out_dir", not that the file
    does not exist (as a fresh --out_dir's first train.py run says)."""
    def trained(argv, **kwargs):  # a train.py that finishes
        run_dir = sweep.Path(argv[argv.index("--out_dir") + 1]) / argv[argv.index("--run") + 1]
        finished_run(run_dir, step=2, tokens=512, tokens_per_s=100.0, bpb=2.0, nats=5.0, val_tokens=100)
        return sweep.subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(sweep.subprocess, "run", trained)
    argv = one_toy_run(corpus, tmp_path)
    sweep.main([*argv, "--no_followups", "--confirm", "1", "--confirm_minutes", "0.02"])
    argv[argv.index("--data") + 1] = str(tmp_path / "nope.txt")
    with pytest.raises(sweep.sources.DataError, match=r"^--data: no such file '.*nope\.txt'; check the "):
        sweep.main([*argv, "--no_followups", "--confirm", "1", "--confirm_minutes", "0.02"])
    argv[argv.index("--data") + 1] = str(corpus / "valid.txt")  # text that exists: the earlier run is named
    with pytest.raises(SystemExit) as e:
        sweep.main([*argv, "--no_followups", "--confirm", "1", "--confirm_minutes", "0.02"])
    assert "holds a run made with other train.py options" in str(e.value.code)


class Started(Exception):
    """sweep.py reached its first run: every check before it passed."""


def stop_at_the_first_run(monkeypatch):
    """sweep.main raises Started where it would begin its first run."""
    def run_one(*args):
        raise Started
    monkeypatch.setattr(sweep, "run_one", run_one)


def test_the_readmes_sweep_writes_img_and_any_other_its_own_folder(tmp_path, monkeypatch, capsys):
    """`python scripts/sweep.py --no_compile` made img/sweep.*: it still writes there; a shorter
    sweep writes beside its runs instead (said on stderr), never over the README's."""
    stop_at_the_first_run(monkeypatch)
    for argv, moved in [(["--no_compile"], False), (["--no_compile", "--screen_minutes", "1"], True),
                        (["--no_compile", "--num_proc", "1"], True),
                        (["--no_variations", "--lr", "2.5e-4"], True)]:  # below tiny's min_lr
        with pytest.raises(Started):
            sweep.main([*argv, "--out_dir", str(tmp_path / "runs")])  # (not a folder of the repo's)
        assert ("they go to" in capsys.readouterr().err) == moved, argv


def one_toy_run(corpus, tmp_path) -> list[str]:
    """sweep.py's options for one screened toy run, its folders in tmp_path."""
    return ["--no_compile", "--no_variations", "--only", "tiny-2026-11", "--screen_minutes", "0.01",
            "--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
            "--out_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "img"), *TOY]


def test_a_kill_during_a_run_ends_its_train_py_too(corpus, tmp_path, monkeypatch, capsys):
    """Catches SIGTERM (kill, timeout, a scheduler) ending sweep.py alone: its train.py, which gets no
    Ctrl-C from the terminal, went on running on its own. The kill is now a Ctrl-C in sweep.py while
    train.py runs (subprocess.run then ends the child): one line, status 130; the handler put back."""
    import os
    import signal
    import time

    class Escaped(Exception):
        pass

    def escaped(*args):
        raise Escaped

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # (the handler runs here)
        pytest.fail("SIGTERM did nothing")
    monkeypatch.setattr(sweep.subprocess, "run", killed)
    old = signal.signal(signal.SIGTERM, escaped)  # (what the old code let through, not pytest's death)
    try:
        with pytest.raises(SystemExit) as e:
            sweep.main(one_toy_run(corpus, tmp_path))
        assert signal.getsignal(signal.SIGTERM) is escaped
    finally:
        signal.signal(signal.SIGTERM, old)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and err[-1].startswith("sweep.py: interrupted during tiny-2026-11-0.01m-s1; ")


def test_ctrl_c_during_a_run_is_one_line_and_status_130(corpus, tmp_path, monkeypatch, capsys):
    """Ctrl-C reaches sweep.py as well as its train.py: it was a KeyboardInterrupt traceback."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep.subprocess, "run", interrupted)
    try:
        with pytest.raises(SystemExit) as e:
            sweep.main(one_toy_run(corpus, tmp_path))
    except KeyboardInterrupt:  # (not pytest's to take as its own Ctrl-C)
        pytest.fail("Ctrl-C escaped sweep.py: a traceback")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130 and err[-1].startswith("sweep.py: interrupted during tiny-2026-11-0.01m-s1; ")
    assert not (tmp_path / "img" / "sweep.json").exists()


@pytest.mark.parametrize("records, said", [
    (None, "train.py stopped before its final evaluation for tiny-2026-11-0.01m-s1"),
    ([{"kind": "train", "step": 2, "tokens": 512, "tokens_per_s": 100.0}],
     "train.py stopped before its final evaluation for tiny-2026-11-0.01m-s1"),
    ([{"step": 2, "tokens": 512}], "metrics.jsonl: line 1 has no 'kind' field"),
    ([{"kind": "val", "step": 2, "tokens": 512, "bits_per_byte": 3.0, "nats_per_token": 2.0}],
     "metrics.jsonl: line 1 has no 'val_tokens' field, which train.py writes in every val record"),
])
def test_a_runs_log_without_a_record_or_a_field_is_one_line(corpus, tmp_path, monkeypatch, records, said):
    """Bug caught: a train.py run that left its settings but no metrics.jsonl (stopped before its
    first record) was a FileNotFoundError traceback, and a record without a field sweep.py reads a
    KeyError naming the field alone. A signal to train.py alone (`kill` of its pid) stops it cleanly,
    status 0, with no validation record: that was an IndexError traceback."""
    def stopped(argv, **kwargs):
        run_dir = tmp_path / "runs" / argv[argv.index("--run") + 1]
        run_dir.mkdir(parents=True)
        (run_dir / "run.lock").touch()  # (train.py's first file: storage.run_folder_files)
        (run_dir / "train.json").write_text("{}")
        if records is not None:
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return sweep.subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(sweep.subprocess, "run", stopped)
    with pytest.raises(SystemExit) as e:
        sweep.main(["--no_compile", "--no_variations", "--only", "tiny-2026-11", "--screen_minutes", "0.01",
                    "--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                    "--out_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache"),
                    "--out", str(tmp_path / "img"), *TOY])
    assert str(e.value.code).startswith("sweep.py: error: ") and said in str(e.value.code)
    assert not (tmp_path / "runs" / "tiny-2026-11-0.01m-s1" / "sweep-result.json").exists()


def test_an_out_folder_that_cannot_be_made_is_one_line_before_the_runs(tmp_path, monkeypatch, capsys):
    """It was a traceback after every run of the sweep (out.mkdir at the end)."""
    from errors import run_script
    monkeypatch.setattr(sweep, "run_one", lambda *args: pytest.fail("ran first"))
    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "a_file" / "img"
    with pytest.raises(SystemExit) as e:
        run_script(lambda: sweep.main(["--only", "tiny-2026-11", "--out", str(bad)]), "sweep.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and err[-1].startswith(f"sweep.py: error: cannot create the folder {bad}")


def finished_run(run_dir, step, tokens, tokens_per_s, bpb, nats, val_tokens):
    """The metrics.jsonl of a finished train.py run (a train and a val record), without training."""
    run_dir.mkdir(parents=True)
    records = [{"kind": "train", "step": step, "tokens": tokens, "tokens_per_s": tokens_per_s},
               {"kind": "val", "step": step, "tokens": tokens, "bits_per_byte": bpb, "nats_per_token": nats,
                "val_tokens": val_tokens}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_relative_paths_mean_the_same_folders_to_train_py(corpus, tmp_path, monkeypatch):
    """train.py ran in the repository (cwd=ROOT), sweep.py where it was started: a relative --out_dir
    was written there and read here, a FileNotFoundError traceback after the first run."""
    def trained(argv, **kwargs):  # a train.py that finishes, in the folder it is started in
        run_dir = sweep.Path(kwargs.get("cwd", ".")) / argv[argv.index("--out_dir") + 1] / argv[
            argv.index("--run") + 1]
        finished_run(run_dir, step=2, tokens=512, tokens_per_s=100.0, bpb=2.0, nats=5.0, val_tokens=100)
        return sweep.subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(sweep, "ROOT", tmp_path / "repo")  # (the old cwd of train.py: not the real one)
    monkeypatch.setattr(sweep.subprocess, "run", trained)
    monkeypatch.chdir(tmp_path)
    report = sweep.main(["--no_compile", "--no_variations", "--no_followups", "--confirm", "1",
                         "--only", "tiny-2026-11", "--screen_minutes", "0.01", "--confirm_minutes", "0.02",
                         "--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                         "--out_dir", "runs", "--cache_dir", "cache", "--out", "img", *TOY])
    assert [r["run"] for r in report["confirm"]] == ["tiny-2026-11-0.02m-s1", "tiny-2026-11-0.02m-s2"]
    assert (tmp_path / "runs" / "tiny-2026-11-0.01m-s1" / "sweep-result.json").exists()
    assert (tmp_path / "img" / "sweep.json").exists() and not (tmp_path / "repo").exists()


def test_a_combination_keeps_each_variations_own_setting(monkeypatch):
    """cosine-to-0 (--min_lr 0) before lr3e-3 (--lr 3e-3 --min_lr 3e-4) in a combination was undone:
    'tiny-2026-11+cosine-to-0+lr3e-3' trained with --min_lr 3e-4, the lr3e-3 run again."""
    monkeypatch.setattr(sweep, "VARIATIONS", {k: sweep.VARIATIONS[k] for k in ("lr3e-3", "cosine-to-0")})
    scores = {"s": 1.20, "s+cosine-to-0": 1.10, "s+lr3e-3": 1.15}  # the better one first
    combos = sweep.combinations("s", [], [{"name": k, "bits_per_byte": v} for k, v in scores.items()])
    over = combos["s+cosine-to-0+lr3e-3"]
    assert dict(zip(over[::2], over[1::2], strict=True)) == {"--lr": "3e-3", "--min_lr": "0"}  # (last wins)


def test_an_option_that_clashes_with_a_later_stage_is_refused_before_the_runs(tmp_path, monkeypatch, capsys):
    """Only the shapes were checked: --min_lr 1.5e-3 suits them (lr 2e-3) but not lr1e-3, whose
    train.py run failed in stage 2, after the runs before it (sweep.py exit 1). The line names the
    run that cannot take it: it named only the option, as if no run could."""
    monkeypatch.setattr(sweep, "run_one", lambda *args: pytest.fail("ran first"))
    for argv, message in [
            (["--min_lr", "1.5e-3"], "candidate tiny-2026-11+lr1e-3: --min_lr: 0.0015 is above --lr 0.001"),
            (["--weight_decay", "400"], "candidate tiny-2026-11+lr3e-3: --weight_decay"),  # 400 x 3e-3 >= 1
            # a follow-up's: weight decay 2.0 x lr 0.6 reaches 1 in stage 6
            (["--no_variations", "--lr", "0.6", "--min_lr", "0"],
             "candidate tiny-2026-11+wd2.0: --weight_decay")]:
        with pytest.raises(SystemExit) as e:
            sweep.main(["--only", "tiny-2026-11", *argv, "--out_dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith(f"sweep.py: error: {message}"), argv
    assert not (tmp_path / "runs").exists()


def test_a_compile_passed_through_is_refused_unless_there_is_no_compiled_run(tmp_path, monkeypatch, capsys):
    """--compile false came after the compiled run's own --compile true: that run was the best candidate
    again under another name (and --compile true made every run compiled, the same copy)."""
    stop_at_the_first_run(monkeypatch)
    for flag in (["--compile", "false"], ["--compile=true"]):
        with pytest.raises(SystemExit) as e:
            sweep.main(["--only", "tiny-2026-11", *flag, "--out_dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, flag
        assert err[0].startswith("sweep.py: error: --compile would set every run's"), flag
        assert "leave it out, or add --no_compile" in err[0]
    with pytest.raises(Started):  # no compiled run of its own: --compile goes to every run
        sweep.main(["--only", "tiny-2026-11", "--no_compile", "--compile", "true",
                    "--out_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "img")])


def test_undone_last_reads_the_options_other_variations_set_not_their_values(monkeypatch):
    """A variation goes after one that sets its option too, as a later option (even positions from 2);
    a value that reads like that option is no setting of it."""
    monkeypatch.setattr(sweep, "VARIATIONS", {"zero": ["--min_lr", "0"],
                                              "lr": ["--lr", "3e-3", "--min_lr", "3e-4"],
                                              "odd": ["--tokenizer", "--min_lr"]})
    assert sweep.undone_last(["zero", "lr"]) == ["lr", "zero"]
    assert sweep.undone_last(["lr", "zero"]) == ["lr", "zero"]
    assert sweep.undone_last(["zero", "odd"]) == ["zero", "odd"]  # a value ("--min_lr" a file name) moved it


def test_a_stage_left_out_is_not_checked(tmp_path, monkeypatch):
    """--no_followups: the follow-ups are not run, so an option that clashes only with theirs (weight
    decay 2.0 x lr 0.6 reaches 1) is not refused; it was, as if they ran."""
    stop_at_the_first_run(monkeypatch)
    with pytest.raises(Started):
        sweep.main(["--only", "tiny-2026-11", "--no_variations", "--no_followups", "--no_compile",
                    "--lr", "0.6", "--min_lr", "0", "--out_dir", str(tmp_path / "runs"),
                    "--out", str(tmp_path / "img")])


def test_confirm_minutes_equal_to_the_screens_confirm_the_best_alone(tmp_path, monkeypatch):
    """With --confirm_minutes equal to --screen_minutes every screened run's result file is where a
    confirmation's would be: all of them were taken as confirmed by an earlier sweep (the table
    listed every screened candidate as confirmed, with --confirm 1)."""
    def run_one(name, overrides, minutes, seed, opts):
        path = sweep.result_path(name, minutes, seed, opts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        return {"name": name, "run": path.parent.name, "minutes": minutes, "seed": seed,
                "overrides": overrides, "steps": 1, "tokens_per_s": 1.0, "params": 2, "active_params": 1,
                "load_avg_before": 0.0,
                "bits_per_byte": {"tiny-2026-11": 1.2, "d192-e8": 1.1, "d256-e4": 1.15}[name] + seed / 1000}
    monkeypatch.setattr(sweep, "run_one", run_one)
    report = sweep.main(["--only", "tiny-2026-11,d192-e8,d256-e4", "--no_variations", "--no_compile",
                         "--no_followups", "--confirm", "1", "--screen_minutes", "1",
                         "--confirm_minutes", "1",
                         "--out_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "img")])
    assert [(r["name"], r["seed"]) for r in report["confirm"]] == [("d192-e8", 1), ("d192-e8", 2)]


def test_a_pass_through_option_that_a_variation_sets_is_warned_of(tmp_path, monkeypatch, capsys):
    """--vocab_size 512 came after vocab2048's and vocab8192's own: both ran as copies of the best
    shape (the same bits/byte in the table), with nothing said."""
    stop_at_the_first_run(monkeypatch)
    for argv, warned in [(["--vocab_size", "512"], "vocab2048, vocab8192 would repeat the run each varies"),
                         (["--weight_decay=0.2", "--no_variations"], "wd1.0, wd2.0, wd0.1 would repeat"),
                         (["--vocab_size", "512", "--no_variations"], None)]:
        with pytest.raises(Started):
            sweep.main(["--only", "tiny-2026-11", "--no_compile", *argv, "--out_dir", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "img")])
        err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
        assert len(err) == (1 if warned else 0), argv
        assert not warned or err[0].startswith(f"sweep.py: warning: {warned}"), argv


@pytest.mark.parametrize("no_compile", [False, True])
def test_beside_the_compiled_run_every_run_is_eager_on_any_device(tmp_path, monkeypatch, no_compile):
    """The +compile run was compared with the best candidate, but on CUDA --compile auto compiled
    every run: the +compile run was a copy. Now the others pass --compile false (none with
    --no_compile, where there is no compiled run and --compile may be passed through)."""
    launched = {}

    def fake_train(cmd, **kwargs):  # train.py's metrics.jsonl, without training
        argv = cmd[2:]
        launched[argv[argv.index("--run") + 1]] = argv
        run_dir = tmp_path / "runs" / argv[argv.index("--run") + 1]
        finished_run(run_dir, step=1, tokens=100, tokens_per_s=10.0, bpb=1.0, nats=1.0, val_tokens=10)
        return sweep.subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(sweep.subprocess, "run", fake_train)
    monkeypatch.setattr(sweep, "plot", lambda *args: None)
    sweep.main(["--only", "tiny-2026-11", "--no_variations", "--no_followups", "--confirm", "1",
                *(["--no_compile"] if no_compile else []), "--screen_minutes", "1", "--confirm_minutes", "2",
                "--out_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "img")])
    compiles = {run: [argv[i + 1] for i, w in enumerate(argv) if w == "--compile"]
                for run, argv in launched.items()}
    expected = {"tiny-2026-11-1m-s1": ["false"], "tiny-2026-11-2m-s1": ["false"],
                "tiny-2026-11-2m-s2": ["false"], "tiny-2026-11+compile-2m-s1": ["true"]}
    if no_compile:
        expected = {run: [] for run in expected if "+compile" not in run}
    assert compiles == expected


def test_a_nan_score_ranks_last_everywhere(tmp_path, monkeypatch):
    """min() kept a NaN bits/byte that came first and sorted() left a list with one unsorted: a
    diverged shape was the 'best' that stage 2 varied and the one confirmed, and the tables were
    out of order."""
    nan = float("nan")
    monkeypatch.setattr(sweep, "VARIATIONS", {"lr3e-3": ["--lr", "3e-3"]})
    scores = {"tiny-2026-11": nan, "d192-e8": 1.1, "d256-e4": 1.15, "d192-e8+lr3e-3": 1.05}

    def run_one(name, overrides, minutes, seed, opts):
        return {"name": name, "run": f"{name}-s{seed}", "minutes": minutes, "seed": seed,
                "overrides": overrides, "steps": 1, "tokens_per_s": 1.0, "params": 2, "active_params": 1,
                "load_avg_before": 0.0, "bits_per_byte": scores.get(name, 9.0) + seed / 1000}
    monkeypatch.setattr(sweep, "run_one", run_one)
    monkeypatch.setattr(sweep, "plot", lambda *args: None)  # (the next test's)
    report = sweep.main(["--only", "tiny-2026-11,d192-e8,d256-e4", "--no_compile", "--no_followups",
                         "--confirm", "1", "--out_dir", str(tmp_path / "runs"),
                         "--out", str(tmp_path / "img")])
    assert [r["name"] for r in report["screen"]][3:] == ["d192-e8+lr3e-3"]  # varied: the best finite
    assert report["best"] == report["pick"] == "d192-e8+lr3e-3"
    md = (tmp_path / "img" / "sweep.md").read_text().split("**Confirmation")[0]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in md.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["d192-e8+lr3e-3", "d192-e8", "d256-e4", "tiny-2026-11"]  # (rows[0]: the header)

    def run(name, bpb):
        return {"name": name, "overrides": [f"--{name}"], "bits_per_byte": bpb}
    assert sweep.pick_best([run("a", nan), run("a", 0.9), run("b", 1.0)])["name"] == "b"
    monkeypatch.setattr(sweep, "VARIATIONS", {
        "lr1e-3": ["--lr", "1e-3"], "batch8": ["--batch_size", "8"], "lr3e-3": ["--lr", "3e-3"],
        "vocab2048": ["--vocab_size", "2048"]})
    screened = [run("s", 1.2), run("s+lr1e-3", 1.18), run("s+batch8", nan), run("s+lr3e-3", 1.15),
                run("s+vocab2048", 1.17)]
    assert list(sweep.combinations("s", [], screened)) == ["s+lr3e-3+vocab2048"]  # the better lr


def test_the_plot_shows_every_point_a_nan_bar_at_the_bottom(tmp_path):
    """The right limit came from the screened runs only: a confirmed run worse than all of them (a
    regularisation that hurts, a --confirm_minutes shorter than the screen's) was off the plot."""
    nan = float("nan")
    scores = {"a": 2.0, "b": nan, "d": 1.5}
    screen = [{"name": name, "bits_per_byte": bpb, "minutes": 1} for name, bpb in scores.items()]
    confirm = [{"name": "a", "bits_per_byte": 2.5, "seed": 1, "minutes": 0.5},
               {"name": "c", "bits_per_byte": 1.4, "seed": 2, "minutes": 0.5}]  # (c: a stage-6 candidate)
    ax = sweep.plot(screen, confirm, tmp_path / "sweep.png").axes[0]
    lo, hi = ax.get_xlim()
    assert lo < 1.4 and 2.5 < hi
    assert [line.get_xdata()[0] for line in ax.lines] == [2.5, 1.4]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "a", "d", "c"]  # bottom to top


def test_the_tables_and_the_plot_name_the_device_the_runs_trained_on(tmp_path, monkeypatch):
    """Bug caught: sweep.png's title said "tiny on 2 CPU cores" and sweep.md "on N CPU cores" on any
    machine: a sweep on a GPU (train.py's default device there) was labelled a CPU one."""
    monkeypatch.setattr(sweep.torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    assert sweep.machine(torch.device("cuda:0")) == "NVIDIA H200"
    assert sweep.machine(torch.device("cpu")) == f"{os.cpu_count()} CPU cores"
    screen = [{"name": "a", "bits_per_byte": 2.0, "minutes": 1}]
    ax = sweep.plot(screen, [], tmp_path / "sweep.png", "valid.txt", "NVIDIA H200").axes[0]
    assert ax.get_title() == "tiny on NVIDIA H200: the sweep"


def test_a_damaged_result_is_one_line_and_kept(tmp_path, monkeypatch):
    """Bug caught: a sweep-result.json edited by hand into bad JSON (or a list) was a JSONDecodeError
    traceback (or an AttributeError) when the sweep was run again."""
    opts = fake_train_py(tmp_path, monkeypatch)
    path = sweep.result_path("s", 0.01, 1, opts)
    path.parent.mkdir(parents=True)
    for text in ['{"name": "s", "bits_per', "[1, 2]"]:
        path.write_text(text)
        with pytest.raises(SystemExit) as e:
            sweep.run_one("s", [], 0.01, 1, opts)
        assert str(e.value.code).startswith(f"sweep.py: error: {path} is not a result sweep.py wrote ("), e
        assert str(e.value.code).endswith(f"; delete {path.parent} to run s again")
        assert path.read_text() == text


@pytest.mark.parametrize("train, expected", [
    ([{"kind": "train", "step": 2, "tokens": 100, "tokens_per_s": 10.0},
      {"kind": "train", "step": 4, "tokens": 300, "tokens_per_s": 20.0}], 15.0),  # 300 tokens in 10 + 10 s
    ([], None)])  # the budget spent before the first step: it was a ZeroDivisionError
def test_tokens_per_s_is_over_the_training_seconds_and_none_without_a_train_record(tmp_path, monkeypatch,
                                                                                  train, expected):
    import argparse

    def trained(argv, **kwargs):
        run_dir = tmp_path / "runs" / argv[argv.index("--run") + 1]
        run_dir.mkdir(parents=True)
        val = {"kind": "val", "step": 4 if train else 0, "tokens": 300 if train else 0, "bits_per_byte": 3.0,
               "nats_per_token": 5.0, "val_tokens": 100}
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*train, val]))
        return sweep.subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(sweep.subprocess, "run", trained)
    opts = argparse.Namespace(out_dir=str(tmp_path / "runs"), no_compile=True, extra=[], data="train.txt",
                              val_data="valid.txt", cache_dir=str(tmp_path / "cache"))
    result = sweep.run_one("tiny-2026-11", [], 0.01, 1, opts)
    assert result["tokens_per_s"] == expected
    assert sweep.run_one("tiny-2026-11", [], 0.01, 1, opts) == result  # (read back: sweep-result.json)
    row = sweep.table([result], "t")[-2]
    assert f"| {result['steps']:,} | {'n/a' if expected is None else '15'} | " in row


def test_a_variation_that_only_ties_the_best_shape_is_not_combined(monkeypatch):
    """Catches combinations taking a variation that scored the same as the best shape for one that helped."""
    monkeypatch.setattr(sweep, "VARIATIONS", {
        "lr3e-3": ["--lr", "3e-3"], "batch8": ["--batch_size", "8"], "vocab2048": ["--vocab_size", "2048"]})
    scores = {"s": 1.2, "s+lr3e-3": 1.1, "s+batch8": 1.2, "s+vocab2048": 1.15}
    screened = [{"name": k, "bits_per_byte": v} for k, v in scores.items()]
    assert list(sweep.combinations("s", [], screened)) == ["s+lr3e-3+vocab2048"]


def fake_train_py(tmp_path, monkeypatch, extra=()):
    """run_one's options, and a train.py that finishes at once in a run folder it makes (mkdir: one
    already there is an error)."""
    def trained(argv, **kwargs):
        finished_run(tmp_path / "runs" / argv[argv.index("--run") + 1], step=2, tokens=512,
                     tokens_per_s=100.0, bpb=2.0, nats=5.0, val_tokens=100)
        return sweep.subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(sweep.subprocess, "run", trained)
    return argparse.Namespace(out_dir=str(tmp_path / "runs"), no_compile=True, extra=list(extra),
                              data="train.txt", val_data="valid.txt", cache_dir=str(tmp_path / "cache"))


def test_a_runs_sizes_are_those_of_the_model_it_trained(tmp_path, monkeypatch):
    """Catches run_one's sizes leaving out the options passed through to every run (--n_experts 8), or
    counting every expert as active."""
    opts = fake_train_py(tmp_path, monkeypatch, ["--n_experts", "8"])
    result = sweep.run_one("top2", ["--top_k", "2"], 0.01, 1, opts)
    m = config.parse_args([config.ModelArgs], ["--preset", "tiny", "--top_k", "2", "--n_experts", "8"])[1][0]
    with torch.device("meta"):
        counts = model.count_parameters(model.Llama4(m))
    assert (result["params"], result["active_params"]) == (counts["total"], counts["active_per_token"])
    assert result["active_params"] < result["params"]


def test_a_run_cut_short_is_run_again_in_a_fresh_folder(tmp_path, monkeypatch):
    """Catches run_one starting train.py again in the folder an interrupted run left (no
    sweep-result.json in it) instead of deleting it first."""
    opts = fake_train_py(tmp_path, monkeypatch)
    left = sweep.result_path("s", 0.01, 1, opts).parent
    left.mkdir(parents=True)
    (left / "last.pt").write_bytes(b"a run cut short")
    assert sweep.run_one("s", [], 0.01, 1, opts)["bits_per_byte"] == 2.0
    assert not (left / "last.pt").exists() and (left / "sweep-result.json").exists()


def test_a_run_folder_in_use_by_a_train_py_is_not_deleted(tmp_path, monkeypatch):
    """Bug caught: run_one deleted the folder of a run cut short without asking whether a train.py
    still held it: a second sweep on the same --out_dir, or a rerun after `kill -9 sweep.py` (its
    train.py lives on), deleted the live run's files under it (its lock file too), and the train.py
    started there ran beside the other one, in the same folder (the other failed "cannot write
    metrics.jsonl", or wrote its records into the new run's log)."""
    import storage
    opts = fake_train_py(tmp_path, monkeypatch)
    live = sweep.result_path("s", 0.01, 1, opts).parent
    live.mkdir(parents=True)
    (live / "train.json").write_text("{}")
    held = storage.lock(live / "run.lock")
    try:
        with pytest.raises(SystemExit) as e:
            sweep.run_one("s", [], 0.01, 1, opts)
    finally:
        held.close()
    assert str(e.value.code).startswith(f"sweep.py: error: {live} is in use by another train.py (pid ")
    assert (live / "train.json").exists() and not (live / "sweep-result.json").exists()


@pytest.mark.parametrize("device, same", [("cpu", True), ("cuda", False)])
def test_runs_of_a_sweep_with_no_compile_are_read_back_where_compile_auto_was_eager(tmp_path, monkeypatch,
                                                                                     device, same):
    """Bug caught: a sweep rerun without --no_compile (to add its compiled run, stage 5) refused every
    finished run of the same sweep with --no_compile, "made with other train.py options", on the CPU,
    where those runs' --compile auto was eager, as the --compile false of the rerun's: a sweep of hours
    to run again in another --out_dir. On CUDA auto compiled them: those are other runs, refused."""
    opts = fake_train_py(tmp_path, monkeypatch)
    assert sweep.run_one("s", [], 0.01, 1, opts)["bits_per_byte"] == 2.0
    opts.no_compile, opts.device = False, torch.device(device)
    monkeypatch.setattr(sweep.subprocess, "run", lambda argv, **kw: pytest.fail("trained again"))
    if same:
        assert sweep.run_one("s", [], 0.01, 1, opts)["bits_per_byte"] == 2.0
    else:
        with pytest.raises(SystemExit, match="holds a run made with other train.py options"):
            sweep.run_one("s", [], 0.01, 1, opts)


def test_a_run_whose_steps_were_skipped_as_non_finite_says_so_in_its_result_and_table(tmp_path, monkeypatch):
    """Bug caught: a candidate whose loss went NaN (an --lr too high) had its non-finite steps skipped
    by train.py; its budget ran out before --max_bad_steps in a row, so it finished, scored on the
    weights from before the NaNs (3.75 bits/byte after 6 steps, 3 of them skipped), and the result and
    tables showed a clean run of 6 steps: nothing said half of it trained nothing."""
    opts = fake_train_py(tmp_path, monkeypatch)
    run = sweep.result_path("s", 0.01, 1, opts).parent
    monkeypatch.setattr(sweep.subprocess, "run", lambda argv, **kw: (
        finished_run(run, step=6, tokens=1536, tokens_per_s=100.0, bpb=3.75, nats=6.2, val_tokens=100),
        (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().replace(
            '"tokens_per_s": 100.0}', '"tokens_per_s": 100.0, "skipped_steps": 3}', 1)),
        sweep.subprocess.CompletedProcess(argv, 0))[-1])
    result = sweep.run_one("s", [], 0.01, 1, opts)
    assert result["skipped_steps"] == 3
    row = sweep.table([{**result, "minutes": 0.01}], "t")[4]
    assert row.startswith("| s | 0.01 | 1 | 6 (3 non-finite, skipped) | ")
    clean = {**result, "skipped_steps": 0}
    assert "| 6 |" in sweep.table([clean], "t")[4]
    del clean["skipped_steps"]  # (a result from before it was recorded)
    assert "| 6 |" in sweep.table([clean], "t")[4]


def test_every_shape_and_variation_starts_from_what_it_varies():
    """Catches a shape losing the 2026-11 baseline it starts from (its --lr 2e-3, batch, ...), or a
    variation losing the best shape's overrides."""
    base = sweep.SHAPES["tiny-2026-11"]
    for name, over in sweep.shapes().items():
        assert over == base + ([] if name == "tiny-2026-11" else sweep.SHAPES[name]), name
    assert sweep.variations("s", ["--dim", "96"]) == {f"s+{name}": ["--dim", "96", *over]
                                                      for name, over in sweep.VARIATIONS.items()}


def test_the_candidates_checked_are_those_the_stages_run(tmp_path, monkeypatch):
    """Catches every_candidate checking the follow-ups on the first shape alone, not on its variations
    (the best confirmed may be one), and checking variations that --no_variations leaves out (so that
    --min_lr 1.5e-3, too high for lr1e-3 only, was refused)."""
    opts = argparse.Namespace(no_variations=False, no_followups=False, no_compile=False)
    checked = sweep.every_candidate(sweep.shapes(), opts)
    assert checked["tiny-2026-11+lr3e-3+batch8+wd2.0"][-8:] == [
        "--lr", "3e-3", "--min_lr", "3e-4", "--batch_size", "8", "--weight_decay", "2.0"]
    assert checked["tiny-2026-11+cosine-to-0+compile"][-2:] == ["--compile", "true"]
    assert "d192-e8+lr3e-3" in checked and "d192-e8+wd2.0" not in checked  # (stage 6: the first shape's)

    stop_at_the_first_run(monkeypatch)
    with pytest.raises(Started):
        sweep.main(["--only", "tiny-2026-11", "--no_variations", "--no_compile", "--min_lr", "1.5e-3",
                    "--out_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "img")])


def test_every_option_sweep_sets_for_each_run_is_refused(tmp_path, capsys):
    """Catches an option sweep.py sets (--seed: seed 2 is the noise run; --eval_windows 0: all of the
    validation text) passed through, where it came after sweep.py's own or clashed with it."""
    for flag in ("--preset", "--max_minutes", "--max_steps", "--eval_every", "--save_every", "--eval_windows",
                 "--seed", "--plot", "--wandb_mode", "--run", "--resume", "--init_from", "--eval_only"):
        with pytest.raises(SystemExit) as e:
            sweep.main(["--only", "tiny-2026-11", flag, "1", "--out_dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        said = f"sweep.py: error: {flag} cannot be passed through to train.py: "
        assert e.value.code == 2 and said in err, flag
        assert err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_runs_train_py_settings_and_its_score_from_the_last_evaluation(tmp_path, monkeypatch):
    """Catches run_one's train.py command dropping the seed it is given (seed 2 ran seed 1 again),
    --max_steps (the preset's 5000 stopped the run before its budget) or --eval_windows 0 (a sample
    of the validation text), or putting the options passed through before the candidate's (the
    candidate's then won); and its score read from the first evaluation, its bits/byte as nats/token,
    or its steps from the last train record (logged every --log_every steps) not the run's end."""
    launched = []

    def trained(argv, **kwargs):
        launched.append(argv[2:])
        run_dir = tmp_path / "runs" / argv[argv.index("--run") + 1]
        run_dir.mkdir(parents=True)
        records = [{"kind": "train", "step": 2, "tokens": 512, "tokens_per_s": 100.0},
                   {"kind": "val", "step": 2, "tokens": 512, "bits_per_byte": 3.0, "nats_per_token": 6.0,
                    "val_tokens": 100},
                   {"kind": "val", "step": 3, "tokens": 768, "bits_per_byte": 2.0, "nats_per_token": 5.0,
                    "val_tokens": 100}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return sweep.subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(sweep.subprocess, "run", trained)
    opts = argparse.Namespace(out_dir=str(tmp_path / "runs"), no_compile=True, extra=["--lr", "1e-3"],
                              data="train.txt", val_data="valid.txt", cache_dir=str(tmp_path / "cache"))
    result = sweep.run_one("s", ["--lr", "3e-3", "--dim", "96"], 0.5, 2, opts)
    _, (m, t) = config.parse_args([config.ModelArgs, config.TrainArgs], launched[0])
    assert (t.seed, t.lr, m.dim, t.max_minutes) == (2, 1e-3, 96, 0.5)
    assert (t.max_steps, t.eval_every, t.save_every, t.eval_windows) == (10**9, 10**9, 10**9, 0)
    assert launched[0][launched[0].index("--eval_windows") + 1] == "0"  # (not left to the preset)
    assert (t.data, t.val_data, t.run) == ("train.txt", "valid.txt", "s-0.5m-s2")
    assert {k: result[k] for k in ("steps", "tokens", "bits_per_byte", "nats_per_token", "val_tokens")} == {
        "steps": 3, "tokens": 768, "bits_per_byte": 2.0, "nats_per_token": 5.0, "val_tokens": 100}


def test_an_earlier_result_is_read_back_and_a_killed_train_py_is_one_line(tmp_path, monkeypatch):
    """Catches a sweep-result.json from before train_argv was recorded being refused as made with
    other options (the docs keep it), and a train.py killed by a signal (a negative status) read
    as finished: a FileNotFoundError traceback for its metrics.jsonl, not sweep.py's line."""
    opts = fake_train_py(tmp_path, monkeypatch)
    path = sweep.result_path("s", 0.01, 1, opts)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "s", "bits_per_byte": 1.5}))
    assert sweep.run_one("s", [], 0.01, 1, opts) == {"name": "s", "bits_per_byte": 1.5}
    killed = sweep.subprocess.CompletedProcess([], -9)  # (SIGKILL: the kernel's OOM killer, `kill -9`)
    monkeypatch.setattr(sweep.subprocess, "run", lambda argv, **kw: killed)
    with pytest.raises(SystemExit) as e:
        sweep.run_one("s", [], 0.02, 1, opts)
    assert str(e.value.code).startswith("sweep.py: error: train.py failed for s-0.02m-s1 (exit -9")


def test_the_best_confirmed_is_reseeded_and_the_pick_is_its_mean_over_seeds(tmp_path, monkeypatch):
    """Catches the best confirmed taken as the best screened (confirmation reversed them), a follow-up
    run with seed 1 alone, the pick made among every confirmed run (one lucky seed-1 run of another
    candidate), its mean taken as the best seed's score, and its command in sweep.md without the
    options passed through."""
    scores = {("tiny-2026-11", 1, 1): 1.2, ("d192-e8", 1, 1): 1.1, ("d256-e4", 1, 1): 1.15,
              ("d192-e8", 2, 1): 1.06, ("d256-e4", 2, 1): 1.05, ("d256-e4", 2, 2): 1.25,
              ("d256-e4+wd", 2, 1): 1.12, ("d256-e4+wd", 2, 2): 1.16}

    def run_one(name, overrides, minutes, seed, opts):
        return {"name": name, "run": f"{name}-{minutes:g}m-s{seed}", "minutes": minutes, "seed": seed,
                "overrides": overrides, "steps": 1, "tokens_per_s": 1.0, "params": 2, "active_params": 1,
                "load_avg_before": 0.0, "bits_per_byte": scores[name, minutes, seed]}
    monkeypatch.setattr(sweep, "run_one", run_one)
    monkeypatch.setattr(sweep, "plot", lambda *args: None)
    monkeypatch.setattr(sweep, "FOLLOWUPS", {"wd": ["--weight_decay", "0.5"]})
    report = sweep.main(["--only", "tiny-2026-11,d192-e8,d256-e4", "--no_variations", "--no_compile",
                         "--confirm", "2", "--screen_minutes", "1", "--confirm_minutes", "2",
                         "--out_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "img"),
                         "--num_proc", "1"])
    assert [(r["name"], r["seed"]) for r in report["confirm"]] == [("d192-e8", 1), ("d256-e4", 1),
                                                                   ("d256-e4", 2)]
    assert report["best"] == "d256-e4"
    assert [(r["name"], r["seed"]) for r in report["followup"]] == [("d256-e4+wd", 1), ("d256-e4+wd", 2)]
    assert (report["pick"], report["pick_mean_bits_per_byte"]) == ("d256-e4+wd", pytest.approx(1.14))
    assert report["pick_overrides"] == sweep.shapes()["d256-e4"] + ["--weight_decay", "0.5"]
    md = (tmp_path / "img" / "sweep.md").read_text().splitlines()
    assert md[-1].startswith("Pick (lowest mean over seeds 1 and 2): **d256-e4+wd**, 1.1400 bits/byte: `")
    assert md[-1].endswith(" --weight_decay 0.5 --num_proc 1`")


def test_the_readmes_sweep_may_keep_its_runs_and_cache_elsewhere(tmp_path, monkeypatch, capsys):
    """Catches --cache_dir (where tokenizers are kept, not a result) sending the README's sweep away
    from img/."""
    stop_at_the_first_run(monkeypatch)
    monkeypatch.setattr(sweep, "check_candidates", lambda *args: (torch.device("cpu"), []))  # (all: seconds)
    with pytest.raises(Started):
        sweep.main(["--no_compile", "--out_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "c")])
    assert "they go to" not in capsys.readouterr().err


def test_what_train_py_refuses_before_any_data_work_is_refused_before_the_first_run(corpus, tmp_path,
                                                                                    monkeypatch, capsys):
    """Bug caught: --vocab_size 100 (too small a vocabulary), a checkpoint as --data and a --val_data
    folder with no text started train.py, which refused them: train.py's error and sweep.py's "train.py
    failed for ..." line, after --help promised a refusal before the first run (only config's option
    checks were made, not runplan's settings checks nor the data paths'). Each is now one line, exit
    status 2 for the setting, 1 for a file, before any run."""
    from errors import run_script
    monkeypatch.setattr(sweep, "run_one", lambda *args: pytest.fail("ran first"))
    last = tmp_path / "run" / "last.pt"
    last.parent.mkdir()
    last.write_bytes(b"PK\x03\x04 a checkpoint")
    (tmp_path / "no_text").mkdir()
    data = ["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt")]
    for extra, status, message in [
            (["--vocab_size", "100"], 2,
             "candidate tiny-2026-11: --vocab_size 100 is too small: a byte-level BPE needs at least 264"),
            (["--data", str(last)], 1, f"--data: '{last}' is not .txt"),
            (["--val_data", str(tmp_path / "no_text")], 1, f"--val_data: folder '{tmp_path / 'no_text'}' "
                                                            "holds no .txt")]:
        argv = ["--no_compile", "--no_variations", "--no_followups", "--only", "tiny-2026-11", *data, *extra,
                "--out_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache")]
        with pytest.raises(SystemExit) as e:
            run_script(lambda argv=argv: sweep.main(argv), "sweep.py")
        err = capsys.readouterr().err.strip().splitlines()
        assert (e.value.code, len(err)) == (status, 1), err
        assert err[0].startswith(f"sweep.py: error: {message}"), err
    assert not (tmp_path / "runs").exists()


def test_a_bad_setting_is_named_before_a_folder_of_runs_with_other_options(corpus, tmp_path, capsys):
    """Bug caught: --vocab_size 100 with an --out_dir holding finished runs of other options said the
    folder "holds a run made with other train.py options ...; pick another --out_dir for these, or
    delete it", pointing at deleting good runs when the mistake was the vocabulary size."""
    from errors import run_script
    argv = ["--no_compile", "--no_variations", "--no_followups", "--only", "tiny-2026-11", "--screen_minutes",
            "0.01", "--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
            "--out_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache"), *TOY]
    done = tmp_path / "runs" / "tiny-2026-11-0.01m-s1" / "sweep-result.json"  # a finished run, other options
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"name": "tiny-2026-11", "bits_per_byte": 2.0,
                                "train_argv": ["--preset", "tiny", "--vocab_size", "300"]}))
    with pytest.raises(SystemExit) as e:
        run_script(lambda: sweep.main([*argv, "--vocab_size", "100"]), "sweep.py")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert err.startswith("sweep.py: error: candidate tiny-2026-11: --vocab_size 100 is too small"), err
    assert done.exists()


def test_the_printed_command_lines_are_the_ones_run(tmp_path, monkeypatch, capsys):
    """Bug caught: the train.py command printed before each run, the other options named when a folder
    holds another run, and the pick's options in sweep.md joined their words with spaces, so that an
    empty value (--plot '') read as none and a path with a space as two words: pasted into a shell,
    train.py failed with --plot's missing value (compare.py already printed them as a shell reads them)."""
    import shlex
    opts = fake_train_py(tmp_path, monkeypatch, ["--tokenizer_train_mb", "1"])
    opts.data = str(tmp_path / "my texts" / "train.txt")
    launched, trained = [], sweep.subprocess.run

    def recorded(argv, **kwargs):
        launched.append(argv[2:])
        return trained(argv, **kwargs)
    monkeypatch.setattr(sweep.subprocess, "run", recorded)
    sweep.run_one("s", ["--lr", "1e-3"], 0.01, 1, opts)
    printed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("=== s-"))
    assert "--plot ''" in printed and shlex.split(printed.split(": train.py ", 1)[1]) == launched[0]
    with pytest.raises(SystemExit) as e:  # the same folder, other options: they are named as run
        sweep.run_one("s", ["--lr", "2e-3"], 0.01, 1, opts)
    said = str(e.value.code).split(" holds a run made with other train.py options (", 1)[1]
    assert shlex.split(said.split("); pick another", 1)[0]) == sweep.train_setting(["--lr", "1e-3"], 0.01, 1,
                                                                                   opts)


@pytest.mark.parametrize("log, said", [
    ('{"step": 2, "tokens": 512}\n', "metrics.jsonl: line 1 has no 'kind' field, which train.py writes"),
    ("[1]\n{}\n", "metrics.jsonl: line 1 is not a JSON record"),
    (None, "metrics.jsonl does not exist"),
])
def test_a_runs_unreadable_log_advises_sweeps_own_fix(tmp_path, monkeypatch, log, said):
    """Bug caught: a log sweep.py could not read (a record without a field, a line that is no record, no
    log at all) gave plot_runs.py's advice: "pass run folders that this project's train.py wrote, or
    delete that line" (or "is it a run folder?"), where sweep.py picks no folders, and deletes the run
    folder to train it again at the next call: that is its fix."""
    opts = fake_train_py(tmp_path, monkeypatch)

    def wrote(argv, **kwargs):  # a train.py that exits 0 leaving that log
        run_dir = tmp_path / "runs" / argv[argv.index("--run") + 1]
        run_dir.mkdir(parents=True)
        if log is not None:
            (run_dir / "metrics.jsonl").write_text(log)
        return sweep.subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(sweep.subprocess, "run", wrote)
    with pytest.raises(SystemExit) as e:
        sweep.run_one("s", [], 0.01, 1, opts)
    message = str(e.value.code)
    assert message.startswith("sweep.py: error: ") and said in message, message
    assert message.endswith(f"; {sweep.KEPT} (this one starts again)"), message


def test_a_result_or_log_it_may_not_read_is_one_line_with_sweeps_fix(tmp_path, monkeypatch):
    """Bug caught: a run folder sweep.py may not read (another user's, chmod 700) was a PermissionError
    traceback from result_file.exists(); an unreadable sweep-result.json was called "not a result sweep.py
    wrote", with advice to delete the finished run; an unreadable metrics.jsonl was "[Errno 13] Permission
    denied: ..." with no advice at all."""
    import pathlib
    opts = fake_train_py(tmp_path, monkeypatch)
    path = sweep.result_path("s", 0.01, 1, opts)
    denied = PermissionError(13, "Permission denied")
    exists, read_text = pathlib.Path.exists, pathlib.Path.read_text

    def guarded(real, name):
        def method(self, *a, **kw):
            if self.name == name:
                raise denied
            return real(self, *a, **kw)
        return method
    for method, real in [("exists", exists), ("read_text", read_text)]:  # the folder, then the file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        with monkeypatch.context() as m:
            m.setattr(pathlib.Path, method, guarded(real, "sweep-result.json"))
            with pytest.raises(SystemExit) as e:
                sweep.run_one("s", [], 0.01, 1, opts)
        assert str(e.value.code) == (f"sweep.py: error: cannot read {path} (Permission denied); make it and "
                                     f"its folder readable, or delete {path.parent} to run s again"), method
        assert path.read_text() == "{}"
    path.unlink()
    path.parent.rmdir()

    def unreadable(*args, **kwargs):
        raise denied
    monkeypatch.setattr(sweep.runlog.storage, "numbered_jsonl", unreadable)
    with pytest.raises(SystemExit) as e:  # train.py wrote a log that sweep.py may not read
        sweep.run_one("s", [], 0.01, 1, opts)
    log = path.parent / "metrics.jsonl"
    assert str(e.value.code) == (f"sweep.py: error: cannot read {log} (Permission denied); {sweep.KEPT} "
                                 "(this one starts again)")


def test_a_result_that_is_a_folder_is_not_called_unreadable(tmp_path, monkeypatch):
    """Bug caught: a folder named sweep-result.json was "cannot read ... (Is a directory); make it and
    its folder readable", advice that cannot help: it is named as a folder, with the delete advice."""
    opts = fake_train_py(tmp_path, monkeypatch)
    path = sweep.result_path("s", 0.01, 1, opts)
    path.mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        sweep.run_one("s", [], 0.01, 1, opts)
    assert str(e.value.code) == (f"sweep.py: error: {path} is a folder, not a result sweep.py wrote; delete "
                                 f"{path.parent} to run s again")
    assert path.is_dir()


def test_a_run_cut_short_that_it_may_not_delete_is_one_line(tmp_path, monkeypatch):
    """Bug caught: the folder of a run cut short that sweep.py may not delete (another user's) was a
    PermissionError traceback from rmtree, when the sweep went on."""
    import shutil
    opts = fake_train_py(tmp_path, monkeypatch)
    run_dir = sweep.result_path("s", 0.01, 1, opts).parent
    run_dir.mkdir(parents=True)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(shutil, "rmtree", denied)
    with pytest.raises(SystemExit) as e:
        sweep.run_one("s", [], 0.01, 1, opts)
    assert str(e.value.code) == (f"sweep.py: error: cannot delete {run_dir}, a run of s cut short, to run it "
                                 "again (Permission denied); delete it yourself, then rerun sweep.py")


def test_a_run_cut_short_is_deleted_under_its_lock_on_a_full_disk_too(tmp_path, monkeypatch):
    """The folder of a run cut short goes while sweep.py holds its run.lock, a full disk too (no room
    for the lock's holder line: the room is what deleting makes). Bug caught: the lock was let go
    before the folder was deleted, so a train.py starting there in between lost its files."""
    import errno
    import shutil

    from scripts.sweep import storage
    opts = fake_train_py(tmp_path, monkeypatch)
    run_dir = sweep.result_path("s", 0.01, 1, opts).parent
    run_dir.mkdir(parents=True)
    real_rmtree, real_write, seen = shutil.rmtree, os.write, []

    def rmtree(path, *args, **kwargs):  # a train.py starting now is refused
        with pytest.raises(storage.Busy):
            storage.lock(path / "run.lock")
        seen.append(path)
        return real_rmtree(path, *args, **kwargs)

    def write(fd, data):  # no room for a lock's "pid N on HOST" line
        if data.startswith(b"pid "):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    monkeypatch.setattr(os, "write", write)
    sweep.clear_cut_short(run_dir, "s")
    assert seen == [run_dir] and not run_dir.exists()


@pytest.mark.parametrize("fails", [False, True])
def test_a_run_cut_short_lets_its_lock_go_once_deleted(tmp_path, monkeypatch, fails):
    """Holds: clear_cut_short closes the run.lock it takes (its file open, on a folder it deletes) once
    the folder is gone, or could not go (one line): not held on by the sweep until it ends."""
    import errno
    import shutil

    from scripts.sweep import storage
    opts = fake_train_py(tmp_path, monkeypatch)
    run_dir = sweep.result_path("s", 0.01, 1, opts).parent
    run_dir.mkdir(parents=True)
    real_lock, taken = storage.lock, []

    def lock(*args, **kwargs):
        taken.append(real_lock(*args, **kwargs))
        return taken[-1]

    def rmtree(path, *args, **kwargs):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(storage, "lock", lock)
    if fails:
        monkeypatch.setattr(shutil, "rmtree", rmtree)
        with pytest.raises(SystemExit, match="cannot delete"):
            sweep.clear_cut_short(run_dir, "s")
    else:
        sweep.clear_cut_short(run_dir, "s")
    [held] = taken
    assert held.closed and run_dir.exists() == fails


@pytest.mark.parametrize("screened, confirm, heading", [(1, 3, "the best screened"),
                                                        (2, 3, "the best 2 screened"),
                                                        (3, 2, "the best 2 screened")])
def test_the_confirmation_heading_counts_the_candidates_confirmed(screened, confirm, heading):
    """Bug caught: sweep.md's heading said "Confirmation: the best 3 screened" (--confirm's default)
    where fewer were screened: --only one shape with --no_variations confirms that one alone."""
    def run(name):
        return {"name": name, "minutes": 1.0, "seed": 1, "steps": 1, "tokens_per_s": 1.0, "params": 2,
                "active_params": 1, "bits_per_byte": 1.0, "load_avg_before": 0.0}
    screen = [run(f"s{i}") for i in range(screened)]
    report = {"command": "python scripts/sweep.py", "screen": screen, "confirm": screen[:confirm],
              "followup": [], "pick": "s0", "pick_overrides": [], "pick_mean_bits_per_byte": 1.0}
    opts = argparse.Namespace(confirm=confirm, screen_minutes=1.0, confirm_minutes=2.0, no_compile=True,
                              val_data="valid.txt", extra=[])
    md = sweep.summary(report, opts, "2 CPU cores")
    assert f"**Confirmation: {heading} (and any confirmed earlier) for 2 minutes;" in md


def test_an_out_folder_that_takes_no_files_is_refused_before_the_first_run(tmp_path, monkeypatch):
    """Bug caught: --out on a folder that is there but takes no new files (/proc, a read-only disk)
    passed (it was only made, not written to) and the sweep failed writing sweep.json after its last
    run, hours in; the results folder is now written to before the first run, as bench.py's is."""
    from errors import StorageError
    stop_at_the_first_run(monkeypatch)
    monkeypatch.setattr(sweep, "check_candidates", lambda *args: (torch.device("cpu"), []))  # (all: seconds)
    with pytest.raises(StorageError, match="^cannot write in the folder /proc/self: .*; pick another --out$"):
        sweep.main(["--no_compile", "--screen_minutes", "1", "--out_dir", str(tmp_path / "runs"),
                    "--out", "/proc/self"])


def test_a_cache_dir_that_takes_no_files_is_refused_before_the_first_run(corpus, tmp_path, monkeypatch):
    """Bug caught: a --cache_dir that takes no new file (a read-only disk; a folder not ours) failed
    only in the first run of a vocabulary not cached yet: stage 2's vocab2048, after the whole of stage
    1. The data of every run is now prepared before the first (train.py's own check of the cache), and
    the --out folder the sweep made for the results is removed again, empty."""
    import errno

    from errors import UserError
    stop_at_the_first_run(monkeypatch)
    monkeypatch.setattr(sweep, "prepare_data", PREPARE_DATA)
    cache = tmp_path / "cache"
    argv = ["--no_compile", "--no_followups", "--screen_minutes", "1", "--only", "tiny-2026-11",
            "--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
            "--out_dir", str(tmp_path / "runs"), "--cache_dir", str(cache),
            "--out", str(tmp_path / "new" / "img"),
            "--num_proc", "1"]
    monkeypatch.setattr(sweep, "SHAPES", {"tiny-2026-11": ["--vocab_size", "300"]})
    monkeypatch.setattr(sweep, "VARIATIONS", {"vocab310": ["--vocab_size", "310"]})
    with pytest.raises(Started):  # vocabularies 300 and 310 cached
        sweep.main(argv)
    assert len(list(cache.glob("tokenizer-*"))) == 2
    real_mkdir = os.mkdir

    def refused(path, *args, **kw):  # (root, as here, writes in a folder chmod'ed away all the same)
        if str(path).startswith(str(cache)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kw)
    monkeypatch.setattr(os, "mkdir", refused)
    monkeypatch.setattr(sweep.data.storage, "lock", lambda path, wait=False, **kw: refused(path))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    (tmp_path / "new" / "img").rmdir()
    (tmp_path / "new").rmdir()
    with pytest.raises(Started):  # a read-only cache that holds every run's data: used, not refused
        sweep.main(argv)
    monkeypatch.setattr(sweep, "VARIATIONS", {"vocab320": ["--vocab_size", "320"]})
    (tmp_path / "new" / "img").rmdir()
    (tmp_path / "new").rmdir()
    with pytest.raises(UserError, match=rf"{cache}.*Read-only file system.*; pick (another|a writable) "
                       "--cache_dir$") as e:  # (train.py's own line)
        sweep.main(argv)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "new").exists()  # (made for the results, refused before any went there)


def test_files_of_another_kind_under_its_results_names_are_refused_before_the_runs(tmp_path, monkeypatch,
                                                                                    capsys):
    """Bug caught: a user's notes in --out's sweep.md, and another benchmark's JSON at its sweep.json,
    were replaced by the sweep's at its end, hours of runs in, without a word; an earlier sweep's files
    there (the README's img/) are replaced as before."""
    from errors import run_script
    monkeypatch.setattr(sweep, "run_one", lambda *args: pytest.fail("ran first"))
    out = tmp_path / "img"
    out.mkdir()
    (out / "sweep.md").write_text("my notes\n")
    argv = ["--only", "tiny-2026-11", "--out", str(out), "--out_dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as e:
        run_script(lambda: sweep.main(argv), "sweep.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith(f"sweep.py: error: --out {out}: sweep.md there is not "
                                                    "an earlier result"), err
    assert (out / "sweep.md").read_text() == "my notes\n"
    (out / "sweep.md").write_bytes((sweep.ROOT / "img" / "sweep.md").read_bytes())
    (out / "sweep.json").write_text(json.dumps({"runs": [], "settings": {}}))  # compare.py's
    with pytest.raises(SystemExit) as e:
        run_script(lambda: sweep.main(argv), "sweep.py")
    assert "sweep.json there is not an earlier result" in capsys.readouterr().err
    (out / "sweep.json").write_bytes((sweep.ROOT / "img" / "sweep.json").read_bytes())
    with pytest.raises(BaseException, match="ran first"):  # an earlier sweep's files: on to the runs
        sweep.main(argv)


def test_a_result_on_other_text_than_the_files_hold_now_is_refused(corpus, tmp_path, monkeypatch):
    """Bug caught: results were matched by the train.py options alone, the --data and --val_data paths
    as typed: a --val_data edited in place (or a relative path typed in another folder, naming another
    file) had the earlier runs read back and ranked beside the new ones, scored on other text. Now each
    result records what identifies its text (the token shards' sha256, train.py's EvalSet.key for the
    validation windows): a file touched but not changed is still read back; one changed is refused."""
    import shutil
    monkeypatch.setattr(sweep, "prepare_data", PREPARE_DATA)
    texts = tmp_path / "texts"
    texts.mkdir()
    for name in ("train.txt", "valid.txt"):
        shutil.copy(corpus / name, texts / name)

    monkeypatch.setattr(sweep.subprocess, "run", finished_at_once)
    argv = [*one_toy_run(corpus, tmp_path), "--no_followups", "--confirm", "1", "--confirm_minutes", "0.02"]
    argv[argv.index("--data") + 1] = str(texts / "train.txt")
    argv[argv.index("--val_data") + 1] = str(texts / "valid.txt")
    report = sweep.main(argv)
    monkeypatch.setattr(sweep.subprocess, "run", lambda argv, **kw: pytest.fail("trained again"))
    os.utime(texts / "valid.txt")  # the same text, another modification time: read back
    assert sweep.main(argv)["screen"] == report["screen"]
    with open(texts / "valid.txt", "a") as f:  # edited in place: other text under the same path
        f.write("One more story, about a cat.\n\n")
    with pytest.raises(SystemExit) as e:
        sweep.main(argv)
    said = str(e.value.code)
    assert said.startswith(f"sweep.py: error: {tmp_path / 'runs' / 'tiny-2026-11-0.01m-s1'} holds a run "
                           f"scored on other text than --val_data {texts / 'valid.txt'} holds now"), said
    assert said.endswith("; pick another --out_dir for these runs, or delete it") and "\n" not in said
    val = report["screen"][0]["text"]["--val_data"]  # (train.py's EvalSet.key: the windows' shard, count)
    assert set(report["screen"][0]["text"]) == {"--data", "--val_data"} and val.split(":")[1].isdigit()
    monkeypatch.setattr(sweep.subprocess, "run", finished_at_once)  # relative paths, typed in another folder:
    argv[argv.index("--data") + 1], argv[argv.index("--val_data") + 1] = "train.txt", "valid.txt"
    argv[argv.index("--out_dir") + 1] = str(tmp_path / "runs2")
    monkeypatch.chdir(texts)
    sweep.main(argv)
    other = tmp_path / "other"
    shutil.copytree(corpus, other)  # (its valid.txt is the one before the edit)
    monkeypatch.chdir(other)
    with pytest.raises(SystemExit) as e:
        sweep.main(argv)
    assert "holds a run scored on other text than --val_data valid.txt holds now" in str(e.value.code)


def diverging_train_py(tmp_path, monkeypatch, diverges, status=1):
    """A train.py that finishes at once, or for a candidate in `diverges` stops as train.py does after
    --max_bad_steps (5) non-finite steps in a row: a train record with them, exit status `status`."""
    def run(argv, **kwargs):
        run = argv[argv.index("--run") + 1]
        run_dir = tmp_path / "runs" / run
        if not any(run.startswith(f"{name}-") for name in diverges):
            finished_run(run_dir, step=2, tokens=512, tokens_per_s=100.0, bpb=2.0 - len(run) / 1000,
                         nats=5.0, val_tokens=100)  # (a longer name scores better)
            return sweep.subprocess.CompletedProcess(argv, 0)
        run_dir.mkdir(parents=True)
        records = [{"kind": "train", "step": 10, "tokens": 2560, "tokens_per_s": 100.0, "skipped_steps": 0},
                   {"kind": "train", "step": 20, "tokens": 5120, "tokens_per_s": 100.0, "skipped_steps": 6,
                    "bad_streak": 6}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return sweep.subprocess.CompletedProcess(argv, status)
    monkeypatch.setattr(sweep.subprocess, "run", run)


def test_a_candidate_that_diverges_ranks_last_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Bug caught: a candidate whose loss went non-finite for --max_bad_steps steps in a row (train.py
    stops it, exit status 1) stopped the whole sweep, and every rerun failed at that same candidate:
    the sweep could not get past it but by leaving its stage out. Now its result records it as
    diverged: it ranks last, the tables say so, it is never confirmed, varied or picked, and a rerun
    reads it back; a train.py that fails otherwise (a crash, no such skipped steps) still stops the
    sweep."""
    monkeypatch.setattr(sweep, "VARIATIONS", {"lr3e-3": ["--lr", "3e-3"], "batch8": ["--batch_size", "8"]})
    monkeypatch.setattr(sweep, "FOLLOWUPS", {"wd0.5": ["--weight_decay", "0.5"]})
    diverging_train_py(tmp_path, monkeypatch, ["tiny-2026-11", "d192-e8+lr3e-3"])
    argv = ["--only", "tiny-2026-11,d192-e8", "--no_compile", "--confirm", "3", "--screen_minutes", "1",
            "--confirm_minutes", "2", "--out_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "img")]
    report = sweep.main(argv)
    diverged = {r["name"]: r for r in report["screen"] if r.get("status") == "diverged"}
    assert list(diverged) == ["tiny-2026-11", "d192-e8+lr3e-3"]
    assert "6 non-finite steps in a row by step 20" in diverged["tiny-2026-11"]["reason"]
    assert [r["name"] for r in sorted(report["screen"], key=sweep.ranking)][-2:] == list(diverged)
    assert report["best"] == "d192-e8+batch8" and not set(diverged) & {r["name"] for r in report["confirm"]}
    assert "d192-e8+batch8+lr3e-3" not in [r["name"] for r in report["screen"]]  # (it did not help)
    md = (tmp_path / "img" / "sweep.md").read_text()
    assert "| tiny-2026-11 | 1 | 1 | 20 (6 non-finite, skipped) | 100 | " in md and "| diverged |" in md
    monkeypatch.setattr(sweep.subprocess, "run", lambda argv, **kw: pytest.fail("trained again"))
    again = sweep.main(argv)  # read back, not run again (json: NaN == NaN)
    assert json.dumps(again["screen"], sort_keys=True) == json.dumps(report["screen"], sort_keys=True)
    assert again["pick"] == report["pick"]

    def run(name, bpb, status=None):
        return {"name": name, "overrides": [f"--{name}"], "bits_per_byte": bpb, "status": status}
    assert sweep.pick_best([run("a", 0.9), run("a", 2.0, "diverged"), run("b", 1.0), run("b", 1.1)])[
        "name"] == "b"  # (a diverged seed: never picked)
    with pytest.raises(SystemExit, match="every candidate of the pick diverged"):
        sweep.pick_best([run("a", 0.9), run("a", 2.0, "diverged")])

    for diverges, status, said in [(["tiny-2026-11", "d192-e8"], 1, "every shape screened diverged"),
                                   (["d192-e8"], 2, "train.py failed for d192-e8-1m-s1 (exit 2")]:
        shutil_rmtree(tmp_path / "runs")
        diverging_train_py(tmp_path, monkeypatch, diverges, status)
        with pytest.raises(SystemExit) as e:
            sweep.main(argv)
        assert said in str(e.value.code), e.value.code


@pytest.mark.parametrize("skipped", [[0], [2, 4, 6]], ids=["all-finite", "skipped-apart"])
def test_a_failure_that_is_not_a_divergence_still_stops_the_sweep(tmp_path, monkeypatch, skipped):
    """A train.py that fails with status 1 for another reason (a crash, out of memory) after steps that
    were all finite is not a divergence: the sweep stops there. Bug caught (skipped-apart): a run that
    skipped non-finite steps now and then (2 a window, never 5 in a row), then failed otherwise before
    another record, was recorded as diverged: its skipped_steps, the run's total, had reached
    --max_bad_steps and grown in its last window. The result was read back at every rerun (the
    candidate never run again, ranked last). Now the sweep reads the record's bad_streak, train.py's
    own streak."""
    opts = fake_train_py(tmp_path, monkeypatch)
    run_dir = sweep.result_path("s", 0.01, 1, opts).parent

    def failed(argv, **kwargs):
        run_dir.mkdir(parents=True)
        records = [{"kind": "train", "step": 10 * (i + 1), "tokens": 2560 * (i + 1), "tokens_per_s": 100.0,
                    "skipped_steps": k, "bad_streak": min(k, 2)} for i, k in enumerate(skipped)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return sweep.subprocess.CompletedProcess(argv, 1)
    monkeypatch.setattr(sweep.subprocess, "run", failed)
    with pytest.raises(SystemExit) as e:
        sweep.run_one("s", [], 0.01, 1, opts)
    assert str(e.value.code).startswith("sweep.py: error: train.py failed for s-0.01m-s1 (exit 1")
    assert not (run_dir / "sweep-result.json").exists()


def shutil_rmtree(path):
    import shutil
    shutil.rmtree(path)


def test_a_text_edited_while_the_sweep_runs_stops_it_not_recorded_as_the_old_text(corpus, tmp_path,
                                                                                   monkeypatch):
    """Bug caught: the text keys were taken once, when the sweep started: a --val_data edited while it
    ran (here during the confirmation run) gave the later runs' results the start's key, so runs on
    other text were recorded, ranked and read back as if on the old one. Now the key is taken again
    right after each run: text changed since the start stops the sweep in one line, that run's result
    not written (it runs again); the runs before it kept; a file touched, its text the same, goes on."""
    import shutil
    monkeypatch.setattr(sweep, "prepare_data", PREPARE_DATA)
    texts = tmp_path / "texts"
    texts.mkdir()
    for name in ("train.txt", "valid.txt"):
        shutil.copy(corpus / name, texts / name)
    edit = {"run": None, "how": None}

    def trained(argv, **kwargs):
        run = argv[argv.index("--run") + 1]
        if run == edit["run"]:  # the file changes while this run trains
            edit["how"](texts / "valid.txt")
        finished_run(sweep.Path(argv[argv.index("--out_dir") + 1]) / run, step=2, tokens=512,
                     tokens_per_s=100.0, bpb=2.0, nats=5.0, val_tokens=100)
        return sweep.subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(sweep.subprocess, "run", trained)
    argv = [*one_toy_run(corpus, tmp_path), "--no_followups", "--confirm", "1", "--confirm_minutes", "0.02"]
    argv[argv.index("--data") + 1] = str(texts / "train.txt")
    argv[argv.index("--val_data") + 1] = str(texts / "valid.txt")
    edit.update(run="tiny-2026-11-0.02m-s1", how=os.utime)  # touched: the same text, the sweep goes on
    report = sweep.main(argv)
    assert len({json.dumps(r["text"]) for r in report["screen"] + report["confirm"]}) == 1
    shutil.rmtree(tmp_path / "runs")

    def appended(path):
        with open(path, "a") as f:
            f.write("One more story, about a cat.\n\n")
    edit.update(how=appended)
    with pytest.raises(SystemExit) as e:
        sweep.main(argv)
    said, runs = str(e.value.code), tmp_path / "runs"
    assert said.startswith(f"sweep.py: error: --val_data {texts / 'valid.txt'} changed while the sweep ran: "
                           "tiny-2026-11-0.02m-s1 "), said
    assert "\n" not in said
    assert (runs / "tiny-2026-11-0.01m-s1" / "sweep-result.json").exists()  # (before the edit: kept)
    assert not (runs / "tiny-2026-11-0.02m-s1" / "sweep-result.json").exists()  # (not as on the old text)


def test_files_not_written_to_are_not_prepared_again_after_each_run(corpus, tmp_path, monkeypatch, capsys):
    """Bug caught (a review): the text's key, taken again after each run, prepared the data again each
    time (a few seconds of hits), and where a file had been touched or edited it trained the tokenizer
    and tokenized all of --data again in silence (minutes on TinyStories) before the sweep went on or
    stopped. Files whose signatures (paths, sizes, times) are the start's are not prepared again; a
    file written to is, after a line that says why."""
    monkeypatch.setattr(sweep, "prepare_data", PREPARE_DATA)
    calls, prepare = [], sweep.data.prepare
    monkeypatch.setattr(sweep.data, "prepare", lambda *a, **k: calls.append(1) or prepare(*a, **k))

    monkeypatch.setattr(sweep.subprocess, "run", finished_at_once)
    argv = [*one_toy_run(corpus, tmp_path), "--no_followups", "--confirm", "1", "--confirm_minutes", "0.02"]
    sweep.main(argv)
    assert len(calls) == 1  # (before the first run alone: not after each of its two runs)
    assert "preparing its text again" not in capsys.readouterr().out


def test_a_diverged_candidate_is_named_in_the_plot_not_a_gap(tmp_path):
    """Bug caught: a screened candidate that diverged (no score, NaN) was an empty row in sweep.png, as
    a NaN evaluation is: nothing said it diverged. Its row now reads "diverged" at the left of the axes,
    over a grey hatched bar across them (a NaN evaluation reads "NaN score"); a follow-up seed that
    diverged is named in its row too."""
    nan = float("nan")
    screen = [{"name": "a", "bits_per_byte": 2.0, "minutes": 1},
              {"name": "b", "bits_per_byte": nan, "minutes": 1, "status": "diverged"},
              {"name": "c", "bits_per_byte": nan, "minutes": 1}]
    confirm = [{"name": "a", "bits_per_byte": 1.9, "seed": 1, "minutes": 2},
               {"name": "a+wd", "bits_per_byte": nan, "seed": 2, "minutes": 2, "status": "diverged"}]
    fig = sweep.plot(screen, confirm, tmp_path / "sweep.png")
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    said = {rows[round(t.get_position()[1])]: t.get_text() for t in ax.texts}
    assert said == {"b": "diverged", "c": "NaN score", "a+wd": "diverged (2 min, seed 2)"}
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1
    assert hatched[0].get_y() + hatched[0].get_height() / 2 == pytest.approx(rows.index("b"))
    assert (hatched[0].get_x(), hatched[0].get_width()) == (0, 1)  # (in axes coordinates: all across)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_a_diverged_run_ranks_after_one_with_a_nan_score():
    """Holds: ranking puts a run that diverged after one whose evaluation was NaN (neither has a finite
    score): best_of goes on from the NaN-scored one, not stopping the sweep as if every run diverged,
    and the tables list the diverged run last, whichever came first."""
    nan = float("nan")
    gone = {"name": "a", "bits_per_byte": nan, "status": "diverged"}
    scored = {"name": "b", "bits_per_byte": nan}
    assert sweep.best_of([gone, scored], "shape screened") is scored
    assert [r["name"] for r in sorted([gone, scored], key=sweep.ranking)] == ["b", "a"]


def test_the_candidates_checked_keep_each_variations_own_setting(monkeypatch):
    """Holds: every_candidate orders a group's variations as stage 3 does (undone_last), so the run it
    checks is the one the sweep makes: with cosine-to-0 listed before lr3e-3, their combination is
    checked with --min_lr 0, not lr3e-3's 3e-4."""
    monkeypatch.setattr(sweep, "VARIATIONS", {k: sweep.VARIATIONS[k] for k in ("cosine-to-0", "lr3e-3")})
    opts = argparse.Namespace(no_variations=False, no_followups=True, no_compile=True)
    over = sweep.every_candidate({"s": []}, opts)["s+cosine-to-0+lr3e-3"]
    assert dict(zip(over[::2], over[1::2], strict=True)) == {"--lr": "3e-3", "--min_lr": "0"}


def test_ctrl_c_while_the_data_is_prepared_is_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    """Holds: a Ctrl-C while prepare_data makes the runs' tokenizers and shards is one line, the exit
    status an interrupt's (130), and the results folder the sweep made (still empty) goes."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep, "text_key", interrupted)
    results = tmp_path / "made" / "img"
    results.mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        PREPARE_DATA([(None, argparse.Namespace(vocab_size=512, max_seq_len=64))], results, tmp_path / "made")
    assert e.value.code == 130 and not (tmp_path / "made").exists()
    assert capsys.readouterr().err == "\nsweep.py: interrupted while preparing the data; no run started\n"


def test_a_text_prepared_again_is_said_first(monkeypatch):
    """Holds: text_key says its `note` (why: a --data or --val_data written to while a run ran) before
    it prepares a text again, which takes minutes on TinyStories, not in silence."""
    from types import SimpleNamespace

    def gone(*args, **kwargs):
        raise OSError("gone")
    said = []
    shard = SimpleNamespace(meta={"sha256": "ab" * 32}, tokens=[0] * 10)
    monkeypatch.setattr(sweep.sources, "resolve_sources", gone)  # (no signature: prepared again)
    monkeypatch.setattr(sweep.data, "prepare",
                        lambda t, m, log: said.append("prepared") or (None, shard, shard))
    monkeypatch.setattr(sweep.data, "n_val_windows", lambda tokens, length, windows: 3)
    key = sweep.text_key(SimpleNamespace(eval_windows=0), SimpleNamespace(vocab_size=512, max_seq_len=64),
                         log=said.append, note="why")
    assert said == ["why", "prepared"] and key == {"--data": "ab" * 8, "--val_data": "ab" * 8 + ":3"}


def test_a_run_that_failed_after_its_evaluation_is_no_divergence():
    """Holds: divergence reads a failed train.py (exit 1) as diverged only where it stopped before any
    evaluation: one with a val record (it evaluated, then failed: a save) is a failure that stops the
    sweep, whatever its last train record's bad_streak."""
    train = [{"step": 20, "tokens": 640, "bad_streak": 6, "skipped_steps": 6}]
    assert sweep.divergence(train, [], 6).startswith("train.py stopped it: 6 non-finite steps in a row")
    assert sweep.divergence(train, [{"step": 20}], 6) is None


def test_the_defaults_are_the_budgets_and_count_the_readme_names():
    """Holds: sweep.py's defaults are the ones its docstring and help give (the README's sweep): 2.5
    minutes a screen, 10 a confirmation (the demo's budget), the three best screened confirmed."""
    opts = sweep.parser().parse_known_args([])[0]
    assert (opts.screen_minutes, opts.confirm_minutes, opts.confirm) == (2.5, 10.0, 3)
