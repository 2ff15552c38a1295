"""Tell stories with a trained checkpoint.

    python sample.py                                   # the most recent run in checkpoints/
    python sample.py --ckpt checkpoints/<run> --prompt "Once upon a time" --num_samples 3
    python sample.py --hf hf_export/<run> --greedy     # an exported Hugging Face folder

Every prompt starts with <|endoftext|>, as every story does in training. One sample streams to
stdout (every 16 tokens); several samples are generated as one left-padded batch and printed one
after another. Generation stops at <|endoftext|>, after --max_new_tokens, or when the row's context
(max_seq_len) is full. A prompt too long to leave room for --max_new_tokens (up to half the
context) is cut from the left, with a warning (its <|endoftext|> goes too; what is printed of it
starts at its first whole character). --image shows the vision stub a picture (the checkpoint must
have it: --vision); an untrained vision tower makes the text meaningless. --prompt_file - reads the
prompts from standard input. Ctrl-C (or SIGTERM) prints what was generated so far (each sample of a
batch, marked as interrupted unless it had ended) and exits with status 130. On CUDA the weights
are bf16 and the decode step is compiled into a CUDA graph by default (--dtype, --compile); on CPU,
fp32 and eager.

How the file is laid out, one section each, in this order:
    errors            SampleError, and its kinds: OptionError and PromptError (exit 2), OutputError
    token choice      filter_logits (top-k, top-p), choose (the next token of each row, no host read)
    generation        left_pad, the one-token steps (decode_one and DecodeStep: cached, eager or
                      compiled; RecomputeStep: --no_cache), start (the prefill and the step),
                      moe_reference_path, check_request (generate's ValueErrors), generate (the loop)
    loading           load (the model and its tokenizer, checked to match), load_image
    prompts           image_prompt, prompts_from (each prompt's ids, cut to fit), prompt_file_lines
                      and what it needs: read_prompt_file, not_utf8
    the command line  main (exit statuses), fail, _main (options, model, prompts), warn_about_options,
                      compile_wanted, tell (generate and print) and what it needs: prompt_text,
                      samples, write

How this departs from the obvious version:
- Incremental decoding with the model's static KV cache (model.KVCache: allocated once, indexed
  by position): the prompt goes through the model once (prefill, eager), then one token per row
  per step; --no_cache recomputes the whole sequence each step, the reference path.
- The cached decoding loop never waits for the device, except once every 16 tokens (--no_cache
  reads it at every step): the new tokens and a `done` mask stay on the device, sampling reads
  nothing back, and the host looks at the tokens every 16 steps (stop when every row has ended;
  stream) and cuts each row at its first <|endoftext|> at the end. The one-token step, free of
  host reads and of changing shapes, can be compiled (torch.compile, "reduce-overhead": a CUDA
  graph) with eager as the fallback. The sparse MoE keeps its expert groups on the device
  (grouped_mm), so a compiled step runs it as is; where grouped_mm is missing (fp32 on CUDA, GPUs
  other than sm90 and sm100) or cannot take the widths (rows not whole multiples of 16 bytes) its
  fallback reads group sizes on the host (an eager step then waits once per MoE layer), and a
  compiled step runs the MoE's reference path (every expert, masked) instead.
- Left padding is exact: padded slots get position -1 and are masked out, positions count from
  each row's first real token, and each row stops when its own context is full, so a batch gives
  the same tokens as its rows one by one (in fp32; in bf16 other matmul shapes round otherwise).
- Each row draws from its own generator seeded with seed + row, so sampling is reproducible and
  does not depend on what else is in the batch (seed + row below 2^32, on every device: torch's CPU
  generator keeps 32 bits of a seed); the draw is torch.multinomial's (argmax of p / q,
  q ~ Exp(1)) without its host-side input checks.
- The tokenizer.json beside a checkpoint must be the one it was trained with (its sha256, as
  train.py and the export check it): another is refused with advice to put the run's own back.
  Errors are one line (exit status 2 for a bad option, 1 otherwise, 130 on Ctrl-C, 141 when the
  output is closed early, as by `| head`); a warning stderr cannot take (2>/dev/full, or 2>&-,
  where print would put it in stdout) is dropped, never the story (errors.quiet_stderr). A Ctrl-C
  during torch's import, which can lose it or abort on it, is held back until the import ends
  (storage.signals_put_off), about a second. Prompt text may not hold image tokens (--image adds
  the image).
- The special tokens other than <|endoftext|> (padding, the image layout's) are never drawn: no
  training target holds them, so their logits are what initialisation left (ModelArgs.never_drawn).
- Prompts are encoded as training encodes a story (Tokenizer.encode_docs): "<|endoftext|>" typed
  in a prompt is text, as inside a story of the training text, not a story break.
"""

import codecs
import errno
import os
import shlex
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

# errors before torch: a Ctrl-C while torch imports is one line (errors' sys.excepthook)
from errors import UserError, first_line, quiet_stderr, take_signal
from storage import signals_put_off

if __name__ == "__main__":  # a SIGTERM (`timeout`, a scheduler) as a Ctrl-C: what was generated, one line
    take_signal(signal.SIGTERM, signal.default_int_handler)
# isort: split
# torch's import is not safe to interrupt: its C code imports numpy and clears what that raised (the
# whole story was told, exit 0), importlib's weakref callbacks drop it, its C++ aborts on it (134). So
# a Ctrl-C (or SIGTERM) during it is held back and acted on when it ends, about a second later.
with signals_put_off():
    import torch

    import checkpoint
    import config
    import runtime
    from config import SampleArgs
    from model import KVCache, Llama4, MoE, grouped_mm_supported
    from tokenizer import Tokenizer


class SampleError(UserError):
    """What stops sample.py with one line: exit status 1 (2 for an OptionError)."""


class OptionError(SampleError, config.ConfigError):
    """An option the checkpoint cannot take (--image without a vision stub): a bad option, exit 2."""


class PromptError(OptionError):
    """A --prompt that cannot be told (an image token typed in it): a bad option, exit 2."""


class OutputError(SampleError):
    """Standard output cannot take the story (a full disk behind `> FILE`, a closed stdout)."""


# ---------------------------------------------------------------------------------------------
# Token choice


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) all but the top_k tokens (and those tied with the k-th) and all but the
    smallest set whose probability mass reaches top_p. The top token always stays: top_p <= 0
    keeps it alone (masking every token would make choose() return token 0). logits: (B, V)."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each, most likely first
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each token
        drop_sorted = before >= top_p  # the set is complete before this token
        drop_sorted[:, 0] = False  # (before is 0 there: top_p <= 0 would drop it)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back in vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


MIN_TEMPERATURE = 1e-6
MAX_TEMPERATURE = 1e30  # logits / T is then 0 to float32 precision: uniform over the tokens left


def choose(logits, generators, temperature=1.0, top_k=0, top_p=1.0, greedy=False) -> torch.Tensor:
    """Next token per row (B,), from the last-position logits (B, V), without a host read.

    Sampling is torch.multinomial(p, 1)'s own method, row by row with the row's generator: draw
    q ~ Exp(1) and take argmax(p / q), a draw from p; the tokens are the ones torch.multinomial
    gives. It skips multinomial's input checks, which read the device twice per call: a softmax
    over logits with a finite maximum needs none. A temperature under MIN_TEMPERATURE samples as
    that does (the top token alone, but for near-ties, within about 1e-5): smaller ones overflow
    logits / T to inf. One over MAX_TEMPERATURE samples as that does (uniformly over the tokens the
    filters leave): one past float32's largest (3.4e38, e.g. --temperature 1e300) was inf there,
    and a masked logit's -inf / inf is NaN, whose argmax drew token 0, <|endoftext|>, at once. A
    negative one is a ValueError, as on the command line."""
    logits = logits.float()
    if greedy:
        return logits.argmax(-1)
    if not temperature >= 0:  # (NaN too) max() below would silently take -1 as MIN_TEMPERATURE
        raise ValueError(f"temperature: must be at least 0, got {temperature} (use greedy=True for argmax "
                         "decoding)")
    temperature = min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    q = torch.stack([torch.empty_like(p).exponential_(1, generator=g)
                     for p, g in zip(probs, generators, strict=True)])  # (B, V)
    return (probs / q).argmax(-1)


# ---------------------------------------------------------------------------------------------
# Generation

CHECK_EVERY = 16  # tokens between the decoding loop's host reads (stop check, streaming)


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, positions), both (B, T_max): rows right-aligned, padding at position -1."""
    T = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    positions = torch.full((len(prompts), T), -1, dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, T - len(p):] = torch.tensor(p)
        positions[i, T - len(p):] = torch.arange(len(p))
    return tokens.to(device), positions.to(device)


def decode_one(model: Llama4, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One token per row, (B, 1), through the model and its cache -> the next logits (B, V)."""
    return model(tokens, cache=cache, last_only=True).logits[:, -1]


class DecodeStep:
    """The cached one-token step, eager or compiled: chosen tokens (B,) -> the next logits (B, V).

    compile: True = torch.compile(decode_one, fullgraph=True), in mode "reduce-overhead" on CUDA
    (the step replays as one CUDA graph: the static cache gives it fixed shapes and addresses) and
    in the default mode elsewhere (tests); a string names the mode instead ("default": compiled
    kernels without CUDA graphs, which scripts/bench_sample.py holds beside the graphed step).
    Compiling happens at the first call, and under CUDA graphs recording at the second (the first
    is a warm-up); if either fails, one warning line goes to stderr and the step runs eagerly from
    then on, starting with the call that failed.
    """

    TRIAL_CALLS = 2  # compiling, then recording the CUDA graph
    failures: list[str] = []  # why compiled steps fell back, in this process (bench_sample.py says)

    def __init__(self, model: Llama4, cache: KVCache, compile: bool | str = False):
        self.model, self.cache, self.mode = model, cache, compile
        self.compiled = None
        self.trials = self.TRIAL_CALLS if compile else 0  # calls left that may still fail

    def __call__(self, nxt: torch.Tensor) -> torch.Tensor:
        tokens = nxt[:, None]  # (B, 1)
        if self.trials == 0:
            if self.compiled is None:
                return decode_one(self.model, tokens, self.cache)
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed
            return self.compiled(self.model, tokens, self.cache)
        self.trials -= 1
        next_pos = self.cache.next_pos.clone()
        try:
            if self.compiled is None:
                mode = self.mode if isinstance(self.mode, str) else \
                    "reduce-overhead" if next_pos.device.type == "cuda" else None
                self.compiled = torch.compile(decode_one, mode=mode, fullgraph=True, dynamic=False)
                self.cache.mark_static()
            torch.compiler.cudagraph_mark_step_begin()
            return self.compiled(self.model, tokens, self.cache)
        except Exception as e:  # whatever stops the compiler or the recording: eager for good
            why = runtime.compile_failure(e)  # (out of memory is raised again: eager would not help)
            self.cache.next_pos.copy_(next_pos)  # (the keys and values are written again, in place)
            # compiled calls leave cache.seen alone, and eager calls read its first `seen` slots:
            # count the trial calls before this one that ran compiled (none if compiling failed)
            ran_compiled = self.TRIAL_CALLS - 1 - self.trials if self.compiled is not None else 0
            self.cache.seen += ran_compiled
            self.compiled, self.trials = None, 0
            DecodeStep.failures.append(why)
            print(f"warning: compiling the decode step failed ({why}); "
                  "decoding eagerly", file=sys.stderr)
            return decode_one(self.model, tokens, self.cache)


class RecomputeStep:
    """The reference step (--no_cache): chosen tokens (B,) -> the next logits (B, V), recomputing
    every row's whole sequence. The images fill the prompts' <|patch|> tokens; a generated <|patch|>
    is text, as in the cached steps.

    Past the context: once the sequence is `over` columns longer than max_seq_len, a row with a
    real token in its first `over` columns has reached its context limit and stopped (its logits
    are zeros, and generate cuts its tokens); the others, padding there, are recomputed alone
    without those columns (with their own images).
    """

    def __init__(self, model: Llama4, tokens, positions, images):
        self.model, self.tokens, self.positions, self.images = model, tokens, positions, images
        self.patches = tokens == model.args.patch_id  # (B, T)

    def __call__(self, nxt: torch.Tensor) -> torch.Tensor:
        model, images = self.model, self.images
        tokens = self.tokens = torch.cat([self.tokens, nxt[:, None]], 1)  # (B, T) -> (B, T + 1)
        positions = self.positions = torch.cat([self.positions, self.positions[:, -1:] + 1], 1)
        patches = self.patches = torch.cat([self.patches, torch.zeros_like(self.patches[:, :1])], 1)
        over = tokens.shape[1] - model.args.max_seq_len
        if over <= 0:
            return model(tokens, positions=positions, images=images, image_mask=patches,
                         last_only=True).logits[:, -1]
        live = (positions[:, :over] < 0).all(1)  # (B,)
        logits = torch.zeros(len(tokens), model.args.vocab_size, device=tokens.device)
        if not live.any():
            return logits
        # images (B*n, 3, S, S) -> (B, n, 3, S, S) -> the live rows' (live*n, 3, S, S)
        some_images = None if images is None else images.unflatten(0, (len(tokens), -1))[live].flatten(0, 1)
        logits[live] = model(tokens[live, over:], positions=positions[live, over:], images=some_images,
                             image_mask=patches[live, over:], last_only=True).logits[:, -1].float()
        return logits


def start(model: Llama4, tokens, positions, images, max_new: int, use_cache: bool, compile: bool | str,
          padding: int = 0):
    """The logits after the prompts (B, V), and the step: chosen tokens (B,) -> the next logits.
    padding: the left padding of the shortest prompt, whose context runs out last."""
    if not use_cache:
        step = RecomputeStep(model, tokens, positions, images)
        return model(tokens, positions=positions, images=images, last_only=True).logits[:, -1], step
    # prefill (eager: its length varies), then one token at a time
    length = min(tokens.shape[1] + max_new, model.args.max_seq_len)  # positions, not columns
    cache = KVCache(model.args, len(tokens), length, tokens.device, next(model.parameters()).dtype)
    cache.padding = padding
    logits = model(tokens, positions=positions, cache=cache, images=images, last_only=True).logits
    return logits[:, -1], DecodeStep(model, cache, compile)


@contextmanager
def moe_reference_path(model: Llama4, enabled: bool = True):
    """Inside the block, MoE layers run their reference path (every expert on every token,
    masked). A compiled step needs it where grouped_mm is missing: the sparse path's fallback then
    reads expert group sizes on the host, which a CUDA graph cannot hold."""
    moes = [m for m in model.modules() if isinstance(m, MoE)] if enabled else []
    saved = [vars(m).get("impl") for m in moes]  # None: the layer follows the class's MoE.impl
    for m in moes:
        m.impl = "reference"
    try:
        yield
    finally:  # as it was, so that a later `MoE.impl = ...` reaches the layers again
        for m, impl in zip(moes, saved, strict=True):
            if impl is None:
                del m.impl
            else:
                m.impl = impl


def check_request(model: Llama4, prompts: list[list[int]], seed: int, top_k: int = 0,
                  top_p: float = 1.0) -> None:
    """A ValueError, naming the fix, unless the model is in eval mode, every prompt holds a token and
    fits the context, every row's seed (seed + row) is in [0, 2^32), top_k is not negative and top_p
    not above 1 (as sample.py's --top_k and --top_p; a top_p <= 0 keeps the top token alone)."""
    args = model.args
    if any(m.training for m in model.modules()):  # (its router would draw noise from torch's generator)
        raise ValueError("the model is in training mode (noisy routing: rows no longer reproducible from "
                         "their seeds); call model.eval() first")
    B, lens = len(prompts), [len(p) for p in prompts]
    if not prompts:
        raise ValueError("no prompts: pass a list of at least one prompt (a list of token ids)")
    if 0 in lens:  # (a row of padding alone: torch's error by itself, tokens drawn from nothing in a batch)
        raise ValueError(f"prompts[{lens.index(0)}] is empty; every prompt needs at least one token, e.g. "
                         f"the <|endoftext|> id ({args.eos_id})")
    if max(lens) > args.max_seq_len:  # (sample.py cuts them to fit)
        raise ValueError(f"a prompt of {max(lens)} tokens is longer than max_seq_len={args.max_seq_len}; "
                         "shorten it")
    if not 0 <= seed <= 2 ** 32 - B:  # (as sample.py's --seed: config.check_sample_seed)
        rule = "[0, 2^32)" if B == 1 else f"[0, 2^32 - {B - 1}) for {B} prompts, row r drawing with seed + r"
        raise ValueError(f"seed: must be in {rule} (torch's CPU generator keeps 32 bits of a seed), got "
                         f"{seed}")
    if not top_k >= 0:  # (both were taken as "off": every token sampled)
        raise ValueError(f"top_k: must be >= 0 (0 = off), got {top_k}")
    if not top_p <= 1:  # (NaN too)
        raise ValueError(f"top_p: must be at most 1 (1 = off), got {top_p}")


@torch.no_grad()
def generate(model: Llama4, prompts: list[list[int]], max_new_tokens: int, *, temperature=1.0, top_k=0,
             top_p=1.0, greedy=False, seed=0, use_cache=True, compile: bool | str = False, images=None,
             on_token=None, stop_at_eos=True) -> list[list[int]]:
    """Continue each prompt (token ids); returns the new tokens of each row, <|endoftext|> excluded,
    and never one of the special tokens no training target holds (ModelArgs.never_drawn).

    The loop keeps its state on the device (the new tokens, a `done` mask) and reads it on the
    host once every CHECK_EVERY tokens and at the end: to stop when every row has ended, and for
    on_token(rows, ended), called then with each row's tokens so far (streaming; it lags by up to
    CHECK_EVERY - 1 tokens) and whether each row has ended (at <|endoftext|> or its limit).
    images: (N, 3, S, S) for the <|patch|> tokens of the prompts, in order. compile: compile the
    cached one-token step (True, or a torch.compile mode: DecodeStep). stop_at_eos=False generates
    max_new_tokens whatever comes (for benchmarks). Row r draws with seed + r, which must be in
    [0, 2^32) (torch's CPU generator keeps 32 bits: seed 2^32 + 1 would tell seed 1's stories). The
    model must be in eval mode, every prompt hold a token, top_k be >= 0 and top_p at most 1
    (ValueError otherwise, as for the seed: check_request).
    """
    check_request(model, prompts, seed, top_k, top_p)
    args, device = model.args, next(model.parameters()).device
    B, lens = len(prompts), [len(p) for p in prompts]
    tokens, positions = left_pad(prompts, args.pad_id, device)
    # each row stops when its own context is full (a batch gives what its rows give one by one)
    limits = [min(max_new_tokens, args.max_seq_len - n) for n in lens]
    max_new = max(limits)
    if max_new <= 0:
        return [[] for _ in range(B)]
    eos = args.eos_id if stop_at_eos else -1
    generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(B)]
    never = torch.zeros(args.vocab_size, dtype=torch.bool)
    never[args.never_drawn] = True
    never = never.to(device)  # (V,): masked in every row's logits
    sparse_is_sync_free = grouped_mm_supported(next(model.parameters()), (args.dim, args.expert_dim))
    with moe_reference_path(model, enabled=compile and use_cache and not sparse_is_sync_free):
        logits, step = start(model, tokens, positions, images, max_new, use_cache, compile,
                             padding=max(lens) - min(lens))
        out = torch.full((B, max_new), args.pad_id, dtype=torch.long, device=device)  # (B, max_new)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        # a row past its own limit goes on, into the cache's scratch slot, and is cut on the host: its
        # tokens are never read
        for t in range(max_new):
            nxt = choose(logits.masked_fill(never, float("-inf")), generators, temperature, top_k, top_p,
                         greedy)
            nxt = torch.where(done, args.pad_id, nxt)  # finished rows feed padding, ignored
            # -1 marks a row whose logits were not finite (NaN weights): an error below
            out[:, t] = torch.where(done | logits.amax(-1).isfinite(), nxt, -1)
            done |= nxt == eos
            if (t + 1) % CHECK_EVERY == 0 or t == max_new - 1:
                so_far = out[:, :t + 1].tolist()  # the loop's one host read
                so_far = [r[:n] for r, n in zip(so_far, limits, strict=True)]
                if any(-1 in r for r in so_far):
                    raise SampleError("the model's logits are not finite (NaN or inf): its weights are "
                                      "broken (a diverged run?); sample from an earlier checkpoint")
                rows = [r[:r.index(eos)] if eos in r else r for r in so_far]
                ended = [eos in r or len(r) == n for r, n in zip(so_far, limits, strict=True)]
                if on_token is not None:
                    on_token(rows, ended)
                if all(ended):
                    break
            if t < max_new - 1:
                logits = step(nxt)
    return rows


# ---------------------------------------------------------------------------------------------
# Loading the model and an image


def load(sample_args: SampleArgs, device, dtype=torch.float32) -> tuple[Llama4, Tokenizer, str]:
    """Model (eval mode, on device, weights in dtype), tokenizer and the path they were loaded from
    (the checkpoint file, or the exported HF folder)."""
    if sample_args.hf:
        hf = Path(sample_args.hf)
        if (hf / "last.pt").is_file() and not (hf / "config.json").exists():  # (not "config.json is missing")
            raise SampleError(f"--hf {hf} is a run folder (it holds last.pt), not an exported Hugging Face "
                              f"folder; pass it as --ckpt {hf}")
        model, where = checkpoint.load_hf(sample_args.hf, device, dtype), Path(sample_args.hf)
        tok_file, ckpt = where / "tokenizer.json", None
    else:
        where = checkpoint.find_checkpoint(sample_args.ckpt, option="--ckpt ")
        model, ckpt = checkpoint.load_model(where, device, dtype)
        tok_file = where.parent / "tokenizer.json"
    if not tok_file.exists():  # (an HF folder holds its tokenizer.json; a checkpoint has it beside it)
        raise SampleError(f"no tokenizer.json in {where}; put the model's tokenizer.json there (scripts/"
                          "export_hf.py writes it into the folders it exports)" if ckpt is None else
                          f"no tokenizer.json beside {where}; copy the run's tokenizer there "
                          "(scripts/export_hf.py writes it into exported folders)")
    try:
        tok = Tokenizer.load(tok_file, fix="put back the run's own tokenizer.json (or export again)",
                             exact=False)  # (a run an older version trained with one that lower-cases)
    except UserError as e:
        raise SampleError(str(e)) from e
    if ckpt is not None:  # the same check and advice as train.py's and the export's
        checkpoint.check_tokenizer(tok, tok_file, ckpt, where)
    else:  # the sha256 our export records in config.json, where it does
        checkpoint.check_hf_tokenizer(tok, tok_file, where, model.args)
    return model, tok, str(where)


def load_image(path, args: config.ModelArgs) -> torch.Tensor:
    """A PNG or JPEG as (3, S, S): resized to image_size and scaled to [-1, 1], as Llama 4 does.

    It is read as transformers reads it: turned upright by its EXIF orientation (left as stored where
    the EXIF block is damaged), with transparency over white. 16-bit grey is scaled to 8 bits, value *
    255 / 65535 rounded to the nearest; convert("RGB") alone would clip it, turning all but black
    white (sixteen_bit_grey: its transparent shade over white too). Images of 89M to 179M pixels load
    without PIL's two-line DecompressionBombWarning; larger ones are refused."""
    import struct

    from PIL import Image, ImageOps
    try:
        with warnings.catch_warnings():  # a large photo, resized to image_size anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:  # (closed when done: a GIF, or any image of several frames, keeps its file open)
            opened.load()
            img = opened
            try:
                img = ImageOps.exif_transpose(img)
            except (struct.error, TypeError, AttributeError):
                # a damaged EXIF block, which PIL writes back for the turned image (a text tag stored
                # as a number: AttributeError): the image as stored
                pass
            if img.mode.startswith("I;16"):
                img = sixteen_bit_grey(img)
            if "A" in img.getbands() or "transparency" in img.info:  # (RGBA, LA, a palette's clear colour)
                img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
            img = img.convert("RGB").resize((args.image_size, args.image_size))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # beside OSError: a broken PNG chunk (SyntaxError), a PNG text bomb (ValueError), over 179M pixels
        fix = ("check the path" if isinstance(e, FileNotFoundError) else "name an image file in it"
               if isinstance(e, IsADirectoryError) else "pass a smaller image"
               if isinstance(e, Image.DecompressionBombError) else "pass a PNG or JPEG file (any format "
               "Pillow reads)")
        raise SampleError(f"--image {path}: cannot read it as an image ({e}); {fix}") from e
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(args.image_size,
                                                                                  args.image_size, 3)
    return (pixels.permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5  # (S, S, 3) -> (3, S, S)


def sixteen_bit_grey(img):
    """A 16-bit grey image (PIL's I;16 modes) in 8 bits: L, value * 255 / 65535 rounded to the nearest
    (PIL's point() truncates), or LA where it has a transparent shade (a tRNS value, 16-bit: matched
    before the scaling, as no 8-bit value equals most of them), clear where it is that shade."""
    import numpy as np
    from PIL import Image
    wide = img.convert("I")
    grey = wide.point(lambda v: v / 257 + 0.5).convert("L")  # (+ 0.5: PIL truncates)
    clear = img.info.get("transparency")
    if not isinstance(clear, int):
        return grey
    alpha = Image.fromarray(np.where(np.asarray(wide) == clear, 0, 255).astype(np.uint8))
    return Image.merge("LA", (grey, alpha))


# ---------------------------------------------------------------------------------------------
# Prompts


def image_prompt(args: config.ModelArgs) -> list[int]:
    """The Llama 4 layout of one single-tile image: <|image_start|><|image|><|patch|>...<|image_end|>."""
    return [args.image_start_id, args.image_id] + [args.patch_id] * args.image_tokens + [args.image_end_id]


def prompts_from(sample_args: SampleArgs, tok: Tokenizer, args: config.ModelArgs, warn) -> list[list[int]]:
    """Token ids of each prompt (after <|endoftext|>, and the image's tokens with --image), each
    repeated --num_samples times. A prompt too long to leave room for --max_new_tokens (up to half
    the context) is cut from the left, with a warning."""
    texts = list(sample_args.prompt)
    if sample_args.prompt_file:
        texts += prompt_file_lines(sample_args.prompt_file)
    texts = texts or [""]
    keep = args.max_seq_len - min(sample_args.max_new_tokens, args.max_seq_len // 2)
    prefix = [args.eos_id] + (image_prompt(args) if sample_args.image else [])
    if args.max_seq_len < 2:
        raise SampleError(f"the model's context is {args.max_seq_len} token: the story's start token "
                          "fills it, leaving no room for one more; train with --max_seq_len 2 or more")
    if len(prefix) > args.max_seq_len - 1:
        raise OptionError(f"the image alone is {len(prefix)} tokens, more than the context allows "
                          f"({args.max_seq_len - 1}); drop --image, or sample a model trained with a longer "
                          "--max_seq_len")
    image_tokens = [config.SPECIAL_TOKENS[n] for n in ["image_start_id", "image_id", "patch_id",
                                                       "image_end_id"]]
    out = []
    # encoded as training encodes a story: "<|endoftext|>" typed in a prompt is text, not a story break
    for i, (text, ids) in enumerate(zip(texts, tok.encode_docs(texts), strict=True)):
        if any(t in text for t in image_tokens):  # (text to the model too; the user meant an image)
            given = i < len(sample_args.prompt)  # (--prompt: a bad option; a --prompt_file line: a bad file)
            where = f"--prompt {text[:40]!r}" if given else \
                f"--prompt_file {sample_args.prompt_file}: the prompt {text[:40]!r}"
            raise (PromptError if given else SampleError)(
                f"{where} holds an image token (<|image_start|>, <|image|>, <|patch|> or <|image_end|>); "
                "remove it (" + ("--image puts an image in)" if args.vision else
                                 "this model has no vision stub: it reads no image)"))
        n, whole = len(prefix) + len(ids), prefix + ids
        if sample_args.image:  # the image is kept whole: only its text is cut
            tail = ids[len(ids) - min(len(ids), max(keep - len(prefix), 0)):]
            whole, what = prefix + tail, "the image and the last tokens of its text"
        elif n > keep:
            whole, what = whole[-keep:], "its last token" + "s" * (keep != 1)
        if len(whole) < n:
            kept = f"{len(whole)} token{'s' * (len(whole) != 1)}"  # (1 with a 2-token context)
            warn(f"warning: prompt of {n} tokens leaves too little room for --max_new_tokens "
                 f"{sample_args.max_new_tokens} in the context of {args.max_seq_len}; keeping {what}, "
                 f"{kept} (room for {args.max_seq_len - len(whole)} new)")
        ids = whole
        out += [ids] * sample_args.num_samples
    return out


def prompt_file_lines(name: str) -> list[str]:
    """The prompts of --prompt_file `name` (- : standard input), its non-blank lines; a SampleError
    (naming the fix) where it cannot be read, is not UTF-8 text or holds no prompt."""
    stdin = name == "-"
    try:
        text = read_prompt_file(name)
    except OSError as e:
        fix = ("pipe the prompts into it, one per line, or pass a text file" if stdin else
               "pass a text file with one prompt per line, or - for standard input")
        raise SampleError(f"--prompt_file {name}: {e.strerror}; {fix}") from e
    except UnicodeDecodeError as e:
        raise SampleError(f"--prompt_file {name}: {not_utf8(name, e.object, e.start)}") from e
    if "\0" in text:  # valid UTF-8, but no text holds NUL: UTF-16 or UTF-32 without a byte-order mark
        raise SampleError(f"--prompt_file {name}: {not_utf8(name, text.encode(), text.index(chr(0)))}")
    # \r\n and \r are "\n" by now; str.splitlines would also split on \f, \u2028, ...
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        where, fix = (("standard input was empty or blank", "pipe the prompts in") if stdin else
                      ("every line is blank", "write the prompts"))
        raise SampleError(f"--prompt_file {name} holds no prompt ({where}); {fix}, "
                          "one per line, or leave --prompt_file out for a story from nothing")
    return lines


def read_prompt_file(name: str) -> str:
    """The text of --prompt_file, "-" being standard input: a UTF-8 byte-order mark dropped, CRLF and
    CR read as LF. A UnicodeDecodeError where it is not UTF-8."""
    if name == "-":
        if sys.stdin is None:  # started with stdin closed (<&-)
            raise OSError(errno.EBADF, "standard input is closed")
        data = sys.stdin.buffer.read()
    else:
        data = Path(name).read_bytes()
    return data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")


# UTF-32 first: UTF-32 LE's byte-order mark, FF FE 00 00, starts with UTF-16 LE's, FF FE
WIDE_BOMS = [(codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
             (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")]


def not_utf8(name: str, data: bytes, byte: int) -> str:
    """Why --prompt_file `name`, whose bytes are `data`, is no UTF-8 text (`byte`: the first bad
    one), and how to convert it: UTF-16 and UTF-32 are named by their byte-order mark or, without
    one, by their NUL bytes (which UTF-8 decodes, but no prompt holds)."""
    utf8 = Path(name).with_stem(Path(name).stem + "-utf8") if Path(name).stem else "prompts-utf8.txt"
    to = (f"{shlex.quote(name)} > {shlex.quote(str(utf8))}" if name != "-" else  # (> {name}: lost)
          "FILE | sample.py ... --prompt_file -")
    for bom, codec in WIDE_BOMS:
        if data.startswith(bom):
            return (f"{codec} text, not UTF-8 (it starts with a {codec} byte-order mark, "
                    f"{bom.hex(' ').upper()}); convert it: iconv -f {codec} -t UTF-8 {to}")
    nul, head = data.count(0), data[:1 << 16]
    fours = [head[i::4].count(0) for i in range(4)]  # Latin text in UTF-32: NUL in 3 bytes of every 4
    if sorted(fours)[1] * 10 >= len(head) // 4 * 9 > 0 and min(fours) * 20 <= max(fours):
        codec = "UTF-32LE" if fours.index(min(fours)) == 0 else "UTF-32BE"
        return (f"not UTF-8 text ({nul:,} of {len(data):,} bytes are NUL, three in every four: {codec} "
                f"without a byte-order mark?); convert it, e.g. iconv -f {codec} -t UTF-8 {to}")
    # Latin text in UTF-16: NUL in every other byte, and (unlike a binary file such as a .pt) hardly
    # any in the others. A lone NUL falls on one parity in any file: beside bytes that are not UTF-8
    # (é as E9 00) it is a sign of UTF-16, but not in UTF-8 text (a\0b\n): `one`.
    even, odd = head[0::2].count(0), head[1::2].count(0)
    one = max(even, odd) == 1 and data.decode("utf-8", "ignore").encode() == data
    if max(even, odd) * 2 >= len(head) // 2 > 0 and min(even, odd) * 20 <= max(even, odd) and not one:
        codec = "UTF-16BE" if even > odd else "UTF-16LE"
        return (f"not UTF-8 text ({nul:,} of {len(data):,} bytes are NUL, every other one: {codec} without "
                f"a byte-order mark?); convert it, e.g. iconv -f {codec} -t UTF-8 {to}")
    if nul:
        return (f"not text ({nul:,} NUL byte{'s' * (nul > 1)}: a binary file?); pass a text file with one "
                "prompt per line")
    return f"not UTF-8 text (byte {byte}); save it as UTF-8"


# ---------------------------------------------------------------------------------------------
# The command line


def main(argv=None):
    """_main, with one line and an exit status for what stops it: Ctrl-C (130), an output closed
    early (141, silently), an error the user can fix (its own status: fail), out of memory (1)."""
    restore_stderr = quiet_stderr()  # a warning stderr cannot take (2>/dev/full, 2>&-) is dropped
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\nsample.py: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # stdout closed early (| head): stop quietly, as a SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        sys.exit(141)
    except OutputError as e:
        try:  # what is left in stdout's buffer would fail again at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, ValueError, OSError):  # no stdout, or no file behind it
            pass
        fail(e)
    except Exception as e:
        if not runtime.out_of_memory(e):
            raise
        print(f"sample.py: error: out of memory ({first_line(e)[:160]}); sample fewer rows at once (prompts "
              "x --num_samples) or fewer --max_new_tokens", file=sys.stderr)
        sys.exit(1)
    finally:
        restore_stderr()


def fail(e: UserError):
    """Exit with the error's one line on stderr and its exit status."""
    print(f"sample.py: error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


def _main(argv=None):
    """Parse the options, load the model and its tokenizer, build the prompts (and the image), tell."""
    parsed = config.parse_args([SampleArgs], argv, prog="sample.py", description=__doc__)
    sample_args = parsed[1][0]
    try:
        device = runtime.resolve_device(sample_args.device)
        try:
            model, tok, where = load(sample_args, device, runtime.compute_dtype(sample_args.dtype, device))
        except Exception as e:  # the weights alone do not fit: sampling less would not help
            if not runtime.out_of_memory(e):
                raise
            raise SampleError(f"out of memory loading the model on {device} ({first_line(e)[:160]}); free "
                              "the device's memory or use --device cpu") from None
        if not (sample_args.ckpt or sample_args.hf):
            print(f"sample.py: sampling {where}, the most recent run's (--ckpt picks another)",
                  file=sys.stderr)
        warn_about_options(sample_args, parsed.given)
        images = None
        if sample_args.image:
            if not model.args.vision:
                raise OptionError(f"{where} has no vision stub (it was trained without --vision); "
                                  "drop --image")
            images = load_image(sample_args.image, model.args).to(device, next(model.parameters()).dtype)
        prompts = prompts_from(sample_args, tok, model.args, lambda m: print(m, file=sys.stderr))
        config.check_sample_seed(sample_args, len(prompts))  # (--prompt_file's prompts are rows too)
        if images is not None:
            images = images.expand(len(prompts), -1, -1, -1)  # (3, S, S) -> (B, 3, S, S), one per row
    except UserError as e:
        fail(e)

    return tell(model, tok, prompts, images, sample_args, device)


def warn_about_options(sample_args: SampleArgs, given) -> None:
    """A warning on stderr for each option that has no effect beside another (`given`: the options
    typed on the command line)."""
    if sample_args.no_cache and sample_args.compile == "true":
        print("warning: --compile true compiles the cached decode step, and --no_cache has none: "
              "decoding eagerly", file=sys.stderr)
    unused = [f"--{name}" for name in ("temperature", "top_k", "top_p") if name in given]
    if sample_args.greedy and unused:  # (--greedy --temperature 0.5 said nothing)
        drop = "" if sample_args.temperature <= 0 else \
            f"; drop --greedy to sample with {'it' if len(unused) == 1 else 'them'}"  # (0: greedy's own)
        print(f"warning: --greedy takes the most likely token each step: {', '.join(unused)} "
              f"{'has' if len(unused) == 1 else 'have'} no effect{drop}", file=sys.stderr)
    if sample_args.greedy and sample_args.num_samples > 1:
        n = sample_args.num_samples
        print(f"warning: --greedy takes the most likely token each step, so the {n} --num_samples of a "
              "prompt are the same story; drop --greedy for different ones", file=sys.stderr)


def compile_wanted(setting: str, device: torch.device) -> bool:
    """--compile: auto = on for CUDA (the decode step as a CUDA graph), off on CPU."""
    return setting == "true" or (setting == "auto" and device.type == "cuda")


def tell(model: Llama4, tok: Tokenizer, prompts, images, sample_args: SampleArgs, device) -> list[list[int]]:
    """Generate and print: one sample streams, several are printed one after another at the end. On
    Ctrl-C what was generated by the last host read is printed (several samples: each so far)."""
    texts = [tok.decode_cut(prompt_text(p, model.args)) for p in prompts]  # (a cut prompt: whole characters)
    stream = len(prompts) == 1
    printed = 0  # characters of the streamed sample written so far
    so_far, ended = [[] for _ in prompts], [False] * len(prompts)  # (what Ctrl-C prints)

    def on_token(rows, rows_ended):
        nonlocal printed, so_far, ended
        so_far, ended = rows, rows_ended
        if not stream:
            return
        text = tok.decode(rows[0])
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            write(text[printed:])
            printed = len(text)

    if stream:
        write(texts[0])
    try:
        rows = generate(model, prompts, sample_args.max_new_tokens, temperature=sample_args.temperature,
                        top_k=sample_args.top_k, top_p=sample_args.top_p, greedy=sample_args.greedy,
                        seed=sample_args.seed, use_cache=not sample_args.no_cache, images=images,
                        compile=compile_wanted(sample_args.compile, device), on_token=on_token)
    except OutputError:
        raise
    except KeyboardInterrupt:  # (main says so on stderr, exit status 130)
        write("\n" if stream else samples(texts, so_far, tok, [not e for e in ended]))
        raise
    except UserError as e:
        if stream:
            write("\n")
        fail(e)
    write(tok.decode(rows[0])[printed:] + "\n" if stream else samples(texts, rows, tok))
    return rows


def prompt_text(ids: list[int], args: config.ModelArgs) -> list[int]:
    """The ids of a prompt to print: without the <|endoftext|> it starts with (a cut prompt has
    none) and without the image's tokens."""
    image = set(image_prompt(args))
    return [t for t in (ids[1:] if ids[:1] == [args.eos_id] else ids) if t not in image]


def samples(texts: list[str], rows: list[list[int]], tokenizer: Tokenizer,
            cut: list[bool] | None = None) -> str:
    """Several samples as printed: each under a line that numbers it, marked where `cut` says the
    row was interrupted before it ended."""
    n, cut = len(rows), cut or [False] * len(rows)
    return "".join(f"{'-' * 20} sample {i + 1} of {n}{' (interrupted)' * c} {'-' * 20}\n"
                   f"{text + tokenizer.decode(row)}\n"
                   for i, (text, row, c) in enumerate(zip(texts, rows, cut, strict=True)))


def write(text: str) -> None:
    """Text to stdout, flushed (streaming); a failed write is an OutputError (one line, exit 1)."""
    try:
        if sys.stdout is None:  # started with stdout closed (>&-)
            raise OSError(errno.EBADF, "it is closed")
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # | head: main() stops quietly
        raise
    except UnicodeEncodeError as e:  # PYTHONIOENCODING=ascii, a Latin-1 locale, ...
        raise OutputError(f"cannot write the story to standard output (its encoding, {sys.stdout.encoding}, "
                          f"has no {e.object[e.start:e.end]!r}); set PYTHONIOENCODING=utf-8") from None
    except OSError as e:
        raise OutputError(f"cannot write the story to standard output ({e.strerror or e}); write it "
                          "somewhere with room, or to a terminal") from None


if __name__ == "__main__":
    main()
