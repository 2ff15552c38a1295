"""scripts/sweep.py on toy settings: the stages run, the report names the best candidate,
the table, plot and JSON are written, and a finished run is read back rather than run again."""

import json

import pytest
from conftest import write_stories

from scripts import sweep

TOY = ["--vocab_size", "300", "--num_proc", "1"]  # passed to every run, after the candidate's own


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_stories(folder / "train.txt")
    write_stories(folder / "valid.txt", n=20, seed=1)
    return folder


def test_sweep_screens_confirms_and_reseeds(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "VARIATIONS", {"lr3e-3": ["--lr", "3e-3"]})
    argv = ["--no_compile", "--screen_minutes", "0.01", "--confirm_minutes", "0.02", "--confirm", "1",
            "--only", "tiny-2026-11", "--data", str(corpus / "train.txt"),
            "--val_data", str(corpus / "valid.txt"), "--out_dir", str(tmp_path / "runs"),
            "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "img"), *TOY]
    report = sweep.main(argv)
    assert [r["name"] for r in report["screen"]] == ["tiny-2026-11", "tiny-2026-11+lr3e-3"]
    assert [r["seed"] for r in report["confirm"]] == [1, 2] and report["confirm"][0]["name"] == report["best"]
    for r in report["screen"] + report["confirm"]:
        assert r["bits_per_byte"] > 0 and r["steps"] >= 1 and r["params"] > r["active_params"] > 0
    assert json.loads((tmp_path / "img" / "sweep.json").read_text())["best"] == report["best"]
    assert "Screening" in (tmp_path / "img" / "sweep.md").read_text()
    assert (tmp_path / "img" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    again = sweep.main(argv)  # every run is finished: read back, not rerun
    assert again["screen"] == report["screen"]


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
