"""runplan.py: a run's set-up, unit by unit, on fake checkpoints (empty weights, the debug preset's
settings) in tmp_path: no token read, no model built but on the meta device."""

import glob
import json
import math
import os
import re
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import DEBUG, debug_args, write_stories

import checkpoint
import config
import model as model_module
import runplan
import runtime
import storage
from config import ModelArgs, TrainArgs
from errors import CheckpointError, ConfigError, DataError, MachineError, RunError
from tokenizer import Tokenizer


def fake_checkpoint(path, model=DEBUG, optimizer=True, preset="debug", run_folder=True, **train):
    """A checkpoint file train.py could resume: no weights, the settings given; in a run folder (its
    train.json beside it, as train.py writes) unless `run_folder` is false (a loose file)."""
    state = {"model": {}, "model_args": config.to_dict(model),
             "train_args": config.to_dict(TrainArgs(**train)), "preset": preset}
    if optimizer:  # (what a resume reads: runplan.check_resumed_fields, check_optimizer_groups)
        state.update(optimizer=optimizer_state(model), step=0, rng={})
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_checkpoint(path, state)
    if run_folder and not (path.parent / "train.json").exists():
        (path.parent / "train.json").write_text(json.dumps(state["train_args"]))
    return path


def optimizer_state(model: ModelArgs) -> dict:
    """An optimizer state of train.make_optimizer's two groups for `model` (parameter indices, no
    moments), as runplan.check_optimizer_groups reads it."""
    with torch.device("meta"):
        params = model_module.Llama4(model).named_parameters()
        decayed = [model_module.weight_decayed(n, p) for n, p in params]
    return {"state": {}, "param_groups": [{"params": [i for i, d in enumerate(decayed) if d]},
                                          {"params": [i for i, d in enumerate(decayed) if not d]}]}


def plan(tmp_path, given=(), model=DEBUG, preset="debug", **train):
    """plan_run with the TrainArgs of `train` (out_dir under tmp_path unless given), `given` typed."""
    typed = set(given) | set(train)
    train.setdefault("out_dir", str(tmp_path / "ckpt"))
    return runplan.plan_run(model, TrainArgs(**train), preset, typed)


# --- resume_settings ------------------------------------------------------------------------------

def saved(**train):
    return {"model_args": config.to_dict(DEBUG), "train_args": config.to_dict(TrainArgs(**train))}


def test_a_typed_preset_must_agree_with_the_checkpoints_model():
    """Bug caught: --preset typed at --resume not counted as typing every model setting (another preset's
    model resumed from the debug checkpoint without a word)."""
    with pytest.raises(ConfigError, match=r"dim: checkpoint 64, asked .*drop --preset"):
        runplan.resume_settings(saved(), ModelArgs(), TrainArgs(), {"preset"})
    model, _ = runplan.resume_settings(saved(), ModelArgs(), TrainArgs(), set())  # untyped: the checkpoint's
    assert model == DEBUG
    model, _ = runplan.resume_settings(saved(), DEBUG, TrainArgs(), {"preset", "dim"})  # the same: agrees
    assert model == DEBUG


def test_a_context_changed_at_resume_is_advised_to_init_from(tmp_path):
    """Bug caught: --resume with another --max_seq_len advised "or start a new --run", which a fork refuses
    too and from scratch loses the weights: --init_from keeps them at a new context (RoPE learns no
    positions), and is named where it takes every setting that differs; --eval_only is not told to train."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    with pytest.raises(ConfigError) as e:
        plan(tmp_path, {"max_seq_len"}, model=debug_args(max_seq_len=32), resume=str(last))
    assert str(e.value) == (
        "model settings differ from the checkpoint's (max_seq_len: checkpoint 64, asked 32); drop them to "
        "use the checkpoint's, or keep its weights in a new run at the new --max_seq_len: --init_from "
        f"{last} --run NEW_NAME --out_dir {tmp_path / 'ckpt'}, without --resume")
    with pytest.raises(ConfigError, match=r"; drop them to use the checkpoint's, or start a new --run with "
                                          r"them, without --resume$"):
        plan(tmp_path, {"max_seq_len", "dim"}, model=debug_args(max_seq_len=32, dim=48), resume=str(last))
    with pytest.raises(ConfigError, match=r"asked 32\); drop them: --eval_only evaluates the checkpoint's "
                                          r"model as it was trained$"):
        plan(tmp_path, {"max_seq_len"}, model=debug_args(max_seq_len=32), resume=str(last), eval_only=True)
    model, _, _ = runplan.init_settings(checkpoint.load_checkpoint(last), debug_args(max_seq_len=32),
                                        TrainArgs(), "debug", {"max_seq_len"})  # what it advises: taken
    # the text the run reads goes with it (--init_from takes the model alone: it read the hub's text)
    saved_data = fake_checkpoint(tmp_path / "ckpt" / "d" / "last.pt", data="/c/my text.txt",
                                 val_data="/c/v.txt")
    with pytest.raises(ConfigError, match=re.escape(
            f"--out_dir {tmp_path / 'ckpt'} --data '/c/my text.txt' --val_data /c/w.txt, without --resume")):
        plan(tmp_path, {"max_seq_len"}, model=debug_args(max_seq_len=32), resume=str(saved_data),
             val_data="/c/w.txt")
    assert model == debug_args(max_seq_len=32)


def test_the_init_from_advice_reads_the_runs_hub_dataset_and_text_field(tmp_path):
    """Bug caught: the --init_from advice carried --data and --val_data alone, so a run that read an
    --hf_dataset (a local folder, or another hub dataset) or records by another --text_field was told a
    command that trains on the hub's TinyStories, or fails on its records' field."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    last = fake_checkpoint(tmp_path / "ckpt" / "h" / "last.pt", hf_dataset=str(folder), text_field="story",
                           val_fraction=0.05)
    with pytest.raises(ConfigError, match=re.escape(
            f"--out_dir {tmp_path / 'ckpt'} --hf_dataset {folder} --text_field story, without --resume")):
        # (its --val_fraction holds nothing out: the folder's validation split is the validation text)
        plan(tmp_path, {"max_seq_len"}, model=debug_args(max_seq_len=32), resume=str(last))
    # what another setting makes moot is left out (each is warned of where typed); defaults are not typed
    assert runplan.text_read(config.to_dict(TrainArgs(data="a.txt", hf_dataset="x/y", val_data="v.jsonl",
                                                      val_fraction=0.1, val_text_field="t"))) == {
        "data": "a.txt", "val_data": "v.jsonl", "val_text_field": "t"}
    assert runplan.text_read({**config.to_dict(TrainArgs()), "val_text_field": "t"}) == {}
    assert runplan.text_read({"data": "a.txt"}) == {"data": "a.txt"}  # (an older checkpoint's settings)


def test_the_init_from_advice_leaves_out_a_val_fraction_of_a_run_on_the_hub():
    """Bug caught: a run on the hub (no --data) with --val_fraction typed, which holds nothing out (the
    validation text is the hub's validation split: warned of where typed), was advised an --init_from
    command carrying --val_fraction, which the new run was warned of again."""
    hub = config.to_dict(TrainArgs(val_fraction=0.05))
    assert runplan.text_read(hub) == {}
    assert runplan.text_read({**hub, "hf_dataset": "x/y"}) == {"hf_dataset": "x/y"}
    assert runplan.text_read({**hub, "data": "a.txt"}) == {"data": "a.txt", "val_fraction": 0.05}


def test_the_init_from_advice_leaves_out_a_text_field_that_plain_text_makes_moot():
    """Bug caught: a run on a .txt --data typed with --text_field story (which plain text has no use
    for: warned of where typed) was advised an --init_from command carrying --text_field story, which
    the new run was warned of again; so was a --val_text_field beside a .txt --val_data. A --text_field
    that --val_data's records are read by (no --val_text_field) is kept."""
    def read(**kw):
        return runplan.text_read(config.to_dict(TrainArgs(**kw)))
    assert read(data="a.txt", text_field="story") == {"data": "a.txt"}
    assert read(data="a.txt", val_data="v.txt", val_text_field="t") == {"data": "a.txt", "val_data": "v.txt"}
    assert read(data="a.txt", val_data="v.jsonl", text_field="story") == {
        "data": "a.txt", "val_data": "v.jsonl", "text_field": "story"}
    assert read(data="corpus", text_field="story") == {"data": "corpus", "text_field": "story"}
    assert read(text_field="story") == {"text_field": "story"}  # (the hub's records)
    assert runplan.text_read({"data": "a.txt", "text_field": "story"}) == {"data": "a.txt"}  # (older)


def test_a_resume_takes_other_router_loss_weights_as_it_takes_another_lr(tmp_path):
    """Bug caught: --resume with another --router_aux_loss_coef or --router_z_loss_coef (training-loss
    weights, which no weight depends on) refused as "model settings differ from the checkpoint's",
    though --init_from takes them and a resume takes another --lr; a checkpoint resumed so was then
    refused by its own folder, whose model.json holds the new weights. Other model settings typed still
    differ, --preset does not change them, and --eval_only (which trains nothing) warns that they do
    nothing, as of --lr (it refused them)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    typed = debug_args(router_aux_loss_coef=0.01, router_z_loss_coef=1e-3)
    p = plan(tmp_path, {"router_aux_loss_coef", "router_z_loss_coef"}, model=typed, resume=str(last))
    assert p.model_args == typed and not p.forks
    (last.parent / "model.json").write_text(json.dumps(config.to_dict(typed)))  # what that run wrote
    runplan.claim_folder(plan(tmp_path, resume=str(last))).release()  # the checkpoint's own, resumed again
    assert plan(tmp_path, {"preset"}, model=typed, resume=str(last)).model_args == DEBUG
    with pytest.raises(ConfigError, match=r"\(router_noise: checkpoint True, asked False\); drop them"):
        plan(tmp_path, {"router_noise", "router_aux_loss_coef"},
             model=debug_args(router_noise=False, router_aux_loss_coef=0.01), resume=str(last))
    judged = plan(tmp_path, {"router_z_loss_coef"}, model=typed, resume=str(last), eval_only=True)
    assert judged.model_args == DEBUG  # (scored as it was trained: a warning says the weight does nothing)
    assert runplan.setting_warnings(judged, {"router_z_loss_coef"}) == [
        "warning: --eval_only trains nothing: --router_z_loss_coef has no effect"]
    with pytest.raises(ConfigError, match=r"--router_aux_loss_coef: .*got -1.* \(the checkpoint's\)"):
        bad = object.__new__(ModelArgs)  # (as parse_args leaves it for resume_settings to check)
        bad.__dict__.update({**config.to_dict(DEBUG), "router_aux_loss_coef": -1.0})
        plan(tmp_path, {"router_aux_loss_coef"}, model=bad, resume=str(last))


def test_an_init_from_setting_out_of_range_names_the_value_it_starts_from():
    """Bug caught: `--init_from CKPT --batch_size 0` (a debug checkpoint) advised the class's
    "--batch_size 128 (the default)", not the 4 of the preset its training settings start from; and
    `--max_seq_len 0` the class's 256, not the checkpoint's context."""
    typed = object.__new__(TrainArgs)  # (as parse_args leaves it for init_settings to check)
    typed.__dict__.update({**config.to_dict(TrainArgs()), "batch_size": 0, "init_from": "c.pt"})
    ckpt = {**saved(), "preset": "debug"}
    with pytest.raises(ConfigError) as e:
        runplan.init_settings(ckpt, DEBUG, typed, "scout-128m", {"init_from", "batch_size"})
    assert str(e.value) == "--batch_size: must be at least 1, got 0; e.g. --batch_size 4 (the debug preset's)"
    with pytest.raises(ConfigError, match=r"e\.g\. --batch_size 16 \(the tiny preset's\)$"):
        runplan.init_settings(ckpt, DEBUG, typed, "tiny", {"init_from", "batch_size", "preset"})
    short = object.__new__(ModelArgs)  # (--max_seq_len 0: the context may change, not leave the range)
    short.__dict__.update({**config.to_dict(DEBUG), "max_seq_len": 0})
    with pytest.raises(ConfigError) as e:
        runplan.init_settings(ckpt, short, TrainArgs(), "debug", {"init_from", "max_seq_len"})
    assert str(e.value) == ("--max_seq_len: must be at least 1, got 0; e.g. --max_seq_len 64 (the "
                            "checkpoint's)")


def test_a_range_error_names_a_value_the_run_would_take_and_whose_it_is():
    """Bug caught: `--init_from CKPT --grad_clip -1` (a debug checkpoint) named the default's 1 as "the
    debug preset's", which sets none (parse_args says "the default"); and `--eval_only --batch_size 0`
    on an import (no training settings saved) advised "e.g. --batch_size 0 (the run's)", the typed
    value itself."""
    typed = object.__new__(TrainArgs)  # (as parse_args leaves it for init_settings to check)
    typed.__dict__.update({**config.to_dict(TrainArgs()), "grad_clip": -1.0, "init_from": "c.pt"})
    with pytest.raises(ConfigError) as e:
        runplan.init_settings({**saved(), "preset": "debug"}, DEBUG, typed, "debug", {"init_from",
                                                                                      "grad_clip"})
    assert str(e.value) == "--grad_clip: must be >= 0, got -1.0; e.g. --grad_clip 1 (the default)"
    evaluate = object.__new__(TrainArgs)
    evaluate.__dict__.update({**config.to_dict(TrainArgs()), "batch_size": 0, "eval_only": True})
    imported = {"model_args": config.to_dict(DEBUG)}  # (weights only: no train_args)
    with pytest.raises(ConfigError) as e:
        runplan.resume_settings(imported, DEBUG, evaluate, {"eval_only", "batch_size"})
    assert str(e.value) == "--batch_size: must be at least 1, got 0; e.g. --batch_size 128 (the default)"
    with pytest.raises(ConfigError, match=r"e\.g\. --batch_size 4 \(the run's\)$"):  # (a run's: its own)
        runplan.resume_settings(saved(batch_size=4), DEBUG, evaluate, {"eval_only", "batch_size"})


def test_a_saved_value_this_version_refuses_is_told_with_the_default_as_its_fix_not_the_runs():
    """Holds: a checkpoint's own setting that this version refuses, not typed at the resume, is refused
    with the class's default as its fix (in_range re-words typed values alone), not "e.g. --batch_size
    0 (the run's)", the refused value itself."""
    ckpt = saved()
    ckpt["train_args"]["batch_size"] = 0  # (saved by a version that took it)
    with pytest.raises(ConfigError) as e:
        runplan.resume_settings(ckpt, DEBUG, TrainArgs(resume="latest"), {"resume"})
    assert str(e.value) == "--batch_size: must be at least 1, got 0; e.g. --batch_size 128 (the default)"


def test_eval_only_scores_a_typed_val_data_whole_unless_eval_windows_is_typed():
    """Bug caught: --eval_windows typed beside --eval_only --val_data overridden by 0, or a resumed
    training run given --val_data evaluating whole files (eval_windows 0 outside --eval_only)."""
    ckpt = saved(eval_windows=4)
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(eval_only=True, val_data="v.txt"),
                                   {"eval_only", "val_data"})
    assert t.eval_windows == 0 and t.val_data == "v.txt"
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(eval_only=True, val_data="v.txt", eval_windows=7),
                                   {"eval_only", "val_data", "eval_windows"})
    assert t.eval_windows == 7
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(resume="latest", val_data="v.txt"),
                                   {"resume", "val_data"})
    assert t.eval_windows == 4 and not t.eval_only
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(eval_only=True), {"eval_only"})
    assert t.eval_windows == 4  # the run's own validation text: its sample


def test_resumed_settings_are_the_checkpoints_with_the_typed_ones_on_top():
    """Bug caught: untyped settings taken from the command line's defaults, not the checkpoint's; or
    --resume, --eval_only, --run taken from the checkpoint (a run resumed as it was saved)."""
    ckpt = saved(lr=1e-3, min_lr=0.0, max_steps=10, run="old", resume="", eval_only=False)
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(max_steps=20, run="r", resume="latest"),
                                   {"max_steps", "run", "resume"})
    assert (t.lr, t.min_lr, t.max_steps) == (1e-3, 0.0, 20)
    assert (t.run, t.resume, t.eval_only) == ("r", "latest", False)


def test_a_weights_only_checkpoint_is_evaluated_with_the_settings_typed():
    """Bug caught: a checkpoint without training settings (an import) failing --eval_only."""
    ckpt = {"model_args": config.to_dict(DEBUG)}
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(eval_only=True, batch_size=3), {"eval_only"})
    assert t.batch_size == 3 and t.eval_only


def test_a_saved_or_typed_cache_dir_is_kept_at_resume():
    """Bug caught: every resumed run's --cache_dir taken as . (the current folder), not only one saved as
    '' (before '' was refused): a resume rebuilt its data caches in the working directory."""
    ckpt = saved(cache_dir="/data/cache")
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(resume="latest"), {"resume"})
    assert t.cache_dir == "/data/cache"
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(resume="latest", cache_dir="c2"),
                                   {"resume", "cache_dir"})
    assert t.cache_dir == "c2"


# --- run_to_resume ------------------------------------------------------------------------------------

def test_resume_without_a_path_takes_the_named_run_or_the_newest_with_a_last_pt(tmp_path):
    """Bug caught: --run ignored for the newest run, or a newest run without last.pt passed over."""
    out = tmp_path / "ckpt"
    old = fake_checkpoint(out / "old" / "last.pt")
    fake_checkpoint(out / "new" / "last.pt")
    os.utime(old, (1, time.time() - 100))
    assert runplan.run_to_resume(TrainArgs(resume="latest"), out) == out / "new"
    assert runplan.run_to_resume(TrainArgs(resume="latest", run="old"), out) == out / "old"
    (out / "newest").mkdir()
    (out / "newest" / "train.json").write_text("{}")  # stopped before its first save
    (out / "newest" / "run.lock").touch()  # (beside it, as train.py leaves it)
    with pytest.raises(ConfigError, match="the newest run, .*newest, holds no last.pt"):
        runplan.run_to_resume(TrainArgs(resume="latest"), out)
    with pytest.raises(ConfigError, match=re.escape("has not reached it); pass --run new to evaluate the "
                                                    "newest run with one")):
        runplan.run_to_resume(TrainArgs(eval_only=True), out)  # (no new run to start at --eval_only)
    with pytest.raises(ConfigError, match=re.escape(f"there is no run nope under --out_dir {out}/ (its runs: "
                                                    "newest, new, old; pass one of them to --run, or drop "
                                                    "--resume to start nope as a new run)")):
        runplan.run_to_resume(TrainArgs(resume="latest", run="nope"), out)
    (out / "newest" / "best.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=re.escape(f"pass --resume {out / 'newest' / 'best.pt'} to evaluate "
                                                    "its best.pt, or pass --run new to evaluate")):
        runplan.run_to_resume(TrainArgs(eval_only=True), out)


def test_a_checkpoint_resumed_where_it_lies_is_no_fork_however_the_paths_are_spelled(tmp_path, monkeypatch):
    """Bug caught: a run folder compared unresolved (relative, or through a link) with the checkpoint's
    folder: a run resumed in its own folder taken for a fork (a new W&B run, its folder refused)."""
    fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    (tmp_path / "link").symlink_to(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    ckpt = {"wandb_id": "abc"}
    for run_dir in (Path("ckpt/r"), tmp_path / "link" / "r"):
        p = runplan.RunPlan(run_dir, DEBUG, TrainArgs(), ckpt, tmp_path / "ckpt" / "r" / "last.pt")
        assert not p.forks and runplan.wandb_id(p) == "abc", run_dir
    assert runplan.RunPlan(Path("ckpt/f"), DEBUG, TrainArgs(), ckpt, Path("ckpt/r/last.pt")).forks


# --- plan_run -------------------------------------------------------------------------------------------

def test_a_new_run_is_named_after_its_preset_and_the_time(tmp_path):
    """Bug caught: a new run without --run put in another folder than --out_dir/PRESET-YYYYmmdd-HHMMSS."""
    p = plan(tmp_path, preset="debug")
    assert p.run_dir.parent == tmp_path / "ckpt" and re.fullmatch(r"debug-\d{8}-\d{6}", p.run_dir.name)
    assert p.ckpt is None and p.ckpt_path is None and not p.forks
    assert p.train_args.run == p.run_dir.name and p.train_args.out_dir == str(tmp_path / "ckpt")
    assert plan(tmp_path, run="mine").run_dir == tmp_path / "ckpt" / "mine"


def test_resume_by_path_with_out_dir_typed_forks_into_it(tmp_path):
    """Bug caught: --resume A/r/last.pt --run r --out_dir B continuing r where it lies, not in B/r
    (--run naming the checkpoint's own run continues it only without --out_dir typed)."""
    last = fake_checkpoint(tmp_path / "a" / "r" / "last.pt")
    here = plan(tmp_path, resume=str(last), run="r")
    assert here.run_dir == last.parent and not here.forks
    assert here.train_args.out_dir == str(tmp_path / "a")  # where it lies, not the --out_dir default
    there = plan(tmp_path, resume=str(last), run="r", out_dir=str(tmp_path / "b"))
    assert there.run_dir == tmp_path / "b" / "r" and there.forks
    fork = plan(tmp_path, resume=str(last), run="f")  # (no --out_dir typed: beside the checkpoint's run)
    assert fork.run_dir == tmp_path / "a" / "f" and fork.forks


def test_a_fork_lands_beside_its_checkpoints_run_wherever_the_shell_is(tmp_path, monkeypatch):
    """Bug caught: `cd checkpoints/a && train.py --resume last.pt --run f` forked into
    checkpoints/a/checkpoints/f, a run inside the run (the default --out_dir, taken from the working
    folder); from elsewhere into ./checkpoints/f. A fork goes beside the run it forks, as a resume goes
    on where it lies, and into --out_dir where one is typed; the advice to fork names the same place.
    A loose checkpoint (no train.json beside it: a download) forks into ./checkpoints, not beside its
    folder (~/Downloads/x.pt into ~/f)."""
    loose = fake_checkpoint(tmp_path / "dl" / "x.pt", run_folder=False)
    monkeypatch.chdir(tmp_path)
    fork = runplan.plan_run(DEBUG, TrainArgs(resume=str(loose), run="f"), "debug", {"resume", "run"})
    assert fork.run_dir == Path("checkpoints/f") and fork.forks
    last = fake_checkpoint(tmp_path / "a" / "r" / "last.pt")
    for cwd, resume in [(last.parent, "last.pt"), (tmp_path, "a/r/last.pt"), (tmp_path / "a", "r"),
                        (tmp_path / "a" / "r", "."), (tmp_path / "a" / "r", "../r/last.pt")]:
        monkeypatch.chdir(cwd)
        fork = runplan.plan_run(DEBUG, TrainArgs(resume=resume, run="f"), "debug", {"resume", "run"})
        assert fork.run_dir.resolve() == tmp_path / "a" / "f" and fork.forks, (cwd, resume)
        there = runplan.plan_run(DEBUG, TrainArgs(resume=resume, run="f", out_dir=str(tmp_path / "b")),
                                 "debug", {"resume", "run", "out_dir"})
        assert there.run_dir == tmp_path / "b" / "f", (cwd, resume)
    monkeypatch.chdir(last.parent)  # the advice: fork beside it, with no --out_dir to type
    (last.parent / "model.json").write_text(json.dumps({"dim": 1}))
    with pytest.raises(CheckpointError, match=r"\(--resume last.pt --run NEW_NAME\)"):
        runplan.claim_folder(runplan.plan_run(DEBUG, TrainArgs(resume="last.pt"), "debug", {"resume"}))


def test_resume_by_path_with_out_dir_typed_and_no_run_forks_into_it_under_the_same_name(tmp_path,
                                                                                        monkeypatch):
    """Bug caught: --resume A/r --out_dir B (no --run) went on in A/r, the --out_dir typed ignored (the
    README says it forks; a run on a read-only or full disk, told to "pick another --out_dir", failed
    there again). A loose checkpoint in the working folder forks under that folder's name."""
    last = fake_checkpoint(tmp_path / "a" / "r" / "last.pt")
    there = plan(tmp_path, resume=str(last), out_dir=str(tmp_path / "b"))
    assert there.run_dir == tmp_path / "b" / "r" and there.forks
    same = plan(tmp_path, resume=str(last), out_dir=str(tmp_path / "a"))
    assert same.run_dir == tmp_path / "a" / "r" and not same.forks
    assert plan(tmp_path, resume=str(last)).run_dir == last.parent  # (no --out_dir typed: where it lies)
    monkeypatch.chdir(last.parent)
    assert plan(tmp_path, resume="last.pt", out_dir=str(tmp_path / "b")).run_dir == tmp_path / "b" / "r"
    assert plan(tmp_path, resume="last.pt").run_dir == Path(".")


def test_a_resumed_run_takes_the_tokenizer_beside_its_checkpoint_first(tmp_path):
    """Bug caught: a fork reading the tokenizer of the folder it forks into (a killed run's) before the
    one beside its checkpoint; or a typed --tokenizer replaced by the checkpoint's."""
    last = fake_checkpoint(tmp_path / "ckpt" / "a" / "last.pt")
    (last.parent / "tokenizer.json").write_text("{}")
    (tmp_path / "ckpt" / "f").mkdir()
    (tmp_path / "ckpt" / "f" / "tokenizer.json").write_text("{}")
    beside = str(last.parent / "tokenizer.json")
    assert plan(tmp_path, resume=str(last), run="f").train_args.tokenizer == beside
    (last.parent / "tokenizer.json").unlink()  # gone: the run folder's
    assert plan(tmp_path, resume=str(last), run="f").train_args.tokenizer == \
        str(tmp_path / "ckpt" / "f" / "tokenizer.json")
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    assert plan(tmp_path, resume=str(last), run="f", tokenizer=str(mine)).train_args.tokenizer == str(mine)


def test_a_weights_only_checkpoint_is_evaluated_not_resumed(tmp_path):
    """Bug caught: a checkpoint without an optimizer state resumed (or --eval_only on it refused)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "w" / "last.pt", optimizer=False)
    with pytest.raises(CheckpointError, match="holds weights only"):
        plan(tmp_path, resume=str(last), run="w2")
    p = plan(tmp_path, run="w", eval_only=True)
    assert p.ckpt_path == last and p.train_args.eval_only


def test_a_checkpoints_preset_is_the_runs_unless_one_is_typed(tmp_path):
    """Bug caught: the preset recorded for a resumed run taken from the command line's default."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", preset="debug")
    assert plan(tmp_path, preset=config.DEFAULT_PRESET, resume=str(last)).preset == "debug"
    assert plan(tmp_path, ["preset"], preset="other", resume=str(last)).preset == "other"


def test_a_checkpoints_missing_data_is_a_data_error_unless_typed_again(tmp_path):
    """Bug caught: a saved --data glob that still matches refused as gone; a --data typed again still
    checked as the checkpoint's; --eval_only without --val_data not checking the saved --data."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    pattern = glob.escape(str(tmp_path / "d")) + "/*.txt"
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", data=pattern)
    assert plan(tmp_path, resume=str(last)).train_args.data == pattern  # a glob that matches: there
    gone = fake_checkpoint(tmp_path / "ckpt" / "g" / "last.pt", data=str(tmp_path / "gone.txt"),
                           val_data=str(tmp_path / "gone-val.txt"))
    fake_checkpoint(tmp_path / "ckpt" / "h" / "last.pt", data=str(tmp_path / "gone.txt"))
    with pytest.raises(DataError, match=re.escape(f"--val_data: the checkpoint's {tmp_path / 'gone-val.txt'} "
                                                  "no longer exists; pass --val_data PATH")):
        plan(tmp_path, resume=str(gone), data=str(tmp_path / "d" / "a.txt"))
    with pytest.raises(DataError, match="--data: the checkpoint's .*gone.txt no longer exists"):
        plan(tmp_path, run="h", eval_only=True)  # scores a held-out slice of the checkpoint's --data
    p = plan(tmp_path, resume=str(gone), data=str(tmp_path / "d" / "a.txt"),
             val_data=str(tmp_path / "d" / "a.txt"))  # both typed again: neither checked
    assert p.train_args.data == str(tmp_path / "d" / "a.txt")
    p = plan(tmp_path, run="g", eval_only=True, val_data=str(tmp_path / "d" / "a.txt"))  # --val_data alone
    assert p.train_args.val_data == str(tmp_path / "d" / "a.txt")


def test_saved_paths_at_eval_only_with_val_data_are_val_data_alone():
    """Bug caught: --eval_only with --val_data still requiring the checkpoint's --data."""
    ckpt = {"train_args": {"data": "/gone/a.txt", "val_data": "/gone/b.txt"}}
    t = TrainArgs(eval_only=True, val_data="mine.txt")
    assert runplan.saved_paths(runplan.RunPlan(None, DEBUG, t, ckpt, None), {"val_data"}) == []
    t = TrainArgs(eval_only=True)
    assert runplan.saved_paths(runplan.RunPlan(None, DEBUG, t, ckpt, None), set()) == [
        ("val_data", "/gone/b.txt"), ("data", "/gone/a.txt")]
    assert runplan.saved_paths(runplan.RunPlan(None, DEBUG, t, None, None), set()) == []


def test_path_settings_are_saved_absolute(tmp_path, monkeypatch):
    """Bug caught: a relative --tokenizer (or --val_data) kept relative: a resume from another folder
    reads another file."""
    for name in ("a.txt", "v.txt", "tok.json"):
        (tmp_path / name).write_text("x")
    monkeypatch.chdir(tmp_path)
    p = plan(tmp_path, data="a.txt", val_data="v.txt", tokenizer="tok.json", run="r")
    assert (p.train_args.data, p.train_args.val_data, p.train_args.tokenizer) == \
        (str(tmp_path / "a.txt"), str(tmp_path / "v.txt"), str(tmp_path / "tok.json"))


def test_a_local_hf_dataset_folder_is_saved_absolute_and_checked_at_resume(tmp_path, monkeypatch):
    """Bug caught: --hf_dataset hub (a local folder in the working directory) was saved as typed, while
    --data was saved absolute: a resume from another folder with HF_HUB_OFFLINE=1 read the `datasets`
    cache of a dataset named "hub" (stale once the folder changed), and online asked the hub for "hub".
    A hub name is saved as it is, and a saved folder that is gone is refused naming --hf_dataset."""
    (tmp_path / "hub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert plan(tmp_path, hf_dataset="hub", run="r").train_args.hf_dataset == str(tmp_path / "hub")
    assert plan(tmp_path, hf_dataset="me/stories", run="r").train_args.hf_dataset == "me/stories"
    gone = str(tmp_path / "gone")
    last = fake_checkpoint(tmp_path / "ckpt" / "g" / "last.pt", hf_dataset=gone)
    with pytest.raises(DataError, match=re.escape(f"--hf_dataset: the checkpoint's {gone} no longer exists; "
                                                  "pass --hf_dataset FOLDER, or --data FILE")):
        plan(tmp_path, resume=str(last))
    (tmp_path / "a.txt").write_text("x")
    assert plan(tmp_path, resume=str(last), data="a.txt").train_args.data == str(tmp_path / "a.txt")
    assert plan(tmp_path, resume=str(last), hf_dataset="hub").train_args.hf_dataset == str(tmp_path / "hub")
    assert plan(tmp_path, run="g", eval_only=True, val_data="a.txt").train_args.hf_dataset == gone  # (unread)
    named = fake_checkpoint(tmp_path / "ckpt" / "n" / "last.pt", hf_dataset="me/stories")
    assert plan(tmp_path, resume=str(named)).train_args.hf_dataset == "me/stories"


def test_an_older_checkpoints_relative_hf_dataset_folder_is_named_as_the_checkpoints(tmp_path, monkeypatch):
    """Bug caught: a checkpoint of a version before local --hf_dataset folders were saved absolute holds
    the folder as typed (./corpus, ../data/hub); resumed from another folder, only an absolute one was
    checked, so the run went on to load_hub's "--hf_dataset ./corpus: no such folder (a hub dataset is
    named as OWNER/NAME); pass --data FILE", which names neither the checkpoint nor the fix that goes
    on with its text. A relative path that cannot be a hub name is checked as --data's is; OWNER/NAME,
    which may be a hub name, is left to the hub (found by a probe of runs of older commits)."""
    (tmp_path / "start" / "corpus").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", hf_dataset="./corpus")
    monkeypatch.chdir(tmp_path / "elsewhere")
    said = ("--hf_dataset: the checkpoint's ./corpus is relative to the folder its run was started in, and "
            f"there is no such folder here ({tmp_path / 'elsewhere'}); "
            "pass --hf_dataset FOLDER, or --data FILE")
    with pytest.raises(DataError, match=re.escape(said)):
        plan(tmp_path, resume=str(last))
    monkeypatch.chdir(tmp_path / "start")  # (where it was started: read from there, saved absolute)
    assert plan(tmp_path, resume=str(last)).train_args.hf_dataset == str(tmp_path / "start" / "corpus")
    hub = fake_checkpoint(tmp_path / "ckpt" / "h" / "last.pt", hf_dataset="me/stories")
    assert plan(tmp_path, resume=str(hub)).train_args.hf_dataset == "me/stories"  # (a hub name: as it is)


def test_an_optimizer_state_of_the_two_groups_in_the_other_order_is_refused_in_planning(tmp_path):
    """Holds: the parameter groups are compared in their order (decayed first, as train.make_optimizer
    builds them), so a state with the two swapped, which torch's load_state_dict would mismatch, is
    refused in planning, not passed for holding the same two sizes."""
    state = optimizer_state(DEBUG)
    state["param_groups"].reverse()
    path = tmp_path / "r" / "last.pt"
    p = runplan.RunPlan(path.parent, DEBUG, TrainArgs(max_steps=4), {"step": 2, "optimizer": state}, path)
    with pytest.raises(CheckpointError, match=r"not of this version's parameter groups \(of \[\d+, \d+\]"):
        runplan.check_optimizer_groups(p)
    runplan.check_optimizer_groups(p._replace(ckpt={"step": 2, "optimizer": optimizer_state(DEBUG)}))


def test_a_checkpoint_from_before_compile_auto_resumes_compiling_as_it_did(tmp_path):
    """Bug caught: a checkpoint written before --compile took auto (it was a bool then: every run's
    train_args held compile False or True) was refused by --resume and --eval_only alike as "damaged
    or from another version" (compile should be str), with best.pt advised, which failed the same way."""
    for old, now in ((False, "false"), (True, "true")):
        last = fake_checkpoint(tmp_path / "ckpt" / f"r{old}" / "last.pt")
        state = checkpoint.load_checkpoint(last)
        state["train_args"]["compile"] = old
        checkpoint.save_checkpoint(last, state)
        assert plan(tmp_path, resume=str(last)).train_args.compile == now
        assert plan(tmp_path, resume=str(last), eval_only=True).train_args.compile == now
        assert plan(tmp_path, ("compile",), resume=str(last), compile="auto").train_args.compile == "auto"


def test_damaged_training_settings_are_the_checkpoints_fault(tmp_path):
    """Bug caught: a checkpoint's training setting of the wrong type blamed on an option (ConfigError,
    exit status 2) rather than the file (CheckpointError, exit status 1)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    state = checkpoint.load_checkpoint(last)
    state["train_args"]["max_steps"] = "many"
    checkpoint.save_checkpoint(last, state)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(last))} is damaged or from another version"):
        plan(tmp_path, resume=str(last))


@pytest.mark.parametrize("field, value, problem", [
    ("step", "4", "its step is of type str, not int"), ("step", True, "its step is of type bool, not int"),
    ("rng", None, "no rng in it"), ("window", 3, "its window is of type int, not dict or None"),
    ("best_val", "x", "its best_val is of type str, not int or float"),
    ("elapsed", [1.0], "its elapsed is of type list, not int or float"),
    ("eval_due", "yes", "its eval_due is of type str, not bool"),
    ("wandb_id", 3, "its wandb_id is of type int, not str or None"),
    ("wandb_entity", 3, "its wandb_entity is of type int, not str or None")])
def test_damaged_fields_a_resume_reads_are_the_checkpoints_fault(tmp_path, field, value, problem):
    """Bug caught: a checkpoint that loads but holds a string step, no rng, an int window or a string
    best_val stopped --resume (and --eval_only, but for rng, which it does not read) with a TypeError,
    KeyError or AttributeError traceback; now one line naming the file and the field (exit status 1)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", max_steps=100)
    state = checkpoint.load_checkpoint(last)
    if value is None:
        del state[field]
    else:
        state[field] = value
    checkpoint.save_checkpoint(last, state)
    for eval_only in (False, True):
        if eval_only and field == "rng":
            assert runplan.load_resumed(last, last.parent, eval_only)["step"] == 0
            continue
        with pytest.raises(CheckpointError) as e:
            runplan.load_resumed(last, last.parent, eval_only)
        assert str(e.value).startswith(f"{last} is damaged or from another version of this project "
                                       f"({problem}); ")
    good = {"step": 3, "tokens": 5, "elapsed": 1, "best_val": math.inf, "eval_due": False, "val_set": "",
            "window": None, "wandb_id": None, "wandb_entity": None, "rng": {}}
    checkpoint.save_checkpoint(last, {**state, **good})
    assert runplan.load_resumed(last, last.parent, False)["step"] == 3


def test_the_resumed_fields_checked_are_those_a_checkpoint_holds():
    """runplan.RESUMED_FIELDS is kept by hand beside train.LoopState (runplan cannot import train): every
    field train.Job.to_checkpoint writes beside weights, optimizer state and settings is one a resume
    checks, of the type it is written with, and no field checked is one never written.
    Bug caught: a LoopState field added without its entry (a resume would read it unchecked: a
    damaged checkpoint's traceback), or an entry left behind for a field no longer written."""
    import train  # (here alone: the rest of this file tests runplan without train)
    from model import Llama4
    model = Llama4(debug_args())
    job = SimpleNamespace(model=model, opt=train.make_optimizer(model, TrainArgs(), torch.device("cpu")),
                          train_args=TrainArgs(), model_args=debug_args(), preset="debug",
                          tok=SimpleNamespace(hash="0" * 64), metrics=None, device=torch.device("cpu"))
    saved = train.Job.to_checkpoint(job, train.LoopState(), window={"steps": 0})
    not_read = {"model", "optimizer", "model_args", "train_args", "tokenizer", "data_position"}
    assert set(saved) - not_read == set(runplan.RESUMED_FIELDS)
    assert set(asdict(train.LoopState())) <= set(runplan.RESUMED_FIELDS)
    runplan.check_resumed_fields(saved, eval_only=False)  # (each of the type it is written with)
    typed = train.LoopState(step=1, tokens=2, elapsed=3.5, best_val=1.25, bad_in_row=1, skipped_steps=2,
                            eval_due=True, val_set="k")
    runplan.check_resumed_fields({**saved, **typed.to_checkpoint(0)}, eval_only=False)


# --- parameters and memory_floor ---------------------------------------------------------------------

def test_the_memory_floor_counts_weights_loss_chunk_and_activations():
    """Bug caught: the floor's weights not 16 bytes a parameter in training and 4 at --eval_only, its loss
    chunk not capped at the batch's tokens, or activations counted at --eval_only. And (a floor above
    the step's real peak, tests/test_memory_model.py) the gradients added to the loss chunk and the
    activations with one micro-batch a step, where the loss comes before any gradient is made."""
    from model import LOSS_CHUNK
    n = runplan.parameters(DEBUG)
    V = DEBUG.vocab_size
    for batch in (2, 8):
        tokens = batch * DEBUG.max_seq_len
        loss = {"loss chunk": min(tokens, LOSS_CHUNK // V) * V * 8,
                "activations": tokens * DEBUG.dim * 4 * DEBUG.n_layers}
        # one micro-batch: the larger of the loss's moment and the end of backward's (the gradients)
        later = loss if sum(loss.values()) > 4 * n else {"gradients": 4 * n}
        assert runplan.memory_floor(DEBUG, TrainArgs(batch_size=batch)) == {
            "weights and optimizer state": 12 * n, **later}
        # more micro-batches a step in this process: the earlier ones' gradients are held at the loss
        both = {"weights and optimizer state": 12 * n, "gradients": 4 * n, **loss}
        assert runplan.memory_floor(DEBUG, TrainArgs(batch_size=batch, grad_accum=4), world_size=2) == both
        assert runplan.memory_floor(DEBUG, TrainArgs(batch_size=batch, grad_accum=2), world_size=2) == \
            {"weights and optimizer state": 12 * n, **later}
        assert runplan.memory_floor(DEBUG, TrainArgs(batch_size=batch, eval_only=True)) == {
            "weights": 4 * n, "loss chunk": loss["loss chunk"], "activations": 0}
        assert runplan.fixed_memory(DEBUG, TrainArgs(batch_size=batch)) == 16 * n
    assert "gradients" in runplan.memory_floor(DEBUG, TrainArgs(batch_size=2))  # (both moments are met)
    assert "gradients" not in runplan.memory_floor(DEBUG, TrainArgs(batch_size=8))
    assert LOSS_CHUNK // V > 8 * DEBUG.max_seq_len  # (the cap above is the batch's tokens)
    big = debug_args(vocab_size=LOSS_CHUNK * 2)  # a vocabulary past the chunk: one row at a time
    assert runplan.memory_floor(big, TrainArgs(batch_size=2, eval_only=True))["loss chunk"] == \
        big.vocab_size * 8


def test_the_memory_floor_counts_the_untrained_vision_stub_as_weights_alone(tmp_path, monkeypatch):
    """train.py trains on text alone: a --vision model's encoder and projector get no gradient and no
    AdamW moments, 4 bytes a parameter, not 16. A model whose weights fit is not refused, and one that
    does not is told of the vision settings too.
    Bug caught: --preset debug --vision --vision_dim 4096 --vision_layers 10 --vision_mlp_dim 16384
    (2.0B vision parameters, 8.1 GB) was refused on a 25 GB CPU: "weights and optimizer state alone
    need 32.3 GB ... use a smaller model (--vocab_size, --dim, ...)", none of them the vision stub's."""
    vision = replace(DEBUG, vision=True)
    total, text = runplan.parameters(vision), runplan.parameters(DEBUG)
    assert total > 3 * text  # (the default stub outweighs the debug model)
    floor = runplan.memory_floor(vision, TrainArgs(batch_size=2))
    assert floor["weights and optimizer state"] == 4 * total + 8 * text  # (+ 4 * text: the gradients)
    assert runplan.fixed_memory(vision, TrainArgs(batch_size=2)) == 4 * total + 12 * text
    assert runplan.memory_floor(vision, TrainArgs(batch_size=2, eval_only=True))["weights"] == 4 * total
    p = runplan.RunPlan(tmp_path, vision, TrainArgs(batch_size=2), None, None)
    monkeypatch.setattr(runtime, "device_memory", lambda device: sum(floor.values()))
    runplan.check_settings(p, torch.device("cuda", 0), runtime.World())  # (fits: not refused)
    monkeypatch.setattr(runtime, "device_memory", lambda device: floor["weights and optimizer state"] - 1)
    with pytest.raises(runplan.DeviceError, match=r"use a smaller model \(--vocab_size, .*--expert_dim, "
                                                  r"--vision_dim, --vision_layers\)$"):
        runplan.check_settings(p, torch.device("cuda", 0), runtime.World())


@pytest.mark.parametrize("changes", [dict(moe_every=5), dict(moe_every=3, n_layers=7), dict(n_layers=1)])
def test_a_dense_model_of_many_layers_is_counted_from_two(monkeypatch, changes):
    """Bug caught: a dense model (--moe_every above --n_layers) was counted from a model of all its
    layers (at most 2 * moe_every): --n_layers 1000000000 --moe_every 1000000001 built them one by one
    on the meta device, for minutes, before the memory check could refuse it."""
    args = debug_args(**changes)
    with torch.device("meta"):
        assert runplan.parameters(args) == sum(p.numel() for p in model_module.Llama4(args).parameters())
    built = []

    def spy(model_args):
        built.append(model_args.n_layers)
        if model_args.n_layers > 100:
            raise AssertionError(f"built {model_args.n_layers} layers")
        return Llama4(model_args)
    Llama4 = model_module.Llama4
    monkeypatch.setattr(model_module, "Llama4", spy)  # (what model.summed_over_layers builds)
    monkeypatch.setattr(runplan, "_COUNTED", {})  # (counted once per settings)
    huge = debug_args(n_layers=10**9, moe_every=10**9 + 1)
    assert runplan.parameters(huge) == runplan.parameters(debug_args(moe_every=5)) + (10**9 - 4) * (
        runplan.parameters(debug_args(n_layers=5, moe_every=6)) - runplan.parameters(debug_args(moe_every=5)))
    assert max(built) <= 2


def test_a_tensor_past_torchs_sizes_is_a_setting_refused():
    """Bug caught: a model too large for torch's tensors a traceback rather than a ConfigError."""
    with pytest.raises(ConfigError, match="larger than torch can hold"):
        runplan.memory_floor(debug_args(dim=2**30, n_experts=2**30, expert_dim=2**30), TrainArgs())


def test_a_parameter_count_past_cs_integers_is_a_setting_refused(monkeypatch):
    """Bug caught: an OverflowError from the meta model (a size past a C integer) a traceback, not the
    ConfigError a RuntimeError there gets."""
    def overflow(model_args):
        raise OverflowError("Python int too large to convert to C long")
    monkeypatch.setattr(runplan, "parameters", overflow)
    with pytest.raises(ConfigError, match="lower --vocab_size, --dim, --n_experts or --expert_dim"):
        runplan.memory_floor(DEBUG, TrainArgs())


# --- check_settings -----------------------------------------------------------------------------------

def test_a_resumed_checkpoints_vocabulary_is_not_refused_as_too_small(tmp_path):
    """Bug caught: a resumed (or imported) checkpoint's vocabulary refused as a new run's would be."""
    small = debug_args(vocab_size=100)
    cpu, world = torch.device("cpu"), runtime.World()
    with pytest.raises(ConfigError, match="--vocab_size 100 is too small"):
        runplan.check_settings(runplan.RunPlan(tmp_path, small, TrainArgs(), None, None), cpu, world)
    resumed = runplan.RunPlan(tmp_path, small, TrainArgs(), {"model_args": {}}, tmp_path / "last.pt")
    runplan.check_settings(resumed, cpu, world)
    started_from = runplan.RunPlan(tmp_path, small, TrainArgs(), None, None, init={"model_args": {}})
    runplan.check_settings(started_from, cpu, world)  # (--init_from: its model's vocabulary)


def test_special_token_ids_a_preset_sets_are_named_as_the_presets(tmp_path):
    """Bug caught: `train.py --preset scout-17b-16e` advised "drop --eos_id", an option never typed (the
    preset sets the released tokenizer's ids); a typed id is still told to drop it."""
    cpu, world = torch.device("cpu"), runtime.World()
    scout = config.preset("scout-17b-16e", ModelArgs)
    with pytest.raises(ConfigError) as e:
        runplan.check_settings(runplan.RunPlan(tmp_path, scout, TrainArgs(), None, None, "scout-17b-16e"),
                               cpu, world)
    assert str(e.value) == ("--eos_id 200008: the tokenizer this run trains has <|endoftext|> at id 0; the "
                            "scout-17b-16e preset sets it; pick another --preset (other ids need a "
                            "--tokenizer that has them)")
    typed = runplan.RunPlan(tmp_path, debug_args(eos_id=300), TrainArgs(), None, None, "debug")
    with pytest.raises(ConfigError, match=r"at id 0; drop --eos_id \(other ids"):
        runplan.check_settings(typed, cpu, world)


def test_a_typed_tokenizer_that_disagrees_with_the_model_settings_is_refused_before_any_work(tmp_path):
    """Bug caught: a --tokenizer whose size is not --vocab_size refused only once the data was read (a hub
    download first), as a file's fault (exit status 1) though the fix is a setting; or one that fits
    refused; or a resumed or --init_from run's checked against the command line's model (load_data checks
    it against the checkpoint's)."""
    tok = Tokenizer.train([" ".join(["the cat sat on the mat"] * 20) + f" story {i}" for i in range(40)], 280)
    path = tmp_path / "tok.json"
    tok.save(path)
    cpu, world, t = torch.device("cpu"), runtime.World(), TrainArgs(tokenizer=str(path))
    with pytest.raises(ConfigError) as e:
        runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, t, None, None), cpu, world)
    assert str(e.value) == f"--tokenizer {path} has 280 tokens but --vocab_size is 320; pass --vocab_size 280"
    runplan.check_settings(runplan.RunPlan(tmp_path, debug_args(vocab_size=280), t, None, None), cpu, world)
    runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, t, {}, tmp_path / "last.pt"), cpu, world)
    runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, t, None, None, init={}), cpu, world)


def test_grad_accum_must_split_over_the_processes_and_cuda_graphs_count_per_process(tmp_path, monkeypatch):
    """Bug caught: CUDA graphs refused for --grad_accum 2 over 2 processes (one micro-batch each: the
    per-process count taken as the whole --grad_accum), or a --grad_accum that does not split allowed."""
    monkeypatch.setattr(runtime, "device_memory", lambda device: None)
    cuda, two = torch.device("cuda"), runtime.World(0, 2)
    t = TrainArgs(compile="true", compile_mode="reduce-overhead", grad_accum=2)
    runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, t, None, None), cuda, two)  # 1 each: allowed
    with pytest.raises(ConfigError, match=r"\(here 2\); use --grad_accum 2"):
        runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, replace(t, grad_accum=4), None, None), cuda,
                               two)
    three = (r"--grad_accum 3 does not split over 2 processes; use a multiple of 2, e.g. --grad_accum 4 "
             r"\(a step's batch is --batch_size x --grad_accum sequences: --batch_size 96 --grad_accum 4 "
             r"keeps its 384\)$")  # (the way on, typed out)
    with pytest.raises(ConfigError, match=three):
        runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, TrainArgs(grad_accum=3), None, None),
                               torch.device("cpu"), two)
    # Bug caught: the advice doubled a resumed run's batch without a word (--grad_accum 1 -> 2 over 2)
    with pytest.raises(ConfigError, match=r"2 \(.*: --batch_size 5 --grad_accum 2 keeps its 10\)$"):
        runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, TrainArgs(batch_size=10), None, None),
                               torch.device("cpu"), two)
    with pytest.raises(ConfigError, match=r"e.g. --grad_accum 2$"):  # (no batch of 2 that keeps 7 sequences)
        runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, TrainArgs(batch_size=7), None, None),
                               torch.device("cpu"), two)
    # --eval_only trains no micro-batch: a checkpoint's --grad_accum 3 (or 4, with CUDA graphs) evaluates on 2
    for accum, device in ((3, torch.device("cpu")), (4, cuda)):
        evaluate = replace(t, grad_accum=accum, eval_only=True)
        runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, evaluate, None, None), device, two)
    # Bug caught: a finished run resumed on 2 processes (its --grad_accum 1) was told to split its batch,
    # not that it had reached its --max_steps (train.finished_run, after these checks)
    done = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(max_steps=5), {"step": 5}, tmp_path / "last.pt")
    runplan.check_settings(done, torch.device("cpu"), two)
    with pytest.raises(ConfigError, match="--grad_accum 1 does not split over 2 processes"):
        runplan.check_settings(done._replace(ckpt={"step": 4}), torch.device("cpu"), two)


def test_more_layers_to_recompute_than_the_model_has_is_refused_and_none_without_checkpointing_warned(
        tmp_path, monkeypatch):
    """--grad_checkpoint_layers N recomputes the first N decoder layers: more than the model has is a
    one-line error before any work (not all of them, silently), and N typed without --grad_checkpoint
    true a warning (no layer is recomputed), beside --eval_only too (where it sizes the evaluation's
    batch: refused alike past the model's layers, no "trains nothing" warning)."""
    monkeypatch.setattr(runtime, "device_memory", lambda device: None)
    cpu, world = torch.device("cpu"), runtime.World()
    on = TrainArgs(grad_checkpoint=True, grad_checkpoint_layers=DEBUG.n_layers)
    runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, on, None, None), cpu, world)
    too_many = replace(on, grad_checkpoint_layers=DEBUG.n_layers + 1)
    with pytest.raises(ConfigError, match=r"^--grad_checkpoint_layers 5: the model has 4 decoder layers; "
                                          r"recompute at most 4 \(0 = all of them\)$"):
        runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, too_many, None, None), cpu, world)
    evaluate = runplan.RunPlan(tmp_path, DEBUG, replace(too_many, eval_only=True), None, None)
    with pytest.raises(ConfigError, match=r"^--grad_checkpoint_layers 5: "):  # (it sizes the evaluation)
        runplan.check_settings(evaluate, cpu, world)
    given = {"grad_checkpoint_layers"}
    off = runplan.RunPlan(None, DEBUG, TrainArgs(grad_checkpoint_layers=2), None, None)
    assert runplan.setting_warnings(off, given) == [
        "warning: --grad_checkpoint_layers 2 has no effect without --grad_checkpoint true (no layer is "
        "recomputed); pass both, or drop it"]
    both = off._replace(train_args=replace(on, grad_checkpoint_layers=2))
    assert runplan.setting_warnings(both, given) == []
    # beside --eval_only it sizes the evaluation's auto batch (train.eval_batch_multiple), as
    # --grad_checkpoint does: no warning, but none without --grad_checkpoint true
    evaluating = off._replace(train_args=replace(on, grad_checkpoint_layers=2, eval_only=True))
    assert runplan.setting_warnings(evaluating, given) == []
    unchecked = evaluating._replace(train_args=replace(off.train_args, eval_only=True))
    assert runplan.setting_warnings(unchecked, given) == [
        "warning: --grad_checkpoint_layers 2 has no effect without --grad_checkpoint true (no layer is "
        "recomputed); pass both, or drop it"]
    with pytest.raises(ConfigError, match="grad_checkpoint_layers"):
        TrainArgs(grad_checkpoint_layers=-1)


def test_memory_past_the_devices_is_refused_and_unknown_memory_is_not_checked(tmp_path, monkeypatch):
    """Bug caught: the memory check made against an unknown (None) device memory, or not made."""
    p = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(batch_size=8), None, None)  # (loss past the gradients)
    need = sum(runplan.memory_floor(DEBUG, p.train_args).values())
    cpu, world = torch.device("cpu"), runtime.World()
    monkeypatch.setattr(runtime, "device_memory", lambda device: need - 1)
    with pytest.raises(runplan.DeviceError, match="--max_seq_len 64 x --batch_size 8 needs at least"):
        runplan.check_settings(p, cpu, world)
    monkeypatch.setattr(runtime, "device_memory", lambda device: need)
    runplan.check_settings(p, cpu, world)
    monkeypatch.setattr(runtime, "device_memory", lambda device: None)
    runplan.check_settings(p, cpu, world)
    # Bug caught: weights alone past the memory (--vocab_size 10**9) were blamed on the context and batch
    weights = runplan.fixed_memory(DEBUG, p.train_args)
    monkeypatch.setattr(runtime, "device_memory", lambda device: weights - 1)
    with pytest.raises(runplan.DeviceError, match=r"^the model's weights and optimizer state alone need "
                                                  r".* use a smaller model \(--vocab_size, --dim"):
        runplan.check_settings(p, cpu, world)


def test_weights_past_the_memory_of_a_checkpoints_model_or_of_many_processes_name_a_fix_that_works(
        tmp_path, monkeypatch):
    """Bug caught: a resumed (or --init_from, --eval_only) checkpoint whose weights alone exceed the
    memory was told to use a smaller model (--vocab_size, --dim, ...), options refused beside a
    checkpoint; and two CPU processes that each fit alone were not told to run fewer."""
    resumed = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(batch_size=2), {"step": 1}, tmp_path / "last.pt")
    weights = runplan.fixed_memory(DEBUG, resumed.train_args)
    monkeypatch.setattr(runtime, "device_memory", lambda device: weights - 1)
    with pytest.raises(runplan.DeviceError, match=r"alone need .* GB; use a device with more memory \(a "
                                                  r"checkpoint's model is as it was trained\)$"):
        runplan.check_settings(resumed, torch.device("cuda", 0), runtime.World())
    monkeypatch.setattr(runtime, "local_processes", lambda: 2)
    monkeypatch.setattr(runtime, "device_memory", lambda device: weights)
    fresh = resumed._replace(ckpt=None, ckpt_path=None, train_args=TrainArgs(batch_size=2, grad_accum=2))
    with pytest.raises(runplan.DeviceError, match=r"for the 2 processes here but cpu has .* GB; run fewer "
                                                  r"processes, or use a smaller model \(--vocab_size"):
        runplan.check_settings(fresh, torch.device("cpu"), runtime.World(0, 2))


def test_the_cpu_memory_check_counts_the_processes_of_the_machine_and_is_said_once_there(tmp_path,
                                                                                        monkeypatch):
    """Bug caught: under `torchrun --nproc_per_node 2` on a CPU, a batch too big for the machine was
    refused by each process with the same line (the CPU's memory is the machine's, not the process's),
    and two processes that each fit but together did not passed the check."""
    import errors
    p = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(batch_size=8, grad_accum=2), None, None)
    need = sum(runplan.memory_floor(DEBUG, p.train_args, world_size=2).values())  # (the batch's moment)
    cpu, two = torch.device("cpu"), runtime.World(1, 2)
    torchrun = dict(TORCHELASTIC_RUN_ID="job", RANK="1", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runtime, "device_memory", lambda device: 2 * need - 1)
    with pytest.raises(errors.MachineError, match="for the 2 processes here, but cpu has") as e:
        runplan.check_settings(p, cpu, two)
    assert not errors.reports(e.value) and e.value.exit_code == 2  # (local rank 0 says it for the machine)
    monkeypatch.setattr(runtime, "device_memory", lambda device: 2 * need)
    runplan.check_settings(p, cpu, two)
    monkeypatch.setattr(runtime, "device_memory", lambda device: need)  # a GPU is the process's own
    runplan.check_settings(p, torch.device("cuda", 1), two)


def test_a_plot_is_checked_against_the_files_of_the_run_folder_it_is_written_in(tmp_path):
    """Bug caught: --plot NAME checked in --out_dir, not in the run folder the plot is written in: the run
    folder's notes.txt replaced with the loss plot without a word, and a notes.txt beside the runs refused."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    (tmp_path / "other").write_text("not the run's")  # (no suffix: a new name in the run folder, a PNG)
    cpu, world = torch.device("cpu"), runtime.World()

    def check(plot):
        args = TrainArgs(out_dir=str(tmp_path), run="r", plot=plot)
        runplan.check_settings(runplan.RunPlan(run_dir, DEBUG, args, None, None), cpu, world)
    with pytest.raises(ConfigError, match=r"^--plot notes\.txt: the plot would replace that file"):
        check("notes.txt")
    check("other")
    assert (run_dir / "notes.txt").read_text() == "mine"


# --- claim_folder and check_same_model --------------------------------------------------------------

def test_a_refused_claim_lets_go_of_the_folders_lock(tmp_path):
    """Bug caught: the run folder left locked after claim_folder refused it (a retry in the same
    process, or another train.py, told the folder is in use)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    new = runplan.RunPlan(last.parent, DEBUG, TrainArgs(), None, None)
    try:
        runplan.claim_folder(new)
    except RunError as e:  # (kept, with its traceback, as a caller reporting it would)
        refused = e
    assert str(refused).endswith("already holds a checkpoint (last.pt); pass --resume to continue it or "
                                 "pick another --run")
    assert not storage.held(last.parent / "run.lock")
    (last.parent / "last.pt").rename(last.parent / "best.pt")  # best.pt alone: a run killed before last.pt
    with pytest.raises(RunError, match=re.escape(f"holds a checkpoint (best.pt); pass --resume "
                                                 f"{last.parent / 'best.pt'} to continue")):
        runplan.claim_folder(new)
    (last.parent / "best.pt").rename(last)
    other = fake_checkpoint(tmp_path / "ckpt" / "o" / "last.pt")
    fork = runplan.RunPlan(last.parent, DEBUG, TrainArgs(), checkpoint.load_checkpoint(other), other)
    with pytest.raises(RunError, match="already holds a run of its own"):
        runplan.claim_folder(fork)
    assert not storage.held(last.parent / "run.lock")
    (last.parent / "last.pt").rename(last.parent / "best.pt")  # its best.pt alone is its own run's too
    with pytest.raises(RunError, match=re.escape(f"already holds a run of its own (best.pt), which resuming "
                                                 f"{other} there would replace")):
        runplan.claim_folder(fork)
    (last.parent / "best.pt").rename(last)
    own = runplan.RunPlan(last.parent, DEBUG, TrainArgs(), checkpoint.load_checkpoint(last), last)
    folder = runplan.claim_folder(own)  # its own checkpoint: taken
    assert storage.held(last.parent / "run.lock")
    folder.release()


def test_a_fork_into_an_empty_folder_is_claimed(tmp_path):
    """Bug caught: a fork refused from a folder with no checkpoint of its own."""
    other = fake_checkpoint(tmp_path / "ckpt" / "o" / "last.pt")
    fork = runplan.RunPlan(tmp_path / "ckpt" / "f", DEBUG, TrainArgs(), checkpoint.load_checkpoint(other),
                           other)
    assert fork.forks
    runplan.claim_folder(fork).release()


def test_best_pt_resumed_in_its_folder_never_writes_over_a_later_last_pt(tmp_path):
    """Bug caught: --resume RUN/best.pt (step 3) in its own folder, whose last.pt is at step 5, taken:
    the run wrote its last.pt over the later one and cut metrics.jsonl back to step 3, saying only
    "dropped 3 of its records". Refused before anything is written, naming the ways on; a last.pt at
    the same step, or one that cannot be read (why best.pt is resumed, often), does not stop it."""
    out = tmp_path / "ckpt"
    best = fake_checkpoint(out / "r" / "best.pt", max_steps=8)
    checkpoint.save_checkpoint(best, {**checkpoint.load_checkpoint(best), "step": 3})
    last = best.with_name("last.pt")
    checkpoint.save_checkpoint(last, {**checkpoint.load_checkpoint(best), "step": 5})
    before = last.read_bytes()
    p = plan(tmp_path, resume=str(best))
    assert not p.forks
    with pytest.raises(RunError, match=re.escape(
            f"{last} is at step 5, later than {best} (step 3), and resuming that here would write over it "
            f"and drop metrics.jsonl's records after step 3; fork it into a new folder (--resume {best} "
            f"--run NEW_NAME), resume last.pt (--resume {out / 'r'}), or move {last} away "
            "first")):
        runplan.claim_folder(p)
    assert last.read_bytes() == before and not storage.held(last.parent / "run.lock")
    runplan.claim_folder(plan(tmp_path, resume=str(best), run="f")).release()  # the fork it advises
    runplan.claim_folder(plan(tmp_path, resume=str(last))).release()  # last.pt itself
    # lowered to its step, a best.pt of the way (step 3 of 8) is not a finished run: it would end there,
    # writing last.pt over the later one; a best.pt that ended its run (step 3 of 3) writes nothing
    with pytest.raises(RunError, match=re.escape(f"{last} is at step 5, later than {best} (step 3)")):
        runplan.claim_folder(plan(tmp_path, resume=str(best), max_steps=3))
    ended = checkpoint.load_checkpoint(best)
    checkpoint.save_checkpoint(best, {**ended, "train_args": {**ended["train_args"], "max_steps": 3}})
    runplan.claim_folder(plan(tmp_path, resume=str(best), max_steps=3)).release()  # finished: writes nothing
    checkpoint.save_checkpoint(best, ended)
    checkpoint.save_checkpoint(last, {**checkpoint.load_checkpoint(best), "step": 3})
    runplan.claim_folder(plan(tmp_path, resume=str(best))).release()  # the same step
    last.write_bytes(b"torn")
    runplan.claim_folder(plan(tmp_path, resume=str(best))).release()  # last.pt unreadable


def test_the_folders_model_json_is_compared_on_the_keys_it_has(tmp_path):
    """Bug caught: a model.json lacking a setting (an older version's) or not JSON stopping the resume
    with a traceback; one of another model let through."""
    last = fake_checkpoint(tmp_path / "r" / "last.pt")
    p = runplan.RunPlan(last.parent, DEBUG, TrainArgs(), checkpoint.load_checkpoint(last), last)
    model_json = last.parent / "model.json"
    model_json.write_text('{"dim": 64}')
    runplan.check_same_model(p)
    model_json.write_text("not json")
    runplan.check_same_model(p)
    model_json.write_text('{"dim": 48, "top_k": 1}')
    with pytest.raises(CheckpointError, match=r"its settings differ from .*model.json \(dim: checkpoint 64, "
                                              r"folder 48\); resume it into a folder of its own"):
        runplan.check_same_model(p)
    runplan.check_same_model(p._replace(ckpt=None, ckpt_path=None))  # a new run: nothing to compare


def test_a_run_whose_wandb_run_did_not_finish_gets_a_new_one(tmp_path, monkeypatch):
    """Bug caught: a W&B run that failed to finish gone on with (its history may lack records)."""
    last = tmp_path / "r" / "last.pt"
    p = runplan.RunPlan(tmp_path / "r", DEBUG, TrainArgs(), {"wandb_id": "abc"}, last)
    monkeypatch.setattr(runplan.runlog, "unfinished_wandb", lambda run_dir: {"abc"})
    assert runplan.wandb_id(p) is None
    monkeypatch.setattr(runplan.runlog, "unfinished_wandb", lambda run_dir: {"xyz"})
    assert runplan.wandb_id(p) == "abc"


def test_a_resume_that_drops_records_past_its_checkpoint_gets_a_new_wandb_run(tmp_path):
    """A rollback (last.pt moved away, an earlier checkpoint resumed) drops metrics.jsonl's records
    past its step, which the W&B run got: a new W&B run, said once; the record at the checkpoint's
    own step (a stopped run's partial one) is no reason, nor is W&B off or an evaluation.

    Bug caught: the W&B run went on with, its charts showing the old values of the re-run steps."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "kind": "train"}) + "\n"
                                                   for s in (2, 4, 6, 8)))
    p = runplan.RunPlan(run_dir, DEBUG, TrainArgs(wandb_mode="offline"), {"wandb_id": "abc", "step": 4},
                        run_dir / "best.pt")
    said = []
    assert runplan.wandb_id(p, said.append) is None
    assert said == ["wandb: metrics.jsonl holds 2 records past step 4, which W&B run abc may have got and "
                    "cannot take back; a new W&B run gets the history from the start (the old one is left as "
                    "it was)"]
    for quiet in (TrainArgs(wandb_mode="disabled"), TrainArgs(wandb_mode="offline", eval_only=True)):
        said.clear()
        assert runplan.wandb_id(p._replace(train_args=quiet), said.append) is None and said == []
    assert runplan.wandb_id(p._replace(ckpt={"wandb_id": "abc", "step": 8}), said.append) == "abc"
    assert said == []


@pytest.mark.parametrize("n_layers, moe_every", [(5, 2), (7, 3), (2, 3)])
def test_parameters_count_the_moe_layers_of_a_depth_moe_every_does_not_divide(n_layers, moe_every):
    """Bug caught: the MoE layers counted as ceil(n_layers / moe_every) (layers moe_every-1, 2*moe_every-1,
    ... are MoE: floor), which only presets of a depth moe_every divides hide."""
    from model import Llama4
    args = debug_args(n_layers=n_layers, moe_every=moe_every)
    with torch.device("meta"):
        assert runplan.parameters(args) == sum(p.numel() for p in Llama4(args).parameters())


def test_a_run_folder_without_a_checkpoint_yet_gets_the_advice_of_what_was_asked(tmp_path):
    """Bug caught: --eval_only on a run that stopped before its first save told to start it again
    without --resume (an option it did not type) rather than to pass another checkpoint."""
    (tmp_path / "ckpt" / "r").mkdir(parents=True)
    (tmp_path / "ckpt" / "r" / "train.json").write_text("{}")
    (tmp_path / "ckpt" / "r" / "run.lock").touch()
    with pytest.raises(ConfigError, match=re.escape(f"has not reached it); {checkpoint.NOT_SAVED_FIX}")):
        plan(tmp_path, run="r", eval_only=True)
    with pytest.raises(ConfigError, match=re.escape("has not reached it); start it again without --resume")):
        plan(tmp_path, run="r", resume="latest")


def test_a_run_folder_without_a_checkpoint_yet_says_to_start_it_again_with_its_own_settings(tmp_path):
    """Bug caught: --resume on a run that stopped before its first save said "start it again without
    --resume": done as said, that is the default preset on the Hub's data, not the run's settings (its
    model.json and train.json, named where they were written), nor its folder (--resume ckpt/r with no
    --run started a run of another name); the newest run without --run too."""
    run_dir = tmp_path / "ckpt" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "train.json").write_text("{}")
    (run_dir / "run.lock").touch()
    again = f"start it again without --resume, with --run r --out_dir {tmp_path / 'ckpt'} and the settings it"
    for how in (dict(run="r", resume="latest"), dict(resume=str(run_dir))):
        with pytest.raises(ConfigError, match=re.escape(f"it); {again} was started with (in its train.json)")
                           + "$"):
            plan(tmp_path, **how)
    (run_dir / "model.json").write_text("{}")
    fake_checkpoint(tmp_path / "ckpt" / "old" / "last.pt", run_folder=False)
    os.utime(tmp_path / "ckpt" / "old" / "last.pt", (1, time.time() - 100))
    with pytest.raises(ConfigError, match=re.escape(f"{again} was started with (in its model.json and "
                                                    "train.json), or pass --run old")):
        runplan.run_to_resume(TrainArgs(resume="latest"), tmp_path / "ckpt")
    (run_dir / "train.json").unlink()
    (run_dir / "model.json").unlink()  # (killed while its data was prepared: run.lock alone)
    with pytest.raises(ConfigError, match=re.escape(f"{again} was started with") + "$"):
        plan(tmp_path, run="r", resume="latest")


def test_the_options_that_name_a_run_are_quoted_and_leave_out_the_default_out_dir(tmp_path, monkeypatch):
    """Bug caught: a run named "my run" was told --run my run --resume, and one named -x --run -x (which
    argparse takes for an option); a run_dir of "." (--resume last.pt inside the run) named no run."""
    assert runplan.run_options(Path("checkpoints") / "r") == "--run r"
    assert runplan.run_options(Path("out dir") / "my run") == "--run 'my run' --out_dir 'out dir'"
    assert runplan.run_options(Path("checkpoints") / "-x") == "--run=-x"
    assert runplan.run_options(Path("-o") / "r") == "--run r --out_dir=-o"
    (tmp_path / "ckpt" / "r").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "ckpt" / "r")
    assert runplan.run_options(Path(".")) == f"--run r --out_dir {tmp_path / 'ckpt'}"
    assert config.parse_args([ModelArgs, TrainArgs], ["--run=-x"])[1][1].run == "-x"  # (as it says)


def test_resume_with_no_run_anywhere_names_the_option_for_a_path(tmp_path):
    """Bug caught: --resume (or --eval_only) with no run under --out_dir said "pass a path", naming no
    option: train.py takes it as --resume."""
    (tmp_path / "ckpt").mkdir()
    for train_args in (TrainArgs(resume="latest"), TrainArgs(eval_only=True)):
        with pytest.raises(CheckpointError) as e:
            runplan.run_to_resume(train_args, tmp_path / "ckpt")
        assert str(e.value) == (f"no run with a last.pt under {tmp_path / 'ckpt'}/; train one first or pass "
                                "--resume a .pt file or a run folder")


def test_resume_with_an_out_dir_that_is_a_file_says_it_is_a_file(tmp_path):
    """Bug caught: --resume or --eval_only (with --run or without) where --out_dir (checkpoints/ by default)
    is a file said "no run with a last.pt under checkpoints/" or "there is no run x under --out_dir", not
    that it is a file."""
    (tmp_path / "ckpt").write_text("")
    for train_args in (TrainArgs(resume="latest"), TrainArgs(eval_only=True),
                       TrainArgs(resume="latest", run="x"), TrainArgs(eval_only=True, run="x")):
        with pytest.raises(CheckpointError) as e:
            runplan.run_to_resume(train_args, tmp_path / "ckpt")
        assert str(e.value) == (f"--out_dir {tmp_path / 'ckpt'} is a file, not a folder of runs; pass the "
                                "--out_dir the run was trained in, or --resume a .pt file or a run folder")


def test_an_interrupt_while_loading_the_checkpoint_names_the_run_folder(tmp_path, monkeypatch):
    """Bug caught: a Ctrl-C during the checkpoint's load not carrying the run folder (main() names what
    is left there to resume from)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "load_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt) as e:
        plan(tmp_path, resume=str(last), run="f")
    assert e.value.run_dir == tmp_path / "ckpt" / "f"


def test_another_val_fraction_of_the_same_data_is_warned_of_however_its_path_is_spelled(tmp_path,
                                                                                        monkeypatch):
    """Bug caught: the checkpoint's --data and this session's compared as typed, not as the files they
    name (a link to it, or a relative spelling, took another held-out slice without a word)."""
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")
    monkeypatch.chdir(tmp_path)
    ckpt = {"train_args": config.to_dict(TrainArgs(data=str(tmp_path / "a.txt"), val_fraction=0.01))}
    for data in ("a.txt", str(tmp_path / "link.txt")):
        p = runplan.RunPlan(None, DEBUG, TrainArgs(data=data, val_fraction=0.5, eval_only=True), ckpt, None)
        lines = runplan.setting_warnings(p, {"val_fraction"})
        assert "--val_fraction 0.5 is not the checkpoint's" in " ".join(lines), data


def test_a_checkpoint_that_saved_no_val_fraction_is_not_warned_of_another(tmp_path, monkeypatch):
    """Holds: a checkpoint whose settings hold no --val_fraction (an older one's) has no held-out slice to
    compare a typed one with: no warning (and no KeyError reading the slice it does not have)."""
    (tmp_path / "a.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    saved = config.to_dict(TrainArgs(data=str(tmp_path / "a.txt")))
    del saved["val_fraction"]
    p = runplan.RunPlan(None, DEBUG, TrainArgs(data="a.txt", val_fraction=0.5, eval_only=True),
                        {"train_args": saved}, None)
    assert not any("val_fraction" in line for line in runplan.setting_warnings(p, {"val_fraction"}))


def test_a_run_or_out_dir_eval_only_does_not_use_is_warned_of(tmp_path):
    """Bug caught: train.py --eval_only --resume CKPT --run zz (or --out_dir elsewhere) said nothing of
    the --run and --out_dir it ignores (it scores CKPT where it lies, and writes nothing); a --run or
    --out_dir that names where CKPT lies, or finds it (--resume a --out_dir X), is not named."""
    out = tmp_path / "ckpt"
    best = fake_checkpoint(out / "a" / "best.pt")
    fake_checkpoint(out / "a" / "last.pt")
    p = plan(tmp_path, resume=str(best), run="zz", eval_only=True)
    assert runplan.setting_warnings(p, {"resume", "run", "eval_only"}) == [
        f"warning: --eval_only scores {best} where it lies and writes nothing: --run has no effect"]
    p = plan(tmp_path, {"out_dir"}, resume=str(best), run="zz", eval_only=True, out_dir=str(tmp_path / "o"))
    assert runplan.setting_warnings(p, {"resume", "run", "out_dir", "eval_only"}) == [
        f"warning: --eval_only scores {best} where it lies and writes nothing: --run and --out_dir have no "
        "effect"]
    for typed in ({"run": "a"}, {"out_dir": str(out)}):  # where it lies, or what found it (a run name)
        p = plan(tmp_path, set(typed), resume=str(best) if "run" in typed else "a", eval_only=True, **typed)
        assert runplan.setting_warnings(p, {"resume", "eval_only", *typed}) == []
    training = plan(tmp_path, resume=str(best), run="zz")  # a fork: --run is used
    assert runplan.setting_warnings(training, {"resume", "run"}) == []


def test_a_data_source_eval_only_does_not_score_is_warned_of(tmp_path):
    """Bug caught: train.py --run r --eval_only --data valid.txt, for a run trained with --val_data, scored
    the run's --val_data and said nothing of the --data typed (meant: --val_data valid.txt); where the
    run held out a slice of --data, or --val_data is typed too, --data is used and not named."""
    out, text = tmp_path / "ckpt", {}
    for name in ("train", "val", "valid", "more"):
        text[name] = tmp_path / f"{name}.txt"
        text[name].write_text("once upon a time\n")
    fake_checkpoint(out / "a" / "last.pt", data=str(text["train"]), val_data=str(text["val"]))
    p = plan(tmp_path, run="a", eval_only=True, data=str(text["valid"]))
    assert runplan.setting_warnings(p, {"run", "eval_only", "data"}) == [
        f"warning: --eval_only scores the run's --val_data {text['val']}, not a slice of --data: --data has "
        f"no effect; pass --val_data {text['valid']} to score it"]
    p = plan(tmp_path, run="a", eval_only=True, hf_dataset="user/stories")  # (beside --data: said once)
    assert [line for line in runplan.setting_warnings(p, {"run", "eval_only", "hf_dataset"})
            if "--eval_only" in line] == []
    p = plan(tmp_path, run="a", eval_only=True, data=str(text["more"]), val_data=str(text["valid"]))
    assert runplan.setting_warnings(p, {"run", "eval_only", "data", "val_data"}) == []
    fake_checkpoint(out / "b" / "last.pt", data=str(text["train"]))  # a held-out slice: --data picks it
    p = plan(tmp_path, run="b", eval_only=True, data=str(text["valid"]))  # (its slice: the test below)
    assert runplan.setting_warnings(p, {"run", "eval_only", "data"})[0].startswith(
        f"warning: --eval_only scores 1 in 100 documents of --data {text['valid']}")
    training = plan(tmp_path, run="a", resume="latest", data=str(text["more"]))  # a resume trains on it
    assert runplan.setting_warnings(training, {"run", "resume", "data"}) == []


def test_the_eval_only_warning_of_an_unscored_source_names_a_fix_that_works(tmp_path):
    """Bug caught: --eval_only --data val.txt, for a run whose --val_data is val.txt (the text typed is
    the text scored), was told "--data has no effect; pass --val_data val.txt"; an --hf_dataset typed
    for a run on the hub with its own --val_data was told "pass --val_data user/stories", which
    --val_data refuses ("no such file": it takes files); with --data and --hf_dataset both typed, the
    line named --hf_dataset (which --data makes moot) and not the --data meant to be scored."""
    out, text = tmp_path / "ckpt", {}
    for name in ("train", "val", "more"):
        text[name] = tmp_path / f"{name}.txt"
        text[name].write_text("once upon a time\n")
    fake_checkpoint(out / "a" / "last.pt", data=str(text["train"]), val_data=str(text["val"]))

    def said(run, **typed):
        lines = runplan.setting_warnings(plan(tmp_path, run=run, eval_only=True, **typed),
                                         {"run", "eval_only", *typed})
        return [line for line in lines if line.startswith("warning: --eval_only")]
    assert said("a", data=str(text["val"])) == []
    assert said("a", data=str(text["more"]), hf_dataset="user/stories") == [
        f"warning: --eval_only scores the run's --val_data {text['val']}, not a slice of --data: --data has "
        f"no effect; pass --val_data {text['more']} to score it"]
    fake_checkpoint(out / "h" / "last.pt", data="", hf_dataset="user/old", val_data=str(text["val"]))
    assert said("h", hf_dataset="user/stories") == [
        f"warning: --eval_only scores the run's --val_data {text['val']}, not the validation split of "
        "--hf_dataset: --hf_dataset has no effect; pass --val_data '' to score that split"]
    p = plan(tmp_path, run="h", eval_only=True, hf_dataset="user/stories", val_data="")  # (the fix works)
    assert (p.train_args.val_data, runplan.setting_warnings(p, {"run", "eval_only", "hf_dataset",
                                                                 "val_data"})) == ("", [])


def test_eval_only_on_another_data_says_it_scores_a_held_out_slice_of_it(tmp_path):
    """Bug caught: --eval_only --data valid.txt, for a run without --val_data, scored 1 in 100 of
    valid.txt's documents (the slice a run on it would hold out) without a word, where the user meant
    to score the file; the run's own --data (its held-out slice) and a --val_data are not warned of."""
    out, text = tmp_path / "ckpt", {}
    for name in ("train", "other"):
        text[name] = tmp_path / f"{name}.txt"
        text[name].write_text("once upon a time\n")
    fake_checkpoint(out / "a" / "last.pt", data=str(text["train"]), val_data="")

    def said(**typed):
        lines = runplan.setting_warnings(plan(tmp_path, run="a", eval_only=True, **typed),
                                         {"run", "eval_only", *typed})
        return [line for line in lines if line.startswith("warning: --eval_only")]
    assert said(data=str(text["other"])) == [
        f"warning: --eval_only scores 1 in 100 documents of --data {text['other']}, the slice a run on it "
        f"would hold out (--val_fraction 0.01), not all of it; pass --val_data {text['other']} to score it "
        "whole"]
    assert said(data=str(text["train"])) == []  # the run's own held-out slice
    assert said(data=str(text["other"]), val_data=str(text["other"])) == []  # (the fix)
    assert said() == []


def test_training_settings_typed_beside_eval_only_are_warned_of():
    """Bug caught: train.py --eval_only --lr 5 --max_steps 3 said nothing of settings that change nothing
    there; those of the evaluation (--eval_windows, --batch_size) and those untyped are not named."""
    p = runplan.RunPlan(None, DEBUG, TrainArgs(eval_only=True, lr=5.0, max_steps=3), None, None)
    assert runplan.setting_warnings(p, {"lr", "max_steps", "eval_windows", "batch_size"}) == [
        "warning: --eval_only trains nothing: --max_steps, --lr have no effect"]
    assert runplan.setting_warnings(p, {"grad_clip"}) == [
        "warning: --eval_only trains nothing: --grad_clip has no effect"]
    assert runplan.setting_warnings(p, {"eval_windows"}) == []
    training = p._replace(train_args=replace(p.train_args, eval_only=False, max_steps=1000))
    assert runplan.setting_warnings(training, {"lr"}) == []


def test_a_warmup_as_long_as_the_run_is_warned_of():
    """Bug caught: --warmup_steps equal to --max_steps let through (the rate never decays there either)."""
    p = runplan.RunPlan(None, DEBUG, TrainArgs(max_steps=10, warmup_steps=10, lr=1e-3), None, None)
    assert runplan.setting_warnings(p, set()) == [
        "warning: --warmup_steps 10 is not below --max_steps 10: the learning rate rises to 0.001 "
        "(--lr 0.001) and never decays; lower --warmup_steps"]
    assert runplan.setting_warnings(p._replace(train_args=replace(p.train_args, warmup_steps=9)), set()) == []


def test_a_run_resumed_with_max_steps_lowered_to_its_step_is_not_warned_of_its_warmup(tmp_path):
    """Bug caught: a stopped run (step 5 of 8) resumed with --max_steps 5, which trains no step (it
    ends with its final evaluation), was warned that --warmup_steps 5 "is not below --max_steps 5"
    and that its rate "never decays", as if it would train; so was one whose evaluation a signal put
    off at its last step. A resume that trains on is warned as before."""
    ckpt = {"step": 5, "train_args": config.to_dict(TrainArgs(max_steps=8, warmup_steps=5))}
    stopped = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(max_steps=5, warmup_steps=5, lr=1e-3), ckpt,
                              tmp_path / "last.pt")
    assert runplan.finished_limit(stopped) is None  # (it is not a finished run: it ends at step 5)
    assert runplan.setting_warnings(stopped, {"resume", "max_steps"}) == []
    put_off = stopped._replace(ckpt={**ckpt, "train_args": config.to_dict(TrainArgs(max_steps=5)),
                                     "eval_due": True})
    assert runplan.setting_warnings(put_off, {"resume", "warmup_steps"}) == []
    budget = replace(stopped.train_args, max_steps=8, warmup_steps=8, max_minutes=1)
    spent = stopped._replace(train_args=budget, ckpt={**ckpt, "elapsed": 61.0})  # (its time so far)
    assert runplan.setting_warnings(spent, {"resume", "max_minutes", "warmup_steps"}) == []
    trains = stopped._replace(train_args=replace(stopped.train_args, max_steps=6, warmup_steps=6))
    assert runplan.setting_warnings(trains, {"resume", "max_steps"}) == [
        "warning: --warmup_steps 6 is not below --max_steps 6: the learning rate rises to 0.001 "
        "(--lr 0.001) and never decays; lower --warmup_steps"]


def test_a_compile_mode_beside_compile_false_is_warned_of():
    """Bug caught: --compile false --compile_mode reduce-overhead trained eagerly without a word of the mode
    typed; the default mode, or a mode beside --compile auto or true, is not warned of."""
    p = runplan.RunPlan(None, DEBUG, TrainArgs(compile="false", compile_mode="reduce-overhead"), None, None)
    assert runplan.setting_warnings(p, {"compile", "compile_mode"}) == [
        "warning: --compile_mode reduce-overhead has no effect with --compile false (nothing is compiled); "
        "drop it, or pass --compile true to compile in that mode"]
    for compile in ("auto", "true"):
        assert runplan.setting_warnings(p._replace(train_args=replace(p.train_args, compile=compile)),
                                        {"compile", "compile_mode"}) == []
    default = p._replace(train_args=replace(p.train_args, compile_mode="default"))
    assert runplan.setting_warnings(default, {"compile", "compile_mode"}) == []


def test_llama3_rope_scaling_from_a_context_no_shorter_than_the_models_is_warned_of():
    """Bug caught: --rope_scaling llama3 on the debug preset (context 64) trained without a word with
    the default --rope_original_max_seq_len 8192, which transformers warns of at export ("must be less
    than max_position_embeddings"); a shorter original context, a resume and --init_from are not warned."""
    p = runplan.RunPlan(None, debug_args(rope_scaling="llama3"), TrainArgs(), None, None)
    assert runplan.setting_warnings(p, {"rope_scaling"}) == [
        "warning: --rope_scaling llama3 stretches a context of --rope_original_max_seq_len 8192 to a longer "
        "one, and --max_seq_len 64 is not longer (transformers warns of it at export); pass "
        "--rope_original_max_seq_len 8 (--max_seq_len / --rope_factor), or --rope_scaling none"]
    assert runplan.setting_warnings(p._replace(model_args=replace(p.model_args, rope_original_max_seq_len=8)),
                                    {"rope_scaling"}) == []
    assert runplan.setting_warnings(p._replace(init={"step": 0}), {"rope_scaling"}) == []
    assert runplan.setting_warnings(p._replace(ckpt={"step": 2}), set()) == []


def test_the_llama3_warnings_fix_is_a_context_shorter_than_the_models_at_any_rope_factor():
    """Holds: at a --rope_factor of 1 or below (positive is all it must be), --max_seq_len / --rope_factor
    is no shorter than the model's context, and the original context the warning advises is the longest
    that is shorter (63 at --max_seq_len 64), one the warning is then silent for."""
    for factor in (1.0, 0.5):
        model = debug_args(rope_scaling="llama3", rope_factor=factor)
        p = runplan.RunPlan(None, model, TrainArgs(), None, None)
        (line,) = runplan.setting_warnings(p, {"rope_scaling"})
        assert "pass --rope_original_max_seq_len 63 (--max_seq_len / --rope_factor)" in line
        fixed = p._replace(model_args=replace(p.model_args, rope_original_max_seq_len=63))
        assert runplan.setting_warnings(fixed, {"rope_scaling"}) == []


def test_llama3_rope_scaling_from_a_context_as_long_as_the_models_is_warned_of():
    """Holds: an original context equal to --max_seq_len is warned of too (transformers wants it less than
    max_position_embeddings); one token shorter is not."""
    p = runplan.RunPlan(None, debug_args(rope_scaling="llama3", rope_original_max_seq_len=64), TrainArgs(),
                        None, None)
    (line,) = runplan.setting_warnings(p, {"rope_scaling"})
    assert "--rope_original_max_seq_len 64 to a longer one, and --max_seq_len 64 is not longer" in line
    shorter = p._replace(model_args=replace(p.model_args, rope_original_max_seq_len=63))
    assert runplan.setting_warnings(shorter, {"rope_scaling"}) == []


def test_a_new_model_of_a_one_token_context_is_warned_of():
    """Bug caught: --max_seq_len 1 trained without a word a model sample.py then refuses ("the model's
    context is 1 token ...; train with --max_seq_len 2 or more"); a resumed run is not told again."""
    p = runplan.RunPlan(None, debug_args(max_seq_len=1), TrainArgs(), None, None)
    assert runplan.setting_warnings(p, {"max_seq_len"}) == [
        "warning: --max_seq_len 1: sample.py cannot generate from a model of a 1-token context (the story's "
        "start token fills it); use 2 or more for a model to sample from"]
    assert runplan.setting_warnings(p._replace(ckpt={}), set()) == []
    assert runplan.setting_warnings(p._replace(model_args=debug_args(max_seq_len=2)), set()) == []


def test_a_new_vision_model_of_a_context_an_image_fills_is_warned_of():
    """Bug caught: --vision with a context an image fills (its <|patch|> tokens and markers, after the
    start token) trained without a word, and sample.py --image then refused the model."""
    import sample
    m = debug_args(vision=True)
    image = 1 + len(sample.image_prompt(m))  # (the start token, then the image: sample.prompts_from)
    p = runplan.RunPlan(None, replace(m, max_seq_len=image), TrainArgs(), None, None)
    assert runplan.setting_warnings(p, {"max_seq_len"}) == [
        f"warning: --max_seq_len {image}: sample.py --image cannot use this --vision model, an image takes "
        f"{image} tokens of its context; use {image + 1} or more for room to write"]
    assert runplan.setting_warnings(p._replace(model_args=replace(m, max_seq_len=image + 1)), set()) == []
    assert runplan.setting_warnings(p._replace(ckpt={}), set()) == []  # (a resume: said at its start)


# --- a second audit: what the first left untested ---------------------------------------------------

def test_resume_of_a_run_under_an_out_dir_with_no_runs_still_offers_a_new_run(tmp_path):
    """Bug caught: --resume --run NAME under an --out_dir that holds no run at all not told it can drop
    --resume to start NAME as a new run (the advice kept only where other runs are listed)."""
    out = tmp_path / "empty"
    with pytest.raises(ConfigError, match=re.escape(f"there is no run r under --out_dir {out}/ (nor any "
                                                    "other run; pass the --out_dir it was trained in, or "
                                                    "drop --resume to start r as a new run)")):
        runplan.run_to_resume(TrainArgs(resume="latest", run="r"), out)


def test_a_checkpoint_that_saved_an_empty_out_dir_still_resumes(tmp_path):
    """Bug caught: the checkpoint's own --out_dir kept by resume_settings: one saved as '' (before
    --out_dir '' was refused) stopping the resume on an option nobody typed."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    state = checkpoint.load_checkpoint(last)
    state["train_args"]["out_dir"] = ""
    checkpoint.save_checkpoint(last, state)
    p = plan(tmp_path, resume=str(last))
    assert p.run_dir == last.parent and p.train_args.out_dir == str(tmp_path / "ckpt")


def test_a_file_whose_name_holds_a_glob_character_is_that_file(tmp_path, monkeypatch):
    """Bug caught: a saved --data named like a glob (d[1].txt) that is there refused as gone (looked for
    as a pattern alone), or a relative one typed left relative (taken for a pattern matching nothing)."""
    (tmp_path / "d[1].txt").write_text("x")
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", data=str(tmp_path / "d[1].txt"))
    assert plan(tmp_path, resume=str(last)).train_args.data == str(tmp_path / "d[1].txt")
    monkeypatch.chdir(tmp_path)
    assert runplan.absolute("d[1].txt") == str(tmp_path / "d[1].txt")


def test_a_resumed_training_run_checks_its_saved_data_beside_its_val_data(tmp_path):
    """Bug caught: the checkpoint's --data left unchecked whenever it has a --val_data (only --eval_only
    reads --val_data alone): a training resume whose training text is gone not told so."""
    (tmp_path / "v.txt").write_text("x")
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", data=str(tmp_path / "gone.txt"),
                           val_data=str(tmp_path / "v.txt"))
    with pytest.raises(DataError, match=re.escape(f"--data: the checkpoint's {tmp_path / 'gone.txt'} no "
                                                  "longer exists; pass --data PATH")):
        plan(tmp_path, resume=str(last))
    assert plan(tmp_path, resume=str(last), eval_only=True).train_args.val_data == str(tmp_path / "v.txt")


def test_the_memory_refusal_names_what_it_counted_and_the_fix(tmp_path, monkeypatch):
    """Bug caught: the memory refusal listing a term that is nothing (activations 0.0 at --eval_only),
    or losing the fix it names (a smaller micro-batch, --grad_accum to keep the batch)."""
    p = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(batch_size=2, eval_only=True), None, None)
    weights = runplan.memory_floor(DEBUG, p.train_args)["weights"]  # (they fit: the batch does not)
    monkeypatch.setattr(runtime, "device_memory", lambda device: weights)
    with pytest.raises(runplan.DeviceError) as e:
        runplan.check_settings(p, torch.device("cpu"), runtime.World())
    assert str(e.value) == ("--max_seq_len 64 x --batch_size 2 needs at least 0.0 GB (weights 0.0, loss "
                            "chunk 0.0) but cpu has 0.0 GB; lower --max_seq_len or --batch_size (raise "
                            "--grad_accum to keep the batch), or use a smaller model")
    assert e.value.exit_code == 2  # a setting the device cannot take, as argparse's


def test_no_overlap_is_warned_of_where_the_checkpoint_had_a_val_data_of_its_own(tmp_path):
    """Bug caught: the checkpoint's own --val_data ignored by the overlap warning: a held-out slice
    asked of a run that was validated on a file of its own told (wrongly) that its validation text
    was a held-out slice of --data."""
    (tmp_path / "a.txt").write_text("x")
    ckpt = {"train_args": config.to_dict(TrainArgs(data=str(tmp_path / "a.txt"), val_data="v.txt",
                                                   val_fraction=0.01))}
    t = TrainArgs(data=str(tmp_path / "a.txt"), val_fraction=0.5, eval_only=True)
    p = runplan.RunPlan(None, DEBUG, t, ckpt, None)
    assert runplan.setting_warnings(p, {"val_fraction", "val_data"}) == []


def test_a_claim_refused_for_another_model_lets_go_of_the_lock(tmp_path):
    """Bug caught: claim_folder not comparing the folder's model.json (another model's checkpoint resumed
    into it), or keeping the folder locked after that refusal (released on a RunError alone)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    (last.parent / "model.json").write_text('{"dim": 48}')
    own = runplan.RunPlan(last.parent, DEBUG, TrainArgs(), checkpoint.load_checkpoint(last), last)
    with pytest.raises(CheckpointError, match="is not this run's model") as refused:
        runplan.claim_folder(own)
    # (the error kept, with its traceback, as a caller reporting it would: a lock left held stays held)
    assert refused.tb is not None and not storage.held(last.parent / "run.lock")


def test_cuda_graphs_are_refused_only_where_the_model_is_compiled(tmp_path, monkeypatch):
    """Bug caught: --compile_mode reduce-overhead with --grad_accum refused on CUDA under --compile false
    (nothing compiled, no graph replayed), or let through under --compile auto (compiled on CUDA)."""
    monkeypatch.setattr(runtime, "device_memory", lambda device: None)
    cuda, world = torch.device("cuda"), runtime.World()
    t = TrainArgs(compile="false", compile_mode="reduce-overhead", grad_accum=2)
    runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, t, None, None), cuda, world)
    with pytest.raises(ConfigError, match="replays CUDA graphs"):
        runplan.check_settings(runplan.RunPlan(tmp_path, DEBUG, replace(t, compile="auto"), None, None), cuda,
                               world)


def test_eval_only_evaluates_the_checkpoint_resume_names(tmp_path):
    """Bug caught: --eval_only --resume CKPT evaluating the newest run's last.pt (or --run's) instead of
    the checkpoint named."""
    out = tmp_path / "ckpt"
    old = fake_checkpoint(out / "a" / "last.pt")
    best = fake_checkpoint(out / "a" / "best.pt")
    fake_checkpoint(out / "b" / "last.pt")
    os.utime(old, (1, time.time() - 100))
    os.utime(best, (1, time.time() - 100))
    p = plan(tmp_path, resume=str(old), eval_only=True)
    assert (p.ckpt_path, p.run_dir, p.train_args.eval_only) == (old, old.parent, True)
    assert plan(tmp_path, resume=str(best), run="a", eval_only=True).ckpt_path == best


def as_loaded(ckpt: dict) -> dict:
    """A checkpoint dict as load_resumed gives it: its training settings as the run goes on with them."""
    return {**ckpt, "train_args": runplan.run_settings(ckpt["train_args"])}


def test_a_checkpoint_saved_with_an_empty_text_field_resumes():
    """Bug caught: --text_field '' (refused since; it once trained on .txt text, which has no fields)
    saved in a checkpoint stopped its resume and --eval_only with a refusal of a setting not typed."""
    ckpt = as_loaded({**saved(), "train_args": {**config.to_dict(TrainArgs()), "text_field": ""}})
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(resume="latest"), set())
    assert t.text_field == "text"
    # the same for a --wandb_project W&B refuses (the run went without W&B: --eval_only was refused too)
    ckpt = as_loaded({**saved(), "train_args": {**config.to_dict(TrainArgs()), "wandb_project": "team/proj"}})
    _, t = runplan.resume_settings(ckpt, DEBUG, TrainArgs(resume="latest", eval_only=True), set())
    assert t.wandb_project == TrainArgs().wandb_project


def test_refusals_at_resume_keep_the_fix_they_name(tmp_path):
    """Bug caught: the weights-only refusal or the model-settings refusal losing its way on (a new
    --run; --eval_only for an import, which once also advised a new --run, which trains from scratch)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "w" / "last.pt", optimizer=False)
    with pytest.raises(CheckpointError) as e:
        plan(tmp_path, resume=str(last))
    assert str(e.value) == (f"{last} holds weights only (an import), with no optimizer state or step to "
                            "resume: it can be evaluated (--eval_only) or sampled, and a new run trains "
                            f"on from its weights with --init_from {last}")
    with pytest.raises(ConfigError) as e:
        runplan.resume_settings(saved(), debug_args(dim=48), TrainArgs(), {"dim"})
    assert str(e.value) == ("model settings differ from the checkpoint's (dim: checkpoint 64, asked 48); "
                            "drop them to use the checkpoint's, or start a new --run with them, without "
                            "--resume")


def test_model_settings_typed_at_eval_only_are_not_told_to_start_a_new_run():
    """Bug caught: `--eval_only --resume CKPT --max_seq_len 32` advised "or start a new --run", which
    trains a model from scratch: no fix for evaluating this one."""
    with pytest.raises(ConfigError) as e:
        runplan.resume_settings(saved(), debug_args(max_seq_len=32), TrainArgs(eval_only=True),
                                {"max_seq_len"})
    assert str(e.value) == ("model settings differ from the checkpoint's (max_seq_len: checkpoint 64, asked "
                            "32); drop them: --eval_only evaluates the checkpoint's model as it was trained")


def test_a_tokenizer_typed_empty_at_resume_is_kept_empty(tmp_path):
    """Bug caught: --tokenizer typed as '' at --resume (the tokenizer cached for the data, not a file)
    replaced by the copy beside the checkpoint: typed is typed, whatever its value."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    (last.parent / "tokenizer.json").write_text("{}")
    assert plan(tmp_path, resume=str(last), tokenizer="").train_args.tokenizer == ""
    assert plan(tmp_path, resume=str(last)).train_args.tokenizer == str(last.parent / "tokenizer.json")


def test_resume_typed_empty_is_refused_not_a_new_run(tmp_path):
    """Bug caught: `--resume ''` (an unset $CKPT) read as no --resume: a new run started, exit 0,
    where the user asked to go on with one."""
    with pytest.raises(ConfigError, match=r"^--resume '': name a checkpoint, a run folder or a run, or give "
                                          r"--resume alone for the run's latest checkpoint$"):
        runplan.plan_run(DEBUG, TrainArgs(out_dir=str(tmp_path), run="r"), "debug", frozenset({"resume"}))
    plan = runplan.plan_run(DEBUG, TrainArgs(out_dir=str(tmp_path), run="r"), "debug", frozenset())
    assert plan.ckpt is None and plan.run_dir == tmp_path / "r"


def test_resume_typed_empty_is_refused_at_eval_only_too(tmp_path):
    """Bug caught: `--eval_only --resume ''` (an unset $CKPT) taken as --eval_only alone: the newest run's
    last.pt evaluated in place of the checkpoint meant, without a word."""
    fake_checkpoint(tmp_path / "r" / "last.pt")
    with pytest.raises(ConfigError, match=r"^--resume '': name a checkpoint, a run folder or a run"):
        runplan.plan_run(DEBUG, TrainArgs(out_dir=str(tmp_path), eval_only=True), "debug",
                         frozenset({"resume", "eval_only"}))


def test_every_training_only_setting_typed_beside_eval_only_is_warned_of():
    """Bug caught: --plot, --wandb_* or --tokenizer_train_mb dropped from TRAINING_ONLY (typed beside
    --eval_only, they change nothing, and were named with the rest only since they were added)."""
    p = runplan.RunPlan(None, DEBUG, TrainArgs(eval_only=True), None, None)
    given = {"plot", "wandb_mode", "wandb_project", "wandb_group", "wandb_name", "tokenizer_train_mb",
             "grad_accum"}
    assert runplan.setting_warnings(p, given) == [
        "warning: --eval_only trains nothing: --grad_accum, --tokenizer_train_mb, --plot, --wandb_mode, "
        "--wandb_project, --wandb_group, --wandb_name have no effect"]


def test_the_options_that_name_a_run_from_below_its_folder_name_the_run(tmp_path, monkeypatch):
    """Bug caught: a run_dir of ".." (--resume ../last.pt from a folder inside the run) was named
    --run .. --out_dir . (a run folder's parent resolved for "." alone)."""
    (tmp_path / "ckpt" / "r" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "ckpt" / "r" / "sub")
    assert runplan.run_options(Path("..")) == f"--run r --out_dir {tmp_path / 'ckpt'}"


# --- --init_from: a new run from a checkpoint's weights ----------------------------------------------

def init_checkpoint(tmp_path, run="a", **kw):
    """A fake checkpoint of the debug preset in run folder `run`, with a tokenizer.json beside it."""
    last = fake_checkpoint(tmp_path / "ckpt" / run / "last.pt", **kw)
    (last.parent / "tokenizer.json").write_text("{}")
    return last


def test_init_from_takes_the_checkpoints_model_tokenizer_and_presets_training_settings(tmp_path):
    """Bug caught: the command line's model (the default preset's) built instead of the checkpoint's; the
    default preset's training settings for a debug checkpoint (batch 128 for a 64-dim model); a typed
    training setting dropped; the run resumed (step, optimizer, W&B) rather than started; the
    checkpoint recorded as typed (a run name, which names another file once that run goes on)."""
    last = init_checkpoint(tmp_path)
    debug = config.preset("debug", TrainArgs)
    p = runplan.plan_run(ModelArgs(), TrainArgs(init_from="a", out_dir=str(tmp_path / "ckpt"), lr=1e-3),
                         config.DEFAULT_PRESET, {"init_from", "out_dir", "lr"})
    assert p.model_args == DEBUG and p.preset == "debug" and p.run_dir.name.startswith("debug-")
    assert (p.train_args.batch_size, p.train_args.max_steps, p.train_args.lr) == (debug.batch_size,
                                                                                   debug.max_steps, 1e-3)
    assert p.ckpt is None and p.ckpt_path is None and p.init_path == last and p.init["preset"] == "debug"
    assert p.train_args.init_from == str(last.resolve()) and p.train_args.tokenizer == str(
        last.parent / "tokenizer.json")
    assert runplan.wandb_id(p) is None and not p.forks
    # --preset typed picks the training settings only; the model stays the checkpoint's
    p = plan(tmp_path, {"preset"}, model=ModelArgs(), preset="tiny", init_from=str(last.parent), run="b")
    assert (p.model_args, p.preset, p.train_args.batch_size) == (DEBUG, "tiny", 16)
    assert (p.run_dir, p.init_path) == (tmp_path / "ckpt" / "b", last)
    # an import names no preset: the one the command line has
    w = init_checkpoint(tmp_path, run="w", optimizer=False, preset=None)
    p = plan(tmp_path, model=ModelArgs(), preset=config.DEFAULT_PRESET, init_from=str(w), run="c")
    assert (p.model_args, p.preset, p.train_args.batch_size) == (DEBUG, config.DEFAULT_PRESET, 128)


def test_init_from_refuses_model_settings_typed_that_differ_from_the_checkpoints(tmp_path):
    """Bug caught: a typed --dim dropped without a word (the checkpoint's model trained), or one that
    agrees refused; the typed training settings checked against the default preset's (--lr 1e-3 below
    scout's --min_lr is fine on debug's 3e-4)."""
    last = init_checkpoint(tmp_path)
    with pytest.raises(ConfigError) as e:
        plan(tmp_path, {"dim"}, model=debug_args(dim=48), init_from=str(last))
    assert str(e.value) == ("model settings differ from the checkpoint's (dim: checkpoint 64, asked 48); "
                            "drop them: --init_from takes the checkpoint's model (another model starts from "
                            "scratch: drop --init_from)")
    assert plan(tmp_path, {"dim"}, model=DEBUG, init_from=str(last), run="b").model_args == DEBUG
    # Bug caught: a fine-tune at a longer context refused, though no weight depends on --max_seq_len
    p = plan(tmp_path, {"max_seq_len"}, model=ModelArgs(max_seq_len=128), init_from=str(last), run="d")
    assert p.model_args == debug_args(max_seq_len=128)
    with pytest.raises(ConfigError, match="min_lr"):  # checked on the checkpoint's preset's settings
        plan(tmp_path, init_from=str(last), lr=1e-4, run="c")


def test_init_from_takes_other_router_loss_weights(tmp_path):
    """Bug caught: a fine-tune with another --router_aux_loss_coef or --router_z_loss_coef (of an
    import, say: HF's aux weight and no z-loss) was refused as "model settings differ from the
    checkpoint's", though no weight depends on them; nor does any but the router noise projection on
    --router_noise (a training extra, dropped or started from init_weights: test_train), taken too
    (an import has none); a setting that shapes other weights (--dim) still is refused."""
    last = init_checkpoint(tmp_path)
    typed = debug_args(router_aux_loss_coef=0.01, router_z_loss_coef=1e-3)
    p = plan(tmp_path, {"router_aux_loss_coef", "router_z_loss_coef"}, model=typed, init_from=str(last),
             run="b")
    assert p.model_args == typed
    p = plan(tmp_path, {"router_noise"}, model=debug_args(router_noise=False), init_from=str(last), run="c")
    assert p.model_args == debug_args(router_noise=False)
    with pytest.raises(ConfigError, match=r"dim: checkpoint 64, asked 32"):
        plan(tmp_path, {"router_noise", "dim"}, model=debug_args(router_noise=False, dim=32),
             init_from=str(last), run="d")


@pytest.mark.parametrize("train, message", [
    (dict(init_from=""), "--init_from '': name a checkpoint"),
    (dict(resume="latest"), "--init_from starts a new run from a checkpoint's weights and --resume goes on"),
    (dict(resume="a"), "drop one of them"),
    (dict(eval_only=True), "--eval_only evaluates the checkpoint of --resume"),
    (dict(tokenizer=""), "--tokenizer '' beside --init_from would train a new tokenizer"),
])
def test_init_from_is_refused_empty_or_beside_resume_or_eval_only(tmp_path, train, message):
    """Bug caught: an unset $CKPT starting a run from scratch; --init_from beside --resume or --eval_only
    taking one of them without a word."""
    init_checkpoint(tmp_path)
    train = {"init_from": str(tmp_path / "ckpt" / "a"), **train}
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan(tmp_path, **train)


def test_an_empty_tokenizer_beside_eval_only_is_refused_before_any_work(tmp_path):
    """Bug caught: `train.py --eval_only --tokenizer ''` (an unset $TOK) stopped (exit status 1) saying the
    run "has no tokenizer.json to evaluate with", advising to put back the file that was there all along
    (--resume takes '' as the tokenizer cached for the data: kept)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt")
    with pytest.raises(ConfigError) as e:
        plan(tmp_path, run="r", tokenizer="", eval_only=True)
    assert str(e.value) == ("--tokenizer '' beside --eval_only names no file; drop --tokenizer to take the "
                            "one beside the checkpoint, or name it")
    assert plan(tmp_path, run="r", eval_only=True).ckpt is not None  # (untyped: the run's own)
    assert plan(tmp_path, resume=str(last), tokenizer="").train_args.tokenizer == ""


def test_init_from_needs_the_checkpoints_tokenizer_and_a_folder_of_its_own(tmp_path):
    """Bug caught: a checkpoint without a tokenizer.json beside it training a new BPE (ids its
    embeddings never learnt); a --tokenizer typed not taken; a folder holding a checkpoint taken."""
    last = fake_checkpoint(tmp_path / "ckpt" / "a" / "last.pt")
    with pytest.raises(CheckpointError) as e:
        plan(tmp_path, init_from=str(last))
    assert str(e.value) == (f"--init_from: there is no tokenizer.json beside {last} (the tokenizer its model "
                            "reads); pass --tokenizer FILE, the one it was trained with")
    tok = tmp_path / "tok.json"
    tok.write_text("{}")
    assert plan(tmp_path, init_from=str(last), tokenizer=str(tok), run="b").train_args.tokenizer == str(tok)
    with pytest.raises(RunError, match="already holds a checkpoint"):
        runplan.claim_folder(plan(tmp_path, init_from=str(last), tokenizer=str(tok), run="a"))
    with pytest.raises(ConfigError, match="holds no checkpoint yet.*pass --init_from another checkpoint"):
        (tmp_path / "ckpt" / "e").mkdir()
        (tmp_path / "ckpt" / "e" / "train.json").write_text("{}")
        (tmp_path / "ckpt" / "e" / "run.lock").touch()
        plan(tmp_path, init_from=str(tmp_path / "ckpt" / "e"))


def test_init_from_a_checkpoint_of_a_preset_this_version_lacks_takes_the_command_lines(tmp_path):
    """Bug caught: a checkpoint naming a preset this version does not have (renamed since, or a newer
    version's) refused as "--preset: unknown preset" though no --preset was typed; its model is the
    checkpoint's and its training settings the command line's preset's, as for an import."""
    last = init_checkpoint(tmp_path, preset="retired")
    p = plan(tmp_path, model=ModelArgs(), preset="tiny", init_from=str(last))
    assert (p.model_args, p.preset, p.train_args.batch_size) == (DEBUG, "tiny", 16)


def test_a_new_run_without_a_name_is_named_by_the_time_it_is_given(tmp_path):
    """Bug caught: the folder named by each process's own clock (under torchrun, ranks a second apart,
    one slower to load an --init_from checkpoint, named different folders, and the run hung at its end);
    train.setup passes rank 0's time to every rank."""
    t = 1_000_000_000.0
    p = runplan.plan_run(DEBUG, TrainArgs(out_dir=str(tmp_path)), "debug", frozenset(), t)
    assert p.run_dir == tmp_path / ("debug-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(t)))


def test_a_resume_into_another_wandb_project_gets_a_new_wandb_run(tmp_path):
    """W&B run ids are per project: resumed with another --wandb_project, wandb.init(id=abc) there
    starts an empty run of that id, which no backfill fills. A new W&B run gets the whole history
    instead (said once); the same project, or a checkpoint without settings, goes on with abc.

    Bug caught: the checkpoint's id was gone on with, so the new project's run started at the resumed
    step with the history before it missing."""
    ckpt = {"wandb_id": "abc", "step": 4, "train_args": config.to_dict(TrainArgs(wandb_project="p1"))}
    run_dir = tmp_path / "r"
    p = runplan.RunPlan(run_dir, DEBUG, TrainArgs(wandb_project="p2"), ckpt, run_dir / "last.pt")
    said = []
    assert runplan.wandb_id(p, said.append) is None
    assert said == ["wandb: W&B run abc is in project p1, not --wandb_project p2; a new W&B run in p2 gets "
                    "the history from the start (the old one is left as it was)"]
    assert runplan.wandb_id(p._replace(train_args=TrainArgs(wandb_project="p1"))) == "abc"
    assert runplan.wandb_id(p._replace(ckpt={"wandb_id": "abc", "step": 4})) == "abc"


def test_grad_checkpoint_typed_beside_eval_only_is_not_said_to_do_nothing():
    """Bug caught: train.py --eval_only --grad_checkpoint true was warned "--grad_checkpoint has no
    effect", where it sizes the evaluation's batch (the auto --eval_batch_size: 1x --batch_size, not 4x)."""
    import train
    p = runplan.RunPlan(None, DEBUG, TrainArgs(eval_only=True), None, None)
    assert runplan.setting_warnings(p, {"grad_checkpoint"}) == []
    sizes = [train.eval_batch_size(256, TrainArgs(batch_size=8, grad_checkpoint=on), 4)
             for on in (False, True)]
    assert sizes == [32, 8]  # what it does there: the auto evaluation batch is 1x --batch_size, not 4x


def test_a_grad_accum_whose_micro_batches_exceed_the_memory_is_refused_before_any_work(tmp_path, monkeypatch):
    """Bug caught: a step's micro-batches are all drawn before its first forward (train.batches_at), and
    no check counted them: --grad_accum 300000000 read the data and built the model, then ran out of
    memory advising a lower --batch_size (which was 4), and --grad_accum 9999999999999999999 was an
    OverflowError traceback (list(range(...)) in train.build_job)."""
    cpu, world = torch.device("cpu"), runtime.World()
    p = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(batch_size=2, grad_accum=1000), None, None)
    held = 999 * 2 * DEBUG.max_seq_len * 16  # (int64 inputs and targets, past the first: the floor's)
    floor = sum(runplan.memory_floor(DEBUG, p.train_args).values())
    monkeypatch.setattr(runtime, "device_memory", lambda device: held - 1 + floor)
    with pytest.raises(MachineError, match=r"^--grad_accum 1000: a step draws its 1,000 micro-batches "
                                                  r"of --batch_size 2 x --max_seq_len 64 tokens before it "
                                                  r"trains on them .*; lower --grad_accum"):
        runplan.check_settings(p, cpu, world)
    monkeypatch.setattr(runtime, "device_memory", lambda device: held + floor)
    runplan.check_settings(p, cpu, world)
    two = runtime.World(rank=0, size=2)  # (each process draws its half)
    monkeypatch.setattr(runtime, "device_memory", lambda device: 499 * 2 * DEBUG.max_seq_len * 16 + floor)
    monkeypatch.setattr(runtime, "local_processes", lambda: 1)
    runplan.check_settings(p, torch.device("cuda", 0), two)
    evaluating = p._replace(train_args=replace(p.train_args, eval_only=True))  # (it draws none)
    monkeypatch.setattr(runtime, "device_memory", lambda device: floor)
    runplan.check_settings(evaluating, cpu, world)
    with pytest.raises(ConfigError, match=r"--grad_accum: must be below 2\^31, got 9999999999999999999"):
        TrainArgs(grad_accum=9999999999999999999)


def test_a_resume_says_each_setting_typed_that_is_not_the_runs(tmp_path):
    """Bug caught: a resume took another --lr, --batch_size or router loss weight (a value left in a
    shell's history, say) without a word: the run's own settings changed unseen. One line now names
    each with the run's value; nothing where the typed values are the run's, where only the bookkeeping
    of a resume is typed, at --eval_only, or for a finished run (it trains nothing)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", lr=3e-3, batch_size=4, wandb_mode="offline",
                           max_steps=100)
    model = debug_args(router_aux_loss_coef=0.01)
    p = plan(tmp_path, {"router_aux_loss_coef", "preset"}, model=model, resume=str(last), lr=1e-3,
             batch_size=4, wandb_mode="disabled", max_steps=100)
    typed = {"resume", "lr", "batch_size", "wandb_mode", "router_aux_loss_coef"}
    assert runplan.resume_changes(p, typed) == (
        f"resume: --lr 0.001 (the run's 0.003), --wandb_mode disabled (the run's offline), "
        f"--router_aux_loss_coef 0.01 (the run's {DEBUG.router_aux_loss_coef:g}), in force from here")
    same = plan(tmp_path, resume=str(last), lr=3e-3, run="r")
    assert runplan.resume_changes(same, {"resume", "lr", "run", "out_dir"}) is None
    judged = plan(tmp_path, resume=str(last), lr=1e-3, eval_only=True)
    assert runplan.resume_changes(judged, {"resume", "lr", "eval_only"}) is None
    done = fake_checkpoint(tmp_path / "ckpt" / "d" / "last.pt", max_steps=5)
    checkpoint.save_checkpoint(done, {**torch.load(done, weights_only=False), "step": 5})  # (finished)
    assert runplan.resume_changes(plan(tmp_path, resume=str(done), lr=1e-3, max_steps=6), {"resume", "lr"})
    assert runplan.resume_changes(plan(tmp_path, resume=str(done), lr=1e-3), {"resume", "lr"}) is None


def test_a_resume_does_not_say_a_path_typed_another_way_is_a_change(tmp_path, monkeypatch):
    """Bug caught: --data typed at a resume as the run's own file, but from another folder (../data/x.txt),
    with a trailing slash on a folder, or beside an older checkpoint that saved it relative, was said to
    be a change ("resume: --data /p/sub/../data/x.txt (the run's /p/data/x.txt), in force from here"):
    the same file, compared as strings. And a value :g rounds to the run's (--lr 0.00123456789 against
    0.001234568) was said as a change from itself."""
    data = tmp_path / "p" / "data"
    data.mkdir(parents=True)
    (data / "x.txt").write_text("text")
    (tmp_path / "p" / "sub").mkdir()
    for n, (cwd, saved, typed) in enumerate([("sub", str(data / "x.txt"), "../data/x.txt"),
                                             ("", str(data), f"{data}/"),
                                             ("", "data/x.txt", "data/x.txt")]):
        monkeypatch.chdir(tmp_path / "p" / cwd)
        last = fake_checkpoint(tmp_path / "ckpt" / f"r{n}" / "last.pt", data=saved, max_steps=100)
        p = plan(tmp_path, resume=str(last), data=typed, max_steps=100)
        assert runplan.resume_changes(p, {"resume", "data"}) is None, (saved, typed)
    elsewhere = tmp_path / "p" / "y.txt"
    elsewhere.write_text("other text")
    p = plan(tmp_path, resume=str(last), data=str(elsewhere), max_steps=100)
    assert runplan.resume_changes(p, {"resume", "data"}) == (
        f"resume: --data {elsewhere} (the run's data/x.txt), in force from here")
    last = fake_checkpoint(tmp_path / "ckpt" / "lr" / "last.pt", lr=0.001234568, max_steps=100)
    p = plan(tmp_path, resume=str(last), lr=0.00123456789, max_steps=100)
    assert runplan.resume_changes(p, {"resume", "lr"}) == (
        "resume: --lr 0.00123456789 (the run's 0.001234568), in force from here")
    last = fake_checkpoint(tmp_path / "ckpt" / "w" / "last.pt", wandb_name="", max_steps=100)
    p = plan(tmp_path, resume=str(last), wandb_name="my run", max_steps=100)  # (as a shell takes it back)
    assert runplan.resume_changes(p, {"resume", "wandb_name"}) == (
        "resume: --wandb_name 'my run' (the run's ''), in force from here")


def older_checkpoint(path, **saved):
    """fake_checkpoint's file with training settings an older version saved (`saved`: values this
    version refuses, which TrainArgs cannot be built with), over a run of 100 steps."""
    fake_checkpoint(path, max_steps=100)
    ckpt = torch.load(path, weights_only=False)
    ckpt["train_args"].update(saved)
    checkpoint.save_checkpoint(path, ckpt)
    return path


def test_a_resume_compares_with_an_older_checkpoints_settings_as_corrected(tmp_path, monkeypatch):
    """Bug caught: resume_changes compared the typed settings with the checkpoint's as saved, not as the
    run goes on with them: beside an older checkpoint's --cache_dir '' (read as .), --text_field ''
    (text), a --wandb_project W&B refuses (the default: that run went without W&B), or a ~ left in a
    path (the home folder), typing the value the run already had was said to be a change ("resume:
    --cache_dir . (the run's ''), in force from here"); another value named the run's as saved."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # (no folder named ~ here: a saved ~/cache is the home folder's)
    home_cache = str(tmp_path / "home" / "cache")
    for n, (saved, name, run_has) in enumerate([({"cache_dir": ""}, "cache_dir", "."),
                                                ({"text_field": ""}, "text_field", "text"),
                                                ({"wandb_project": "team/proj"}, "wandb_project",
                                                 TrainArgs.wandb_project),
                                                ({"compile": True}, "compile", "true"),
                                                ({"cache_dir": "~/cache"}, "cache_dir", home_cache)]):
        last = older_checkpoint(tmp_path / "ckpt" / f"r{n}" / "last.pt", **saved)
        p = plan(tmp_path, resume=str(last), max_steps=100, **{name: run_has})
        assert getattr(p.train_args, name) == run_has
        assert runplan.resume_changes(p, {"resume", name}) is None, saved
        value = "false" if name == "compile" else "x"
        other = plan(tmp_path, resume=str(last), max_steps=100, **{name: value})
        assert runplan.resume_changes(other, {"resume", name}) == (
            f"resume: --{name} {value} (the run's {run_has}), in force from here")


def test_a_value_refused_for_a_new_run_is_refused_when_typed_at_a_resume(tmp_path):
    """Bug caught: the corrections of an older checkpoint's settings (--cache_dir '' read as ., --text_field
    '' as text, a --wandb_project W&B refuses as the default) were made after the typed values went on
    top, so the same values typed at --resume were taken without a word: `--resume --wandb_project
    team/proj` logged to the default project, where a new run is refused "is no W&B project name"."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", max_steps=100)
    for name, value, refusal in [("cache_dir", "", "must name a folder, got ''"),
                                 ("text_field", "", "must name the records' text field, got ''"),
                                 ("wandb_project", "team/proj", "'team/proj' is no W&B project name")]:
        typed = object.__new__(TrainArgs)  # (as parse_args leaves it for resume_settings to check)
        typed.__dict__.update({**config.to_dict(TrainArgs()), "resume": str(last), name: value,
                               "out_dir": str(tmp_path / "ckpt")})
        with pytest.raises(ConfigError, match=f"^--{name}: {re.escape(refusal)}"):
            runplan.plan_run(DEBUG, typed, "debug", {"resume", name})


def test_a_resume_does_not_say_the_runs_cache_dir_typed_another_way_is_a_change(tmp_path, monkeypatch):
    """Bug caught: --cache_dir typed at a resume as the run's own folder in another spelling (./cache,
    cache/, its absolute path) was said to be a change ("resume: --cache_dir ./cache (the run's cache),
    in force from here"), compared as strings, as --data was; another folder still is one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", cache_dir="cache", max_steps=100)
    for typed in ["./cache", "cache/", str(tmp_path / "cache")]:
        p = plan(tmp_path, resume=str(last), cache_dir=typed, max_steps=100)
        assert runplan.resume_changes(p, {"resume", "cache_dir"}) is None, typed
    p = plan(tmp_path, resume=str(last), cache_dir="other", max_steps=100)
    assert runplan.resume_changes(p, {"resume", "cache_dir"}) == (
        "resume: --cache_dir other (the run's cache), in force from here")


def test_a_resume_does_not_say_the_runs_plot_typed_another_way_is_a_change(tmp_path):
    """Bug caught: --plot typed at a resume as the run's own file in another spelling (./loss.png, or its
    path in the run folder, where a relative --plot lies) was said to be a change ("resume: --plot
    ./loss.png (the run's loss.png), in force from here"); another file still is one."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", max_steps=100)
    for typed in ["./loss.png", str(tmp_path / "ckpt" / "r" / "loss.png")]:
        p = plan(tmp_path, resume=str(last), plot=typed, max_steps=100)
        assert runplan.resume_changes(p, {"resume", "plot"}) is None, typed
    p = plan(tmp_path, resume=str(last), plot=str(tmp_path / "loss.png"), max_steps=100)
    assert runplan.resume_changes(p, {"resume", "plot"}) == (
        f"resume: --plot {tmp_path / 'loss.png'} (the run's loss.png), in force from here")


def test_a_resume_that_trains_no_step_does_not_say_its_changes_are_in_force(tmp_path):
    """Bug caught: a run a signal stopped at step 5 (of 8), resumed with --max_steps 3, said "resume:
    --max_steps 3 (the run's 8), in force from here" (and so of an --lr typed beside it), though it
    trains no step: it ends there (train.wrap_up). It says so now, and that the others do nothing."""
    ckpt = {"step": 5, "elapsed": 90.0, "train_args": config.to_dict(TrainArgs(max_steps=8, lr=3e-3))}
    stopped = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(max_steps=3, lr=1e-3), ckpt, tmp_path / "last.pt")
    assert runplan.finished_limit(stopped) is None  # (not a finished run: it ends at step 5)
    assert runplan.resume_changes(stopped, {"resume", "max_steps", "lr"}) == (
        "resume: --max_steps 3 (the run's 8) is not above its step 5: it trains no step, and ends there "
        "(its final evaluation, then last.pt); --lr has no effect")
    at = stopped._replace(train_args=TrainArgs(max_steps=5, lr=3e-3))
    assert runplan.resume_changes(at, {"resume", "max_steps"}) == (
        "resume: --max_steps 5 (the run's 8) is not above its step 5: it trains no step, and ends there "
        "(its final evaluation, then last.pt)")
    spent = stopped._replace(train_args=TrainArgs(max_steps=8, lr=3e-3, max_minutes=1))
    assert runplan.resume_changes(spent, {"resume", "max_minutes"}) == (
        "resume: --max_minutes 1 (the run's 0) is spent by its 1.5 minutes so far: it trains no step, and "
        "ends there (its final evaluation, then last.pt)")
    put_off = stopped._replace(ckpt={**ckpt, "train_args": config.to_dict(TrainArgs(max_steps=5, lr=3e-3)),
                                     "eval_due": True}, train_args=TrainArgs(max_steps=5, lr=1e-3))
    assert runplan.resume_changes(put_off, {"resume", "lr"}) == (  # (the evaluation a signal put off)
        "resume: --max_steps 5 is not above its step 5: it trains no step, and ends there (its final "
        "evaluation, then last.pt); --lr has no effect")
    trains = stopped._replace(train_args=TrainArgs(max_steps=6, lr=1e-3))
    assert runplan.resume_changes(trains, {"resume", "max_steps", "lr"}) == (
        "resume: --max_steps 6 (the run's 8), --lr 0.001 (the run's 0.003), in force from here")


def test_a_resume_typing_the_runs_own_warmup_and_max_steps_is_not_warned_of_them_again(tmp_path):
    """Bug caught: a run warned at its start that --warmup_steps 10 "is not below --max_steps 10" was
    warned again when resumed with its own --max_steps 10 typed (a command line from the shell's history
    with --resume added): the warning, said once at the start, came back for settings it already had.
    One typed anew (another --max_steps) is warned of, as before."""
    ckpt = {"step": 2, "train_args": config.to_dict(TrainArgs(max_steps=10, warmup_steps=10))}
    same = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(max_steps=10, warmup_steps=10, lr=1e-3), ckpt,
                           tmp_path / "last.pt")
    for typed in ({"resume", "max_steps"}, {"resume", "warmup_steps"}, {"resume"},
                  {"resume", "max_steps", "warmup_steps"}):
        assert runplan.setting_warnings(same, typed) == [], typed
    shorter = same._replace(train_args=TrainArgs(max_steps=9, warmup_steps=10, lr=1e-3))
    assert runplan.setting_warnings(shorter, {"resume", "max_steps"}) == [
        "warning: --warmup_steps 10 is not below --max_steps 9: the learning rate rises to 0.0009 "
        "(--lr 0.001) and never decays; lower --warmup_steps"]


def test_a_resume_records_the_device_this_session_runs_on_not_the_runs_saved_one(tmp_path):
    """Bug caught: a run started with --device cpu on a GPU machine, resumed without --device, ran on
    cuda:0 (train.setup resolves the --device typed, or auto) while its settings, and so the train.json
    and checkpoints it wrote next, still said --device cpu. --device is where this session runs, like
    --out_dir: the one in force is recorded, and a resume line does not call it a change of the run's
    settings (device_change says where the device or precision is not the run's)."""
    last = fake_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", device="cpu", max_steps=100)
    untyped = runplan.plan_run(DEBUG, TrainArgs(resume=str(last), out_dir=str(tmp_path / "ckpt")), "debug",
                               {"resume"})
    assert untyped.train_args.device == "auto"  # (the default: what train.setup resolved)
    typed = plan(tmp_path, resume=str(last), device="cuda:1", max_steps=100)
    assert typed.train_args.device == "cuda:1"
    assert runplan.resume_changes(typed, {"resume", "device"}) is None


def test_a_resume_says_where_its_device_or_precision_is_not_the_one_the_run_trained_on(tmp_path, monkeypatch):
    """Bug caught: a run trained on the CPU in float32, resumed on a GPU machine without --device, went on
    on cuda:0 in bfloat16 (--dtype auto) without a word, and so did one trained on a GPU resumed on a
    machine without one: not the run it continues. One line says so before any work, with the option
    that goes back where this machine has that device; nothing where both are the run's (another GPU
    of the same kind is no change), for a checkpoint that cannot tell (an older one's --device auto),
    where nothing trains (--eval_only, a finished run, one at its limit), and for a typed --dtype
    (resume_changes names it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu, gpu, f32, bf16 = torch.device("cpu"), torch.device("cuda", 0), torch.float32, torch.bfloat16
    def ckpt(device, dtype, step=2, **train):
        return {"step": step, "train_args": config.to_dict(TrainArgs(max_steps=10, **train)),
                "trained_on": {"device": device, "dtype": dtype}}
    def change(saved, device, in_dtype, given=("resume",), **train):
        p = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(max_steps=10, **train), saved, tmp_path / "last.pt")
        return runplan.device_change(p, device, in_dtype, set(given))
    assert change(ckpt("cpu", "float32"), gpu, bf16) == (
        "resume: on cuda:0 in bfloat16 (the run trained on cpu in float32): its steps from here are not bit "
        "for bit the run's; --device cpu goes on as it did")
    assert change(ckpt("cuda:0", "bfloat16"), cpu, f32) == (
        "resume: on cpu in float32 (the run trained on cuda:0 in bfloat16): its steps from here are not bit "
        "for bit the run's; --device cuda goes on as it did")
    assert change(ckpt("cuda:0", "float32"), gpu, bf16) == (  # (an sm75 GPU's --dtype auto)
        "resume: on cuda:0 in bfloat16 (the run trained on cuda:0 in float32): its steps from here are not "
        "bit for bit the run's; --dtype float32 goes on as it did")
    for same in [(ckpt("cpu", "float32"), cpu, f32), (ckpt("cuda:0", "bfloat16"), torch.device("cuda", 1),
                                                       bf16)]:
        assert change(*same) is None
    assert change(ckpt("cuda:0", "float32"), gpu, bf16, {"resume", "dtype"}, dtype="bfloat16") is None
    assert change(ckpt("cuda:0", "float32"), cpu, bf16, {"resume", "dtype"}, dtype="bfloat16") == (
        "resume: on cpu in bfloat16 (the run trained on cuda:0 in float32): its steps from here are not bit "
        "for bit the run's; --device cuda goes on as it did")
    for nothing_trains in [dict(eval_only=True), dict(step=10), dict(max_minutes=1)]:
        saved = ckpt("cpu", "float32", step=nothing_trains.pop("step", 2))
        saved["elapsed"] = 90.0
        assert change(saved, gpu, bf16, **nothing_trains) is None, nothing_trains
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert change(ckpt("cuda:0", "bfloat16"), cpu, f32) == (  # (no GPU here to go back to)
        "resume: on cpu in float32 (the run trained on cuda:0 in bfloat16): its steps from here are not bit "
        "for bit the run's")
    # an older checkpoint records no device: its saved --device and --dtype tell what they can
    older = {"step": 2, "train_args": config.to_dict(TrainArgs(max_steps=10, device="cpu"))}
    assert change(older, gpu, bf16).startswith(
        "resume: on cuda:0 in bfloat16 (the run trained on cpu in float32): ")
    older["train_args"].update(device="cuda")
    assert change(older, cpu, f32).startswith("resume: on cpu in float32 (the run trained on cuda): ")
    assert change(older, gpu, bf16) is None  # (its --dtype auto: bfloat16 or float32 by its GPU)
    older["train_args"].update(device="auto")
    assert change(older, cpu, f32) is None  # (cuda:0 or the cpu, by the machine of the day)


def test_an_older_checkpoints_data_under_a_tilde_is_read_and_held_out_as_the_home_folders(tmp_path,
                                                                                         monkeypatch):
    """Bug caught: run_settings reads an older checkpoint's ~/stories.txt (a --data=~/... the shell left)
    as the home folder's, but check_saved_paths and held_out_of_saved_data read the checkpoint as saved:
    a resume without --data was refused ("the checkpoint's ~/stories.txt is relative to the folder its
    run was started in"), and with the run's own --data typed, another --val_fraction was not warned of
    (its slice trains on documents the run held out)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # (no folder named ~ here)
    data = write_stories(tmp_path / "home" / "stories.txt")
    last = older_checkpoint(tmp_path / "ckpt" / "r" / "last.pt", data="~/stories.txt", val_fraction=0.1)
    p = plan(tmp_path, resume=str(last), max_steps=100)  # (refused: DataError)
    assert p.train_args.data == str(data)
    other = plan(tmp_path, resume=str(last), max_steps=100, data=str(data), val_fraction=0.2)
    assert any("--val_fraction 0.2 is not the checkpoint's" in line
               for line in runplan.setting_warnings(other, {"resume", "data", "val_fraction"}))


def test_a_typed_dtype_that_is_the_runs_own_still_says_where_it_resolves_to_another(tmp_path, monkeypatch):
    """Bug caught: device_change kept quiet of the dtype wherever --dtype was typed, leaving it to
    resume_changes, which names it only where it is not the run's: a run trained in bfloat16 (--dtype
    auto on an sm80 GPU), resumed on an sm75 GPU with its own --dtype auto typed (a command line from the
    shell's history), went on in float32 with neither line saying so."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    saved = {"step": 2, "train_args": config.to_dict(TrainArgs(max_steps=10)),
             "trained_on": {"device": "cuda:0", "dtype": "bfloat16"}}
    p = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(max_steps=10, dtype="auto"), saved, tmp_path / "last.pt")
    assert runplan.resume_changes(p, {"resume", "dtype"}) is None
    assert runplan.device_change(p, torch.device("cuda", 0), torch.float32, {"resume", "dtype"}) == (
        "resume: on cuda:0 in float32 (the run trained on cuda:0 in bfloat16): its steps from here are not "
        "bit for bit the run's; --dtype bfloat16 goes on as it did")


def test_a_typed_dtype_that_resolves_to_the_one_the_run_trained_in_is_no_change(tmp_path, monkeypatch):
    """A --dtype typed at a resume that is the dtype the run trained in (trained_on) changes nothing:
    --dtype float32 where the run's --dtype auto trained in float32 (on the CPU), or --dtype auto where it
    resolves now to the float32 the run's --dtype float32 trained in; neither resume_changes nor
    device_change says a word. One that is not (auto resolving to bfloat16 on a GPU, or a checkpoint that
    cannot tell what it trained in: an older one's --device auto) is named as before.

    Bug caught: resume_changes compared the typed --dtype with the run's saved one alone: "resume: --dtype
    float32 (the run's auto), in force from here" on a CPU run whose auto was float32, although nothing
    changed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu, gpu, f32, bf16 = torch.device("cpu"), torch.device("cuda", 0), torch.float32, torch.bfloat16
    given = {"resume", "dtype"}

    def plan_of(saved_dtype, typed, trained=("cpu", "float32"), device="auto"):
        saved = TrainArgs(max_steps=10, dtype=saved_dtype, device=device)
        ckpt = {"step": 2, "train_args": config.to_dict(saved)}
        if trained is not None:
            ckpt["trained_on"] = {"device": trained[0], "dtype": trained[1]}
        now = TrainArgs(max_steps=10, dtype=typed)
        return runplan.RunPlan(tmp_path, DEBUG, now, ckpt, tmp_path / "last.pt")

    for saved_dtype, typed in [("auto", "float32"), ("float32", "auto")]:  # each is the run's float32
        p = plan_of(saved_dtype, typed)
        assert runplan.resume_changes(p, given, f32) is None, (saved_dtype, typed)
        assert runplan.device_change(p, cpu, f32, given) is None, (saved_dtype, typed)
    p = plan_of("auto", "float32")  # (float32 needs no resolving: nothing said without this session's dtype)
    assert runplan.resume_changes(p, given) is None
    assert runplan.device_change(p, gpu, f32, given) == (  # (the run's dtype, on another kind of device)
        "resume: on cuda:0 in float32 (the run trained on cpu in float32): its steps from here are not bit "
        "for bit the run's; --device cpu goes on as it did")
    # an older checkpoint, no trained_on: its saved --device cpu with --dtype auto trained in float32
    older = plan_of("auto", "float32", trained=None, device="cpu")
    assert runplan.resume_changes(older, given, f32) is None
    assert runplan.device_change(older, cpu, f32, given) is None
    # a typed dtype that is not the one the run trained in is named, as before
    p = plan_of("float32", "auto")
    assert runplan.resume_changes(p, given, bf16) == (
        "resume: --dtype auto (the run's float32), in force from here")
    assert runplan.device_change(p, gpu, bf16, given) == (
        "resume: on cuda:0 in bfloat16 (the run trained on cpu in float32): its steps from here are not bit "
        "for bit the run's; --device cpu goes on as it did")
    p = plan_of("auto", "bfloat16")
    assert runplan.resume_changes(p, given, bf16) == (
        "resume: --dtype bfloat16 (the run's auto), in force from here")
    assert runplan.device_change(p, cpu, bf16, given) is None  # (named by resume_changes)
    unknown = plan_of("auto", "float32", trained=None, device="auto")  # (cannot tell: named as typed)
    assert runplan.resume_changes(unknown, given, f32) == (
        "resume: --dtype float32 (the run's auto), in force from here")
    assert runplan.device_change(unknown, cpu, f32, given) is None


def test_a_checkpoint_that_saved_no_dtype_is_told_of_another_dtype_typed(tmp_path):
    """Holds: a checkpoint whose settings hold no --dtype (an older one's, on --device cpu: it trained in
    float32) resumed with --dtype bfloat16 typed: resume_changes cannot name it (there is no run's value
    to compare), so device_change says the precision is not the run's, with the --dtype that goes back."""
    train_args = config.to_dict(TrainArgs(max_steps=10, device="cpu"))
    del train_args["dtype"]
    p = runplan.RunPlan(tmp_path, DEBUG, TrainArgs(max_steps=10, device="cpu", dtype="bfloat16"),
                        {"step": 2, "train_args": train_args}, tmp_path / "last.pt")
    given = {"resume", "dtype"}
    assert runplan.resume_changes(p, given, torch.bfloat16) is None
    assert runplan.device_change(p, torch.device("cpu"), torch.bfloat16, given) == (
        "resume: on cpu in bfloat16 (the run trained on cpu in float32): its steps from here are not bit for "
        "bit the run's; --dtype float32 goes on as it did")


def test_a_recorded_device_of_a_kind_this_project_does_not_train_on_tells_nothing():
    """Holds: trained_on reads a record naming a cpu or cuda device (the --device choices); any other
    device's name (a damaged record: meta, mps) is no device the run trained on, as auto is not."""
    record = {"device": "cuda:1", "dtype": "bfloat16"}
    assert runplan.trained_on({"trained_on": record}) == ("cuda:1", "bfloat16")
    for name in ("meta", "mps", "auto"):
        assert runplan.trained_on({"trained_on": {"device": name, "dtype": "float32"}}) is None, name


def test_a_held_out_slice_is_moved_by_other_content_not_by_another_window_count(tmp_path):
    """Holds: held_out_moved compares the content part of the two EvalSet keys (content:windows), so an
    evaluation of another --eval_windows over the same slice is no move, and other content is."""
    data = tmp_path / "a.txt"
    data.write_text("x")
    ckpt = {"train_args": config.to_dict(TrainArgs(data=str(data), val_fraction=0.01))}
    t = TrainArgs(data=str(data), val_fraction=0.01)
    p = runplan.RunPlan(tmp_path, DEBUG, t, ckpt, tmp_path / "last.pt")
    assert not runplan.held_out_moved(p, "abc:10", "abc:20")
    assert runplan.held_out_moved(p, "abc:10", "xyz:10")


def test_a_checkpoint_whose_time_is_exactly_max_minutes_is_at_its_limit():
    """Holds: the time limit is reached at --max_minutes itself (>=, as the step limit is at --max_steps),
    not only past it; a second short of it is not."""
    t = TrainArgs(max_steps=100, max_minutes=1.0)
    assert runplan.limit_reached({"step": 3, "elapsed": 60.0}, t) == "max_minutes"
    assert runplan.limit_reached({"step": 3, "elapsed": 59.0}, t) is None
    assert runplan.limit_reached({"step": 100, "elapsed": 0.0}, t) == "max_steps"


def test_a_fork_is_claimed_whatever_the_metrics_jsonl_its_new_folder_holds(tmp_path):
    """Holds: claim_folder reads the metrics.jsonl of a run resumed in its own folder (the log it goes
    on with), not one a fork finds in its new folder (no log of the run it resumes), so a damaged one
    there does not stop the fork; in the run's own folder it is refused."""
    other = fake_checkpoint(tmp_path / "ckpt" / "o" / "last.pt")
    folder = tmp_path / "ckpt" / "f"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("not json\n{\"step\": 1}\n")
    fork = runplan.RunPlan(folder, DEBUG, TrainArgs(), checkpoint.load_checkpoint(other), other)
    assert fork.forks
    runplan.claim_folder(fork).release()
    (other.parent / "metrics.jsonl").write_text("not json\n{\"step\": 1}\n")
    with pytest.raises(RunError):
        runplan.claim_folder(fork._replace(run_dir=other.parent))


def test_grad_checkpoint_layers_typed_as_its_default_0_is_not_warned_of():
    """Holds: the warning of a --grad_checkpoint_layers without --grad_checkpoint is for a count of layers
    typed; its default, 0 (all of them, where checkpointing is on), typed (a script that always passes
    it) asks for nothing that is not done, and is not warned of."""
    off = runplan.RunPlan(None, DEBUG, TrainArgs(grad_checkpoint_layers=0), None, None)
    assert runplan.setting_warnings(off, {"grad_checkpoint_layers"}) == []
