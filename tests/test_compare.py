"""scripts/compare.py: three toy runs end to end, every promised file, the series of each plot."""

import json

import pytest
from conftest import ROOT, write_stories

from scripts import compare

WORDS = ("once upon a time there was a little girl named lily she liked to play in the park with "
         "her big red ball one day a dog came and they were friends").split()
EXTRA = ["--log_every", "1"]  # passed through to train.py
NAMES = ["moe", "dense", "moe-ablation"]


@pytest.fixture(autouse=True)
def cache_of_the_test(tmp_path, monkeypatch):
    """compare.py prepares the data before its runs: without --cache_dir, in the test's folder, not
    the project's cache/."""
    monkeypatch.setattr(compare, "CACHE", tmp_path / "cache")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Synthetic stories in the TinyStories layout: a training and a validation file."""
    folder = tmp_path_factory.mktemp("corpus")
    write_stories(folder / "train.txt", words=WORDS)
    write_stories(folder / "valid.txt", n=40, seed=1, words=WORDS)
    return folder


@pytest.fixture(scope="module")
def report(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    stale = out / "runs" / "compare-moe"  # a previous comparison's run must not block this one
    stale.mkdir(parents=True)
    (stale / "last.pt").write_bytes(b"old")
    argv = ["--preset", "debug", "--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
            "--minutes", "1", "--max_steps", "6", "--batch_size", "4", "--eval_every", "2",
            "--eval_windows", "4", "--out", str(out / "img"),
            "--out_dir", str(out / "runs"), "--cache_dir", str(out / "cache"), *EXTRA]
    return compare.main(argv), out


def test_writes_every_promised_file(report):
    import matplotlib.image
    result, out = report
    for name in ["compare_bpb.png", "compare_experts.png", "compare_entropy.png"]:
        path = out / "img" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 200 and width > 200
    assert not list((out / "img").glob(".tmp-*"))  # written atomically, nothing left behind
    table = (out / "img" / "compare.md").read_text()
    assert all(f"| {name}: " in table for name in NAMES) and "sequential" in table
    saved = json.loads((out / "img" / "compare.json").read_text())
    assert [r["run"] for r in saved["runs"]] == NAMES
    for row in saved["runs"]:
        for field in ["steps", "tokens", "val_nats_per_token", "val_bits_per_byte", "tokens_per_s", "mfu",
                      "active_params", "load_avg_before", "minutes"]:  # (not routing: dense has none)
            assert row[field] is not None, (row["run"], field)
        assert row["steps"] == 6 and row["tokens"] == 6 * 4 * 64
        assert row["val_bits_per_byte"] > 0 and row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
    assert saved["machine"]["sequential"] and saved["machine"]["cpu_count"] >= 1
    assert set(saved["machine"]["load_avg_before"]) == set(NAMES)
    assert saved["settings"]["passed_through"] == EXTRA and saved["settings"]["eval_windows"] == 4
    assert (out / "runs" / "compare-moe" / "last.pt").read_bytes() != b"old"


def test_variants_differ_only_where_they_should(report):
    result, out = report
    models = {n: json.loads((out / "runs" / f"compare-{n}" / "model.json").read_text()) for n in NAMES}
    assert models["moe"]["router_noise"] and models["moe"]["router_aux_loss_coef"] == 0.001
    assert models["moe-ablation"] == {**models["moe"], "router_noise": False, "router_aux_loss_coef": 0.0}
    assert models["dense"]["moe_every"] > models["dense"]["n_layers"] and models["dense"]["mlp_dim"] == 64
    rows = {r["run"]: r for r in result["runs"]}
    moe, dense = rows["moe"], rows["dense"]  # the same active parameters, routers aside
    assert dense["router_params"] == 0
    assert dense["active_params"] == moe["active_params"] - moe["router_params"]
    assert abs(dense["flops_per_token"] / moe["flops_per_token"] - 1) < 0.01
    assert rows["moe"]["max_expert_share"] is not None and rows["dense"]["max_expert_share"] is None


def test_plots_have_the_expected_series(report):
    figs = report[0]["figures"]
    for ax in figs["bpb"].axes:  # minutes and tokens panels, one line per run, one point per evaluation
        assert [line.get_label().split(":")[0] for line in ax.lines] == NAMES
        assert all(len(line.get_xdata()) == 3 for line in ax.lines)  # steps 2, 4 and the final 6
    assert [ax.get_xlabel() for ax in figs["bpb"].axes] == ["wall-clock minutes", "tokens seen"]
    tokens = figs["bpb"].axes[1].lines[0].get_xdata()
    assert list(tokens) == [2 * 256, 4 * 256, 6 * 256]

    maps = [ax for ax in figs["experts"].axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in maps] == [f"{run}: layer {i}" for run in ["moe", "moe-ablation"]
                                               for i in range(4)]
    for ax in maps:
        assert ax.collections[0].get_array().shape == (4, 6)  # experts x logged steps
        assert ax.collections[0].get_array().sum() == pytest.approx(6, abs=1e-3)  # shares sum to 1

    labels = [line.get_label() for line in figs["entropy"].axes[0].lines]
    assert labels == [f"{run}: layer {i}" for run in ["moe", "moe-ablation"] for i in range(4)] + [
        "uniform router: ln 4"]


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        compare.main(["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path)])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "nope.txt does not exist" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_options_it_owns_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        compare.main(["--run", "x", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--run cannot be passed through to train.py: compare.py names each run's " \
                                 "folder" in capsys.readouterr().err


def test_an_unknown_pass_through_option_is_one_line_before_anything_else(capsys):
    """It used to say where the results would go first (as if the typo were a real setting)."""
    with pytest.raises(SystemExit) as e:
        compare.main(["--minuts", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1] == ("compare.py: error: unknown option --minuts (did you mean "
                                             "--minutes?); see --help for the list")  # compare.py's own
    assert not any("results" in line for line in err)


def test_zero_steps_and_batches_are_train_pys_to_refuse(tmp_path, capsys):
    """--max_steps 0 became 10^9 (a run with --minutes 0 never ended) and --batch_size 0 the
    preset's batch: both go to train.py's checks now."""
    for argv, message in [(["--minutes", "0", "--max_steps", "0"], "--max_steps: must be at least 1, got 0"),
                          (["--batch_size", "0"], "--batch_size: must be at least 1, got 0")]:
        with pytest.raises(SystemExit) as e:
            compare.main([*argv, "--out", str(tmp_path)])
        assert e.value.code == 2 and f"compare.py: error: {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, fix", [
    (["--preset", "debug", "--eval_every", "0"], "e.g. --eval_every 500 (compare.py's default)"),
    (["--preset", "debug", "--eval_windows", "-1"], "e.g. --eval_windows 0 (compare.py's default)"),
    (["--max_steps", "0"], "leave it out (compare.py's default: no limit, the --minutes budget stops"),
    (["--minutes", "0", "--max_steps", "0"], "e.g. --max_steps 5000 (train.py's default)"),
    (["--preset", "debug", "--batch_size", "0"], "e.g. --batch_size 4 (the debug preset's)"),  # its default
    (["--preset", "debug", "--warmup_steps", "-1"], "e.g. --warmup_steps 2 (the debug preset's)")])
def test_a_range_error_in_its_own_option_names_its_own_default(argv, fix, tmp_path, capsys):
    """Bug caught: a bad value of compare.py's own --eval_every or --eval_windows named train.py's preset
    value as the fix (--preset debug: "e.g. --eval_every 4 (the debug preset's)"; compare.py passes 500),
    and --max_steps 0 named train.py's "5000 (the default)", where compare.py's default is no limit. A
    pass-through option's error still names the preset's value, which is what the runs get."""
    with pytest.raises(SystemExit) as e:
        compare.parse([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("compare.py: error: --"), err
    assert fix in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--data", ""], "--data is empty (an unset variable?); name a file, or leave --data out for its "
                     "default (../shared/data/tinystories/train-lower.txt)"),
    (["--val_data", ""], "--val_data is empty (an unset variable?)"),
    (["--out_dir", ""], "--out_dir is empty (an unset variable?); name a folder, or leave --out_dir out for "
                        "its default (checkpoints/compare)"),  # (train.py's "the default is checkpoints")
    (["--out", "-"], "--out -: the results are files"),
    (["--out_dir", "{tmp}/runs", "--out", "{tmp}/runs/compare-moe"],
     "--out {tmp}/runs/compare-moe: results in the run folder {tmp}/runs/compare-moe, which the next "
     "comparison deletes"),
    (["--out_dir", "{tmp}/runs", "--out", "{tmp}/runs/./compare-dense/img"], "results in the run folder "
     "{tmp}/runs/compare-dense,")])
def test_paths_that_would_not_do_what_they_say_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    """Bug caught: an empty --data (an unset variable) passed compare.py's check (Path('') is the current
    folder) and the runs went to the Hugging Face Hub, after the last comparison's run folders were deleted;
    an empty --val_data held out part of --data; an empty --out_dir named train.py's default as the fix;
    --out - wrote a folder named -; an --out inside a run folder put the results where the next comparison
    deletes them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained"))
    with pytest.raises(SystemExit) as e:
        compare.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("compare.py: error: --"), err
    assert message.format(tmp=tmp_path) in err[-1]
    assert not list(tmp_path.iterdir())


def test_defaults_point_at_the_shared_files():
    a, extra = compare.parse([])
    assert a.data == str(ROOT.parent / "shared" / "data" / "tinystories" / "train-lower.txt")
    assert a.val_data.endswith("valid-lower.txt") and a.minutes == 10 and extra == []


def test_a_quoted_tilde_in_its_paths_is_the_home_folder(tmp_path, monkeypatch):
    """Bug caught: `compare.py --data '~/x.txt'` said the training data does not exist (train.py reads a
    ~ the shell left as the home folder), and --out_dir '~/c' would have made a folder named ~."""
    monkeypatch.setenv("HOME", str(tmp_path))
    opts, _ = compare.parse(["--data", "~/x.txt", "--val_data", "~/v.txt", "--out_dir", "~/c",
                             "--cache_dir", "~/cache", "--out", "~/res"])
    assert (opts.data, opts.val_data, opts.out_dir, opts.cache_dir, opts.results) == (
        f"{tmp_path}/x.txt", f"{tmp_path}/v.txt", f"{tmp_path}/c", f"{tmp_path}/cache", tmp_path / "res")


def test_a_run_off_the_defaults_writes_its_results_beside_its_runs(tmp_path, capsys):
    """The committed img/ figures are a 10-minute run's: a shorter one (or one with overrides passed
    through) writes to its --out_dir instead, unless --out says otherwise."""
    assert compare.parse([])[0].results == compare.ROOT / "img"
    for argv in (["--minutes", "0.2"], ["--dim", "96"]):
        opts, _ = compare.parse(argv)
        assert opts.results == compare.Path(opts.out_dir)
        assert f"(this one sets {argv[0]}); they go to {opts.out_dir}" in capsys.readouterr().err
    assert compare.parse(["--minutes", "0.2", "--out", str(tmp_path / "x")])[0].results == tmp_path / "x"


def test_an_out_folder_that_cannot_be_made_is_one_line_before_the_runs(tmp_path, corpus, monkeypatch, capsys):
    """It was a traceback after the three training runs, their results lost."""
    from errors import run_script
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained first"))
    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "a_file" / "img"
    with pytest.raises(SystemExit) as e:
        run_script(lambda: compare.main(["--data", str(corpus / "train.txt"), "--val_data",
                                         str(corpus / "valid.txt"), "--out", str(bad)]), "compare.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and err[-1].startswith(f"compare.py: error: cannot create the folder {bad}")


def test_a_bad_minutes_names_minutes(tmp_path, capsys):
    """--minutes -1 or nan was refused as train.py's --max_minutes, which compare.py does not take,
    and --minutes -0.5 was called --minutes 0 (nan and inf: read as train.py reads a number)."""
    for value, said in [("-1", "--minutes: must be a finite number of minutes, 0 or more, got -1"),
                        ("nan", "argument --minutes: expected a finite number, got 'nan'"),
                        ("inf", "argument --minutes: expected a finite number, got 'inf'"),
                        ("-0.5", "--minutes: must be a finite number of minutes, 0 or more, got -0.5")]:
        with pytest.raises(SystemExit) as e:
            compare.main(["--minutes", value, "--max_steps", "5", "--out", str(tmp_path)])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert e.value.code == 2 and err == f"compare.py: error: {said}"
    assert not list(tmp_path.iterdir())


def test_a_busy_run_folder_is_refused_before_any_folder_is_deleted(tmp_path, corpus, monkeypatch):
    """With compare-dense in use (another comparison on its second run), compare-moe, that
    comparison's finished first run, was deleted before the busy one was found: the other
    comparison then failed at its end, reading the tokenizer of a folder that was gone."""
    import storage
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained"))
    runs = tmp_path / "runs"
    for name in NAMES:
        (runs / f"compare-{name}").mkdir(parents=True)
        (runs / f"compare-{name}" / "tokenizer.json").write_text("{}")
    held = storage.lock(runs / "compare-dense" / "run.lock")
    try:
        with pytest.raises(SystemExit) as e:
            compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                          "--preset", "debug", "--out_dir", str(runs), "--out", str(tmp_path / "img")])
    finally:
        held.close()
    assert "compare-dense is in use by another train.py" in str(e.value.code)
    assert all((runs / f"compare-{name}" / "tokenizer.json").exists() for name in NAMES)


def test_ctrl_c_during_a_run_is_one_line_and_status_130(tmp_path, corpus, monkeypatch, capsys):
    """train.py stops cleanly on Ctrl-C (status 0, run "finished": "signal"): compare.py then exited 1
    (sys.exit with its message), where train.py and sweep.py exit 130."""
    def stopped(argv):
        return {"step": 3, "best_val": None, "run_dir": str(tmp_path / "runs" / "compare-moe"),
                "finished": "signal"}

    def interrupted(argv):  # a Ctrl-C that reaches compare.py itself
        raise KeyboardInterrupt
    for fake in (stopped, interrupted):
        monkeypatch.setattr(compare.train, "main", fake)
        try:
            with pytest.raises(SystemExit) as e:
                compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                              "--preset", "debug", "--out_dir", str(tmp_path / "runs"),
                              "--out", str(tmp_path / "img")])
        except KeyboardInterrupt:  # (not pytest's to take as its own Ctrl-C)
            pytest.fail("Ctrl-C escaped compare.py: a traceback")
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 130, fake
        assert err[-1].startswith("compare.py: interrupted during the moe run; "), fake
        assert sum(line.startswith("compare.py: interrupted") for line in err) == 1, fake  # (it was twice)
        assert not (tmp_path / "img" / "compare.json").exists()


def test_ctrl_c_before_a_runs_first_step_ends_with_compares_line(tmp_path, corpus, monkeypatch, capsys):
    """A signal before train.py's loop (or a second one) ends train.main with status 130 and its own
    line, which told to --resume the run: compare.py's line was never printed (it waited for a
    KeyboardInterrupt), and a resumed compare-moe is no comparison (compare.py starts them again);
    its line now comes last."""
    runs = tmp_path / "runs"

    def setting_up(model_args, train_args, preset, given):  # train.run, interrupted at set-up
        (runs / "compare-moe").mkdir(parents=True)
        (runs / "compare-moe" / "last.pt").write_bytes(b"")  # (for train.py's --resume hint)
        e = KeyboardInterrupt()
        e.run_dir = runs / "compare-moe"
        raise e
    monkeypatch.setattr(compare.train, "run", setting_up)  # train.main itself says what it says
    with pytest.raises(SystemExit) as e:
        compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                      "--preset", "debug", "--out_dir", str(runs), "--out", str(tmp_path / "img")])
    err = capsys.readouterr().err
    assert e.value.code == 130
    assert err.strip().splitlines()[-1].startswith("compare.py: interrupted during the moe run; ")


def test_ctrl_c_at_a_runs_last_step_stops_compare_after_that_run(tmp_path, corpus, monkeypatch, capsys):
    """A signal during a run's last step lets train.py finish that run (final evaluation, checkpoints:
    "finished" is "max_steps", not "signal"), and compare.py went on to the next full run. train.main
    now says a signal came ("signalled"): compare.py stops there, one line, exit 130."""
    import signal

    import train
    real_agree = train.agree

    def signal_in_the_last_step(job, state, stop):  # as Stop's handler takes a Ctrl-C mid-step
        if state.step == job.train_args.max_steps:
            stop.handle(signal.SIGINT, None)
        return real_agree(job, state, stop)
    monkeypatch.setattr(train, "agree", signal_in_the_last_step)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        compare.main(["--preset", "debug", "--data", str(corpus / "train.txt"),
                      "--val_data", str(corpus / "valid.txt"), "--minutes", "1", "--max_steps", "2",
                      "--batch_size", "2", "--eval_windows", "2", "--out", str(tmp_path / "img"),
                      "--out_dir", str(runs), "--cache_dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 130
    assert err[-1].startswith("compare.py: interrupted after the moe run (which finished); ")
    assert sum(line.startswith("compare.py: interrupted") for line in err) == 1
    assert (runs / "compare-moe" / "last.pt").exists() and not (runs / "compare-dense").exists()
    assert not (tmp_path / "img" / "compare.json").exists()


def test_ctrl_c_at_the_last_runs_last_step_still_writes_the_comparison(tmp_path, corpus, monkeypatch, capsys):
    """A signal during the last run's last step cuts no run short, yet compare.py dropped the whole
    comparison and said a rerun starts the runs again. Now it writes it, then its line and 130."""
    import signal

    import train
    real_agree = train.agree

    def signal_in_the_last_step(job, state, stop):  # as Stop's handler takes a Ctrl-C mid-step
        if job.run_dir.name == "compare-moe-ablation" and state.step == job.train_args.max_steps:
            stop.handle(signal.SIGTERM, None)
        return real_agree(job, state, stop)
    monkeypatch.setattr(train, "agree", signal_in_the_last_step)
    with pytest.raises(SystemExit) as e:
        compare.main(["--preset", "debug", "--data", str(corpus / "train.txt"),
                      "--val_data", str(corpus / "valid.txt"), "--minutes", "1", "--max_steps", "2",
                      "--batch_size", "2", "--eval_windows", "2", "--out", str(tmp_path / "img"),
                      "--out_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert e.value.code == 130
    assert err[-1] == f"compare.py: interrupted as the last run ended; every run finished, comparison " \
                      f"written to {tmp_path / 'img'}"
    assert sum(line.startswith("compare.py: interrupted") for line in err) == 1
    written = json.loads((tmp_path / "img" / "compare.json").read_text())
    rows = [(r["run"], r["steps"], r["finished"]) for r in written["runs"]]
    assert rows == [(name, 2, "max_steps") for name in NAMES]
    assert "| moe-ablation: " in captured.out and (tmp_path / "img" / "compare_bpb.png").exists()


def test_different_tokenizers_are_one_line_naming_the_run_folders(tmp_path, corpus, monkeypatch, capsys):
    """It was a RuntimeError, a traceback after the three runs, and it did not say where they were."""
    from errors import run_script
    runs = tmp_path / "runs"

    def trained(argv):
        return {"step": 1, "run_dir": str(runs / argv[argv.index("--run") + 1]), "finished": "max_steps"}

    def load_run(name, run_dir):
        return {"name": name, "label": name, "dir": compare.Path(run_dir), "train": [], "val": [],
                "tokens_per_step": 1}
    monkeypatch.setattr(compare.train, "main", trained)
    monkeypatch.setattr(compare, "load_run", load_run)
    monkeypatch.setattr(compare, "sha256", str)  # (each folder's tokenizer.json: another hash)
    argv = ["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"), "--preset", "debug",
            "--out_dir", str(runs), "--out", str(tmp_path / "img")]
    with pytest.raises(SystemExit) as e:
        run_script(lambda: compare.main(argv), "compare.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1
    assert err[-1].startswith("compare.py: error: the three runs used different tokenizers")
    assert all(f"{runs / f'compare-{name}'}" in err[-1] for name in NAMES) and "--cache_dir" in err[-1]
    assert not (tmp_path / "img" / "compare.json").exists()


def test_a_row_weights_windows_by_their_tokens_and_reads_the_last_records():
    """Catches summarize's tokens/s or MFU inverted or taken per window, its validation read from the
    first evaluation, and the max expert share read as a min."""
    run = {"name": "moe", "tokens_per_step": 10, "val": [
        {"nats_per_token": 5.0, "bits_per_byte": 3.0, "minutes": 1.0},
        {"nats_per_token": 4.0, "bits_per_byte": 2.5, "minutes": 2.0}], "train": [
        {"step": 2, "tokens_per_s": 10.0, "mfu": 0.1, "expert_share": [[0.5, 0.5]], "router_entropy": [0.6]},
        {"step": 6, "tokens_per_s": 40.0, "mfu": 0.4, "expert_share": [[0.75, 0.25], [0.6, 0.4]],
         "router_entropy": [0.5, 0.3]}]}
    row = compare.summarize(run, 6)
    # 20 tokens in 2 s, then 40 in 1 s: 60 tokens in 3 s; MFU scales with the rate, from the last window's
    assert row["tokens_per_s"] == pytest.approx(20.0) and row["mfu"] == pytest.approx(0.2)
    assert (row["val_nats_per_token"], row["val_bits_per_byte"], row["minutes"]) == (4.0, 2.5, 2.0)
    assert row["max_expert_share"] == 0.75 and row["router_entropy"] == pytest.approx(0.4)
    assert row["tokens"] == 60


def test_a_run_whose_steps_were_skipped_as_non_finite_says_so_in_its_row():
    """Bug caught: a run whose loss went NaN had its non-finite steps skipped by train.py and, its
    budget spent before --max_bad_steps in a row, finished: the table gave it its steps and tokens
    as trained, and its score (of the weights from before the NaNs) beside the others', with nothing
    to say that part of its steps trained nothing."""
    run = {"name": "moe", "tokens_per_step": 10, "val": [{"nats_per_token": 5.0, "bits_per_byte": 3.0}],
           "train": [{"step": 6, "tokens_per_s": 10.0, "mfu": None, "skipped_steps": 3}]}
    row = compare.summarize(run, 6)
    assert row["skipped_steps"] == 3
    report = {"runs": [{**row, "label": "moe: x", "active_params": 1, "load_avg_before": 0.0}],
              "machine": {"cpu_count": 2, "torch_threads": 2, "torch": "2"},
              "settings": {"minutes": 1, "max_steps": None, "batch_size": 1, "seq_len": 8, "seed": 1,
                           "data": "a", "val_data": "b", "tokenizer_sha256": "0" * 64, "n_experts": 4}}
    assert "| moe: x | 6 (3 non-finite, skipped) | 60 |" in compare.markdown(report)
    run["train"][0]["skipped_steps"] = 0
    report["runs"][0].update(compare.summarize(run, 6))
    assert "| moe: x | 6 | 60 |" in compare.markdown(report)


def test_one_run_of_another_tokenizer_is_refused_too(tmp_path, corpus, monkeypatch):
    """Catches the tokenizer check passing when two of the three runs share a tokenizer and one does not."""
    runs = tmp_path / "runs"
    monkeypatch.setattr(compare.train, "main", lambda argv: {
        "step": 1, "run_dir": str(runs / argv[argv.index("--run") + 1]), "finished": "max_steps"})
    monkeypatch.setattr(compare, "load_run", lambda name, run_dir: {
        "name": name, "label": name, "dir": compare.Path(run_dir), "train": [], "val": [],
        "tokens_per_step": 1})
    monkeypatch.setattr(compare, "sha256", lambda path: "b" if "compare-dense" in str(path) else "a")
    argv = ["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"), "--preset", "debug",
            "--out_dir", str(runs), "--out", str(tmp_path / "img")]
    with pytest.raises(compare.DataError, match="the three runs used different tokenizers"):
        compare.main(argv)
    assert not (tmp_path / "img" / "compare.json").exists()


def test_every_option_it_owns_is_refused_and_minutes_0_needs_max_steps(tmp_path, capsys):
    """Catches an owned option (--max_minutes: the budget compare.py sets) passed through to override
    it, and --minutes 0 without --max_steps (runs that never end) let through."""
    for flag in ("--run", "--resume", "--init_from", "--eval_only", "--plot", "--max_minutes", "--tokenizer"):
        with pytest.raises(SystemExit) as e:
            compare.parse([flag, "x", "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"{flag} cannot be passed through to train.py: " in err, flag
        assert err.count("\n") == 1, err
    with pytest.raises(SystemExit) as e:
        compare.parse(["--minutes", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--minutes 0 needs --max_steps" in capsys.readouterr().err
    assert compare.parse(["--minutes", "0", "--max_steps", "5", "--out", str(tmp_path)])[0].minutes == 0


def test_where_the_runs_are_logged_leaves_the_readmes_results_where_they_are(capsys):
    """Catches --wandb_mode (not a result) sending a run at the defaults away from img/."""
    assert compare.parse(["--wandb_mode", "offline", "--cache_dir", "elsewhere"])[0].results == ROOT / "img"
    assert "they go to" not in capsys.readouterr().err


def test_clearing_a_previous_comparison_deletes_its_three_run_folders_only(tmp_path):
    """Catches clear_run_folders deleting other run folders of --out_dir (another user's run beside)."""
    for name in [*(f"compare-{n}" for n in NAMES), "compare-other", "mine"]:
        (tmp_path / name).mkdir()
    (tmp_path / "mine" / "last.pt").write_bytes(b"keep")
    compare.clear_run_folders(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare-other", "mine"]


def test_a_previous_comparison_is_deleted_under_its_locks_on_a_full_disk_too(tmp_path, monkeypatch):
    """The three run folders go while compare.py holds their run.lock files, on a full disk too (no room
    for a lock's holder line: the room is what deleting makes). Bug caught: a full disk was an OSError
    traceback, and each lock was let go before its folder was deleted (a train.py starting there in
    between lost its files)."""
    import errno
    import os
    real_rmtree, real_write, seen = compare.shutil.rmtree, os.write, []
    for name in NAMES:
        (tmp_path / f"compare-{name}").mkdir()

    def rmtree(path, *args, **kwargs):  # a train.py starting now in any of them left is refused
        for left in tmp_path.iterdir():
            with pytest.raises(compare.storage.Busy):
                compare.storage.lock(left / "run.lock")
        seen.append(path.name)
        return real_rmtree(path, *args, **kwargs)

    def write(fd, data):  # no room for a lock's "pid N on HOST" line
        if data.startswith(b"pid "):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(compare.shutil, "rmtree", rmtree)
    monkeypatch.setattr(os, "write", write)
    compare.clear_run_folders(tmp_path)
    assert sorted(seen) == sorted(f"compare-{name}" for name in NAMES) and not list(tmp_path.iterdir())


def test_a_previous_comparison_whose_locks_a_full_disk_cannot_make_is_deleted(tmp_path, monkeypatch):
    """A last comparison's run folders without a run.lock (a run.lock its run made goes with it when it
    wrote nothing else) on a disk with no room to make one: they are deleted all the same (the room is
    what deleting makes). Bug caught: open()'s OSError (no room for a new file) was compare.py's
    traceback: full_ok covers the holder line alone, and only a PermissionError was caught."""
    import errno
    import os
    for name in NAMES:
        (tmp_path / f"compare-{name}").mkdir()

    def no_room(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(compare.storage, "lock", no_room)
    compare.clear_run_folders(tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fails", ["lock", "rmtree"])
def test_a_last_comparisons_folder_we_may_not_delete_is_one_line(tmp_path, monkeypatch, fails):
    """Bug caught: an --out_dir whose last comparison's run folders belong to another user (a shared
    checkpoints/compare) was a PermissionError traceback from run.lock or from rmtree."""
    for name in NAMES:
        (tmp_path / f"compare-{name}").mkdir()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(compare.storage if fails == "lock" else compare.shutil, fails, denied)
    with pytest.raises(SystemExit) as e:
        compare.clear_run_folders(tmp_path)
    assert str(e.value.code) == (f"compare.py: error: cannot delete the last comparison's run folder "
                                 f"{tmp_path / 'compare-moe'} (Permission denied); delete it yourself, or "
                                 "pick another --out_dir")


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_or_link_where_a_run_folder_goes_is_refused_before_any_run(kind, tmp_path, corpus,
                                                                          monkeypatch):
    """Bug caught: a file named compare-dense in --out_dir let the moe run train, then failed the dense run
    ("cannot write to ... (File exists)"); a link named compare-moe was a traceback from shutil.rmtree.
    Neither is deleted: it is not a folder compare.py made."""
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained"))
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    (runs / "compare-moe").mkdir(parents=True)  # a previous comparison's, kept as the stray one is refused
    elsewhere.mkdir()
    stray = runs / "compare-dense"
    stray.write_text("notes") if kind == "file" else stray.symlink_to(elsewhere)
    with pytest.raises(SystemExit) as e:
        compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                      "--preset", "debug", "--out_dir", str(runs), "--out", str(tmp_path / "img")])
    assert str(e.value.code) == (f"compare.py: error: {stray} is a {kind}, where compare.py puts a run "
                                 "folder (and deletes the last comparison's); move it away, or pick another "
                                 "--out_dir")
    assert (runs / "compare-moe").is_dir() and (stray.is_symlink() if kind == "link" else stray.is_file())


def test_a_run_is_read_with_its_accumulated_batch_its_moe_layers_and_its_routing(tmp_path):
    """Catches load_run leaving --grad_accum out of the tokens per step, counting MoE layers from
    layer 0 (with --moe_every 2 they are layers 1 and 3), and labelling a run without router noise
    noisy."""
    import config
    m = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "moe_every": 2, "router_noise": False})
    t = config.TrainArgs(batch_size=3, grad_accum=2)
    (tmp_path / "model.json").write_text(json.dumps(config.to_dict(m)))
    (tmp_path / "train.json").write_text(json.dumps(config.to_dict(t)))
    val = {"kind": "val", "step": 1, "bits_per_byte": 3.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(val) + "\n")
    run = compare.load_run("moe-ablation", tmp_path)
    assert run["tokens_per_step"] == 3 * 2 * 64 and run["batch_size"] == 3
    assert run["moe_layers"] == [1, 3]
    assert run["label"] == "moe-ablation: 4 experts top-1, no noise, aux 0.001"
    assert len(run["val"]) == 1 and run["train"] == []


def fake_train_main(seen: dict):
    """train.main, without training: the run folder of what argv asks for (its settings, a tokenizer,
    a train record at step 4 and the final evaluation at step 5), and argv's settings in `seen`."""
    import config

    def trained(argv):
        m, t = compare.settings_of(argv)
        seen[t.run] = m, t
        run_dir = compare.Path(t.out_dir) / t.run
        run_dir.mkdir(parents=True)
        (run_dir / "model.json").write_text(json.dumps(config.to_dict(m)))
        (run_dir / "train.json").write_text(json.dumps(config.to_dict(t)))
        (run_dir / "tokenizer.json").write_text("{}")
        moe = [] if m.is_dense else [0] * m.n_layers
        records = [{"kind": "train", "step": 4, "tokens_per_s": 100.0, "mfu": None,
                    **({"expert_share": [[0.25] * 4 for _ in moe], "router_entropy": [1.0 for _ in moe]}
                       if moe else {})},
                   {"kind": "val", "step": 5, "tokens": 5 * 512, "minutes": 0.5, "nats_per_token": 5.0,
                    "bits_per_byte": 2.0}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return {"step": 5, "run_dir": str(run_dir), "finished": "max_steps"}
    return trained


def test_the_runs_get_the_settings_and_the_table_says_what_they_ran(tmp_path, corpus, monkeypatch, capsys):
    """Catches shared_argv dropping --seed or --eval_windows, the variant's overrides put before the
    options passed through (--moe_every 1 made the dense run MoE), a row's steps read from the last
    train record (not where the run ended), the table's batch taken from compare.py's --batch_size
    (None when not given), its budget without --max_steps, its nats and bits columns swapped, and the
    active-width warning printed for matching runs. Bug caught: the table's batch left --grad_accum out
    ("batch 4 x 64 tokens" of steps of 2 x 4 sequences, its tokens column counting 8)."""
    seen = {}
    monkeypatch.setattr(compare.train, "main", fake_train_main(seen))
    result = compare.main(["--preset", "debug", "--data", str(corpus / "train.txt"),
                           "--val_data", str(corpus / "valid.txt"), "--minutes", "1", "--max_steps", "5",
                           "--eval_windows", "3", "--seed", "7", "--out", str(tmp_path / "img"),
                           "--out_dir", str(tmp_path / "runs"), "--cache_dir", str(tmp_path / "cache"),
                           "--grad_accum", "2", "--moe_every", "1"])
    assert list(seen) == [f"compare-{name}" for name in NAMES]
    for _, t in seen.values():
        assert (t.seed, t.eval_windows, t.max_minutes, t.max_steps, t.grad_accum) == (7, 3, 1.0, 5, 2)
    dense = seen["compare-dense"][0]
    assert dense.is_dense and dense.mlp_dim == (1 + dense.top_k) * dense.expert_dim
    assert not seen["compare-moe"][0].is_dense and "WARNING" not in capsys.readouterr().out
    assert [(r["run"], r["steps"], r["tokens"]) for r in result["runs"]] == [(n, 5, 5 * 4 * 2 * 64)
                                                                            for n in NAMES]
    assert result["settings"]["batch_size"] == 4
    table = (tmp_path / "img" / "compare.md").read_text()
    assert "| 5 | 2,560 | 5.0000 | 2.0000 | 100 | n/a |" in table.splitlines()[2]
    assert "a budget of 1 minute or 5 steps, batch 8 x 64 tokens (2 micro-batches of 4), seed 7," in table


@pytest.mark.parametrize("bad", ["empty", "checkpoint", "val_empty"])
def test_bad_data_is_refused_before_the_previous_comparisons_runs_are_deleted(tmp_path, corpus, monkeypatch,
                                                                               bad):
    """Bug caught: an empty --data (or a last.pt named as one, or an empty --val_data) was refused by
    train.py only after clear_run_folders had deleted the previous comparison's three run folders:
    exit 1 with the old runs gone. Now train.py's DataError comes first and nothing is touched."""
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained"))
    runs = tmp_path / "runs"
    for name in NAMES:
        (runs / f"compare-{name}").mkdir(parents=True)
        (runs / f"compare-{name}" / "last.pt").write_bytes(b"old")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "last.pt").write_bytes(b"a checkpoint")
    data, val = {"empty": (tmp_path / "empty.txt", corpus / "valid.txt"),
                 "checkpoint": (tmp_path / "last.pt", corpus / "valid.txt"),
                 "val_empty": (corpus / "train.txt", tmp_path / "empty.txt")}[bad]
    with pytest.raises(compare.DataError) as e:
        compare.main(["--data", str(data), "--val_data", str(val), "--preset", "debug",
                      "--out_dir", str(runs), "--out", str(tmp_path / "img")])
    said = {"empty": "--data: ", "checkpoint": "--data: ", "val_empty": "--val_data: "}[bad]
    assert str(e.value).startswith(said) and ("is empty" in str(e.value) or "is not .txt" in str(e.value))
    assert all((runs / f"compare-{name}" / "last.pt").read_bytes() == b"old" for name in NAMES)
    assert not (tmp_path / "img").exists()


@pytest.mark.parametrize("bad", ["latin-1", "no_field"])
def test_data_refused_only_once_read_is_refused_before_the_previous_comparisons_runs_are_deleted(
        tmp_path, corpus, monkeypatch, bad):
    """Bug caught: compare.py's check before it deleted the last comparison's run folders found the
    files of --data but read none, so text in another encoding (Latin-1) or a .jsonl without the text
    field passed it, and train.py refused it only after the three old run folders were deleted. The
    data is now prepared (into --cache_dir, for the runs) before anything is deleted."""
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained"))
    runs = tmp_path / "runs"
    for name in NAMES:
        (runs / f"compare-{name}").mkdir(parents=True)
        (runs / f"compare-{name}" / "last.pt").write_bytes(b"old")
    data = {"latin-1": tmp_path / "latin.txt", "no_field": tmp_path / "stories.jsonl"}[bad]
    if bad == "latin-1":
        french = "Il \u00e9tait une fois un caf\u00e9 tr\u00e8s \u00e9l\u00e9gant.\n" * 50
        data.write_bytes(french.encode("latin-1"))
    else:
        data.write_text("".join(json.dumps({"story": f"Once upon a time, story {i}."}) + "\n"
                                for i in range(50)))
    with pytest.raises(compare.DataError) as e:
        compare.main(["--data", str(data), "--val_data", str(corpus / "valid.txt"), "--preset", "debug",
                      "--out_dir", str(runs), "--out", str(tmp_path / "img"),
                      "--cache_dir", str(tmp_path / "cache")])
    assert str(e.value).startswith((f"--data: '{data}'", f"--data: {data}:"))
    assert ("not UTF-8" in str(e.value)) if bad == "latin-1" else ("--text_field" in str(e.value))
    assert all((runs / f"compare-{name}" / "last.pt").read_bytes() == b"old" for name in NAMES)
    assert not (tmp_path / "img").exists()  # (made before the data work, and removed again)


def test_settings_train_py_refuses_are_refused_before_the_previous_comparisons_runs_are_deleted(
        tmp_path, corpus, monkeypatch):
    """Bug caught: a batch too large for the machine's memory (refused only by runplan.check_settings,
    which compare.py did not run) passed the option and data checks, and train.py refused it only after
    clear_run_folders had deleted the previous comparison's three run folders. Now it is refused first,
    naming the run, with train.py's exit status (2), before any data work."""
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained"))
    runs = tmp_path / "runs"
    for name in NAMES:
        (runs / f"compare-{name}").mkdir(parents=True)
        (runs / f"compare-{name}" / "last.pt").write_bytes(b"old")
    with pytest.raises(compare.ConfigError) as e:
        compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                      "--preset", "debug", "--batch_size", str(10**8), "--device", "cpu",
                      "--out_dir", str(runs), "--out", str(tmp_path / "img")])
    assert str(e.value).startswith("the moe run: --max_seq_len 64 x --batch_size 100000000 needs at least ")
    assert e.value.exit_code == 2
    assert all((runs / f"compare-{name}" / "last.pt").read_bytes() == b"old" for name in NAMES)
    assert not (tmp_path / "img").exists() and not (tmp_path / "cache").exists()  # (no data work)


def test_ctrl_c_while_the_data_is_prepared_is_one_line_and_deletes_nothing(tmp_path, corpus, monkeypatch,
                                                                          capsys):
    """Bug caught (with the data now prepared before the runs): a Ctrl-C during that work (minutes on
    all of TinyStories) is compare.py's one line and status 130, the last comparison's runs kept and
    the --out folder it had just made removed, not the interpreter's bare "interrupted"."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(compare.data, "prepare", interrupted)
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained"))
    runs = tmp_path / "runs"
    (runs / "compare-moe").mkdir(parents=True)
    (runs / "compare-moe" / "last.pt").write_bytes(b"old")
    with pytest.raises(SystemExit) as e:
        compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                      "--preset", "debug", "--out_dir", str(runs), "--out", str(tmp_path / "img")])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "compare.py: interrupted while preparing the data; no run trained, and the last comparison's runs "
        "are as they were")
    assert (runs / "compare-moe" / "last.pt").read_bytes() == b"old" and not (tmp_path / "img").exists()


def test_the_printed_command_line_is_the_one_run(tmp_path, corpus, monkeypatch, capsys):
    """Bug caught: the command line printed before each run joined its words with spaces, so that an
    empty value (--plot '') read as none: pasted into a shell, it failed with --plot's missing value."""
    import shlex
    seen = []

    def interrupted(argv):
        seen.append(argv)
        raise KeyboardInterrupt
    monkeypatch.setattr(compare.train, "main", interrupted)
    with pytest.raises(SystemExit):
        compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                      "--preset", "debug", "--out_dir", str(tmp_path / "runs"),
                      "--out", str(tmp_path / "img")])
    printed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("=== moe"))
    assert "--plot ''" in printed and shlex.split(printed.split(": train.py ", 1)[1]) == seen[0]


def test_a_signal_during_a_run_says_compare_cannot_go_on_from_it(tmp_path, corpus, monkeypatch, capsys):
    """Bug caught: stopped by SIGTERM, train.py's line said `resume with --run compare-dense --out_dir DIR
    --resume`, then compare.py's last line said a rerun starts the three runs again: the first hint
    suggested something compare.py does not do (go on from a resumed run). compare.py's line now says
    it cannot go on from its runs, that a rerun deletes their folders, and that train.py's --resume
    trains a run on by itself."""
    runs = tmp_path / "runs"

    def stopped(argv):  # train.py stopped by the signal, its run folder kept with last.pt
        run_dir = runs / argv[argv.index("--run") + 1]
        run_dir.mkdir(parents=True)
        (run_dir / "last.pt").write_bytes(b"")
        print(f"stopped by a signal at step 3; checkpoints in {run_dir} (resume with "
              f"{compare.train.resume_options(run_dir)})")
        return {"step": 3, "best_val": None, "run_dir": str(run_dir), "finished": "signal"}
    monkeypatch.setattr(compare.train, "main", stopped)
    with pytest.raises(SystemExit) as e:
        compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                      "--preset", "debug", "--out_dir", str(runs), "--out", str(tmp_path / "img")])
    got = capsys.readouterr()
    assert "--resume" in got.out  # train.py's hint, as train.py gives it
    last = got.err.strip().splitlines()[-1]
    assert e.value.code == 130
    assert last.startswith("compare.py: interrupted during the moe run; no comparison written, and "
                           "compare.py cannot go on from its runs: a rerun starts the three again, deleting "
                           "their folders")
    assert "train.py --resume trains one on, by itself" in last
    assert (runs / "compare-moe" / "last.pt").exists()  # (kept, as the line says, until a rerun)


def test_a_comparison_without_a_time_budget_says_it_compares_at_equal_steps(tmp_path, corpus, monkeypatch):
    """Bug caught: `--minutes 0 --max_steps 6` (no budget of time: the steps stop each run) wrote "each
    with a budget of 0 minutes or 6 steps" in the table, and "at the same ... wall-clock budget" above
    the bits/byte plot."""
    monkeypatch.setattr(compare.train, "main", fake_train_main({}))
    result = compare.main(["--preset", "debug", "--data", str(corpus / "train.txt"),
                           "--val_data", str(corpus / "valid.txt"), "--minutes", "0", "--max_steps", "5",
                           "--out", str(tmp_path / "img"), "--out_dir", str(tmp_path / "runs"),
                           "--cache_dir", str(tmp_path / "cache")])
    assert ", each with a budget of 5 steps, batch " in (tmp_path / "img" / "compare.md").read_text()
    assert result["figures"]["bpb"].get_suptitle().endswith("the same active parameters and number of steps")
    assert compare.budget_of(2.5, None) == "2.5 minutes" and compare.budget_of(1, 5) == "1 minute or 5 steps"
    assert compare.budget_of(0.5, 1) == "0.5 minutes or 1 step"  # (Bug caught: "1 minutes")


def test_options_that_leave_the_moe_runs_without_a_moe_layer_are_refused(tmp_path, capsys):
    """Bug caught: `--moe_every 9` (or --n_layers 1 --moe_every 2) passed through trained three dense
    models, tabled two of them as "moe" and "moe-ablation", without the warning of a width mismatch
    (the dense twin matched them: no routers)."""
    for argv in (["--moe_every", "9"], ["--n_layers", "1", "--moe_every", "2"]):
        with pytest.raises(SystemExit) as e:
            compare.parse(["--preset", "debug", *argv, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert "the moe runs would have no MoE layer" in err and err.endswith("to at most --n_layers\n")
    assert compare.parse(["--preset", "debug", "--moe_every", "2", "--out", str(tmp_path)])[1] == [
        "--moe_every", "2"]


def test_an_out_folder_that_takes_no_files_is_refused_before_the_data_work(corpus, tmp_path, monkeypatch):
    """Bug caught: --out on a folder that is there but takes no new files (/proc, a read-only disk)
    passed (it was only made, not written to), and compare.py failed writing its results after the
    three runs; the results folder is now written to before the data is prepared."""
    from errors import StorageError
    monkeypatch.setattr(compare.data, "prepare", lambda *args: pytest.fail("prepared the data"))
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained"))
    with pytest.raises(StorageError, match="^cannot write in the folder /proc/self: .*; pick another --out$"):
        compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                      "--out_dir", str(tmp_path / "runs"), "--out", "/proc/self", "--minutes", "1"])


@pytest.mark.parametrize("how", ["name too long", "takes no file"])
def test_a_refused_out_folder_is_not_left_behind(corpus, tmp_path, monkeypatch, how):
    """Bug caught: --out NEW/<a name too long>, or an --out made but taking no file, was refused, and
    the folders made for it were left behind, empty (storage.writable_folder, as sweep.py's)."""
    import errno
    import tempfile

    from errors import StorageError
    monkeypatch.setattr(compare.data, "prepare", lambda *args: pytest.fail("prepared the data"))
    out = tmp_path / "new" / ("x" * 300 if how == "name too long" else "out")
    if how == "takes no file":
        def refused(*args, **kw):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(StorageError, match="; pick another --out$"):
        compare.main(["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"),
                      "--out_dir", str(tmp_path / "runs"), "--out", str(out), "--minutes", "1"])
    assert not (tmp_path / "new").exists()


def test_files_of_another_kind_under_its_results_names_are_refused_before_the_runs(tmp_path, corpus,
                                                                                    monkeypatch, capsys):
    """Bug caught: a user's notes in --out's compare.md, and another benchmark's JSON at its compare.json,
    were replaced by the comparison's at its end, after the three runs, without a word; an earlier
    comparison's files there (the README's img/) are replaced as before."""
    monkeypatch.setattr(compare.train, "main", lambda argv: pytest.fail("trained"))
    out = tmp_path / "results"
    out.mkdir()
    (out / "compare.md").write_text("my notes\n")
    (out / "compare.json").write_text(json.dumps({"device": "cpu", "config": {}}))
    argv = ["--data", str(corpus / "train.txt"), "--val_data", str(corpus / "valid.txt"), "--out", str(out),
            "--out_dir", str(tmp_path / "runs"), "--minutes", "0.1"]
    with pytest.raises(SystemExit) as e:
        compare.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith(f"compare.py: error: --out {out}: compare.json and "
                                                    "compare.md there are not earlier results"), err
    assert (out / "compare.md").read_text() == "my notes\n" and not (tmp_path / "runs").exists()
    for name in ("compare.json", "compare.md"):  # an earlier comparison's: no objection
        (out / name).write_bytes((ROOT / "img" / name).read_bytes())
    assert compare.parse(argv)[0].results == out


# --- what a mutation probe of compare.py found untested --------------------------------------

def test_a_row_reads_its_skipped_steps_mfu_and_max_share_from_the_right_records():
    """skipped_steps in a train record count the run's steps so far (the last record's is the run's);
    the MFU scales the last window's by the rate (a resume's windows may differ in peak); the max
    expert share is over every MoE layer.
    Mutation caught: the first record's skipped_steps or MFU read, or the first layer's share alone."""
    run = {"name": "moe", "tokens_per_step": 10, "val": [], "train": [
        {"step": 2, "tokens_per_s": 10.0, "mfu": 0.3, "skipped_steps": 1,
         "expert_share": [[0.5, 0.5]], "router_entropy": [0.6]},
        {"step": 6, "tokens_per_s": 40.0, "mfu": 0.4, "skipped_steps": 3,
         "expert_share": [[0.6, 0.4], [0.1, 0.9]], "router_entropy": [0.5, 0.3]}]}
    row = compare.summarize(run, 6)
    assert row["skipped_steps"] == 3
    assert row["mfu"] == pytest.approx(20.0 * 0.4 / 40.0)
    assert row["max_expert_share"] == 0.9
