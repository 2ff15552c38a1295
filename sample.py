"""Tell stories with a trained checkpoint.

    python sample.py                                   # the most recent run in checkpoints/
    python sample.py --ckpt checkpoints/<run> --prompt "Once upon a time" --num_samples 3
    python sample.py --hf hf_export/<run> --greedy     # an exported Hugging Face folder

Every prompt starts with <|endoftext|>, as every story does in training. One sample streams to
stdout token by token; several samples are generated as one left-padded batch and printed one
after another. Generation stops at <|endoftext|>, after --max_new_tokens, or when the context
(max_seq_len) is full. A prompt longer than max_seq_len - 1 tokens is cut from the left, with a
warning. --image shows the vision stub a picture (the checkpoint must have it: --vision); an
untrained vision tower makes the text meaningless.

How this departs from the obvious version:
- Incremental decoding with the model's KV cache (model.KVCache: chunked layers keep only the
  current chunk); --no_cache recomputes the whole sequence each step, the reference path.
- Left padding is exact: padded slots get position -1 and are masked out, and positions count
  from each row's first real token, so a batch gives the same tokens as its rows one by one.
- Each row draws from its own generator seeded with seed + row, so sampling is reproducible and
  does not depend on what else is in the batch.
- The tokenizer.json beside a checkpoint must be the one it was trained with (its sha256, as
  train.py and the export check it): another is refused with advice to put the run's own back.
  Errors are one line (exit status 2 for a bad option, 1 otherwise, 130 on Ctrl-C).
"""

import sys
from pathlib import Path

import torch

import checkpoint
import config
import runtime
from config import SampleArgs
from errors import UserError
from model import KVCache, Llama4
from tokenizer import Tokenizer, check_tokenizer

# ---------------------------------------------------------------------------------------------
# Token choice


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) all but the top_k tokens and all but the smallest set whose probability mass
    reaches top_p. logits: (B, V)."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each token
        drop_sorted = before >= top_p  # the set is complete before this token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits, generators, temperature=1.0, top_k=0, top_p=1.0, greedy=False) -> torch.Tensor:
    """Next token per row (B,), from the last-position logits (B, V)."""
    logits = logits.float()
    if greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)])


# ---------------------------------------------------------------------------------------------
# Generation


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, positions), both (B, T_max): rows right-aligned, padding at position -1."""
    T = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    positions = torch.full((len(prompts), T), -1, dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, T - len(p):] = torch.tensor(p)
        positions[i, T - len(p):] = torch.arange(len(p))
    return tokens.to(device), positions.to(device)


@torch.no_grad()
def generate(model: Llama4, prompts: list[list[int]], max_new_tokens: int, *, temperature=1.0, top_k=0,
             top_p=1.0, greedy=False, seed=0, use_cache=True, images=None, on_token=None,
             stop_at_eos=True) -> list[list[int]]:
    """Continue each prompt (token ids); returns the new tokens of each row, <|endoftext|> excluded.

    on_token(row_tokens) is called after each step with the tokens generated so far (for
    streaming). images: (N, 3, S, S) for the <|patch|> tokens of the prompts, in order.
    stop_at_eos=False generates max_new_tokens whatever comes (for benchmarks).
    """
    args, device = model.args, next(model.parameters()).device
    eos = args.eos_id if stop_at_eos else -1
    B = len(prompts)
    tokens, positions = left_pad(prompts, args.pad_id, device)
    max_new_tokens = min(max_new_tokens, args.max_seq_len - tokens.shape[1])
    generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(B)]
    cache = KVCache(args.n_layers) if use_cache else None
    out = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    step_tokens, step_positions = tokens, positions
    for _ in range(max_new_tokens):
        if use_cache:
            logits = model(step_tokens, positions=step_positions, cache=cache, images=images,
                           last_only=True).logits[:, -1]
            images = None  # seen once, at prefill
        else:
            logits = model(tokens, positions=positions, images=images, last_only=True).logits[:, -1]
        nxt = choose(logits, generators, temperature, top_k, top_p, greedy)
        nxt = torch.where(done, args.pad_id, nxt)  # finished rows feed padding, ignored
        for i, (t, finished) in enumerate(zip(nxt.tolist(), done.tolist(), strict=True)):
            if not finished and t != eos:
                out[i].append(t)
        done |= nxt == eos
        if on_token is not None:
            on_token(out)
        if bool(done.all()):
            break
        step_tokens, step_positions = nxt[:, None], None  # the cache knows each row's next position
        if not use_cache:
            tokens = torch.cat([tokens, step_tokens], 1)
            positions = torch.cat([positions, positions[:, -1:] + 1], 1)
    return out


# ---------------------------------------------------------------------------------------------
# Loading


class SampleError(UserError):
    pass


def load(sample_args: SampleArgs, device) -> tuple[Llama4, Tokenizer, str]:
    """Model (eval mode, on device) and tokenizer from a checkpoint or an exported HF folder."""
    if sample_args.hf:
        model, where = checkpoint.load_hf(sample_args.hf, device), Path(sample_args.hf)
        tok_file, ckpt = where / "tokenizer.json", None
    else:
        where = checkpoint.find_checkpoint(sample_args.ckpt)
        model, ckpt = checkpoint.load_model(where, device)
        tok_file = where.parent / "tokenizer.json"
    if not tok_file.exists():
        raise SampleError(f"no tokenizer.json beside {where}; copy the run's tokenizer there "
                          "(scripts/export_hf.py writes it into exported folders)")
    try:
        tok = Tokenizer.load(tok_file)
    except UserError as e:
        raise SampleError(f"unknown tokenizer: {e}") from e
    if ckpt is not None:  # the same check and advice as train.py's and the export's
        checkpoint.check_tokenizer(tok, tok_file, ckpt, where)
    else:
        try:
            check_tokenizer(tok, model.args, str(tok_file), model=f"{where / 'config.json'}",
                            fix="export the folder again with scripts/export_hf.py")
        except UserError as e:
            raise SampleError(str(e)) from e
    if device.type == "cuda":  # bf16 weights; the RoPE tables stay fp32
        model = model.to(torch.bfloat16).reset_buffers()
    return model, tok, str(where)


def load_image(path, args: config.ModelArgs) -> torch.Tensor:
    """A PNG/JPEG as (1, 3, S, S), resized to image_size, scaled to [-1, 1] as Llama 4 does."""
    from PIL import Image
    try:
        img = Image.open(path).convert("RGB").resize((args.image_size, args.image_size))
    except OSError as e:
        raise SampleError(f"--image {path}: cannot read it as an image ({e})") from e
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(args.image_size,
                                                                                  args.image_size, 3)
    return (pixels.permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5


def image_prompt(args: config.ModelArgs) -> list[int]:
    """The Llama 4 layout of one single-tile image: <|image_start|><|image|><|patch|>...<|image_end|>."""
    return [args.image_start_id, args.image_id] + [args.patch_id] * args.image_tokens + [args.image_end_id]


def prompts_from(sample_args: SampleArgs, tok: Tokenizer, args: config.ModelArgs, warn) -> list[list[int]]:
    texts = list(sample_args.prompt)
    if sample_args.prompt_file:
        try:
            texts += [ln for ln in Path(sample_args.prompt_file).read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise SampleError(f"--prompt_file {sample_args.prompt_file}: {e.strerror}") from e
    texts = texts or [""]
    prefix = [args.eos_id] + (image_prompt(args) if sample_args.image else [])
    out = []
    for text in texts:
        ids = prefix + tok.encode(text)
        if len(ids) > args.max_seq_len - 1:
            warn(f"warning: prompt of {len(ids)} tokens is longer than the context allows "
                 f"({args.max_seq_len - 1}); keeping its last {args.max_seq_len - 1} tokens")
            if sample_args.image:
                raise SampleError("the prompt with its image does not fit the context; shorten it")
            ids = ids[-(args.max_seq_len - 1):]
        out += [ids] * sample_args.num_samples
    return out


def main(argv=None):
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\nsample.py: interrupted", file=sys.stderr)
        sys.exit(130)


def _main(argv=None):
    _, (sample_args,) = config.parse_args([SampleArgs], argv, prog="sample.py", description=__doc__)
    try:
        device = runtime.resolve_device(sample_args.device)
        model, tok, where = load(sample_args, device)
        images = None
        if sample_args.image:
            if not model.args.vision:
                raise SampleError(f"{where} has no vision stub (it was trained without --vision); "
                                  "drop --image")
            images = load_image(sample_args.image, model.args).to(device, next(model.parameters()).dtype)
        prompts = prompts_from(sample_args, tok, model.args, lambda m: print(m, file=sys.stderr))
        if images is not None:
            images = images.expand(len(prompts), -1, -1, -1)
    except UserError as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)

    texts = [tok.decode(p[1:]) for p in prompts]
    stream = len(prompts) == 1
    printed = [0]

    def on_token(rows):
        text = tok.decode(rows[0])
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[printed[0]:])
            sys.stdout.flush()
            printed[0] = len(text)

    if stream:
        sys.stdout.write(texts[0])
    rows = generate(model, prompts, sample_args.max_new_tokens, temperature=sample_args.temperature,
                    top_k=sample_args.top_k, top_p=sample_args.top_p, greedy=sample_args.greedy,
                    seed=sample_args.seed, use_cache=not sample_args.no_cache, images=images,
                    on_token=on_token if stream else None)
    if stream:
        sys.stdout.write(tok.decode(rows[0])[printed[0]:] + "\n")
        return rows
    for i, (text, row) in enumerate(zip(texts, rows, strict=True)):
        print(f"{'-' * 20} sample {i + 1} of {len(rows)} {'-' * 20}")
        print(text + tok.decode(row))
    return rows


if __name__ == "__main__":
    main()
