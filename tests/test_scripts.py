"""The smaller scripts as a user runs them: scripts/plot_runs.py's output closed early and its
--out checked before any work; scripts/export_hf.py's Ctrl-C; scripts/count_params.py's counts of
any number of layers. Run folders are written by hand
(metrics.jsonl records as train.py writes them), so no model is trained here."""

import errno
import io
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import config
import errors
import model
import runlog
from scripts import count_params, export_hf, plot_runs


def fake_run(path):
    """A run folder with the metrics.jsonl fields plot_runs reads."""
    path.mkdir(parents=True)
    records = [{"kind": "train", "step": s, "tokens": 256 * s, "minutes": s / 60, "lm_loss": 6 - s / 10}
               for s in (5, 10)]
    records.append({"kind": "val", "step": 10, "tokens": 2560, "minutes": 1 / 6, "nats_per_token": 5.5,
                    "bits_per_byte": 3.2, "val_bytes": 1000})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_plot_runs_output_closed_early_ends_quietly(tmp_path):
    """plot_runs.py ... | head -0: the closed pipe was caught as an OSError and reported as
    `plot_runs.py: error: [Errno 32] Broken pipe`, exit 1; now quiet, exit 141 (errors.run_script)."""
    run = fake_run(tmp_path / "r1")
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that is gone before the first write
    try:
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_runs.py"), str(run), "--out",
                               str(tmp_path / "p.png")], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=300)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")
    assert (tmp_path / "p.png").exists()  # the plot was written before the path was printed


@pytest.mark.parametrize("out, message", [
    ("-", "--out -: the plot is an image file, not text for standard output"),
    ("folder", "--out {tmp}/folder is a folder; name the image file, e.g. --out {tmp}/folder/compare.png"),
    # Bug caught: a new folder's name (it ends in a slash) was said to be a folder
    ("new dir/", "--out {tmp}/new dir/ names a folder (it ends in a slash); name the image file, e.g. "
                 "--out {tmp}/new dir/compare.png"),
    ("a_file/x.png", "--out {tmp}/a_file/x.png: {tmp}/a_file is a file, not a folder; pick another --out"),
    ("a_file/b/x.png", "--out {tmp}/a_file/b/x.png: {tmp}/a_file is a file, not a folder"),
    # Bugs caught: `--out ""` said "--out  is a folder"; --out cmp.xyz wrote a PNG named cmp.xyz
    ("", "--out is empty (an unset variable?); name the image file"),
    ("cmp.xyz", "--out {tmp}/cmp.xyz: matplotlib writes no .xyz file, and the format comes from the name; "
                "name a .png, .svg or .pdf file"),
])
def test_plot_runs_refuses_an_out_that_cannot_be_an_image_before_any_work(tmp_path, monkeypatch, capsys,
                                                                          out, message):
    """`--out -` wrote a PNG file named `-`; a folder was found only after the plot was drawn; a file
    in the way of the folder was `[Errno 17] File exists: ...`. Now one line, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    run = fake_run(tmp_path / "r1")
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    out = out if out in ("-", "") else str(tmp_path / out) + "/" * out.endswith("/")
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(run), "--out", out])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.split(": error: ", 1)[1].startswith(message.format(tmp=tmp_path)), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder", "r1"]
    assert list((tmp_path / "folder").iterdir()) == []


@pytest.mark.parametrize("do_import", [False, True])
def test_export_hf_interrupted_says_the_destination_may_be_unfinished(tmp_path, monkeypatch, capsys,
                                                                       do_import):
    """Ctrl-C during an export said "the files already written are complete", of a folder with
    model.safetensors and no config.json (written last) that the next run refused without --force.
    Now: what the destination holds (an export is put in place whole); run again, with --force if
    refused. Exit 130."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(export_hf.checkpoint, "import_hf", interrupted)
    monkeypatch.setattr(export_hf.checkpoint, "export_hf", interrupted)
    monkeypatch.setattr(export_hf.checkpoint, "find_checkpoint", lambda source: tmp_path / "run" / "last.pt")
    monkeypatch.setattr(export_hf.checkpoint, "load_model", lambda path: (None, {}))
    dest = tmp_path / "dest"
    with pytest.raises(SystemExit) as e:
        export_hf.main([*(["--import"] if do_import else []), str(tmp_path / "src"), str(dest)])
    err = capsys.readouterr().err
    held = ("may hold part of this import" if do_import else
            "holds what it held before, or the whole export if the interrupt came as it was put in place")
    assert e.value.code == 130 and err.count("\n") == 1
    assert err == f"export_hf.py: interrupted; {dest} {held}: run the command again, with --force if it " \
                  "refuses\n"


@pytest.mark.parametrize("argv", [
    *(["--preset", name] for name in sorted(config.PRESETS)),
    ["--preset", "debug", "--n_layers", "7", "--moe_every", "3", "--nope_every", "2",
     "--router_noise", "false"],
    ["--preset", "debug", "--n_layers", "3", "--moe_every", "5", "--vision", "true", "--qk_norm", "false"],
    ["--preset", "maverick-17b-128e", "--n_layers", "5"],
])
def test_count_params_counts_as_the_whole_model_built_on_the_meta_device(argv):
    """count_params.py builds a few one- or two-layer models, not every layer (--n_layers 2000000000
    built two billion modules and never answered); its table and counts are the whole model's."""
    _, (args,) = config.parse_args([config.ModelArgs], argv)
    with torch.device("meta"):
        whole = model.Llama4(args)
    rows = {}
    for name, p in whole.named_parameters():
        rows[count_params.kind_of(name)] = rows.get(count_params.kind_of(name), 0) + p.numel()
    assert count_params.main(argv) == model.count_parameters(whole)
    assert sorted(count_params.table(args)[0]) == sorted(rows.items())


def test_count_params_answers_two_billion_layers_without_building_them(monkeypatch, capsys):
    built = []
    block_init = model.Block.__init__
    monkeypatch.setattr(model.Block, "__init__", lambda self, *a: (built.append(1), block_init(self, *a))[1])
    counts = count_params.main(["--preset", "tiny", "--n_layers", "1000"])
    assert len(built) <= 4  # (1000 before)
    one = count_params.main(["--preset", "tiny", "--n_layers", "1"])
    two = count_params.main(["--preset", "tiny", "--n_layers", "2"])
    layer = {k: two[k] - one[k] for k in one}
    assert counts == {k: one[k] + 999 * layer[k] for k in one}
    asked, is_moe = [], config.ModelArgs.is_moe_layer  # (a loop asking it of each layer: 3 minutes here)

    def asking(self, i):  # (failing at once, not after minutes and a list of 2e9 layers)
        asked.append(i)
        assert len(asked) < 100, "is_moe_layer asked of each of the 2,000,000,000 layers"
        return is_moe(self, i)
    monkeypatch.setattr(config.ModelArgs, "is_moe_layer", asking)
    huge = count_params.main(["--preset", "tiny", "--n_layers", "2000000000"])
    assert huge["total"] == one["total"] + 1_999_999_999 * layer["total"]
    assert "1,778,208,000,524,416" in capsys.readouterr().out


UNIT = "write the number alone, without a unit or suffix (--help says each option's unit)"


@pytest.mark.parametrize("script, argv, message", [
    ("compare", ["--max_steps", "5,000"],
     "argument --max_steps: expected an integer, got '5,000'; write 5000"),
    ("compare", ["--seed", "256.0"], "argument --seed: expected an integer, got '256.0'; write 256"),
    ("compare", ["--minutes", "10m"], f"argument --minutes: expected a number, got '10m'; {UNIT}"),
    ("compare", ["--minutes", "nan"], "argument --minutes: expected a finite number, got 'nan'"),
    ("compare", ["--minutes", "-1"], "--minutes: must be a finite number of minutes, 0 or more, got -1"),
    ("gpu_check", ["--minutes", "inf"], "argument --minutes: expected a finite number, got 'inf'"),
    ("gpu_check", ["--deadline", "3e-4,"], "argument --deadline: expected a number, got '3e-4,'; write 3e-4"),
    ("gpu_check", ["--minutes", "-1"], "--minutes: must be a finite number, 0 or more, got -1"),
    ("sweep", ["--confirm", "5,000"], "argument --confirm: expected an integer, got '5,000'; write 5000"),
    ("sweep", ["--confirm", "3e-4"], "argument --confirm: expected an integer, got '3e-4'"),
    ("sweep", ["--screen_minutes=-inf"],
     "argument --screen_minutes: expected a finite number, got '-inf'"),
    ("sweep", ["--confirm_minutes", "-1"], "--confirm_minutes: must be above 0, got -1"),
    ("bench_sample", ["--max_seq_len", "256.0"],
     "argument --max_seq_len: expected an integer, got '256.0'; write 256"),
    ("bench_sample", ["--repeats", "5,000"],
     "argument --repeats: expected an integer, got '5,000'; write 5000"),
    ("bench_sample", ["--warmup", "-1"], "argument --warmup: '-1' is not a whole number, 0 or more"),
    ("bench_data", ["--repeat", "10m"], f"argument --repeat: expected an integer, got '10m'; {UNIT}"),
    ("bench_model", ["--repeats", "2.0"], "argument --repeats: expected an integer, got '2.0'; write 2"),
])
def test_the_scripts_numbers_are_read_as_train_pys_are(script, argv, message, capsys):
    """Bug caught: the scripts' own number options (compare.py --max_steps 5,000, sweep.py --confirm,
    gpu_check.py --deadline, bench_sample.py --max_seq_len 256.0, the counts of config.at_least) said
    argparse's "invalid int value: '5,000'", with no fix, where train.py says "expected an integer, got
    '5,000'; write 5000" (config.number). Their own range checks still come after; all before any work."""
    import importlib
    main = importlib.import_module(f"scripts.{script}").main
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert (e.value.code, out, err.split(": error: ", 1)[1]) == (2, "", message + "\n")


NO_ROOM = ("error: cannot write to standard output (No space left on device); send the output somewhere "
           "with room, or to a terminal\n")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("script", ["train.py", "sample.py", "scripts/count_params.py",
                                    "scripts/export_hf.py"])
def test_help_with_nowhere_to_go_is_said_as_any_output_is(script):
    """`<script> --help > FILE` on a full disk, and into a pipe whose reader is gone, exited 0 with
    nothing written: argparse passes over a failed write. Now as the scripts' other output: one line,
    exit 1; a closed pipe quiet, 141 (PYTHONUNBUFFERED set: the write fails inside argparse)."""
    def run(stdout):
        return subprocess.run([sys.executable, str(ROOT / script), "--help"], stdout=stdout,
                              stderr=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    with open("/dev/full", "w") as full:
        done = run(full)
    assert (done.returncode, done.stderr) == (1, f"{os.path.basename(script)}: {NO_ROOM}")
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that is gone before the first write
    try:
        done = run(write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def drawn(monkeypatch) -> list:
    """The (left, right) axes of each runlog.plot_runs drawing, kept after its figure is closed."""
    axes, draw = [], runlog._draw

    def spy(fig, left, right, *args):
        axes.append((left, right))
        return draw(fig, left, right, *args)
    monkeypatch.setattr(runlog, "_draw", spy)
    return axes


def test_plot_runs_draws_every_curve_against_the_x_asked_for(tmp_path, monkeypatch):
    """Catches validation bits/byte drawn against another x than --x, and the single run's
    `validation` nats/token curve drawn beside each of several runs."""
    axes = drawn(monkeypatch)
    runlog.plot_runs([fake_run(tmp_path / "a"), fake_run(tmp_path / "b")], tmp_path / "p.png", x="minutes")
    left, right = axes[0]
    assert [list(line.get_xdata()) for line in left.lines] == [[5 / 60, 10 / 60]] * 2  # no validation line
    assert [list(line.get_xdata()) for line in right.lines] == [[1 / 6]] * 2
    assert left.get_xlabel() == right.get_xlabel() == "wall-clock minutes"
    runlog.plot_runs([tmp_path / "a"], tmp_path / "p.png", x="step")
    left, right = axes[1]
    assert [line.get_label() for line in left.lines][1:] == ["validation"]
    assert [list(line.get_xdata()) for line in (*left.lines[1:], *right.lines)] == [[10], [10]]


def test_plot_runs_draws_a_run_with_validation_records_only(tmp_path, monkeypatch):
    """Catches a run with no train record (one evaluated before its first log step) left off the
    plot: its validation curve is drawn, not 'nothing to plot'."""
    run = tmp_path / "r"
    run.mkdir()
    val = {"kind": "val", "step": 0, "tokens": 0, "minutes": 0.1, "nats_per_token": 5.5, "bits_per_byte": 3.2}
    (run / "metrics.jsonl").write_text(json.dumps(val) + "\n")
    axes = drawn(monkeypatch)
    assert runlog.plot_runs([run], tmp_path / "p.png").exists()
    left, right = axes[0]
    assert [line.get_label() for line in left.lines] == ["validation"] and len(right.lines) == 1


def test_the_legend_tells_apart_runs_of_other_batches_and_router_noise(tmp_path):
    """Catches run_label leaving out --grad_accum from the batch (8 x 4 said 8) or router noise off."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"router_noise": False}))  # (the rest: today's defaults)
    (run / "train.json").write_text(json.dumps({"batch_size": 8, "grad_accum": 4}))
    label = runlog.run_label(run)
    assert " no-noise," in label and f"batch 32x{config.ModelArgs().max_seq_len}" in label, label


def test_runs_are_compared_on_the_text_of_their_last_evaluation(tmp_path):
    """Catches incomparable reading val_bytes from a run's first evaluation, not its last (a run
    resumed with another --val_data)."""
    a = (tmp_path / "a", [], [{"val_bytes": 807}, {"val_bytes": 1169}])
    b = (tmp_path / "b", [], [{"val_bytes": 807}])
    assert runlog.incomparable([a, b]) == [
        "the runs were validated on different text (val_bytes: a 1169, b 807): their bits/byte do not "
        "compare; train them with the same --val_data and --eval_windows 0 (all of it)"]
    assert runlog.incomparable([a, (tmp_path / "c", [], [{"val_bytes": 1169}])]) == []


def test_the_tokenizer_warning_says_which_runs_share_one(tmp_path):
    """Bug caught: `plot_runs.py ck/t1 ck/t2 ck/t3`, t1 and t2 with byte-identical tokenizer.json files,
    warned "the runs use different tokenizers (t1, t2, t3)": every run named, the odd one out not
    told from the others. Now the runs are grouped by tokenizer."""
    def run(name, vocab):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
        return tmp_path / name, [], []
    t1, t2, t3, t4 = run("t1", {"a": 0}), run("t2", {"a": 0}), run("t3", {"b": 0}), run("t4", {"c": 0})
    why = ("their training loss in nats/token and their tokens seen do not compare; compare validation "
           "bits/byte")
    assert runlog.incomparable([t1, t2, t3]) == [
        f"the runs use 2 different tokenizers (one in t1, t2; another in t3): {why}"]
    assert runlog.incomparable([t3, t1, t4, t2])[0].startswith(
        "the runs use 3 different tokenizers (one in t3; another in t1, t2; another in t4): ")
    assert runlog.incomparable([t1, t2]) == []


def test_count_params_refuses_a_tiny_vocabulary_as_a_bad_setting(capsys):
    """Catches count_params.py's too-small --vocab_size exiting 1 instead of a bad setting's 2."""
    with pytest.raises(SystemExit) as e:
        count_params.main(["--preset", "debug", "--vocab_size", "100"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("count_params.py: error: ") and err.count("\n") == 1


def test_count_params_explains_the_scout_model_cards_total(capsys):
    """Catches the Scout card's total said to be 'not one embedding matrix' more than the modules'."""
    counts = count_params.main(["--preset", "scout-17b-16e"])
    out = capsys.readouterr().out
    assert count_params.SCOUT_CARD_TOTAL - counts["total"] == counts["embedding"]
    assert "exactly one embedding matrix" in out and "not one embedding" not in out


def test_export_hf_keeps_a_bad_settings_status_and_puts_sigterm_back(tmp_path, monkeypatch):
    """Catches export_hf.py exiting 1 for a bad setting (a folder of runs given as the checkpoint: 2),
    and leaving SIGTERM as a Ctrl-C once it is done (its caller's handler lost)."""
    def refused(*args, **kwargs):
        raise errors.ConfigError(f"{tmp_path / 'x'} is a folder of runs, not a run")
    monkeypatch.setattr(export_hf.checkpoint, "find_checkpoint", refused)
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(SystemExit) as e:
            export_hf.main([str(tmp_path / "x"), str(tmp_path / "dest")])
        assert e.value.code == 2 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_plot_runs_warns_of_a_torn_last_line_and_plots_the_rest(tmp_path, capsys):
    """Catches read_metrics (or plot_runs.py) dropping a torn last metrics.jsonl line without a word."""
    run = fake_run(tmp_path / "r")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 15, "lo')  # a crash during the append
    plot_runs.main([str(run), "--out", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert err.startswith("plot_runs.py: warning: ") and "dropped a torn last line (line 4" in err
    assert (tmp_path / "p.png").exists()


def test_count_params_shares_are_of_the_whole_model_vision_stub_included(capsys):
    """Catches the share column taken of the text model alone: with the vision stub the rows summed
    past 100%."""
    count_params.main(["--preset", "debug", "--vision", "true"])
    out = capsys.readouterr().out.splitlines()
    shares = [float(line.split()[-1][:-1]) for line in out if line.endswith("%")]
    assert sum(shares) == pytest.approx(100, abs=0.05 * len(shares))


def test_count_params_heading_says_which_layers_have_experts(capsys):
    """Bug caught: --moe_every past --n_layers (a dense model) was headed "16 experts top-1", and
    --moe_every 2 did not say that half the layers have none."""
    for extra, heading in [(["--moe_every", "100"], "4 layers, no MoE layer,"),
                           (["--moe_every", "2"], "4 layers, 4 experts top-1 in 2 of the layers,")]:
        count_params.main(["--preset", "debug", *extra])
        assert heading in capsys.readouterr().out.splitlines()[0]


def test_count_params_prints_the_debug_presets_table_as_counted_by_hand(capsys):
    """Catches a row under another's label (routed experts as dense layers), the table not sorted
    largest first, a share not of the total, a wrong top-k in the heading, or a count (active per
    token) left out of the totals printed. The debug preset's parameters, counted by hand."""
    count_params.main(["--preset", "debug"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "preset debug: dim 64, 4 layers, 4 experts top-1, vocab 320, vision off"
    dim, layers, head = 64, 4, 64 // 4  # 4 query heads, 2 key/value heads, expert_dim 32
    routed = layers * 4 * 3 * dim * 32  # gate, up and down of each of the 4 experts
    want = {"routed experts": routed, "attention q/k/v/o": layers * (2 * dim * 4 * head + 2 * dim * 2 * head),
            "shared expert": layers * 3 * dim * 32, "token embedding": 320 * dim,
            "lm_head (untied)": 320 * dim,
            "router noise (ours)": layers * (dim * 4 + 4), "router": layers * dim * 4,
            "RMSNorm weights": (2 * layers + 1) * dim}
    total = sum(want.values())
    end = out.index("-" * 59)
    rows = [line.rsplit(None, 2) for line in out[2:end]]
    assert {kind: int(n.replace(",", "")) for kind, n, _ in rows} == want
    sizes = [int(n.replace(",", "")) for _, n, _ in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert all(share == f"{want[kind] / total:.1%}" for kind, _, share in rows)
    totals = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in out[end + 1:]}
    assert totals == {"total": total, "text": total, "vision": 0, "embedding": 320 * dim,
                      "non_embedding": total - 320 * dim, "active_per_token": total - routed + routed // 4}


def test_count_params_explains_the_scout_card_only_for_the_scout_preset_as_it_is(capsys):
    """Catches the model card's total explained for a Scout with other settings (here 2 layers),
    whose module sum is not the card's model."""
    count_params.main(["--preset", "scout-17b-16e", "--n_layers", "2"])
    assert "model card total" not in capsys.readouterr().out


def fake_checkpoint(monkeypatch, tmp_path, tokenizer=True) -> list:
    """A run folder (its last.pt, and tokenizer.json when asked) whose loading, tokenizer check, export
    and import export_hf.py calls are faked: the calls, in order, with what they were given."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    if tokenizer:
        (run / "tokenizer.json").write_text("{}")
    calls = []
    cp = export_hf.checkpoint
    monkeypatch.setattr(cp, "find_checkpoint", lambda source: run / "last.pt")
    monkeypatch.setattr(cp, "load_model", lambda path: ("model", {"tokenizer": {}}))
    monkeypatch.setattr(export_hf.Tokenizer, "load", lambda path, fix=None, exact=True: "tok")
    monkeypatch.setattr(cp, "check_tokenizer", lambda tok, path, ckpt, ckpt_path, fix: calls.append(
        ("check", path, fix)))
    monkeypatch.setattr(cp, "export_hf", lambda model, dest, tok=None, replace=False: calls.append(
        ("export", dest, tok, replace)))
    monkeypatch.setattr(cp, "import_hf", lambda source, dest, replace=False: calls.append(
        ("import", dest, replace)) or tmp_path / "ckpt" / "last.pt")
    return calls


@pytest.mark.parametrize("force", [False, True])
def test_export_hf_checks_the_runs_tokenizer_then_exports_it_and_passes_force(tmp_path, monkeypatch,
                                                                             capsys, force):
    """Catches export_hf.py dropping --force (an export at dest refused even with it), skipping the
    tokenizer check, leaving the tokenizer out, its error losing "nothing was exported", or looking for
    tokenizer.json beside the path given (a checkpoint file) instead of beside the checkpoint."""
    calls = fake_checkpoint(monkeypatch, tmp_path)
    run, dest = tmp_path / "run", str(tmp_path / "hf")
    export_hf.main([str(run / "last.pt"), dest, *(["--force"] if force else [])])
    fix = export_hf.checkpoint.TOKENIZER_FIX + "; nothing was exported"
    assert calls == [("check", run / "tokenizer.json", fix), ("export", dest, run / "tokenizer.json", force)]
    assert capsys.readouterr() == (f"exported {run / 'last.pt'} -> {dest}\n", "")
    calls.clear()
    export_hf.main(["--import", dest, str(tmp_path / "ckpt"), *(["--force"] if force else [])])
    assert calls == [("import", str(tmp_path / "ckpt"), force)]
    assert capsys.readouterr().out == f"imported {dest} -> {tmp_path / 'ckpt' / 'last.pt'}\n"


def test_export_hf_without_the_runs_tokenizer_exports_the_model_and_says_so(tmp_path, monkeypatch, capsys):
    """Catches a run folder without tokenizer.json exported with no word that the folder got no
    tokenizer (sample.py --hf needs one)."""
    calls = fake_checkpoint(monkeypatch, tmp_path, tokenizer=False)
    export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")])
    assert calls == [("export", str(tmp_path / "hf"), None, False)]
    err = capsys.readouterr().err
    assert err == (f"export_hf.py: warning: {tmp_path / 'run' / 'tokenizer.json'} is missing: the folder got "
                   "no tokenizer, and sample.py --hf needs one\n")


def test_plot_runs_passes_x_and_title_on(tmp_path, monkeypatch, capsys):
    """Catches plot_runs.py drawing against tokens whatever --x says, or dropping --title."""
    given = []
    monkeypatch.setattr(plot_runs.runlog, "plot_runs", lambda runs, out, x, title, warn: given.append(
        (runs, out, x, title)) or out)
    run, out = str(fake_run(tmp_path / "r")), str(tmp_path / "p.png")
    plot_runs.main([run, "--out", out, "--x", "step", "--title", "two runs"])
    assert given == [([run], out, "step", "two runs")] and capsys.readouterr().out == f"{out}\n"


def test_plot_runs_names_the_file_and_line_of_a_record_without_a_field(tmp_path):
    """Catches a metrics.jsonl record without a field train.py writes (from another program) as a
    KeyError traceback instead of one line naming the field; and that line not naming which of the
    runs plotted held it, and where ("a metrics.jsonl record has no 'kind' field"). A field the plot
    does not draw (tokens, with --x step) is not asked for."""
    good, bad = fake_run(tmp_path / "good"), fake_run(tmp_path / "bad")
    log = bad / "metrics.jsonl"
    lines = log.read_text().splitlines()
    fix = "pass run folders that this project's train.py wrote, or delete that line"
    for line, out, field in [({"kind": "train", "step": 1, "lm_loss": 5.0}, "tokens", "every train record"),
                             ({"step": 11, "tokens": 1, "lm_loss": 5.0}, "kind", "every record"),
                             ({"kind": "val", "step": 11, "tokens": 1}, "bits_per_byte", "every val record")]:
        log.write_text("\n".join([lines[0], "", json.dumps(line), *lines[1:]]) + "\n")
        with pytest.raises(SystemExit) as e:
            plot_runs.main([str(good), str(bad), "--out", str(tmp_path / "p.png")])
        assert e.value.code == (f"plot_runs.py: error: {log}: line 3 has no {out!r} field, which train.py "
                                f"writes in {field}; {fix}")
        assert not (tmp_path / "p.png").exists()
    log.write_text("\n".join([lines[0], json.dumps({"kind": "train", "step": 1, "lm_loss": 5.0})]) + "\n")
    plot_runs.main([str(good), str(bad), "--out", str(tmp_path / "p.png"), "--x", "step"])
    assert (tmp_path / "p.png").exists()


def test_plot_runs_names_a_metrics_jsonl_that_is_a_folder_and_the_fix(tmp_path):
    """Bug caught: a run whose metrics.jsonl is a folder (made by mistake) said "[Errno 21] Is a
    directory: ..." with no fix, and that folder typed itself said ".../metrics.jsonl/metrics.jsonl
    does not exist"; now one line names it and the fix."""
    good, bad = fake_run(tmp_path / "good"), tmp_path / "bad"
    (bad / "metrics.jsonl").mkdir(parents=True)
    for typed in (bad, bad / "metrics.jsonl"):
        with pytest.raises(SystemExit) as e:
            plot_runs.main([str(good), str(typed), "--out", str(tmp_path / "p.png")])
        assert e.value.code == (f"plot_runs.py: error: {bad / 'metrics.jsonl'} is a folder, not the run's "
                                f"log; put the run's metrics.jsonl file in its place, or leave {bad} out")
    assert not (tmp_path / "p.png").exists()


def test_plot_runs_takes_a_runs_metrics_jsonl_and_names_the_runs_of_a_folder_of_runs(tmp_path, capsys):
    """Bugs caught: `plot_runs.py RUN/metrics.jsonl` said ".../metrics.jsonl/metrics.jsonl does not
    exist"; a folder of runs (an --out_dir) said it had no metrics.jsonl, not which runs it holds."""
    older, newer = fake_run(tmp_path / "runs" / "older"), fake_run(tmp_path / "runs" / "newer")
    os.utime(older / "metrics.jsonl", (1e9, 1e9))
    plot_runs.main([str(newer / "metrics.jsonl")])  # its folder's: compare.png beside the run
    assert capsys.readouterr().out == f"{tmp_path / 'runs' / 'compare.png'}\n"
    assert (tmp_path / "runs" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(tmp_path / "runs"), "--out", str(tmp_path / "p.png")])
    assert e.value.code == 2 and capsys.readouterr().err.split(": error: ", 1)[1] == (
        f"{tmp_path / 'runs'} is a folder of runs, not a run; pass {newer} (the newest) or others of its "
        "runs (newer, older)\n")
    assert not (tmp_path / "p.png").exists()


def test_plot_runs_names_five_runs_of_a_big_folder_and_plots_a_run_holding_runs(tmp_path, capsys):
    """Bugs caught: a folder of many runs (an --out_dir of a sweep) named every one of them on the error
    line, not the newest five and a count of the rest; a run folder that holds runs of its own (an
    --out_dir inside it) refused as a folder of runs though it has its metrics.jsonl."""
    runs = [fake_run(tmp_path / "runs" / f"r{i}") for i in range(7)]
    for i, run in enumerate(runs):
        os.utime(run / "metrics.jsonl", (1e9 + i, 1e9 + i))
    with pytest.raises(SystemExit) as e:
        plot_runs.main([str(tmp_path / "runs"), "--out", str(tmp_path / "p.png")])
    assert e.value.code == 2 and capsys.readouterr().err.endswith(
        f"pass {runs[6]} (the newest) or others of its runs (r6, r5, r4, r3, r2 and 2 more)\n")
    fake_run(runs[0] / "inner")
    plot_runs.main([str(runs[0]), "--out", str(tmp_path / "p.png")])
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_runs_takes_an_image_suffix_in_capitals(tmp_path):
    """Bug caught: --out cmp.PNG refused as a format matplotlib cannot write (the suffix compared as
    typed), though matplotlib writes the PNG its name asks for."""
    run = fake_run(tmp_path / "run")
    plot_runs.main([str(run), "--out", str(tmp_path / "cmp.PNG")])
    assert (tmp_path / "cmp.PNG").read_bytes()[:4] == b"\x89PNG"


def make(target, cwd, env=None):
    import shutil
    if shutil.which("make") is None:
        pytest.skip("no make here")
    return subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), target], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=60)


def test_a_bare_make_lists_the_targets_and_installs_nothing(tmp_path):
    """Bug caught: a bare `make` ran `make train`: it made .venv, installed torch and started the
    default 5,000-step run on the hub's TinyStories."""
    import re
    import shutil
    if shutil.which("make") is None:
        pytest.skip("no make here")
    r = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile")], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("make train ")
    assert list(tmp_path.iterdir()) == []  # (no .venv, nothing run)
    phony = re.search(r"^\.PHONY: (.*)$", (ROOT / "Makefile").read_text(), flags=re.M)[1].split()
    missing = [t for t in phony if t not in ("help", "FORCE") and not re.search(rf"\b{t}\b", r.stdout)]
    assert not missing, f"make's help leaves out {missing}"


def test_make_refuses_a_venv_of_a_python_older_than_3_11_with_the_way_out(tmp_path):
    """Bug caught: a .venv made by python3.10 (make PYTHON=..., or a system python3 of 3.10) failed
    pip's install with a resolver error that named no Python, and every later make kept that .venv."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    fake = tmp_path / ".venv" / "bin" / "python"  # a Python 3.10, running nothing
    fake.write_text('#!/bin/sh\ncase "$1" in -V) echo "Python 3.10.13";; -c) exit 1;; '
                    '*) echo "$@" >> ran;; esac\n')
    fake.chmod(0o755)
    (tmp_path / "requirements.txt").touch()
    (tmp_path / "constraints.txt").touch()
    r = make(".venv/.runtime", tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines()[0] == (
        "make: .venv has Python 3.10.13, and this project needs Python 3.11 or later; make clean-venv, then "
        "make PYTHON=python3.11 (or another 3.11+)")
    assert not (tmp_path / "ran").exists()  # (pip never ran)
    fake.unlink()
    fake.symlink_to(tmp_path / "gone")  # Bug caught: the shell's "not found" line inside make's
    r = make(".venv/.runtime", tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines()[0].startswith(
        "make: .venv has a python that does not run, and this project needs Python 3.11 or later;")


def test_make_gpu_prep_runs_twice_and_says_when_the_shared_texts_are_missing(tmp_path):
    """Bug caught: the shared texts are read-only and cp kept their mode, so a second make gpu-prep
    (not as root) failed on its own copies; without ../shared it failed on cp's line and left an empty
    gpu-data/."""
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").write_text("#!/bin/sh\nexit 0\n")  # (pip download: nothing)
    (tmp_path / "bin" / "python3").chmod(0o755)
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    r = make("gpu-prep", project, env)
    assert r.returncode == 2 and r.stderr.splitlines()[0] == (
        "gpu-prep: ../shared/data/tinystories/train-lower.txt is missing; clone this project beside the "
        "shared folder (../shared), or copy the two texts into gpu-data/ yourself")
    assert not (project / "gpu-data").exists()
    texts = tmp_path / "shared" / "data" / "tinystories"
    texts.mkdir(parents=True)
    for name in ("train-lower.txt", "valid-lower.txt"):
        (texts / name).write_text(f"{name}\n")
        (texts / name).chmod(0o444)
    for _ in range(2):
        r = make("gpu-prep", project, env)
        assert r.returncode == 0, r.stderr
    copies = sorted((project / "gpu-data").iterdir())
    assert [c.read_text() for c in copies] == ["train-lower.txt\n", "valid-lower.txt\n"]
    assert all(c.stat().st_mode & 0o200 for c in copies)  # (replaceable by their owner)


def test_make_gpu_ab_base_writes_a_commits_tree_for_the_gpu_machine(tmp_path):
    """The GPU machine gets the checkout without its history, so an A/B against an earlier commit
    (scripts/ab_trees.py) needs that commit's tree in a carried folder: gpu-data/ab-base, the
    commit's files alone, replaced whole by the next call. No commit, or one git does not know, is
    a one-line error that leaves an earlier tree as it was."""
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)
    git("init", "-q")
    for text in ("one\n", "two\n"):
        (tmp_path / "model.py").write_text(text)
        git("add", "model.py")
        git("commit", "-q", "-m", text.strip())
    (tmp_path / "model.py").write_text("uncommitted\n")
    r = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "gpu-ab-base", "BASE=HEAD~1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    base = tmp_path / "gpu-data" / "ab-base"
    assert sorted(p.name for p in base.iterdir()) == ["model.py"]
    assert (base / "model.py").read_text() == "one\n"
    r = make("gpu-ab-base", tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines()[0] == (
        "gpu-ab-base: name the commit to compare against: make gpu-ab-base BASE=<commit>")
    r = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "gpu-ab-base", "BASE=nope"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.splitlines()[0] == (
        "gpu-ab-base: nope is no commit here; name one that git log lists")
    assert (base / "model.py").read_text() == "one\n" and not (tmp_path / "gpu-data" / "ab-base.tmp").exists()


@pytest.mark.parametrize("script", ["export_hf.py", "count_params.py", "memory_model.py", "compare.py",
                                    "sweep.py", "bench_model.py", "bench_sample.py"])
def test_an_interrupt_while_a_script_imports_torch_is_one_line(tmp_path, script):
    """Bug caught: Ctrl-C in the first seconds of these scripts (`import torch`, before errors was
    imported and its hook installed) printed Python's traceback; now one line, a SIGINT's status, as
    train.py and sample.py give."""
    (tmp_path / "torch.py").write_text("raise KeyboardInterrupt  # Ctrl-C while torch imports\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (done.returncode in (130, -signal.SIGINT), done.stderr) == (True, f"\n{script}: interrupted\n")


class FullStream(io.StringIO):
    """A stderr behind 2>/dev/full: every write fails."""

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("stderr", ["full", "closed"])
def test_export_hf_warning_nowhere_to_go_leaves_the_export_and_stdout_alone(tmp_path, monkeypatch, capsys,
                                                                           stderr):
    """Bug caught: export_hf.py 2>/dev/full of a run without tokenizer.json exited 1 (its warning
    could not be written) though the export was done; with stderr closed (2>&-, sys.stderr None) the
    warning went to stdout (print's file=None). Now the warning is dropped, stderr put back after."""
    calls = fake_checkpoint(monkeypatch, tmp_path, tokenizer=False)
    with monkeypatch.context() as m:  # (undone before capsys is)
        m.setattr(sys, "stderr", FullStream() if stderr == "full" else None)
        export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")])
        assert sys.stderr is None if stderr == "closed" else isinstance(sys.stderr, FullStream)
    assert calls == [("export", str(tmp_path / "hf"), None, False)]
    assert capsys.readouterr().out == f"exported {tmp_path / 'run' / 'last.pt'} -> {tmp_path / 'hf'}\n"


class FullFile(io.StringIO):
    """A stdout behind > FILE on a full disk: writes go to the buffer, and a flush of them fails,
    dropping them (as a BufferedWriter's failed flush does)."""

    def flush(self):
        if self.getvalue():
            self.seek(0)
            self.truncate()
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("direction", ["export", "import"])
def test_export_hf_whose_stdout_is_full_says_the_export_is_whole(tmp_path, monkeypatch, capsys, direction):
    """Bug caught: export_hf.py ... > /dev/full said only "cannot write to standard output", exit 1,
    though the export (or import) was written whole: only its closing line was lost. The status stays
    1, as for any script's standard output that fails (errors.run_script); the line says it is whole."""
    calls = fake_checkpoint(monkeypatch, tmp_path)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer.json").write_text("{}")  # (an import's: read by foreign_tokenizer, faked)
    if direction == "export":
        argv, whole = [str(tmp_path / "run"), str(hf / "new")], f"the export in {hf / 'new'} is whole"
    else:
        argv, whole = ["--import", str(hf), str(tmp_path / "ckpt")], \
            f"the checkpoint {tmp_path / 'ckpt' / 'last.pt'} is whole"
    with monkeypatch.context() as m:  # (undone before capsys is)
        m.setattr(sys, "stdout", FullFile())
        with pytest.raises(SystemExit) as e:
            errors.run_script(lambda: export_hf.main(argv), "export_hf.py")
    assert e.value.code == 1 and [c[0] for c in calls][-1:] == [direction]
    assert capsys.readouterr().err == f"export_hf.py: {NO_ROOM[:-1]} ({whole})\n"


def test_a_forced_export_replaces_a_sharded_resave_whole_and_keeps_other_files(tmp_path):
    """Bug caught: export_hf.py --force over an export transformers saved again in shards left its
    model-0000X-of-0000N.safetensors, model.safetensors.index.json and generation_config.json beside
    the new model.safetensors (a loader could take the old shards' index). Now the old export goes
    whole; a file of the user's (notes.txt) stays."""
    from conftest import debug_args

    import checkpoint
    dest = tmp_path / "hf"
    dest.mkdir()
    shards = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for name in [*shards, "generation_config.json", "special_tokens_map.json", "config.json"]:
        (dest / name).write_text("{}")
    (dest / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shards[0],
                                                                                  "b": shards[1]}}))
    (dest / "notes.txt").write_text("mine")
    (tmp_path / "outside.safetensors").write_text("not the export's")
    (dest / "odd.safetensors").write_text("{}")  # listed in the index, named otherwise
    index = json.loads((dest / "model.safetensors.index.json").read_text())
    index["weight_map"].update({"c": "odd.safetensors", "d": "../outside.safetensors"})
    (dest / "model.safetensors.index.json").write_text(json.dumps(index))
    torch.manual_seed(0)
    with pytest.raises(errors.CheckpointError, match="already holds a model"):
        checkpoint.export_hf(model.Llama4(debug_args()), dest)
    assert (dest / shards[0]).exists()  # refused without --force: all as it was
    checkpoint.export_hf(model.Llama4(debug_args()), dest, replace=True)
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "generation_config.json",
                                                      "model.safetensors", "notes.txt"]
    assert "suppress_tokens" in json.loads((dest / "generation_config.json").read_text())  # (ours, not "{}")
    assert (tmp_path / "outside.safetensors").exists()  # (a path in the index is no file of the export's)
    assert checkpoint.load_hf(dest).args.n_layers == debug_args().n_layers  # (the new weights load)


def test_export_hf_import_into_an_hf_folder_is_refused(tmp_path, capsys, monkeypatch):
    """Bug caught: `export_hf.py --import hf/a hf/b` (or into hf/a itself) put a last.pt among an
    export's files: the folder then read as a training run's, which the next export there refused
    even with --force. Now the import is refused, and nothing is written."""
    from conftest import debug_args

    import checkpoint
    monkeypatch.chdir(tmp_path)  # (the advice's checkpoints/a: one not there)
    torch.manual_seed(0)
    for name in ("a", "b"):
        checkpoint.export_hf(model.Llama4(debug_args()), tmp_path / name)
    before = sorted(p.name for p in (tmp_path / "b").iterdir())
    for dest in ("a", "b", "b/last.pt"):
        with pytest.raises(SystemExit) as e:
            export_hf.main(["--import", str(tmp_path / "a"), str(tmp_path / dest)])
        folder = tmp_path / dest.removesuffix("/last.pt")
        assert e.value.code == 1 and capsys.readouterr().err == (
            f"export_hf.py: error: {folder} is an HF folder (it holds config.json); import into a folder of "
            f"its own, e.g. checkpoints/{folder.name}\n")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before and "last.pt" not in before
    checkpoint.export_hf(model.Llama4(debug_args()), tmp_path / "b", replace=True)  # (still an export's)


def test_export_hf_import_into_a_folder_of_runs_is_refused(tmp_path, capsys):
    """Bug caught: `export_hf.py --import hf/a ck` (the folder of runs, an --out_dir, for ck/NAME) put a
    last.pt and tokenizer.json among the run folders, exit 0. Now refused, --force or not, and nothing
    is written; a run folder of its own under it is taken."""
    from conftest import debug_args

    import checkpoint
    checkpoint.export_hf(model.Llama4(debug_args()), tmp_path / "hf" / "a")
    runs = tmp_path / "ck"
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "train.json").write_text("{}")
    (runs / "r" / "run.lock").touch()
    for force in ([], ["--force"]):
        with pytest.raises(SystemExit) as e:
            export_hf.main(["--import", str(tmp_path / "hf" / "a"), str(runs), *force])
        assert e.value.code == 1 and capsys.readouterr().err == (
            f"export_hf.py: error: {runs} is a folder of runs (r), not one run's; import into a folder of "
            f"its own, e.g. {runs / 'a'}\n")
        assert [p.name for p in runs.iterdir()] == ["r"]
    export_hf.main(["--import", str(tmp_path / "hf" / "a"), str(runs / "a")])
    assert (runs / "a" / "last.pt").is_file()


def test_export_hf_import_advice_never_names_a_training_run(tmp_path, capsys, monkeypatch):
    """Bug caught: `export_hf.py --import hf/demo ck` (hf/demo exported from ck/demo) advised "import
    into a folder of its own, e.g. ck/demo": the training run, whose last.pt that import, refused
    there, replaced once --force was added as advised. An import into the HF folder itself likewise
    named checkpoints/demo. The advice names a folder not there."""
    from conftest import debug_args

    import checkpoint
    runs = tmp_path / "ck"
    for name in ("demo", "demo-import"):
        (runs / name).mkdir(parents=True)
        (runs / name / "last.pt").write_bytes(b"a training run's")
    checkpoint.export_hf(model.Llama4(debug_args()), tmp_path / "hf" / "demo")
    with pytest.raises(SystemExit):
        export_hf.main(["--import", str(tmp_path / "hf" / "demo"), str(runs)])
    assert capsys.readouterr().err.endswith(f"e.g. {runs / 'demo-import-2'}\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").symlink_to(runs)
    with pytest.raises(SystemExit):
        export_hf.main(["--import", "hf/demo", "hf/demo"])
    assert capsys.readouterr().err.endswith("e.g. checkpoints/demo-import-2\n")
    assert checkpoint.new_folder(tmp_path / "hf", "a") == tmp_path / "hf" / "a"


def test_export_hf_reads_a_quoted_tilde_as_the_home_folder_in_both_paths(tmp_path, monkeypatch):
    """Bug caught: `export_hf.py --import '~/hf/a' '~/ck/imp'` (a ~ the shell left) read the HF folder
    from home but wrote the checkpoint under a folder named ~ in the working directory; an export's
    destination alike."""
    from conftest import debug_args

    import checkpoint
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    checkpoint.export_hf(model.Llama4(debug_args()), tmp_path / "home" / "hf" / "a")
    export_hf.main(["--import", "~/hf/a", "~/ck/imp"])
    export_hf.main(["~/ck/imp", "~/hf/b"])
    assert (tmp_path / "home" / "ck" / "imp" / "last.pt").is_file()
    assert (tmp_path / "home" / "hf" / "b" / "config.json").is_file() and not (tmp_path / "~").exists()


@pytest.mark.parametrize("script, argv, said", [
    ("bench", ["--out_dir", "~/d"], "--out_dir {home}/d: bench.json there is not an earlier result"),
    ("bench_data", ["--data", "~/none.txt"], "no such file '{home}/none.txt'"),
    ("bench_data", ["--out", "~/x.txt"], "--out {home}/x.txt: the results are JSON"),
    ("bench_model", ["--out", "~/x.txt"], "--out {home}/x.txt: the results are JSON"),
    ("bench_sample", ["--out", "~/x.txt"], "--out {home}/x.txt: the results are JSON"),
    ("memory_model", ["--out", "~/x.txt"], "--out {home}/x.txt: the results are JSON"),
    ("gpu_check", ["--render", "--out", "~/none"], "--render: {home}/none does not exist"),
    ("plot_runs", ["~/d/bench.json"], "{home}/d/bench.json is a file, not a run folder"),
    ("plot_runs", ["~/d", "--out", "~/x.xyz"], "--out {home}/x.xyz"),
    ("sweep", ["--data", "~/t.txt", "--val_data", "~/t.txt", "--out", "~/d/bench.json",
               "--only", "tiny-2026-11"],
     "cannot create the folder {home}/d/bench.json: {home}/d/bench.json is a file"),
])
def test_the_scripts_read_a_quoted_tilde_as_the_home_folder(tmp_path, monkeypatch, capsys, script, argv,
                                                             said):
    """Bug caught: `bench_data.py --out '~/x.json'` (or --out=~/x.json: the shell left the ~) wrote
    ./~/x.json; bench.py, bench_model.py, bench_sample.py, memory_model.py, gpu_check.py, plot_runs.py
    and sweep.py (its --out, --out_dir, --cache_dir) alike, where train.py and compare.py read the home
    folder."""
    import importlib
    home = tmp_path / "home"
    (home / "d").mkdir(parents=True)
    (home / "d" / "bench.json").write_text("my notes")
    (home / "t.txt").write_text("once upon a time\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(f"scripts.{script}")
    if work := {"bench": "run", "sweep": "run_one"}.get(script):  # (a folder not found: they ran)
        monkeypatch.setattr(module, work, lambda *args: pytest.fail("ran before the error"))
    with pytest.raises((SystemExit, errors.UserError)) as e:  # (run_script makes a UserError one line)
        module.main(argv)
    assert said.format(home=home) in f"{getattr(e.value, 'code', e.value)}{capsys.readouterr().err}"
    assert not (tmp_path / "~").exists()


def test_export_hf_import_of_a_run_folder_or_checkpoint_says_to_drop_import(tmp_path, capsys):
    """Bug caught: `export_hf.py --import RUN_FOLDER` said "config.json is missing; is ... an exported HF
    folder?", where the user meant the export; now it says so, as the reverse mistake does."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "model.json"):
        (run / name).write_bytes(b"x")
    for source, what in [(run, "a training run's folder (it holds last.pt)"),
                         (run / "last.pt", "a checkpoint")]:
        with pytest.raises(SystemExit) as e:
            export_hf.main(["--import", str(source), str(tmp_path / "imp")])
        assert e.value.code == 1 and capsys.readouterr().err == (
            f"export_hf.py: error: {source} is {what}, not an HF folder; drop --import to export it "
            "(--import makes a checkpoint of an HF folder)\n")
    assert not (tmp_path / "imp").exists()


def test_plot_runs_draws_the_others_beside_a_run_that_has_logged_nothing_yet(tmp_path, capsys):
    """Bug caught: `plot_runs.py ck/old ck/new` while ck/new's train.py was still reading its data (its
    run.lock and settings written, no metrics.jsonl yet) said "ck/new/metrics.jsonl does not exist; is
    ck/new a run folder?", exit 1, and drew nothing; an empty metrics.jsonl was a warning already."""
    old, new = fake_run(tmp_path / "old"), tmp_path / "new"
    new.mkdir()
    for name in ("run.lock", "model.json", "train.json"):
        (new / name).write_text("{}")
    plot_runs.main([str(old), str(new), "--out", str(tmp_path / "p.png")])
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "p.png") and (tmp_path / "p.png").exists()
    assert err == "plot_runs.py: warning: new has no records yet: it is not in the plot\n"
    with pytest.raises(SystemExit) as e:  # alone: nothing to plot, said as such
        plot_runs.main([str(new), "--out", str(tmp_path / "q.png")])
    assert "no train or validation records in" in str(e.value.code)
    for name in ("run.lock", "model.json", "train.json"):
        (new / name).unlink()
    with pytest.raises(SystemExit) as e:  # a folder train.py never ran in: still asked about
        plot_runs.main([str(new), "--out", str(tmp_path / "q.png")])
    assert str(e.value.code).endswith(f"is {new} a run folder?")


class ParserSeen(BaseException):
    """Raised where a script's --help would print: the parser, caught before any work."""


@pytest.mark.parametrize("script", ["sample", "bench", "bench_data", "bench_model", "bench_sample", "compare",
                                    "count_params", "export_hf", "gpu_check", "memory_model", "plot_runs",
                                    "sweep", "ab_trees"])
def test_every_option_of_every_script_says_what_it_does_in_help(script, monkeypatch):
    """Bug caught: `sweep.py --help` listed --screen_minutes, --confirm_minutes, --data, --val_data,
    --out_dir and --cache_dir, and `plot_runs.py --help` --x and --title, with no word of what they
    do (nor their defaults)."""
    import argparse
    import importlib

    def seen(self, *args, **kwargs):
        raise ParserSeen(self)
    monkeypatch.setattr(argparse.ArgumentParser, "print_help", seen)
    main = importlib.import_module(script if script == "sample" else f"scripts.{script}").main
    with pytest.raises(ParserSeen) as e:
        main(["--help"])
    parser = e.value.args[0]
    bare = [a.option_strings[-1] if a.option_strings else a.dest for a in parser._actions if not a.help]
    assert bare == [], f"{script}.py --help says nothing of {', '.join(bare)}"


def test_plot_runs_takes_a_runs_name_with_its_metrics_jsonl_under_checkpoints(tmp_path, monkeypatch, capsys):
    """Bug caught: `plot_runs.py a b/metrics.jsonl` (run names under checkpoints/, the second with its
    log, as the README has a run's name or its metrics.jsonl stand for its folder) said
    "b/metrics.jsonl/metrics.jsonl does not exist; is b/metrics.jsonl a run folder?"."""
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "checkpoints" / "a"), fake_run(tmp_path / "checkpoints" / "b")
    plot_runs.main(["a", "b/metrics.jsonl", "--out", "p.png"])
    assert capsys.readouterr().out == "p.png\n"
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def lowercasing_export(tmp_path):
    """An export (hf/a) of a small model with a tokenizer that lower-cases (one an earlier version
    trained with: it does not give back its text, which training refuses); its tokenizer's path."""
    import checkpoint
    from tokenizer import Tokenizer
    spec = json.loads(Tokenizer.train(["aaaa bbbb"] * 20, 266).tok.to_str())
    spec["normalizer"] = {"type": "Lowercase"}
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(errors.DataError, match="which training and evaluation refuse"):
        Tokenizer.load(path)
    small = model.Llama4(config.ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=266,
                                          n_experts=2, max_seq_len=16))
    checkpoint.export_hf(small, tmp_path / "hf" / "a", path)
    return path


def test_export_hf_reads_a_tokenizer_that_changes_text_as_sampling_does(tmp_path, capsys):
    """Holds: export_hf.py reads the run's tokenizer.json (export) and the HF folder's (import) as
    sample.py does (exact=False), not as training does: a tokenizer that does not give back its text
    imports without a warning, and the checkpoint exports again with it."""
    from tokenizer import Tokenizer
    path = lowercasing_export(tmp_path)
    capsys.readouterr()
    export_hf.main(["--import", str(tmp_path / "hf" / "a"), str(tmp_path / "ck" / "imp")])
    assert capsys.readouterr().err == ""
    export_hf.main([str(tmp_path / "ck" / "imp"), str(tmp_path / "hf" / "b")])
    assert capsys.readouterr().err == ""
    again = Tokenizer.load(tmp_path / "hf" / "b" / "tokenizer.json", exact=False)
    assert again.hash == Tokenizer.load(path, exact=False).hash


def test_export_hf_checks_the_destination_with_the_runs_tokenizer_before_loading(tmp_path, monkeypatch,
                                                                                  capsys):
    """Holds: export_hf.py checks the destination against the run's own tokenizer.json before it
    reads the checkpoint: a folder that holds only a copy of that tokenizer.json takes the export
    without --force (not refused as another tokenizer to remove), and one that holds an export's
    tokenizer_config.json is refused before the (maybe large) checkpoint is loaded."""
    import shutil
    lowercasing_export(tmp_path)
    export_hf.main(["--import", str(tmp_path / "hf" / "a"), str(tmp_path / "ck" / "imp")])
    (tmp_path / "hf" / "c").mkdir()
    shutil.copy(tmp_path / "ck" / "imp" / "tokenizer.json", tmp_path / "hf" / "c")
    export_hf.main([str(tmp_path / "ck" / "imp"), str(tmp_path / "hf" / "c")])
    assert (tmp_path / "hf" / "c" / "config.json").is_file()
    (tmp_path / "hf" / "d").mkdir()
    (tmp_path / "hf" / "d" / "tokenizer_config.json").write_text("{}")
    monkeypatch.setattr(export_hf.checkpoint, "load_model", lambda path: pytest.fail("loaded first"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        export_hf.main([str(tmp_path / "ck" / "imp"), str(tmp_path / "hf" / "d")])
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith(f"export_hf.py: error: {tmp_path / 'hf' / 'd'} already holds "
                                              "an export's tokenizer_config.json; pass --force")


def test_count_params_rows_put_the_vision_stub_apart(capsys):
    """Holds: count_params.py's rows give the vision stub its own rows (encoder + adapter, and the
    projector), which with the text model's sum to the whole: its attention, norms and MLPs are not
    counted among the text model's kinds; a dense layer's SwiGLU has its row, not "other"."""
    argv = ["--preset", "debug", "--vision", "true", "--moe_every", "2"]
    args = config.parse_args([config.ModelArgs], argv, prog="count_params.py")[1][0]
    rows, counts = count_params.table(args)
    rows = dict(rows)
    vision = rows["vision encoder + adapter"] + rows["multimodal projector"]
    assert vision == counts["vision"] > 0 and "other" not in rows and rows["dense SwiGLU layers"] > 0
    assert sum(rows.values()) - vision == counts["text"]


def test_plot_runs_takes_a_run_folder_named_metrics_jsonl_as_itself(tmp_path):
    """Holds: a run folder that is named metrics.jsonl (holding its own metrics.jsonl) is that run, not
    its parent folder, which only a metrics.jsonl file (or a folder so named without one) stands for."""
    run = fake_run(tmp_path / "metrics.jsonl")
    p = config.Parser(prog="plot_runs.py")
    assert plot_runs.run_folder(p, str(run)) == str(run)
    assert plot_runs.run_folder(p, str(run / "metrics.jsonl")) == str(run)


def test_plot_runs_checks_the_math_of_a_title_that_also_has_an_escaped_dollar(capsys):
    """Holds: check_title counts only the unescaped $ (an even count is math): a title with a \\$ beside
    $...$ math that matplotlib cannot parse is refused in one line, before any work."""
    p = config.Parser(prog="plot_runs.py")
    with pytest.raises(SystemExit) as e:
        plot_runs.check_title(p, r"costs \$5: $\foo$")
    assert e.value.code == 2 and "matplotlib cannot read its $...$ math" in capsys.readouterr().err
    plot_runs.check_title(p, r"costs \$5: $x^2$")  # (math it can read: taken)
