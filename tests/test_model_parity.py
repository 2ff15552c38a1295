"""Parity with Hugging Face transformers: same weights, same logits (fp32, |diff| <= 1e-4).

Random weights (the debug preset: init std 0.1), every norm weight and every bias perturbed so
that a norm or bias applied wrongly (or not at all) shows, exported with checkpoint.export_hf and
loaded by Llama4ForCausalLM / Llama4ForConditionalGeneration with no missing or unexpected keys.
"""

import dataclasses
import json

import pytest
import torch
from conftest import DEBUG, debug_args

pytest.importorskip("transformers")
from transformers import Llama4ForCausalLM, Llama4ForConditionalGeneration  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import checkpoint  # noqa: E402
from config import SPECIAL_TOKENS  # noqa: E402
from model import Llama4  # noqa: E402

V = DEBUG.vocab_size
VISION = dict(vision=True, vision_dim=32, vision_layers=2, vision_heads=2, vision_mlp_dim=128, image_size=56,
              patch_size=14, projector_input_dim=40, projector_output_dim=40)
CASES = {
    "top1-moe-every-layer": {},
    "top2": dict(top_k=2),
    "moe-every-other-layer": dict(moe_every=2),
    "no-qk-norm": dict(qk_norm=False),
    "llama3-rope": dict(rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
                        rope_high_freq_factor=4.0, rope_original_max_seq_len=16, rope_theta=100.0),
    "no-temperature-tuning-gqa-1": dict(attn_temperature_tuning=False, n_kv_heads=1),
    # Scout's released scaling: low_freq_factor == high_freq_factor, no band to interpolate
    "llama3-rope-as-scout": dict(rope_scaling="llama3", rope_factor=16.0, rope_low_freq_factor=1.0,
                                 rope_high_freq_factor=1.0, rope_original_max_seq_len=16, rope_theta=100.0),
    "dense-nope-every-2": dict(moe_every=5, nope_every=2),  # no MoE layer; NoPE on layers 1 and 3
    "one-chunk-mha-every-expert": dict(attn_chunk_size=64, n_kv_heads=4, top_k=4),
    # every layer NoPE: full attention, temperature tuned from the first position on
    "every-layer-nope-mha-floor-1": dict(nope_every=1, n_kv_heads=4, attn_floor_scale=1, attn_scale=0.5),
    "no-nope-layer-chunk-3": dict(nope_every=5, attn_chunk_size=3),  # 37 = 12 chunks of 3 and 1 token
    "chunk-1-dense-every-third": dict(attn_chunk_size=1, moe_every=3),  # each token sees itself alone
    "three-heads-of-22": dict(dim=66, n_heads=3, n_kv_heads=1, expert_dim=30, mlp_dim=50),  # 11 RoPE pairs
}


@torch.no_grad()
def perturb_norms_and_biases(model):
    """Norm weights away from 1 and biases away from 0 (the init leaves them at exactly 1 and 0)."""
    g = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():
        if name.endswith(".bias") or "norm" in name:
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def build(**overrides):
    torch.manual_seed(0)
    return perturb_norms_and_biases(Llama4(debug_args(**overrides))).eval()


def load_hf_model(cls, folder):
    hf_logging.set_verbosity_error()
    model, info = cls.from_pretrained(folder, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    return model.eval()


def test_every_norm_weight_and_bias_is_perturbed():
    model = build(**VISION)
    touched = [n for n, _ in model.named_parameters() if n.endswith(".bias") or "norm" in n]
    assert any(n.startswith("layers.") and n.endswith("input_layernorm.weight") for n in touched)
    assert "norm.weight" in touched and "vision_model.layernorm_pre.bias" in touched
    assert any(n.endswith("self_attn.q_proj.bias") for n in touched)
    for name, p in model.named_parameters():
        if name in touched:
            baseline = 0.0 if name.endswith(".bias") else 1.0
            assert (p - baseline).abs().max() > 0.05, name


@pytest.mark.parametrize("case", list(CASES))
def test_text_logits_match_transformers(case, tmp_path):
    ours = build(**CASES[case])
    checkpoint.export_hf(ours, tmp_path)
    theirs = load_hf_model(Llama4ForCausalLM, tmp_path)
    torch.manual_seed(1)
    tokens = torch.randint(0, V, (3, 37))  # batch > 1; 37 crosses four chunk boundaries of 8
    with torch.no_grad():
        a = ours(tokens).logits
        b = theirs(tokens).logits
    assert (a - b).abs().max().item() <= 1e-4


def test_text_logits_match_at_every_length_about_a_chunk_boundary(tmp_path):
    """A guard (it found no bug): one token, a chunk less one, one chunk and one past it (chunks of
    8) are the edges of the folded-chunk path and of its last, partial chunk."""
    ours = build()
    checkpoint.export_hf(ours, tmp_path)
    theirs = load_hf_model(Llama4ForCausalLM, tmp_path)
    for T in [1, 7, 8, 9]:
        tokens = torch.randint(0, V, (2, T))
        with torch.no_grad():
            assert (ours(tokens).logits - theirs(tokens).logits).abs().max().item() <= 1e-4, T


@pytest.mark.parametrize("case", ["top1-moe-every-layer", "top2-moe-every-other", "gqa-1-chunk-3"])
def test_training_gradients_match_transformers(case, tmp_path):
    """A guard (it found no bug): training's own paths (q, k and v from one matmul, the sparse expert
    dispatch through grouped_mm, the fused loss) give transformers' autograd gradients for every
    weight. Router noise off (a training extra HF lacks); no <|pad|> in the tokens: HF's embedding
    has padding_idx, so its pad row never gets a gradient (ours does, but no training text holds
    <|pad|>)."""
    overrides = {"top1-moe-every-layer": {}, "top2-moe-every-other": dict(top_k=2, moe_every=2),
                 "gqa-1-chunk-3": dict(n_kv_heads=1, attn_chunk_size=3, nope_every=2)}[case]
    ours = build(router_noise=False, **overrides).train()
    checkpoint.export_hf(ours, tmp_path)
    theirs = load_hf_model(Llama4ForCausalLM, tmp_path).train()
    x = torch.randint(8, V, (2, 41))
    targets = x[:, 1:].clone()
    targets[:, -1] = -1  # HF shifts the labels itself: its last position has no target
    ours(x[:, :-1], targets=targets).lm_loss.backward()
    theirs(input_ids=x[:, :-1], labels=x[:, :-1]).loss.backward()
    named = dict(ours.named_parameters())
    for hf_name, p in theirs.named_parameters():
        g, want = named[hf_name.removeprefix("model.")].grad, p.grad
        assert (g - want).abs().max() <= 1e-5 * want.abs().max(), hf_name


def test_text_logits_match_at_full_context_through_the_folded_chunk_path(tmp_path):
    ours = build()
    checkpoint.export_hf(ours, tmp_path)
    theirs = load_hf_model(Llama4ForCausalLM, tmp_path)
    tokens = torch.randint(0, V, (2, 64))  # T % chunk == 0: the chunks-folded-into-batch path
    with torch.no_grad():
        assert (ours(tokens).logits - theirs(tokens).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("case", ["shuffle-1/2", "shuffle-1/3-eight-heads"])
def test_vision_logits_match_transformers_with_three_images_in_two_rows(case, tmp_path):
    """Two images in one row and one in the other: features fill the <|patch|> tokens in order,
    across rows. Also a 6x6 patch grid shuffled by 1/3 (9 patches a token) and 4-wide vision heads."""
    overrides = {"shuffle-1/2": VISION, "shuffle-1/3-eight-heads": dict(
        VISION, image_size=84, pixel_shuffle_ratio=1 / 3, vision_mlp_dim=32 * 9, vision_heads=8)}
    ours = build(**overrides[case])
    a = ours.args
    checkpoint.export_hf(ours, tmp_path)
    theirs = load_hf_model(Llama4ForConditionalGeneration, tmp_path)
    n = a.image_tokens  # 4 features per image: 2x2 blocks of a 4x4 grid, 3x3 ones of a 6x6 grid
    image = [a.image_start_id, a.image_id] + [a.patch_id] * n + [a.image_end_id]
    rows = [[11, 12, *image, 13, 14, *image, 15, 16], [17, *image, 18, 19]]
    rows[1] += [20] * (len(rows[0]) - len(rows[1]))
    tokens = torch.tensor(rows)
    torch.manual_seed(2)
    images = torch.randn(3, 3, a.image_size, a.image_size)
    with torch.no_grad():
        x = ours(tokens, images=images).logits
        y = theirs(input_ids=tokens, pixel_values=images).logits
        no_images = theirs(input_ids=tokens).logits
    assert (x - y).abs().max().item() <= 1e-4
    assert (x - no_images).abs().max().item() > 1e-3  # the images did change the logits


def test_import_gives_back_the_same_model(tmp_path):
    """Export then import: every weight and buffer bit for bit, the same settings, the same logits
    (to rounding: an imported weight can lie at another memory alignment, and the CPU's matmul
    kernels round by alignment, about 1e-7 in some shapes)."""
    ours = build(top_k=2)
    checkpoint.export_hf(ours, tmp_path)
    back = checkpoint.load_hf(tmp_path)
    theirs, mine = back.state_dict(), ours.state_dict()  # (all but the router noise, a training extra)
    assert theirs.keys() <= mine.keys() and all("router_noise" in k for k in mine.keys() - theirs.keys())
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs)
    tokens = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(tokens).logits, ours(tokens).logits, rtol=0, atol=1e-5)
    assert dataclasses.replace(back.args, router_noise=ours.args.router_noise) == ours.args


def save_theirs(folder, **overrides):
    """A Llama 4 folder this project did not write: Meta-style special ids (eos 2, no pad), saved by
    transformers itself in shards, as released folders are. Returns the transformers model."""
    from transformers import Llama4TextConfig
    settings = dict(vocab_size=V, hidden_size=64, intermediate_size=32, intermediate_size_mlp=64,
                    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    num_local_experts=4, attention_chunk_size=8, floor_scale=4, max_position_embeddings=64,
                    bos_token_id=1, eos_token_id=2, pad_token_id=None)
    cfg = Llama4TextConfig(**{**settings, **overrides})
    torch.manual_seed(4)
    theirs = Llama4ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.1)
    theirs.save_pretrained(folder, max_shard_size="100KB")
    return theirs


def test_import_of_a_folder_written_by_transformers(tmp_path):
    """A Llama 4 folder this project did not write: it imports, with the folder's ids, and gives
    transformers' logits."""
    theirs = save_theirs(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 2
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert not (tmp_path / "model.safetensors").exists()
    ckpt = checkpoint.import_hf(tmp_path, tmp_path / "imported" / "last.pt")
    ours, _ = checkpoint.load_model(ckpt)
    assert ours.args.eos_id == 2 and len({getattr(ours.args, n) for n in SPECIAL_TOKENS}) == 8
    tokens = torch.randint(0, V, (2, 30))
    with torch.no_grad():
        assert (ours(tokens).logits - theirs(tokens).logits).abs().max().item() <= 1e-4



def test_import_of_a_folder_with_tied_embeddings_takes_the_embedding_as_its_output_layer(tmp_path):
    """Bug caught: a Llama4ForCausalLM folder saved with tie_word_embeddings true (save_pretrained
    writes no lm_head.weight; transformers loads the embedding as the output layer) was refused as
    "its weights do not fit its settings (Missing key(s) ...: "lm_head.weight"); export the folder
    again with scripts/export_hf.py"."""
    theirs = save_theirs(tmp_path, tie_word_embeddings=True)
    from safetensors import safe_open
    names = set()
    for shard in tmp_path.glob("model-*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            names |= set(f.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    ours = checkpoint.load_hf(tmp_path)
    tokens = torch.randint(0, V, (2, 30))
    with torch.no_grad():
        assert (ours(tokens).logits - theirs(tokens).logits).abs().max().item() <= 1e-4


def transformers_default(name: str):
    """transformers' own default for a ModelArgs `hf` name (vision.*: Llama4VisionConfig's)."""
    from transformers import Llama4TextConfig, Llama4VisionConfig
    value = Llama4VisionConfig() if name.startswith("vision.") else Llama4TextConfig()
    for key in name.removeprefix("vision.").split("."):
        value = value[key] if isinstance(value, dict) else getattr(value, key)
    return value


def test_hf_defaults_are_transformers_own_for_every_setting_read():
    """Bug caught: HF_DEFAULTS held the attention chunk and floor_scale alone, and every other key a
    config.json left out took this project's default (max_position_embeddings 256 for 131072, 4
    vision heads for 16, 8 heads for 40). Left out: the special-token ids (a free one), rope_type
    (hf_rope: default) and the llama3 factors (transformers has none: refused when left out)."""
    import config
    names = {f.metadata["hf"] for f in config.dataclasses.fields(config.ModelArgs) if f.metadata["hf"]}
    special = {config.ModelArgs.__dataclass_fields__[n].metadata["hf"] for n in SPECIAL_TOKENS} - {None}
    rope = {"rope_parameters." + k for k in ["rope_type", "original_max_position_embeddings",
                                              *checkpoint.LLAMA3_KEYS]}
    assert set(checkpoint.HF_DEFAULTS) == names - special - rope | {"head_dim"}
    for name, default in checkpoint.HF_DEFAULTS.items():
        assert default == transformers_default(name), name


def drop(folder, *keys, value=...):
    """config.json without `keys` (dotted: nested), or with them set to `value`. Returns the config."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key in keys:
        *outer, last = key.split(".")
        section = cfg
        for k in outer:
            section = section[k]
        if value is ...:
            del section[last]
        else:
            section[last] = value
    path.write_text(json.dumps(cfg))
    return cfg


LEFT_OUT = {  # keys left out -> (the folder's other settings, how many tokens, transformers' value)
    # past 64 tokens our 64 was another model's
    ("attention_chunk_size", "floor_scale"): (dict(max_position_embeddings=256), 100, 8192),
    # our 256 refused a longer prompt
    ("max_position_embeddings",): ({}, 300, 131072),
    # our 8 heads of 10 were refused for the head_dim 2 the folder says
    ("num_attention_heads",): (dict(hidden_size=80, num_attention_heads=40, num_key_value_heads=8,
                                    head_dim=2), 30, 40),
}


@pytest.mark.parametrize("keys", list(LEFT_OUT), ids="+".join)
def test_a_config_that_leaves_out_a_key_imports_as_transformers_loads_it(tmp_path, keys):
    """Bug caught: a config.json without these keys (written by hand) took this project's defaults:
    logits of another model, with no error, or a refusal, where transformers loads the folder."""
    settings, n, value = LEFT_OUT[keys]
    save_theirs(tmp_path, **settings)
    drop(tmp_path, *keys)
    theirs = load_hf_model(Llama4ForCausalLM, tmp_path)
    assert getattr(theirs.config, keys[0]) == value
    tokens = torch.randint(0, V, (1, n))
    with torch.no_grad():
        assert (checkpoint.load_hf(tmp_path)(tokens).logits - theirs(tokens).logits).abs().max() <= 1e-4


def test_a_llama3_rope_without_its_original_context_takes_the_models_as_transformers_does(tmp_path):
    """Bug caught: rope_parameters without original_max_position_embeddings took ours (8192) where
    transformers takes max_position_embeddings (64): RoPE frequencies of another model, silently."""
    checkpoint.export_hf(build(**CASES["llama3-rope"]), tmp_path)
    drop(tmp_path, "rope_parameters.original_max_position_embeddings")
    theirs = load_hf_model(Llama4ForCausalLM, tmp_path)
    ours = checkpoint.load_hf(tmp_path)
    assert ours.args.rope_original_max_seq_len == theirs.config.max_position_embeddings == 64
    tokens = torch.randint(0, V, (2, 37))
    with torch.no_grad():
        assert (ours(tokens).logits - theirs(tokens).logits).abs().max() <= 1e-4
    drop(tmp_path, "rope_parameters.factor")
    refused = "rope_type llama3 needs rope_parameters.factor, and config.json gives none; transformers"
    with pytest.raises(checkpoint.CheckpointError, match=refused):
        checkpoint.load_hf(tmp_path)


def test_a_config_that_leaves_out_the_vision_heads_imports_transformers_16(tmp_path):
    """Bug caught: a vision_config without num_attention_heads took our 4 where transformers takes
    16: the same weights' shapes, other logits for an image, no error."""
    ours = build(**{**VISION, "vision_dim": 64, "vision_heads": 16, "vision_mlp_dim": 256})
    checkpoint.export_hf(ours, tmp_path)
    drop(tmp_path, "vision_config.num_attention_heads")
    theirs = load_hf_model(Llama4ForConditionalGeneration, tmp_path)
    back = checkpoint.load_hf(tmp_path)
    assert back.args.vision_heads == theirs.config.vision_config.num_attention_heads == 16
    a = ours.args
    image = [a.image_start_id, a.image_id] + [a.patch_id] * a.image_tokens + [a.image_end_id]
    tokens = torch.tensor([[11, *image, 12]])
    images = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        x = back(tokens, images=images).logits
        assert (x - theirs(input_ids=tokens, pixel_values=images).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("keys, message", [
    (["head_dim"], "head_dim 128 differs from hidden_size / num_attention_heads = 16, with transformers' "
                   "default for the head_dim config.json leaves out; only that head width is supported"),
    (["num_attention_heads", "head_dim"],
     "head_dim 128 differs from hidden_size / num_attention_heads = 64 / 40, with transformers' defaults for "
     "the num_attention_heads and head_dim config.json leaves out; only that head width is supported"),
])
def test_a_config_that_leaves_out_the_head_width_is_refused_as_transformers_refuses_it(tmp_path, keys,
                                                                                        message):
    """Bug caught: a config.json without head_dim (and num_attention_heads) imported with 16-wide
    heads (of 8 heads: 8 wide, other logits, no error), where transformers builds 128-wide ones that the
    weights do not fit, and refuses the folder."""
    checkpoint.export_hf(build(), tmp_path)
    drop(tmp_path, *keys)
    hf_logging.set_verbosity_error()
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        Llama4ForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_hf(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'config.json'} describes no model this project builds ({message}); "
                            f"{checkpoint.HF_FIX}")


@pytest.mark.parametrize("key", ["attention_chunk_size", "max_position_embeddings", "num_attention_heads",
                                 "head_dim", "rope_parameters.rope_theta",
                                 "vision_config.num_attention_heads"])
def test_a_null_transformers_cannot_run_is_refused_in_one_line(tmp_path, key):
    """Bug caught: a key set to null took this project's default (attention_chunk_size 64, 4 vision
    heads ...) where transformers refuses the config or, for a null attention_chunk_size, its forward
    fails: a model transformers cannot run imported as another."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import Llama4Config
    checkpoint.export_hf(build(**VISION), tmp_path)
    path = key if key.startswith("vision") else f"text_config.{key}"
    cfg = drop(tmp_path, path, value=None)
    hf_logging.set_verbosity_error()
    with pytest.raises((StrictDataclassError, ValueError, TypeError)):  # (its config refuses it, or runs)
        theirs = Llama4ForConditionalGeneration(Llama4Config(**cfg)).eval()
        theirs(input_ids=torch.tensor([[11, 12]]))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_hf(tmp_path)
    default = checkpoint.HF_DEFAULTS[key.replace("vision_config.", "vision.")]
    assert str(e.value) == (f"{tmp_path / 'config.json'} describes no model this project builds ({path} is "
                            "null, which transformers cannot run either; give a value, or leave it out for "
                            f"transformers' default {default}); {checkpoint.HF_FIX}")


def test_a_folder_of_another_model_type_is_named_so_not_a_misfit_of_llama_4_weights(tmp_path):
    """Bug caught: a Llama 3 folder (model_type "llama") was read as a Llama 4 one with this
    project's defaults for what it does not say (16 experts), then refused as "its weights do not fit
    its settings (Missing key(s) ...router.weight ...); export the folder again with
    scripts/export_hf.py", advice that does not apply to a folder of another model."""
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_hf(tmp_path)
    assert str(e.value) == (f"{tmp_path / 'config.json'} is not a Llama 4 model's (model_type 'llama', not "
                            "llama4_text, or llama4 with the vision stub); pass a Llama 4 folder")


def test_import_with_a_tokenizer_of_another_kind_says_so_and_sampling_names_the_file(tmp_path, capsys):
    """Bug caught: an HF folder whose tokenizer.json lacks this project's special tokens (its own,
    as Meta's) imported silently; sample.py, train.py --init_from and the export then refused it with
    "the tokenizer has no <|endoftext|> token; leave --tokenizer empty to train one", naming no file
    and giving advice none of them takes. The import now warns (one line) and keeps the weights; each
    refusal names the file and gives its caller's advice."""
    import tokenizers

    import errors
    import sample
    from scripts import export_hf
    from tokenizer import Tokenizer
    save_theirs(tmp_path / "hf")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.add_special_tokens(["<|begin_of_text|>", "<|x|>", "<|eot|>"])
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    capsys.readouterr()  # (transformers' progress bar)
    export_hf.main(["--import", str(tmp_path / "hf"), str(tmp_path / "ck")])
    out, err = capsys.readouterr()
    beside = tmp_path / "ck" / "tokenizer.json"
    assert out == f"imported {tmp_path / 'hf'} -> {tmp_path / 'ck' / 'last.pt'}\n"
    assert err == (f"export_hf.py: warning: {beside} has no <|endoftext|> token (not a tokenizer this "
                   "project writes); the weights are imported, but sample.py, train.py --eval_only and "
                   "--init_from take only this project's tokenizers\n")
    assert checkpoint.load_model(tmp_path / "ck" / "last.pt")[0].args.eos_id == 2
    refused = rf"^{beside} has no <\|endoftext\|> token .*; put back the run"
    with pytest.raises(sample.SampleError, match=refused):
        sample.load(sample.SampleArgs(ckpt=str(tmp_path / "ck")), "cpu")
    with pytest.raises(errors.DataError, match="; pass a tokenizer.json written by this project, or leave "
                                               "--tokenizer empty to train one$"):
        Tokenizer.load(beside)  # (--tokenizer's advice by default)


def test_import_of_a_folder_in_the_pre_v5_rope_layout(tmp_path):
    """Released Llama 4 folders keep RoPE under `rope_scaling` beside a top-level `rope_theta`
    (transformers < 5): the import reads them as transformers does, not as the defaults."""
    ours = build(**CASES["llama3-rope"])
    checkpoint.export_hf(ours, tmp_path)
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"], cfg["rope_scaling"] = rope.pop("rope_theta"), rope
    cfg["attn_temperature_tuning"] = 4  # as released folders have it (transformers 4 tested its truth)
    path.write_text(json.dumps(cfg))
    back = checkpoint.load_hf(tmp_path)
    a = back.args
    assert (a.rope_scaling, a.rope_theta, a.rope_original_max_seq_len) == ("llama3", 100.0, 16)
    assert a.attn_temperature_tuning is True
    path.write_text(json.dumps({**cfg, "attn_temperature_tuning": True}))  # (transformers 5: a bool only)
    theirs = load_hf_model(Llama4ForCausalLM, tmp_path)
    tokens = torch.randint(0, V, (2, 37))
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, back(tokens).logits)
        assert (back(tokens).logits - theirs(tokens).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("key, value, message", [
    ("no_rope_layers", [1, 0, 1, 1], "no_rope_layers [1, 0, 1, 1] is not every n-th layer ([1, 1, 1, 0]"),
    ("moe_layers", [0, 2], "moe_layers [0, 2] is not every n-th layer ([0, 1, 2, 3]"),
    ("moe_layers", [], "moe_layers [] is not every n-th layer ([0, 1, 2, 3]"),  # (transformers: all dense)
    ("head_dim", 32, "head_dim 32 differs from hidden_size / num_attention_heads = 16"),
    ("attention_bias", True, "attention_bias true is not supported"),
    # (was a StopIteration traceback: no free id for the special tokens the config does not name)
    ("vocab_size", 4, "vocab_size 4 is too small: no free id is left for <|image|>"),
])
def test_import_refuses_a_layout_it_cannot_build(tmp_path, key, value, message):
    """Explicit layer lists off the intervals (transformers follows them) and other head widths
    are refused, never imported as another model."""
    checkpoint.export_hf(build(), tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(checkpoint.CheckpointError, match="describes no model this project builds") as e:
        checkpoint.load_hf(tmp_path)
    assert message in str(e.value)


@pytest.mark.parametrize("key, value, message", [
    ("layer_types", ["full_attention"] * 4, "layer_types ['full_attention', 'full_attention', "
                                            "'full_attention', 'full_attention'] is not every n-th layer"),
    ("hidden_act", "gelu", "hidden_act 'gelu' is not supported (Llama 4's experts use silu)"),
])
def test_import_refuses_what_transformers_would_build_otherwise(tmp_path, key, value, message):
    """Bug caught: a config.json whose layer_types (transformers writes them on every save) attend
    otherwise than the NoPE interval says, here every layer "full_attention", or whose hidden_act
    is not silu, imported silently as this project's model: for those layer_types, logits 4.3 away
    from transformers' past the first chunk."""
    from transformers import Llama4TextConfig
    checkpoint.export_hf(build(), tmp_path)
    path = tmp_path / "config.json"
    cfg = {**json.loads(path.read_text()), key: value}
    path.write_text(json.dumps(cfg))
    assert getattr(Llama4TextConfig(**cfg), key) == value  # (what transformers builds)
    with pytest.raises(checkpoint.CheckpointError, match="describes no model this project builds") as e:
        checkpoint.load_hf(tmp_path)
    assert message in str(e.value)


def test_import_reads_the_vision_rope_base_of_older_folders(tmp_path):
    """Before transformers 5 the vision config kept its RoPE base as a top-level `rope_theta`."""
    checkpoint.export_hf(build(**VISION, vision_rope_theta=20000.0), tmp_path)
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    cfg["vision_config"]["rope_theta"] = cfg["vision_config"].pop("rope_parameters")["rope_theta"]
    path.write_text(json.dumps(cfg))
    assert checkpoint.load_hf(tmp_path).args.vision_rope_theta == 20000.0


def test_import_of_our_export_saved_again_by_transformers(tmp_path):
    """Load an export in transformers and save_pretrained it (as after fine-tuning there): the
    tokenizer.json it writes gains a post-processor that adds nothing, and config.json keeps our
    tokenizer_sha256. It imports (encode never runs a post-processor), with the same model."""
    from conftest import WORDS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenizer import Tokenizer
    tok = Tokenizer.train([" ".join(WORDS)] * 50, V)
    tok.save(tmp_path / "tokenizer.json")
    ours = build()
    checkpoint.export_hf(ours, tmp_path / "hf", tmp_path / "tokenizer.json")
    AutoTokenizer.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "again")
    load_hf_model(AutoModelForCausalLM, tmp_path / "hf").save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "tokenizer.json").read_text())["post_processor"] is not None
    ckpt = checkpoint.import_hf(tmp_path / "again", tmp_path / "back" / "last.pt")
    back, saved = checkpoint.load_model(ckpt)
    copied = Tokenizer.load(tmp_path / "back" / "tokenizer.json")
    assert saved["tokenizer"]["sha256"] == tok.hash == copied.hash
    # a checkpoint saved before recorded the hash with the post-processor: it is still that tokenizer
    assert copied.legacy_hash not in (None, tok.hash) and tok.legacy_hash is None
    legacy = {**saved, "tokenizer": {"sha256": copied.legacy_hash}}
    checkpoint.check_tokenizer(copied, "t.json", legacy, "old.pt")
    with pytest.raises(checkpoint.CheckpointError, match="is not the tokenizer"):
        checkpoint.check_tokenizer(copied, "t.json", {**saved, "tokenizer": {"sha256": "0" * 64}}, "old.pt")
    tokens = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, back(tokens).logits)


def test_an_exported_tokenizer_decodes_in_transformers_as_ours_does(tmp_path):
    """Catches tokenizer_config.json turning on transformers' clean-up of spaces (" ." read back as
    "."): transformers 5 ignores it for BPE, with a warning, but transformers 4 would change the text."""
    from conftest import WORDS
    from transformers import AutoTokenizer

    from tokenizer import Tokenizer
    tok = Tokenizer.train([" ".join(WORDS) + " . !"] * 50, V)
    tok.save(tmp_path / "tokenizer.json")
    checkpoint.export_hf(build(), tmp_path / "hf", tmp_path / "tokenizer.json")
    text = "the cat sat . mom said be kind !"
    ids = tok.encode(text)
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").decode(ids) == tok.decode(ids) == text
    settings = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert settings["clean_up_tokenization_spaces"] is False


def test_transformers_generate_on_an_export_never_draws_what_sample_py_never_draws(tmp_path):
    """Bug caught: an export had no generation_config.json, so transformers' generate drew the special
    tokens sample.py never draws (ModelArgs.never_drawn: no training target holds them), as
    <|image_start|> where sample.py ends the story. Here the output head reads one channel into
    <|image_start|> or <|image_end|> alone, every other logit 0: masked, the top is <|endoftext|>,
    which stops both."""
    import sample
    torch.manual_seed(0)
    model = Llama4(debug_args()).eval()
    with torch.no_grad():
        model.norm.weight.zero_()[0] = 1.0
        model.lm_head.weight.zero_()[[2, 3], 0] = torch.tensor([5.0, -5.0])
    checkpoint.export_hf(model, tmp_path)
    hf = load_hf_model(Llama4ForCausalLM, tmp_path)
    prompts = [[0, 11, 12, 13, 14], [0, 30, 31, 32, 33]]
    out = hf.generate(torch.tensor(prompts), attention_mask=torch.ones(2, 5, dtype=torch.long),
                      max_new_tokens=4, do_sample=False)
    assert out[:, 5:].tolist() == [[0], [0]]  # (stopped there: <|endoftext|> ends a story)
    assert sample.generate(model, prompts, 4, greedy=True) == [[], []]  # (ours leaves the eos out)
    assert hf.generation_config.suppress_tokens == model.args.never_drawn == list(range(1, 8))


def test_transformers_generate_on_an_export_of_one_token_chunks_tells_sample_pys_story(tmp_path):
    """A model whose RoPE layers attend within chunks of 1 token: transformers' generate on its export
    gives sample.py's greedy tokens (its generation_config.json asks for the static cache). Bug caught
    (a parity fuzz): transformers' default cache keeps every key of such a layer where it should keep
    none, so generate told another story from the first decoded token; its full forward was right.
    If the last assertion fails, transformers has mended its cache: drop cache_implementation."""
    import sample
    torch.manual_seed(0)
    model = Llama4(debug_args(attn_chunk_size=1, router_noise=False, init_std=0.1)).eval()
    checkpoint.export_hf(model, tmp_path)
    hf = load_hf_model(Llama4ForCausalLM, tmp_path)
    prompt, kw = [9, 10, 11, 12], dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None)
    ours = sample.generate(model, [prompt], 8, greedy=True, stop_at_eos=False)[0]
    theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long), **kw)
    assert theirs[0, 4:].tolist() == ours
    assert checkpoint.hf_generation_config(debug_args(attn_chunk_size=2)).get("cache_implementation") is None
    assert checkpoint.hf_generation_config(debug_args(attn_chunk_size=1, nope_every=1)).get(
        "cache_implementation") is None  # (every layer NoPE: no chunks)
    dynamic = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                          cache_implementation="dynamic", **kw)
    assert dynamic[0, 4:].tolist() != ours  # (transformers' default cache still wrong here: see above)


def test_an_exported_tokenizer_reads_a_typed_special_token_as_text_as_sample_py_does(tmp_path):
    """Bug caught: transformers' tokenizer("the cat <|endoftext|> sat") on an export gave id 0 where
    the text "<|endoftext|>" was typed, when training and sample.py --prompt read it as plain text:
    the same prompt, greedy, told another story in transformers' generate than in sample.py."""
    from conftest import WORDS
    from transformers import AutoTokenizer

    import sample
    from tokenizer import Tokenizer
    tok = Tokenizer.train([" ".join(WORDS)] * 50, V)
    tok.save(tmp_path / "tokenizer.json")
    checkpoint.export_hf(build(), tmp_path / "hf", tmp_path / "tokenizer.json")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "the cat <|endoftext|> sat <|pad|>"
    ours = sample.prompts_from(sample.SampleArgs(prompt=[text]), tok, debug_args(), print)[0]
    assert ours == [0, *tok.encode_docs([text])[0]] and ours.count(0) == 1
    assert hf_tok(text)["input_ids"] == ours
    assert hf_tok.decode(ours, skip_special_tokens=True) == text  # (the typed text is kept)
    assert hf_tok(["a", text], padding=True)["input_ids"][0][0] == DEBUG.pad_id  # (padding: still <|pad|>)


def shifted_tokenizer(path) -> dict:
    """A tokenizer.json at path whose special tokens are at 1..8 (an <unk> at 0), not this project's
    0..7; its special ids (name -> id)."""
    import tokenizers
    from conftest import WORDS

    from tokenizer import Tokenizer
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    bpe.train_from_iterator([" ".join(WORDS)] * 50, tokenizers.trainers.BpeTrainer(
        vocab_size=V, special_tokens=["<unk>", *SPECIAL_TOKENS.values()], show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    tok = Tokenizer(bpe)
    tok.save(path)
    ids = tok.special_ids()
    assert ids["eos_id"] == 1 and ids["tile_y_id"] == 8
    return ids


def test_an_export_with_special_tokens_at_other_ids_imports_and_samples(tmp_path):
    """Bug caught: a run trained with a --tokenizer whose special tokens are not at 0..7 (train.py
    takes it with the --eos_id ... it names) exported, but config.json names no patch or tile token
    (nor, for a text model, the image ones), so --import and sample.py --hf gave those the first free
    ids and refused the folder's own tokenizer: "has <|image_start|> at id 3 but the model of ...
    has 0 there ...; export the folder again". They take the folder's tokenizer's ids now."""
    import sample
    ids = shifted_tokenizer(tmp_path / "tokenizer.json")
    ours = build(**ids)
    checkpoint.export_hf(ours, tmp_path / "hf", tmp_path / "tokenizer.json")
    model, _, _ = sample.load(sample.SampleArgs(hf=str(tmp_path / "hf")), "cpu")
    assert {name: getattr(model.args, name) for name in SPECIAL_TOKENS} == ids
    back, _ = checkpoint.load_model(checkpoint.import_hf(tmp_path / "hf", tmp_path / "back"))
    assert {name: getattr(back.args, name) for name in SPECIAL_TOKENS} == ids
    sample.load(sample.SampleArgs(ckpt=str(tmp_path / "back")), "cpu")  # (with the tokenizer beside it)


def test_transformers_reads_a_vision_exports_image_token_ids_as_its_tokenizers(tmp_path):
    """A guard (it found no bug): transformers' Llama4Config reads three image ids, image_token_index
    (<|patch|>, which image features replace), boi_token_index and eoi_token_index; the export writes
    the tokenizer's, not transformers' defaults (200092, ...). <|image|> and the tile separators have
    no config field (Llama4Processor finds them in the tokenizer by their text), and the exported
    tokenizer holds them at the model's ids. Export, import and export again give the same files."""
    from transformers import AutoConfig, AutoTokenizer
    ids = shifted_tokenizer(tmp_path / "tokenizer.json")
    checkpoint.export_hf(build(**VISION, **ids), tmp_path / "hf", tmp_path / "tokenizer.json")
    hf_logging.set_verbosity_error()
    cfg = AutoConfig.from_pretrained(tmp_path / "hf")
    assert (cfg.image_token_id, cfg.boi_token_id, cfg.eoi_token_id) == (
        ids["patch_id"], ids["image_start_id"], ids["image_end_id"])
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert {name: hf_tok.convert_tokens_to_ids(text) for name, text in SPECIAL_TOKENS.items()} == ids
    back, _ = checkpoint.load_model(checkpoint.import_hf(tmp_path / "hf", tmp_path / "back" / "last.pt"))
    assert {name: getattr(back.args, name) for name in SPECIAL_TOKENS} == ids
    checkpoint.export_hf(back, tmp_path / "again", tmp_path / "back" / "tokenizer.json")
    for name in checkpoint.EXPORT_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), name


def test_an_exported_tokenizer_pads_a_batch_for_generate(tmp_path):
    """Bug caught: the exported tokenizer padded on the right, so transformers' generate on
    tokenizer(["a long prompt", "short"], padding=True) continued the short row after its padding
    (a warning, and another story than the row alone gives)."""
    from conftest import WORDS
    from transformers import AutoTokenizer

    from tokenizer import Tokenizer
    tok = Tokenizer.train([" ".join(WORDS)] * 50, V)
    tok.save(tmp_path / "tokenizer.json")
    model = build()
    checkpoint.export_hf(model, tmp_path / "hf", tmp_path / "tokenizer.json")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = Llama4ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    texts = ["the cat sat on a mat", "a dog"]
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    assert hf_tok.padding_side == "left" and batch["attention_mask"][1, 0] == 0
    with torch.no_grad():
        rows = hf.generate(**batch, max_new_tokens=6, do_sample=False)
        for row, mask, text in zip(rows, batch["attention_mask"], texts, strict=True):
            alone = hf.generate(**hf_tok(text, return_tensors="pt"), max_new_tokens=6, do_sample=False)[0]
            start = int((mask == 0).sum())  # (the row's left padding)
            assert torch.equal(row[start:start + len(alone)], alone)


def test_an_hf_folder_without_its_weights_is_named_so(tmp_path):
    """Catches load_hf reading a folder whose model.safetensors is gone: "is missing", not "corrupt"."""
    checkpoint.export_hf(build(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors is missing; is .* an exported"):
        checkpoint.load_hf(tmp_path)


def test_the_export_says_its_output_layer_is_not_the_input_embeddings():
    """Catches config.json saying tie_word_embeddings true: transformers 5 warns and keeps both matrices
    (so the logits tests pass), but a reader that ties them (transformers 4) takes the wrong output layer."""
    vision = checkpoint.hf_config(debug_args(**VISION))
    assert checkpoint.hf_config(debug_args())["tie_word_embeddings"] is False
    assert vision["tie_word_embeddings"] is False and vision["text_config"]["tie_word_embeddings"] is False


def test_an_export_that_cannot_write_its_weights_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """A full disk stops the large write, the weights: the old export (--force) stays whole, not a
    new config.json beside the old weights, and a new folder gets no config.json of a model it
    does not hold (which a second try would take for an export to --force over)."""
    import storage
    old = build()
    checkpoint.export_hf(old, tmp_path / "hf")
    real = storage.atomic_write

    def full_disk(path, data, fix=None):
        if str(path).endswith(".safetensors"):
            raise storage.StorageError(f"cannot write {path}: the disk is full")
        real(path, data, fix)
    monkeypatch.setattr(storage, "atomic_write", full_disk)
    for folder, replace in [(tmp_path / "hf", True), (tmp_path / "new", False)]:
        with pytest.raises(storage.StorageError):
            checkpoint.export_hf(build(moe_every=2), folder, replace=replace)
    assert not (tmp_path / "new" / "config.json").exists()
    tokens = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        assert torch.equal(checkpoint.load_hf(tmp_path / "hf")(tokens).logits, old(tokens).logits)


def test_import_takes_the_first_end_token_and_rope_scaling_over_rope_parameters():
    """Catches the import taking the last of a list of end tokens (Meta's configs list several; the
    first ends a story), reading `rope_parameters` before `rope_scaling` where both are there, and
    the export naming another bos token than <|endoftext|>, which starts every story."""
    cfg = checkpoint.hf_config(debug_args())
    assert cfg["bos_token_id"] == DEBUG.eos_id
    cfg["eos_token_id"] = [9, 0]
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 2.0, "original_max_position_embeddings": 16,
                           "rope_theta": 1000.0}
    args = checkpoint.args_from_hf(cfg)
    assert args.eos_id == 9
    assert (args.rope_scaling, args.rope_factor, args.rope_theta) == ("llama3", 4.0, 1000.0)
