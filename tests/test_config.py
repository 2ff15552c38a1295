"""Settings: presets, JSON round trip, command-line overrides and their errors."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import ROOT

import config
from config import ConfigError, ModelArgs, SampleArgs, TrainArgs


@pytest.mark.parametrize("name", list(config.PRESETS))
def test_every_preset_builds_valid_args(name):
    model = config.preset(name, ModelArgs)
    train = config.preset(name, TrainArgs)
    assert model.dim % model.n_heads == 0
    assert model.top_k <= model.n_experts
    assert isinstance(train.lr, float)


def test_default_preset_is_the_scaled_down_scout():
    m = ModelArgs()
    assert (m.dim, m.n_layers, m.n_heads, m.n_kv_heads) == (512, 6, 8, 2)
    assert (m.n_experts, m.top_k, m.vocab_size, m.max_seq_len) == (16, 1, 32768, 256)
    assert m.router_noise and m.moe_every == 1
    # chunking and temperature tuning must be active at this context
    assert m.attn_chunk_size < m.max_seq_len and m.attn_floor_scale < m.max_seq_len
    tiny = config.preset("tiny", ModelArgs)
    assert tiny.vocab_size == 4096


@pytest.mark.parametrize("cls", [ModelArgs, TrainArgs, SampleArgs])
def test_json_round_trip_is_exact(cls):
    obj = cls()
    if cls is ModelArgs:
        obj = config.preset("scout-17b-16e", ModelArgs)
    text = json.dumps(config.to_dict(obj))
    back = config.from_dict(cls, json.loads(text))
    assert back == obj
    assert json.dumps(config.to_dict(back)) == text


@pytest.mark.parametrize("n_layers, moe_every, dense", [
    (2**31 - 2, 2**31 - 1, True), (2**31 - 1, 10**9, False), (4, 4, False), (4, 5, True), (1, 1, False)])
def test_is_dense_answers_at_once_for_any_depth(n_layers, moe_every, dense):
    """is_dense looked at every layer: 2 billion of them (count_params.py and memory_model.py take
    such a --n_layers) took minutes. The first MoE layer is layer moe_every - 1."""
    args = ModelArgs(n_layers=n_layers, moe_every=moe_every)

    def too_slow(*_):
        raise AssertionError("is_dense looks at every layer")
    old = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, 2)  # (minutes before)
    try:
        assert args.is_dense is dense
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if n_layers < 10:
        assert dense == (not any(args.is_moe_layer(i) for i in range(n_layers)))


def test_save_json_is_atomic_and_readable(tmp_path):
    import storage
    path = tmp_path / "model.json"
    storage.save_json(path, config.to_dict(ModelArgs(dim=256)))
    assert config.from_dict(ModelArgs, json.loads(path.read_text())).dim == 256
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temporary left behind


def test_from_dict_rejects_unknown_and_mistyped_fields():
    with pytest.raises(ConfigError, match="unknown ModelArgs field"):
        config.from_dict(ModelArgs, {"dimension": 3})
    with pytest.raises(ConfigError, match="dim should be int"):
        config.from_dict(ModelArgs, {"dim": "512"})
    with pytest.raises(ConfigError, match="qk_norm should be bool"):
        config.from_dict(ModelArgs, {"qk_norm": 1})


def test_from_dict_refuses_a_bool_where_a_number_is_due():
    # catches: JSON true taken as the integer 1 (bool is an int subclass): a damaged settings file loading
    with pytest.raises(ConfigError, match="dim should be int, got True"):
        config.from_dict(ModelArgs, {"dim": True})


def test_from_dict_checks_what_a_list_holds():
    """A list field ("prompt": ["a", 3]) was checked as a list only, so a number reached the prompts."""
    assert config.from_dict(SampleArgs, {"prompt": ["a", "b"]}).prompt == ["a", "b"]
    for bad in (["a", 3], "ab", [None]):
        with pytest.raises(ConfigError, match=r"prompt should be list\[str\], got"):
            config.from_dict(SampleArgs, {"prompt": bad})


def test_cli_overrides_apply_and_are_typed():
    name, (m, t) = config.parse_args(
        [ModelArgs, TrainArgs],
        ["--preset", "tiny", "--dim", "256", "--lr", "1e-3", "--qk_norm", "false", "--compile",
         "--run", "r1", "--resume"])
    assert name == "tiny"
    assert m.dim == 256 and isinstance(m.dim, int)
    assert t.lr == 1e-3 and isinstance(t.lr, float)
    assert m.qk_norm is False and t.compile == "true"  # a bare --compile means true
    assert m.vocab_size == 4096  # the rest of the preset stays
    assert t.run == "r1" and t.resume == "latest"


def test_options_typed_with_an_equals_sign_count_as_typed():
    # catches: --lr=1e-3 not counted as typed, so a resume put the checkpoint's --lr back over it
    parsed = config.parse_args([ModelArgs, TrainArgs], ["--lr=1e-3", "--dim", "256", "--qk_norm=false"])
    assert parsed.given == {"lr", "dim", "qk_norm"}
    assert parsed[1][1].lr == 1e-3


def test_cli_repeatable_list_field():
    _, (s,) = config.parse_args([SampleArgs], ["--prompt", "a", "--prompt", "b"])
    assert s.prompt == ["a", "b"]
    _, (s,) = config.parse_args([SampleArgs], [])
    assert s.prompt == []


def test_greedy_takes_any_temperature():
    assert SampleArgs(greedy=True, temperature=0).greedy
    with pytest.raises(ConfigError, match="use --greedy for argmax decoding"):
        SampleArgs(temperature=0)
    with pytest.raises(SystemExit):  # no preset sets a sampling field: sample.py has no --preset
        config.parse_args([SampleArgs], ["--preset", "tiny"])
    with pytest.raises(ConfigError, match="give --ckpt or --hf, not both"):
        SampleArgs(ckpt="checkpoints/r", hf="hf_export/r")


BAD = [
    (["--dmi", "3"], "--dmi (did you mean --dim?)"),
    (["--lr_min", "0"], "--lr_min (did you mean --min_lr?)"),  # the same words in another order
    (["--lr-min", "0"], "--lr-min (did you mean --min_lr?)"),  # (once: --lr)
    (["--", "--dim", "64"],  # (once: "--dim (did you mean --dim?)")
     "unknown option -- (a bare -- ends the options, so none after it is read; drop it), "
     "--dim (after the bare --)"),
    (["foo"], "unknown option foo (options take the form --name value; is a --name missing before it?)"),
    (["once upon a time"],  # one word as typed (argparse's message split it into four, each named)
     "unknown option 'once upon a time' (options take the form --name value; is a --name missing before it?)"
     "; see"),
    # an option of sample.py's: whose it is (--ckpt was "did you mean --plot?"), and train.py's spelling
    (["--num_samples", "3"], "unknown option --num_samples (sample.py's option, not train.py's); see"),
    (["--ckpt", "c"], "--ckpt (sample.py's option, not train.py's; name a checkpoint with --resume PATH, "
                      "and add --eval_only to evaluate it)"),  # (it was said for resuming alone)
    (["-num-samples", "3"], "-num-samples (sample.py's option, not train.py's)"),  # (however spelt)
    # the fallback's head counts are ones n_kv_heads=2 divides none of: say so, or each fails next
    (["--dim", "130"], "pick --n_heads 1, 5, 13 or 65, each with --n_kv_heads 1 or another divisor of it "
                       "(2 divides none)"),
    (["--run", "../escape"], "--run: '../escape' is not a plain name: a run is the folder <out_dir>/<run>"),
    (["--run", "a/b"], "--run: 'a/b' is not a plain name"),
    (["--out_dir", ""], "--out_dir: must name a folder, got ''"),  # (the run went into the current directory)
    (["--cache_dir", ""], "--cache_dir: must name a folder, got ''"),  # (the caches went there too)
    (["--text_field", ""], "--text_field: must name the records' text field, got ''"),  # (once: at a record)
    # Bug caught: the hub was asked for dataset '' (exit 1, after the settings were taken)
    (["--hf_dataset", ""], "--hf_dataset: must name a dataset on the Hugging Face Hub, got '' (and there is "
                           "no --data); pass one (the default is roneneldan/TinyStories), or --data FILE"),
    # (W&B refused it once the run had started: the whole run went without W&B, exit 0); Bug caught:
    # the refusal said "(the run went without W&B)", before any run
    (["--wandb_project", "a/b"], "--wandb_project: 'a/b' is no W&B project name (W&B refuses it: the run "
                                 "would go without W&B); "
                                 "pass 1 to 128 characters without / \\ # ? % or : (the default is "),
    (["--wandb_project", ""], "--wandb_project: '' is no W&B project name"),
    (["--wandb_project", "p" * 129], "is no W&B project name"),
    # a latin-1 terminal's é: once crashed the loss plot at the first evaluation, after training
    (["--run", "caf\udce9"], "--run: 'caf\\udce9' is not UTF-8 text (byte 0xe9 from the command line)"),
    (["--dim", "big"], "--dim: expected an integer, got 'big'"),
    (["--lr", "fast"], "--lr: expected a number"),
    (["--qk_norm", "maybe"], "--qk_norm: expected true or false"),
    (["--eval_only", "checkpoints/r"],
     "expected true or false, got 'checkpoints/r'; this flag takes no path: name a checkpoint with --resume"),
    # each names its fix (they named none, or a divisor of dim that gave an odd head_dim)
    (["--n_heads", "7"], "--n_heads: 7 heads do not divide dim=512; pick --n_heads 2, 4, 8, 16, 32 or 64"),
    (["--dim", "24", "--n_heads", "8"],
     "--n_heads: head_dim = dim / n_heads = 3 must be even for RoPE; pick --n_heads 2, 4, 6 or 12"),
    (["--dim", "25", "--n_heads", "5"],
     "head_dim = dim / n_heads = 5 must be even for RoPE; use a --dim that is a multiple of 2 x n_heads "
     "(20 or 30)"),
    # Bug caught: "use an even --dim" for an odd dim, where an even one could still be refused (62 at
    # 8 heads): now a multiple of 2 x n_heads, which keeps the typed heads
    (["--dim", "63"], "--n_heads: 8 heads do not divide dim=63; use a --dim that is a multiple of 2 x "
     "n_heads (48 or 64)"),
    (["--n_kv_heads", "3"],
     "--n_kv_heads: 3 kv heads do not divide n_heads=8; pick --n_kv_heads 1, 2, 4 or 8"),
    (["--top_k", "17"],
     "--top_k: top_k=17 is larger than n_experts=16; lower --top_k to at most 16, or raise --n_experts"),
    (["--rope_low_freq_factor", "4", "--rope_high_freq_factor", "2"],
     "--rope_high_freq_factor: 2 is below rope_low_freq_factor=4; raise it or lower --rope_low_freq_factor"),
    (["--eos_id", "40000"], "--eos_id: token id 40000 is outside the vocabulary [0, 32768); give an id below "
                            "32768, or a --vocab_size above 40000"),
    (["--eos_id", "1"], "--eos_id: 1 is also --pad_id's id; give each special token an id of its own"),
    (["--vision", "--vision_heads", "64"], "--vision_heads: vision head dim = vision_dim / vision_heads = 2 "
     "must be a multiple of 4 for the 2D RoPE; pick --vision_heads 1, 2, 4, 8, 16 or 32"),
    (["--vision", "--pixel_shuffle_ratio", "0.3"], "--pixel_shuffle_ratio: the 8x8 patch grid cannot be "
     "shuffled by 0.3; use one of 1, 0.5, 0.25, 0.125 (1 / n for an n that divides 8, and whose sizes "
     "transformers computes exactly), or change --image_size / --patch_size"),
    (["--dim", "256.0"], "--dim: expected an integer, got '256.0'; write 256"),  # (a float typed for an int)
    (["--max_steps", "1e4"], "--max_steps: expected an integer, got '1e4'; write 10000"),
    (["--lr", "-0.1"], "--lr: must be >= 0"),
    (["--lr", "inf"], "--lr: expected a finite number, got 'inf'"),
    (["--max_minutes", "Infinity"], "--max_minutes: expected a finite number"),
    (["--val_fraction", "0.9"], "--val_fraction: must be in [1e-6, 0.5]"),
    (["--val_fraction", "1e-30"], "--val_fraction: must be in [1e-6, 0.5]"),
    (["--batch_size", "0"], "--batch_size: must be at least 1"),
    (["--seed", "-3"], "--seed: must be in [0, 2^63)"),
    (["--beta2", "1"], "--beta2: must be in [0, 1)"),  # (passed: AdamW's second moment never updated)
    (["--seed", str(2 ** 63)], "--seed: must be in [0, 2^63)"),
    # (a resume's --lr below the run's --min_lr was told of the presets' alone)
    (["--min_lr", "1"], "--min_lr: 1 is above --lr 0.0006; pass a --min_lr at most --lr (each preset sets "
                        "its own, and a resumed run keeps its own)"),
    (["--weight_decay", "2000"],  # (once accepted: AdamW multiplied every matrix by 1 - 1.2 each step)
     "--weight_decay: 2000 x --lr 0.0006 is at least 1: AdamW would zero or flip the sign of every matrix"),
    (["--rope_scaling", "yarn"], "--rope_scaling: 'yarn' is not one of none, llama3"),
    (["--preset", "huge"], "--preset: 'huge' is not one of scout-128m, tiny, debug, "),
    (["--vocab_size", "4"], "token id"),
    (["--vision", "--image_size", "100"],
     "--image_size: 100 is not a multiple of patch_size=14; use 98 or 112"),
    # settings the forward pass would divide by, or that give NaN, refused before any work
    (["--rope_scaling", "llama3", "--rope_low_freq_factor", "0"], "--rope_low_freq_factor: must be positive"),
    (["--rope_original_max_seq_len", "0"], "--rope_original_max_seq_len: must be at least 1"),
    (["--vocab_size", str(2**63)], "--vocab_size: must be below 2^31"),  # (a torch traceback)
    (["--vision", "--vision_rope_theta", "0"], "--vision_rope_theta: must be positive"),
    (["--vision", "--image_size", str(2**40), "--patch_size", "1"],  # (passed: a 2^40 x 2^40 patch grid)
     "--image_size: must be below 2^31"),
    (["--vision", "--pixel_shuffle_ratio", "0.75", "--image_size", "56", "--vision_mlp_dim", "228"],
     "--pixel_shuffle_ratio: the 4x4 patch grid cannot be shuffled by 0.75; use one of 1, 0.5, 0.25 ("),
    (["--vision", "--pixel_shuffle_ratio", "2", "--vision_mlp_dim", "32"],
     "--pixel_shuffle_ratio: the 8x8 patch grid cannot be shuffled by 2.0; use one of"),
    (["--vision", "--pixel_shuffle_ratio", "1e-320"], "cannot be shuffled by 1e-320"),  # (1 / ratio is inf)
]


def test_an_empty_hf_dataset_is_allowed_where_the_hub_is_not_read():
    """--hf_dataset '' is refused only where the hub would be read: not beside --data, nor beside
    --eval_only with a --val_data."""
    TrainArgs(hf_dataset="", data="train.txt")
    TrainArgs(hf_dataset="", eval_only=True, val_data="valid.txt")
    with pytest.raises(ConfigError, match="--hf_dataset: must name a dataset"):
        TrainArgs(hf_dataset="", eval_only=True)


def test_an_empty_hf_dataset_at_eval_only_names_val_data_as_the_fix():
    """Bug caught: `--eval_only --hf_dataset ''` (an import: no data settings of its own) was told "there
    is no --data ... or --data FILE", where the text to evaluate on is --val_data's; training still
    names --data."""
    for eval_only, option in ((True, "--val_data"), (False, "--data")):
        with pytest.raises(ConfigError) as e:
            TrainArgs(hf_dataset="", eval_only=eval_only)
        assert f"(and there is no {option});" in str(e.value) and str(e.value).endswith(f", or {option} FILE")


def test_the_pixel_shuffle_ratios_the_error_suggests_are_accepted():
    """The advice prints 1/3 as 0.333333 (it once refused that very value: 24 x 0.333333 is not 8).
    Each is taken as exactly 1 / n; an image gets (24 // n)^2 tokens, as model.pixel_shuffle makes."""
    with pytest.raises(ConfigError) as e:
        ModelArgs(vision=True, image_size=336, pixel_shuffle_ratio=0.4)
    suggested = re.search(r"use one of ([\d., ]+) \(", str(e.value)).group(1).split(", ")
    assert suggested == ["1", "0.5", "0.333333", "0.25", "0.166667", "0.125"]
    for text in suggested:
        n = round(1 / float(text))
        a = ModelArgs(vision=True, image_size=336, pixel_shuffle_ratio=float(text),
                      vision_mlp_dim=128 * n * n)
        assert a.pixel_shuffle_ratio == 1 / n and a.image_tokens == (24 // n) ** 2
        assert int(24 * a.pixel_shuffle_ratio) == 24 // n  # (transformers' pixel_shuffle truncates)


def test_a_pixel_shuffle_ratio_transformers_sizes_wrongly_is_refused():
    """1/5 divides a 20x20 grid, but transformers sizes its adapter with int(c / r**2), and
    (1/5)**2 is 0.04000000000000001: one channel short (1599 for 64), an export it cannot load. It
    is neither accepted nor suggested."""
    with pytest.raises(ConfigError) as e:
        ModelArgs(vision=True, image_size=280, pixel_shuffle_ratio=0.2, vision_mlp_dim=128 * 25)
    assert "use one of 1, 0.5, 0.25 (" in str(e.value)
    assert not config._shuffles_exactly(5, 20, (64,)) and config._shuffles_exactly(4, 20, (64, 88))


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_is_one_line_and_exits_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], argv, prog="train.py")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("train.py: error:") and message in err


@pytest.mark.parametrize("argv,named,unnamed", [
    (["-dim", "256"], "unknown option -dim (did you mean --dim?); see", "256"),
    (["-prompt", "Once", "upon"], "unknown option -prompt (did you mean --prompt?); see", "Once"),
    (["--foo", "-1"], "unknown option --foo; see", "-1"),  # a negative number is a value
    (["--foo", "-.5"], "unknown option --foo; see", "-.5"),
])
def test_an_option_with_one_dash_is_named_without_its_value(argv, named, unnamed, capsys):
    """`-dim 256` also called 256 a value with its --name missing: the options alone are named where
    there are any, the single-dash ones too (which the user meant as an option), not a negative number."""
    parser = config.Parser(prog="sample.py")
    parser.add_argument("--dim")
    parser.add_argument("--prompt")
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and named in err and unnamed not in err.split("error:")[1], err


@pytest.mark.parametrize("argv,message", [
    (["--run", "demo"], "--run (train.py's option, not sample.py's; name the run's folder: --ckpt "
                        "checkpoints/RUN); see"),
    (["--lr", "0.1"], "--lr (train.py's option, not sample.py's); see"),  # (was: did you mean --help?)
    (["--preset", "tiny"], "--preset (train.py's option, not sample.py's; a checkpoint carries its "
                           "model's settings)"),  # (was: did you mean --prompt?)
    (["once upon a time"], "unknown option 'once upon a time' (options take the form --name value; is "
                           "--prompt missing before it?); see"),
    # --prompt typed, the story not quoted: not "is --prompt missing before it?" for each word after one
    (["--prompt", "once", "upon", "a", "time", "--seed", "3"], "error: upon a time after --prompt once: a "
     "prompt of several words is one argument; quote it: --prompt 'once upon a time'\n"),
    (["--prompt=once", "upon"], "error: upon after --prompt once: a prompt of several words is one argument; "
                                "quote it: --prompt 'once upon'\n"),
    (["--num-samples", "2"], "--num-samples (did you mean --num_samples?)"),
])
def test_sample_py_names_train_py_options_and_a_prompt_without_its_option_or_quotes(argv, message, capsys):
    """sample.py given train.py's options was told of its own nearest (--lr: --help, --preset: --prompt,
    --run: nothing), and a story typed without --prompt was four unknown words."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([SampleArgs], argv, prog="sample.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("option, ours", [("--num_experts_per_tok", "--top_k"), ("--hidden_size", "--dim"),
                                          ("--num_attention_heads", "--n_heads"),
                                          ("--intermediate_size", "--expert_dim"),
                                          ("--interleave_moe_layer_step", "--moe_every"),
                                          ("--max_position_embeddings", "--max_seq_len")])
def test_a_transformers_config_name_names_our_option(option, ours, capsys):
    """Bug caught: Llama4TextConfig's names (which --help prints beside ours) were met with difflib's
    nearest option: --num_experts_per_tok "did you mean --n_experts?" (another setting), --hidden_size
    and --intermediate_size --image_size, --num_attention_heads --vision_heads, and
    --interleave_moe_layer_step or --max_position_embeddings nothing. sample.py's --top_k is not the
    model's: there it is no hint."""
    with pytest.raises(SystemExit):
        config.parse_args([ModelArgs, TrainArgs], [option, "2"], prog="train.py")
    assert f"unknown option {option} (transformers' name; ours is {ours}); see" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config.parse_args([SampleArgs], ["--num_experts_per_tok", "2"], prog="sample.py")
    assert "--top_k" not in capsys.readouterr().err


def test_the_transformers_rope_type_is_named_with_our_spelling_of_its_default(capsys):
    """Bug caught: --rope_type was told "ours is --rope_scaling", which refuses transformers' value
    default (ours is none)."""
    with pytest.raises(SystemExit):
        config.parse_args([ModelArgs, TrainArgs], ["--rope_type", "default"], prog="train.py")
    assert ("unknown option --rope_type (transformers' name; ours is --rope_scaling, whose none is "
            "transformers' default); see") in capsys.readouterr().err


def test_a_script_passing_train_py_options_through_names_sample_py_options_as_such(capsys):
    """Bug caught: compare.py --num_samples was told "did you mean --attn_scale?": a script that passes
    train.py's options through says an option of sample.py's is sample.py's."""
    parser = config.Parser(prog="compare.py")
    with pytest.raises(SystemExit):
        config.check_pass_through(parser, ["--num_samples", "3"])
    assert "--num_samples (sample.py's option, not compare.py's)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--prompt=", "once", "upon"], "error: once upon after --prompt '': a prompt of several words is one "
                                    "argument; quote it: --prompt 'once upon'\n"),
    (["--", "--prompt", "once", "upon"], "unknown option -- (a bare -- ends the options"),
])
def test_an_unquoted_prompt_after_an_empty_one_or_a_bare_double_dash(argv, message, capsys):
    """Bug caught: --prompt= once upon advised --prompt ' once upon' (a space first), and after a bare --
    (the fault named first) the story was said to want quotes."""
    with pytest.raises(SystemExit):
        config.parse_args([SampleArgs], argv, prog="sample.py")
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("prog,argv,message", [
    ("gpu_check.py", ["--max_minutes", "2"], "--max_minutes (did you mean --minutes?)"),
    ("bench_sample.py", ["--max_new_tokens", "2"], "--max_new_tokens (did you mean --new_tokens?)"),
])
def test_a_script_other_than_train_or_sample_py_points_at_its_own_option(prog, argv, message, capsys):
    """Bug caught: every script was told "train.py's option, not gpu_check.py's" of --max_minutes, no longer
    pointed at its own --minutes: the whose-option hint is train.py's and sample.py's alone."""
    import importlib
    module = importlib.import_module(f"scripts.{prog[:-3]}")
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "'s option" not in err, err


def test_an_unquoted_glob_the_shell_expanded_is_named_as_such(tmp_path, capsys):
    """`--data corpus/*.txt` unquoted: the shell gives train.py every file, and the second read as
    a --name left out before it."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a\n")
    b.write_text("b\n")
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], ["--data", str(a), str(b)], prog="train.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"unknown option {b} (a second file? --data and --val_data take one file, folder or glob: " \
        "quote a glob" in err
    # Bug caught: the advice once a file (9 files: a line of 1,576 characters)
    more = [tmp_path / f"{n}.txt" for n in range(3)]
    for f in more:
        f.write_text("c\n")
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], ["--data", str(a), str(b), *map(str, more)])
    err = capsys.readouterr().err
    assert f"unknown option {b} and 3 more files (a second file? " in err and err.count("a second file") == 1
    with pytest.raises(SystemExit):
        config.parse_args([ModelArgs, TrainArgs], ["--data", str(a), str(b), str(more[0])])
    assert f"unknown option {b} and 1 more file (a second file? " in capsys.readouterr().err


@pytest.mark.parametrize("typed, meant", [("--temp", "--temperature"),  # (once: "did you mean --help?")
                                          ("--prompt-f", "--prompt_file")])  # (once: --prompt)
def test_an_unknown_option_names_the_only_option_it_begins(capsys, typed, meant):
    with pytest.raises(SystemExit) as e:
        config.parse_args([SampleArgs], [typed, "0.5"], prog="sample.py")
    assert e.value.code == 2 and f"{typed} (did you mean {meant}?)" in capsys.readouterr().err


@pytest.mark.parametrize("typed, meant", [("--DIM", "--dim"), ("--Max_Steps", "--max_steps"),
                                          ("--LR-MIN", "--min_lr")])
def test_an_option_typed_in_capitals_names_its_lower_case_spelling(capsys, typed, meant):
    """Bug caught: `train.py --DIM 64` said "unknown option --DIM" with no "did you mean --dim?" (the
    matching was case-sensitive, and difflib found nothing near)."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], [typed, "64"], prog="train.py")
    assert e.value.code == 2 and f"unknown option {typed} (did you mean {meant}?)" in capsys.readouterr().err


@pytest.mark.parametrize("prog, cls, typed, hint", [
    ("sample.py", SampleArgs, "--to", "--to (which one? --top_k or --top_p)"),
    ("train.py", TrainArgs, "--max", "--max (which one? --max_steps, --max_minutes or --max_bad_steps)")])
def test_an_unknown_option_that_begins_several_names_them(capsys, prog, cls, typed, hint):
    """An unknown prefix of several options (--max) was given difflib's one guess, which could be any of
    them: each is named (up to four), not a pick."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([cls], [typed, "5"], prog=prog)
    err = capsys.readouterr().err
    assert e.value.code == 2 and hint in err and "did you mean" not in err, err


@pytest.mark.parametrize("cls, typed, hint", [
    (TrainArgs, "--wandb", "--wandb (which one? --wandb_mode, --wandb_project, --wandb_group or "
                           "--wandb_name)"),
    (TrainArgs, "--wa", "--wa (which one? --warmup_steps, --wandb_mode, --wandb_project, --wandb_group or "
                        "1 more)"),
    (ModelArgs, "--rope", "--rope (which one? --rope_theta, --rope_scaling, --rope_factor, "
                          "--rope_low_freq_factor or 2 more)")])
def test_an_unknown_prefix_names_four_options_and_counts_the_rest(capsys, cls, typed, hint):
    """Catches the options an unknown prefix begins miscounted: four of four followed by "or 0 more",
    three named beside "2 more" of six, or "6 more" (all of them) where two were left unnamed."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([cls], [typed, "1"], prog="train.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unknown option {hint}; see --help" in err, err


@pytest.mark.parametrize("cls, typed", [(SampleArgs, "-prompt"), (TrainArgs, "-compile"),
                                        (ModelArgs, "-vision")])
def test_an_option_typed_with_one_dash_is_named_with_two(capsys, cls, typed):
    """Catches `-prompt` (one dash, as some tools spell options) answered "which one? --prompt or
    --prompt_file": its words are exactly --prompt's, so that one is named, not every option it begins."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([cls], [typed], prog="x.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unknown option {typed} (did you mean -{typed}?)" in err, err
    assert "which one?" not in err


@pytest.mark.parametrize("classes, typed, meant", [([ModelArgs, TrainArgs], "--steps", "--max_steps"),
                                                  ([SampleArgs], "--checkpoint", "--ckpt"),
                                                  ([SampleArgs], "--samples", "--num_samples")])
def test_an_unknown_option_names_a_loose_match(capsys, classes, typed, meant):
    """Catches the nearest-option guess made stricter than difflib's default (cutoff 0.6): --steps, the
    usual name elsewhere, or --checkpoint got no "did you mean" at all."""
    with pytest.raises(SystemExit) as e:
        config.parse_args(classes, [typed, "5"], prog="x.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unknown option {typed} (did you mean {meant}?)" in err, err


def test_a_lone_dash_is_not_named_as_a_prefix_of_every_option(capsys):
    """A lone - (empty once its dashes are gone) began every option: "which one? -h, --help, --preset,
    --data or 40 more" helped no one."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([TrainArgs], ["-"], prog="train.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "which one?" not in err
    assert err.startswith("train.py: error: unknown option -")


def test_val_text_field_defaults_to_text_field_and_needs_val_data(capsys):
    """--val_text_field (the text field of --val_data's records) is new: a run's saved settings
    without it take the default, "" (= --text_field), silently; without a --val_data it reads
    nothing, so it is refused in one line; --help names it."""
    saved = config.to_dict(TrainArgs(val_data="v.jsonl"))
    del saved["val_text_field"]
    assert config.from_dict(TrainArgs, saved).val_text_field == ""
    assert TrainArgs(val_data="v.jsonl", val_text_field="story").val_text_field == "story"
    with pytest.raises(ConfigError, match=r"^--val_text_field: 'story' names the text field of --val_data's "
                                          r"records, and there is no --val_data .*; pass --val_data FILE"):
        TrainArgs(val_text_field="story")
    with pytest.raises(SystemExit) as e:
        config.parse_args([TrainArgs], ["--val_text_field", "story"], prog="train.py")
    assert e.value.code == 2 and capsys.readouterr().err.startswith("train.py: error: --val_text_field: ")
    with pytest.raises(SystemExit):
        config.parse_args([TrainArgs], ["--help"], prog="train.py")
    assert re.search(r"--val_text_field STR +field holding the text in --val_data's", capsys.readouterr().out)


@pytest.mark.parametrize("script,fields", [("train.py", ["--dim", "--lr", "--max_minutes", "--resume"]),
                                           ("sample.py", ["--ckpt", "--top_p", "--greedy"])])
def test_entry_points_help_lists_fields(script, fields):
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for f in fields:
        assert f in out.stdout
    assert "(default:" in out.stdout
    if script == "train.py":  # torchrun needs the `--`, or its --run-path takes our --run
        assert "torchrun --nproc_per_node 8 -- train.py" in out.stdout
    # Bug caught: --help was 320 lines: every option twice (a 40-line usage) and the whole docstring,
    # how the code works included
    assert out.stdout.startswith(f"usage: {script} [-h] [--option VALUE ...]\n\n") or \
        out.stdout.startswith(f"usage: {script} [-h] [--preset NAME] [--option VALUE ...]\n\n")
    assert "How this departs" not in out.stdout and "How a training step flows" not in out.stdout
    assert "(How it works: the docstring at the top of the file.)" in out.stdout


def test_entry_point_bad_option_exits_nonzero_with_one_line():
    out = subprocess.run([sys.executable, "train.py", "--n_heads", "5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--n_heads" in out.stderr


NO_ROOM = ("error: cannot write to standard output (No space left on device); send the output somewhere "
           "with room, or to a terminal\n")


def parse_in_a_child(call: str, stdout, stderr=subprocess.PIPE, unbuffered: str = ""):
    """`call` (a parse of config's) run in a child whose stdout is `stdout`: /dev/full, or the write end of
    a pipe whose reader is gone (`| head` that has stopped reading)."""
    code = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport config\n{call}\n"
    return subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=stderr, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": unbuffered})


def into_a_closed_pipe(run):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return run(write_end)
    finally:
        os.close(write_end)


HELP_CALLS = {  # train.py's (20 KB: its write fails inside argparse) and a short one (fails at the flush)
    "long": "config.parse_args([config.ModelArgs, config.TrainArgs], ['--help'], prog='train.py')",
    "short": "p = config.Parser(prog='train.py'); p.add_argument('--x'); p.parse_args(['--help'])"}


FULL = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


@FULL
@pytest.mark.parametrize("unbuffered", ["1", ""])
@pytest.mark.parametrize("size", ["long", "short"])
def test_help_that_cannot_be_written_is_said_not_passed_over(size, unbuffered):
    """`train.py --help > FILE` on a full disk exited 0 with nothing written (argparse's _print_message
    passes over an OSError); into a closed pipe, 0 too. Now as a script's output: one line, exit 1; a
    closed pipe quiet, 141."""
    with open("/dev/full", "w") as full:
        done = parse_in_a_child(HELP_CALLS[size], full, unbuffered=unbuffered)
    assert (done.returncode, done.stderr) == (1, f"train.py: {NO_ROOM}")
    done = into_a_closed_pipe(lambda out: parse_in_a_child(HELP_CALLS[size], out, unbuffered=unbuffered))
    assert (done.returncode, done.stderr) == (141, "")


@FULL
@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_an_error_line_that_cannot_be_written_keeps_its_status(unbuffered):
    """`train.py --bogus 2>/dev/full`: the line argparse passed over failed again at exit's flush, and
    the status was Python's 120 for that, not a bad setting's 2. Both streams full at --help: 1."""
    with open("/dev/full", "w") as full:
        done = parse_in_a_child("config.parse_args([config.TrainArgs], ['--bogus'], prog='train.py')",
                                subprocess.PIPE, stderr=full, unbuffered=unbuffered)
        assert (done.returncode, done.stdout) == (2, "")
        done = parse_in_a_child(HELP_CALLS["short"], full, stderr=full, unbuffered=unbuffered)
        assert done.returncode == 1


# ---------------------------------------------------------------------------------------------
# What a mutation audit of config.py found untested: every range check's field, the boundaries
# each check keeps, the fixes the messages name, the presets' promises, saved settings' types,
# the command line's spellings, ranks, `given`, checked_later and the helpers scripts share.

MODEL_AT_LEAST_1 = ["vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "expert_dim", "mlp_dim",
                    "n_experts", "top_k", "moe_every", "nope_every", "max_seq_len", "attn_chunk_size",
                    "attn_floor_scale", "rope_original_max_seq_len"]
MODEL_POSITIVE = ["rope_theta", "norm_eps", "init_std", "rope_factor", "rope_low_freq_factor",
                  "rope_high_freq_factor", "vision_rope_theta"]
MODEL_NOT_NEGATIVE = ["router_aux_loss_coef", "router_z_loss_coef", "attn_scale"]
VISION_AT_LEAST_1 = ["vision_dim", "vision_layers", "vision_heads", "image_size", "patch_size",
                     "projector_input_dim", "projector_output_dim"]
TRAIN_AT_LEAST_1 = ["batch_size", "grad_accum", "max_steps", "eval_every", "log_every", "save_every",
                    "max_bad_steps"]
TRAIN_NOT_NEGATIVE = ["max_minutes", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip",
                      "eval_windows", "eval_batch_size", "num_proc", "tokenizer_train_mb"]


def suggests(name):
    """The end of a range error: its fix, the field's default."""
    return rf"; e.g. --{name} \S+ \(the default\)$"


@pytest.mark.parametrize("cls, name, bad", [
    *[(ModelArgs, n, 0) for n in MODEL_AT_LEAST_1 + MODEL_POSITIVE],
    *[(ModelArgs, n, -1.0) for n in MODEL_NOT_NEGATIVE],
    *[(TrainArgs, n, 0) for n in TRAIN_AT_LEAST_1], *[(TrainArgs, n, -1) for n in TRAIN_NOT_NEGATIVE],
    (TrainArgs, "seed", -1), (TrainArgs, "val_fraction", 0.9), (TrainArgs, "beta1", 1.0),
    (TrainArgs, "beta2", -0.5), (SampleArgs, "num_samples", 0), (SampleArgs, "max_new_tokens", 0),
    (SampleArgs, "top_k", -1), (SampleArgs, "top_p", 0.0), (SampleArgs, "seed", 2 ** 32)])
def test_a_range_error_names_a_value_in_range_that_is_taken(cls, name, bad):
    """Bug caught: a range error (--lr: must be >= 0, got -1.0) named the problem and no fix; the fix it
    now names, the field's default, is itself accepted (typed as printed)."""
    with pytest.raises(ConfigError, match=suggests(name)) as e:
        cls(**{name: bad})
    typed = str(e.value).split(f"e.g. --{name} ")[1].split(" (the default)")[0]
    kind = type(next(f.default for f in dataclasses.fields(cls) if f.name == name))
    assert getattr(cls(**{name: kind(typed)}), name) == kind(typed)


def test_max_steps_0_says_it_is_not_no_limit_as_max_minutes_0_is_and_what_to_do_instead(capsys):
    """Bug caught: --max_steps 0 (read as "no limit", as --max_minutes 0 is) said only "must be
    at least 1, got 0; e.g. --max_steps 5000", not how to stop on time alone or to only evaluate."""
    with pytest.raises(SystemExit):
        config.parse_args([ModelArgs, TrainArgs], ["--max_minutes", "10", "--max_steps", "0"],
                          prog="train.py")
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("train.py: error: --max_steps: must be at least 1, got 0 (0 is not 'no limit' "
                           "here, as it is for --max_minutes: ")
    assert "--max_minutes and a --max_steps the run will not reach" in said and "--eval_only" in said
    assert said.endswith("; e.g. --max_steps 5000 (the default)")
    assert TrainArgs(max_minutes=0).max_minutes == 0  # (no budget, as its --help says)
    with pytest.raises(ConfigError) as e:
        TrainArgs(max_steps=-3)  # (the note is of 0 alone)
    assert str(e.value) == "--max_steps: must be at least 1, got -3; e.g. --max_steps 5000 (the default)"


@pytest.mark.parametrize("preset", list(config.PRESETS))
def test_a_range_error_on_the_command_line_names_the_presets_value(preset, capsys):
    """Bug caught: a range error named the class's default whatever the preset: --preset debug
    --vocab_size 0 said "e.g. --vocab_size 32768 (the default)" where --help says 320, and with
    --preset scout-17b-16e that fix (or --dim 512) was itself refused (token id 200008 outside it)."""
    for name, bad in [(n, "0") for n in MODEL_AT_LEAST_1 + MODEL_POSITIVE + TRAIN_AT_LEAST_1] + \
            [(n, "-1") for n in MODEL_NOT_NEGATIVE + TRAIN_NOT_NEGATIVE]:
        with pytest.raises(SystemExit):
            config.parse_args([ModelArgs, TrainArgs], ["--preset", preset, f"--{name}", bad], prog="t")
        said = re.search(rf"e\.g\. --{name} (\S+) \((the default|the {preset} preset's)\)$",
                         capsys.readouterr().err.strip())
        _, (m, t) = config.parse_args([ModelArgs, TrainArgs], ["--preset", preset, f"--{name}", said[1]])
        want = getattr(config.preset(preset, ModelArgs if hasattr(m, name) else TrainArgs), name)
        assert getattr(m if hasattr(m, name) else t, name) == want, (name, said[1])
        # Bug caught: the preset's value was called "the default" (--preset debug --eval_every 0: 4)
        cls = "ModelArgs" if hasattr(m, name) else "TrainArgs"
        set_by_preset = name in config.PRESETS[preset].get(cls, {})
        assert said[2] == (f"the {preset} preset's" if set_by_preset else "the default"), (name, said[2])


@pytest.mark.parametrize("name", MODEL_AT_LEAST_1)
def test_every_model_count_is_refused_at_0_and_at_2_to_the_31(name):
    """A model count left out of the range check (--moe_every 0 divided by zero in is_moe_layer), or
    its bound 2^31 let through (<= for <)."""
    with pytest.raises(ConfigError, match=rf"^--{name}: must be at least 1, got 0{suggests(name)}"):
        ModelArgs(**{name: 0})
    with pytest.raises(ConfigError, match=rf"^--{name}: must be below 2\^31, got {2**31}{suggests(name)}"):
        ModelArgs(**{name: 2**31})


@pytest.mark.parametrize("name", VISION_AT_LEAST_1)
def test_every_vision_count_is_refused_at_0_and_at_2_to_the_31(name):
    """A vision count left out of the range check (--patch_size 0: a ZeroDivisionError, not a
    ConfigError), or its bound 2^31 let through."""
    with pytest.raises(ConfigError, match=rf"^--{name}: must be at least 1, got 0{suggests(name)}"):
        ModelArgs(vision=True, **{name: 0})
    with pytest.raises(ConfigError, match=rf"^--{name}: must be below 2\^31, got {2**31}{suggests(name)}"):
        ModelArgs(vision=True, **{name: 2**31})


@pytest.mark.parametrize("name", MODEL_POSITIVE)
def test_every_model_scale_is_refused_at_0(name):
    """A scale left out of the positivity check (--norm_eps 0: NaN on an all-zero row)."""
    with pytest.raises(ConfigError, match=rf"^--{name}: must be positive, got 0.0{suggests(name)}"):
        ModelArgs(**{name: 0.0})


@pytest.mark.parametrize("name", MODEL_NOT_NEGATIVE)
def test_every_model_weight_is_refused_below_0_and_taken_at_0(name):
    """A loss weight or strength left out of the >= 0 check (--attn_scale -1), or 0 (off) refused."""
    with pytest.raises(ConfigError, match=rf"^--{name}: must be >= 0, got -0.1{suggests(name)}"):
        ModelArgs(**{name: -0.1})
    assert getattr(ModelArgs(**{name: 0.0}), name) == 0.0


@pytest.mark.parametrize("name", TRAIN_AT_LEAST_1)
def test_every_training_count_is_refused_at_0(name):
    """A training count left out of the range check (--save_every 0: a modulo by zero mid-run)."""
    note = re.escape(f" ({config.ZERO_NOTES[name]})") if name in config.ZERO_NOTES else ""
    with pytest.raises(ConfigError, match=rf"^--{name}: must be at least 1, got 0{note}{suggests(name)}"):
        TrainArgs(**{name: 0})


@pytest.mark.parametrize("name", TRAIN_NOT_NEGATIVE)
def test_every_training_amount_is_refused_below_0(name):
    """A training amount left out of the >= 0 check (--grad_clip -1 clipped every gradient to 0)."""
    with pytest.raises(ConfigError, match=rf"^--{name}: must be >= 0, got -1"):
        TrainArgs(**{name: -1})


def test_each_training_amount_may_be_0():
    """A >= 0 check made > 0: 0 is each one's "off" (no budget, no decay, no clipping, all windows)."""
    args = TrainArgs(**{name: 0 for name in TRAIN_NOT_NEGATIVE})
    assert all(getattr(args, name) == 0 for name in TRAIN_NOT_NEGATIVE)


@pytest.mark.parametrize("name", ["beta1", "beta2"])
def test_each_adam_beta_is_in_0_to_1(name):
    """--beta1 left out of the [0, 1) check (beta2 alone is in BAD), or 0 (no momentum) refused."""
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=rf"^--{name}: must be in \[0, 1\), got {bad}{suggests(name)}"):
            TrainArgs(**{name: bad})
    assert getattr(TrainArgs(**{name: 0.0}), name) == 0.0


def test_the_training_checks_keep_their_boundaries():
    """A boundary moved: --min_lr equal to --lr (a constant rate) refused; lr x weight_decay exactly 1
    (AdamW zeroes every matrix) let through; --val_fraction 0.5 or 1e-6 refused; seed 0 or 2^63 - 1
    refused."""
    assert TrainArgs(lr=1e-3, min_lr=1e-3).min_lr == 1e-3
    with pytest.raises(ConfigError, match=r"^--weight_decay: 2 x --lr 0.5 is at least 1: .* below "
                                          r"1 / lr = 2$"):
        TrainArgs(lr=0.5, min_lr=0.0, weight_decay=2.0)
    assert TrainArgs(lr=0.5, min_lr=0.0, weight_decay=1.99).weight_decay == 1.99
    assert TrainArgs(val_fraction=0.5).val_fraction == 0.5
    assert TrainArgs(val_fraction=1e-6).val_fraction == 1e-6
    assert TrainArgs(seed=0).seed == 0 and TrainArgs(seed=2**63 - 1).seed == 2**63 - 1


@pytest.mark.parametrize("run", [".", ".."])
def test_a_run_named_dot_or_dot_dot_is_refused(run):
    """--run .. wrote the run into out_dir's parent (the source tree), --run . into out_dir itself:
    neither has a "/" for the check to see."""
    with pytest.raises(ConfigError, match=rf"^--run: {re.escape(repr(run))} is not a plain name"):
        TrainArgs(run=run)


def test_a_run_folder_not_named_in_utf8_is_taken_where_it_exists(tmp_path):
    """The UTF-8 check made for every name: a run folder made outside train.py (`mkdir $'r\\xff'`)
    could not be resumed; a new one is still refused."""
    name = os.fsdecode(b"r\xff")
    (tmp_path / name).mkdir()
    config.check_run(name, str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--run: 's\\udcff' is not UTF-8 text \(byte 0xff "):
        config.check_run(os.fsdecode(b"s\xff"), str(tmp_path))


def test_the_model_checks_keep_their_boundaries():
    """A boundary moved: top_k equal to n_experts (every expert for every token) refused; a special
    token id equal to vocab_size (one past the embedding table) let through."""
    assert ModelArgs(n_experts=4, top_k=4).top_k == 4
    assert ModelArgs(tile_y_id=32767).tile_y_id == 32767
    with pytest.raises(ConfigError, match=r"^--tile_y_id: token id 32768 is outside the vocabulary "
                                          r"\[0, 32768\)"):
        ModelArgs(tile_y_id=32768)


@pytest.mark.parametrize("changes, message", [
    # the heads nearest the typed count (not the smallest six)
    (dict(dim=4096, n_heads=100), "--n_heads: 100 heads do not divide dim=4096; pick --n_heads 4, 8, 16, 32, "
                                  "64 or 128"),
    # none divisible by n_kv_heads: the even-head_dim ones still (not "use an even --dim" for dim 6)
    (dict(dim=6, n_heads=4, n_kv_heads=4), "--n_heads: 4 heads do not divide dim=6; pick --n_heads 1 or 3, "
     "each with --n_kv_heads 1 or another divisor of it (4 divides none)"),
    # an image smaller than one patch: the patch size, not "0 or 14"
    (dict(vision=True, image_size=10), "--image_size: 10 is not a multiple of patch_size=14; use 14"),
    (dict(vision=True, projector_input_dim=128),
     "--projector_input_dim: 128 must equal projector_output_dim=256 (Llama 4's adapter feeds one into the "
     "other)"),
    (dict(vision=True, vision_mlp_dim=500),
     "--vision_mlp_dim: must equal vision_dim / pixel_shuffle_ratio^2 = 512 (Llama 4 shares it)"),
])
def test_each_model_error_names_its_fix(changes, message):
    """A fix suggestion that lost its nearest counts or its fallback, or a vision check skipped (the
    adapter widths that Llama 4 ties, transformers' export could not load)."""
    with pytest.raises(ConfigError) as e:
        ModelArgs(**changes)
    assert str(e.value) == message


def test_the_divisors_offered_are_the_nearest_and_ok():
    """_divisors: sqrt(n) itself left out (range stops short), or the nearest replaced by the smallest."""
    assert config._divisors(64, 8) == "1, 2, 4, 8, 16 or 32"
    assert config._divisors(36, 6) == "1, 2, 3, 4, 6 or 9"
    assert config._divisors(36, 6, lambda d: d % 2 == 1) == "1, 3 or 9"
    assert config._divisors(7, 3, lambda d: d > 7) == ""


@pytest.mark.parametrize("changes, message", [
    (dict(num_samples=0), "--num_samples: must be at least 1, got 0"),
    (dict(max_new_tokens=0), "--max_new_tokens: must be at least 1, got 0"),
    (dict(top_k=-1), "--top_k: must be >= 0, got -1"),
    (dict(top_p=0.0), "--top_p: must be in (0, 1], got 0.0"),  # (nothing to sample from)
    (dict(top_p=1.5), "--top_p: must be in (0, 1], got 1.5"),
    (dict(seed=-1), "--seed: must be in [0, 2^32) (torch's CPU generator keeps 32 bits of a seed), got -1"),
    (dict(seed=2**32), f"--seed: must be in [0, 2^32) (torch's CPU generator keeps 32 bits of a seed), got "
                       f"{2**32}"),
    (dict(prompt=["ok", "caf\udce9"]), "--prompt: 'caf\\udce9' is not UTF-8 text (byte 0xe9 from the command "
                                       "line); set the terminal to UTF-8, or use a --prompt_file saved as "
                                       "UTF-8"),
])
def test_each_sampling_check_refuses_its_value(changes, message):
    """A sampling check skipped or loosened (--top_p 0, --num_samples 0, a prompt not in UTF-8)."""
    with pytest.raises(ConfigError) as e:
        SampleArgs(**changes)
    assert re.fullmatch(re.escape(message) + r"(; e\.g\. --\w+ \S+ \(the default\))?", str(e.value))
    assert SampleArgs(top_p=1.0, top_k=0, seed=0).top_p == 1.0


@pytest.mark.parametrize("changes, last_row", [
    (dict(), 0), (dict(num_samples=3), 2), (dict(prompt=["a", "b"], num_samples=2), 3)])
def test_a_sample_seed_is_refused_where_a_row_would_draw_with_a_seed_past_32_bits(changes, last_row):
    """Bug caught: --seed took [0, 2^63), but torch's CPU generator keeps only the low 32 bits of a seed,
    so --seed 4294967297 told --seed 1's stories (and row r draws with seed + r: --seed 2^32 - 1 with
    --num_samples 2 told --seed 0's as its second). Every row's seed is now below 2^32."""
    import torch

    def same_draws(a, b):
        return torch.equal(torch.rand(4, generator=torch.Generator().manual_seed(a)),
                           torch.rand(4, generator=torch.Generator().manual_seed(b)))
    assert same_draws(1, 2**32 + 1)  # what the check is for (were torch to keep 64 bits, it could go)
    rows = last_row + 1
    assert SampleArgs(seed=2**32 - rows, **changes).seed == 2**32 - rows  # the last row's seed: 2^32 - 1
    bound = f"2^32 - {last_row}" if last_row else "2^32"
    for seed in [2**32 - rows + 1, 2**32 + 1, 2**63 - 1]:
        with pytest.raises(ConfigError, match=re.escape(f"--seed: must be in [0, {bound})") + ".*" +
                           re.escape(f"got {seed}; e.g. --seed 1337 (the default)")):
            SampleArgs(seed=seed, **changes)


def test_the_presets_are_what_their_comments_and_the_readme_promise():
    """A preset field changed that the parameter counts (test_docs) do not see: heads, learning
    rates, weight decay, batch, chunking, RoPE scaling, QK norm, init std, W&B off in tests."""
    scout = config.preset("scout-128m", ModelArgs)
    assert scout == ModelArgs() and config.preset("scout-128m", TrainArgs) == TrainArgs()
    assert (scout.dim, scout.n_heads, scout.n_kv_heads, scout.n_experts, scout.top_k) == (512, 8, 2, 16, 1)
    assert (scout.attn_chunk_size, scout.attn_floor_scale, scout.nope_every, scout.moe_every) == \
        (64, 64, 4, 1)
    assert scout.router_noise and scout.qk_norm and scout.rope_scaling == "none" and not scout.vision
    assert config.DEFAULT_PRESET == "scout-128m"

    tiny, tiny_train = config.preset("tiny", ModelArgs), config.preset("tiny", TrainArgs)
    assert (tiny.dim, tiny.n_layers, tiny.n_heads, tiny.n_kv_heads, tiny.n_experts, tiny.top_k) == \
        (128, 4, 4, 2, 16, 1)
    assert (tiny.expert_dim, tiny.vocab_size, tiny.max_seq_len) == (128, 4096, 256)
    assert (tiny_train.batch_size, tiny_train.lr, tiny_train.min_lr, tiny_train.weight_decay) == \
        (16, 3e-3, 3e-4, 1.0)
    assert (tiny_train.warmup_steps, tiny_train.eval_every, tiny_train.eval_windows) == (50, 500, 0)

    debug, debug_train = config.preset("debug", ModelArgs), config.preset("debug", TrainArgs)
    assert (debug.n_layers, debug.moe_every, debug.nope_every, debug.attn_chunk_size, debug.init_std) == \
        (4, 1, 4, 8, 0.1)
    assert debug.max_seq_len == 64 and debug.max_seq_len % debug.attn_chunk_size == 0
    assert debug_train.wandb_mode == "disabled" and debug_train.max_steps == 8

    # the released shapes, as their config.json has them
    scout17 = config.preset("scout-17b-16e", ModelArgs)
    assert (scout17.dim, scout17.n_layers, scout17.n_heads, scout17.n_kv_heads) == (5120, 48, 40, 8)
    assert (scout17.n_experts, scout17.top_k, scout17.moe_every, scout17.qk_norm) == (16, 1, 1, True)
    assert (scout17.rope_scaling, scout17.rope_factor, scout17.rope_low_freq_factor,
            scout17.rope_high_freq_factor, scout17.rope_original_max_seq_len) == \
        ("llama3", 16.0, 1.0, 1.0, 8192)
    assert (scout17.attn_chunk_size, scout17.attn_floor_scale, scout17.router_noise) == (8192, 8192, False)
    maverick = config.preset("maverick-17b-128e", ModelArgs)
    assert (maverick.dim, maverick.n_layers, maverick.n_heads, maverick.n_kv_heads) == (5120, 48, 40, 8)
    assert (maverick.n_experts, maverick.top_k, maverick.moe_every, maverick.qk_norm) == (128, 1, 2, False)
    assert (maverick.rope_scaling, maverick.router_noise, maverick.max_seq_len) == ("none", False, 1048576)
    for big in (scout17, maverick):
        assert (big.vocab_size, big.eos_id, big.pad_id, big.patch_id) == (202048, 200008, 200018, 200092)
        assert big.vision and big.vision_dim == 1408 and big.image_tokens == 144
    with pytest.raises(ConfigError, match=r"^--preset: unknown preset 'huge'; choose one of "
                                          r"scout-128m, tiny, "):
        config.preset("huge", ModelArgs)


def test_saved_settings_take_whole_numbers_as_floats_and_no_other_types():
    """typed_fields: a float written as a whole number (json.dumps of a hand-edited 500000) refused;
    JSON true taken as 1.0 for a float; a text taken for a list; a list for a table: a TypeError."""
    assert config.from_dict(ModelArgs, {"rope_theta": 500000}).rope_theta == 500000.0
    assert isinstance(config.from_dict(ModelArgs, {"rope_theta": 500000}).rope_theta, float)
    with pytest.raises(ConfigError, match=r"^settings: rope_theta should be float, got True$"):
        config.from_dict(ModelArgs, {"rope_theta": True})
    with pytest.raises(ConfigError, match=r"^settings: prompt should be list\[str\], got 'a cat'$"):
        config.from_dict(SampleArgs, {"prompt": "a cat"})
    with pytest.raises(ConfigError, match=r"^model\.json: should be a table of ModelArgs fields, got list$"):
        config.from_dict(ModelArgs, [512], where="model.json")
    with pytest.raises(ConfigError, match=r"^x: unknown TrainArgs field\(s\) a, b$"):
        config.typed_fields(TrainArgs, {"b": 1, "a": 2, "lr": 1.0}, "x")


@pytest.mark.parametrize("text", ["1", "true", "yes", "on", "True", " ON ", "YES"])
def test_a_flag_takes_each_spelling_of_true(text):
    """parse_bool: a spelling dropped ("on"), or case kept (--qk_norm True refused)."""
    assert config.parse_bool(text) is True
    false = {"1": "0", "true": "false", "yes": "no", "on": "off"}.get(text, "False")
    assert config.parse_bool(false) is False


def test_a_flag_given_a_checkpoint_names_resume():
    """parse_bool: the hint for a path lost for a bare checkpoint file name (--eval_only last.pt)."""
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match=r"got 'last\.pt'; this flag takes no path: name a "
                                                         r"checkpoint with --resume$"):
        config.parse_bool("last.pt")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected true or false, got 'maybe'$"):
        config.parse_bool("maybe")


@pytest.mark.parametrize("argv, line", [
    (["--dim", "2.5"], "argument --dim: expected an integer, got '2.5'"),  # (not "; write 2")
    (["--dim", "1e300"], "argument --dim: expected an integer, got '1e300'"),  # (not 301 digits to write)
    (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),  # (NaN passes every range check)
    (["--dmi", "3"], "unknown option --dmi (did you mean --dim?); see --help for the list"),  # (not "3" too)
    # a number as people write it: each named no fix
    (["--max_steps", "5,000"], "argument --max_steps: expected an integer, got '5,000'; write 5000"),
    (["--lr", "3e-4,"], "argument --lr: expected a number, got '3e-4,'; write 3e-4"),
    (["--lr", "0,001"], "argument --lr: expected a number, got '0,001'; write one number, without commas "
                        "(a decimal point is .)"),
    (["--max_minutes", "10m"], "argument --max_minutes: expected a number, got '10m'; write the number "
                               "alone, without a unit or suffix (--help says each option's unit)"),
    (["--max_steps", "5k"], "argument --max_steps: expected an integer, got '5k'; write the number alone, "
                            "without a unit or suffix (--help says each option's unit)"),
    # --no-X: "did you mean --X?" named the option that turns X on
    (["--no-qk_norm"], "unknown option --no-qk_norm (to turn --qk_norm off: --qk_norm false); see --help "
                       "for the list"),
    (["--no_compile"], "unknown option --no_compile (to turn --compile off: --compile false); see --help "
                       "for the list"),
    (["--no-grad-checkpoint"], "unknown option --no-grad-checkpoint (to turn --grad_checkpoint off: "
                               "--grad_checkpoint false); see --help for the list"),
    # --no-X of an option that takes a value: "did you mean --X?" named no value for it
    (["--no-wandb_mode"], "unknown option --no-wandb_mode (--wandb_mode is not on/off; it takes one of auto, "
                          "online, offline, disabled); see --help for the list"),
    (["--no_data"], "unknown option --no_data (--data is not on/off; it takes a value); see --help for the "
                    "list"),
])
def test_the_whole_error_line(argv, line, capsys):
    """A hint offered where it is wrong: a whole number for 2.5 or 1e300, NaN let through, the value
    after an unknown option named as a second unknown one; or missing, or the opposite of the fix."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], argv, prog="train.py")
    assert e.value.code == 2 and capsys.readouterr().err == f"train.py: error: {line}\n"


@pytest.mark.parametrize("argv, hint", [
    (["--dim", "1,5"], "expected an integer, got '1,5'; write one number, without commas"),
    (["--max_steps", "5,000,"], "expected an integer, got '5,000,'; write one number, without commas"),
    (["--max_steps", "5,000.0"], "expected an integer, got '5,000.0'; write one number, without commas"),
    (["--lr", "1e-3,1e-4"], "expected a number, got '1e-3,1e-4'; write one number, without commas (a "
                            "decimal point is .)"),
])
def test_a_number_with_commas_is_told_a_fix_that_reads(argv, hint, capsys):
    """Bug caught: --dim 1,5 was told "write 1,5" (and 5,000, "write 5,000"), the very text refused;
    --lr 1e-3,1e-4 (a list) was told to write it without commas, which makes 1e-31e-4."""
    with pytest.raises(SystemExit):
        config.parse_args([ModelArgs, TrainArgs], argv, prog="train.py")
    assert capsys.readouterr().err == f"train.py: error: argument {argv[0]}: {hint}\n"


def test_a_number_too_large_for_a_float_with_a_comma_is_one_line(capsys):
    """Bug caught: --max_steps 111...1, (400 digits and a trailing comma) was an OverflowError
    traceback from the hint's check that the fix reads (math.isfinite of an int past a float's range)."""
    big = "1" * 400
    with pytest.raises(SystemExit):
        config.parse_args([ModelArgs, TrainArgs], ["--max_steps", f"{big},"], prog="train.py")
    assert capsys.readouterr().err == (f"train.py: error: argument --max_steps: expected an integer, got "
                                       f"'{big},'; write {big}\n")


@pytest.mark.parametrize("prog, typed, hint", [
    ("sample.py", "--no-greedy", "--no-greedy (to turn --greedy off: --greedy false)"),
    ("sample.py", "--no-cache", "--no-cache (did you mean --no_cache?)"),  # (an option of those words)
    ("bench.py", "--no-quick", "--no-quick (--quick is off unless given: leave it out)"),
    ("compare.py", "--no-vision", "--no-vision (to turn --vision off: --vision false)"),  # (passed through)
])
def test_a_negated_on_off_option_names_how_to_turn_it_off(prog, typed, hint, capsys):
    """Bug caught: `--no-greedy` was told "did you mean --greedy?", the option that turns it on."""
    if prog == "sample.py":
        run = lambda: config.parse_args([SampleArgs], [typed], prog=prog)  # noqa: E731
    else:
        parser = config.Parser(prog=prog)
        parser.add_argument("--quick", action="store_true")
        run = (lambda: parser.parse_args([typed])) if prog == "bench.py" else (
            lambda: config.check_pass_through(parser, [typed]))
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 2 and f"unknown option {hint}; see --help" in capsys.readouterr().err


@pytest.mark.parametrize("prog, typed, hint", [
    ("bench_sample", "--no_cache", "--no_cache; see"),  # (was: did you mean --batches?)
    ("bench_sample", "--no-cache", "--no-cache; see"),  # (was: --no-hf, its no_ alone in common)
    ("bench_sample", "--no_hf", "--no_hf (did you mean --no-hf?); see"),  # (the same words: still named)
    ("train", "--amp", "--amp; see"),  # (was: --dim, the -- and an m in common)
    ("train", "--no_flash", "--no_flash; see"),  # (was: --n_layers)
    ("train", "--no-eval", "--no-eval; see"),  # (was: --eval_only, which turns an evaluation-only run on)
    ("train", "--no_compiled", "--no_compiled (to turn --compile off: --compile false); see"),
    ("train", "--nocompile", "--nocompile (to turn --compile off: --compile false); see"),  # (was: --compile)
    ("train", "--no_wandb", "--no_wandb (to turn wandb off: --wandb_mode disabled); see"),  # (was: no hint)
    ("train", "--no-wandb", "--no-wandb (to turn wandb off: --wandb_mode disabled); see"),
    ("sample", "--checkpoint", "--checkpoint (did you mean --ckpt?); see"),  # (an abbreviation of it)
])
def test_an_unknown_option_near_none_is_given_no_guess(prog, typed, hint, capsys):
    """Bug caught: `bench_sample.py --no_cache` was told "did you mean --batches?": difflib compared the
    names with their -- (two letters in common before any other), and --no-X with its no_ (--no-hf)."""
    import importlib
    with pytest.raises(SystemExit) as e:
        if prog == "bench_sample":
            importlib.import_module("scripts.bench_sample").main([typed])
        else:
            classes = [ModelArgs, TrainArgs] if prog == "train" else [SampleArgs]
            config.parse_args(classes, [typed], prog=f"{prog}.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: unknown option {hint}" in err, err


@pytest.mark.parametrize("typed, hint", [
    ("--log_interval", "--log_interval; see"),  # (was: did you mean --lr?)
    ("--lr_warmup", "--lr_warmup; see"),  # (was: --lr)
    ("--local_rank", "--local_rank; see"),  # (torch.distributed.launch's; was: --lr)
    ("--data_dir", "--data_dir (did you mean --data?); see"),  # (was: --out_dir, as near without the --)
    ("--learning_rate", "--learning_rate (did you mean --lr?); see"),  # (an abbreviation of its first word)
])
def test_an_option_abbreviates_a_word_typed_not_any_letters_of_it(typed, hint, capsys):
    """Bug caught: --log_interval, --lr_warmup and --local_rank were told "did you mean --lr?" (an l and an
    r in that order anywhere in the name made --lr its abbreviation), and --data_dir "--out_dir" (as near as
    --data without the dashes, and after it in the alphabet)."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], [typed], prog="train.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: unknown option {hint}" in err, err


def test_an_option_of_a_script_and_of_train_py_is_named_once(capsys):
    """Bug caught: compare.py --cache was told "which one? --cache_dir or --cache_dir": an option that
    the script has and that train.py has too (passed through) was counted twice."""
    parser = config.Parser(prog="compare.py")
    parser.add_argument("--cache_dir")
    with pytest.raises(SystemExit):
        config.check_pass_through(parser, ["--cache"])
    assert "unknown option --cache (did you mean --cache_dir?); see" in capsys.readouterr().err


def test_a_negative_token_id_is_not_told_to_raise_the_vocabulary(capsys):
    """Bug caught: `--eos_id -1` advised "or a --vocab_size above -1", which no vocabulary size fixes."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], ["--preset", "debug", "--eos_id", "-1"], prog="train.py")
    assert e.value.code == 2 and capsys.readouterr().err == (
        "train.py: error: --eos_id: token id -1 is outside the vocabulary [0, 320); give an id from 0 to "
        "319\n")


def test_a_bad_setting_is_said_on_rank_0_only(monkeypatch, capsys):
    """Parser.error on a torchrun worker other than rank 0: the same line printed by every rank."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    for argv in (["--dmi", "3"], ["--dim", "0"]):
        with pytest.raises(SystemExit) as e:
            config.parse_args([ModelArgs, TrainArgs], argv, prog="train.py")
        assert e.value.code == 2 and capsys.readouterr().err == ""


def test_given_holds_what_was_typed_and_nothing_it_begins():
    """`given`: --compile_mode typed counted --compile as typed too (a resume then put the typed
    --compile over the checkpoint's); --preset typed not counted."""
    assert config.parse_args([ModelArgs, TrainArgs], ["--compile_mode", "default"]).given == {"compile_mode"}
    assert config.parse_args([ModelArgs, TrainArgs], ["--compile_mode=default"]).given == {"compile_mode"}
    assert config.parse_args([ModelArgs, TrainArgs], ["--preset", "tiny"]).given == {"preset"}
    assert config.parse_args([ModelArgs, TrainArgs], []).given == set()


def test_checked_later_defers_a_failed_check_only_where_it_says_so(capsys):
    """checked_later's answer ignored: a callable that says False (no --resume) still deferred the
    range checks, and a run started with --min_lr above --lr."""
    def resuming(ns):
        return bool(ns.resume)
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], ["--min_lr", "1"], prog="train.py", checked_later=resuming)
    assert e.value.code == 2 and "--min_lr: 1 is above --lr" in capsys.readouterr().err
    parsed = config.parse_args([ModelArgs, TrainArgs], ["--min_lr", "1", "--resume"], checked_later=resuming)
    model, train = parsed[1]
    assert (train.min_lr, train.resume) == (1.0, "latest")
    assert (train.lr, model.dim) == (TrainArgs().lr, ModelArgs().dim)  # the others: the defaults
    assert parsed.given == {"min_lr", "resume"}


def test_counts_and_at_least_1_refuse_0():
    """Parser.counts and at_least_1 (the scripts' --batches, --repeats): 0 let through."""
    import argparse
    p = config.Parser(prog="bench.py")
    assert p.counts("--batches", "8,16") == [8, 16]
    for bad in ("0", "8,0", "x", "", "8,,16", "8,"):  # (an empty item: a typo, not a list of one)
        with pytest.raises(SystemExit):
            p.counts("--batches", bad)
    assert config.at_least_1("1") == 1
    for bad in ("0", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a whole number above 0"):
            config.at_least_1(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected an integer, got 'x'$"):
        config.at_least_1("x")  # (read as config.number(int) reads it: 5,000 is told to write 5000)


def test_pass_through_options_are_train_pys_and_not_the_scripts_own(capsys):
    """check_pass_through: --preset refused (not a dataclass field), an owned option let through, a
    value taken for an option."""
    p = config.Parser(prog="sweep.py")
    config.check_pass_through(p, ["--preset", "tiny", "--dim", "64", "--lr=1e-3"], owned=("run",))
    for extra, said in ((["--run", "r"], "--run is set by sweep.py for every run; it cannot be passed "
                                          "through"),
                        (["--dmi", "64"], "unknown option --dmi (did you mean --dim?)")):
        with pytest.raises(SystemExit) as e:
            config.check_pass_through(p, extra, owned=("run",))
        assert e.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [(["--lr=1e-3"], "--lr"), (["--dim", "64", "--batch_size", "8"],
                                                                    "--batch_size")])
def test_a_training_setting_given_to_a_model_only_script_is_named_as_one(argv, flag, capsys):
    """refuse_training_settings: --lr=1e-3 (with an equals sign) slipped past to "unknown option"."""
    p = config.Parser(prog="count_params.py")
    config.refuse_training_settings(p, ["--dim", "64", "--preset", "tiny"], "drop it")
    with pytest.raises(SystemExit) as e:
        config.refuse_training_settings(p, argv, "drop it")
    assert e.value.code == 2
    assert capsys.readouterr().err == \
        f"count_params.py: error: {flag} is a training setting (train.py's), drop it\n"


def test_a_pixel_shuffle_whose_grid_transformers_truncates_is_refused():
    """_shuffles_exactly without its grid check: 1/49 divides a 49x49 grid and every channel count
    exactly, but transformers' int(49 * (1/49)) is 0 (1/49 rounds below), an empty image."""
    assert not config._shuffles_exactly(49, 49, (128, 256)) and config._shuffles_exactly(7, 49, (128, 256))
    with pytest.raises(ConfigError, match=r"^--pixel_shuffle_ratio: the 49x49 patch grid cannot be shuffled "
                                          r"by 0\.0204\d+; use one of 1, 0\.142857 \("):
        ModelArgs(vision=True, image_size=686, pixel_shuffle_ratio=1 / 49, vision_mlp_dim=128 * 49 * 49)


def test_a_choice_is_checked_where_settings_do_not_pass_argparse():
    """_check_choices skipped: argparse refuses --rope_scaling yarn on the command line, but a
    checkpoint's settings (from_dict) and a direct construction reach __post_init__ only."""
    with pytest.raises(ConfigError, match=r"^--rope_scaling: 'yarn' is not one of none, llama3$"):
        config.from_dict(ModelArgs, {"rope_scaling": "yarn"})
    with pytest.raises(ConfigError, match=r"^--dtype: 'float16' is not one of auto, float32, bfloat16; "
                                          r"did you mean --dtype bfloat16\?$"):
        TrainArgs(dtype="float16")
    with pytest.raises(ConfigError, match=r"^--compile_mode: 'fast' is not one of default, "
                                          r"reduce-overhead, "):
        config.from_dict(TrainArgs, {"compile_mode": "fast"})


# ---------------------------------------------------------------------------------------------
# A second mutation audit of config.py: the command line's order, defaults and fall-backs, the
# derived layer layout, the presets' remaining fields and the constants other modules read.


def test_a_preset_typed_after_the_fields_still_starts_them():
    """The early --preset parse looking at the start of the line only: `--dim 64 --preset tiny` took
    scout-128m's values under tiny's name."""
    for argv in (["--dim", "64", "--preset", "tiny"], ["--dim=64", "--preset=tiny"]):
        parsed = config.parse_args([ModelArgs, TrainArgs], argv)
        name, (model, train) = parsed
        assert (name, model.dim, model.vocab_size, train.lr) == ("tiny", 64, 4096, 3e-3)
        assert parsed.given == {"dim", "preset"}


def test_no_preset_typed_is_named_the_default_one():
    """--preset's default dropped (None): a run with no --preset was named after no preset."""
    assert config.parse_args([ModelArgs, TrainArgs], [])[0] == config.DEFAULT_PRESET == "scout-128m"
    assert config.parse_args([SampleArgs], [])[0] == config.DEFAULT_PRESET


def test_the_command_line_is_read_from_sys_argv_by_default(monkeypatch, capsys):
    """argv None read as sys.argv (the script's own path taken for an option), or the error line
    prefixed with the script's whole path instead of its name."""
    monkeypatch.setattr(sys, "argv", ["/some/where/train.py", "--dim", "64"])
    assert config.parse_args([ModelArgs])[1][0].dim == 64
    monkeypatch.setattr(sys, "argv", ["/some/where/train.py", "--dmi", "64"])
    with pytest.raises(SystemExit):
        config.parse_args([ModelArgs])
    assert capsys.readouterr().err.startswith("train.py: error: unknown option --dmi (did you mean --dim?)")


def test_an_option_with_its_value_after_a_bare_double_dash_is_named_as_such(capsys):
    """Parser.unknown not splitting `--dim=64` at its "=": a known option after the bare -- was
    offered as a guess (did you mean --dim?), not named as one the -- hid."""
    with pytest.raises(SystemExit):
        config.parse_args([ModelArgs, TrainArgs], ["--", "--dim=64"], prog="train.py")
    assert "--dim=64 (after the bare --); see --help" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config.parse_args([SampleArgs], ["--temp=0.5"], prog="sample.py")
    assert "--temp=0.5 (did you mean --temperature?)" in capsys.readouterr().err


def test_pass_through_never_suggests_an_option_the_script_owns(capsys):
    """check_pass_through offering an owned option (--runn: did you mean --run?), which it then refuses;
    or a negative value (-1e-5) taken for an unknown option."""
    p = config.Parser(prog="sweep.py")
    with pytest.raises(SystemExit):
        config.check_pass_through(p, ["--runn", "x"], owned=("run",))
    err = capsys.readouterr().err
    assert err.startswith("sweep.py: error: unknown option --runn") and "--run?" not in err
    config.check_pass_through(p, ["--min_lr", "-1e-5"], owned=("run",))  # a value: train.py checks it


def test_the_layer_layout_rope_and_moe():
    """uses_rope off by one (NoPE on layers 0, 4, ... not 3, 7, ...), or is_moe_layer (Maverick's MoE
    on layers 1, 3, ...)."""
    args = ModelArgs(n_layers=8, nope_every=4, moe_every=2)
    assert [i for i in range(8) if not args.uses_rope(i)] == [3, 7]
    assert [i for i in range(8) if args.is_moe_layer(i)] == [1, 3, 5, 7]
    assert not any(ModelArgs(nope_every=1).uses_rope(i) for i in range(6))  # every layer NoPE
    assert all(ModelArgs(nope_every=7).uses_rope(i) for i in range(6))  # (above n_layers: none)


def test_the_dense_twin_is_dense_and_as_wide_as_the_active_experts():
    """dense_twin: an MoE layer left in (moe_every = n_layers makes the last layer MoE), or the
    shared expert left out of the width (top_k x expert_dim)."""
    args = ModelArgs(n_layers=4, top_k=2, expert_dim=96)
    twin = args.dense_twin()
    assert twin.is_dense and not any(twin.is_moe_layer(i) for i in range(4))
    assert twin.mlp_dim == 3 * 96
    assert config.to_dict(twin) == {**config.to_dict(args), "moe_every": 5, "mlp_dim": 288}


def test_a_text_only_model_does_not_check_the_vision_settings():
    """The vision checks run without --vision: a text-only model refused for a vision tower it
    does not build."""
    args = ModelArgs(vision_heads=3, image_size=100, pixel_shuffle_ratio=0.3, projector_input_dim=7)
    assert not args.vision and args.pixel_shuffle_ratio == 0.3
    with pytest.raises(ConfigError):
        ModelArgs(vision=True, vision_heads=3)


def test_a_list_default_is_not_shared_between_instances():
    """arg() giving every SampleArgs the same default list: a prompt added to one appeared in all."""
    a, b = SampleArgs(), SampleArgs()
    assert a.prompt == [] and a.prompt is not b.prompt
    a.prompt.append("x")
    assert SampleArgs().prompt == []


def test_the_defaults_leave_the_machine_to_decide_and_sample_as_documented():
    """A default changed: dtype, compile or device fixed (not auto: bfloat16 and compiling on CUDA,
    float32 and eager on a CPU), clipping off, or sampling's temperature, top-p or cache."""
    train = TrainArgs()
    assert (train.dtype, train.compile, train.device, train.wandb_mode) == ("auto",) * 4
    assert (train.compile_mode, train.grad_clip, train.grad_checkpoint, train.eval_only) == \
        ("default", 1.0, False, False)
    assert (train.beta1, train.beta2, train.max_steps, train.warmup_steps, train.batch_size) == \
        (0.9, 0.95, 5000, 100, 128)
    sample = SampleArgs()
    assert (sample.dtype, sample.compile, sample.device) == ("auto",) * 3
    assert (sample.temperature, sample.top_k, sample.top_p, sample.max_new_tokens, sample.num_samples) == \
        (0.8, 0, 1.0, 256, 1)
    assert not (sample.greedy or sample.no_cache or sample.ckpt or sample.hf)
    _, (s,) = config.parse_args([SampleArgs], ["--compile"])  # a bare --compile: on, as for train.py
    assert s.compile == "true"


@pytest.mark.parametrize("typed, meant", [("0", "false"), ("no", "false"), ("False", "false"),
                                          ("OFF", "false"), ("1", "true"), ("yes", "true"), ("on", "true"),
                                          ("auto", "auto")])
def test_compile_takes_what_a_bool_flag_takes(typed, meant):
    """Bug caught: --compile 0 (or no, off, yes, 1, False) was refused as no choice of auto/true/false, where
    every bool flag (--qk_norm 0, --grad_checkpoint no) takes it; train.py's and sample.py's alike."""
    _, (_, t) = config.parse_args([ModelArgs, TrainArgs], ["--compile", typed], prog="train.py")
    _, (s,) = config.parse_args([SampleArgs], [f"--compile={typed}"], prog="sample.py")
    assert t.compile == s.compile == meant


def test_compile_still_refuses_other_words(capsys):
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], ["--compile", "fals"], prog="train.py")
    assert e.value.code == 2
    assert capsys.readouterr().err == ("train.py: error: --compile: 'fals' is not one of auto, true, false; "
                                       "did you mean --compile false?\n")


def test_the_presets_remaining_fields():
    """Preset fields the first audit left: tiny's dense width, debug's temperature steps and its
    schedule, the released context lengths, vision towers and special token ids (a tile id pair
    swapped)."""
    tiny = config.preset("tiny", ModelArgs)
    assert (tiny.mlp_dim, tiny.n_experts, tiny.moe_every, tiny.nope_every) == (256, 16, 1, 4)
    debug, debug_train = config.preset("debug", ModelArgs), config.preset("debug", TrainArgs)
    assert (debug.vocab_size, debug.dim, debug.n_heads, debug.n_kv_heads, debug.expert_dim, debug.mlp_dim,
            debug.n_experts, debug.attn_floor_scale) == (320, 64, 4, 2, 32, 64, 4, 4)
    assert (debug_train.batch_size, debug_train.lr, debug_train.min_lr, debug_train.warmup_steps,
            debug_train.eval_every, debug_train.save_every, debug_train.log_every,
            debug_train.eval_windows) == (4, 3e-3, 3e-4, 2, 4, 4, 1, 4)
    scout17 = config.preset("scout-17b-16e", ModelArgs)
    maverick = config.preset("maverick-17b-128e", ModelArgs)
    assert (scout17.max_seq_len, maverick.max_seq_len) == (10485760, 1048576)
    for big in (scout17, maverick):
        assert (big.expert_dim, big.mlp_dim, big.nope_every, big.rope_theta) == (8192, 16384, 4, 500000.0)
        assert [getattr(big, n) for n in config.SPECIAL_TOKENS] == \
            [200008, 200018, 200080, 200081, 200090, 200092, 200084, 200085]
        assert (big.vision_dim, big.vision_layers, big.vision_heads, big.vision_mlp_dim, big.image_size,
                big.patch_size, big.pixel_shuffle_ratio, big.projector_input_dim,
                big.projector_output_dim) == (1408, 34, 16, 5632, 336, 14, 0.5, 4096, 4096)
        assert isinstance(big.image_tokens, int)  # (a float count breaks the tensor shapes it sizes)
    for name, sets in config.PRESETS.items():  # only the two classes with presets
        assert set(sets) == {"ModelArgs", "TrainArgs"}, name


def test_the_special_tokens_are_listed_in_the_order_of_their_default_ids():
    """SPECIAL_TOKENS reordered: the tokenizer reserves ids in this order (0, 1, 2, ...), so the
    <|image|> and <|patch|> entries swapped gave each the other's id."""
    assert [getattr(ModelArgs(), n) for n in config.SPECIAL_TOKENS] == list(range(8))
    assert list(config.SPECIAL_TOKENS.values())[:2] == ["<|endoftext|>", "<|pad|>"]
    tokens = config.SPECIAL_TOKENS
    assert (tokens["image_id"], tokens["patch_id"]) == ("<|image|>", "<|patch|>")


def test_the_compile_modes_that_replay_cuda_graphs():
    """CUDA_GRAPH_MODES without max-autotune (it replays CUDA graphs too: one micro-batch per process)."""
    assert config.CUDA_GRAPH_MODES == ("reduce-overhead", "max-autotune")
    assert set(config.CUDA_GRAPH_MODES) < set(config.COMPILE_MODES)
    assert [f.metadata["choices"] for f in dataclasses.fields(TrainArgs)
            if f.name == "compile_mode"] == [list(config.COMPILE_MODES)]


def test_help_shows_the_typed_presets_defaults(capsys):
    """--help's "(default: ...)" taken from the class, not the preset typed: `--preset tiny --help`
    said vocab_size 32768 where tiny uses 4096."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], ["--preset", "tiny", "--help"], prog="train.py")
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert re.search(r"--vocab_size INT +vocabulary size, special tokens included \(default:\s+4096\)", out)
    assert re.search(r"--lr FLOAT +peak learning rate \(default:\s+0\.003\)", out)


def test_checked_later_keeps_every_value_of_the_preset():
    """The unchecked instance (a deferred check) holding only some fields: the rest fell back to the
    class defaults (scout-128m's lr under --preset tiny) with no error."""
    parsed = config.parse_args([ModelArgs, TrainArgs], ["--preset", "tiny", "--min_lr", "1", "--resume"],
                               checked_later=lambda ns: True)
    train = parsed[1][1]
    assert (train.lr, train.batch_size, train.weight_decay, train.min_lr) == (3e-3, 16, 1.0, 1.0)
    assert {f.name for f in dataclasses.fields(TrainArgs)} <= set(vars(train))


def test_a_stray_file_is_blamed_on_a_glob_only_where_there_is_a_data_option(tmp_path, capsys):
    """The unquoted-glob hint given to a script with no --data (sample.py), whose stray file name
    is a missing --name."""
    stray = tmp_path / "a.txt"
    stray.write_text("a\n")
    with pytest.raises(SystemExit):
        config.parse_args([SampleArgs], [str(stray)], prog="sample.py")
    assert f"unknown option {stray} (options take the form --name value" in capsys.readouterr().err


def test_to_dict_is_a_copy_of_the_settings():
    """to_dict returning the instance's own __dict__ (vars): a changed copy (a resume's settings, a
    sweep's variant) changed the settings it came from, a prompt list included."""
    model, sample = ModelArgs(), SampleArgs(prompt=["a"])
    d, s = config.to_dict(model), config.to_dict(sample)
    d["dim"] = 64
    s["prompt"].append("b")
    assert model.dim == 512 and sample.prompt == ["a"]


@pytest.mark.parametrize("prog,classes,argv,message", [
    # the prompt's stray words stop at an unknown option: it is not one of the story's words
    ("sample.py", [SampleArgs], ["--prompt", "once", "upon", "--foo"],
     "error: upon after --prompt once: a prompt of several words is one argument; quote it: "
     "--prompt 'once upon'\n"),
    # train.py has no --prompt: its unknown --prompt is sample.py's, not a story to quote
    ("train.py", [ModelArgs, TrainArgs], ["--prompt", "once", "upon"],
     "error: unknown option --prompt (sample.py's option, not train.py's); see"),
])
def test_what_is_named_of_stray_words_beside_an_unknown_option(prog, classes, argv, message, capsys):
    """Bugs caught: an unknown option after an unquoted prompt taken for one of its words; train.py
    --prompt once upon told to quote the prompt of an option it does not have (Parser.unquoted without
    its check)."""
    with pytest.raises(SystemExit) as e:
        config.parse_args(classes, argv, prog=prog)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_argparses_own_unrecognized_arguments_name_the_options_alone(capsys):
    """Bug caught: Parser.error given argparse's "unrecognized arguments" (parse_intermixed_args and
    argparse's other parse methods) naming every word, a negative number (a value) too."""
    parser = config.Parser(prog="sample.py")
    parser.add_argument("--dim")
    with pytest.raises(SystemExit) as e:
        parser.parse_intermixed_args(["--foo", "-1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: unknown option --foo; see" in err and "-1" not in err, err


def test_a_lone_dash_beside_an_unknown_option_is_not_named(capsys):
    """Bug caught: _option_words keeping a lone - (a value: standard input), so that --foo - named it
    too: "--foo (did you mean --hf?), - (did you mean -h?)". (--foo is near no option now.)"""
    with pytest.raises(SystemExit):
        config.parse_args([SampleArgs], ["--foo", "-"], prog="sample.py")
    err = capsys.readouterr().err
    assert err == "sample.py: error: unknown option --foo; see --help for the list\n", err


def test_an_unquoted_story_is_one_clause_not_one_per_word(capsys):
    """Bug caught: `sample.py --ckpt X once upon a time` said "unknown option once (options take the
    form --name value; is --prompt missing before it?), upon (options take ...), a (...), time (...)":
    the words are now named once, with the story quoted as it should be typed."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([SampleArgs], ["--ckpt", "X", "once", "upon", "a", "time"], prog="sample.py")
    assert e.value.code == 2 and capsys.readouterr().err == (
        "sample.py: error: unknown words once upon a time (options take the form --name value; is --prompt "
        "missing before them? quote the story: --prompt 'once upon a time'); see --help for the list\n")
    with pytest.raises(SystemExit):  # a script without --prompt: a missing --name, once
        config.parse_args([ModelArgs], ["foo", "bar"], prog="train.py")
    assert capsys.readouterr().err == (
        "train.py: error: unknown words foo bar (options take the form --name value; is a --name missing "
        "before them?); see --help for the list\n")


def test_an_option_a_script_refuses_to_pass_through_says_why(capsys):
    """Bug caught: compare.py said "--resume is set by compare.py for every run" of options it does not
    set (--resume, --init_from: every run starts from scratch) and did not point --max_minutes to its
    own --minutes. check_pass_through now takes each option's reason and fix."""
    p = config.Parser(prog="compare.py")
    with pytest.raises(SystemExit) as e:
        config.check_pass_through(p, ["--dim", "64", "--max_minutes=3"],
                                  owned={"max_minutes": "use --minutes"})
    assert e.value.code == 2 and capsys.readouterr().err == \
        "compare.py: error: --max_minutes cannot be passed through to train.py: use --minutes\n"
    config.check_pass_through(p, ["--dim", "64"], owned={"max_minutes": "use --minutes"})


def test_a_shell_expanded_glob_beside_stray_words_keeps_its_own_hint(tmp_path, capsys):
    """Bug caught: the files of a glob the shell expanded (`--data corpus/*.txt`) counted among the
    stray words of an unquoted story, so that "unknown words a.txt foo bar" lost the hint to quote the
    glob; or the stray words' clause put before the options' (the order the words were typed)."""
    stray = tmp_path / "a.txt"
    stray.write_text("a\n")
    with pytest.raises(SystemExit) as e:
        config.parse_args([ModelArgs, TrainArgs], ["--data", str(tmp_path / "b.txt"), str(stray), "foo",
                                                   "bar"], prog="train.py")
    assert e.value.code == 2 and capsys.readouterr().err == (
        f"train.py: error: unknown option {stray} (a second file? --data and --val_data take one file, "
        "folder or glob: quote a glob, --data 'corpus/*.txt', so that the shell leaves it to us); unknown "
        "words foo bar (options take the form --name value; is a --name missing before them?); see --help "
        "for the list\n")


def test_one_stray_word_is_named_once(capsys):
    """Bug caught: a single stray word (`sample.py --ckpt X once`) named twice, as an unknown option and
    again as the unknown words of a story: the one-clause form is for several words only."""
    with pytest.raises(SystemExit) as e:
        config.parse_args([SampleArgs], ["--ckpt", "X", "once"], prog="sample.py")
    assert e.value.code == 2 and capsys.readouterr().err == (
        "sample.py: error: unknown option once (options take the form --name value; is --prompt missing "
        "before it?); see --help for the list\n")


def test_an_invalid_choice_names_the_nearest_one(capsys):
    """Bug caught: `--preset debg` or `--dtype bf16` answered with argparse's list alone ("invalid choice:
    'debg' (choose from ...)"), where an unknown option gets "did you mean"; a value near none gets none."""
    for argv, hint in ((["--preset", "debg"], "; did you mean --preset debug?"),
                       (["--compile_mode", "reduce"], "; did you mean --compile_mode reduce-overhead?"),
                       (["--compile_mode", "xyz"], "")):
        with pytest.raises(SystemExit) as e:
            config.parse_args([config.ModelArgs, config.TrainArgs], argv, prog="train.py")
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"error: {argv[0]}: '{argv[1]}' is not one of " in err, err
        assert err.count("\n") == 1 and err.rstrip("\n").endswith(hint or "max-autotune-no-cudagraphs"), err


def test_transformers_default_rope_type_is_told_our_none(capsys):
    """Bug caught: `--rope_scaling default` (transformers' rope_type for no scaling) got argparse's bare
    "invalid choice: 'default' (choose from 'none', 'llama3')", with no way on; a checkpoint's settings
    that say it were told only that it is not a choice."""
    fix = "'default' is not one of none, llama3; transformers' default is our none: --rope_scaling none"
    for value in ("default", "Default"):
        with pytest.raises(SystemExit) as e:
            config.parse_args([ModelArgs, TrainArgs], ["--rope_scaling", value], prog="train.py")
        said = fix.replace("default", value, 1)
        assert e.value.code == 2 and capsys.readouterr().err == f"train.py: error: --rope_scaling: {said}\n"
    with pytest.raises(ConfigError, match=f"^--rope_scaling: {fix}$"):
        config.from_dict(ModelArgs, {"rope_scaling": "default"})


def test_an_option_without_its_value_says_how_to_type_a_value_that_starts_with_a_dash(capsys):
    """Bug caught: `--run -x` (or `--prompt` last) got argparse's bare "expected one argument", with no
    way on: a value that starts with '-' is taken for an option unless typed `--run=-x`."""
    for argv in (["--run", "-x"], ["--max_steps"]):
        with pytest.raises(SystemExit) as e:
            config.parse_args([config.ModelArgs, config.TrainArgs], argv, prog="train.py")
        option = argv[0]
        assert e.value.code == 2 and capsys.readouterr().err == (
            f"train.py: error: argument {option}: expected one argument; give it a value ({option}=VALUE "
            "where the value starts with '-')\n")
    _, (_, train_args) = config.parse_args([config.ModelArgs, config.TrainArgs], ["--run=-x"])
    assert train_args.run == "-x"


def test_a_tilde_the_shell_left_in_any_path_option_is_the_home_folder(tmp_path, monkeypatch):
    """Bug caught: --out_dir=~/runs (bash expands no ~ after =) or a quoted '~/cache' made a folder
    named ~ in the working directory, while --data '~/x.txt' read the home folder's file: every path
    option of train.py and sample.py now reads ~ as the home folder; one named ~ there is kept."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    home = str(tmp_path / "home")
    t = config.parse_args([ModelArgs, TrainArgs], ["--out_dir=~/runs", "--cache_dir", "~/cache", "--data",
                                                   "~/x.txt", "--tokenizer", "~/t.json"])[1][1]
    assert (t.out_dir, t.cache_dir, t.data, t.tokenizer) == (f"{home}/runs", f"{home}/cache", f"{home}/x.txt",
                                                             f"{home}/t.json")
    s = config.parse_args([SampleArgs], ["--hf", "~/hf", "--prompt_file", "-", "--image", "~"])[1][0]
    assert (s.hf, s.prompt_file, s.image) == (f"{home}/hf", "-", home)
    (tmp_path / "~").mkdir()  # (a folder so named, in the working directory: as typed)
    assert TrainArgs(out_dir="~/runs").out_dir == "~/runs"


def test_a_tilde_in_a_path_option_is_the_home_folder_in_settings_left_unchecked(tmp_path, monkeypatch):
    """Bug caught: `--resume --run r --out_dir '~/runs' --lr 1e-5` (a range error against the preset's
    --min_lr, left for the checkpoint's settings to settle) kept --out_dir as typed: the run was looked
    for under a folder named ~ ("there is no run r under --out_dir ~/runs/"), while the same line
    without --lr found it."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    argv = ["--resume", "--run", "r", "--out_dir", "~/runs", "--tokenizer", "~/t.json", "--lr", "1e-5"]
    t = config.parse_args([ModelArgs, TrainArgs], argv, checked_later=lambda ns: True)[1][1]
    assert (t.out_dir, t.tokenizer, t.lr) == (f"{tmp_path}/home/runs", f"{tmp_path}/home/t.json", 1e-5)


@pytest.mark.parametrize("prog, classes, typed, hint", [
    ("sample.py", [SampleArgs], ["RUN"], "RUN (a checkpoint? pass it as --ckpt)"),
    ("train.py", [ModelArgs, TrainArgs], ["RUN/last.pt", "--eval_only"],
     "RUN/last.pt (a checkpoint? pass it as --resume or --init_from)"),
    ("compare.py", [ModelArgs, TrainArgs], ["RUN", "RUN2"], "RUN and 1 more (a run? this command takes none; "
     "scripts/plot_runs.py overlays"),
    ("sample.py", [SampleArgs], ["HF"], "HF (a Hugging Face folder? pass it as --hf)"),
    # Bug caught: the option typed already was offered again (train.py --resume A B: "pass it as --resume")
    ("sample.py", [SampleArgs], ["--ckpt", "RUN", "RUN2"],
     "RUN2 (a second checkpoint? --ckpt takes one; pass one alone)"),
    ("train.py", [ModelArgs, TrainArgs], ["--resume", "RUN", "RUN2"], "RUN2 (a second checkpoint? --resume "
     "takes one; pass one alone)")])
def test_a_checkpoint_typed_without_its_option_names_the_option(tmp_path, capsys, prog, classes, typed, hint):
    """Bug caught: `sample.py checkpoints/demo` was told to put --prompt before the path, and `train.py
    checkpoints/demo/last.pt --eval_only` (or compare.py given two runs) that --data takes one file."""
    for run in ("RUN", "RUN2"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "last.pt").write_bytes(b"x")
        (tmp_path / run / "metrics.jsonl").write_text("")
    (tmp_path / "HF").mkdir()
    (tmp_path / "HF" / "config.json").write_text("{}")
    argv = [str(tmp_path / w) if w[0].isupper() else w for w in typed]
    with pytest.raises(SystemExit) as e:
        config.parse_args(classes, argv, prog=prog)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"unknown option {tmp_path}/{hint}" in err, err


@pytest.mark.parametrize("text", ["", "y", "n", "2", "-1", "none", "truee"])
def test_a_flag_refuses_any_other_word(text):
    """Mutation caught: parse_bool taking a word beyond 1/true/yes/on and 0/false/no/off ("y", or an
    empty $VAR as false): a typo or an unset variable was a setting, silently."""
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected true or false, got "):
        config.parse_bool(text)


def test_a_non_ascii_cache_dir_outside_a_utf8_locale_is_one_line_before_any_work(tmp_path):
    """Bug caught: the datasets cache of local text is read by pyarrow, which opens files by the
    UTF-8 of their names: under LC_ALL=C without Python's UTF-8 mode a non-ASCII --cache_dir was a
    UnicodeEncodeError's traceback after the text was read (and under a Latin-1 locale "the datasets
    cache ... is damaged; delete that folder", which the next run met again)."""
    (tmp_path / "t.txt").write_text("once upon a time there was a cat.\n\n" * 200)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    args = [sys.executable, "train.py", "--preset", "debug", "--data", str(tmp_path / "t.txt"),
            "--cache_dir", str(tmp_path / "cäche"), "--out_dir", str(tmp_path / "out"), "--max_steps", "1",
            "--wandb_mode", "disabled"]
    out = subprocess.run([a.encode() for a in args], cwd=ROOT, env=env, capture_output=True, timeout=120)
    err = out.stderr.decode(errors="replace")
    assert out.returncode == 2, err
    assert err.strip().count("\n") == 0 and "--cache_dir" in err and "LC_ALL=C.UTF-8" in err, err
    assert not (tmp_path / "out").exists()


def test_a_utf8_prompt_in_a_c_locale_is_told_the_locale_not_that_it_is_not_utf8():
    """Bug caught: under LC_ALL=C without Python's UTF-8 mode, `--prompt "Café"` (UTF-8 bytes, as a
    UTF-8 terminal sends them) was refused as "is not UTF-8 text (byte 0xc3)": the text is UTF-8, the
    locale is not, and "set the terminal to UTF-8" was a fix for the wrong thing."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = subprocess.run([sys.executable.encode(), b"sample.py", b"--prompt", "Café ☕".encode()], cwd=ROOT,
                         env=env, capture_output=True, timeout=120)
    err = out.stderr.decode(errors="replace")
    assert out.returncode == 2, err
    assert err.strip().count("\n") == 0 and "is UTF-8 text" in err and "LC_ALL=C.UTF-8" in err, err
