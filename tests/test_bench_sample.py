"""scripts/bench_sample.py --quick: the decode benchmark runs end to end on CPU in seconds, so that
it cannot rot, and reports what the README quotes (tokens/s per variant and batch, the ratios, and
whether the greedy tokens agree)."""

import json

import pytest
from conftest import option_helps

from scripts.bench_sample import main


def test_quick_decode_benchmark_reports_every_variant(tmp_path, capsys):
    out = tmp_path / "bench_sample.json"
    result = main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["config"]["preset"] == "debug" and result["config"]["dtype"] == "float32"
    assert set(result["results"]) == {"batch1", "batch2"}
    for r in result["results"].values():
        assert set(r["tokens_per_s"]) == {"cached", "uncached", "hf"}
        assert all(v > 0 for v in r["tokens_per_s"].values())
        assert all(r["same_tokens_as_cached"].values())  # fp32: ours, uncached and transformers agree
        assert {"cached_over_uncached", "cached_over_hf"} <= set(r)
    assert "ours/hf" in capsys.readouterr().out


def test_a_quick_run_leaves_the_readme_figure_alone(tmp_path, monkeypatch, capsys):
    """Without --out, only a run at the defaults writes img/bench_sample.json (the README's table)."""
    from scripts import bench_sample
    monkeypatch.setattr(bench_sample, "ROOT", tmp_path)  # (a regression must not write the real one)
    main(["--quick", "--variants", "cached"])
    assert not (tmp_path / "img").exists()
    assert "not written to" in capsys.readouterr().err


def test_ragged_prompts_give_a_left_padded_batch_equal_across_variants(tmp_path):
    """--ragged (the GPU check's float32 agreement pass): rows of different lengths, left-padded
    into one batch; the cached and uncached paths give the same tokens, and transformers (which
    tunes the temperature by slot) is left out."""
    result = main(["--quick", "--ragged", "--out", str(tmp_path / "b.json")])
    r = result["results"]["batch2"]  # rows of 16 and 15 tokens
    assert result["config"]["ragged"] and set(r["tokens_per_s"]) == {"cached", "uncached"}
    assert all(r["same_tokens_as_cached"].values())
    # the MoE's reference path, eager: what a compiled step runs where grouped_mm is missing
    result = main(["--quick", "--ragged", "--variants", "cached,reference", "--out",
                   str(tmp_path / "c.json")])
    r = result["results"]["batch2"]
    assert all(r["same_tokens_as_cached"].values()) and r["share_of_tokens_as_reference"] == {
        "cached": 1.0, "reference": 1.0}


def test_each_batch_is_written_as_it_is_measured(tmp_path, monkeypatch):
    """A run stopped by a time limit (a GPU lease) keeps the batch sizes it finished."""
    from scripts import bench_sample
    real = bench_sample.timed

    def timed(variant, model, hf, prompts, *args):
        if prompts.shape[0] == 2:
            raise KeyboardInterrupt  # stopped from outside at the second batch size
        return real(variant, model, hf, prompts, *args)
    monkeypatch.setattr(bench_sample, "timed", timed)
    out = tmp_path / "b.json"
    with pytest.raises(KeyboardInterrupt):
        main(["--quick", "--no-hf", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"batch1"} and saved["results"]["batch1"]["tokens_per_s"]["cached"] > 0


def test_a_compiled_variant_that_fell_back_to_eager_is_reported(tmp_path, monkeypatch, capsys):
    """The decode step falls back to eager when it cannot compile: the benchmark then times eager
    steps under the compiled variant's name. The result and the table say so (and the GPU check
    counts it as a failure), so that eager speed is never quoted as compiled."""
    import torch

    import sample
    from scripts import bench

    def fail(*args, **kwargs):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(torch, "compile", fail)
    monkeypatch.setattr(sample.DecodeStep, "failures", [])
    result = main(["--quick", "--no-hf", "--variants", "cached,compiled", "--out", str(tmp_path / "b.json")])
    r = result["results"]["batch1"]
    assert r["fell_back_to_eager"] == {"compiled": "RuntimeError: no compiler here"}
    out = capsys.readouterr().out
    assert "compiled: compiling failed (RuntimeError: no compiler here); timed eagerly" in out
    assert "At batch 1, compiled could not compile (RuntimeError: no compiler here)" in \
        "\n".join(bench.sample_table(result))
    from scripts import gpu_check
    said = gpu_check.failed_variants(tmp_path / "b.json")
    assert said == [f"bench_sample.py compiled at batch{b} (fell back to eager)" for b in (1, 2)]


def test_quick_keeps_what_is_typed():
    """--quick's own settings went over typed ones silently (--new_tokens 32 decoded 8)."""
    from scripts.bench_sample import PROMPT, parse
    opts = parse(["--quick", "--new_tokens", "16", "--batches", "3", "--repeats", "2"])
    assert (opts.preset, opts.new_tokens, opts.batches, opts.repeats) == ("debug", 16, [3], 2)
    assert opts.max_seq_len == PROMPT + 16 and opts.warmup == 1
    opts = parse(["--quick"])
    got = (opts.preset, opts.new_tokens, opts.batches, opts.repeats, opts.max_seq_len)
    assert got == ("debug", 8, [1, 2], 1, PROMPT + 8)


def test_without_cached_the_tokens_are_compared_with_the_variant_named(tmp_path, capsys):
    """Without cached in --variants, "same_tokens_as_cached" and the "same as cached" column held a
    comparison with the first variant: the key and the column now name the variant compared with."""
    result = main(["--quick", "--no-hf", "--batches", "1", "--variants", "uncached,reference",
                   "--out", str(tmp_path / "b.json")])
    r = result["results"]["batch1"]
    assert "same_tokens_as_cached" not in r and "share_of_tokens_as_cached" not in r
    assert r["same_tokens_as_uncached"] == {"uncached": True, "reference": True}
    assert r["share_of_tokens_as_uncached"] == {"uncached": 1.0, "reference": 1.0}
    out = capsys.readouterr().out
    assert "same as uncached" in out and "same as cached" not in out


def test_figures_from_given_times_and_tokens(tmp_path, monkeypatch):
    """tokens/s = batch x new tokens / the median time; ours over the others the right way up; the
    tokens compared with cached's and with reference's, shares per token; the compiled variant
    warmed up even at --warmup 0. Times and tokens faked (catches the mean, a tokens/s without the
    batch, a comparison of a variant with itself, an inverted ratio)."""
    from scripts import bench_sample
    times = {"cached": iter([1.0, 1.0, 7.0]), "uncached": iter([4.0, 4.0, 4.0]),
             "reference": iter([2.0] * 3), "compiled": iter([0.5] * 3)}
    tokens = {"cached": [[1] * 8, [2] * 8], "uncached": [[1] * 8, [2] * 7 + [3]],
              "reference": [[1] * 8, [2] * 6 + [3, 3]], "compiled": [[1] * 8, [2] * 8]}
    warmed = []
    monkeypatch.setattr(bench_sample, "decode", lambda variant, *args: warmed.append(variant))
    monkeypatch.setattr(bench_sample, "timed", lambda variant, *args: (next(times[variant]), tokens[variant]))
    result = main(["--quick", "--variants", "cached,uncached,reference,compiled", "--batches", "2",
                   "--repeats", "3", "--warmup", "0", "--out", str(tmp_path / "b.json")])
    r = result["results"]["batch2"]
    assert warmed == ["compiled"]
    assert r["tokens_per_s"] == {"cached": 16.0, "uncached": 4.0, "reference": 8.0, "compiled": 32.0}
    assert r["cached_over_uncached"] == 4.0 and r["compiled_over_cached"] == 2.0
    assert r["same_tokens_as_cached"] == {"cached": True, "uncached": False, "reference": False,
                                          "compiled": True}
    assert r["share_of_tokens_as_cached"] == {"cached": 1.0, "uncached": 15 / 16, "reference": 14 / 16,
                                              "compiled": 1.0}
    assert r["share_of_tokens_as_reference"]["cached"] == 14 / 16


def test_hf_decodes_with_transformers_and_ragged_rows_are_cut(monkeypatch):
    """The hf variant is transformers' generate (its new tokens only), not our model; --ragged cuts
    row i's prompt by i % 8 tokens before our generate() pads the batch."""
    from types import SimpleNamespace

    import torch

    import config
    import sample
    from scripts import bench_sample

    class FakeHF:
        def generate(self, prompts, **kwargs):
            return torch.cat([prompts, torch.full((prompts.shape[0], kwargs["max_new_tokens"]), 7)], 1)
    model = SimpleNamespace(args=config.ModelArgs())  # (hf: its special ids; ragged: generate's, faked)
    prompts = torch.arange(48).reshape(3, 16)
    assert bench_sample.decode("hf", model, FakeHF(), prompts, 3) == [[7, 7, 7]] * 3
    rows = []
    monkeypatch.setattr(sample, "generate", lambda model, r, *args, **kwargs: rows.extend(r))
    bench_sample.decode("cached", model, None, prompts, 3, ragged=True)
    assert rows == [prompts[0].tolist(), prompts[1, 1:].tolist(), prompts[2, 2:].tolist()]


def test_each_variant_decodes_as_its_name_says(monkeypatch):
    """compiled: compile=True (CUDA graphs on CUDA), compiled-nograph: the default mode, uncached: no
    cache, reference: the MoE's reference path (catches each flag lost: the variants then time and
    compare the same thing under other names)."""
    import contextlib
    from types import SimpleNamespace

    import torch

    import sample
    from scripts import bench_sample
    seen = []

    @contextlib.contextmanager
    def reference_path(model, enabled=True):
        seen.append(("reference", enabled))
        yield
    monkeypatch.setattr(sample, "moe_reference_path", reference_path)
    monkeypatch.setattr(sample, "generate", lambda model, rows, n, **kw: seen.append((kw["use_cache"],
                                                                                      kw["compile"])))
    model, prompts = SimpleNamespace(args=SimpleNamespace(pad_id=0)), torch.ones(1, 4, dtype=torch.long)
    for variant in ["cached", "compiled", "compiled-nograph", "reference", "uncached"]:
        bench_sample.decode(variant, model, None, prompts, 2)
    assert seen == [("reference", False), (True, False), ("reference", False), (True, True),
                    ("reference", False), (True, "default"), ("reference", True), (True, False),
                    ("reference", False), (False, False)]


def test_every_compiled_variant_is_warmed_up_and_its_own_skips_counted(tmp_path, monkeypatch):
    """compiled-nograph is compiled too: warmed up at --warmup 0, and the CUDA graphs skipped are
    counted per variant, those skipped while it compiled only (catches `== "compiled"` for
    `startswith`, and the process's total given to each)."""
    from collections import Counter

    from torch._dynamo.utils import counters

    from scripts import bench_sample
    monkeypatch.setitem(counters, "inductor", Counter())
    warmed = []

    def fake_decode(variant, model, hf, prompts, new_tokens, ragged=False):
        warmed.append(variant)
        if variant == "compiled":
            counters["inductor"]["cudagraph_skips"] += 2
        return [[1] * new_tokens for _ in range(prompts.shape[0])]
    monkeypatch.setattr(bench_sample, "decode", fake_decode)
    monkeypatch.setattr(bench_sample, "timed", lambda variant, model, hf, prompts, n, ragged: (
        1.0, [[1] * n for _ in range(prompts.shape[0])]))
    result = main(["--quick", "--variants", "cached,compiled,compiled-nograph", "--batches", "1",
                   "--warmup", "0", "--out", str(tmp_path / "b.json")])
    assert warmed == ["compiled", "compiled-nograph"]
    assert result["results"]["batch1"]["cudagraph_skips"] == {"compiled": 2, "compiled-nograph": 0}


def test_the_model_is_built_with_the_context_asked():
    """--max_seq_len sizes the model (and its static KV cache), not the preset's context."""
    import torch

    from scripts import bench_sample
    opts = bench_sample.parse(["--quick", "--variants", "cached"])
    opts.variants = ["cached"]
    model, hf = bench_sample.build(opts, torch.device("cpu"), torch.float32)
    assert model.args.max_seq_len == opts.max_seq_len == 24 and hf is None


def test_warmup_0_is_kept_on_cuda_where_the_default_is_1(tmp_path, monkeypatch):
    """Catches --warmup 0 taken for "not given" (`opts.warmup or ...`): on CUDA the GPU check's float32
    pass asks for no eager warm-up and got one per variant; without --warmup, CUDA warms up once.
    (A CUDA device faked: nothing is built or run.)"""
    import torch

    import runtime
    from scripts import bench_sample
    monkeypatch.setattr(runtime, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    monkeypatch.setattr(bench_sample, "build", lambda opts, device, dtype: (None, None))
    monkeypatch.setattr(bench_sample, "report", lambda opts, result: None)
    seen = []
    monkeypatch.setattr(bench_sample, "measure",
                        lambda opts, model, hf, device, keep: seen.append(opts.warmup))
    for warmup in (["--warmup", "0"], []):
        main(["--dtype", "float32", "--no-hf", *warmup, "--out", str(tmp_path / "b.json")])
    assert seen == [0, 1]


def test_no_hf_leaves_the_transformers_column_out_of_the_table(tmp_path, capsys):
    """Bug caught: --no-hf printed an ours/hf column filled with nan; a column is there only for a
    variant that ran (the JSON never held the missing ratio: bench.py's table reads it unchanged)."""
    result = main(["--quick", "--no-hf", "--out", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("batch"))
    assert "ours/hf" not in header and "ours/uncached" in header and "nan" not in out
    assert all("cached_over_hf" not in r for r in result["results"].values())
    main(["--quick", "--no-hf", "--variants", "cached", "--out", str(tmp_path / "b.json")])  # (a rerun)
    out = capsys.readouterr().out
    assert "ours/" not in out and "nan" not in out and out.splitlines()[1].split() == [
        "batch", "cached", "tok/s", "same", "as", "cached"]


def test_the_table_compares_the_compiled_variant_where_it_ran(capsys):
    """Bug caught: the ours/uncached column taken from the cached variant though compiled ran (ours is
    compiled where it ran, else cached, as the results' `{ours}_over_*` keys are). The result is made up:
    nothing is built or timed."""
    from types import SimpleNamespace

    from scripts import bench_sample
    result = {"config": {"new_tokens": 8, "preset": "debug", "dtype": "float32", "device_name": "cpu",
                         "repeats": 1},
              "results": {"batch1": {"tokens_per_s": {"cached": 100.0, "compiled": 300.0, "uncached": 50.0},
                                     "compiled_over_uncached": 6.0, "cached_over_uncached": 2.0,
                                     "same_tokens_as_cached": {"compiled": True, "uncached": True}}}}
    bench_sample.report(SimpleNamespace(variants=["cached", "compiled", "uncached"]), result)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-4:] == ["ours/uncached", "same", "as", "cached"]
    assert lines[2].split() == ["1", "100", "300", "50", "6.00", "yes"]


@pytest.mark.parametrize("argv, message", [
    (["--no-hf", "--variants", "hf"], "--variants hf with --no-hf leaves no variant to run; name another "
                                      "variant, e.g. --variants cached"),  # (was an IndexError, late)
    (["--ragged", "--variants", "hf"], "--variants hf with --ragged (our variants only) leaves no variant"),
    (["--variants", "cached,cached"], "--variants: cached named twice; name each variant once"),
    (["--variants", ""], "--variants is empty; name some of cached,compiled"),  # (was the default set)
    (["--variants", ","], "--variants is empty"),
])
def test_variants_that_leave_nothing_or_repeat_are_refused_before_the_work(argv, message, tmp_path,
                                                                            monkeypatch, capsys):
    """Bug caught: --no-hf --variants hf built the model, then failed with an IndexError traceback
    (compared_with's variants[0]); --variants cached,cached timed two identical columns;
    --variants '' (an unset variable) silently meant the default set. Each is one line, exit 2."""
    from scripts import bench_sample
    monkeypatch.setattr(bench_sample, "build", lambda *a, **k: pytest.fail("the work began"))
    with pytest.raises(SystemExit) as e:
        main(["--quick", *argv, "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and f": error: {message}" in err[-1], err


def test_transformers_masks_the_tokens_ours_never_draws(tmp_path):
    """The hf variant disagreed with ours wherever greedy decoding's top token was one no training
    target holds (ModelArgs.never_drawn): ours masks them, and transformers now too (suppress_tokens).
    Here the final norm keeps one channel, and the output head reads it into <|image_start|> or
    <|image_end|> alone: every other logit is 0, so masked the top is <|endoftext|> (id 0)."""
    import torch
    from transformers import Llama4ForCausalLM

    import config
    from checkpoint import export_hf
    from model import Llama4
    from scripts.bench_sample import decode

    torch.manual_seed(0)
    model = Llama4(config.ModelArgs(**config.PRESETS["debug"]["ModelArgs"])).eval()
    with torch.no_grad():
        model.norm.weight.zero_()[0] = 1.0
        model.lm_head.weight.zero_()[[2, 3], 0] = torch.tensor([5.0, -5.0])
    export_hf(model, tmp_path)
    hf = Llama4ForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa", dtype=torch.float32).eval()
    prompts = torch.tensor([[0, 11, 12, 13, 14], [0, 30, 31, 32, 33]])
    assert decode("cached", model, hf, prompts, 6) == decode("hf", model, hf, prompts, 6) == [[0] * 6] * 2


def test_a_cuda_decode_is_timed_from_an_idle_device_to_its_last_token(monkeypatch):
    """timed() on CUDA (faked): the device is waited for before the clock starts (work queued
    before is not the variant's) and before it stops (the host returns before the kernels end);
    on the CPU nothing is waited for."""
    from types import SimpleNamespace

    import torch

    from scripts import bench_sample
    events, now = [], [0.0]

    def decode(variant, model, hf, prompts, new_tokens, ragged=False):
        events.append("decode")
        now[0] += 2.0
        return [[1, 2]]
    monkeypatch.setattr(bench_sample, "decode", decode)
    monkeypatch.setattr(bench_sample, "time", SimpleNamespace(perf_counter=lambda: events.append("clock")
                                                              or now[0]))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"sync {device}"))
    prompts = SimpleNamespace(device=torch.device("cuda", 1))
    assert bench_sample.timed("cached", None, None, prompts, 2) == (2.0, [[1, 2]])
    assert events == ["sync cuda:1", "clock", "decode", "sync cuda:1", "clock"]
    events.clear()
    bench_sample.timed("cached", None, None, SimpleNamespace(device=torch.device("cpu")), 2)
    assert events == ["clock", "decode", "clock"]


def test_the_table_keeps_long_variant_names_apart(capsys):
    """Bug caught: columns were 15 wide, so "reference tok/s" (15) and "compiled-nograph tok/s" (22)
    ran into the column before them ("uncached tok/sreference tok/s"). Made-up result: nothing runs."""
    from types import SimpleNamespace

    from scripts import bench_sample
    variants = ["cached", "uncached", "reference", "compiled-nograph"]
    result = {"config": {"new_tokens": 8, "preset": "debug", "dtype": "float32", "device_name": "cpu",
                         "repeats": 1},
              "results": {"batch1": {"tokens_per_s": dict.fromkeys(variants, 1234567.0),
                                     "cached_over_uncached": 1.0,
                                     "same_tokens_as_cached": dict.fromkeys(variants, True)}}}
    bench_sample.report(SimpleNamespace(variants=variants), result)
    head, row = capsys.readouterr().out.splitlines()[1:3]
    columns = [w for v in variants for w in (v, "tok/s")]
    assert head.split() == ["batch", *columns, "ours/uncached", "same", "as", "cached"]
    assert row.split() == ["1", *["1,234,567"] * 4, "1.00", "yes"]


def test_every_option_has_a_help_text_naming_its_default(monkeypatch):
    """Bug caught: --max_seq_len, --new_tokens, --batches and --repeats had no help text (--help
    showed the bare option, and not what a run at the defaults decodes)."""
    from scripts import bench_sample
    helps = option_helps(monkeypatch, bench_sample.parse)
    assert [name for name, text in helps.items() if not text] == []
    for name in ("--max_seq_len", "--new_tokens", "--batches", "--repeats", "--device"):
        assert "default" in helps[name], name
