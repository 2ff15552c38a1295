"""checkpoint.py, unit by unit: finding runs and checkpoints, loading them (what is refused, and
how it is named), weights-only saves, and Hugging Face folders out and in (fast: no training;
what a run's own checkpoints hold is in test_faults.py, which trains one)."""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

import checkpoint
import config
from config import ModelArgs
from errors import ConfigError, StorageError


def small_model():
    """A small MoE model: one layer, two experts, 64 tokens."""
    return checkpoint.Llama4(ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=64,
                                       n_experts=2, max_seq_len=16))


def test_runs_are_ordered_by_the_file_written_last_in_each(tmp_path):
    """Catches run_folders ordering runs by their oldest file: a run resumed today (a new last.pt
    beside last week's tokenizer.json) came after a run last written yesterday."""
    out = tmp_path / "out"
    for run, times in (("resumed", {"tokenizer.json": 1e9 - 7e5, "last.pt": 1e9}),
                       ("yesterday", {"tokenizer.json": 1e9 - 1e5, "last.pt": 1e9 - 1e5})):
        (out / run).mkdir(parents=True)
        for name, when in times.items():
            (out / run / name).touch()
            os.utime(out / run / name, (when, when))
    (out / "not-a-run").mkdir()
    assert checkpoint.run_folders(out) == [out / "resumed", out / "yesterday"]


def test_run_names_listed_are_at_most_five_and_the_rest_counted(tmp_path):
    """Catches named_runs saying "and 0 more" for exactly five runs, or dropping one of them."""
    runs = [tmp_path / f"run{i}" for i in range(6)]
    assert checkpoint.named_runs(runs[:5]) == "run0, run1, run2, run3, run4"
    assert checkpoint.named_runs(runs) == "run0, run1, run2, run3, run4 and 1 more"
    assert checkpoint.named_runs(runs[:1]) == "run0"


def test_a_path_that_exists_is_taken_before_a_run_of_that_name(tmp_path, monkeypatch):
    """Catches find_checkpoint looking the name up in --out_dir first: `--resume r` where ./r is a
    run folder took --out_dir/r, another run's checkpoint; a name found only there is still a run."""
    monkeypatch.chdir(tmp_path)
    for folder in (tmp_path / "r", tmp_path / "out" / "r", tmp_path / "out" / "s"):
        folder.mkdir(parents=True)
        (folder / "last.pt").touch()
    assert checkpoint.find_checkpoint("r", out_dir=tmp_path / "out") == checkpoint.Path("r") / "last.pt"
    assert checkpoint.find_checkpoint("s", out_dir=tmp_path / "out") == tmp_path / "out" / "s" / "last.pt"


def test_a_quoted_tilde_in_a_checkpoint_path_is_the_home_folder(tmp_path, monkeypatch):
    """Bug caught: --resume, --init_from or sample.py --ckpt '~/runs/r' (quoted: the shell left the ~)
    said "checkpoint ~/runs/r does not exist"; find_checkpoint takes ~ as the home folder, and so does
    Tokenizer.load (--tokenizer '~/tok.json')."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home" / "runs" / "r").mkdir(parents=True)
    (tmp_path / "home" / "runs" / "r" / "last.pt").touch()
    assert checkpoint.find_checkpoint("~/runs/r") == tmp_path / "home" / "runs" / "r" / "last.pt"
    assert checkpoint.find_checkpoint("~/runs/r/last.pt") == tmp_path / "home" / "runs" / "r" / "last.pt"
    from tokenizer import Tokenizer
    tiny_tokenizer(tmp_path / "home" / "tok.json", "a cat sat")  # (data.py's --tokenizer: not made absolute)
    assert Tokenizer.load("~/tok.json").vocab_size == 266


def test_a_run_whose_last_pt_is_a_dangling_link_or_a_folder_names_that_file(tmp_path):
    """Catches find_checkpoint calling a run folder whose last.pt is a link to a file gone (a
    checkpoint moved to another disk) "not a run folder" or "no checkpoint yet", and returning a
    last.pt that is a folder as a checkpoint file."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "train.json").write_text("{}")
    (run / "last.pt").symlink_to(tmp_path / "moved" / "last.pt")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.find_checkpoint(str(run))
    assert str(e.value) == f"checkpoint {run / 'last.pt'} does not exist; pass a .pt file or a run folder"
    (run / "last.pt").unlink()
    (run / "last.pt").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="last.pt is a folder, not a file; pass a .pt file"):
        checkpoint.find_checkpoint(str(run))


def small_checkpoint(path, **changes):
    """A weights-only checkpoint of a small model, with `changes` to its dict (None: key dropped)."""
    model = small_model()
    state = {"model": model.state_dict(), "model_args": config.to_dict(model.args), "step": 0}
    state.update(changes)
    torch.save({k: v for k, v in state.items() if v is not None}, path)
    return path


def test_a_checkpoint_without_settings_or_with_unknown_ones_is_named_not_a_traceback(tmp_path):
    """Catches load_checkpoint accepting a file with weights but no model settings (a KeyError
    traceback later), or settings this version cannot build (a ConfigError, exit status 2, blaming
    an option): both are the file's fault, named with the advice given."""
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_checkpoint(small_checkpoint(tmp_path / "a.pt", model_args=None), fix="try another")
    assert str(e.value) == (f"{tmp_path / 'a.pt'} is corrupt or unreadable (not a checkpoint of this "
                            "project: no model or settings in it); try another")
    damaged = config.to_dict(ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1))
    damaged["future_field"] = 1
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_model(small_checkpoint(tmp_path / "b.pt", model_args=damaged))
    assert str(e.value).startswith(f"{tmp_path / 'b.pt'} is damaged or from another version of this "
                                   "project (model settings: unknown ModelArgs field(s) future_field); it "
                                   "was left in place")


def test_a_checkpoint_too_large_for_memory_is_out_of_memory_not_corrupt(tmp_path, monkeypatch):
    """Catches load_checkpoint calling a good file that does not fit in memory "corrupt or
    unreadable" (advising another checkpoint): the out-of-memory error goes on as it was."""
    path = small_checkpoint(tmp_path / "last.pt")

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(torch, "load", oom)
    with pytest.raises(torch.OutOfMemoryError):
        checkpoint.load_checkpoint(path)


def test_a_checkpoint_that_cannot_be_read_says_so_not_corrupt(tmp_path, monkeypatch):
    """Catches _unreadable letting an OSError other than a missing file (no permission, an I/O
    error) out as a traceback while it looks at why torch.load failed."""
    path = small_checkpoint(tmp_path / "last.pt")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(torch, "load", denied)
    monkeypatch.setattr(checkpoint, "open", denied, raising=False)  # (root reads any file: patched)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_checkpoint(path, fix="fix it")
    assert str(e.value) == f"{path} cannot be read (Permission denied); fix it"


def test_a_weights_only_checkpoint_holds_weights_settings_step_and_tokenizer_alone(tmp_path):
    """Catches save_model_only leaving out "step" (the module docstring's weights-only layout:
    model, model_args, step, maybe tokenizer) or saving anything a resume would take for training
    state; it loads back as the same model."""
    model = small_model()
    checkpoint.save_model_only(model, tmp_path / "new" / "w.pt", tokenizer_sha256="ab" * 32)
    saved = checkpoint.load_checkpoint(tmp_path / "new" / "w.pt")
    assert sorted(saved) == ["model", "model_args", "step", "tokenizer"] and saved["step"] == 0
    assert saved["tokenizer"] == {"file": "tokenizer.json", "sha256": "ab" * 32}
    assert saved["model_args"] == config.to_dict(model.args)
    assert all(torch.equal(saved["model"][k], v) for k, v in model.state_dict().items())
    checkpoint.save_model_only(model, tmp_path / "w.pt")
    assert sorted(checkpoint.load_checkpoint(tmp_path / "w.pt")) == ["model", "model_args", "step"]


def test_an_export_puts_config_json_in_place_last_and_syncs_the_folder(tmp_path, monkeypatch):
    """Catches export_hf renaming config.json into place before the weights (a kill -9 between the
    renames left a folder that reads as an export, config.json there, without its weights) and
    not fsync'ing the folder after the renames (a power cut could undo them)."""
    model = small_model()
    out, events = tmp_path / "hf", []
    real_replace, real_sync = os.replace, checkpoint.storage.sync_folder

    def replace(src, dst):
        if os.path.dirname(os.fspath(dst)) == str(out):
            events.append(os.path.basename(os.fspath(dst)))
        real_replace(src, dst)

    def sync(folder):
        if os.fspath(folder) == str(out):
            events.append("sync")
        real_sync(folder)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    monkeypatch.setattr(checkpoint.storage, "sync_folder", sync)
    checkpoint.export_hf(model, out)
    assert events == ["model.safetensors", "generation_config.json", "config.json", "sync"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json",
                                                     "model.safetensors"]


def test_an_export_without_a_tokenizer_into_a_folder_with_no_export_deletes_nothing(tmp_path):
    """Catches export_hf deleting tokenizer files it did not replace where no export was there to
    replace: a folder's own tokenizer_config.json (no tokenizer.json beside it) was removed."""
    model = small_model()
    out = tmp_path / "hf"
    out.mkdir()
    (out / "tokenizer_config.json").write_text('{"theirs": true}')
    checkpoint.export_hf(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json",
                                                     "model.safetensors", "tokenizer_config.json"]
    assert (out / "tokenizer_config.json").read_text() == '{"theirs": true}'


def test_a_forced_export_without_a_tokenizer_removes_only_the_tokenizer_files_an_export_wrote(tmp_path):
    """Bug caught: export_hf with --force and no tokenizer deleted a tokenizer_config.json it neither
    writes nor named in its refusal (the folder's own, beside an export that had no tokenizer, or
    beside settings alone). The tokenizer files of an export that had one still go with it."""
    model = small_model()
    for over_export in (True, False):
        out = tmp_path / f"over-export-{over_export}"
        out.mkdir()
        if over_export:
            checkpoint.export_hf(model, out)
        else:
            (out / "generation_config.json").write_text('{"theirs": true}')
        (out / "tokenizer_config.json").write_text('{"theirs": true}')
        checkpoint.export_hf(model, out, replace=True)
        assert (out / "tokenizer_config.json").read_text() == '{"theirs": true}'
        assert (out / "config.json").exists() and not (out / "tokenizer.json").exists()
    out = tmp_path / "had-one"
    tiny_tokenizer(tmp_path / "tokenizer.json", "ab ab")
    checkpoint.export_hf(tokenizer_model(), out, tmp_path / "tokenizer.json")
    checkpoint.export_hf(tokenizer_model(), out, replace=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json",
                                                     "model.safetensors"]


def test_a_forced_export_without_a_tokenizer_over_a_foreign_one_removes_its_tokenizer_config_too(tmp_path):
    """Bug caught: export_hf --force without a tokenizer over an HF folder transformers saved with its
    own tokenizer removed that tokenizer.json (and special_tokens_map.json) but left its
    tokenizer_config.json, which described a tokenizer no longer there (AutoTokenizer failed on it)."""
    model = small_model()
    out = tmp_path / "foreign"
    checkpoint.export_hf(model, out)
    theirs = json.loads((out / "config.json").read_text())  # a folder no export of ours wrote
    (out / "config.json").write_text(json.dumps({k: v for k, v in theirs.items() if k != "tokenizer_sha256"}))
    tiny_tokenizer(out / "tokenizer.json", "ab ab")
    (out / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    (out / "special_tokens_map.json").write_text("{}")
    checkpoint.export_hf(model, out, replace=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json",
                                                     "model.safetensors"]

def test_a_folder_with_model_safetensors_ignores_a_stale_shard_index(tmp_path):
    """Catches hf_weight_files reading model.safetensors.index.json where model.safetensors is
    there too (an index left by an earlier sharded save): the folder's one file is its weights. A
    lone index that lists no weights is named as such, not a KeyError."""
    model = small_model()
    hf = checkpoint.export_hf(model, tmp_path / "hf")
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    assert checkpoint.hf_weight_files(hf) == [hf / "model.safetensors"]
    back = checkpoint.load_hf(hf)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in back.state_dict().items())
    (hf / "model.safetensors").unlink()
    assert checkpoint.hf_weight_files(hf) == [hf / "model-00001-of-00002.safetensors"]
    (hf / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.hf_weight_files(hf)
    assert str(e.value).startswith(f"{hf / 'model.safetensors.index.json'} is not a safetensors index (")


def test_a_run_folder_with_only_run_lock_or_its_settings_holds_no_checkpoint_yet(tmp_path):
    """Catches find_checkpoint taking a folder that holds run.lock alone (a run stopped before it
    wrote train.json) for "not a run folder": it is a run that saved nothing yet (exit status 2,
    the advice given); so is one that wrote its settings beside it."""
    for names in (["run.lock"], ["run.lock", "train.json"]):
        run = tmp_path / "-".join(names)
        run.mkdir()
        for name in names:
            (run / name).write_text("")
        with pytest.raises(ConfigError) as e:
            checkpoint.find_checkpoint(str(run), not_saved_fix="start it again")
        assert str(e.value) == (f"{run} holds no checkpoint yet (its run stopped before its first save, "
                                "or has not reached it); start it again")


def test_a_checkpoint_whose_model_holds_anything_but_tensors_is_refused(tmp_path):
    """Catches load_checkpoint accepting a model dict with a tensor in it beside other things (it
    checked that some value was a tensor, not every one)."""
    model = small_checkpoint(tmp_path / "ok.pt")
    weights = dict(torch.load(model, weights_only=True)["model"])
    weights["extra"] = [1, 2]
    with pytest.raises(checkpoint.CheckpointError, match="its model is not a dict of tensors"):
        checkpoint.load_checkpoint(small_checkpoint(tmp_path / "x.pt", model=weights))


def test_an_export_over_a_folders_weights_alone_needs_force(tmp_path):
    """Catches export_hf taking only config.json for an export already there: a folder holding a
    model.safetensors (its config.json gone, or a shard of a save in progress) was replaced
    without --force."""
    model = small_model()
    out = tmp_path / "hf"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"theirs")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.export_hf(model, out)
    assert str(e.value) == (f"{out} already holds a model (model.safetensors); pass --force to replace it, "
                            "or export to another folder")
    assert (out / "model.safetensors").read_bytes() == b"theirs"
    checkpoint.export_hf(model, out, replace=True)
    assert (out / "model.safetensors").read_bytes() != b"theirs"


@pytest.mark.parametrize("name", ["generation_config.json", "tokenizer_config.json"])
def test_an_export_over_a_folders_settings_alone_needs_force(tmp_path, name):
    """Bug caught: a folder holding a generation_config.json or tokenizer_config.json but no model
    (settings written by hand, or a copy) had them replaced by an export without --force."""
    out = tmp_path / "hf"
    out.mkdir()
    (out / name).write_text('{"theirs": true}')
    tiny_tokenizer(tmp_path / "tokenizer.json", "ab ab")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.export_hf(tokenizer_model(), out, tmp_path / "tokenizer.json")
    assert str(e.value).startswith(f"{out} already holds an export's {name}; pass --force to replace it")
    assert (out / name).read_text() == '{"theirs": true}'


# --- what a third mutation audit of checkpoint.py found untested -----------------------------

def touch_at(path, when):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (when, when))
    return path


def test_the_newest_run_is_the_one_whose_last_pt_was_written_last(tmp_path):
    """Catches latest_run taking the run with the oldest last.pt: `--resume` with no run name (and
    sample.py with no --ckpt) took last week's run instead of today's."""
    out = tmp_path / "out"
    touch_at(out / "old" / "last.pt", 1e9 - 1e5)
    touch_at(out / "new" / "last.pt", 1e9)
    touch_at(out / "no-checkpoint" / "train.json", 1e9 + 1)
    assert checkpoint.latest_run(out) == out / "new"
    assert checkpoint.find_checkpoint("", out_dir=out) == out / "new" / "last.pt"


def test_no_run_to_take_names_the_callers_option_for_a_path(tmp_path):
    """Bug caught: "no run with a last.pt under checkpoints/; train one first or pass a path" named no
    option: sample.py takes the path as --ckpt (train.py as --resume; export_hf.py as its first argument)."""
    out = tmp_path / "out"
    out.mkdir()
    for option in ("--ckpt ", ""):
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.find_checkpoint("", out_dir=out, option=option)
        assert str(e.value) == (f"no run with a last.pt under {out}/; train one first or pass {option}a .pt "
                                "file or a run folder")


def test_no_run_to_take_where_the_runs_folder_is_a_file_says_it_is_a_file(tmp_path):
    """Bug caught: sample.py with no --ckpt where checkpoints/ is a file said "no run with a last.pt under
    checkpoints/", not that it is a file."""
    out = tmp_path / "out"
    out.write_text("")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.find_checkpoint("", out_dir=out, option="--ckpt ")
    assert str(e.value) == (f"{out} is a file, not a folder of runs; move it away, or pass --ckpt a .pt file "
                            "or a run folder")


def test_a_folder_holding_run_lock_alone_is_a_run(tmp_path):
    """Catches run_folders leaving out a folder holding only run.lock (a run still before it wrote
    train.json, or stopped there): a folder of runs then did not list it, or was not one at all."""
    out = tmp_path / "out"
    touch_at(out / "starting" / "run.lock", 1e9)
    touch_at(out / "trained" / "best.pt", 1e9 - 10)
    touch_at(out / "notes" / "readme.txt", 1e9 + 10)
    assert checkpoint.run_folders(out) == [out / "starting", out / "trained"]


def test_a_train_json_without_run_lock_or_a_stale_run_lock_beside_text_makes_no_run(tmp_path):
    """Bug caught: a train.json without a run.lock (gpu_check.py's results, which go beside its run
    under --work; a user's records) or a run.lock an older version left in a folder of text made a
    folder a run's to --resume and --ckpt (run_folders, find_checkpoint), not to --data: `sample.py
    --ckpt checkpoints/gpu-check` advised --ckpt checkpoints/gpu-check/results (the newest), which
    "held no checkpoint yet", and --resume there refused, that newest "run" holding no last.pt."""
    import sources
    out = tmp_path / "out"
    touch_at(out / "r" / "last.pt", 1e9)
    touch_at(out / "results" / "train.json", 1e9 + 10)  # (gpu_check.py's, beside its gpu.md)
    touch_at(out / "results" / "gpu.md", 1e9 + 10)
    touch_at(out / "mine" / "a.txt", 1e9 + 20)
    touch_at(out / "mine" / "run.lock", 1e9 + 20)
    assert checkpoint.run_folders(out) == [out / "r"]
    for folder in (out / "results", out / "mine"):
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.find_checkpoint(str(folder))
        assert str(e.value) == f"{folder} is not a run folder (no last.pt in it); pass a .pt file or a run " \
                               "folder"
        assert sources.project_folder(folder) is None  # (as --data takes it)
    touch_at(out / "results" / "run.lock", 1e9 + 30)  # a run's settings beside its lock: a run, to both
    assert checkpoint.run_folders(out) == [out / "results", out / "r"]
    assert sources.project_folder(out / "results") == "a run folder"


def test_a_run_with_best_pt_alone_names_that_file(tmp_path):
    """Catches find_checkpoint calling a run killed before its first last.pt, with a best.pt,
    "no checkpoint yet": the best.pt there is named, to be passed instead."""
    run = tmp_path / "r"
    touch_at(run / "train.json", 1e9)
    touch_at(run / "best.pt", 1e9)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.find_checkpoint(str(run))
    assert str(e.value) == f"{run} has no last.pt, only best.pt; pass {run / 'best.pt'} to use it"


def test_a_folder_of_runs_given_as_a_run_names_its_newest(tmp_path):
    """Catches find_checkpoint advising the oldest run of an --out_dir passed as a run (the list is
    newest first): the line said "(the newest)" of the run written to longest ago."""
    out = tmp_path / "out"
    touch_at(out / "old" / "last.pt", 1e9 - 100)
    touch_at(out / "new" / "last.pt", 1e9)
    with pytest.raises(ConfigError) as e:
        checkpoint.find_checkpoint(str(out), option="--ckpt ")
    assert str(e.value) == (f"{out} is a folder of runs, not a run; pass --ckpt {out / 'new'} (the newest) "
                            "or another of its runs (new, old)")


def test_the_advice_for_a_checkpoint_that_failed_is_the_other_one_of_its_run(tmp_path):
    """Catches resume_fix advising the very checkpoint that failed (best.pt for a bad best.pt), or
    best.pt before last.pt for another file of the run (last.pt, the newer, goes on training)."""
    run = tmp_path / "r"
    touch_at(run / "last.pt", 1e9)
    touch_at(run / "best.pt", 1e9)
    assert checkpoint.resume_fix(run / "best.pt") == (
        f"it was left in place: pass --resume {run / 'last.pt'}, or start a new --run")
    assert checkpoint.resume_fix(run / "last.pt") == (
        f"it was left in place: pass --resume {run / 'best.pt'}, or start a new --run")
    assert checkpoint.resume_fix(run / "step100.pt", eval_only=True) == (
        f"it was left in place: pass --resume {run / 'last.pt'} to evaluate that one")
    (run / "last.pt").unlink()
    assert checkpoint.resume_fix(run / "best.pt") == ("it was left in place: start a new --run, or pass "
                                                      "--resume another checkpoint")


def test_a_file_that_never_was_a_checkpoint_is_not_said_to_be_left_in_place(tmp_path):
    """Bug caught: sample.py --ckpt RUN/tokenizer.json (or export_hf, --resume) told "it was left in place",
    which reads as if a damaged checkpoint had been kept; a .pt file that fails still is told so."""
    run = tmp_path / "r"
    small_checkpoint(touch_at(run / "last.pt", 1e9))
    (run / "tokenizer.json").write_text("{}")
    for fix in (checkpoint.other_fix, checkpoint.resume_fix):
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.load_checkpoint(run / "tokenizer.json", fix(run / "tokenizer.json"))
        assert str(e.value).startswith(f"{run / 'tokenizer.json'} is corrupt or not a checkpoint at all "
                                       "(not a zip archive, which torch.save writes); pass ")
        assert "left in place" not in str(e.value) and str(run / "last.pt") in str(e.value)
    assert checkpoint.other_fix(run / "other.pt") == f"it was left in place: pass {run / 'last.pt'} instead"
    assert checkpoint.resume_fix(tmp_path / "x.json", eval_only=True) == (
        "evaluate another checkpoint with --resume (a .pt file or a run folder)")


def test_a_corrupt_checkpoint_is_named_with_the_other_checkpoint_of_its_run(tmp_path):
    """Catches load_checkpoint's default advice not being resume_fix (best.pt beside a corrupt
    last.pt went unnamed), and _unreadable telling random bytes from a torn zip wrongly."""
    run = tmp_path / "r"
    small_checkpoint(touch_at(run / "best.pt", 1e9))
    (run / "last.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_checkpoint(run / "last.pt")
    assert str(e.value) == (f"{run / 'last.pt'} is corrupt or not a checkpoint at all (not a zip archive, "
                            "which torch.save writes); it was left in place: pass --resume "
                            f"{run / 'best.pt'}, or start a new --run")
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes()[:300])  # a torn save: a zip's start
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_checkpoint(run / "last.pt", fix="fix it")
    assert str(e.value) == (f"{run / 'last.pt'} is cut short (300 bytes, a zip archive without its end: a "
                            "save or a copy that did not finish); fix it")


def test_a_checkpoint_cut_anywhere_is_named_cut_short(tmp_path):
    """Bug caught: a checkpoint cut short (a copy that did not finish, a disk that filled under another
    tool) was "corrupt or unreadable (RuntimeError: PytorchStreamReader failed reading zip archive:
    failed finding central directory)", or "(OSError: [Errno 22] Invalid argument)": torch's words,
    which do not say what happened to the file."""
    data = small_checkpoint(tmp_path / "whole.pt").read_bytes()
    for size in (4, 200, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pt").write_bytes(data[:size])
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.load_checkpoint(tmp_path / "cut.pt", fix="fix it")
        assert f"is cut short ({size:,} bytes" in str(e.value), (size, str(e.value))


def test_the_random_generators_come_back_exactly_mid_sequence():
    """Catches set_rng_state dropping numpy's position in its key (pos) or Python's cached second
    Gaussian (gauss_next): a resumed run drew other numbers than an uninterrupted one."""
    import random

    import numpy as np
    saved = checkpoint.rng_state()
    try:
        random.seed(1)
        np.random.seed(1)
        torch.manual_seed(1)
        random.gauss(0, 1)  # (an odd number of draws: the second of the pair is cached)
        np.random.random(3)
        state = checkpoint.rng_state()

        def draws():
            return random.gauss(0, 1), random.random(), np.random.random(3).tolist(), torch.rand(3).tolist()
        first = draws()
        checkpoint.set_rng_state(state)
        assert draws() == first
    finally:
        checkpoint.set_rng_state(saved)


def tiny_tokenizer(path, text):
    """A 266-token BPE (the 8 special tokens, 256 bytes, 2 merges of `text`), saved at path."""
    from tokenizer import Tokenizer
    tok = Tokenizer.train([text] * 20, 266)
    tok.save(path)
    return tok


def tokenizer_model():
    """A small model with the vocabulary of tiny_tokenizer."""
    return checkpoint.Llama4(ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=266,
                                       n_experts=2, max_seq_len=16))


def test_a_checkpoint_takes_its_tokenizer_by_either_recorded_hash_and_refuses_another(tmp_path):
    """Catches check_tokenizer refusing the hash older versions recorded (with the post-processor:
    their runs could no longer be sampled or resumed), or not checking the recorded hash at all."""
    from tokenizers import processors
    tok = tiny_tokenizer(tmp_path / "a.json", "aaaa aaaa")
    tok.tok.post_processor = processors.ByteLevel(trim_offsets=False)
    from tokenizer import Tokenizer
    tok = Tokenizer(tok.tok, exact=False)
    assert tok.legacy_hash not in (None, tok.hash)
    args = config.to_dict(tokenizer_model().args)
    for sha in (tok.hash, tok.legacy_hash):
        ckpt = {"model_args": args, "tokenizer": {"sha256": sha}}
        checkpoint.check_tokenizer(tok, "a.json", ckpt, "r/last.pt")
    other = tiny_tokenizer(tmp_path / "b.json", "bbbb bbbb")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.check_tokenizer(tok, "a.json", {"model_args": args, "tokenizer": {"sha256": other.hash}},
                                   "r/last.pt")
    assert str(e.value).startswith("a.json is not the tokenizer r/last.pt was trained with (sha256 ")


def test_stages_of_exports_killed_are_swept_and_live_or_foreign_ones_kept(tmp_path, monkeypatch):
    """Catches _sweep_stages removing the staging folder of an export at work there under another
    user (os.kill: no permission), or reading the pid from the wrong part of the name (a killed
    export's folder then stayed for good)."""
    dead, theirs = 999_999_991, 999_999_992
    for name in (f".tmp-export-{dead}-abc", f".tmp-export-{theirs}-abc", f".tmp-export-{os.getpid()}-abc",
                 ".tmp-export-x-abc"):
        (tmp_path / name).mkdir()

    def kill(pid, sig):
        assert sig == 0
        if pid == dead:
            raise ProcessLookupError(3, "No such process")
        if pid == theirs:
            raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(checkpoint.os, "kill", kill)
    checkpoint._sweep_stages(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".tmp-export-{theirs}-abc", f".tmp-export-{os.getpid()}-abc", ".tmp-export-x-abc"])


def test_an_export_never_replaces_a_runs_own_tokenizer_without_force(tmp_path):
    """Catches export_hf taking a tokenizer.json already in the folder for its own: an export
    without a tokenizer deleted a run folder's tokenizer.json (its checkpoints need it), and one
    with another tokenizer replaced it, both without --force. Bug caught: the one without a
    tokenizer said "pass --force to replace it" of a file --force removes."""
    model = small_model()
    run = tmp_path / "run"
    run.mkdir()
    tiny_tokenizer(run / "tokenizer.json", "aaaa aaaa")
    before = (run / "tokenizer.json").read_bytes()
    tiny_tokenizer(tmp_path / "other.json", "bbbb bbbb")
    for tokenizer_path in (None, tmp_path / "other.json"):
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.export_hf(model, run, tokenizer_path)
        verb = "remove" if tokenizer_path is None else "replace"
        assert "already holds another tokenizer.json" in str(e.value)
        assert f"; pass --force to {verb} it, or export to another folder" in str(e.value)
        assert sorted(p.name for p in run.iterdir()) == ["tokenizer.json"]
        assert (run / "tokenizer.json").read_bytes() == before
    checkpoint.export_hf(model, run, run / "tokenizer.json")  # the same tokenizer: no --force needed


def test_a_config_json_that_is_no_settings_object_records_no_tokenizer(tmp_path):
    """Catches recorded_tokenizer failing (AttributeError) on a config.json holding a list: it
    records no tokenizer, as a missing or unreadable one does."""
    assert checkpoint.recorded_tokenizer(tmp_path) is None
    (tmp_path / "config.json").write_text("[1, 2]")
    assert checkpoint.recorded_tokenizer(tmp_path) is None
    (tmp_path / "config.json").write_text("{not json")
    assert checkpoint.recorded_tokenizer(tmp_path) is None
    (tmp_path / "config.json").write_text('{"tokenizer_sha256": "ab"}')
    assert checkpoint.recorded_tokenizer(tmp_path) == "ab"


def test_an_hf_folder_too_large_for_memory_is_out_of_memory_not_corrupt(tmp_path, monkeypatch):
    """Catches load_hf calling a good model.safetensors that does not fit in memory "corrupt or
    unreadable": the out-of-memory error goes on as it was. A file given for the folder is named."""
    import safetensors.torch
    hf = checkpoint.export_hf(small_model(), tmp_path / "hf")

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(safetensors.torch, "load_file", oom)
    with pytest.raises(torch.OutOfMemoryError):
        checkpoint.load_hf(hf)
    with pytest.raises(checkpoint.CheckpointError, match="config.json is not a folder; pass an HF folder"):
        checkpoint.load_hf(hf / "config.json")


def test_tokenizer_files_this_project_cannot_read_are_compared_by_their_bytes(tmp_path):
    """Catches same_tokenizer calling two identical files it cannot read as tokenizers different
    (an import beside a copy of the same foreign tokenizer.json was refused)."""
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text('{"not": "a tokenizer"}')
    b.write_text('{"not": "a tokenizer"}')
    c.write_text('{"another": 1}')
    assert checkpoint.same_tokenizer(a, b) and not checkpoint.same_tokenizer(a, c)


def test_an_import_goes_to_a_run_folders_last_pt_and_records_its_tokenizer(tmp_path):
    """Catches import_hf writing a checkpoint file named as the run ("imported", no .pt) instead of
    the run folder's last.pt, recording no tokenizer hash (sample.py could not check it), refusing
    the same tokenizer beside it, or replacing another one without --force."""
    model = tokenizer_model()
    tok = tiny_tokenizer(tmp_path / "tokenizer.json", "aaaa aaaa")
    hf = checkpoint.export_hf(model, tmp_path / "hf", tmp_path / "tokenizer.json")
    dest = checkpoint.import_hf(hf, tmp_path / "imported")
    assert dest == tmp_path / "imported" / "last.pt"
    saved = checkpoint.load_checkpoint(dest)
    assert saved["tokenizer"] == {"file": "tokenizer.json", "sha256": tok.hash}
    assert (tmp_path / "imported" / "tokenizer.json").read_bytes() == (hf / "tokenizer.json").read_bytes()
    checkpoint.import_hf(hf, tmp_path / "imported" / "again.pt")  # the same tokenizer there: fine
    run = tmp_path / "run"
    run.mkdir()
    tiny_tokenizer(run / "tokenizer.json", "bbbb bbbb")
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer.json is another tokenizer"):
        checkpoint.import_hf(hf, run / "x.pt")
    assert sorted(p.name for p in run.iterdir()) == ["tokenizer.json"]


def test_an_import_to_a_name_ending_in_a_slash_goes_into_that_folder(tmp_path):
    """Bug caught: --import HF runs/imp.pt/ wrote the file runs/imp.pt (Path drops the slash) and the
    tokenizer.json beside it into runs/, the folder of runs, not the folder named."""
    hf = checkpoint.export_hf(small_model(), tmp_path / "hf")
    (tmp_path / "runs").mkdir()
    dest = checkpoint.import_hf(hf, f"{tmp_path / 'runs' / 'imp.pt'}/")
    assert dest == tmp_path / "runs" / "imp.pt" / "last.pt" and dest.is_file()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["imp.pt"]


def test_an_import_refuses_a_tokenizer_its_export_did_not_record(tmp_path):
    """Catches import_hf skipping check_hf_tokenizer: a folder whose tokenizer.json was replaced
    after its export was imported with it, a model paired with another tokenizer."""
    model = tokenizer_model()
    tiny_tokenizer(tmp_path / "tokenizer.json", "aaaa aaaa")
    hf = checkpoint.export_hf(model, tmp_path / "hf", tmp_path / "tokenizer.json")
    tiny_tokenizer(hf / "tokenizer.json", "bbbb bbbb")
    with pytest.raises(checkpoint.CheckpointError, match="is not the tokenizer"):
        checkpoint.import_hf(hf, tmp_path / "imported")
    assert not (tmp_path / "imported").exists()


def test_rope_settings_of_older_folders_are_read_as_transformers_reads_them():
    """Catches hf_rope letting a top-level rope_theta override the one inside rope_scaling (the
    nested one is transformers' choice), dropping the oldest spelling ("type" for "rope_type": a
    llama3 folder imported without its scaling), and args_from_hf importing a RoPE type it cannot
    build (yarn) as plain RoPE instead of refusing it."""
    cfg = checkpoint.hf_config(small_model().args)
    del cfg["rope_parameters"]
    cfg["rope_theta"] = 500000.0
    cfg["rope_scaling"] = {"type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0,
                           "original_max_position_embeddings": 16, "rope_theta": 1000.0}
    assert checkpoint.hf_rope(cfg)["rope_type"] == "llama3"
    args = checkpoint.args_from_hf(cfg)
    assert (args.rope_scaling, args.rope_factor, args.rope_theta) == ("llama3", 4.0, 1000.0)
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    with pytest.raises(ConfigError, match="rope_type 'yarn' is not supported"):
        checkpoint.args_from_hf(cfg)


def test_a_sharded_folder_loads_every_shard_and_a_misfit_names_its_index(tmp_path):
    """Catches load_hf reading the first shard alone of a sharded folder (save_pretrained's
    max_shard_size: released Llama 4 folders), and naming a shard, not the index, when the weights
    do not fit the settings."""
    from safetensors.torch import load_file, save_file
    model = small_model()
    hf = checkpoint.export_hf(model, tmp_path / "hf")
    state = load_file(str(hf / "model.safetensors"))
    (hf / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(hf / shard), metadata={"format": "pt"})
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    back = checkpoint.load_hf(hf)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in back.state_dict().items())
    save_file({k: state[k] for k in names[1::2][1:]}, str(hf / "model-00002-of-00002.safetensors"))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_hf(hf)
    index_path = hf / "model.safetensors.index.json"
    assert str(e.value).startswith(f"{index_path}: its weights do not fit its settings (")


def test_an_export_given_a_tokenizer_path_that_is_not_there_writes_the_model_alone(tmp_path):
    """Catches export_hf counting on a tokenizer file that is not there (a run folder whose
    tokenizer.json was deleted): the export failed as it renamed the staged tokenizer it never
    wrote, or recorded the hash of a file it could not read."""
    model = small_model()
    hf = checkpoint.export_hf(model, tmp_path / "hf", tmp_path / "gone" / "tokenizer.json")
    assert sorted(p.name for p in hf.iterdir()) == ["config.json", "generation_config.json",
                                                    "model.safetensors"]
    assert "tokenizer_sha256" not in json.loads((hf / "config.json").read_text())


def test_an_import_over_a_checkpoint_or_another_tokenizer_needs_force_and_then_replaces_both(tmp_path):
    """Catches import_hf replacing a checkpoint already at its destination without --force (a
    run's last.pt, with its optimizer state, lost), and --force not replacing another tokenizer.json
    beside it (the import then refused whatever was passed)."""
    model = tokenizer_model()
    tok = tiny_tokenizer(tmp_path / "tokenizer.json", "aaaa aaaa")
    hf = checkpoint.export_hf(model, tmp_path / "hf", tmp_path / "tokenizer.json")
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"a run's checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="last.pt already exists; pass --force"):
        checkpoint.import_hf(hf, run)
    assert (run / "last.pt").read_bytes() == b"a run's checkpoint"
    tiny_tokenizer(run / "tokenizer.json", "bbbb bbbb")
    assert checkpoint.import_hf(hf, run, replace=True) == run / "last.pt"
    assert checkpoint.load_checkpoint(run / "last.pt")["tokenizer"]["sha256"] == tok.hash
    assert (run / "tokenizer.json").read_bytes() == (hf / "tokenizer.json").read_bytes()


def _run_beside_another_tokenizer(tmp_path):
    """An HF folder, and a run folder holding a last.pt and a tokenizer.json other than the folder's."""
    model = tokenizer_model()
    tiny_tokenizer(tmp_path / "tokenizer.json", "aaaa aaaa")
    hf = checkpoint.export_hf(model, tmp_path / "hf", tmp_path / "tokenizer.json")
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"a run's checkpoint")
    tiny_tokenizer(run / "tokenizer.json", "bbbb bbbb")
    return hf, run, {p.name: p.read_bytes() for p in run.iterdir()}


def test_a_forced_import_stopped_before_its_tokenizer_leaves_the_old_pair(tmp_path, monkeypatch):
    """Catches import_hf --force, the disk full (or an interrupt) after the new last.pt and before
    its tokenizer.json, leaving that last.pt beside the old run's tokenizer.json: a checkpoint that
    decodes with another vocabulary. Now the old pair stays as it was, and it says nothing was imported."""
    import errno

    import storage
    hf, run, before = _run_beside_another_tokenizer(tmp_path)
    real = storage.atomic_write
    messages = []
    for interrupt in (False, True):
        def stopped_at_tokenizer(path, data, fix=None, interrupt=interrupt):
            if str(path).endswith("tokenizer.json"):
                raise KeyboardInterrupt if interrupt else \
                    storage.write_error(path, OSError(errno.ENOSPC, "No space left on device"), fix)
            return real(path, data, fix)
        with monkeypatch.context() as m:
            m.setattr(storage, "atomic_write", stopped_at_tokenizer)
            with pytest.raises(KeyboardInterrupt if interrupt else storage.StorageError) as e:
                checkpoint.import_hf(hf, run, replace=True)
        messages.append(str(e.value))
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # no new file, no hidden one left
    assert messages[0].startswith(f"cannot write {run / 'tokenizer.json'}: the disk is full")
    assert messages[0].endswith("(nothing was imported)")


def test_a_forced_import_whose_checkpoint_rename_fails_puts_the_old_tokenizer_back(tmp_path, monkeypatch):
    """Catches import_hf renaming the new tokenizer.json into place and then failing on last.pt's
    rename, leaving the old last.pt beside the new tokenizer. Now the old tokenizer is put back."""
    import errno

    hf, run, before = _run_beside_another_tokenizer(tmp_path)
    real = os.replace

    def failing(src, dst):
        if Path(dst) == run / "last.pt" and Path(src).name.startswith(".tmp-import-"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real(src, dst)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", failing)
        with pytest.raises(checkpoint.StorageError, match=re.escape(f"cannot write {run / 'last.pt'}: ")):
            checkpoint.import_hf(hf, run, replace=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert checkpoint.import_hf(hf, run, replace=True) == run / "last.pt"  # the same, once it works
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "tokenizer.json"]
    assert (run / "tokenizer.json").read_bytes() == (hf / "tokenizer.json").read_bytes()


def test_a_tokenizer_of_another_size_than_the_checkpoints_model_is_a_checkpoint_error(tmp_path):
    """Catches check_tokenizer letting the tokenizer module's DataError out (exit status of a data
    problem, advice to pass --vocab_size, which a checkpoint's model cannot take): it is a
    CheckpointError with the advice about the tokenizer."""
    tok = tiny_tokenizer(tmp_path / "tokenizer.json", "aaaa aaaa")
    ckpt = {"model_args": config.to_dict(small_model().args)}
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.check_tokenizer(tok, "tokenizer.json", ckpt, "r/last.pt", fix="put it back")
    assert str(e.value) == "tokenizer.json has 266 tokens but the model of r/last.pt has 64; put it back"


def test_a_special_token_a_config_sets_to_null_takes_a_free_id():
    """Catches args_from_hf keeping a special-token id the folder's config.json sets to null (no
    pad token: Meta's configs say so) instead of giving it a free id."""
    cfg = checkpoint.hf_config(small_model().args)
    cfg["pad_token_id"] = None
    args = checkpoint.args_from_hf(cfg)
    ids = [getattr(args, name) for name in config.SPECIAL_TOKENS]
    assert isinstance(args.pad_id, int) and len(set(ids)) == len(ids)


def test_an_explicit_layer_list_on_the_interval_is_taken_and_one_off_it_refused():
    """Catches _check_hf_layout deriving no_rope_layers the wrong way round (1 means RoPE, as in
    transformers): a folder listing its layers as the interval makes them was refused."""
    args = ModelArgs(dim=32, n_layers=4, n_heads=2, n_kv_heads=1, vocab_size=64, n_experts=2, max_seq_len=16)
    cfg = checkpoint.hf_config(args)
    cfg["no_rope_layers"] = [1, 1, 1, 0]  # (layer 3 of 4 is the NoPE one)
    assert checkpoint.args_from_hf(cfg).nope_every == 4
    cfg["no_rope_layers"] = [0, 1, 1, 1]
    with pytest.raises(ConfigError, match=r"no_rope_layers \[0, 1, 1, 1\] is not every n-th layer"):
        checkpoint.args_from_hf(cfg)


def test_weights_loaded_into_a_built_model_must_fit_it_all():
    """Catches build loading a state dict into a model built already without strict checking (a
    resumed run whose checkpoint lacks a weight went on with that weight freshly initialised): a
    missing or extra weight is a CheckpointError naming the file."""
    model = small_model()
    state = dict(model.state_dict())
    del state["norm.weight"]
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.build(model.args, state, "cpu", "r/last.pt", "fix it", model=small_model())
    msg = str(e.value)
    assert msg.startswith("r/last.pt: its weights do not fit its settings (") and "norm.weight" in msg
    assert msg.endswith("; fix it")


def test_a_device_or_fifo_given_as_a_checkpoint_is_named_as_one(tmp_path):
    """Catches --ckpt /dev/null (or a FIFO) said to "not exist": it exists, and is no file."""
    import os
    fifo = tmp_path / "ckpt.pt"
    os.mkfifo(fifo)
    for path, kind in [(fifo, "a named pipe (FIFO)"), ("/dev/null", "a character device")]:
        with pytest.raises(checkpoint.CheckpointError) as e:
            checkpoint.find_checkpoint(str(path))
        assert str(e.value) == f"checkpoint {path} is {kind}, not a file; pass a .pt file or a run folder"


def test_an_exported_tokenizer_starts_a_text_with_the_models_own_eos_id(tmp_path):
    """Catches with_story_start prefixing the string <|endoftext|> whatever the model's eos_id (an
    imported Meta model's is 2), or rewriting the rest of tokenizer.json: transformers' tokenizer
    must give the ids sample.py prompts with, [eos_id] + the text's, and the hash must not move."""
    from conftest import WORDS
    from transformers import PreTrainedTokenizerFast

    from tokenizer import Tokenizer
    tok = Tokenizer.train([" ".join(WORDS)] * 20, 300)
    tok.save(tmp_path / "tokenizer.json")
    for start_id in (0, 2):
        out = tmp_path / f"start{start_id}.json"
        out.write_bytes(checkpoint.with_story_start((tmp_path / "tokenizer.json").read_bytes(), start_id))
        hf = PreTrainedTokenizerFast(tokenizer_file=str(out))
        assert hf("the cat").input_ids == [start_id] + tok.encode("the cat")
        assert Tokenizer.load(out).hash == tok.hash


def test_an_exported_tokenizer_marks_the_second_text_of_a_pair_as_its_own(tmp_path):
    """Bug caught: with_story_start's pair template without $B:1, so that the second text of a pair
    got the first's token type id 0: each text starts a story, the second's text typed 1 (its
    <|endoftext|>, as a template's special tokens are, 0)."""
    import tokenizers
    from conftest import WORDS

    from tokenizer import Tokenizer
    tok = Tokenizer.train([" ".join(WORDS)] * 20, 300)
    tok.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_str(checkpoint.with_story_start((tmp_path / "tokenizer.json").read_bytes(),
                                                                   2).decode())
    a, b = tok.encode("the cat"), tok.encode("a dog")
    pair = hf.encode("the cat", "a dog")
    assert pair.ids == [2, *a, 2, *b]
    assert pair.type_ids == [0] * (2 + len(a)) + [1] * len(b)


def test_an_export_starts_a_text_with_its_models_eos_id_not_the_defaults(tmp_path):
    """Bug caught: export_hf's tokenizer.json given the default eos_id 0 as a story's start, not the
    model's own (an imported Meta model's is 2): transformers users prompted with another token."""
    import tokenizers
    tok = tiny_tokenizer(tmp_path / "tokenizer.json", "aaaa aaaa")
    model = checkpoint.Llama4(ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=266,
                                        n_experts=2, max_seq_len=16, eos_id=2, image_start_id=0))
    hf = checkpoint.export_hf(model, tmp_path / "hf", tmp_path / "tokenizer.json")
    exported = tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json"))
    assert exported.encode("aaaa").ids == [2, *tok.encode("aaaa")]


def test_weights_reach_the_device_already_in_the_dtype_asked_for(tmp_path, monkeypatch):
    """Catches load_model and load_hf moving the fp32 weights to the device and casting them there
    (sample.py's bf16 on CUDA): the GPU held the fp32 weights and their bf16 copy at once. The
    meta device stands in for the GPU: every weight the model is built from is there in bf16
    already, the tied output layer of an import still shares the embedding, and the RoPE tables
    stay fp32."""
    model = small_model()
    hf = checkpoint.export_hf(model, tmp_path / "hf")
    config_json = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config_json, "tie_word_embeddings": True}))
    from safetensors.torch import load_file, save_file
    weights = load_file(hf / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "lm_head.weight"}, hf / "model.safetensors")
    given, real_build = [], checkpoint.build

    def build(model_args, state, *rest):
        given.append({(v.dtype, v.device.type) for v in state.values()})
        return real_build(model_args, state, *rest)
    monkeypatch.setattr(checkpoint, "build", build)
    for back in (checkpoint.load_model(small_checkpoint(tmp_path / "a.pt"), "meta", torch.bfloat16)[0],
                 checkpoint.load_hf(hf, "meta", torch.bfloat16)):
        assert {p.dtype for p in back.parameters()} == {torch.bfloat16}
        assert back.inv_freq.dtype == torch.float32 and back.inv_freq.is_meta
    assert given == [{(torch.bfloat16, "meta")}] * 2
    cpu = checkpoint.load_hf(hf, "cpu", torch.bfloat16)
    assert cpu.lm_head.weight.data_ptr() == cpu.embed_tokens.weight.data_ptr()


def test_an_export_of_bf16_weights_says_bfloat16(tmp_path):
    """Bug caught: config.json said torch_dtype float32 whatever the weights were, so a checkpoint
    imported from a bf16 folder exported bf16 tensors labelled float32, and transformers'
    from_pretrained(dtype="auto") loaded them as float32 (twice the memory, not the folder's dtype)."""
    transformers = pytest.importorskip("transformers")
    for dtype in (torch.float32, torch.bfloat16):
        out = checkpoint.export_hf(small_model().to(dtype).eval(), tmp_path / str(dtype))
        name = str(dtype).removeprefix("torch.")
        assert json.loads((out / "config.json").read_text())["torch_dtype"] == name
        hf = transformers.Llama4ForCausalLM.from_pretrained(out, dtype="auto")
        assert {p.dtype for p in hf.parameters()} == {dtype}


def test_an_exports_generation_config_samples_as_sample_py_does_by_default(tmp_path):
    """Bug caught: generation_config.json held no sampling settings, so transformers' generate on an
    export decoded greedily (do_sample False), where sample.py samples at temperature 0.8 over every
    token (top_k 0, top_p 1: off) by default."""
    transformers = pytest.importorskip("transformers")
    model = small_model()
    out = checkpoint.export_hf(model, tmp_path / "hf")
    gen = transformers.GenerationConfig.from_pretrained(out)
    ours = config.SampleArgs()
    assert gen.do_sample is (not ours.greedy)
    assert (gen.temperature, gen.top_k, gen.top_p) == (ours.temperature, ours.top_k, ours.top_p)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (model.args.eos_id, model.args.eos_id,
                                                                      model.args.pad_id)


def test_import_of_a_vision_folder_with_tied_text_embeddings_takes_the_embedding_as_output(tmp_path):
    """Bug caught: a Llama4ForConditionalGeneration folder whose text_config says tie_word_embeddings
    true (transformers ties the language model's lm_head to its embedding and saves no
    language_model.lm_head.weight) was refused as "its weights do not fit its settings (Missing
    key(s) ...: "lm_head.weight")": only a text model's top-level flag was read."""
    transformers = pytest.importorskip("transformers")
    vision = dict(vision=True, vision_dim=32, vision_layers=1, vision_heads=2, vision_mlp_dim=128,
                  image_size=28, patch_size=14, projector_input_dim=32, projector_output_dim=32)
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=64, n_experts=2, max_seq_len=16,
                     **vision)
    settings = checkpoint.hf_config(args)
    settings["text_config"]["tie_word_embeddings"] = True
    torch.manual_seed(0)
    theirs = transformers.Llama4ForConditionalGeneration(transformers.Llama4Config(**settings)).eval()
    theirs.save_pretrained(tmp_path)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "language_model.lm_head.weight" not in set(f.keys())
    ours = checkpoint.load_hf(tmp_path)
    assert ours.lm_head.weight.data_ptr() == ours.embed_tokens.weight.data_ptr()
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert (ours(tokens).logits - theirs(input_ids=tokens).logits).abs().max().item() <= 1e-4


def test_an_import_with_tied_embeddings_exports_again(tmp_path):
    """Bug caught: a checkpoint imported from a folder saved with tied embeddings (its output layer
    is its embedding, one tensor) failed to export with safetensors' traceback "Some tensors share
    memory ... [{'model.embed_tokens.weight', 'lm_head.weight'}]"."""
    model = small_model().eval()
    hf = checkpoint.export_hf(model, tmp_path / "hf")
    config_json = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config_json, "tie_word_embeddings": True}))
    from safetensors.torch import load_file, save_file
    weights = load_file(hf / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "lm_head.weight"}, hf / "model.safetensors")
    tied, _ = checkpoint.load_model(checkpoint.import_hf(hf, tmp_path / "imported" / "last.pt"))
    assert tied.lm_head.weight.data_ptr() == tied.embed_tokens.weight.data_ptr()
    again = checkpoint.export_hf(tied, tmp_path / "again")
    weights = load_file(again / "model.safetensors")
    assert torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    back = checkpoint.load_hf(again)
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert torch.equal(back(tokens).logits, tied(tokens).logits)


def test_stages_of_imports_killed_are_swept_by_the_next_import_and_live_or_foreign_ones_kept(tmp_path):
    """Catches import_hf leaving for good the hidden .tmp-import-PID-* files (a whole checkpoint) and
    their writes' temporaries that an import killed (kill -9) before or between its renames left,
    or removing those of an import at work there. Bug caught: nothing swept them."""
    import subprocess
    import sys

    hf, run, _ = _run_beside_another_tokenizer(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", ""])  # a process that has ended
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = [f".tmp-import-{gone.pid}-last.pt", f".tmp-import-{gone.pid}-tokenizer.json",
                f".tmp-ab_12cd9-.tmp-import-{gone.pid}-last.pt"]
        kept = [f".tmp-import-{live.pid}-last.pt", f".tmp-x1y2z3-.tmp-import-{live.pid}-tokenizer.json",
                ".tmp-import-x-last.pt", ".tmp-mine"]
        for name in dead + kept:
            (run / name).write_bytes(b"part")
        (run / f".tmp-export-{gone.pid}-x").mkdir()  # an export's folder: not an import's to remove
        assert checkpoint.import_hf(hf, run, replace=True) == run / "last.pt"
        assert sorted(p.name for p in run.glob(".tmp-*")) == sorted(kept + [f".tmp-export-{gone.pid}-x"])
    finally:
        live.kill()
        live.wait()
    assert (run / "tokenizer.json").read_bytes() == (hf / "tokenizer.json").read_bytes()


def test_an_export_killed_between_its_renames_is_refused_as_a_mix_until_an_export_completes(
        tmp_path, monkeypatch):
    """Catches export_hf killed (kill -9) between the renames of its files leaving the new weights
    beside the old export's config.json, unmarked: load_hf read them as one model (a shape error
    at best), and the next export's sweep removed the last trace of it. Bug caught: the mix loaded
    as a misfit of weights, not as a mix to export again."""
    import shutil
    import subprocess
    import sys

    hf = checkpoint.export_hf(small_model(), tmp_path / "hf")
    larger = checkpoint.Llama4(ModelArgs(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=64,
                                         n_experts=2, max_seq_len=16))

    class Killed(BaseException):
        pass
    real = os.replace

    def replace(src, dst):
        if Path(dst) == hf / "config.json":
            raise Killed
        return real(src, dst)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        m.setattr(shutil, "rmtree", lambda *a, **k: None)  # a kill -9 runs no cleanup
        with pytest.raises(Killed):
            checkpoint.export_hf(larger, hf, replace=True)
    gone = subprocess.Popen([sys.executable, "-c", ""])  # a process that has ended: the killed export's
    gone.wait()
    stage = hf / f".tmp-export-{gone.pid}-x"
    next(hf.glob(".tmp-export-*")).rename(stage)
    mix = f"{hf} holds a mix of two exports (one was stopped while putting its files in place: {stage.name} "
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(mix)):
        checkpoint.load_hf(hf)
    checkpoint._sweep_stages(hf)  # the next export's first step: the space goes, the mark stays
    assert sorted(p.name for p in stage.iterdir()) == [".renaming", "config.json"]
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(mix)):
        checkpoint.load_hf(hf)
    checkpoint.export_hf(larger, hf, replace=True)  # one that completes: the mark goes
    assert not list(hf.glob(".tmp-*")) and checkpoint.load_hf(hf).args.dim == 64


def export_failing_half_way(tmp_path, monkeypatch, failed_mark_too: bool = False):
    """A small model's export in tmp_path/hf, and a larger model's export --force over it whose rename
    of generation_config.json fails (the disk full; the weights are in place before it), and that of
    the .failed mark too where asked; checks the error names the mix. Returns (hf, the larger model)."""
    import errno
    hf = checkpoint.export_hf(small_model(), tmp_path / "hf")
    larger = checkpoint.Llama4(ModelArgs(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=64,
                                         n_experts=2, max_seq_len=16))
    real = os.replace

    def replace(src, dst):
        mark = failed_mark_too and Path(dst).name == checkpoint.FAILED
        if Path(dst) == hf / "generation_config.json" or mark:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(checkpoint.StorageError, match=re.escape(f"{hf} holds a mix of two exports")):
            checkpoint.export_hf(larger, hf, replace=True)
    return hf, larger


def test_an_export_whose_rename_fails_half_way_says_so_and_is_refused_as_a_mix(tmp_path, monkeypatch):
    """Bug caught: export --force over an export, with a rename into place failing (a full disk, a
    quota, a folder turned read-only) after the new weights were in place: the hidden folder and its
    mark went with the error, leaving the new model.safetensors beside the old config.json unmarked;
    load_hf read them as one model ("its weights do not fit its settings"). Now the error says the
    folder holds a mix, load_hf refuses it as one, and an export that completes clears it."""
    hf, larger = export_failing_half_way(tmp_path, monkeypatch)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(f"{hf} holds a mix of two exports")):
        checkpoint.load_hf(hf)
    checkpoint.export_hf(larger, hf, replace=True)  # one that completes: the mark goes
    assert not list(hf.glob(".tmp-*")) and checkpoint.load_hf(hf).args.dim == 64


def test_an_export_whose_failed_mark_cannot_be_put_keeps_its_stage_as_a_kill_9s(tmp_path, monkeypatch):
    """Bug caught: where a rename failed half way and the .failed mark could not be put either (the
    same full disk), the stage was deleted, the mix left unmarked: load_hf read the new weights with
    the old config.json. The stage now stays, marked .renaming, a mix once its process is gone."""
    hf, _ = export_failing_half_way(tmp_path, monkeypatch, failed_mark_too=True)
    monkeypatch.setattr(checkpoint, "_gone", lambda pid: True)  # (this process, as if it had ended)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(f"{hf} holds a mix of two exports")):
        checkpoint.load_hf(hf)


def test_a_train_py_started_mid_import_is_refused_and_the_imports_hidden_files_stay(tmp_path, monkeypatch):
    """Catches import_hf writing into a run folder without its run.lock: a train.py started on the
    folder while the import staged its files took the folder and swept the import's hidden
    .tmp-import-PID-* files as a killed save's (the import's rename then failed). Now the train.py is
    refused with its one-line "in use", the import completes, and leaves no run.lock of its own."""
    import storage
    hf, _, _ = _run_beside_another_tokenizer(tmp_path)
    run = tmp_path / "fresh"
    real, seen = storage.atomic_write, []

    def write_then_start_a_train_py(path, data, fix=None):
        real(path, data, fix)
        if Path(path).name.startswith(".tmp-import-") and Path(path).name.endswith("tokenizer.json"):
            staged = sorted(p.name for p in run.glob(".tmp-*"))
            busy = f"{run} is in use by an import .*pid {os.getpid()} on "
            with pytest.raises(storage.RunError, match=busy):
                storage.RunFolder(run)
            seen.append(staged == sorted(p.name for p in run.glob(".tmp-*")) and len(staged) == 2)
    monkeypatch.setattr(storage, "atomic_write", write_then_start_a_train_py)
    assert checkpoint.import_hf(hf, run) == run / "last.pt"
    assert seen == [True]
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "tokenizer.json"]  # (no run.lock left)


def test_an_import_into_a_folder_a_live_train_py_holds_is_refused_and_writes_nothing(tmp_path):
    """Catches import_hf writing a last.pt and tokenizer.json into the folder of a train.py at work
    there (its run.lock held): the run's next save replaced the import, or the import the run's files.
    An import into a run folder no one holds keeps the run's run.lock there."""
    import storage
    hf, run, before = _run_beside_another_tokenizer(tmp_path)
    (run / "last.pt").unlink()
    (run / "tokenizer.json").unlink()
    folder = storage.RunFolder(run)
    try:
        busy = f"{run} is in use by a train.py .*pid {os.getpid()}"
        with pytest.raises(checkpoint.CheckpointError, match=busy):
            checkpoint.import_hf(hf, run)
        assert sorted(p.name for p in run.iterdir()) == ["run.lock"]
    finally:
        folder.lock.close()  # (let go, the run.lock left: a previous run's)
    assert checkpoint.import_hf(hf, run) == run / "last.pt"
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "run.lock", "tokenizer.json"]


def test_an_empty_no_rope_layers_list_is_read_as_none_given():
    """Mutation caught: _check_hf_layout taking no_rope_layers [] as a list given (got is not None),
    refusing a folder transformers loads with the interval's layout (it reads an empty list as none)."""
    args = ModelArgs(dim=32, n_layers=4, n_heads=2, n_kv_heads=1, vocab_size=64, n_experts=2, max_seq_len=16)
    cfg = checkpoint.hf_config(args)
    cfg["no_rope_layers"] = []
    assert checkpoint.args_from_hf(cfg).nope_every == 4


def test_a_tokenizer_id_the_config_gives_another_special_token_takes_a_free_id():
    """Mutation caught: _free_special_ids giving a special token the tokenizer's id where config.json
    already gives that id to another (`i not in taken` dropped): two special tokens on one id."""
    cfg = checkpoint.hf_config(small_model().args)
    args = checkpoint.args_from_hf(cfg, {"image_id": cfg["pad_token_id"], "patch_id": 60})
    ids = [getattr(args, name) for name in config.SPECIAL_TOKENS]
    assert args.pad_id == cfg["pad_token_id"] and args.patch_id == 60
    assert args.image_id != args.pad_id and len(set(ids)) == len(ids), ids


# ---------------------------------------------------------------------------------------------
# Saving in the background (checkpoint.Saves)

background_only = pytest.mark.skipif(not checkpoint.BACKGROUND, reason="in the background on Linux alone")


def slow_save(monkeypatch, seconds: float):
    """save_checkpoint taking `seconds` more (in the process that writes: the child, in the background)."""
    real = checkpoint.save_checkpoint

    def slow(path, state, fix=checkpoint.storage.OUT_FIX):
        time.sleep(seconds)
        real(path, state, fix)
    monkeypatch.setattr(checkpoint, "save_checkpoint", slow)


@background_only
def test_a_background_save_writes_the_state_as_it_was_when_begun_and_returns_at_once(tmp_path, monkeypatch):
    """Bug caught: a save that held the training loop for the whole write (2 s a save of scout-128m on
    an H200, where the CUDA defaults evaluate every 5 s or so). Holds too: the file holds the state as it
    was when the save began, not as the next step left it (the weights change in place)."""
    slow_save(monkeypatch, 1.5)
    saves, weights = checkpoint.Saves(), torch.arange(4.0)
    began = time.perf_counter()
    saves.save(tmp_path / "last.pt", {"model": {"w": weights}, "step": 3}, key=3)
    assert time.perf_counter() - began < 1.0 and saves.writing(tmp_path / "last.pt")
    weights.mul_(-1)  # the next step
    saves.wait()
    assert time.perf_counter() - began >= 1.5 and not saves.pending
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["model"]["w"], torch.arange(4.0))


@background_only
def test_two_saves_of_one_file_are_written_in_turn(tmp_path, monkeypatch):
    """Bug caught: a second save of a file begun while the first was still written (last.pt saved at a
    step by evaluate_and_save, then by wrap_up after the final evaluation): the two children raced,
    and the older state could be renamed into place last."""
    slow_save(monkeypatch, 1.0)
    saves = checkpoint.Saves()
    saves.save(tmp_path / "last.pt", {"step": 4, "best_val": 5.0}, key=4)
    monkeypatch.setattr(checkpoint, "save_checkpoint",  # (the second, without the wait: first to finish)
                        lambda path, state, fix=None: torch.save(state, path))
    saves.save(tmp_path / "last.pt", {"step": 4, "best_val": 4.0}, key=4)
    saves.wait()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["best_val"] == 4.0


@background_only
def test_a_background_save_that_fails_is_its_line_at_the_next_wait_and_keeps_the_previous_file(
        tmp_path, full_disk):
    """Bug caught: a background save's failure (a full disk) lost, or told otherwise than a save made at
    once tells it: the same one line, raised by the next wait (before the next save, at the end), the
    previous file intact."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")
    with pytest.raises(StorageError) as at_once:
        checkpoint.Saves(background=False).save(path, {"step": 1})
    saves = checkpoint.Saves()
    saves.save(path, {"step": 1}, key=1)
    saves.wait(but=1)  # (saves of the same step, best.pt then last.pt, are not waited for)
    with pytest.raises(StorageError) as later:
        saves.wait()
    assert str(later.value) == str(at_once.value) and "No space left on device" in str(later.value)
    assert path.read_bytes() == b"the previous checkpoint" and not list(tmp_path.glob(".tmp-*"))


@background_only
def test_a_background_save_is_not_cut_short_by_ctrl_c(tmp_path, monkeypatch):
    """Bug caught: Ctrl-C (SIGINT to the whole process group) or torchrun's SIGTERM ending the child
    process half way through the checkpoint it writes; train.py's own process decides what a signal
    does (Stop: never in the middle of a save)."""
    slow_save(monkeypatch, 1.0)
    saves = checkpoint.Saves()
    saves.save(tmp_path / "last.pt", {"step": 2}, key=2)
    (_, _, pid, _), = saves.pending
    time.sleep(0.3)
    for s in (signal.SIGINT, signal.SIGTERM):
        os.kill(pid, s)
    saves.wait()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2


def test_a_save_where_no_child_process_can_be_made_is_made_at_once(tmp_path, monkeypatch):
    """Bug caught: a fork that fails (memory, a process limit) losing the save; it is made at once."""
    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(checkpoint.os, "fork", no_fork)
    saves = checkpoint.Saves(background=True)
    saves.save(tmp_path / "last.pt", {"step": 5}, key=5)
    assert not saves.pending and torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 5


def test_to_host_rebuilds_containers_and_leaves_the_cpus_tensors_as_they_are():
    """Holds: to_host copies what is not on the CPU (a GPU's tensors, which a forked child cannot
    read) and leaves the rest: the CPU's tensors are the fork's copy."""
    w = torch.ones(2)
    state = {"model": {"w": w}, "rng": [torch.zeros(1), (1, "a")], "step": 3}
    host = checkpoint.to_host(state)
    assert host["model"]["w"] is w and host["rng"][0] is state["rng"][0] and host["rng"][1] == (1, "a")
    assert host["step"] == 3 and host["model"] is not state["model"] and host["rng"] is not state["rng"]


@background_only
def test_a_background_save_writes_the_bytes_a_save_made_at_once_writes(tmp_path):
    """Bug caught: to_host rebuilt each dict as a plain one, so a background save lost what a state
    dict holds beside its tensors (an OrderedDict's `_metadata`: each module's version, which
    load_state_dict hands to the modules) and wrote other bytes than a save made at once."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": checkpoint.rng_state(),
             "step": 1}
    checkpoint.Saves(background=False).save(tmp_path / "at_once.pt", state)
    saves = checkpoint.Saves()
    saves.save(tmp_path / "background.pt", state, key=1)
    saves.wait()
    assert (tmp_path / "background.pt").read_bytes() == (tmp_path / "at_once.pt").read_bytes()
    loaded = torch.load(tmp_path / "background.pt", weights_only=True)["model"]
    assert loaded._metadata == model.state_dict()._metadata
