"""The smaller scripts as a user runs them: scripts/plot_runs.py's output closed early and its
--out checked before any work; scripts/export_hf.py's Ctrl-C; scripts/count_params.py's counts of
any number of layers. Run folders are written by hand
(metrics.jsonl records as train.py writes them), so no model is trained here."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import config
import model
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
    ("a_file/x.png", "--out {tmp}/a_file/x.png: {tmp}/a_file is a file, not a folder; pick another --out"),
    ("a_file/b/x.png", "--out {tmp}/a_file/b/x.png: {tmp}/a_file is a file, not a folder"),
])
def test_plot_runs_refuses_an_out_that_cannot_be_an_image_before_any_work(tmp_path, monkeypatch, capsys,
                                                                          out, message):
    """`--out -` wrote a PNG file named `-`; a folder was found only after the plot was drawn; a file
    in the way of the folder was `[Errno 17] File exists: ...`. Now one line, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    run = fake_run(tmp_path / "r1")
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    out = out if out == "-" else str(tmp_path / out)
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
def test_count_params_counts_as_the_whole_model_built_on_the_meta_device(argv, capsys):
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
    huge = count_params.main(["--preset", "tiny", "--n_layers", "2000000000"])
    assert huge["total"] == one["total"] + 1_999_999_999 * layer["total"]
    assert "1,778,208,000,524,416" in capsys.readouterr().out


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
