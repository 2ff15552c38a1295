"""Parity with Hugging Face transformers: same weights, same logits (fp32, |diff| <= 1e-4).

Random weights at init std 0.1, exported with scripts/export_hf.py, loaded by
Llama4ForCausalLM / Llama4ForConditionalGeneration with no missing or unexpected keys.
"""

import pytest
import torch

pytest.importorskip("transformers")
from transformers import Llama4ForCausalLM, Llama4ForConditionalGeneration  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from config import ModelArgs  # noqa: E402
from model import Llama4  # noqa: E402
from scripts.export_hf import export, load_hf  # noqa: E402

TINY = dict(vocab_size=97, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, expert_dim=48, mlp_dim=80,
            n_experts=4, max_seq_len=64, attn_chunk_size=8, attn_floor_scale=4, init_std=0.1)

CASES = {
    "top1-moe-every-layer": {},
    "top2": dict(top_k=2),
    "moe-every-other-layer": dict(moe_every=2),
    "no-qk-norm": dict(qk_norm=False),
    "llama3-rope": dict(rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
                        rope_high_freq_factor=4.0, rope_original_max_seq_len=16, rope_theta=100.0),
    "no-temperature-tuning-gqa-1": dict(attn_temperature_tuning=False, n_kv_heads=1),
}


def build(**overrides):
    torch.manual_seed(0)
    return Llama4(ModelArgs(**{**TINY, **overrides})).eval()


def load_hf_model(cls, folder):
    hf_logging.set_verbosity_error()
    model, info = cls.from_pretrained(folder, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_text_logits_match_transformers(case, tmp_path):
    ours = build(**CASES[case])
    export(ours, tmp_path)
    theirs = load_hf_model(Llama4ForCausalLM, tmp_path)
    torch.manual_seed(1)
    tokens = torch.randint(0, 97, (3, 37))  # batch > 1; 37 crosses four chunk boundaries of 8
    with torch.no_grad():
        a = ours(tokens).logits
        b = theirs(tokens).logits
    assert (a - b).abs().max().item() <= 1e-4


def test_text_logits_match_at_full_context_through_the_folded_chunk_path(tmp_path):
    ours = build()
    export(ours, tmp_path)
    theirs = load_hf_model(Llama4ForCausalLM, tmp_path)
    tokens = torch.randint(0, 97, (2, 64))  # T % chunk == 0: the chunks-folded-into-batch path
    with torch.no_grad():
        assert (ours(tokens).logits - theirs(tokens).logits).abs().max().item() <= 1e-4


def test_vision_logits_match_transformers_with_two_images(tmp_path):
    ours = build(vision=True, vision_dim=32, vision_layers=2, vision_heads=2, vision_mlp_dim=128,
                 image_size=56, patch_size=14, projector_input_dim=40, projector_output_dim=40)
    a = ours.args
    export(ours, tmp_path)
    theirs = load_hf_model(Llama4ForConditionalGeneration, tmp_path)
    n = a.image_tokens  # 4 features per 56px image
    text = [11, 12, a.image_start_id, a.image_id] + [a.patch_id] * n + [a.image_end_id, 13]
    text += [14, a.image_start_id, a.image_id] + [a.patch_id] * n + [a.image_end_id, 15, 16]
    tokens = torch.tensor([text])
    torch.manual_seed(2)
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        x = ours(tokens, images=images).logits
        y = theirs(input_ids=tokens, pixel_values=images).logits
        no_images = theirs(input_ids=tokens).logits
    assert (x - y).abs().max().item() <= 1e-4
    assert (x - no_images).abs().max().item() > 1e-3  # the images did change the logits


def test_import_gives_back_the_same_model(tmp_path):
    ours = build(top_k=2)
    export(ours, tmp_path)
    back = load_hf(tmp_path)
    tokens = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, back(tokens).logits)
    assert back.args.top_k == 2 and back.args.n_experts == 4
