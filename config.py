"""Settings: the dataclasses that describe a model, a training run and a sampling run, their
named presets, and the one command-line layer that every entry point shares.

    ModelArgs           the architecture (Llama 4 text decoder + the vision stub)
    TrainArgs           everything about a training run (data, optimisation, schedule, logging ...)
    SampleArgs          everything about sampling stories from a checkpoint
    PRESETS, preset     named starting points: scout-128m (default), tiny, debug (tests), scout-17b-16e,
                        maverick-17b-128e
    to_dict, from_dict  settings as plain data, as checkpoints carry them
    parse_args          `--preset NAME` then `--field value` for any field of the dataclasses asked for
    Parser              argparse with one-line errors that name what was meant; every script uses it
    switch, number, at_least, check_pass_through, refuse_training_settings
                        the scripts' own options, read and refused as train.py's are

How this departs from the obvious version:
- Each field carries its help text in its metadata, and every ModelArgs field names the
  transformers `Llama4TextConfig` / `Llama4VisionConfig` field it maps to (`hf=`, or `hf=None`
  for what this project adds), so `--help`, the Hugging Face export and this file cannot drift.
- Values are checked in `__post_init__`, so a bad preset, a bad command-line override and a bad
  checkpoint JSON all fail the same way: a ConfigError naming the field and the fix.
- Settings travel with checkpoints as plain data (`to_dict` / `from_dict`, exact round trip).
"""

import argparse
import dataclasses
import difflib
import math
import os
import re
import shlex
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import storage
from errors import ConfigError, drop_output, main_rank, stdout_failed

# ---------------------------------------------------------------------------------------------
# Fields and their checks, shared by the dataclasses below


def arg(default, help, *, hf=None, choices=None, const=None):
    """A dataclass field with its help text; `hf` is the transformers config field it maps to."""
    meta = {"help": help, "hf": hf, "choices": choices, "const": const}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# the path fields of each class, whose ~ is the home folder (_expand_home)
PATH_FIELDS = {"TrainArgs": ("data", "val_data", "hf_dataset", "tokenizer", "cache_dir", "out_dir", "resume",
                             "init_from"),
               "SampleArgs": ("ckpt", "hf", "prompt_file", "image")}


def _expand_home(obj) -> None:
    """A path field's ~ that the shell left (quoted, or after = as in --out_dir=~/runs) made the home
    folder, as the shell would have: --out_dir made a folder named ~ in the working directory. Run
    by __post_init__, and by parse_args on settings it leaves unchecked (a resume's: its --out_dir
    is looked in before the checkpoint's settings are)."""
    for name in PATH_FIELDS.get(type(obj).__name__, ()):
        setattr(obj, name, storage.expand_home(getattr(obj, name)))


def _check(ok, name, problem):
    if not ok:
        raise ConfigError(f"--{name}: {problem}")


def _in_range(obj, name, ok, rule):
    """A range check (ok = the value of field `name` is `rule`) whose fix is the field's default
    (parse_args puts the preset's in: --preset debug --vocab_size 0 named the class's 32768)."""
    if not ok:
        value = getattr(obj, name)
        e = ConfigError(range_error(name, value, rule, next(f.default for f in dataclasses.fields(obj)
                                                             if f.name == name)))
        e.out_of_range = name, value, rule
        raise e


# What a range error adds where 0 means something in a neighbouring option (--max_minutes 0: no limit)
ZERO_NOTES = {"max_steps": "0 is not 'no limit' here, as it is for --max_minutes: to stop on time alone, "
                           "give --max_minutes and a --max_steps the run will not reach; to score a "
                           "checkpoint without training, --eval_only"}


def range_error(name, value, rule, fix, whose: str = "the default") -> str:
    """A range check's message: --name must be rule, got value (a note where 0 means something
    elsewhere: ZERO_NOTES); e.g. --name fix (whose value it is)."""
    fix = fix if isinstance(fix, int) else f"{fix:g}"
    note = f" ({ZERO_NOTES[name]})" if value == 0 and name in ZERO_NOTES else ""
    return f"--{name}: must be {rule}, got {value}{note}; e.g. --{name} {fix} ({whose})"


def whose_value(preset: str, cls, name: str) -> str:
    """Whose an untyped setting's value is, for range_error: the preset's where it sets it, else the
    default's."""
    return f"the {preset} preset's" if name in PRESETS.get(preset, {}).get(cls.__name__, {}) \
        else "the default"


def _check_utf8(name, text, fix):
    """Bytes that are not UTF-8 reach sys.argv as lone surrogates (U+DC80 + byte): refuse them here,
    before they reach a file name, a plot or W&B."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(text[e.start]) & 0xff
        try:  # UTF-8 bytes that a locale of another encoding (C without Python's UTF-8 mode) did not read
            utf8 = os.fsencode(text).decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            raise ConfigError(f"--{name}: {utf8[:40]!r} is UTF-8 text that this locale's encoding "
                              f"({sys.getfilesystemencoding()}) does not read; run with LC_ALL=C.UTF-8 "
                              "(or PYTHONUTF8=1)") from None
        raise ConfigError(f"--{name}: {text[:40]!r} is not UTF-8 text (byte {byte:#x} from the command "
                          f"line); {fix}") from None


def _divisors(n: int, near: int, ok=lambda d: True, count=6) -> str:
    """The fix for a count that must divide n: up to `count` divisors d of n with ok(d), those
    nearest `near`, as "a, b or c" ("" when none is ok)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    chosen = sorted(d for d in {*small, *(n // d for d in small)} if ok(d))
    chosen = sorted(sorted(chosen, key=lambda d: abs(d - near))[:count])
    return " or ".join(filter(None, [", ".join(map(str, chosen[:-1])), *map(str, chosen[-1:])]))


# a value typed for a choice that is another project's name for one of ours: (option, value) -> ours, why
CHOICE_SPELLINGS = {("--rope_scaling", "default"): ("none", "transformers' default is our none")}


def choice_problem(option: str, value, choices) -> str:
    """`'x' is not one of a, b` for a value that is not a choice of `option`, and the fix where one is
    clear: ours for another project's name of it (CHOICE_SPELLINGS), else the nearest choice. The
    command line (Parser) and settings read back (_check_choices) say the same."""
    text = f"{value!r} is not one of {', '.join(map(str, choices))}"
    if spelling := CHOICE_SPELLINGS.get((option, str(value).lower())):
        return f"{text}; {spelling[1]}: {option} {spelling[0]}"
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f"{text}; did you mean {option} {close[0]}?" if close else text


def _check_choices(obj):
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices is not None:
            value = getattr(obj, f.name)
            _check(value in choices, f.name, choice_problem(f"--{f.name}", value, choices))


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class ModelArgs:
    # --- text decoder (transformers Llama4TextConfig) ---
    vocab_size: int = arg(32768, "vocabulary size, special tokens included", hf="vocab_size")
    dim: int = arg(512, "model width", hf="hidden_size")
    n_layers: int = arg(6, "number of decoder blocks", hf="num_hidden_layers")
    n_heads: int = arg(8, "query heads; head_dim = dim // n_heads", hf="num_attention_heads")
    n_kv_heads: int = arg(2, "key/value heads (GQA); must divide n_heads", hf="num_key_value_heads")
    expert_dim: int = arg(576, "hidden width of each routed expert and of the shared expert",
                          hf="intermediate_size")
    mlp_dim: int = arg(1152, "hidden width of the dense SwiGLU layers (the non-MoE layers)",
                       hf="intermediate_size_mlp")
    n_experts: int = arg(16, "routed experts per MoE layer (plus one shared expert)",
                         hf="num_local_experts")
    top_k: int = arg(1, "routed experts per token", hf="num_experts_per_tok")
    moe_every: int = arg(1, "every moe_every-th layer is MoE (layers moe_every-1, 2*moe_every-1, "
                            "...); the rest are dense. Scout 1, Maverick 2; above n_layers, a dense model",
                         hf="interleave_moe_layer_step")
    nope_every: int = arg(4, "every nope_every-th layer (3, 7, ... for 4) has no RoPE and attends "
                             "to the whole context; the others use RoPE and chunked attention",
                          hf="no_rope_layer_interval")
    max_seq_len: int = arg(256, "longest sequence the model accepts (the training context)",
                           hf="max_position_embeddings")
    rope_theta: float = arg(500000.0, "RoPE base", hf="rope_parameters.rope_theta")
    rope_scaling: str = arg("none", "RoPE frequency scaling", hf="rope_parameters.rope_type",
                            choices=["none", "llama3"])
    rope_factor: float = arg(8.0, "llama3 RoPE scaling: factor", hf="rope_parameters.factor")
    rope_low_freq_factor: float = arg(1.0, "llama3 RoPE scaling: low_freq_factor",
                                      hf="rope_parameters.low_freq_factor")
    rope_high_freq_factor: float = arg(4.0, "llama3 RoPE scaling: high_freq_factor",
                                       hf="rope_parameters.high_freq_factor")
    rope_original_max_seq_len: int = arg(8192, "llama3 RoPE scaling: original context",
                                         hf="rope_parameters.original_max_position_embeddings")
    qk_norm: bool = arg(True, "weightless RMS norm of q and k on RoPE layers", hf="use_qk_norm")
    attn_chunk_size: int = arg(64, "RoPE layers attend within aligned chunks of this many tokens",
                               hf="attention_chunk_size")
    attn_temperature_tuning: bool = arg(True, "scale q on NoPE layers by "
                                              "1 + attn_scale * log(1 + floor((p + 1) / floor_scale))",
                                        hf="attn_temperature_tuning")
    attn_floor_scale: int = arg(64, "temperature tuning: positions per step", hf="floor_scale")
    attn_scale: float = arg(0.1, "temperature tuning: strength", hf="attn_scale")
    norm_eps: float = arg(1e-5, "RMSNorm epsilon (QK norm included)", hf="rms_norm_eps")
    init_std: float = arg(0.02, "std of the normal weight init", hf="initializer_range")
    # --- routing in training (off in eval): the noise and the z-loss are ours, the aux weight HF's ---
    router_noise: bool = arg(True, "noisy top-k gating during training (learned noise scale)")
    router_aux_loss_coef: float = arg(0.001, "weight of the switch load-balancing loss",
                                      hf="router_aux_loss_coef")
    router_z_loss_coef: float = arg(0.0, "weight of the router z-loss (0 = off)")
    # --- special token ids: the tokenizer's (0..7 in one trained here; tokenizer.check_tokenizer) ---
    eos_id: int = arg(0, "<|endoftext|>: document separator, also the start of every story",
                      hf="eos_token_id")
    pad_id: int = arg(1, "<|pad|>: padding for batched sampling", hf="pad_token_id")
    image_start_id: int = arg(2, "<|image_start|>", hf="boi_token_index")
    image_end_id: int = arg(3, "<|image_end|>", hf="eoi_token_index")
    image_id: int = arg(4, "<|image|>: marks the global image view")
    patch_id: int = arg(5, "<|patch|>: one per image feature; features replace these embeddings",
                        hf="image_token_index")
    tile_x_id: int = arg(6, "<|tile_x_separator|>")
    tile_y_id: int = arg(7, "<|tile_y_separator|>")
    # --- the vision stub (transformers Llama4VisionConfig) ---
    vision: bool = arg(False, "build the vision encoder and projector (the multimodal stub)")
    vision_dim: int = arg(128, "vision encoder width", hf="vision.hidden_size")
    vision_layers: int = arg(2, "vision encoder layers", hf="vision.num_hidden_layers")
    vision_heads: int = arg(4, "vision encoder heads", hf="vision.num_attention_heads")
    vision_mlp_dim: int = arg(512, "vision encoder MLP width; must equal vision_dim / ratio^2",
                              hf="vision.intermediate_size")
    image_size: int = arg(112, "image side in pixels (one tile)", hf="vision.image_size")
    patch_size: int = arg(14, "patch side in pixels", hf="vision.patch_size")
    pixel_shuffle_ratio: float = arg(0.5, "pixel shuffle ratio", hf="vision.pixel_shuffle_ratio")
    projector_input_dim: int = arg(256, "vision adapter hidden width (= projector_output_dim)",
                                   hf="vision.projector_input_dim")
    projector_output_dim: int = arg(256, "vision adapter output width (= vision_output_dim)",
                                    hf="vision.projector_output_dim")
    vision_rope_theta: float = arg(10000.0, "vision 2D RoPE base",
                                   hf="vision.rope_parameters.rope_theta")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def image_tokens(self) -> int:
        """Number of <|patch|> tokens (and features) per image tile."""
        return (self.image_size // self.patch_size // round(1 / self.pixel_shuffle_ratio)) ** 2

    def is_moe_layer(self, i: int) -> bool:
        return (i + 1) % self.moe_every == 0

    @property
    def n_moe_layers(self) -> int:
        """How many layers is_moe_layer answers yes for (moe_every - 1, 2 * moe_every - 1, ...), counted
        rather than asked of each layer (a loop took minutes at --n_layers 2000000000)."""
        return self.n_layers // self.moe_every

    @property
    def is_dense(self) -> bool:
        """No MoE layer at all (moe_every > n_layers): every feed-forward is a dense SwiGLU."""
        return self.moe_every > self.n_layers  # the first MoE layer is layer moe_every - 1

    def dense_twin(self) -> "ModelArgs":
        """The dense model with the same active parameters per token (routers aside): no MoE
        layer, SwiGLU layers as wide as the shared expert plus the top_k routed experts. Only
        with moe_every 1: it widens every layer, the dense ones too (scripts/compare.py warns)."""
        return dataclasses.replace(self, moe_every=self.n_layers + 1,
                                   mlp_dim=(1 + self.top_k) * self.expert_dim)

    def uses_rope(self, i: int) -> bool:
        return (i + 1) % self.nope_every != 0

    @property
    def never_drawn(self) -> list[int]:
        """The special tokens no training target holds: all but <|endoftext|> (padding, and the image
        layout's, which only a prompt places). Their logits are what initialisation left, so an
        undertrained model would draw them, as "<|patch|>" in its story: sample.py never does, and
        an export's generation_config.json has transformers' generate suppress them too."""
        return sorted({getattr(self, name) for name in SPECIAL_TOKENS} - {self.eos_id})

    def __post_init__(self):
        _check_choices(self)
        for name in ["vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "expert_dim",
                     "mlp_dim", "n_experts", "top_k", "moe_every", "nope_every", "max_seq_len",
                     "attn_chunk_size", "attn_floor_scale", "rope_original_max_seq_len"]:
            _in_range(self, name, getattr(self, name) >= 1, "at least 1")
            _in_range(self, name, getattr(self, name) < 2**31, "below 2^31")
        for name in ["rope_theta", "norm_eps", "init_std", "rope_factor", "rope_low_freq_factor",
                     "rope_high_freq_factor", "vision_rope_theta"]:
            _in_range(self, name, getattr(self, name) > 0, "positive")
        for name in ["router_aux_loss_coef", "router_z_loss_coef", "attn_scale"]:
            _in_range(self, name, getattr(self, name) >= 0, ">= 0")
        if self.dim % self.n_heads or self.head_dim % 2:
            def even(d):  # n_heads = d gives an even head_dim
                return self.dim // d % 2 == 0
            heads = _divisors(self.dim, self.n_heads, lambda d: even(d) and d % self.n_kv_heads == 0)
            m = 2 * self.n_heads  # (an even dim alone may still leave an odd head_dim or a remainder)
            near = " or ".join(map(str, sorted({max(m, self.dim // m * m), (self.dim // m + 1) * m})))
            fix = (f"pick --n_heads {heads}" if heads
                   else f"use a --dim that is a multiple of 2 x n_heads ({near})")
            if not heads and (heads := _divisors(self.dim, self.n_heads, even)):  # none that n_kv_heads
                # divides: each would fail its check next (--dim 130: 1, 5, 13 or 65, n_kv_heads 2)
                fix = (f"pick --n_heads {heads}, each with --n_kv_heads 1 or another divisor of it "
                       f"({self.n_kv_heads} divides none)")
            _check(self.dim % self.n_heads == 0, "n_heads",
                   f"{self.n_heads} heads do not divide dim={self.dim}; {fix}")
            _check(False, "n_heads", f"head_dim = dim / n_heads = {self.head_dim} must be even for RoPE; "
                   f"{fix}")
        _check(self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
               f"{self.n_kv_heads} kv heads do not divide n_heads={self.n_heads}; pick --n_kv_heads "
               f"{_divisors(self.n_heads, self.n_kv_heads)}")
        _check(self.top_k <= self.n_experts, "top_k",
               f"top_k={self.top_k} is larger than n_experts={self.n_experts}; lower --top_k to at most "
               f"{self.n_experts}, or raise --n_experts")
        _check(self.rope_high_freq_factor >= self.rope_low_freq_factor, "rope_high_freq_factor",
               f"{self.rope_high_freq_factor:g} is below rope_low_freq_factor={self.rope_low_freq_factor:g}; "
               "raise it or lower --rope_low_freq_factor")
        self._check_special_ids()
        if self.vision:
            self._check_vision()

    def _check_special_ids(self):
        ids = {n: getattr(self, n) for n in SPECIAL_TOKENS}
        for name, value in ids.items():  # (-1: "or a --vocab_size above -1" was no fix)
            fix = (f"an id below {self.vocab_size}, or a --vocab_size above {value}" if value >= 0 else
                   f"an id from 0 to {self.vocab_size - 1}")
            _check(0 <= value < self.vocab_size, name,
                   f"token id {value} is outside the vocabulary [0, {self.vocab_size}); give {fix}")
        for name, value in ids.items():
            first = next(n for n, v in ids.items() if v == value)
            _check(first == name, first, f"{value} is also --{name}'s id; give each special token an id of "
                   "its own")

    def _check_vision(self):
        for name in ["vision_dim", "vision_layers", "vision_heads", "image_size", "patch_size",
                     "projector_input_dim", "projector_output_dim"]:
            _in_range(self, name, getattr(self, name) >= 1, "at least 1")
            _in_range(self, name, getattr(self, name) < 2**31, "below 2^31")
        if self.vision_dim % self.vision_heads or self.vision_dim // self.vision_heads % 4:
            heads = _divisors(self.vision_dim, self.vision_heads, lambda d: self.vision_dim // d % 4 == 0)
            fix = f"pick --vision_heads {heads}" if heads else "use a --vision_dim that is a multiple of 4"
            _check(self.vision_dim % self.vision_heads == 0, "vision_heads",
                   f"{self.vision_heads} heads do not divide vision_dim={self.vision_dim}; {fix}")
            _check(False, "vision_heads", "vision head dim = vision_dim / vision_heads = "
                   f"{self.vision_dim // self.vision_heads} must be a multiple of 4 for the 2D RoPE; {fix}")
        below = self.image_size // self.patch_size * self.patch_size
        _check(self.image_size % self.patch_size == 0, "image_size",
               f"{self.image_size} is not a multiple of patch_size={self.patch_size}; use "
               + (f"{below} or {below + self.patch_size}" if below else f"{self.patch_size}"))
        grid, ratio = self.image_size // self.patch_size, self.pixel_shuffle_ratio
        merge = round(1 / ratio) if ratio * grid >= 0.5 else 0  # patches merged along a side (0: none fit)
        dims = (self.vision_dim, self.projector_input_dim)
        fits = [d for d in range(1, min(grid, 8) + 1) if grid % d == 0 and _shuffles_exactly(d, grid, dims)]
        ratios = ", ".join(f"{1 / d:g}" for d in fits)
        exact = merge >= 1 and grid % merge == 0 and _shuffles_exactly(merge, grid, dims)
        _check(exact and abs(ratio - 1 / merge) <= 1e-6, "pixel_shuffle_ratio",
               f"the {grid}x{grid} patch grid cannot be shuffled by {ratio}; use one of {ratios} (1 / n "
               f"for an n that divides {grid}, and whose sizes transformers computes exactly), or change "
               "--image_size / --patch_size")
        # exactly 1 / n, as the advice's 6 digits (0.333333) are not: transformers' int(grid * ratio)
        # would truncate 24 x 0.333333 to 7
        self.pixel_shuffle_ratio = 1 / merge
        _check(self.projector_input_dim == self.projector_output_dim, "projector_input_dim",
               f"{self.projector_input_dim} must equal projector_output_dim="
               f"{self.projector_output_dim} (Llama 4's adapter feeds one into the other)")
        _check(self.vision_mlp_dim == self.vision_dim * merge**2, "vision_mlp_dim",
               f"must equal vision_dim / pixel_shuffle_ratio^2 = {self.vision_dim * merge**2} (Llama 4 "
               "shares it)")


def _shuffles_exactly(n: int, grid: int, dims) -> bool:
    """Whether transformers' pixel shuffle, which sizes by float products of the ratio 1/n
    (int(width * r), int(c / r), int(c / r**2), c // r**2), gets n's sizes exactly for a grid and
    channel counts `dims`: 1/5 does not ((1/5)**2 is 0.04000000000000001: one channel short)."""
    r = 1 / n
    return int(grid * r) == grid // n and all(
        int(c / r) == c * n and int(c / r**2) == c * n * n and c // r**2 == c * n * n for c in dims)


# Special-token fields, in the order the tokenizer reserves them (ids 0, 1, 2, ...).
SPECIAL_TOKENS = {
    "eos_id": "<|endoftext|>",
    "pad_id": "<|pad|>",
    "image_start_id": "<|image_start|>",
    "image_end_id": "<|image_end|>",
    "image_id": "<|image|>",
    "patch_id": "<|patch|>",
    "tile_x_id": "<|tile_x_separator|>",
    "tile_y_id": "<|tile_y_separator|>",
}


# ---------------------------------------------------------------------------------------------
# A training run


# torch.compile's modes, as --compile_mode takes them (train.py, scripts/bench_model.py and gpu_check.py),
# and those that replay CUDA graphs on CUDA
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass
class TrainArgs:
    # --- data ---
    data: str = arg("", "training text: a file, folder or glob (.txt, .jsonl, .json, .parquet, .arrow); "
                        "empty = TinyStories from the Hugging Face Hub")
    val_data: str = arg("", "validation text (same formats); empty = the hub's validation split, "
                            "or a held-out slice of --data")
    hf_dataset: str = arg("roneneldan/TinyStories", "dataset on the Hugging Face Hub")
    text_field: str = arg("text", "field holding the text in .jsonl / .json / .parquet / hub records")
    val_text_field: str = arg("", "field holding the text in --val_data's records (empty = --text_field's)")
    val_fraction: float = arg(0.01, "share of documents held out for validation when no "
                                    "validation source is given: 1 in round(1 / f), f at most 0.5")
    tokenizer: str = arg("", "tokenizer.json to use; empty = train one on the training text")
    cache_dir: str = arg("cache", "folder for tokenizers and token shards")
    num_proc: int = arg(0, "tokenizer worker threads (0 = one per CPU core); more than the CPU cores are "
                           "capped at the cores: the encoding is CPU-bound, and each thread holds a batch of "
                           "documents in memory")
    tokenizer_train_mb: float = arg(100.0, "MB of training text, from the start of the training "
                                           "split, that the BPE tokenizer is trained on (0 = all)")
    # --- batch and optimisation ---
    batch_size: int = arg(128, "sequences per micro-batch (per process); 128 x 256 tokens keeps a GPU "
                               "busy with scout-128m (use --grad_accum, not a bigger batch, past memory)")
    grad_accum: int = arg(1, "micro-batches per optimizer step (global batch is split over "
                             "processes)")
    max_steps: int = arg(5000, "optimizer steps")
    max_minutes: float = arg(0.0, "wall-clock budget in minutes; the schedule is laid over it and "
                                  "training stops when it is spent, then evaluates and saves (time "
                                  "beyond the budget; 0 = no budget)")
    lr: float = arg(6e-4, "peak learning rate")
    min_lr: float = arg(6e-5, "learning rate at the end of the cosine decay")
    warmup_steps: int = arg(100, "linear warmup steps")
    weight_decay: float = arg(0.1, "AdamW weight decay (matrices only)")
    beta1: float = arg(0.9, "AdamW beta1")
    beta2: float = arg(0.95, "AdamW beta2")
    grad_clip: float = arg(1.0, "clip the gradient norm to this (0 = off)")
    # --- precision and speed ---
    dtype: str = arg("auto", "compute dtype: auto = bfloat16 autocast on CUDA (sm80 and later), else float32",
                     choices=["auto", "float32", "bfloat16"])
    compile: str = arg("auto", "torch.compile the model: auto = on CUDA (eager where compiling is "
                               "unavailable, with a warning), true, false", choices=["auto", "true", "false"],
                        const="true")
    compile_mode: str = arg("default", "torch.compile mode when compiling: default, reduce-overhead "
                                       "(CUDA graphs), max-autotune (tuned kernels and CUDA graphs), "
                                       "max-autotune-no-cudagraphs; CUDA graphs take one micro-batch "
                                       "per process",
                            choices=list(COMPILE_MODES))
    grad_checkpoint: bool = arg(False, "activation checkpointing per block (less memory, more "
                                       "compute)")
    grad_checkpoint_layers: int = arg(0, "with --grad_checkpoint, recompute only the first N decoder layers "
                                         "(0 = all): each one recomputed saves about as much step memory "
                                         "and costs about as much time")
    # --- evaluation, logging, checkpoints ---
    eval_every: int = arg(250, "evaluate every N steps (and at the end)")
    eval_windows: int = arg(0, "cap on validation windows, taken from the start (0 = all)")
    eval_batch_size: int = arg(0, "validation windows per batch (0 = auto: the fewest batches of at most "
                                  "4 x --batch_size, evened out; with --grad_checkpoint 1 x, or one more "
                                  "than the layers not recomputed (4 x at most); evaluation keeps "
                                  "nothing for a backward pass, so its batches fit where training's do)")
    log_every: int = arg(10, "log train metrics every N steps")
    save_every: int = arg(500, "save a checkpoint every N steps (and at the end)")
    save_in_background: str = arg("auto", "write each checkpoint (and draw the plot) from a child process "
                                          "while training goes on (Linux): auto = on CUDA (on the CPU the "
                                          "steps' writes to the memory the child shares cost about what the "
                                          "save does: scripts/bench_save.py), true, false",
                                  choices=["auto", "true", "false"])
    max_bad_steps: int = arg(5, "stop after this many non-finite steps in a row")
    out_dir: str = arg("checkpoints", "folder holding run folders")
    run: str = arg("", "run name, the folder out_dir/<run>/ (empty = preset and time)")
    resume: str = arg("", "resume: a checkpoint file, a run folder or a run name (its last.pt), or "
                          "with no value the latest in the run folder", const="latest")
    init_from: str = arg("", "start a new run from a checkpoint's weights (a .pt file, a run folder or a run "
                             "name: its last.pt; or an import): its model settings and tokenizer, a fresh "
                             "optimizer and schedule from step 0, this command line's training settings")
    eval_only: bool = arg(False, "evaluate a checkpoint (--resume CKPT, or the run's latest) on the "
                                 "validation data, print one JSON line and exit; a flag: it takes no path")
    plot: str = arg("loss.png", "loss plot refreshed at each evaluation; a relative path is inside the "
                                "run folder (empty = none)")
    wandb_mode: str = arg("auto", "Weights & Biases: auto = the WANDB_MODE environment variable where set, "
                                  "else online when logged in, else offline",
                          choices=["auto", "online", "offline", "disabled"])
    wandb_project: str = arg("llama4-tinystories", "W&B project")
    wandb_group: str = arg("", "W&B group")
    wandb_name: str = arg("", "W&B run name (empty = the run name)")
    # --- machine ---
    device: str = arg("auto", "auto = cuda:0 when available, else cpu; or cpu, cuda, cuda:N")
    seed: int = arg(1337, "random seed")

    def __post_init__(self):
        _expand_home(self)
        _check_choices(self)
        for name in ["batch_size", "grad_accum", "max_steps", "eval_every", "log_every",
                     "save_every", "max_bad_steps"]:
            _in_range(self, name, getattr(self, name) >= 1, "at least 1")
        # (a count of micro-batches a step draws: 10**19 was an OverflowError traceback in train.build_job)
        _in_range(self, "grad_accum", self.grad_accum < 2**31, "below 2^31")
        for name in ["max_minutes", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip",
                     "eval_windows", "eval_batch_size", "num_proc", "tokenizer_train_mb",
                     "grad_checkpoint_layers"]:
            _in_range(self, name, getattr(self, name) >= 0, ">= 0")
        _check(self.min_lr <= self.lr, "min_lr", f"{self.min_lr:g} is above --lr {self.lr:g}; pass a "
               "--min_lr at most --lr (each preset sets its own, and a resumed run keeps its own)")
        if self.lr * self.weight_decay >= 1:  # AdamW scales the matrices by 1 - lr * weight_decay
            raise ConfigError(f"--weight_decay: {self.weight_decay:g} x --lr {self.lr:g} is at least 1: "
                              "AdamW would zero or flip the sign of every matrix at each step; pick a "
                              f"--weight_decay below 1 / lr = {1 / self.lr:g}")
        _in_range(self, "seed", 0 <= self.seed < 2 ** 63, "in [0, 2^63)")
        _in_range(self, "val_fraction", 1e-6 <= self.val_fraction <= 0.5,  # 1 in round(1 / f) documents
                  "in [1e-6, 0.5]")
        _check(self.val_data or not self.val_text_field, "val_text_field",
               f"{self.val_text_field!r} names the text field of --val_data's records, and there is no "
               "--val_data (--hf_dataset's validation split and a held-out slice use --text_field); pass "
               "--val_data FILE, or --val_text_field ''")
        for name in ["beta1", "beta2"]:
            _in_range(self, name, 0 <= getattr(self, name) < 1, "in [0, 1)")
        _check(self.cache_dir != "", "cache_dir", "must name a folder, got '' (the caches would go into the "
               "current directory); pass one (the default is cache), or . for the current directory")
        if (self.data or self.val_data) and (problem := storage.not_utf8_name("--cache_dir", self.cache_dir)):
            raise ConfigError(problem)  # (the datasets cache of local text, read by pyarrow)
        _check(self.text_field != "", "text_field", "must name the records' text field, got ''; pass one "
               "(the default is text)")  # (an unset variable: once refused at the first record)
        # (unset: the hub was asked for ''); --eval_only reads validation text alone: --val_data's
        local = "--val_data" if self.eval_only else "--data"
        _check(self.hf_dataset != "" or self.data or (self.eval_only and self.val_data), "hf_dataset",
               f"must name a dataset on the Hugging Face Hub, got '' (and there is no {local}); pass one "
               f"(the default is {TrainArgs.hf_dataset}), or {local} FILE")
        _check(wandb_project_ok(self.wandb_project), "wandb_project", f"{self.wandb_project!r} is no W&B "
               "project name (W&B refuses it: the run would go without W&B); pass 1 to 128 characters "
               f"without / \\ # ? % or : (the default is {TrainArgs.wandb_project})")
        check_run(self.run, self.out_dir)


def check_run(run: str, out_dir: str) -> None:
    """--run must be a plain name (../x wrote into the source tree) and --out_dir a folder ("" put the
    run in the current directory); train.py checks them first at --resume, where the other checks
    wait for the checkpoint's settings. A name longer than a file system takes is refused; one that
    is not UTF-8, or holds a control character, for a new folder only: one made outside train.py
    (`mkdir $'r\\xff'`) is the run's own, and resumes under it."""
    _check(out_dir != "", "out_dir", "must name a folder, got ''; pass one (the default is checkpoints), "
           "or . for the current directory")
    _check("/" not in run and run not in (".", ".."), "run",
           f"{run!r} is not a plain name: a run is the folder <out_dir>/<run>; use --out_dir to put it "
           "elsewhere")
    for option, path in (("--run", run), ("--out_dir", out_dir)):
        if problem := storage.too_long(option, path):  # (a traceback, errno 36)
            raise ConfigError(problem)
    if not (Path(out_dir) / run).is_dir():
        _check_utf8("run", run, "set the terminal to UTF-8, or pick a name in plain ASCII")
        # (a newline split the log's lines; a tab was a raw matplotlib warning)
        _check(not any(ord(c) < 32 or ord(c) == 127 for c in run), "run",
               f"{run!r} holds a control character (a tab, a newline, ...); pick a name without one")


def wandb_project_ok(name: str) -> bool:
    """Whether W&B takes `name` as a project: one to 128 characters, none of / \\ # ? % :."""
    return 0 < len(name) <= 128 and not set(name) & set("/\\#?%:")


# ---------------------------------------------------------------------------------------------
# A sampling run


@dataclass
class SampleArgs:
    ckpt: str = arg("", "checkpoint file or run folder (empty = the most recent run in "
                        "checkpoints/)")
    hf: str = arg("", "load an exported Hugging Face folder instead of a checkpoint")
    prompt: list[str] = arg([], "story opening; repeat for several prompts")
    prompt_file: str = arg("", "file with one prompt per line (-: standard input)")
    num_samples: int = arg(1, "samples per prompt")
    max_new_tokens: int = arg(256, "tokens to generate at most (stops early at <|endoftext|>)")
    temperature: float = arg(0.8, "softmax temperature")
    top_k: int = arg(0, "keep the k most likely tokens (0 = off)")
    top_p: float = arg(1.0, "keep the smallest set of tokens whose mass reaches p (1 = off)")
    greedy: bool = arg(False, "always take the most likely token")
    no_cache: bool = arg(False, "recompute the whole sequence each step (reference path)")
    dtype: str = arg("auto", "weights and compute: auto = bfloat16 on CUDA (sm80 and later), else "
                             "float32 (the RoPE tables stay float32)",
                     choices=["auto", "float32", "bfloat16"])
    compile: str = arg("auto", "torch.compile the cached one-token decode step (CUDA graphs on "
                               "CUDA); auto = on for CUDA, off on CPU; eager with a warning if "
                               "compiling fails", choices=["auto", "true", "false"], const="true")
    image: str = arg("", "PNG/JPEG to show the vision stub; an untrained vision tower makes the "
                         "text meaningless")
    device: str = arg("auto", "auto = cuda:0 when available, else cpu; or cpu, cuda, cuda:N")
    seed: int = arg(1337, "random seed: row r of the batch samples with seed + r, below 2^32")

    def __post_init__(self):
        _expand_home(self)
        _in_range(self, "num_samples", self.num_samples >= 1, "at least 1")
        _in_range(self, "num_samples", self.num_samples < 2**31, "below 2^31")  # (a row count: a traceback)
        _in_range(self, "max_new_tokens", self.max_new_tokens >= 1, "at least 1")
        _check(self.temperature > 0 or self.greedy, "temperature", f"must be positive, got "
                                                                   f"{self.temperature} (use --greedy for "
                                                                   "argmax decoding)")
        _in_range(self, "top_k", self.top_k >= 0, ">= 0")
        _in_range(self, "top_p", 0 < self.top_p <= 1, "in (0, 1]")
        check_sample_seed(self, self.num_samples * max(len(self.prompt), 1))  # (sample.py: --prompt_file's)
        _check(not (self.ckpt and self.hf), "hf", "give --ckpt or --hf, not both")
        for text in self.prompt:
            _check_utf8("prompt", text, "set the terminal to UTF-8, or use a --prompt_file saved as UTF-8")


def check_sample_seed(sample_args: SampleArgs, rows: int) -> None:
    """Row r of a batch of `rows` samples draws with a generator seeded seed + r, and torch's CPU
    generator keeps only the low 32 bits of its seed (--seed 1 and 2^32 + 1 told the same stories):
    every row's seed must be below 2^32, on every device alike, so that a seed names one story."""
    rule = "in [0, 2^32)" if rows == 1 else f"in [0, 2^32 - {rows - 1}) for {rows} samples, row r drawing " \
                                             "with seed + r"
    _in_range(sample_args, "seed", 0 <= sample_args.seed < 2 ** 32 - (rows - 1),
              f"{rule} (torch's CPU generator keeps 32 bits of a seed)")


# ---------------------------------------------------------------------------------------------
# Presets: named starting points. Each maps dataclass name -> field overrides.

# What Scout and Maverick share: their text shape, the released tokenizer's token ids, no router noise,
# and the vision encoder. The two presets below add what differs.
_RELEASED = dict(vocab_size=202048, dim=5120, n_layers=48, n_heads=40, n_kv_heads=8, expert_dim=8192,
                 mlp_dim=16384, top_k=1, router_noise=False, attn_chunk_size=8192, attn_floor_scale=8192,
                 eos_id=200008, pad_id=200018, image_start_id=200080, image_end_id=200081,
                 image_id=200090, patch_id=200092, tile_x_id=200084, tile_y_id=200085, vision=True,
                 vision_dim=1408, vision_layers=34, vision_heads=16, vision_mlp_dim=5632, image_size=336,
                 patch_size=14, projector_input_dim=4096, projector_output_dim=4096)

PRESETS = {
    # The default: a scaled-down Scout, 127.8M parameters in total, 48.2M active per token
    # (14.7M without the two 16.8M embedding matrices; scripts/count_params.py prints the table).
    # 6 layers of (GQA attention + MoE of 16 routed experts + 1 shared), top-1 noisy routing.
    # Scout pairs a 8192-token attention chunk and temperature floor_scale with contexts of
    # 256K+; at our 256-token context the same ratio would switch both off, so both shrink
    # to 64: RoPE layers see aligned 64-token chunks (4 per window) and the NoPE layer's
    # temperature steps at positions 63, 127 and 191, as Scout's does at 8191, 16383, ...
    "scout-128m": {"ModelArgs": {}, "TrainArgs": {}},
    # CPU-sized: trains visibly in minutes on 2 cores (4.6M parameters, 1.7M active per token).
    # Chosen by scripts/sweep.py (img/sweep.md): of 18 candidate shapes, learning rates, schedules,
    # batches and vocabularies, this shape at lr 3e-3 reached the lowest validation bits/byte in 10
    # minutes on 2 cores. Wider, deeper or top-2 models do fewer steps and lose at that budget.
    # Weight decay 1.0: 10 minutes read train-lower.txt 7 times and the 16 experts memorise it;
    # of 0.1, 1.0 and 2.0 (two seeds each at 10 minutes), 1.0 validated best.
    # Evaluation covers all of --val_data, every 500 steps (about 2% of a 10-minute run).
    "tiny": {
        "ModelArgs": dict(vocab_size=4096, dim=128, n_layers=4, n_heads=4, n_kv_heads=2,
                          expert_dim=128, mlp_dim=256, max_seq_len=256),
        "TrainArgs": dict(batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=50, weight_decay=1.0,
                          eval_every=500),
    },
    # For tests and quick checks: every attention type in 4 layers (MoE on each, NoPE on layer 3;
    # tests of the dense SwiGLU layers set moe_every=2), chunks of 8 so that 64-token windows cross
    # chunk boundaries; init std 0.1 so that a wrong weight shows in the logits. Trains in seconds
    # on a CPU.
    "debug": {
        "ModelArgs": dict(vocab_size=320, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, expert_dim=32,
                          mlp_dim=64, n_experts=4, max_seq_len=64, attn_chunk_size=8, attn_floor_scale=4,
                          init_std=0.1),
        "TrainArgs": dict(batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=2, max_steps=8, eval_every=4,
                          save_every=4, log_every=1, eval_windows=4, wandb_mode="disabled"),
    },
    # The released shapes, for parameter counting on the meta device (scripts/count_params.py).
    "scout-17b-16e": {
        "ModelArgs": dict(**_RELEASED, n_experts=16, moe_every=1, max_seq_len=10485760, qk_norm=True,
                          rope_scaling="llama3", rope_factor=16.0, rope_low_freq_factor=1.0,
                          rope_high_freq_factor=1.0, rope_original_max_seq_len=8192),
        "TrainArgs": {},
    },
    "maverick-17b-128e": {
        "ModelArgs": dict(**_RELEASED, n_experts=128, moe_every=2, max_seq_len=1048576, qk_norm=False),
        "TrainArgs": {},
    },
}
DEFAULT_PRESET = "scout-128m"


def preset(name: str, cls):
    """The dataclass `cls` (ModelArgs or TrainArgs) as preset `name` sets it."""
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return cls(**PRESETS[name].get(cls.__name__, {}))


# ---------------------------------------------------------------------------------------------
# JSON: settings travel with checkpoints (storage.save_json writes them)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def from_dict(cls, d: dict, where: str = "settings"):
    """Rebuild a dataclass from JSON, refusing unknown fields and wrong types."""
    return cls(**typed_fields(cls, d, where))


def typed_fields(cls, d: dict, where: str = "settings") -> dict:
    """The fields of JSON `d` for dataclass `cls` (ints as floats where floats are due); a
    ConfigError for anything that is not a field of the right type. No range checks: cls() does
    those."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: should be a table of {cls.__name__} fields, got {type(d).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} field(s) {', '.join(unknown)}")
    values = {}
    for name, value in d.items():
        kind = _base_type(known[name].type)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is list:  # list[str]: a list of str, not of anything (["a", 3] reached the prompts)
            item = (typing.get_args(known[name].type) or (object,))[0]
            ok = isinstance(value, list) and all(isinstance(v, item) for v in value)
            kind = known[name].type
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            kind = kind if typing.get_origin(kind) else kind.__name__  # (list[str] says what it holds)
            raise ConfigError(f"{where}: {name} should be {kind}, got {value!r}")
        values[name] = value
    return values


# ---------------------------------------------------------------------------------------------
# The command line: `--preset NAME`, then `--field value` for any field


# Values as typed: each option's argparse type


def _base_type(tp):
    return list if tp is list or typing.get_origin(tp) is list else tp


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    path = "/" in text or text.endswith(".pt")  # (--eval_only checkpoints/x: the flag takes no path)
    hint = "; this flag takes no path: name a checkpoint with --resume" if path else ""
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}{hint}")


def switch(text: str) -> str:
    """A value of an auto/true/false option (--compile): what a bool flag takes for true or false (0, no,
    False, ...: --compile 0 was refused where --qk_norm 0 is not) as "true" or "false", any other word as
    typed (auto, or a mistake that its choices then name). The scripts' --compile options use it too."""
    try:
        return "true" if parse_bool(text) else "false"
    except argparse.ArgumentTypeError:
        return text


def _whole_number(text: str) -> int | None:
    """The integer a number written as a float stands for (256.0, 1e4), or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and abs(value) < 2**53 else None


def _number_hint(text: str, kind) -> str:
    """The fix for a number written as people write it, which Python does not read: a float for an int
    (--dim 256.0, --max_steps 1e4), thousands separators (5,000), a trailing comma (3e-4,), a decimal
    comma (0,001), a unit or suffix (10m, 5k); "" where none is clear (--dim 2.5). A fix
    it names is one the option reads (not "write 1,5" for --dim 1,5)."""
    def reads(word):
        try:
            value = kind(word)
        except ValueError:
            return False
        return kind is int or math.isfinite(value)  # (an int past a float's range: OverflowError)
    bare = text.strip()
    if kind is int and (whole := _whole_number(bare)) is not None:
        return f"; write {whole}"
    if kind is int and re.fullmatch(r"[+-]?[1-9]\d{0,2}(,\d{3})+", bare):
        return f"; write {bare.replace(',', '')}"
    if "," in bare:
        return f"; write {bare.rstrip(',')}" if reads(bare.rstrip(",")) else \
            "; write one number, without commas" + " (a decimal point is .)" * (kind is float)
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?\s*[a-z%]+", bare, re.IGNORECASE):
        return "; write the number alone, without a unit or suffix (--help says each option's unit)"
    return ""


def number(kind):
    """An argparse type for an int, float or text option (train.py's settings; compare.py --minutes,
    sweep.py --confirm): read as train.py's are, with the same one-line errors and fixes (5,000: write
    5000; 256.0 for an int: write 256; 10m: the number alone), and a float finite (nan and inf pass every
    range check)."""
    names = {int: "an integer", float: "a number", str: "text"}

    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {names[kind]}, got {text!r}"
                                             f"{_number_hint(text, kind)}") from None
        if kind is float and not math.isfinite(value):  # inf passes every range check
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return value
    convert.__name__ = kind.__name__
    return convert


def at_least(low: int):
    """An argparse type: a whole number of `low` or more (1: a count of repeats or tokens; 0: of
    warm-ups, which may be none), read as number(int) reads one."""
    def convert(text: str) -> int:
        value = number(int)(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number"
                                             + (" above 0" if low == 1 else f", {low} or more"))
        return value
    convert.__name__ = f"at_least_{low}"
    return convert


at_least_1 = at_least(1)


# Hints for an unknown option or a stray word: what was meant


# For an option typed to the wrong script (train.py --num_samples, sample.py --lr): whose it is, and
# where the other script names the same thing otherwise, how.
SCRIPT_FIELDS = {"train.py": ("ModelArgs", "TrainArgs"), "sample.py": ("SampleArgs",)}
OTHER_SPELLING = {("sample.py", "--run"): "name the run's folder: --ckpt checkpoints/RUN",
                  ("sample.py", "--resume"): "name a run's folder or checkpoint with --ckpt",
                  ("sample.py", "--out_dir"): "name a run's folder or checkpoint with --ckpt",
                  ("sample.py", "--preset"): "a checkpoint carries its model's settings",
                  ("train.py", "--ckpt"): "name a checkpoint with --resume PATH, and add --eval_only "
                                         "to evaluate it"}


def run_path_hint(word: str, prog: str, options, typed=()) -> str | None:
    """The hint for a checkpoint, run folder or exported HF folder typed without its option
    (`sample.py checkpoints/demo`, `train.py last.pt --eval_only`): the options of train.py or
    sample.py that take it (where one is `typed` already, that it takes one), or that the
    command takes none (compare.py and sweep.py know train.py's --resume, and refuse it); None for
    any other word."""
    path = os.path.expanduser(word)
    run = (path.endswith(".pt") and os.path.isfile(path)) or any(
        os.path.isfile(os.path.join(path, name)) for name in ("last.pt", "best.pt", "metrics.jsonl"))
    if not run and not os.path.isfile(os.path.join(path, "config.json")):
        return None
    takers = [o for o in (("--ckpt", "--resume", "--init_from") if run else ("--hf",))
              if o in options and prog in ("train.py", "sample.py")]
    what = "checkpoint" if run else "Hugging Face folder"
    if given := [t for t in takers if t in typed]:  # (sample.py --ckpt a b/last.pt)
        return f"a second {what}? {given[0]} takes one; pass one alone"
    if takers:
        return f"a {what}? pass it as {' or '.join(takers)}"
    if run:
        return "a run? this command takes none; scripts/plot_runs.py overlays the curves of runs trained"
    return ("a Hugging Face folder? sample.py takes it as --hf; scripts/export_hf.py --import makes a "
            "checkpoint of it")


def other_scripts_option(option: str, prog: str, options=()) -> str | None:
    """'sample.py's option, not train.py's' for train.py or sample.py given an option of the other
    (--num-samples and -num_samples too), with that script's spelling of the same thing, if it has
    one, and for a script that passes train.py's options through (compare.py, sweep.py: `options`
    holds them) given one of sample.py's; None for any other option or script (the scripts' own
    options are nearer: gpu_check.py --max_minutes is its --minutes)."""
    name = option.lstrip("-").replace("-", "_")
    if prog not in SCRIPT_FIELDS and "--lr" not in options:
        return None
    for script, classes in SCRIPT_FIELDS.items():
        fields = {f.name for cls in classes for f in dataclasses.fields(globals()[cls])}
        fields |= {"preset"} if script == "train.py" else set()
        if script != prog and option.startswith("-") and name in fields:
            fix = OTHER_SPELLING.get((prog, f"--{name}"))
            return f"{script}'s option, not {prog}'s" + (f"; {fix}" if fix else "")
    return None


def hf_spelling(option: str, options=()) -> str | None:
    """Our option for the name of the transformers config field it maps to (--num_experts_per_tok:
    --top_k; --hidden_size: --dim, the text model's before the vision encoder's), where `options` hold
    every model setting (sample.py's --top_k is another thing); None for any other option. --rope_type
    says that transformers' value "default" is our "none" (`--rope_scaling default` is refused)."""
    name = option.lstrip("-").replace("-", "_").lower()
    fields = dataclasses.fields(ModelArgs)
    if not {f"--{f.name}" for f in fields} <= set(options):
        return None
    ours = next((f"--{f.name}" for f in fields if (f.metadata["hf"] or "").split(".")[-1] == name), None)
    return f"{ours}, whose none is transformers' default" if ours == "--rope_scaling" else ours


def _on_off(option: str, options, actions) -> bool:
    """Whether `option`, one of `options`, turns something on or off: a flag (store_true), or an option
    given true or false (its action's type is parse_bool or switch, or, a setting passed through to
    train.py with no action of this parser's, its field's is)."""
    action = next((a for a in actions if option in a.option_strings), None)
    if isinstance(action, argparse._StoreTrueAction):
        return True
    fields = [f for cls in (ModelArgs, TrainArgs, SampleArgs) for f in dataclasses.fields(cls)
              if f"--{f.name}" == option]
    return option in options and (action.type in (parse_bool, switch) if action else any(
        _base_type(f.type) is bool or {"true", "false"} <= set(f.metadata.get("choices") or ())
        for f in fields))


def _plain(option: str) -> str:
    """An option's words as one spelling: --lr-min and --LR_MIN are lr_min."""
    return option.lstrip("-").replace("-", "_").lower()


def _nearest(name: str, options, actions) -> str | None:
    """The hint for an unknown option that no rule of _meant_option's placed: the nearest option by
    difflib, the names compared without their dashes (the -- they all share made --amp near --dim,
    and --no_cache near --batches; of two as near, the one that begins as typed: --data_dir, --data),
    else the one option that abbreviates its first word (--checkpoint: --ckpt; not --lr for --log_interval);
    for --no-X, only a --no-Y flag or an on/off option a typo of X (--no_compiled: how to turn --compile
    off), as the no_ says what was meant (--no_cache was told --no-hf, --no-eval to turn --eval_only
    off), and for --noX, X an on/off option, how to turn it off (it was told --X, which turns it on);
    None where none is near."""
    spelt = {_plain(o): o for o in reversed(options)}  # (the first of the same words: -h before --help)
    typed = _plain(name)
    if typed.startswith("no_"):
        flags = {p[3:]: o for p, o in spelt.items() if p.startswith("no_")}
        if near := difflib.get_close_matches(typed[3:], list(flags), n=1, cutoff=0.8):
            return f"did you mean {flags[near[0]]}?"
        on_off = {p: o for p, o in spelt.items() if _on_off(o, options, actions)}
        near = difflib.get_close_matches(typed[3:], list(on_off), n=1, cutoff=0.8)
        return _off_hint(on_off[near[0]], options, actions) if near else None
    if typed.startswith("no") and typed[2:] in spelt and _on_off(spelt[typed[2:]], options, actions):
        return _off_hint(spelt[typed[2:]], options, actions)  # --nocompile: not --compile, which is on

    first = typed.split("_")[0]  # (an abbreviation shortens one word: --lr is none of --log_interval)

    def abbreviates(p):  # ckpt: c, k, p and t of checkpoint, in that order
        rest = iter(first)
        return 1 < len(p) < len(first) and p[0] == first[0] and all(c in rest for c in p)

    def likeness(p):  # of two options alike, the one that begins as typed (--data_dir: --data, not --out_dir)
        return difflib.SequenceMatcher(None, typed, p).ratio(), len(os.path.commonprefix([typed, p]))
    near = [max(spelt, key=likeness)]
    if likeness(near[0])[0] < 0.6:  # (difflib.get_close_matches' cutoff)
        near = [p for p in spelt if abbreviates(p)]
    return f"did you mean {spelt[near[0]]}?" if len(near) == 1 else None


def _off_hint(option: str, options, actions) -> str | None:
    """How to turn --X off, for --no-X: a flag of `actions` is left out; an option of `options` that takes
    true or false (parse_bool or switch, or a setting passed through to train.py) is given false; any
    other option of `options` is said to take a value (its choices, where it has them)."""
    action = next((a for a in actions if option in a.option_strings), None)
    if isinstance(action, argparse._StoreTrueAction):
        return f"{option} is off unless given: leave it out"
    fields = [f for cls in (ModelArgs, TrainArgs, SampleArgs) for f in dataclasses.fields(cls)
              if f"--{f.name}" == option]
    if _on_off(option, options, actions):
        return f"to turn {option} off: {option} false"
    choices = (action.choices if action else None) or next(
        (f.metadata.get("choices") for f in fields if f.metadata.get("choices")), None)
    if option in options and choices:  # (--no-wandb_mode: "did you mean --wandb_mode?" named no value)
        return f"{option} is not on/off; it takes one of {', '.join(map(str, choices))}"
    return f"{option} is not on/off; it takes a value" if option in options else None


def _off_choice(option: str, options, actions) -> str | None:
    """How to turn X off, for --no-X where X is no option but the first word of one that takes
    "disabled" (--no_wandb: --wandb_mode disabled), else None."""
    fields = {f"--{f.name}": f for cls in (ModelArgs, TrainArgs, SampleArgs) for f in dataclasses.fields(cls)}
    for o in options:
        action = next((a for a in actions if o in a.option_strings), None)
        choices = (action.choices if action else None) or (fields[o].metadata.get("choices") if o in fields
                                                            else None)
        if _plain(o).startswith(_plain(option) + "_") and "disabled" in (choices or ()):
            return f"to turn {option[2:]} off: {o} disabled"
    return None


def _meant_option(name: str, prog: str, options, actions=()) -> str | None:
    """What an unknown --name was meant to be, as its hint says it: the option of the same words
    (--lr-min, --LR_MIN and --min_lr: --lr_min), how to turn an on/off option off (--no-X: _off_hint
    among the parser's `actions`; --no_wandb: _off_choice, --wandb_mode disabled), another script's
    (other_scripts_option), ours for transformers' name (hf_spelling), the one option it begins
    (--temp: --temperature) or each of several (--max), else the nearest spelling; None where none
    is near."""
    plain = _plain

    def parts(option):  # --lr_min, --lr-min and --min_lr: the same words in another order
        return sorted(plain(option).split("_"))
    close = [o for o in options if parts(o) == parts(name)]
    negated = f"--{plain(name)[3:]}" if plain(name).startswith("no_") else None
    # (for --no-X, the nearest spelling, --X, turns it on)
    off = negated and (_off_hint(negated, options, actions) or _off_choice(negated, options, actions))
    if not close and off:
        return off
    if not close and (theirs := other_scripts_option(name, prog, options)):
        return theirs
    if not close and (ours := hf_spelling(name, options)):  # (--num_experts_per_tok: "did you
        # mean --n_experts?", another setting; --hidden_size: --image_size)
        return f"transformers' name; ours is {ours}"
    starts = [o for o in options if plain(o).startswith(plain(name))]
    if not close and len(starts) == 1:  # --temp: --temperature (difflib's pick was --help)
        close = starts
    if not close and len(starts) > 1 and plain(name):  # --max: --max_steps or --max_minutes, not a
        # guess at one (a lone - begins every option)
        shown = starts[:4] + ([f"{len(starts) - 4} more"] if len(starts) > 4 else [])
        return f"which one? {', '.join(shown[:-1])} or {shown[-1]}"
    return f"did you mean {close[0]}?" if close else _nearest(name, options, actions)


def _option_words(words: list[str]) -> list[str]:
    """The words that are options: where there are any, they alone are named, as a value after one
    (-prompt "Once upon") is not also a missing --name (a negative number or a lone - is a value)."""
    return [w for w in words if w.startswith("-") and w != "-" and not re.match(r"-\.?\d", w)]


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no 80-field usage dump) and exit with status 2, an unknown
    option names the nearest known one (or, one of train.py's or sample.py's typed to the other,
    whose it is), stray words are named as typed (an unquoted --prompt story: how to quote it), and
    no option is taken for an abbreviation (`--quic` is not `--quick`). Every command line of the
    project uses it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_args(self, args=None, namespace=None):
        """argparse's, but what it does not know is named from the words as typed (its error message
        joins them with spaces, and a quoted "once upon a time" came back as four words)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            argv = sys.argv[1:] if args is None else list(args)
            self.typed = [w.split("=", 1)[0] for w in argv if w.startswith("--")]  # (for unknown's hints)
            self.error(self.unquoted("--prompt", argv, extras)
                       or self.unknown(_option_words(extras) or extras))
        return ns

    def unquoted(self, option: str, argv: list[str], extras: list[str]) -> str | None:
        """For `--prompt once upon a time` (the words after its first left over): that a value of several
        words is one quoted argument, and the option as it should be typed; None otherwise."""
        if option not in (s for a in self._actions for s in a.option_strings):
            return None
        for i, word in enumerate(argv):
            if word == "--":  # (what follows a bare -- is no option's: unknown() names the --)
                return None
            value, rest = ((argv[i + 1] if i + 1 < len(argv) else None), i + 2) if word == option else (
                (word.split("=", 1)[1], i + 1) if word.startswith(option + "=") else (None, 0))
            words = []
            while value is not None and rest < len(argv) and argv[rest] in extras and not \
                    _option_words([argv[rest]]):
                words.append(argv[rest])
                rest += 1
            if words:
                strays = " ".join(shlex.quote(w) for w in words)
                return (f"{strays} after {option} {shlex.quote(value)}: a {option[2:]} of several words is "
                        f"one argument; quote it: {option} {shlex.quote(' '.join([value, *words]).strip())}")
        return None

    def error(self, message):
        if not main_rank():  # under torchrun every rank parses the same line: rank 0 says it once
            self.exit(2)
        if message.startswith("unrecognized arguments"):  # (from argparse's other parse methods)
            words = message.split(": ", 1)[1].split()
            message = self.unknown(_option_words(words) or words)
        if found := re.fullmatch(r"argument (--\w+): expected one argument", message):
            message += f"; give it a value ({found[1]}=VALUE where the value starts with '-')"
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _check_value(self, action, value):
        """argparse's check of a choice, with our line (choice_problem), made from the choices themselves:
        argparse's own ("invalid choice: ... (choose from ...)") named no fix for a value near none
        (--rope_scaling default, transformers' none), and its wording changes between Python versions."""
        if action.choices is not None and value not in action.choices:
            option = max(action.option_strings, key=len, default=action.dest)
            raise argparse.ArgumentError(None, f"{option}: {choice_problem(option, value, action.choices)}")

    def _print_message(self, message, file=None):
        """argparse passes over a write that fails, so --help > FILE on a full disk (or into a closed
        pipe) exited 0 with nothing written. Standard output's failure is now said as a script's output
        is (errors.stdout_failed: one line and exit 1; a closed pipe quiet, 141). Stderr's (an error's
        line) is still passed over, as there is nowhere to say it, but goes to devnull: what its buffer
        kept failed again at exit, and the status was Python's 120 for that, not the error's 2."""
        file = file or sys.stderr  # (argparse's: no stdout at all (>&-) puts --help on stderr)
        if not message or file is None:
            return
        try:
            file.write(message)
            file.flush()  # (now: what the buffer kept would fail at exit, after the status is chosen)
        except AttributeError:  # (argparse's: a file that is not one)
            pass
        except OSError as e:
            if file is sys.stdout:
                stdout_failed(e, self.prog)
            if file is sys.stderr:
                drop_output(sys.stderr)

    def typed(self, argv) -> set[str]:
        """The options (their dests) that argv types, `--name value` or `--name=value`."""
        argv = sys.argv[1:] if argv is None else argv
        return {a.dest for a in self._actions if any(o in argv or any(x.startswith(o + "=") for x in argv)
                                                     for o in a.option_strings)}

    def counts(self, flag: str, text: str) -> list[int]:
        """A comma-separated list of whole numbers above 0 (batch sizes), or a one-line error."""
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            self.error(f"{flag} {text}: give whole numbers above 0 separated by commas, e.g. 32,128")
        if twice := sorted({v for v in values if values.count(v) > 1}):  # (one row or column, silently)
            self.error(f"{flag} {text}: {', '.join(map(str, twice))} given twice; give each once")
        return values

    def unknown(self, words, more_options=()) -> str:
        """The error for unknown options: each with what it was meant to be (_meant_option), among this
        parser's options and more_options; several stray words (an unquoted story) in one clause, not one
        each."""
        options = [s for a in self._actions for s in a.option_strings] + list(more_options)
        options = list(dict.fromkeys(options))  # (once each: compare.py's --cache_dir, train.py's too, was
        # "which one? --cache_dir or --cache_dir")
        typed = getattr(self, "typed", ())  # (the paths typed bare: run_path_hint)
        runs = {w: hint for w in words if (hint := run_path_hint(w, self.prog, options, typed))}
        strays = [w for w in words if not w.startswith("-")  # (a word, not a --name; a file: a glob's)
                  and not ("--data" in options and os.path.exists(w)) and w not in runs]
        hints, clauses = [], []
        if len(strays) > 1:  # once for them all, not a clause each (sample.py once upon a time)
            missing = "--prompt" if "--prompt" in options else "a --name"
            quote = f" quote the story: --prompt {shlex.quote(' '.join(strays))}" * (missing == "--prompt")
            clauses.append(f"unknown words {' '.join(map(shlex.quote, strays))} (options take the form "
                           f"--name value; is {missing} missing before them?{quote})")
        for w in words:
            name = w.split("=")[0]
            if len(strays) > 1 and w in strays:
                continue
            if name == "--":  # argparse takes what follows a bare -- as values, known options too
                hints.append("-- (a bare -- ends the options, so none after it is read; drop it)")
                continue
            if name in options:
                hints.append(f"{w} (after the bare --)")
                continue
            if w in runs:  # (several with one hint: in one clause, as files below)
                same = [r for r in runs if runs[r] == runs[w]]
                more = f" and {len(same) - 1} more" * (len(same) > 1)
                hints += [f"{w}{more} ({runs[w]})"] * (w == same[0])
                continue
            if not name.startswith("-") and "--data" in options and os.path.exists(w):  # (a glob the shell
                # expanded, most often: its files named in one clause, not the advice once a file)
                files = [f for f in words if not f.startswith("-") and os.path.exists(f) and f not in runs]
                if w == files[0]:
                    n = len(files) - 1
                    more = f" and {n} more file{'s' * (n > 1)}" if n else ""
                    hints.append(f"{w}{more} (a second file? --data and --val_data take one file, folder "
                                 "or glob: quote a glob, --data 'corpus/*.txt', so that the shell leaves it "
                                 "to us)")
                continue
            if not name.startswith("-"):
                missing = "--prompt" if "--prompt" in options else "a --name"  # (sample.py "once upon")
                hints.append(f"{shlex.quote(w)} (options take the form --name value; is {missing} missing "
                             "before it?)")
                continue
            meant = _meant_option(name, self.prog, options, self._actions)
            hints.append(f"{w} ({meant})" if meant else w)
        clauses = [f"unknown option {', '.join(hints)}"] * bool(hints) + clauses
        return f"{'; '.join(clauses)}; see --help for the list"


# Parsing: the parser built from the dataclasses, and the settings read


def has_presets(classes) -> bool:
    """Whether a preset sets any field of these classes (none sets SampleArgs': no --preset there)."""
    return any(cls.__name__ in p for p in PRESETS.values() for cls in classes)


def for_users(doc: str | None) -> str | None:
    """A module docstring as --help's description: up to its first "How ..." section (how the code
    works, which is for its readers: train.py's --help was 320 lines), and where the rest is."""
    if doc is None:
        return None
    head, cut, _ = doc.partition("\nHow ")
    return head.rstrip() + ("\n\n(How it works: the docstring at the top of the file.)" if cut else "")


def build_parser(prog, description, classes, defaults):
    # usage: one line, not every option twice (they are listed below, grouped)
    usage = f"%(prog)s [-h]{' [--preset NAME]' * has_presets(classes)} [--option VALUE ...]"
    parser = Parser(prog=prog, description=for_users(description), usage=usage,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    if has_presets(classes):
        parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                            help=f"starting point for every field below (default {DEFAULT_PRESET})")
    for cls in classes:
        group = parser.add_argument_group(cls.__name__)
        for f in dataclasses.fields(cls):
            kind = _base_type(f.type)
            default = defaults[cls.__name__][f.name]
            extra = f" [HF: {f.metadata['hf']}]" if f.metadata.get("hf") else ""
            help_text = f"{f.metadata['help']} (default: {default!r}){extra}"
            help_text = help_text.replace("%", "%%")
            kw = dict(dest=f.name, default=default, help=help_text, metavar=kind.__name__.upper())
            if kind is bool:
                kw.update(type=parse_bool, nargs="?", const=True, metavar="BOOL")
            elif kind is list:
                kw.update(action="append", type=str, default=None, metavar="TEXT")
            else:
                on_off = {"true", "false"} <= set(f.metadata.get("choices") or ())
                kw.update(type=switch if on_off else number(kind))
                if f.metadata.get("const") is not None:
                    kw.update(nargs="?", const=f.metadata["const"])
                if f.metadata.get("choices"):
                    kw.update(choices=f.metadata["choices"], metavar=None)
            group.add_argument(f"--{f.name}", **kw)
    return parser


class Parsed(tuple):
    """(preset name, instances) with `.given`: the field names (and "preset") typed on the
    command line, so that a resume can tell what the user asked to change."""

    def __new__(cls, preset, args, given):
        obj = super().__new__(cls, (preset, args))
        obj.given = given
        return obj


def parse_args(classes, argv=None, prog=None, description=None, checked_later=None) -> Parsed:
    """Parse `--preset NAME --field value ...` into one instance of each class in `classes`.

    Errors (unknown option, bad type, out of range) print one line and exit with status 2.
    checked_later(namespace): True where the caller checks the settings itself once they are
    complete (train.py at --resume and --eval_only, on the checkpoint's settings with the typed
    ones on top): a range check that fails here, against the preset's values, is left to it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or os.path.basename(sys.argv[0])
    names = [f.name for cls in classes for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)), "field names must be unique across the dataclasses"

    early = Parser(prog=prog, add_help=False)
    early.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    name = early.parse_known_args(argv)[0].preset if has_presets(classes) else DEFAULT_PRESET
    defaults = {cls.__name__: to_dict(preset(name, cls)) for cls in classes}

    parser = build_parser(prog, description, classes, defaults)
    ns = parser.parse_args(argv)
    given = parser.typed(argv)
    out = []
    for cls in classes:
        values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            if _base_type(f.type) is list and values[f.name] is None:
                values[f.name] = list(defaults[cls.__name__][f.name])
        try:
            out.append(cls(**values))
        except ConfigError as e:
            if not (checked_later and checked_later(ns)):
                if hasattr(e, "out_of_range"):  # (the fix: the preset's value, as --help shows it)
                    bad, value, rule = e.out_of_range  # (the debug preset's 4 was "the default")
                    fix = defaults[cls.__name__][bad]
                    e = range_error(bad, value, rule, fix, whose_value(name, cls, bad))
                parser.error(str(e))
            unchecked = object.__new__(cls)  # (the fields, without __post_init__'s checks)
            unchecked.__dict__.update(values)
            _expand_home(unchecked)  # (__post_init__ did not get that far: --resume --out_dir '~/runs')
            out.append(unchecked)
    return Parsed(getattr(ns, "preset", name), tuple(out), frozenset(given))


# For the scripts: train.py options passed through (compare.py, sweep.py), training ones refused


def check_pass_through(parser: Parser, extra: list[str], owned=()) -> None:
    """A script's options for train.py (what parser.parse_known_args left over): one the script
    sets itself for every run or cannot take (`owned`: names, or a dict of name -> why and what to
    do instead), or one train.py does not have, is a one-line error (exit 2); an unknown one names
    the nearest option of the script or of train.py."""
    fields = {f"--{f.name}" for cls in (ModelArgs, TrainArgs) for f in dataclasses.fields(cls)} | {"--preset"}
    for word in extra:
        flag = word.split("=")[0]
        if not flag.startswith("--"):
            continue
        if flag[2:] in owned:
            if isinstance(owned, dict):
                parser.error(f"{flag} cannot be passed through to train.py: {owned[flag[2:]]}")
            parser.error(f"{flag} is set by {parser.prog} for every run; it cannot be passed through")
        if flag not in fields:
            parser.error(parser.unknown([flag], sorted(f for f in fields if f[2:] not in owned)))


def refuse_training_settings(parser: Parser, argv: list[str], why: str) -> None:
    """A train.py setting (--lr, --batch_size, ...) typed to a script that takes the model's settings
    only: one line naming it as such and `why` (the fix), not the "unknown option" the parser gives,
    with its nearest model option (--lr: did you mean --help?; --batch_size: --patch_size?)."""
    training = {f"--{f.name}" for f in dataclasses.fields(TrainArgs)}
    typed = [flag for flag in (w.split("=")[0] for w in argv) if flag in training]
    if typed:
        parser.error(f"{typed[0]} is a training setting (train.py's), {why}")
