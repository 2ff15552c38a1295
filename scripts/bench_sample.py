"""Decode benchmark: tokens/s for 256 greedy tokens after a 16-token prompt, batch 1 and batch 8,
ours against transformers' generate, on the CPU or a GPU.

    python scripts/bench_sample.py                  # CPU, scout-128m, fp32: img/bench_sample.json
    python scripts/bench_sample.py --device cuda    # bf16, eager and compiled: img/bench_sample_cuda.json
    python scripts/bench_sample.py --quick --out /tmp/b.json   # debug preset, 8 tokens: seconds

Same random weights, same prompts, greedy, variants interleaved, medians reported:
  cached      our generate() with the static KV cache, the decode step eager
  compiled    the same with the one-token step compiled (CUDA graphs on CUDA); on CUDA by default
  compiled-nograph  compiled in torch.compile's default mode: the same kernels, no CUDA graph (only
              when named in --variants: it tells a CUDA-graph fault from a compiler one)
  reference   cached, with the MoE's reference path (every expert, masked), eager (only when named
              in --variants): the path a compiled step takes where grouped_mm is missing (fp32 on
              CUDA), so that comparing compiled against it leaves the compiler alone in question
  uncached    our generate() recomputing the whole sequence each step (sample.py's --no_cache)
  hf          transformers' Llama4ForCausalLM.generate on the exported folder (its own cache)
End-of-text neither stops nor is banned in any of them (transformers gets eos_token_id=None, not
min_new_tokens, which would mask it), so every variant makes exactly --new_tokens tokens per row;
the special tokens no training target holds are masked in all of them (ModelArgs.never_drawn;
transformers' suppress_tokens).
Each variant first runs --warmup times untimed (the compiled one at least once: compiling and
recording the CUDA graph happen there; `cudagraph_skips` counts the CUDA graphs Inductor skipped
meanwhile, which it does without an error or, by default, a word: nonzero, the variant was timed
without them). Each variant's tokens are compared with the cached ones:
`same_tokens_as_cached` and the share of equal tokens (in bf16 near-ties may flip a token); with
the reference variant, also the share equal to its tokens. Without cached in --variants, they are
compared with the first variant instead, and the keys and the column say so (`same_tokens_as_uncached`).
--ragged cuts row i's prompt by i % 8 tokens, so that a batch is left-padded (our variants only:
transformers tunes the NoPE layers' temperature by slot, not by position, so its padded rows
differ by design).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import errors  # noqa: E402, F401  first: a Ctrl-C while torch imports is one line, no traceback

# isort: split

import torch  # noqa: E402

import config  # noqa: E402
import runtime  # noqa: E402
import sample  # noqa: E402
import storage  # noqa: E402
from errors import run_script  # noqa: E402
from model import Llama4  # noqa: E402

PROMPT, NEW = 16, 256
VARIANTS = ("cached", "compiled", "compiled-nograph", "reference", "uncached", "hf")
RESULT_KEYS = ("config", "results")  # in its JSON: an existing --out without them is refused


def decode(variant, model, hf, prompts, new_tokens, ragged=False) -> list[list[int]]:
    """Greedy decode of `new_tokens` tokens per row with one of the variants; ragged: row i's
    prompt without its first i % 8 tokens (sample.generate left-pads the batch)."""
    if variant == "hf":
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                          do_sample=False, eos_token_id=None, pad_token_id=model.args.pad_id,
                          suppress_tokens=model.args.never_drawn)  # (as ours)
        return out[:, prompts.shape[1]:].tolist()
    rows = [r[i % 8:] if ragged else r for i, r in enumerate(prompts.tolist())]
    compile = {"compiled": True, "compiled-nograph": "default"}.get(variant, False)
    with sample.moe_reference_path(model, enabled=variant == "reference"):
        return sample.generate(model, rows, new_tokens, greedy=True, stop_at_eos=False,
                               use_cache=variant != "uncached", compile=compile)


def cudagraph_skips() -> int | None:
    """How many CUDA graphs Inductor has skipped in this process ("skipping cudagraphs due to ...",
    logged only where its artifact log is on): a compiled step that runs without its graph raises
    nothing. None where torch keeps no such count."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["inductor"].get("cudagraph_skips", 0))
    except Exception:  # (torch's internals: another version may lack them)
        return None


def timed(variant, model, hf, prompts, new_tokens, ragged=False) -> tuple[float, list[list[int]]]:
    device = prompts.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = decode(variant, model, hf, prompts, new_tokens, ragged)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, out


def build(opts, device, dtype):
    """Our model (random weights) and, unless --no-hf, transformers' copy of it, both in dtype."""
    torch.manual_seed(0)
    args = config.ModelArgs(**{**config.PRESETS[opts.preset]["ModelArgs"], "max_seq_len": opts.max_seq_len})
    model = Llama4(args).eval()
    hf = None
    if "hf" in opts.variants:
        from transformers import Llama4ForCausalLM
        from transformers.utils import logging as hf_logging

        from checkpoint import export_hf
        hf_logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as d:
            export_hf(model, d)
            hf = Llama4ForCausalLM.from_pretrained(d, attn_implementation="sdpa", dtype=dtype)
    return model.to(device, dtype).reset_buffers(), hf.to(device).eval() if hf is not None else None


def shares(outputs: dict, ref: list[list[int]]) -> dict:
    """Each variant's share of tokens equal to `ref`'s, position by position."""
    n = sum(len(row) for row in ref)
    return {k: sum(a == b for ra, rb in zip(out, ref, strict=True) for a, b in zip(ra, rb, strict=True)) / n
            for k, out in outputs.items()}


def compared_with(variants) -> str:
    """The variant whose tokens the others are compared with: cached where it ran, else the first
    (the result's keys and the table's column name it)."""
    return "cached" if "cached" in variants else variants[0]


def measure(opts, model, hf, device, keep=lambda results: None) -> dict:
    """tokens/s of each variant at each batch size, and how their tokens compare; keep(results)
    after each batch size."""
    g = torch.Generator().manual_seed(1)
    results = {}
    for B in opts.batches:
        prompts = torch.randint(8, model.args.vocab_size, (B, PROMPT), generator=g).to(device)
        outputs, times, fell_back, skips = {}, {k: [] for k in opts.variants}, {}, {}
        with torch.no_grad():
            for name in opts.variants:
                compiled, failures = name.startswith("compiled"), len(sample.DecodeStep.failures)
                skipped = cudagraph_skips() if compiled else None
                for _ in range(max(opts.warmup, compiled)):
                    decode(name, model, hf, prompts, opts.new_tokens, opts.ragged)
                if len(sample.DecodeStep.failures) > failures:  # timed, but eagerly: said so
                    fell_back[name] = sample.DecodeStep.failures[failures]
                if skipped is not None:  # (compiled and recorded in the warm-up)
                    skips[name] = cudagraph_skips() - skipped
            for _ in range(opts.repeats):
                for name in opts.variants:
                    seconds, outputs[name] = timed(name, model, hf, prompts, opts.new_tokens, opts.ragged)
                    times[name].append(seconds)
        base = compared_with(opts.variants)
        tok_s = {k: B * opts.new_tokens / statistics.median(v) for k, v in times.items()}
        same = {k: outputs[k] == outputs[base] for k in opts.variants}
        r = {"tokens_per_s": tok_s, f"same_tokens_as_{base}": same,
             f"share_of_tokens_as_{base}": shares(outputs, outputs[base])}
        if "reference" in outputs:
            r["share_of_tokens_as_reference"] = shares(outputs, outputs["reference"])
        if fell_back:  # a compiled variant whose step could not compile ran eagerly
            r["fell_back_to_eager"] = fell_back
        if skips:  # CUDA graphs Inductor skipped as a compiled variant compiled (nonzero: ran without)
            r["cudagraph_skips"] = skips
        for ours in ["cached", "compiled"]:
            for other in ["uncached", "hf", "cached"]:
                if ours in tok_s and other in tok_s and ours != other:
                    r[f"{ours}_over_{other}"] = tok_s[ours] / tok_s[other]
        results[f"batch{B}"] = r
        keep(results)
    return results


def report(opts, result):
    """The table on stdout: tokens/s, ours (compiled, else cached) over each of uncached and hf that
    ran (a variant left out, such as hf under --no-hf, has no column), and whether tokens agree."""
    c, base = result["config"], compared_with(opts.variants)
    ours = "compiled" if "compiled" in opts.variants else "cached"
    others = [v for v in ["hf", "uncached"] if v in opts.variants and ours in opts.variants]
    print(f"decode: {c['new_tokens']} new tokens after a {PROMPT}-token prompt, preset {c['preset']}, "
          f"greedy, {c['dtype']}, {c['device_name']}, median of {c['repeats']}")
    width = {v: max(15, len(v) + 7) for v in opts.variants}  # (" reference tok/s": a space between columns)
    print(f"{'batch':6s}" + "".join(f"{v + ' tok/s':>{width[v]}s}" for v in opts.variants)
          + "".join(f"{k:>20s}" for k in [*(f"ours/{v}" for v in others), f"same as {base}"]))
    for key, r in result["results"].items():
        t = r["tokens_per_s"]
        same = "yes" if all(r[f"same_tokens_as_{base}"].values()) else "NO"
        print(f"{key[5:]:6s}" + "".join(f"{t[v]:{width[v]},.0f}" for v in opts.variants)
              + "".join(f"{r[f'{ours}_over_{v}']:20.2f}" for v in others) + f"{same:>20s}")
        for v, why in r.get("fell_back_to_eager", {}).items():
            print(f"  {v}: compiling failed ({why}); timed eagerly")
        for v, n in r.get("cudagraph_skips", {}).items():
            if n:
                print(f"  {v}: Inductor skipped {n} CUDA graph(s); timed without them")


def check_variants(p, opts) -> None:
    """--variants as a one-line error before any work: a name unknown, named twice (two identical
    columns), none at all (an unset variable: not the default set), or only hf where --no-hf or
    --ragged leaves it out (not an IndexError after the model is built)."""
    if opts.variants is None:
        return
    names = [v for v in opts.variants.split(",") if v]
    if not names:
        p.error(f"--variants is empty; name some of {','.join(VARIANTS)}, or leave --variants out for the "
                "default set")
    if unknown := sorted(set(names) - set(VARIANTS)):
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {','.join(VARIANTS)}")
    if twice := sorted({v for v in names if names.count(v) > 1}):
        p.error(f"--variants: {', '.join(twice)} named twice; name each variant once")
    if names == ["hf"] and (opts.no_hf or opts.ragged):
        why = "--no-hf" if opts.no_hf else "--ragged (our variants only)"
        p.error(f"--variants hf with {why} leaves no variant to run; name another variant, e.g. "
                "--variants cached")


def parse(argv):
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="scout-128m", choices=sorted(config.PRESETS),
                   help="model shape (random weights: speed only)")
    p.add_argument("--max_seq_len", type=config.number(int), default=PROMPT + NEW,
                   help=f"the model's context, the KV cache's length (default {PROMPT + NEW}: the "
                        f"{PROMPT}-token prompt and {NEW} --new_tokens; with --quick, the prompt and its "
                        "--new_tokens)")
    p.add_argument("--new_tokens", type=config.at_least_1, default=NEW,
                   help=f"greedy tokens made per row (default {NEW}; 8 with --quick)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes, each timed in turn "
                                                    "(default 1,8; 1,2 with --quick)")
    p.add_argument("--repeats", type=config.at_least_1, default=2,
                   help="timed runs per variant and batch size, the median reported (default 2; 1 with "
                        "--quick)")
    p.add_argument("--warmup", type=config.at_least(0), default=None,
                   help="untimed runs per variant (default: 1 on CUDA, 0 on CPU; the compiled variant "
                        "always 1+)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights and compute: auto = bfloat16 on CUDA from sm80 on, else float32")
    p.add_argument("--variants", default=None, help="comma-separated, of cached,compiled,compiled-nograph,"
                                                    "reference,uncached,hf (default: cached,compiled,"
                                                    "uncached,hf on CUDA; cached,uncached,hf on CPU)")
    p.add_argument("--no-hf", action="store_true", help="leave transformers out")
    p.add_argument("--ragged", action="store_true", help="prompts of 16 down to 9 tokens, left-padded into "
                                                         "a batch (our variants only)")
    p.add_argument("--quick", action="store_true", help="the debug preset, 8 new tokens, batches 1,2, one "
                                                        "warm-up and one timed run, each unless typed: "
                                                        "seconds on CPU (a test)")
    p.add_argument("--out", default=None, type=storage.expand_home,
                   help="a .json file, new or an earlier result of this benchmark (default, for a run with "
                        "every other option at its default: img/bench_sample.json, or "
                        "bench_sample_cuda.json on CUDA; other runs write only where --out says)")
    opts = p.parse_args(argv)
    opts.given, opts.parser = argparse.Namespace(**vars(opts)), p  # as typed: see storage.results_path
    check_variants(p, opts)
    typed = p.typed(argv)
    if opts.quick and "preset" in typed:
        p.error("--quick decodes the debug preset; drop --preset or --quick")
    if opts.quick:  # its settings, where the command line gives none
        for name, value in {"preset": "debug", "new_tokens": 8, "batches": "1,2", "repeats": 1,
                            "warmup": 1}.items():
            if name not in typed:
                setattr(opts, name, value)
        if "max_seq_len" not in typed:
            opts.max_seq_len = PROMPT + opts.new_tokens
    if opts.max_seq_len < PROMPT + opts.new_tokens:  # generate() would stop at the context, short of them
        p.error(f"--max_seq_len {opts.max_seq_len} has no room for {opts.new_tokens} --new_tokens after the "
                f"{PROMPT}-token prompt; raise --max_seq_len to {PROMPT + opts.new_tokens} or lower "
                "--new_tokens")
    opts.batches = p.counts("--batches", opts.batches)
    return opts


def main(argv=None):
    opts = parse(argv)
    if problem := storage.not_a_result("--out", opts.out, "bench_sample.json", RESULT_KEYS):
        opts.parser.error(problem)  # (before the work: a device or checkpoint there became the JSON)
    device = runtime.resolve_device(opts.device)
    dtype = runtime.compute_dtype(opts.dtype, device)
    cuda = device.type == "cuda"
    default = "cached,compiled,uncached,hf" if cuda else "cached,uncached,hf"
    opts.variants = [v for v in (opts.variants or default).split(",") if v]
    if (opts.no_hf or opts.ragged) and "hf" in opts.variants:  # ragged: transformers' padded rows differ
        opts.variants.remove("hf")
    opts.warmup = (1 if cuda else 0) if opts.warmup is None else opts.warmup
    if not cuda:
        torch.set_num_threads(2)
    figure = ROOT / "img" / ("bench_sample_cuda.json" if cuda else "bench_sample.json")
    out = storage.results_file(opts.parser, opts.given, figure, ignore=("device",))  # (before the work)
    model, hf = build(opts, device, dtype)
    name = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} CPU threads"
    result = {"config": {"preset": opts.preset, "max_seq_len": opts.max_seq_len, "prompt": PROMPT,
                         "new_tokens": opts.new_tokens, "repeats": opts.repeats, "warmup": opts.warmup,
                         "ragged": opts.ragged,
                         "variants": opts.variants, "device": str(device), "device_name": name,
                         "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__},
              "results": {}}

    def keep(results):  # after each batch size: a run stopped at a time limit keeps those done
        result["results"] = results
        if out is not None:
            storage.save_json(out, result, "pick another --out", sort_keys=False)
    measure(opts, model, hf, device, keep)
    report(opts, result)
    return result


if __name__ == "__main__":
    run_script(main, "bench_sample.py")
