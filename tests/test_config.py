"""Settings: presets, JSON round trip, command-line overrides and their errors."""

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
    (["--run", "../escape"], "--run: '../escape' is not a plain name: a run is the folder <out_dir>/<run>"),
    (["--run", "a/b"], "--run: 'a/b' is not a plain name"),
    (["--out_dir", ""], "--out_dir: must name a folder, got ''"),  # (the run went into the current directory)
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
     "head_dim = dim / n_heads = 5 must be even for RoPE; use an even --dim"),
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
    (["--min_lr", "1"], "--min_lr: 1 is above --lr 0.0006; pass a --min_lr at most --lr"),
    (["--weight_decay", "2000"],  # (once accepted: AdamW multiplied every matrix by 1 - 1.2 each step)
     "--weight_decay: 2000 x --lr 0.0006 is at least 1: AdamW would zero or flip the sign of every matrix"),
    (["--rope_scaling", "yarn"], "--rope_scaling: invalid choice"),
    (["--preset", "huge"], "--preset: invalid choice"),
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


@pytest.mark.parametrize("typed, meant", [("--temp", "--temperature"),  # (once: "did you mean --help?")
                                          ("--prompt-f", "--prompt_file")])  # (once: --prompt)
def test_an_unknown_option_names_the_only_option_it_begins(capsys, typed, meant):
    with pytest.raises(SystemExit) as e:
        config.parse_args([SampleArgs], [typed, "0.5"], prog="sample.py")
    assert e.value.code == 2 and f"{typed} (did you mean {meant}?)" in capsys.readouterr().err


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
