"""scripts/memory_model.py: a training step's memory computed on fake tensors, which stands in for
a GPU measurement where there is no GPU (tests/test_gpu_check.py checks it against a measured one
on the CPU). Here it holds issue 11's memory goals at the GPU's shape: scout-128m, bf16, batch 32."""

import json

import pytest
import torch

from scripts import memory_model


def test_scout_checkpointing_and_the_fused_loss_save_memory_at_the_gpu_shape(tmp_path):
    result = memory_model.main(["--batches", "32", "--out", str(tmp_path / "m.json")])
    r = result["batches"]["32"]
    assert r["ratios"]["ckpt_memory_saving"] >= 0.40  # the goal: >= 40% less step memory
    assert r["ratios"]["fused_loss_memory_saving"] > 0.40  # no (B*T, V) fp32 logits
    assert r["step_memory_mb"]["dense"] < r["step_memory_mb"]["moe"]
    assert r["held_mb"]["moe"] == pytest.approx(3 * 4 * 127_834_720 / 2**20)  # fp32 weights + 2 moments
    assert json.loads((tmp_path / "m.json").read_text())["batches"]["32"]["ratios"] == r["ratios"]
    md = (tmp_path / "m.md").read_text()
    assert "| 32 | moe+ckpt |" in md and "activation checkpointing: memory saved" in md


def test_fp32_and_bad_options(tmp_path, capsys):
    r = memory_model.main(["--preset", "debug", "--dtype", "float32", "--batches", "2", "--variants",
                           "moe,moe+ckpt", "--out", str(tmp_path / "m.json")])["batches"]["2"]
    assert 0 < r["step_memory_mb"]["moe+ckpt"] < r["step_memory_mb"]["moe"]
    for bad in (["--variants", "moe,sparse"], ["--variants", "dense"], ["--batches", "32,big"]):
        with pytest.raises(SystemExit):
            memory_model.main(bad + ["--out", str(tmp_path / "x.json")])
        assert "error:" in capsys.readouterr().err


def test_on_cuda_a_weighted_norm_keeps_no_fp32_copy_of_its_output():
    """RMSNorm passes its weight to F.rms_norm (fp32 input): CUDA's fused kernel then keeps x and
    1/rms for backward, where `F.rms_norm(x) * weight` would also keep the normed x, fp32, for the
    weight's gradient (as the CPU's composite ops do): one (B, T, dim) fp32 per weighted norm."""
    from config import PRESETS, ModelArgs, to_dict
    from scripts import bench_model
    args = ModelArgs(**PRESETS["debug"]["ModelArgs"])
    base, batch = to_dict(args), 4
    cpu, cuda = (bench_model.modelled_step_memory("moe", base, batch, torch.bfloat16, cuda)["step"]
                 for cuda in (False, True))
    norms = 2 * args.n_layers + 1  # before attention and the feed-forward in each block, and the last
    assert cpu - cuda == norms * batch * args.max_seq_len * args.dim * 4
