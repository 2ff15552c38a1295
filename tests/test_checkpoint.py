"""checkpoint.py, unit by unit: finding runs and checkpoints, loading them (what is refused, and
how it is named), weights-only saves, and Hugging Face folders out and in (fast: no training;
what a run's own checkpoints hold is in test_faults.py, which trains one)."""

import json
import os

import pytest
import torch

import checkpoint
import config
from config import ModelArgs
from errors import ConfigError


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
    with pytest.raises(checkpoint.CheckpointError, match="last.pt does not exist"):
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
    assert events == ["model.safetensors", "config.json", "sync"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_an_export_without_a_tokenizer_into_a_folder_with_no_export_deletes_nothing(tmp_path):
    """Catches export_hf deleting tokenizer files it did not replace where no export was there to
    replace: a folder's own tokenizer_config.json (no tokenizer.json beside it) was removed."""
    model = small_model()
    out = tmp_path / "hf"
    out.mkdir()
    (out / "tokenizer_config.json").write_text('{"theirs": true}')
    checkpoint.export_hf(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                     "tokenizer_config.json"]
    assert (out / "tokenizer_config.json").read_text() == '{"theirs": true}'


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


def test_a_run_folder_with_only_run_lock_or_train_json_holds_no_checkpoint_yet(tmp_path):
    """Catches find_checkpoint taking a folder that holds run.lock alone (a run stopped before it
    wrote train.json) for "not a run folder": it is a run that saved nothing yet (exit status 2,
    the advice given)."""
    for name in ("run.lock", "train.json"):
        run = tmp_path / name.replace(".", "-")
        run.mkdir()
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
