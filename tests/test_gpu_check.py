"""scripts/gpu_check.py, the one command for whoever has a GPU, in its quick mode on the CPU: each
part runs and leaves its file, so the check cannot rot between GPU sessions."""

import json

from conftest import write_stories

from scripts import gpu_check


def test_quick_gpu_check_runs_every_part_on_cpu(tmp_path):
    write_stories(tmp_path / "train.txt")
    write_stories(tmp_path / "valid.txt", n=30, seed=1)
    out = gpu_check.main(["--quick", "--device", "cpu", "--compile", "false", "--out", str(tmp_path / "gpu"),
                          "--work", str(tmp_path / "work"), "--data", str(tmp_path / "train.txt"),
                          "--val_data", str(tmp_path / "valid.txt"), "--only", "model,train"])
    model = json.loads((out / "bench_model.json").read_text())
    assert set(model["batches"]["8"]["step_seconds"]) == {"moe", "dense", "moe+ckpt", "moe+plain-loss",
                                                                 "moe+eval"}
    measured = model["batches"]["8"]["peak_step_memory_mb"]
    assert measured.keys() == {"moe", "moe+ckpt", "moe+plain-loss"}
    modelled = model["batches"]["8"]["modelled_step_memory_mb"]  # the memory model, checked
    assert modelled.keys() == measured.keys()
    for v, mb in modelled.items():
        assert abs(mb - measured[v]) <= max(3.0, 0.10 * measured[v]), (v, mb, measured[v])
    assert model["batches"]["8"]["ops_per_step"]["moe"] > 0
    profile = model["batches"]["8"]["profile"]["moe"]  # where the step's time goes (CPU: aten ops)
    assert profile["wall_ms"] > 0 and profile["top"] and profile["top"][0][0].startswith("aten::")
    run = json.loads((out / "train.json").read_text())
    assert run["train_exit"] == 0 and run["steps"] == 6 and run["eval"]["bits_per_byte"] > 0
    assert run["evaluations"] == 2 and run["eval_seconds"] > 0 and run["eval_over_train_speed"] > 0
    assert run["sample"] and not run["sample"].startswith("(sample.py failed")
    assert run["greedy"]["same"] and run["greedy"]["same_characters"] == run["greedy"]["characters"] > 0
    md = (out / "gpu.md").read_text()
    assert "Training step" in md and "modelled (MB)" in md
    assert "steady_tokens_per_s" in md and "Greedy story" in md
    assert "Where a moe step's time goes" in md
    assert "eval_over_train_speed" in md and "evaluation pass tokens/s / training step tokens/s" in md
