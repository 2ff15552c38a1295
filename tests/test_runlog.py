"""runlog.py: what metrics.jsonl and the W&B run get, row by row (fast: no training)."""

import json
import math
import os
import stat
import sys
import tempfile
from types import SimpleNamespace

import pytest

import runlog
from config import TrainArgs
from errors import RunError, StorageError


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
        "step": 7, "train/loss": 2.5, "train/tokens": 1024, "train/window_steps": 4, "tokens": 1024,
        "experts/layer0/expert0": 0.75, "experts/layer0/expert1": 0.25, "experts/layer1/expert0": 0.375,
        "experts/layer1/expert1": 0.625, "router_entropy/layer0": 0.625, "router_entropy/layer1": 0.25}
    assert runlog._wandb_row({"kind": "val", "step": 8, "bits_per_byte": 1.5, "val_tokens": 900}) == {
        "step": 8, "val/bits_per_byte": 1.5, "val/val_tokens": 900}


def test_train_and_val_rows_share_a_tokens_value_that_a_wandb_chart_can_take_as_its_x_axis(tmp_path):
    """Bug caught: W&B rows held the tokens seen only as train/tokens and val/tokens, so no one x axis
    put a run's training and validation curves on tokens (runs of other batch sizes compared at equal
    tokens, as scripts/plot_runs.py draws them): every train and val row holds `tokens` too, defined
    against the step, and the keys W&B histories have had stay (step stays the charts' x axis)."""
    axes = {}

    class Run(Rows):
        def define_metric(self, name, step_metric=None):
            axes[name] = step_metric
    run = Run()
    m = runlog.Metrics(tmp_path, run, None)
    m.write({"kind": "train", "step": 4, "tokens": 2048, "lm_loss": 3.0})
    m.write({"kind": "val", "step": 4, "tokens": 2048, "bits_per_byte": 1.5})
    assert run.rows == [{"step": 4, "tokens": 2048, "train/tokens": 2048, "train/lm_loss": 3.0},
                        {"step": 4, "tokens": 2048, "val/tokens": 2048, "val/bits_per_byte": 1.5}]
    assert axes["tokens"] == axes["train/*"] == axes["val/*"] == "step" and axes["step"] is None


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


def test_the_expert_panels_are_named_by_the_models_layer_in_a_backfill_too(tmp_path):
    """Bug caught: W&B's expert and router entropy panels counted MoE layers alone (with --moe_every 2,
    model layers 1 and 3 were layer0 and layer1, which scripts/compare.py labels layer 1 and 3); with
    moe_every 1 the names stay those of every W&B history so far."""
    rec = {"kind": "train", "step": 1, "expert_share": [[0.75, 0.25], [0.5, 0.5]],
           "router_entropy": [0.6, 0.7]}
    write_records(tmp_path, [rec])
    run = Rows()
    runlog.Metrics(tmp_path, run, 1, log=lambda msg: None, backfill=True, moe_every=2)
    assert run.rows == [{"step": 1, "experts/layer1/expert0": 0.75, "experts/layer1/expert1": 0.25,
                         "experts/layer3/expert0": 0.5, "experts/layer3/expert1": 0.5,
                         "router_entropy/layer1": 0.6, "router_entropy/layer3": 0.7}]
    assert runlog._wandb_row(rec) == runlog._wandb_row(rec, moe_every=1) == {
        "step": 1, "experts/layer0/expert0": 0.75, "experts/layer0/expert1": 0.25,
        "experts/layer1/expert0": 0.5, "experts/layer1/expert1": 0.5,
        "router_entropy/layer0": 0.6, "router_entropy/layer1": 0.7}


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


# --- the loss plot and plot_runs ---------------------------------------------------------------

def drawn(monkeypatch) -> list:
    """(figure, left axes, right axes) of each plot_runs drawing, kept after the figure is closed."""
    figures, draw = [], runlog._draw

    def spy(fig, left, right, *args):
        figures.append((fig, left, right))
        return draw(fig, left, right, *args)
    monkeypatch.setattr(runlog, "_draw", spy)
    return figures


def a_run(folder, steps=(5, 10)):
    """A run folder whose metrics.jsonl holds train records at `steps` and one evaluation at step 10."""
    folder.mkdir(parents=True)
    write_records(folder, [{"kind": "train", "step": s, "tokens": 256 * s, "minutes": s / 60, "loss": 9.0,
                            "lm_loss": 6 - s / 10} for s in steps]
                  + [{"kind": "val", "step": 10, "tokens": 2560, "minutes": 1 / 6, "nats_per_token": 5.25,
                      "bits_per_byte": 3.5, "val_bytes": 1000}])
    return folder


def test_the_loss_plot_draws_lm_loss_nats_and_bits_per_byte_with_a_legend_and_the_runs_title(
        tmp_path, monkeypatch):
    """Catches the validation curve beside the training loss drawn as bits/byte (or the right panel's
    as nats/token) or in the training curve's colour, the training curve left out of the legend, and
    the loss plot drawn without its title (the run's name)."""
    figures = drawn(monkeypatch)
    run, said = a_run(tmp_path / "r"), []
    assert runlog.plot_loss(run, "loss.png", said.append) == run / "loss.png" and said == []
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    fig, left, right = figures[0]
    assert fig.get_suptitle() == "r: loss"
    assert [list(line.get_ydata()) for line in left.lines] == [[5.5, 5.0], [5.25]]
    assert [list(line.get_ydata()) for line in right.lines] == [[3.5]]
    assert left.lines[0].get_color() != left.lines[1].get_color()
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["r", "validation"]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["r"]


def test_a_run_named_with_dollar_signs_is_drawn_with_its_name_as_written(tmp_path, monkeypatch):
    """Bug caught: matplotlib reads the text between two $ as math, so a run named 'lr$\\alpha$' was
    drawn with an alpha, and one named 'a$\\b$' (math it cannot parse) failed every plot of the run:
    train.py's loss.png at each evaluation ('plot: could not draw ...'), and plot_runs.py."""
    figures, other = drawn(monkeypatch), a_run(tmp_path / "s")
    for name in ["a$\\b$", "lr$\\alpha$", "one$"]:
        run, said, written = a_run(tmp_path / name), [], name.replace("$", "\\$")
        assert runlog.plot_loss(run, "loss.png", said.append) == run / "loss.png" and said == []
        fig, left, _ = figures[-1]
        assert fig.get_suptitle() == f"{written}: loss"
        assert left.get_legend().get_texts()[0].get_text() == written
        assert runlog.plot_runs([run, other], tmp_path / "p.png") == tmp_path / "p.png"


def test_a_single_train_record_is_drawn_as_a_point(tmp_path, monkeypatch):
    """Catches a run's one train record (a run stopped after its first log step) drawn as a line
    of one point, which shows nothing."""
    figures = drawn(monkeypatch)
    runlog.plot_runs([a_run(tmp_path / "r", steps=(5,))], tmp_path / "p.png")
    _, left, _ = figures[0]
    assert left.lines[0].get_marker() == "o"
    runlog.plot_runs([tmp_path / "r", a_run(tmp_path / "s")], tmp_path / "p.png")
    _, left, _ = figures[1]
    assert [line.get_marker() for line in left.lines] == ["o", "None"]


def test_a_run_with_no_records_is_named_and_runs_of_one_name_are_told_apart(tmp_path, monkeypatch):
    """Bug caught: a run whose metrics.jsonl is empty left out of the plot without a word; two runs named
    r in two folders drawn with one legend entry twice."""
    figures, warned = drawn(monkeypatch), []
    a_run(tmp_path / "x" / "r")
    a_run(tmp_path / "y" / "r")
    (tmp_path / "e").mkdir()
    write_records(tmp_path / "e", [])
    runlog.plot_runs([tmp_path / "x" / "r", tmp_path / "y" / "r", tmp_path / "e"], tmp_path / "p.png",
                     warn=warned.append)
    assert warned == ["e has no records yet: it is not in the plot"]
    _, left, _ = figures[0]
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["x/r", "y/r"]
    odd = tmp_path / os.fsdecode(b"caf\xe9")  # (a folder made outside train.py: its name not UTF-8)
    a_run(odd / "r")
    runlog.plot_runs([odd / "r", tmp_path / "x" / "r"], tmp_path / "q.png")  # (matplotlib's TypeError once)
    _, left, _ = figures[1]
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["caf\ufffd/r", "x/r"]


def test_a_run_named_with_an_emoji_is_drawn_without_a_font_warning(tmp_path):
    """Bug caught: train.py --run "🐸 frog" printed matplotlib's two-line UserWarning (Glyph 128056
    missing from font(s) DejaVu Sans, and the source line) into the run's log at its first plot; the
    plot is still written, with the font's box for the missing character."""
    import warnings
    run = a_run(tmp_path / "\U0001f438 frog 中文")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert runlog.plot_loss(run, "loss.png", print) == run / "loss.png"
    assert [str(w.message) for w in caught] == []
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_eleven_runs_are_drawn_in_eleven_colour_and_line_style_pairs(tmp_path, monkeypatch):
    """Bug caught: the 11th run took the 1st's colour and line (matplotlib's cycle has 10 colours), so
    the two could not be told apart in the plot or its legend."""
    from matplotlib.colors import to_hex
    figures = drawn(monkeypatch)
    runs = [a_run(tmp_path / f"r{i}") for i in range(11)]
    runlog.plot_runs(runs, tmp_path / "p.png")
    for ax in figures[0][1:]:  # (the colour as drawn: "C10" is drawn as "C0")
        looks = [(to_hex(line.get_color()), line.get_linestyle()) for line in ax.lines]
        assert len(looks) == 11 and len(set(looks)) == 11, looks


def test_a_resumed_log_that_cannot_be_read_is_one_line(tmp_path):
    """Bug caught: a metrics.jsonl that is a folder (or unreadable) was a traceback at resume."""
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(RunError, match=r"^cannot read .*metrics.jsonl \(Is a directory\); make it"):
        runlog.resumed_records(tmp_path / "metrics.jsonl")


def test_a_plot_is_written_in_a_new_folder_in_the_format_its_name_asks_for_in_any_case(tmp_path):
    """Catches plot_runs failing on an --out whose folder does not exist yet, and an upper-case
    suffix (runs.SVG) written as a PNG."""
    out = runlog.plot_runs([a_run(tmp_path / "r")], tmp_path / "new" / "deeper" / "runs.SVG")
    assert out == tmp_path / "new" / "deeper" / "runs.SVG"
    assert out.read_text().lstrip().startswith("<?xml")


def test_a_dense_run_is_labelled_dense(tmp_path):
    """Catches run_label calling a dense model (no MoE layer) by its unused expert count."""
    run = a_run(tmp_path / "r")
    (run / "model.json").write_text(json.dumps({"n_layers": 2, "moe_every": 3}))
    (run / "train.json").write_text(json.dumps({}))
    label = runlog.run_label(run)
    assert label.startswith("r: ") and " L2 dense, vocab " in label and "top-" not in label, label


def test_a_fine_tune_is_labelled_with_the_checkpoint_it_started_from(tmp_path):
    """Bug caught: a run started with --init_from (train.json's init_from) labelled as a run from
    scratch, so a fine-tune overlaid on its parent read as two runs from scratch; the label names the
    checkpoint short (its folder and file), drawable where its name is not UTF-8."""
    run = a_run(tmp_path / "ft")
    (run / "model.json").write_text(json.dumps({}))
    (run / "train.json").write_text(json.dumps({"init_from": str(tmp_path / "ckpt" / "base" / "last.pt")}))
    assert runlog.run_label(run).startswith("ft (from base/last.pt): d"), runlog.run_label(run)
    (run / "train.json").write_text(json.dumps({"init_from": "/w/caf\udce9/last.pt"}))  # (mkdir $'caf\xe9')
    assert runlog.run_label(run).startswith("ft (from caf\ufffd/last.pt): d")
    (run / "train.json").write_text(json.dumps({"init_from": ""}))  # (a run from scratch says nothing)
    assert runlog.run_label(run).startswith("ft: d")
    (run / "train.json").write_text(json.dumps({"init_from": "/w/\ud800/last.pt"}))  # (hand-edited)
    assert runlog.run_label(run) == "ft"


# --- starting W&B -------------------------------------------------------------------------------

def wandb_module(init, **more):
    """A wandb module whose init is `init` (setup does nothing; Settings are the dict of their fields)."""
    return SimpleNamespace(**{"init": init, "Settings": lambda **k: k, "setup": lambda settings=None: None,
                              **more})


def fake_wandb(monkeypatch, tmp_path) -> list:
    """A wandb module whose init keeps its arguments; the list of them."""
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        return Rows()
    monkeypatch.setitem(sys.modules, "wandb", wandb_module(init))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    return calls


def test_start_wandb_gives_init_the_runs_names_id_folder_and_settings(tmp_path, monkeypatch):
    """Catches the run's W&B run not resumed (resume other than "allow", or no saved id), started
    without its settings as config or outside the run folder, and --wandb_name or --wandb_project
    ignored."""
    calls = fake_wandb(monkeypatch, tmp_path)
    settings = {"wandb_id": "abc", "lr": 0.5}
    targs = TrainArgs(wandb_mode="online", wandb_project="proj", wandb_group="g", wandb_name="mine")
    assert runlog.start_wandb(targs, tmp_path / "r", settings, log=print).id == "w"
    (call,) = calls
    assert {k: v for k, v in call.items() if k != "settings"} == {
        "mode": "online", "project": "proj", "group": "g", "name": "mine", "id": "abc", "resume": "allow",
        "dir": str(tmp_path / "r"), "config": settings}
    runlog.start_wandb(TrainArgs(wandb_mode="online"), tmp_path / "r", {}, log=print)
    assert calls[1]["name"] == "r" and calls[1]["group"] is None and calls[1]["id"] is None


def test_a_resume_under_another_wandb_entity_starts_a_new_wandb_run(tmp_path, monkeypatch):
    """Bug caught: a resume with another WANDB_ENTITY (or entity in W&B's settings file) than the
    checkpoint's W&B run's went on with its id there, which online is an empty run of that id in the
    other entity: it starts a new W&B run (train.py gives it the whole history), with a line. With no
    entity set now, the run's own entity is given (not the login's default, which may be another);
    with the checkpoint's unknown (an earlier version's), init is called as before."""
    calls, now = fake_wandb(monkeypatch, tmp_path), {}

    def setup(settings=None):
        return SimpleNamespace(settings=SimpleNamespace(entity=now.get("entity")))
    monkeypatch.setattr(sys.modules["wandb"], "setup", setup)
    said, targs = [], TrainArgs(wandb_mode="online", wandb_project="proj")

    def start(entity_now, saved):
        now["entity"] = entity_now
        runlog.start_wandb(targs, tmp_path / "r", {"wandb_id": "abc", "wandb_entity": saved}, said.append)
        call = calls.pop()
        return call["id"], call.get("entity")
    assert start("team-b", "team-a") == (None, None)
    assert said[:1] == ["wandb: W&B run abc is in entity team-a, not team-b (WANDB_ENTITY or W&B's "
                        "settings); a new W&B run in team-b gets the history from the start (the old one is "
                        "left as it was)"]
    said.clear()
    assert start("team-a", "team-a") == start(None, "team-a") == ("abc", "team-a")
    assert start("team-b", None) == ("abc", None) and not any("entity" in line for line in said)


def test_a_new_wandb_runs_line_on_older_offline_folders_fits_the_run_and_never_crashes_it(tmp_path,
                                                                                          monkeypatch):
    """Bug caught: say_superseded resolved each offline-run-* in the run folder's wandb folder
    unguarded, so one that could not be read (a symlink loop: resolve's RuntimeError; an I/O error
    from the glob) crashed the run while it started its logs, over advice for its dashboard; and a new
    W&B run online was told to "upload only this one", which uploads as it goes (the older folders
    need no upload)."""
    folder = tmp_path / "wandb"
    own, older = folder / "offline-run-2", folder / "offline-run-1"
    own.mkdir(parents=True)
    older.mkdir()
    said, offline = [], SimpleNamespace(offline=True, settings=SimpleNamespace(sync_dir=str(own)))
    runlog.say_superseded(offline, tmp_path, said.append)
    online = SimpleNamespace(offline=False, settings=SimpleNamespace(sync_dir=str(folder / "run-3")))
    runlog.say_superseded(online, tmp_path, said.append)
    cases = [(1, "", "upload only this one"), (2, "s", "they need no upload")]
    assert said == [f"wandb: this W&B run gets every record from the start; the {n} older offline folder{s} "
                    f"in {folder} (offline-run-*) hold{'' if s else 's'} earlier sessions' records: {fix} "
                    "(or delete them)" for n, s, fix in cases]
    (folder / "offline-run-0").symlink_to("offline-run-0")  # (a loop)
    runlog.say_superseded(online, tmp_path, said.append)
    def glob(self, pattern):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(runlog.Path, "glob", glob)
    runlog.say_superseded(online, tmp_path, said.append)
    assert len(said) == 2


def test_a_checkpoint_holds_the_entity_of_the_wandb_run_it_may_go_on_with(tmp_path):
    """Catches Metrics.resumable_entity other than the resumable W&B run's entity (what W&B's server
    named: a resume compares it with the entity set then): none for an offline run (no id saved), one
    that names none, or one that fails (no id saved either)."""
    run = Rows()
    assert runlog.Metrics(tmp_path, run, None).resumable_entity is None  # (no entity attribute)
    run.entity = "team-a"
    assert runlog.Metrics(tmp_path, run, None).resumable_entity == "team-a"
    run.offline = True
    assert runlog.Metrics(tmp_path, run, None).resumable_entity is None
    run.offline, run.entity = False, ""
    assert runlog.Metrics(tmp_path, run, None).resumable_entity is None
    assert runlog.Metrics(tmp_path, None, None).resumable_entity is None


def test_wandb_mode_auto_follows_wandb_mode_and_then_the_login(tmp_path, monkeypatch):
    """Catches --wandb_mode auto going online without a login (or offline with one: WANDB_API_KEY
    or ~/.netrc), ignoring W&B's own WANDB_MODE, and starting a W&B run when it says disabled."""
    calls = fake_wandb(monkeypatch, tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    unset(monkeypatch, "WANDB_MODE", "WANDB_API_KEY", "NETRC")

    def mode():
        runlog.start_wandb(TrainArgs(wandb_mode="auto"), tmp_path / "r", {}, log=print)
        return calls.pop()["mode"]
    assert mode() == "offline"  # not logged in
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert mode() == "online"  # `wandb login` wrote its key there
    for how in ("disabled", "auto"):
        monkeypatch.setenv("WANDB_MODE", "disabled")
        assert runlog.start_wandb(TrainArgs(wandb_mode=how), tmp_path / "r", {}, log=print) is None
    assert calls == []


def test_no_image_is_logged_for_a_plot_that_failed(tmp_path, monkeypatch):
    """Catches log_image logging an image of a plot that was not drawn (plot_loss gave None): W&B's
    Image of a missing file raises, and W&B logging ended over a failed plot."""
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Image=lambda path: f"image of {path}"))
    run = Rows()
    m = runlog.Metrics(tmp_path, run, None)
    m.log_image("loss_plot", None, 2)
    assert run.rows == [] and m.wandb_id == "w"


def unset(monkeypatch, *names):
    """Unset each of `names` for the test, so that what the code under test sets there is undone too
    (monkeypatch.delenv of an unset variable records nothing to undo)."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_a_temp_folder_of_another_users_is_not_used(tmp_path, monkeypatch):
    """Catches writable_home_dirs pointing matplotlib's folder at <temp>/llama4-tinystories-<uid>
    when another user made that folder (theirs to change under us): the library's own fallback."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    unset(monkeypatch, "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)  # the folder is not this uid's
    runlog.writable_home_dirs("MPLCONFIGDIR")
    assert "MPLCONFIGDIR" not in os.environ


def test_a_relative_xdg_folder_or_home_moves_the_cache_to_ours(tmp_path, monkeypatch):
    """Catches a relative XDG_CACHE_HOME / XDG_CONFIG_HOME (or HOME="") taken as a folder under the
    working directory, where the libraries would then leave their caches, rather than as unusable."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    unset(monkeypatch, "MPLCONFIGDIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    runlog.writable_home_dirs("MPLCONFIGDIR")
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / f"llama4-tinystories-{os.getuid()}" / "matplotlib")


def test_a_run_without_wandb_notes_no_unfinished_wandb_run(tmp_path):
    """Catches finish() of a run without W&B (off, or failed before the end) listing an id in
    wandb_unfinished.txt ("None"): a note of a W&B run that does not exist."""
    runlog.Metrics(tmp_path, None, None).finish(exit_code=1)
    assert not (tmp_path / runlog.UNFINISHED).exists() and runlog.unfinished_wandb(tmp_path) == set()


# --- a third mutation audit -----------------------------------------------------------------------

def test_our_temp_folder_is_private_to_its_user(tmp_path, monkeypatch):
    """Catches <temp>/llama4-tinystories-<uid> made with the default mode (0o755 under umask 022):
    other users could read what matplotlib and W&B keep there."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    unset(monkeypatch, "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    old = os.umask(0o022)
    try:
        runlog.writable_home_dirs("MPLCONFIGDIR")
    finally:
        os.umask(old)
    ours = tmp_path / f"llama4-tinystories-{os.getuid()}"
    assert os.environ["MPLCONFIGDIR"] == str(ours / "matplotlib")
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700


def test_a_netrc_that_cannot_be_parsed_is_no_login(tmp_path, monkeypatch):
    """Catches a ~/.netrc that netrc cannot parse (another tool's syntax) crashing --wandb_mode auto
    with a traceback, rather than counting as no login (offline)."""
    calls = fake_wandb(monkeypatch, tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    unset(monkeypatch, "WANDB_MODE", "WANDB_API_KEY", "NETRC")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  bogus x\n")
    assert runlog.wandb_logged_in() is False
    runlog.start_wandb(TrainArgs(wandb_mode="auto"), tmp_path / "r", {}, log=print)
    assert [call["mode"] for call in calls] == ["offline"]


def test_a_login_to_a_wandb_server_of_ones_own_or_in_another_netrc_file_is_a_login(tmp_path, monkeypatch):
    """`wandb login --host https://wandb.example.com` writes that host's netrc entry, which W&B reads
    for WANDB_BASE_URL; W&B reads the netrc file NETRC names, and WANDB_IDENTITY_TOKEN_FILE logs in too.

    Bug caught: --wandb_mode auto read only ~/.netrc's api.wandb.ai and WANDB_API_KEY, so it logged
    such runs offline, saying "not logged in"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    unset(monkeypatch, "WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE")
    (tmp_path / ".netrc").write_text("machine wandb.example.com\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert runlog.wandb_logged_in() is False  # (a key for another server)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert runlog.wandb_logged_in() is True
    monkeypatch.delenv("WANDB_BASE_URL")
    (tmp_path / ".netrc").rename(tmp_path / "netrc")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert runlog.wandb_logged_in() is False
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert runlog.wandb_logged_in() is True
    monkeypatch.delenv("NETRC")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
    assert runlog.wandb_logged_in() is True


def test_wandb_is_started_silent(tmp_path, monkeypatch):
    """Catches wandb.init started without silent=True: W&B's banner and its sync hints in every run's
    output, between the training lines."""
    calls = fake_wandb(monkeypatch, tmp_path)
    runlog.start_wandb(TrainArgs(wandb_mode="offline"), tmp_path / "r", {}, log=print)
    assert calls[0]["settings"]["silent"] is True


def test_online_without_a_login_in_a_terminal_never_prompts_and_the_run_logs_offline(tmp_path, monkeypatch):
    """Bug caught: --wandb_mode online without a login, in a terminal, showed W&B's "(1) Create a W&B
    account ... Enter your choice:" prompt and waited for ever: init's silent=True applies after its
    login, and W&B's prompt asks only where the process's W&B is not silent (its first setup's
    settings). Now wandb.setup(silent) comes first, the missing login is W&B's UsageError (as without
    a terminal), and the run logs offline, saying why."""
    calls, sync = [], tmp_path / "r" / "wandb" / "offline-run-1"

    class UsageError(Exception):
        pass

    def setup(settings=None):
        calls.append(("setup", (settings or {}).get("silent")))

    def init(mode, **kwargs):
        if mode == "online":  # no credentials: W&B prompts in a terminal unless silent from the start
            silent = next((how for what, how in calls if what == "setup"), None)
            calls.append(("init", "raises UsageError" if silent else "prompts and waits for ever"))
            raise UsageError("No API key configured. Use `wandb login` to log in.")
        calls.append(("init", mode))
        return SimpleNamespace(id="o", offline=True, settings=SimpleNamespace(sync_dir=str(sync)))
    monkeypatch.setitem(sys.modules, "wandb", wandb_module(init, setup=setup))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    lines = []
    run = runlog.start_wandb(TrainArgs(wandb_mode="online"), tmp_path / "r", {}, log=lines.append)
    assert run.offline and [c for c in calls if c[0] == "init"] == [("init", "raises UsageError"),
                                                                   ("init", "offline")]
    assert calls[0] == ("setup", True)
    why = "UsageError: No API key configured. Use `wandb login` to log in."
    assert lines[1:] == [f"wandb: online start failed ({why}); logging offline instead",
                         f"wandb: logging offline; upload it later with: wandb sync {sync}"]


def test_a_wandb_run_started_silent_says_where_it_is_in_one_line(tmp_path, monkeypatch):
    """Bug caught: W&B is started silent (its banner hid the training lines), so nothing said where a
    run went: now the page of an online run, or the `wandb sync` command of an offline one (its folder
    relative to the current one where inside it, quoted for a shell), with why it is offline when
    --wandb_mode auto chose it (no login)."""
    monkeypatch.chdir(tmp_path)
    unset(monkeypatch, "WANDB_MODE", "WANDB_API_KEY", "NETRC")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    folder = tmp_path / "my r" / "wandb" / "o-1"
    offline = SimpleNamespace(id="o", offline=True, settings=SimpleNamespace(sync_dir=str(folder)))
    online = SimpleNamespace(id="w", offline=False, url="https://wandb.ai/me/llama4/runs/w")

    def said(how, run):
        wandb = wandb_module(lambda **k: run)
        monkeypatch.setitem(sys.modules, "wandb", wandb)
        lines = []
        assert runlog.start_wandb(TrainArgs(wandb_mode=how), tmp_path / "r", {}, log=lines.append) is run
        return lines[1:] if how == "online" else lines  # (after "connecting")
    sync = "upload it later with: wandb sync 'my r/wandb/o-1'"
    assert said("offline", offline) == [f"wandb: logging offline; {sync}"]
    why = "(not logged in: `wandb login` for online)"
    assert said("auto", offline) == [f"wandb: logging offline {why}; {sync}"]
    assert said("online", online) == ["wandb: https://wandb.ai/me/llama4/runs/w"]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # outside the current folder: the whole path
    assert said("offline", offline) == [f"wandb: logging offline; {sync.split(' wandb sync')[0]} wandb sync "
                                        f"'{folder}'"]


def test_a_resumed_log_refuses_a_record_without_a_kind_as_one_line(tmp_path):
    """Catches a line with a step but no kind (added by hand) crashing the resume with a KeyError
    traceback, rather than the one line that names it, its line number and the fix."""
    write_records(tmp_path, [{"kind": "train", "step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}])
    with pytest.raises(RunError, match=r'metrics.jsonl: line 2 is a record without a step and kind '
                                        r'\(\{"step": 2, "loss": 1.0\}\), '
                                        r"which train.py never writes; remove that line$"):
        runlog.Metrics(tmp_path, None, 2, log=lambda msg: None)


def test_a_resume_drops_the_record_at_its_step_of_the_kind_it_writes_again(tmp_path):
    """Catches open_window and eval_due swapped: a resume with an evaluation put off dropped the
    whole train record at its checkpoint's step (never written again) and kept the val record it
    writes again (twice in metrics.jsonl); or a record at the step dropped with neither."""
    records = [{"kind": "train", "step": 1}, {"kind": "train", "step": 2}, {"kind": "val", "step": 2},
               {"kind": "train", "step": 3}]
    for how, kept in [({}, [("train", 1), ("train", 2), ("val", 2)]),
                      ({"eval_due": True}, [("train", 1), ("train", 2)]),
                      ({"open_window": True}, [("train", 1), ("val", 2)])]:
        write_records(tmp_path, records)
        runlog.Metrics(tmp_path, None, 2, log=lambda msg: None, **how)
        train, val = runlog.read_metrics(tmp_path)
        assert [(r["kind"], r["step"]) for r in train + val] == kept, how


def test_a_wandb_start_that_fails_is_one_line_per_try_naming_the_error(tmp_path, monkeypatch):
    """Catches a failed start reported with the error's whole text (many lines: W&B's errors carry its
    service's traceback) or without its type, and the offline retry resuming the online run's id."""
    tries = []

    def init(**kwargs):
        tries.append((kwargs["mode"], kwargs["id"]))
        raise RuntimeError("cannot reach api.wandb.ai\nTraceback (most recent call last):\n  ...")
    monkeypatch.setitem(sys.modules, "wandb", wandb_module(init))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    lines = []
    targs = TrainArgs(wandb_mode="online")
    assert runlog.start_wandb(targs, tmp_path / "r", {"wandb_id": "abc"}, log=lines.append) is None
    assert tries == [("online", "abc"), ("offline", None)]
    why = "(RuntimeError: cannot reach api.wandb.ai)"
    assert lines == [lines[0], f"wandb: online start failed {why}; logging offline instead",
                     f"wandb: offline start failed {why}; this run logs to metrics.jsonl only; --wandb_mode "
                     "disabled silences this"]


def test_a_resume_says_how_many_records_it_dropped_and_kept_and_nothing_when_none(tmp_path):
    """Catches the resume's line counting the records kept as those dropped (or the other way round),
    and a line where nothing was dropped."""
    write_records(tmp_path, [{"kind": "train", "step": s} for s in range(1, 6)])
    said = []
    runlog.Metrics(tmp_path, None, 5, log=said.append)
    assert said == []
    runlog.Metrics(tmp_path, None, 2, log=said.append)
    assert said == [f"{tmp_path / 'metrics.jsonl'}: dropped 3 of its records, those after step 2, which the "
                    "run resumed from its checkpoint there writes again; kept 2"]
    # Bug caught: a new run in the folder of one killed before its first save replaced its log silently
    runlog.Metrics(tmp_path, None, None, log=said.append)
    assert said[-1] == (f"{tmp_path / 'metrics.jsonl'}: replacing its 2 records, of a run here that saved no "
                        "checkpoint") and not (tmp_path / "metrics.jsonl").exists()


def test_a_resumes_dropped_line_names_the_records_at_its_step_apart_from_those_after_it(tmp_path):
    """Bug caught: the line said "dropped N of its records, from step S on" where step S's records were
    all kept (only those after S were dropped), and the same where S's partial train record was dropped
    too (with open_window) while its val record was kept."""
    records = [{"kind": k, "step": s} for s in range(1, 5) for k in ("train", "val")]
    said = []
    for open_window, eval_due, kept, what in [
            (False, False, 4, "those after step 2"),
            (True, False, 3, "the train record at step 2 and those after it"),
            (True, True, 2, "the train and val records at step 2 and those after it")]:
        write_records(tmp_path, records)
        runlog.Metrics(tmp_path, None, 2, log=said.append, open_window=open_window, eval_due=eval_due)
        assert said[-1] == (f"{tmp_path / 'metrics.jsonl'}: dropped {8 - kept} of its records, {what}, which "
                            f"the run resumed from its checkpoint there writes again; kept {kept}")
    write_records(tmp_path, records[:4])
    runlog.Metrics(tmp_path, None, 2, log=said.append, open_window=True)
    assert said[-1] == (f"{tmp_path / 'metrics.jsonl'}: dropped 1 of its records, the train record at step "
                        "2, which the run resumed from its checkpoint there writes again; kept 3")


def test_a_finish_that_works_takes_its_run_off_the_list_and_the_empty_list_away(tmp_path):
    """Catches a successful finish leaving its W&B run in wandb_unfinished.txt (the last id not taken
    off): the next resume would start a new W&B run rather than go on with this one."""
    runlog.Metrics(tmp_path, Rows("w"), None).finish()
    assert runlog.unfinished_wandb(tmp_path) == set() and not (tmp_path / runlog.UNFINISHED).exists()


def test_only_a_note_that_cannot_be_put_on_the_list_is_said(tmp_path, monkeypatch):
    """Catches the warning that a failed finish would be gone on with said where it is not so: the
    note of a finished run could not be taken off (it stays listed: a resume starts a new W&B run)."""
    (tmp_path / runlog.UNFINISHED).write_text("old\n")  # another W&B run's note: the list stays a file
    real, writes = runlog.storage.atomic_write, []

    def atomic_write(path, data, fix=None):
        writes.append(path)
        if len(writes) == fail_at:
            raise StorageError(f"{path}: the disk is full")
        real(path, data, fix)
    monkeypatch.setattr(runlog.storage, "atomic_write", atomic_write)
    said, fail_at = [], 2  # taking the note off fails
    runlog.Metrics(tmp_path, Rows("w"), None, log=said.append).finish()
    assert said == [] and runlog.unfinished_wandb(tmp_path) == {"old", "w"}
    (tmp_path / runlog.UNFINISHED).write_text("old\n")
    writes, fail_at = [], 1  # putting it on fails: said, and the finish goes on
    runlog.Metrics(tmp_path, Rows("v"), None, log=said.append).finish()
    assert said == [f"wandb: should finishing the W&B run fail, a resume would go on with it "
                    f"({tmp_path / runlog.UNFINISHED}: the disk is full)"]
    assert runlog.unfinished_wandb(tmp_path) == {"old"}


def test_a_run_whose_tokenizer_json_or_train_json_is_damaged_is_compared_and_labelled_by_name(tmp_path):
    """Catches a run folder's damaged tokenizer.json (not JSON, or not a table) or train.json (not a
    table) crashing plot_runs and compare.py with a traceback, rather than that check left out and the
    run labelled by its name alone."""
    a, b = a_run(tmp_path / "a"), a_run(tmp_path / "b")
    (a / "tokenizer.json").write_text("{not json")
    (b / "tokenizer.json").write_text("[1, 2]")
    assert runlog.incomparable([(a, [], []), (b, [], [])]) == []
    (a / "model.json").write_text("{}")
    (a / "train.json").write_text("[1, 2]")
    assert runlog.run_label(a) == "a"


def test_a_log_it_may_not_read_is_one_line_with_advice(tmp_path, monkeypatch):
    """Bug caught: a metrics.jsonl (or run folder) the reader may not read was "[Errno 13] Permission denied:
    '.../metrics.jsonl'" with no advice (plot_runs.py, sweep.py), where every other unreadable log says
    what to do."""
    (tmp_path / "metrics.jsonl").write_text('{"kind": "val", "step": 1}\n')

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "metrics.jsonl"))
    monkeypatch.setattr(runlog.storage, "numbered_jsonl", denied)
    log = tmp_path / "metrics.jsonl"
    with pytest.raises(PermissionError) as e:
        runlog.read_metrics(tmp_path)
    assert str(e.value) == f"cannot read {log} (Permission denied); make it readable"
    with pytest.raises(PermissionError) as e:
        runlog.read_metrics(tmp_path, fix="run it again")
    assert str(e.value) == f"cannot read {log} (Permission denied); run it again"


def test_a_run_that_has_logged_nothing_yet_is_told_by_its_run_lock(tmp_path):
    """Bug caught: a folder without a metrics.jsonl was a run that had logged nothing yet (no records,
    no error) where it held a run.lock, a train.json or a model.json by name alone: a run.lock an older
    version left in a folder of text, or gpu_check.py's results (train.json), left out of plot_runs.py
    with "no records yet" where --data, --resume and --ckpt say it is no run folder. The run's
    run.lock decides (storage.run_folder_files): alone, or beside its settings, it is a run."""
    for files in (["run.lock"], ["run.lock", "model.json", "train.json"]):
        run = tmp_path / "-".join(files)
        run.mkdir()
        for name in files:
            (run / name).write_text("{}")
        assert runlog.read_metrics(run) == ([], [])
    for files in (["run.lock", "a.txt"], ["train.json", "gpu.md"], ["model.json"]):
        folder = tmp_path / "-".join(files)
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
        with pytest.raises(FileNotFoundError) as e:
            runlog.read_metrics(folder)
        assert str(e.value) == f"{folder / 'metrics.jsonl'} does not exist; is {folder} a run folder?"


@pytest.mark.parametrize("bad", [{"kind": "train", "loss": 1.0}, {"kind": "train", "step": "2"},
                                 {"kind": "val", "step": 2.0}])
def test_a_resumed_log_refuses_a_record_without_a_whole_step_as_one_line(tmp_path, bad):
    """Mutation caught: resumed_records checking the kind alone, so that a record with no step, or a
    step that is not a whole number (a hand edit), was a KeyError or TypeError traceback at resume."""
    write_records(tmp_path, [{"kind": "train", "step": 1, "loss": 2.0}, bad])
    with pytest.raises(RunError, match=r"metrics.jsonl: line 2 is a record without a step and kind"):
        runlog.Metrics(tmp_path, None, 2, log=lambda msg: None)


def test_the_first_ten_runs_are_drawn_solid_and_the_next_ten_dashed(tmp_path, monkeypatch):
    """Mutation caught: the line style cycling with each run (i % 4) rather than after matplotlib's
    ten colours, so that two runs of a plot were drawn dotted and dashed for no reason."""
    figures = drawn(monkeypatch)
    runs = [a_run(tmp_path / f"r{i}") for i in range(12)]
    runlog.plot_runs(runs, tmp_path / "p.png")
    styles = [line.get_linestyle() for line in figures[0][1].lines]
    assert styles == ["-"] * 10 + ["--"] * 2, styles
