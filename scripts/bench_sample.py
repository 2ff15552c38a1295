"""Decode benchmark: tokens/s for 256 new tokens after a 16-token prompt, batch 1 and batch 8.

    python scripts/bench_sample.py                 # scout-128m; writes img/bench_sample.json
    python scripts/bench_sample.py --preset tiny --repeats 3

Same weights, same prompts, greedy, one run (variants interleaved, medians reported), 2 threads:
  cached      our generate() with the KV cache
  uncached    our generate() recomputing the whole sequence each step (--no_cache)
  hf          transformers' Llama4ForCausalLM.generate on the exported folder (its own cache)
End-of-text does not stop any of them, so every variant makes exactly 256 tokens per row.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import config  # noqa: E402
import sample  # noqa: E402
from model import Llama4  # noqa: E402

PROMPT, NEW = 16, 256


def decode(variant, model, hf, prompts, new_tokens) -> list[list[int]]:
    """Greedy decode of `new_tokens` tokens per row with one of the three variants."""
    if variant == "hf":
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=model.args.pad_id)
        return out[:, prompts.shape[1]:].tolist()
    return sample.generate(model, prompts.tolist(), new_tokens, greedy=True, stop_at_eos=False,
                           use_cache=variant == "cached")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="scout-128m", help="model shape (random weights: speed only)")
    p.add_argument("--max_seq_len", type=int, default=PROMPT + NEW)
    p.add_argument("--new_tokens", type=int, default=NEW)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--out", default=str(ROOT / "img" / "bench_sample.json"))
    opts = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    args = config.ModelArgs(**{**config.PRESETS[opts.preset]["ModelArgs"], "max_seq_len": opts.max_seq_len})
    model = Llama4(args).eval()
    hf = None
    if not opts.no_hf:
        from transformers import Llama4ForCausalLM
        from transformers.utils import logging as hf_logging

        from checkpoint import export_hf
        hf_logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as d:
            export_hf(model, d)
            hf = Llama4ForCausalLM.from_pretrained(d, attn_implementation="sdpa").eval()

    g = torch.Generator().manual_seed(1)
    results = {}
    for B in [int(b) for b in opts.batches.split(",")]:
        prompts = torch.randint(8, args.vocab_size, (B, PROMPT), generator=g)
        runs = ["cached", "uncached"] + (["hf"] if hf is not None else [])
        outputs, times = {}, {k: [] for k in runs}
        with torch.no_grad():
            for _ in range(opts.repeats):
                for name in runs:
                    t = time.perf_counter()
                    outputs[name] = decode(name, model, hf, prompts, opts.new_tokens)
                    times[name].append(time.perf_counter() - t)
        same = {k: outputs[k] == outputs["cached"] for k in runs}
        tok_s = {k: B * opts.new_tokens / statistics.median(v) for k, v in times.items()}
        results[f"batch{B}"] = {"tokens_per_s": tok_s, "same_tokens_as_cached": same,
                                "cached_over_uncached": tok_s["cached"] / tok_s["uncached"]}
        if "hf" in tok_s:
            results[f"batch{B}"]["cached_over_hf"] = tok_s["cached"] / tok_s["hf"]

    print(f"decode: {opts.new_tokens} new tokens after a {PROMPT}-token prompt, preset {opts.preset}, "
          f"greedy, fp32, 2 threads, median of {opts.repeats}")
    print(f"{'batch':6s} {'cached tok/s':>13s} {'uncached':>10s} {'hf':>10s} {'cached/uncached':>16s} "
          f"{'cached/hf':>10s}")
    for key, r in results.items():
        t = r["tokens_per_s"]
        print(f"{key[5:]:6s} {t['cached']:13.0f} {t['uncached']:10.0f} {t.get('hf', float('nan')):10.0f} "
              f"{r['cached_over_uncached']:16.2f} {r.get('cached_over_hf', float('nan')):10.2f}")
    result = {"config": {"preset": opts.preset, "max_seq_len": opts.max_seq_len, "prompt": PROMPT,
                         "new_tokens": opts.new_tokens, "repeats": opts.repeats, "torch": torch.__version__},
              "results": results}
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
