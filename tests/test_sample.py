"""sample.py: cached vs uncached, batching, seeds, top-k / top-p, stopping, host reads per token,
streaming, the compiled decode step and its fallback, --dtype / --compile, long prompts, HF
folders, images, and bad input."""

import codecs
import re

import pytest
import torch
from conftest import debug_args, host_syncs, write_stories

import config
import sample
import train
from config import SampleArgs
from model import KVCache, Llama4, MoE


def small_model(seed=0, **overrides):
    """The debug preset (context 64) with top-2 routing, so that rows mix several experts."""
    torch.manual_seed(seed)
    return Llama4(debug_args(**{"top_k": 2, "init_std": 0.2, **overrides})).eval()


PROMPTS = [[0, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [0, 30, 31], [0, 40, 41, 42, 43, 44, 45]]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test's compiled decode steps count against dynamo's recompile limit (8 per function,
    past which a full graph fails and the step falls back with a warning) on their own, whatever
    ran before them."""
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (briefly trained) run: checkpoint + tokenizer."""
    tmp = tmp_path_factory.mktemp("run")
    words = "once upon a time there was a little girl named lily she liked to play in the park".split()
    corpus = write_stories(tmp / "stories.txt", n=150, words=words, length=(50, 50))
    train.main(["--preset", "debug", "--vocab_size", "300", "--max_steps", "3", "--data", str(corpus),
                "--out_dir", str(tmp / "ckpt"), "--cache_dir", str(tmp / "cache"), "--plot", "",
                "--run", "r"])
    return tmp / "ckpt" / "r"


# --- the generation loop --------------------------------------------------------------------

@pytest.mark.parametrize("how", [dict(greedy=True), dict(temperature=1.0, top_k=40, top_p=0.9, seed=2)])
def test_cache_and_no_cache_give_the_same_tokens(how):
    model = small_model()
    a = sample.generate(model, PROMPTS, 40, stop_at_eos=False, **how)
    b = sample.generate(model, PROMPTS, 40, stop_at_eos=False, use_cache=False, **how)
    assert a == b and all(len(r) == 40 for r in a)


def test_sampling_draws_what_torch_multinomial_draws():
    """choose() takes torch.multinomial's own draw (argmax p / q, q ~ Exp(1)) without its host-side
    checks: the same tokens from the same generators, so seeds keep their meaning."""
    logits = torch.randn(4, 50)
    ours, theirs = ([torch.Generator().manual_seed(10 + i) for i in range(4)] for _ in range(2))
    for _ in range(20):
        got = sample.choose(logits, ours, temperature=0.7, top_k=10, top_p=0.9)
        probs = sample.filter_logits(logits / 0.7, 10, 0.9).softmax(-1)
        want = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, theirs, strict=True)])
        assert got.tolist() == want.tolist()


@pytest.mark.parametrize("rows, how, moe", [(3, dict(greedy=True), "sparse"),
                                            (1, dict(temperature=1.0, top_k=40, top_p=0.9, seed=2), "sparse"),
                                            (3, dict(greedy=True), "reference")])
def test_decoding_reads_the_device_at_most_once_every_16_tokens(rows, how, moe):
    """The cached loop's one host read is the stop check (and streaming) every 16 tokens, with the
    sparse MoE (grouped_mm, group offsets on the device) and with the reference MoE (what a compiled
    step runs where grouped_mm is missing). The uncached reference path reads at every step (the
    token-id check of each full forward): the counter sees them. Stopping at <|endoftext|> (as
    sample.py does) is looked at only then too: here with one the rows never generate, so that
    every row runs its n tokens."""
    model = small_model(max_seq_len=128, n_layers=2, nope_every=2, n_experts=2)  # both layer types
    made = sample.generate(model, PROMPTS[:rows], 80, stop_at_eos=False, **how)
    model.args.eos_id = min(set(range(model.args.vocab_size)) - {t for r in made for t in r})

    def reads(n, use_cache=True, stop_at_eos=False):
        return host_syncs(lambda: sample.generate(model, PROMPTS[:rows], n, stop_at_eos=stop_at_eos,
                                                  use_cache=use_cache, **how))
    with sample.moe_reference_path(model, enabled=moe == "reference"):
        assert (reads(80) - reads(16)) / 64 <= 1 / sample.CHECK_EVERY
        assert (reads(80, stop_at_eos=True) - reads(16, stop_at_eos=True)) / 64 <= 1 / sample.CHECK_EVERY
        assert (reads(16, use_cache=False) - reads(8, use_cache=False)) / 8 >= 2


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_special_tokens_no_target_holds_are_never_drawn(use_cache):
    """An untrained model drew <|pad|>, <|patch|>, ... into its story: no training target holds them.
    With the final norm's weight at zero every logit is 0, a uniform draw over the 320 tokens: 150
    draws without the mask take several of the 7."""
    model = small_model()
    torch.nn.init.zeros_(model.norm.weight)
    banned = model.args.never_drawn
    assert banned == list(range(1, 8))  # (all but <|endoftext|>, id 0, which ends a story)
    rows = sample.generate(model, PROMPTS, 50, seed=1, stop_at_eos=False, use_cache=use_cache)
    drawn = [t for r in rows for t in r]
    assert len(drawn) == 150 and len(set(drawn)) > 100 and not set(drawn) & set(banned)
    assert sample.generate(model, PROMPTS, 5, greedy=True, stop_at_eos=False)[0] == [0] * 5  # (the top)


def test_streaming_gets_the_rows_every_16_tokens_and_at_the_end():
    model = small_model()
    seen = []
    rows = sample.generate(model, PROMPTS, 40, greedy=True, stop_at_eos=False,
                           on_token=lambda r, ended: seen.append([list(x) for x in r]))
    assert [len(s[0]) for s in seen] == [16, 32, 40]
    assert seen[-1] == rows and all(s[i] == rows[i][:len(s[i])] for s in seen for i in range(3))


def test_compiled_decode_step_gives_the_same_tokens(capsys):
    """torch.compile(fullgraph=True) of the one-token step (the default mode on CPU; CUDA graphs on
    CUDA), on two layers with both layer types: the same tokens as eager and as no cache, greedy
    and sampled, batched with left padding, across chunk boundaries, each row to its own context
    limit (10-20 s to compile cold)."""
    model = small_model(n_layers=2, nope_every=2, n_experts=2)
    for how in [dict(greedy=True), dict(temperature=1.0, top_k=40, top_p=0.9, seed=2)]:
        compiled = sample.generate(model, PROMPTS, 64, compile=True, stop_at_eos=False, **how)
        assert [len(r) for r in compiled] == [64 - len(p) for p in PROMPTS]
        assert compiled == sample.generate(model, PROMPTS, 64, stop_at_eos=False, **how)
        assert compiled == sample.generate(model, PROMPTS, 64, use_cache=False, stop_at_eos=False, **how)
    assert "compiling the decode step failed" not in capsys.readouterr().err
    assert {m.impl for m in model.modules() if isinstance(m, MoE)} == {"sparse"}  # restored
    from torch._dynamo.utils import counters
    graphs = counters["stats"]["unique_graphs"]  # another batch layout, same shapes: no recompile
    other = [PROMPTS[0], PROMPTS[2], PROMPTS[2]]  # the shortest row's padding 4, not 8
    assert sample.generate(model, other, 64, compile=True, greedy=True, stop_at_eos=False) == \
        sample.generate(model, other, 64, greedy=True, stop_at_eos=False)
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiled_decode_step_with_a_cache_longer_than_a_chunk():
    """The compiled step reads every slot of the cache under one mask. With a cache of 206 slots
    and chunks of 64 (tiny's), the mask's old form compiled (Inductor, CPU) with garbage in its
    last slots: logits off by 0.3-0.8 from the first step, garbled greedy stories. Teacher-forced
    logits of the compiled step against the eager one, 4 steps."""
    model = small_model(n_layers=1, attn_chunk_size=64, attn_floor_scale=64, max_seq_len=256)
    tokens, positions = sample.left_pad([[0, 9, 17, 33, 60]], model.args.pad_id, "cpu")
    logits = {}
    with torch.no_grad():
        for compile in [False, True]:
            _, step = sample.start(model, tokens, positions, None, 200, True, compile)
            logits[compile] = torch.stack([step(torch.tensor([7 + t])).clone() for t in range(4)])
    assert (logits[True] - logits[False]).abs().max() < 1e-4


@pytest.mark.parametrize("compile, mode", [(True, None), ("default", "default"),
                                           ("reduce-overhead", "reduce-overhead")])
def test_the_decode_step_compiles_in_the_mode_asked(monkeypatch, compile, mode):
    """compile=True picks the mode by device (CUDA graphs on CUDA only); a string names it, which
    bench_sample.py's compiled-nograph variant uses to tell a CUDA-graph fault from a compiler one.
    Always one whole graph (fullgraph: a graph break, such as a host read, is an error and the eager
    fallback, not a step split around it) of static shapes."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    model = small_model()
    rows = sample.generate(model, PROMPTS, 5, greedy=True, compile=compile, stop_at_eos=False)
    assert seen == [dict(mode=mode, fullgraph=True, dynamic=False)]
    assert rows == sample.generate(model, PROMPTS, 5, greedy=True, stop_at_eos=False)


def test_on_cuda_the_decode_step_compiles_into_a_cuda_graph_over_a_static_cache(monkeypatch):
    """compile=True where the cache lives on CUDA (faked: a cache whose next_pos is on cuda:0): mode
    "reduce-overhead", the cache's tensors marked static first (a CUDA graph reads and writes them
    in place), and each call begins a CUDA graph step."""
    from types import SimpleNamespace
    events = []

    class CudaCache:
        next_pos = SimpleNamespace(clone=lambda: SimpleNamespace(device=torch.device("cuda", 0)))

        def mark_static(self):
            events.append("static")
            return self
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: events.append(kwargs) or (
        lambda model, tokens, cache: events.append(tuple(tokens.shape)) or "logits"))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: events.append("mark"))
    step = sample.DecodeStep(None, CudaCache(), compile=True)
    assert [step(torch.tensor([5, 6])) for _ in range(3)] == ["logits"] * 3
    assert events == [dict(mode="reduce-overhead", fullgraph=True, dynamic=False), "static",
                      *["mark", (2, 1)] * 3]


@pytest.mark.parametrize("when", ["wrapping", "first call", "second call"])
def test_a_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, capsys, when):
    """Compiling fails at torch.compile or at the first call; recording a CUDA graph, at the second
    (reduce-overhead runs the first as a warm-up): each falls back to eager, tokens unchanged."""
    def fail(*args, **kwargs):
        raise RuntimeError("no compiler here\nand a long trace")
    real_compile, calls = torch.compile, []

    def compiled_once_then_fail(fn, **kwargs):  # a real compiled call (it leaves cache.seen alone:
        real = real_compile(fn, **kwargs)  # the fallback must count it), then a failed recording

        def step(model, tokens, cache):
            calls.append(1)
            if len(calls) == 1:
                return real(model, tokens, cache)
            cache.next_pos += 1  # as a call cut short might have left it
            fail()
        return step
    compiled = {"wrapping": None, "first call": lambda fn, **kwargs: fail,
                "second call": compiled_once_then_fail}[when]
    monkeypatch.setattr(torch, "compile", fail if when == "wrapping" else compiled)
    model = small_model()
    rows = sample.generate(model, PROMPTS, 20, greedy=True, compile=True, stop_at_eos=False)
    assert rows == sample.generate(model, PROMPTS, 20, greedy=True, stop_at_eos=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("warning: compiling the decode step failed (RuntimeError: no compiler here)")


def test_a_compiled_step_with_widths_grouped_mm_cannot_take_runs_the_reference_moe(capsys):
    """expert_dim 30 in fp32 is not a multiple of 16 bytes: the sparse MoE would read group sizes
    on the host, which a full graph cannot hold; the compiled step runs the reference MoE instead,
    with no fallback warning and the eager tokens."""
    model = small_model(n_layers=2, nope_every=2, n_experts=2, expert_dim=30)
    compiled = sample.generate(model, PROMPTS, 12, compile=True, greedy=True, stop_at_eos=False)
    assert compiled == sample.generate(model, PROMPTS, 12, greedy=True, stop_at_eos=False)
    assert "compiling the decode step failed" not in capsys.readouterr().err


def test_the_moe_reference_path_leaves_each_layer_as_it_was(monkeypatch):
    """On exit every MoE layer held impl as its own attribute, so the documented class switch
    `MoE.impl = "reference"` no longer reached that model: a layer without one is left without,
    and a layer's own value is put back."""
    model = small_model()
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    moes[0].impl = "sparse"  # this layer's own setting, whatever the class says
    with sample.moe_reference_path(model):
        assert {m.impl for m in moes} == {"reference"}
    assert [vars(m).get("impl") for m in moes] == ["sparse"] + [None] * (len(moes) - 1)
    monkeypatch.setattr(MoE, "impl", "reference")
    assert [m.impl for m in moes] == ["sparse"] + ["reference"] * (len(moes) - 1)


def test_per_step_logits_with_the_cache_match_a_full_forward():
    model = small_model()
    row = PROMPTS[0] + sample.generate(model, PROMPTS[:1], 30, greedy=True, stop_at_eos=False)[0]
    x = torch.tensor([row])
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache(model.args, batch_size=1, length=len(row))
        steps = [model(x[:, :len(PROMPTS[0])], cache=cache).logits]
        steps += [model(x[:, t:t + 1], cache=cache).logits for t in range(len(PROMPTS[0]), len(row))]
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5


def test_batched_generation_equals_one_by_one():
    model = small_model()
    batched = sample.generate(model, PROMPTS, 30, greedy=True, stop_at_eos=False)
    alone = [sample.generate(model, [p], 30, greedy=True, stop_at_eos=False)[0] for p in PROMPTS]
    assert batched == alone
    sampled = sample.generate(model, PROMPTS, 20, temperature=1.0, seed=3, stop_at_eos=False)
    first_alone = sample.generate(model, PROMPTS[:1], 20, temperature=1.0, seed=3, stop_at_eos=False)
    assert sampled[0] == first_alone[0]  # row r draws from its own generator (seed + r)


@pytest.mark.parametrize("use_cache", [True, False])
def test_each_row_of_a_batch_stops_at_its_own_context_limit(use_cache):
    """A short prompt beside a long one gets as many tokens as alone (max_seq_len 64), not as
    many as the long one has room for; greedy and sampled (per-row seeds), with and without the
    cache, the last row's prompt one token short of the context."""
    model = small_model()
    prompts = [PROMPTS[1], [0, *range(20, 60)], PROMPTS[0], [0, *range(100, 162)]]
    for how in [dict(greedy=True), dict(temperature=1.0, top_k=40, seed=3)]:
        batched = sample.generate(model, prompts, 100, stop_at_eos=False, use_cache=use_cache, **how)
        assert [len(r) for r in batched] == [64 - len(p) for p in prompts] == [61, 23, 53, 1]
        seeds = [dict(seed=how["seed"] + i) if "seed" in how else {} for i in range(len(prompts))]
        alone = [sample.generate(model, [p], 100, stop_at_eos=False, use_cache=use_cache, **{**how, **s})[0]
                 for p, s in zip(prompts, seeds, strict=True)]
        assert batched == alone
    assert sample.generate(model, prompts, 10, greedy=True, stop_at_eos=False, use_cache=use_cache) == \
        [r[:10] for r in sample.generate(model, prompts, 100, greedy=True, stop_at_eos=False)]
    full = [0, *range(200, 263)]  # a whole context: no room, as alone; one more token is an error
    assert sample.generate(model, [PROMPTS[1], full], 5, greedy=True, use_cache=use_cache)[1] == []
    with pytest.raises(ValueError, match="a prompt of 65 tokens is longer than max_seq_len=64"):
        sample.generate(model, [PROMPTS[1], [*full, 7]], 5, greedy=True, use_cache=use_cache)


@pytest.mark.parametrize("prompts", [[[]], [[0, 5, 6], []]])
def test_an_empty_prompt_is_an_error_naming_it(prompts):
    """A prompt of no token crashed alone (a RuntimeError from torch's min()) and in a batch drew
    its tokens from padding (its one query sees an unwritten slot)."""
    model = small_model()
    want = rf"^prompts\[{len(prompts) - 1}\] is empty; every prompt needs at least one token, e.g. the " \
           rf"<\|endoftext\|> id \({model.args.eos_id}\)$"
    with pytest.raises(ValueError, match=want):
        sample.generate(model, prompts, 4)
    with pytest.raises(ValueError, match=r"^no prompts: "):  # (Python's max() of an empty list before)
        sample.generate(model, [], 4)


def test_a_model_in_training_mode_is_refused():
    """Training mode routes with noise from torch's global generator, not the rows' own: a row's
    tokens no longer followed from its seed (and the token-id check was skipped)."""
    model = small_model().train()
    with pytest.raises(ValueError, match=r"^the model is in training mode .*; call model.eval\(\) first$"):
        sample.generate(model, PROMPTS, 4, seed=1)


def test_non_finite_logits_are_an_error_and_a_tiny_temperature_is_not():
    """A NaN weight (a diverged run) stops generation with a SampleError, not a silent empty story
    (argmax of NaN is token 0); a temperature of 1e-39 samples the top token rather than NaN."""
    model = small_model()
    greedy = sample.generate(model, PROMPTS, 20, greedy=True, stop_at_eos=False)
    assert sample.generate(model, PROMPTS, 20, temperature=1e-39, seed=1, stop_at_eos=False) == greedy
    with torch.no_grad():
        model.layers[1].self_attn.o_proj.weight[0, 0] = float("nan")
    for how in [dict(greedy=True), dict(temperature=1.0)]:
        with pytest.raises(sample.SampleError, match="not finite"):
            sample.generate(model, PROMPTS, 20, **how)


def test_generate_refuses_a_seed_whose_rows_pass_2_to_the_32():
    """Bug caught: generate() (the library entry point) took any seed, and torch's CPU generator keeps
    32 bits of one: seed 2^32 + 1 told seed 1's stories and -1 told 2^32 - 1's, without a word
    (sample.py's --seed refuses them; generate now does too, with a ValueError)."""
    model = small_model()
    last = sample.generate(model, PROMPTS, 6, temperature=1.0, seed=2 ** 32 - 3, stop_at_eos=False)
    assert len(last) == 3  # rows seeded 2^32 - 3 .. 2^32 - 1: every row's seed fits
    for seed in [2 ** 32 - 2, 2 ** 32 + 1, -1]:
        with pytest.raises(ValueError, match=rf"^seed: must be in \[0, 2\^32 - 2\) for 3 prompts, row r "
                                             rf"drawing with seed \+ r \(torch's .*, got {seed}$"):
            sample.generate(model, PROMPTS, 6, temperature=1.0, seed=seed)
    with pytest.raises(ValueError, match=r"^seed: must be in \[0, 2\^32\) \(torch's"):
        sample.generate(model, PROMPTS[:1], 6, seed=2 ** 32)


def test_same_seed_same_samples_other_seed_other_samples():
    model = small_model()
    a = sample.generate(model, PROMPTS, 30, temperature=1.0, seed=7, stop_at_eos=False)
    b = sample.generate(model, PROMPTS, 30, temperature=1.0, seed=7, stop_at_eos=False)
    c = sample.generate(model, PROMPTS, 30, temperature=1.0, seed=8, stop_at_eos=False)
    assert a == b and a != c


def test_top_k_1_equals_greedy():
    model = small_model()
    greedy = sample.generate(model, PROMPTS, 25, greedy=True, stop_at_eos=False)
    assert sample.generate(model, PROMPTS, 25, top_k=1, temperature=2.0, seed=1, stop_at_eos=False) == greedy


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(sample.filter_logits(logits, top_p=p)).nonzero()[:, 1].tolist()  # noqa: E731
    assert kept(0.5) == [0]  # 0.5 reaches 0.5 on its own
    assert kept(0.6) == [0, 1]  # 0.5 < 0.6 <= 0.7
    assert kept(0.85) == [0, 1, 2]
    assert kept(0.86) == [0, 1, 2, 3]
    assert kept(1.0) == [0, 1, 2, 3, 4]
    shuffled = logits[:, [3, 0, 4, 2, 1]]  # order of the vocabulary does not matter
    assert torch.isfinite(sample.filter_logits(shuffled, top_p=0.6)).nonzero()[:, 1].tolist() == [1, 4]
    assert torch.isfinite(sample.filter_logits(logits, top_k=2)).nonzero()[:, 1].tolist() == [0, 1]


def test_top_p_of_zero_keeps_the_top_token_and_a_negative_temperature_is_refused():
    """generate(top_p=0) masked every token, and choose() returned token 0 (argmax of NaN) without
    a word: empty stories. A negative temperature sampled near-greedily (as MIN_TEMPERATURE): a
    ValueError naming it, as the command line's check."""
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    logits[:, 0] = -10  # (token 0 is what a NaN row gives)
    for p in (0.0, -1.0):
        kept = torch.isfinite(sample.filter_logits(logits, top_p=p))
        assert kept.nonzero()[:, 1].tolist() == logits.argmax(-1).tolist()
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    assert sample.choose(logits, generators, top_p=0.0).tolist() == logits.argmax(-1).tolist()
    model = small_model()
    greedy = sample.generate(model, PROMPTS, 8, greedy=True, stop_at_eos=False)
    assert sample.generate(model, PROMPTS, 8, top_p=0.0, seed=1, stop_at_eos=False) == greedy
    for t in (-0.5, float("nan")):
        with pytest.raises(ValueError, match=rf"^temperature: must be at least 0, got {t} \(use greedy=True"):
            sample.generate(model, PROMPTS, 8, temperature=t)


def test_generation_stops_at_end_of_text():
    model = small_model()
    rows = sample.generate(model, PROMPTS, 30, greedy=True, stop_at_eos=False)
    model.args.eos_id = rows[0][5]  # make the 6th token of row 0 the end-of-text token
    stopped = sample.generate(model, PROMPTS, 30, greedy=True)
    assert stopped[0] == rows[0][:rows[0].index(rows[0][5])]
    for full, cut in zip(rows[1:], stopped[1:], strict=True):  # other rows go on, stopping at theirs
        assert cut == (full[:full.index(model.args.eos_id)] if model.args.eos_id in full else full)


def test_generation_stops_when_the_context_is_full():
    model = small_model()
    rows = sample.generate(model, [[0] * 60], 30, greedy=True, stop_at_eos=False)
    assert len(rows[0]) == 4  # max_seq_len 64


# --- the command line -----------------------------------------------------------------------

def test_sample_streams_one_story_and_batches_several(run_dir, capsys):
    rows = sample.main(["--ckpt", str(run_dir), "--prompt", "once upon", "--max_new_tokens", "10",
                        "--greedy"])
    out = capsys.readouterr().out
    assert out.startswith("once upon") and len(rows) == 1
    sample.main(["--ckpt", str(run_dir), "--prompt", "lily", "--prompt", "a girl", "--num_samples", "2",
                 "--max_new_tokens", "5"])
    out = capsys.readouterr().out
    assert out.count("-- sample ") == 4 and "sample 4 of 4" in out


def test_greedy_samples_of_a_prompt_are_the_same_story_and_it_says_so(run_dir, capsys):
    """--greedy --num_samples 3 printed three identical stories without a word: one warning line."""
    rows = sample.main(["--ckpt", str(run_dir), "--prompt", "lily", "--num_samples", "3", "--greedy",
                        "--max_new_tokens", "4"])
    assert rows[0] == rows[1] == rows[2]
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning:")] == [
        "warning: --greedy takes the most likely token each step, so the 3 --num_samples of a prompt are the "
        "same story; drop --greedy for different ones"]
    sample.main(["--ckpt", str(run_dir), "--prompt", "lily", "--greedy", "--max_new_tokens", "4"])
    assert "warning" not in capsys.readouterr().err


def test_sampling_settings_typed_beside_greedy_are_warned_of(run_dir, capsys):
    """--greedy --temperature 0.5 --top_k 3 said nothing of two settings greedy decoding never reads: one
    warning line names those typed; without --greedy they are used, and nothing is said."""
    base = ["--ckpt", str(run_dir), "--prompt", "lily", "--max_new_tokens", "2"]
    sample.main([*base, "--greedy", "--temperature", "0.5", "--top_k", "3"])
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")] == [
        "warning: --greedy takes the most likely token each step: --temperature, --top_k have no effect; "
        "drop --greedy to sample with them"]
    sample.main([*base, "--greedy", "--top_p", "0.5"])
    assert "--top_p has no effect; drop --greedy to sample with it" in capsys.readouterr().err
    sample.main([*base, "--temperature", "0.5", "--top_k", "3"])
    assert "warning" not in capsys.readouterr().err
    sample.main([*base, "--greedy", "--temperature", "0"])  # (without --greedy, 0 is refused: no advice)
    assert capsys.readouterr().err.endswith("--temperature has no effect\n")



def test_a_sampling_setting_typed_at_its_default_beside_greedy_is_warned_of(run_dir, capsys):
    """Bug caught: the --greedy warning naming only settings whose value differs from the default:
    --greedy --top_p 1 --temperature 0.8 was typed, and greedy decoding reads neither."""
    sample.main(["--ckpt", str(run_dir), "--prompt", "lily", "--max_new_tokens", "2", "--greedy", "--top_p",
                 str(SampleArgs().top_p), "--temperature", str(SampleArgs().temperature)])
    assert ("warning: --greedy takes the most likely token each step: --temperature, --top_p have no "
            "effect; drop --greedy to sample with them\n") in capsys.readouterr().err

def test_every_sampling_option_reaches_generate(run_dir, monkeypatch):
    """Catches an option dropped between the command line and generate() (--seed, --top_k,
    --no_cache, --compile, ... silently left at their defaults: the story still comes, from other
    settings)."""
    asked = []

    def generate(model, prompts, max_new_tokens, **kw):
        asked.append(dict(max_new_tokens=max_new_tokens, **{k: kw[k] for k in [
            "temperature", "top_k", "top_p", "greedy", "seed", "use_cache", "compile"]}))
        return [[5] for _ in prompts]
    monkeypatch.setattr(sample, "generate", generate)
    argv = ["--ckpt", str(run_dir), "--prompt", "once", "--max_new_tokens", "7"]
    sample.main([*argv, "--temperature", "0.5", "--top_k", "3", "--top_p", "0.7", "--seed", "9",
                 "--no_cache", "--compile", "true"])
    sample.main([*argv, "--greedy"])
    assert asked == [dict(max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.7, greedy=False, seed=9,
                          use_cache=False, compile=True),
                     dict(max_new_tokens=7, temperature=0.8, top_k=0, top_p=1.0, greedy=True, seed=1337,
                          use_cache=True, compile=False)]  # (auto: eager on the CPU)


def test_a_streamed_story_is_printed_once_and_in_whole_characters(run_dir, monkeypatch, capsys):
    """Catches the text printed at the end repeating what was streamed, and a character whose bytes
    two host reads split (an é) streamed as U+FFFD."""
    from tokenizer import Tokenizer
    tok = Tokenizer.load(run_dir / "tokenizer.json")
    story = tok.encode(" lily \u00e9 lily")
    assert any(tok.decode(story[:n]).endswith("\ufffd") for n in range(len(story)))  # é: two byte tokens

    def generate(model, prompts, max_new_tokens, on_token, **kw):  # a host read after every token
        for n in range(1, len(story) + 1):
            on_token([story[:n]], [n == len(story)])
        return [story]
    monkeypatch.setattr(sample, "generate", generate)
    sample.main(["--ckpt", str(run_dir), "--prompt", "once"])
    assert capsys.readouterr().out == "once lily \u00e9 lily\n"


def test_dtype_and_compile_options(run_dir, capsys):
    """--dtype bfloat16 runs on CPU too (bf16 weights, fp32 RoPE tables); --compile auto means on
    for CUDA only, and a bare --compile means true."""
    argv = ["--ckpt", str(run_dir), "--prompt", "once upon", "--max_new_tokens", "6", "--greedy"]
    rows = sample.main([*argv, "--dtype", "bfloat16", "--compile", "false"])
    assert len(rows) == 1 and capsys.readouterr().out.startswith("once upon")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [sample.compile_wanted(s, d) for s in ["auto", "true", "false"] for d in [cpu, cuda]] == [
        False, True, True, True, False, False]
    _, (args,) = config.parse_args([SampleArgs], ["--compile"])
    assert args.compile == "true" and args.dtype == "auto"


@pytest.mark.parametrize("device, argv, dtype, compiled", [
    ("cuda", [], torch.bfloat16, True), ("cuda", ["--compile", "false"], torch.bfloat16, False),
    ("cuda", ["--dtype", "float32"], torch.float32, True), ("cpu", [], torch.float32, False),
    ("cpu", ["--dtype", "bfloat16", "--compile"], torch.bfloat16, True)])
def test_sample_defaults_to_bf16_and_a_compiled_step_on_cuda_only(run_dir, monkeypatch, device, argv, dtype,
                                                                    compiled):
    """Issue 12: what sample.py's main asks for, on a (pretended) sm90 GPU and on the CPU: the
    weights' dtype it loads and whether generate() compiles the decode step."""
    import runtime
    monkeypatch.setattr(runtime, "resolve_device", lambda name: torch.device(device))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    load, asked = sample.load, {}

    def load_on_cpu(sample_args, _device, dtype=torch.float32):  # (the weights stay on the CPU)
        asked["dtype"] = dtype
        return load(sample_args, "cpu", dtype)

    def generate(model, prompts, max_new_tokens, **kwargs):
        asked["compile"], asked["weights"] = kwargs["compile"], next(model.parameters()).dtype
        return [[5] for _ in prompts]
    monkeypatch.setattr(sample, "load", load_on_cpu)
    monkeypatch.setattr(sample, "generate", generate)
    sample.main(["--ckpt", str(run_dir), "--prompt", "once upon", "--max_new_tokens", "4", *argv])
    assert asked == {"dtype": dtype, "weights": dtype, "compile": compiled}


def test_long_prompt_is_cut_from_the_left_to_leave_room_for_the_new_tokens(run_dir, capsys):
    """Context 64: room for the 3 tokens asked, or for half the context when more are asked (a
    prompt cut to fill the context left room for one token)."""
    for new, keep in [(3, 61), (50, 32)]:
        sample.main(["--ckpt", str(run_dir), "--prompt", "lily " * 100, "--max_new_tokens", str(new),
                     "--greedy"])
        assert f"leaves too little room for --max_new_tokens {new} in the context of 64; keeping its last " \
               f"tokens, {keep} tokens (room for {64 - keep} new)" in capsys.readouterr().err
    sample.main(["--ckpt", str(run_dir), "--prompt", "lily " * 10, "--max_new_tokens", "50"])
    assert "warning" not in capsys.readouterr().err  # a prompt under half the context is never cut


def stub_prompts(prompt: str, new: int, **model):
    """prompts_from on a debug model (context 64) with a tokenizer that reads words as ids 20, 21, ..."""
    from types import SimpleNamespace
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], **model})
    tok = SimpleNamespace(encode_docs=lambda texts: [[20 + i for i, _ in enumerate(t.split())]
                                                     for t in texts])
    warnings = []
    image = "x.png" if model.get("vision") else ""
    (ids,) = sample.prompts_from(SampleArgs(prompt=[prompt], image=image, max_new_tokens=new), tok, args,
                                 warnings.append)
    return ids, args, warnings


def test_a_cut_prompt_keeps_its_last_tokens():
    ids, args, warnings = stub_prompts("w " * 100, new=3)
    assert len(ids) == 61 and ids[-1] == 20 + 99 and len(warnings) == 1
    ids, _, warnings = stub_prompts("w " * 10, new=3)
    assert ids == [args.eos_id, *range(20, 30)] and not warnings


def test_a_prompt_cut_to_one_token_is_told_in_the_singular():
    """Bug caught: a 2-token context (one new token) cut a prompt to its start token alone, and the
    warning said "keeping its last tokens, 1 tokens"."""
    ids, _, warnings = stub_prompts("w w", new=1, max_seq_len=2, attn_chunk_size=2)
    assert len(ids) == 1 and warnings[0].endswith("keeping its last token, 1 token (room for 1 new)")


def test_a_context_of_one_token_is_refused_for_what_it_is():
    """A model trained with --max_seq_len 1 holds only the story's start token: the error says so,
    not that an image (there is none) is too long."""
    with pytest.raises(sample.SampleError, match="the model's context is 1 token: the story's start"):
        stub_prompts("w", new=3, max_seq_len=1, attn_chunk_size=1)


def test_an_image_prompt_keeps_its_image_and_cuts_its_text():
    """With --image the text after the image is cut (from the left) to leave room for the new
    tokens; the image's tokens are kept whole, even when they alone leave less room."""
    vision = dict(vision=True, image_size=56, patch_size=14)
    ids, args, warnings = stub_prompts("w " * 40, new=256, **vision)
    image = [args.eos_id, *sample.image_prompt(args)]
    assert len(ids) == 32 and ids[:len(image)] == image and ids[-1] == 20 + 39
    assert "keeping the image and the last tokens of its text, 32 tokens (room for 32 new)" in warnings[0]
    big = dict(vision=True, image_size=224, patch_size=14)
    ids, args, warnings = stub_prompts("", new=256, **big, max_seq_len=128)
    n = 1 + len(sample.image_prompt(args))  # 68 tokens: past half the context
    assert len(ids) == n > 64 and not warnings  # but nothing to cut: no warning
    ids, args, warnings = stub_prompts("w " * 5, new=256, **big, max_seq_len=n + 1)  # one token of room
    assert len(ids) == n and "(room for 1 new)" in warnings[0]
    ids, args, _ = stub_prompts("w " * 3, new=8, **vision)
    assert sample.prompt_text(ids, args) == [20, 21, 22]  # what is printed: the text, not the image's tokens


def test_an_image_that_fills_the_context_is_refused():
    """Catches an image whose tokens fill the whole context (not one place left for a new token) let
    through: it is refused, naming its length and the context's room, as a longer one is."""
    big = dict(vision=True, image_size=224, patch_size=14)
    n = 1 + len(sample.image_prompt(config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], **big})))
    with pytest.raises(sample.OptionError, match=rf"^the image alone is {n} tokens, more than the context "
                                                 rf"allows \({n - 1}\); drop --image, or sample a model "
                                                 "trained with a longer --max_seq_len$"):
        stub_prompts("", new=8, **big, max_seq_len=n)
    ids, _, _ = stub_prompts("", new=8, **big, max_seq_len=n + 1)
    assert len(ids) == n


def test_without_ckpt_it_says_which_run_it_samples(run_dir, tmp_path, monkeypatch, capsys):
    import shutil
    shutil.copytree(run_dir, tmp_path / "checkpoints" / "latest")
    monkeypatch.chdir(tmp_path)
    sample.main(["--max_new_tokens", "2"])
    assert "sample.py: sampling checkpoints/latest/last.pt, the most recent run's" \
        in capsys.readouterr().err


def test_a_prompt_file_with_no_prompt_is_an_error(run_dir, tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(run_dir), "--prompt_file", str(blank)])
    assert e.value.code == 1 and "holds no prompt (every line is blank)" in capsys.readouterr().err


def test_a_prompt_file_has_one_prompt_per_line_break_and_no_other_separator(run_dir, tmp_path, capsys):
    """\n, \r\n and \r end a prompt; a form feed or a Unicode line separator inside one does not."""
    path = tmp_path / "prompts.txt"
    path.write_text("once\u2028upon\x0ca time\r\nthe dog\rthe cat\n", encoding="utf-8", newline="")
    sample.main(["--ckpt", str(run_dir), "--greedy", "--max_new_tokens", "1", "--prompt_file", str(path)])
    out = capsys.readouterr().out
    assert out.count(" of 3 ") == 3 and "once\u2028upon\x0ca time" in out


def test_a_prompt_file_is_utf8_and_its_byte_order_mark_is_not_prompt(run_dir, tmp_path, capsys):
    """A file saved by an editor that starts it with a BOM gives the --prompt's tokens, whatever
    the locale; --compile true with --no_cache (nothing to compile) says so."""
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffonce upon a time \u00e9\n".encode())
    argv = ["--ckpt", str(run_dir), "--greedy", "--max_new_tokens", "4"]
    capsys.readouterr()
    outs = []
    for how in (["--prompt_file", str(path)], ["--prompt", "once upon a time \u00e9"]):
        outs.append((sample.main([*argv, *how]), capsys.readouterr().out))
    assert outs[0] == outs[1] and outs[0][1].startswith("once upon a time \u00e9")
    sample.main([*argv, "--no_cache", "--compile", "true"])
    assert "warning: --compile true compiles the cached decode step" in capsys.readouterr().err


def test_exported_hf_folder_gives_the_same_tokens(run_dir, tmp_path, capsys):
    from scripts.export_hf import main as export_main  # the command line
    export_main([str(run_dir), str(tmp_path / "hf")])
    capsys.readouterr()
    argv = ["--prompt", "once upon a time", "--max_new_tokens", "20", "--seed", "5"]
    a = sample.main(["--ckpt", str(run_dir), *argv])
    capsys.readouterr()
    b = sample.main(["--hf", str(tmp_path / "hf"), *argv])
    assert a == b and "most recent run" not in capsys.readouterr().err  # (--hf is not the latest run)
    from transformers import AutoTokenizer  # the exported tokenizer loads in transformers

    from tokenizer import Tokenizer
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    # a text starts as a story did in training and as sample.py prompts: <|endoftext|> first (it
    # did not, so transformers users prompted the model mid-story)
    ids = hf_tok("once upon a time").input_ids
    assert ids == [0] + Tokenizer.load(run_dir / "tokenizer.json").encode("once upon a time")
    assert hf_tok.decode(ids, skip_special_tokens=True) == "once upon a time"
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 0, 1)
    export_main(["--import", str(tmp_path / "hf"), str(tmp_path / "back" / "last.pt")])  # and back again
    assert sample.main(["--ckpt", str(tmp_path / "back"), *argv]) == a


def test_a_run_an_older_version_trained_with_a_lower_casing_tokenizer_still_samples(run_dir, tmp_path):
    """Earlier versions trained with a --tokenizer that does not give back its text (here
    one that lower-cases). Training and evaluation refuse it now, naming the file, but such a run
    still samples with it, as it did, and so do its export and the import of that."""
    import json
    import re
    import shutil

    import tokenizers

    import checkpoint
    from errors import DataError
    from tokenizer import Tokenizer, identity
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    spec = json.loads((old / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (old / "tokenizer.json").write_text(json.dumps(spec))
    ckpt = torch.load(old / "last.pt", weights_only=True)  # the sha256 the older version recorded
    lower = tokenizers.Tokenizer.from_str(json.dumps(spec))
    ckpt["tokenizer"]["sha256"] = identity(json.loads(lower.to_str()))
    torch.save(ckpt, old / "last.pt")
    argv = ["--max_new_tokens", "8", "--greedy"]
    expected = sample.main(["--ckpt", str(run_dir), "--prompt", "once upon", *argv])
    assert sample.main(["--ckpt", str(old), "--prompt", "Once Upon", *argv]) == expected
    from scripts import export_hf  # its export (the script's checks too) and the import of that export
    export_hf.main([str(old), str(tmp_path / "hf")])
    checkpoint.import_hf(tmp_path / "hf", tmp_path / "back")
    assert sample.main(["--hf", str(tmp_path / "hf"), "--prompt", "Once Upon", *argv]) == expected
    assert sample.main(["--ckpt", str(tmp_path / "back"), "--prompt", "Once Upon", *argv]) == expected
    named = re.escape(str(old / "tokenizer.json"))
    with pytest.raises(DataError, match=f"^{named}: the tokenizer does not give back the text it encodes "
                                        ".*earlier versions of this project"):
        Tokenizer.load(old / "tokenizer.json")


PROBLEMS = {"missing": "does not exist", "corrupt": "corrupt", "no-tokenizer": "no tokenizer.json",
            "other-tokenizer": "tokenizer", "unreadable-tokenizer": "cannot read the tokenizer",
            "weights-missing": "weights do not fit its settings (Missing key", "nan-weights": "not finite",
            "settings-unknown": "is damaged or from another version of this project (model settings: unknown "
                                "ModelArgs field(s) bogus)",
            "settings-not-a-table": "(model settings: should be a table of ModelArgs fields, got str)"}


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_checkpoints_and_tokenizers_are_clear_errors(run_dir, tmp_path, capsys, problem):
    import shutil
    bad = tmp_path / "bad"
    if problem != "missing":
        shutil.copytree(run_dir, bad)
    if problem == "corrupt":
        (bad / "last.pt").write_bytes(b"not a checkpoint")
    elif problem == "no-tokenizer":
        (bad / "tokenizer.json").unlink()
    elif problem == "unreadable-tokenizer":
        (bad / "tokenizer.json").write_text("{bad")
    elif problem == "other-tokenizer":
        import json
        tok = json.loads((bad / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        word = max(vocab, key=len)                     # rename one learned token: another BPE
        vocab[word + "zz"] = vocab.pop(word)
        (bad / "tokenizer.json").write_text(json.dumps(tok))
    elif problem in ("weights-missing", "nan-weights", "settings-unknown", "settings-not-a-table"):
        ckpt = torch.load(bad / "last.pt", weights_only=True)
        if problem == "settings-unknown":  # a damaged file, or one a newer version wrote
            ckpt["model_args"]["bogus"] = 1
        elif problem == "settings-not-a-table":
            ckpt["model_args"] = "hello"
        elif problem == "weights-missing":
            del ckpt["model"]["layers.0.self_attn.q_proj.weight"]
        else:  # a diverged run: generation stops with an error, not an empty story
            ckpt["model"]["layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
        torch.save(ckpt, bad / "last.pt")
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(bad), "--max_new_tokens", "2", "--prompt", "once"])
    assert e.value.code == 1
    out, err = capsys.readouterr()
    err = err.strip()
    assert err.startswith("sample.py: error:") and err.count("\n") == 0
    assert PROBLEMS[problem] in err and "--run" not in err and "--tokenizer" not in err
    assert out in ("", "once\n")  # the streamed prompt, ended


def test_a_damaged_checkpoint_names_the_other_of_its_run_or_none(run_dir, tmp_path, capsys):
    """Bug caught: a damaged checkpoint was always told to "pass another checkpoint (e.g. best.pt)",
    also where best.pt was the damaged one or the folder held no best.pt."""
    import shutil
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(run_dir / "last.pt", bad / "last.pt")
    shutil.copy(run_dir / "tokenizer.json", bad / "tokenizer.json")
    (bad / "best.pt").write_bytes(b"not a checkpoint")

    def error(ckpt):
        with pytest.raises(SystemExit) as e:
            sample.main(["--ckpt", str(ckpt), "--max_new_tokens", "2"])
        assert e.value.code == 1
        return capsys.readouterr().err.strip()
    assert error(bad / "best.pt").endswith(f"it was left in place: pass {bad / 'last.pt'} instead")
    (bad / "best.pt").rename(bad / "last.pt")  # a damaged last.pt alone
    assert error(bad).endswith("it was left in place: pass another checkpoint")


@pytest.mark.parametrize("problem", ["config-json", "config-values", "safetensors", "weights-missing",
                                     "other-tokenizer"])
def test_bad_hf_folders_are_clear_errors(run_dir, tmp_path, capsys, problem):
    import json

    from safetensors.torch import load_file, save_file

    from scripts.export_hf import main as export_main
    hf = tmp_path / "hf"
    export_main([str(run_dir), str(hf)])
    capsys.readouterr()
    cfg = hf / "config.json"
    if problem == "config-json":
        cfg.write_text("{bad")
    elif problem == "config-values":
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "num_attention_heads": 3}))
    elif problem == "safetensors":
        (hf / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:100])
    elif problem == "other-tokenizer":  # the same size and special ids: only the recorded sha256 tells
        spec = json.loads((hf / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        a, b = [k for k, v in vocab.items() if v in (100, 101)]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (hf / "tokenizer.json").write_text(json.dumps(spec))
    else:
        state = load_file(hf / "model.safetensors")
        del state["model.layers.0.self_attn.q_proj.weight"]
        save_file(state, hf / "model.safetensors")
    with pytest.raises(SystemExit) as e:
        sample.main(["--hf", str(hf), "--max_new_tokens", "2"])
    assert e.value.code == 1  # not 2: the user passed no bad option
    err = capsys.readouterr().err.strip()
    assert err.startswith("sample.py: error:") and err.count("\n") == 0
    assert err.endswith("export the folder again with scripts/export_hf.py")
    assert {"config-json": "config.json describes no model",
            "config-values": "head_dim 16 differs from hidden_size / num_attention_heads = 64 / 3;",
            "safetensors": "model.safetensors is corrupt",
            "weights-missing": "weights do not fit its settings (Missing key",
            "other-tokenizer": f"{hf / 'tokenizer.json'} is not the tokenizer {hf} was trained with",
            }[problem] in err


def test_an_hf_folder_without_its_tokenizer_is_told_to_hold_one(run_dir, tmp_path, capsys):
    """Bug caught: `sample.py --hf FOLDER` without FOLDER/tokenizer.json said "no tokenizer.json beside
    FOLDER; copy the run's tokenizer there", as of a checkpoint file: the tokenizer goes inside the
    folder (a folder transformers saved has no run)."""
    from scripts.export_hf import main as export_main
    hf = tmp_path / "hf"
    export_main([str(run_dir), str(hf)])
    (hf / "tokenizer.json").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sample.main(["--hf", str(hf), "--max_new_tokens", "2"])
    assert e.value.code == 1
    assert capsys.readouterr().err == (f"sample.py: error: no tokenizer.json in {hf}; put the model's "
                                       "tokenizer.json there (scripts/export_hf.py writes it into the "
                                       "folders it exports)\n")


def test_an_hf_folder_that_does_not_exist_is_named_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["--hf", str(tmp_path / "nosuch"), "--max_new_tokens", "2"])
    assert e.value.code == 1
    # Bug caught: it said "is not a folder", as of a file
    assert capsys.readouterr().err.strip() == f"sample.py: error: {tmp_path / 'nosuch'} does not exist; " \
        "pass an HF folder (config.json, model.safetensors), such as one scripts/export_hf.py writes"


def test_running_out_of_memory_is_one_line_naming_the_fix(run_dir, monkeypatch, capsys):
    """A batch too large for the GPU (prompts x --num_samples): one line, exit status 1."""
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB. GPU 0 has ...")
    monkeypatch.setattr(sample, "generate", oom)
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(run_dir), "--max_new_tokens", "2", "--num_samples", "64"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.count("\n") == 0
    assert err.startswith("sample.py: error: out of memory (OutOfMemoryError: CUDA out of memory. Tried")
    assert "sample fewer rows at once (prompts x --num_samples)" in err


def test_a_host_out_of_memory_is_the_same_one_line(run_dir, monkeypatch, capsys):
    """Bug caught: Python's MemoryError (the prompts' rows built on the host: a --num_samples with a
    few zeros too many) was a traceback, not the one line naming the fix that torch's allocators get."""
    def no_room(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(sample, "prompts_from", no_room)
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(run_dir), "--max_new_tokens", "2", "--num_samples", "1000000000"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.count("\n") == 0
    assert err.startswith("sample.py: error: out of memory (MemoryError); sample fewer rows at once")


def test_a_num_samples_no_batch_can_hold_is_a_bad_option(run_dir, capsys):
    """Bug caught: --num_samples 10^20 was a traceback (OverflowError: cannot fit 'int' into an
    index-sized integer, repeating the prompt's row), not a bad option's one line."""
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(run_dir), "--max_new_tokens", "2", "--num_samples", str(10 ** 20)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0
    assert err.startswith(f"sample.py: error: --num_samples: must be below 2^31, got {10 ** 20}")


def test_out_of_memory_in_a_compiled_decode_step_is_not_a_compiler_failure(monkeypatch, capsys):
    """Eager decoding would not need less memory: the error goes up (to sample.py's one line),
    with no fallback warning."""
    def compiled(fn, **kwargs):
        def step(*args):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return step
    monkeypatch.setattr(torch, "compile", compiled)
    with pytest.raises(torch.OutOfMemoryError):
        sample.generate(small_model(), PROMPTS, 4, greedy=True, compile=True, stop_at_eos=False)
    assert "compiling the decode step failed" not in capsys.readouterr().err


def test_an_hf_folder_too_large_for_the_device_is_out_of_memory_not_corrupt(run_dir, tmp_path, monkeypatch,
                                                                          capsys):
    import safetensors.torch

    from scripts.export_hf import main as export_main
    export_main([str(run_dir), str(tmp_path / "hf")])

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    monkeypatch.setattr(safetensors.torch, "load_file", oom)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        sample.main(["--hf", str(tmp_path / "hf"), "--max_new_tokens", "2"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("sample.py: error: out of memory loading the model on cpu (")
    assert "corrupt" not in err
    assert err.endswith("free the device's memory or use --device cpu")  # sampling less would not help


def test_bad_prompts_are_clear_errors_and_a_cut_prompt_shows_what_the_model_sees(run_dir, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"once upon\xff a time\n")
    for argv, want in [(["--prompt_file", str(bad)], "not UTF-8 text (byte 9)"),
                       (["--prompt", "look <|patch|> here"], "holds an image token"),
                       (["--seed", str(2 ** 64 - 1)], "--seed: must be in [0, 2^32)")]:
        with pytest.raises(SystemExit):
            sample.main(["--ckpt", str(run_dir), "--max_new_tokens", "2", *argv])
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and want in err
    from tokenizer import Tokenizer
    text = "lily " + "park " * 100  # cut from the left: the prompt shown is the 63 tokens kept
    rows = sample.main(["--ckpt", str(run_dir), "--prompt", text, "--max_new_tokens", "1", "--greedy"])
    tok = Tokenizer.load(run_dir / "tokenizer.json")
    kept = tok.decode(tok.encode(text)[-63:])
    assert capsys.readouterr().out == kept + tok.decode(rows[0]) + "\n"


def test_a_seed_whose_prompt_file_rows_would_pass_32_bits_is_refused_with_exit_2(run_dir, tmp_path, capsys):
    """Bug caught: row r draws with seed + r and torch's CPU generator keeps 32 bits of a seed, so
    --seed 2^32 - 1 with a --prompt_file of two prompts gave the second the seed 0 (its stories are
    --seed 0's); the rows --prompt_file adds, known only once it is read, are counted too."""
    prompts = tmp_path / "two.txt"
    prompts.write_text("once upon\nlily\n")
    argv = ["--ckpt", str(run_dir), "--max_new_tokens", "2", "--prompt_file", str(prompts)]
    with pytest.raises(SystemExit) as e:
        sample.main([*argv, "--seed", str(2 ** 32 - 1)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("sample.py: error: --seed: must be in [0, 2^32 - 1) for 2 samples")
    assert len(sample.main([*argv, "--seed", str(2 ** 32 - 2)])) == 2


@pytest.mark.parametrize("char, tail", [("\u00e9", "a"), ("\u20ac", "xyz")])  # 1 byte left of an é, 2 of a €
def test_a_prompt_cut_inside_a_character_is_printed_from_its_first_whole_one(run_dir, capsys, char, tail):
    """Bug caught: a prompt cut from the left in the middle of a multi-byte character was printed
    starting with U+FFFD (one per byte kept of the cut character)."""
    from tokenizers import pre_tokenizers

    from tokenizer import BYTE_OF, Tokenizer
    assert set(BYTE_OF) == set(pre_tokenizers.ByteLevel.alphabet())
    assert set(BYTE_OF.values()) == set(range(256))
    tok = Tokenizer.load(run_dir / "tokenizer.json")
    text = char * 40 + tail  # one token per byte in this tokenizer
    ids = tok.encode_docs([text])[0]
    kept = ids[-32:]  # (50 new tokens asked: room for half the context of 64)
    data = text.encode()[-int(tok.token_bytes[kept].sum()):]
    assert tok.decode(kept).startswith("\ufffd") and data[0] & 0xC0 == 0x80  # the cut is inside a character
    rows = sample.main(["--ckpt", str(run_dir), "--prompt", text, "--max_new_tokens", "50", "--greedy"])
    out = capsys.readouterr().out
    assert out == data.lstrip(bytes(range(0x80, 0xC0))).decode() + tok.decode(rows[0]) + "\n"
    assert tok.decode_cut(ids) == text and tok.decode_cut(ids[1:]) == text[1:]  # (whole ones: as they are)


def test_output_closed_early_ends_quietly(run_dir):
    """sample.py | head: no BrokenPipeError traceback; exit 141, as a SIGPIPE would give."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(sample.__file__).parent
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before sample.py writes: whatever a pipe holds, the first write fails
    try:
        done = subprocess.run([sys.executable, str(root / "sample.py"), "--ckpt", str(run_dir),
                               "--num_samples", "3", "--max_new_tokens", "10"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


@pytest.mark.parametrize("samples", [1, 2])  # streamed, and printed at the end
def test_output_that_cannot_be_written_is_one_line(run_dir, samples):
    """sample.py > /dev/full (a full disk) and sample.py >&- (no stdout): one line, exit 1."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    argv = [sys.executable, str(Path(sample.__file__).parent / "sample.py"), "--ckpt", str(run_dir),
            "--num_samples", str(samples), "--max_new_tokens", "5"]
    with open("/dev/full", "w") as full:
        done = [subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)]
    if samples == 1:
        done.append(subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   timeout=120, preexec_fn=lambda: os.close(1)))
    for d, why in zip(done, ["No space left on device", "it is closed"], strict=False):
        assert d.returncode == 1 and d.stderr.count("\n") == 1, d.stderr
        assert d.stderr.startswith(f"sample.py: error: cannot write the story to standard output ({why})")


def test_image_needs_a_vision_checkpoint(run_dir, tmp_path, capsys):
    """Bug caught: --image for a checkpoint without the vision stub exited with status 1, where every
    other option the run cannot take is a bad option, status 2."""
    from PIL import Image
    Image.new("RGB", (20, 20), "red").save(tmp_path / "red.png")
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(run_dir), "--image", str(tmp_path / "red.png")])
    assert e.value.code == 2 and "no vision stub" in capsys.readouterr().err


def test_image_runs_the_vision_path(tmp_path):
    model = small_model(vision=True, vision_dim=32, vision_layers=1, vision_heads=2, vision_mlp_dim=128,
                        image_size=56, patch_size=14, projector_input_dim=32, projector_output_dim=32)
    from PIL import Image
    Image.new("RGB", (80, 60), "blue").save(tmp_path / "blue.png")
    image = sample.load_image(tmp_path / "blue.png", model.args)
    assert image.shape == (3, 56, 56) and image.min() >= -1 and image.max() <= 1
    prompt = [0] + sample.image_prompt(model.args) + [20, 21]
    a = sample.generate(model, [prompt], 10, greedy=True, images=image[None], stop_at_eos=False)
    b = sample.generate(model, [prompt], 10, greedy=True, images=image[None], stop_at_eos=False,
                        use_cache=False)
    assert a == b



def test_an_image_prompt_prints_its_text_not_the_image_tokens(run_dir, tmp_path, capsys):
    from PIL import Image
    corpus = run_dir.parent.parent / "stories.txt"
    train.main(["--preset", "debug", "--vocab_size", "300", "--max_steps", "1", "--data", str(corpus),
                "--out_dir", str(tmp_path / "ckpt"), "--cache_dir", str(tmp_path / "cache"), "--plot", "",
                "--vision", "true", "--run", "v", "--wandb_mode", "disabled"])
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    capsys.readouterr()
    sample.main(["--ckpt", str(tmp_path / "ckpt" / "v"), "--image", str(tmp_path / "red.png"),
                 "--prompt", "once upon", "--max_new_tokens", "2"])
    out = capsys.readouterr().out
    assert out.startswith("once upon") and "<|" not in out


def test_a_prompt_that_is_not_utf8_is_a_bad_option(capsys):
    """A terminal in another encoding passes bytes Python keeps as lone surrogates: one line,
    exit status 2, before any work (the tokenizer raised a TypeError)."""
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", "no-such-run", "--prompt", "caf\udce9 au lait"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0
    assert err.startswith("sample.py: error: --prompt: 'caf\\udce9 au lait' is not UTF-8 text (byte 0xe9")


def test_an_output_encoding_that_cannot_take_the_story_is_one_line(run_dir):
    """PYTHONIOENCODING=ascii (or a Latin-1 locale) and a story with an accent: one line, exit 1."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    argv = [sys.executable, str(Path(sample.__file__).parent / "sample.py"), "--ckpt", str(run_dir),
            "--prompt", "caf\u00e9", "--max_new_tokens", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("sample.py: error: cannot write the story to standard output (its "
                                  "encoding, ascii, has no '")  # 'é', or '\\xe9' on an ascii stderr
    assert done.stderr.endswith("'); set PYTHONIOENCODING=utf-8\n")


def test_an_image_too_large_to_decode_is_one_line(tmp_path):
    """PIL refuses images over 179M pixels (a decompression bomb) with its own error type, not an
    OSError: still one line naming the file."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 900M pixels, RGB
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    with pytest.raises(sample.SampleError, match="cannot read it as an image .*exceeds limit.*; pass a "
                                                 "smaller image$"):
        sample.load_image(path, args)
    # each with its own fix (all were told to pass a PNG or JPEG file)
    with pytest.raises(sample.SampleError, match=r"No such file .*\); check the path$"):
        sample.load_image(tmp_path / "gone.png", args)
    with pytest.raises(sample.SampleError, match=r"Is a directory.*\); name an image file in it$"):
        sample.load_image(tmp_path, args)


def test_a_large_image_loads_without_pils_two_line_warning(tmp_path, monkeypatch, recwarn):
    """Between PIL's limit (89M pixels) and twice it, PIL loads the image with a two-line
    DecompressionBombWarning on stderr: the image is resized anyway, so it loads quietly (the limit
    is lowered here to 1,000 pixels, not to decode 100M)."""
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 40), "red").save(tmp_path / "large.png")  # 1,600 pixels: over the limit, under 2x
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    assert sample.load_image(tmp_path / "large.png", args)[0].mean() == 1.0
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_png_with_a_broken_chunk_is_one_line(tmp_path):
    """PIL finds a chunk that is not a chunk (a damaged file) only while decoding, and says so with
    a SyntaxError, neither OSError nor ValueError: still one line naming the file (a traceback)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    pixels = zlib.compress(b"".join(b"\0" + bytes([9, 9, 9]) * 4 for _ in range(4)))
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", pixels[:5]) + chunk(b"\x01DAT", pixels[5:]) + chunk(b"IEND", b""))
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    with pytest.raises(sample.SampleError, match=r"broken.png: cannot read it as an image \(broken PNG.*\); "
                                                 r"pass a PNG or JPEG file \(any format Pillow reads\)$"):
        sample.load_image(path, args)


def test_an_image_is_seen_upright_and_its_transparency_over_white(tmp_path):
    """As transformers' load_image and Llama 4's processor (convert_to_rgb) see it: a clear pixel
    (RGBA, or a palette's transparent colour) is white, not the black its RGB holds; a photo is
    turned by its EXIF orientation."""
    from PIL import Image
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("P", (20, 20), 0).save(tmp_path / "clear.gif", transparency=0)
    for name in ("clear.png", "clear.gif"):
        assert sample.load_image(tmp_path / name, args).min() == 1.0, name
    photo = Image.new("RGB", (40, 20), "red")
    photo.paste((0, 0, 255), (0, 0, 20, 20))  # blue left half; orientation 6: turn 90 degrees clockwise
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "photo.png", exif=exif)
    image = sample.load_image(tmp_path / "photo.png", args)  # upright: blue on top, red below
    assert image[2, :40].mean() > 0.9 and image[0, -40:].mean() > 0.9


def test_an_image_leaves_no_file_open(tmp_path):
    """Bug caught: a GIF (whose file PIL keeps open for its other frames) was left open by load_image:
    a ResourceWarning when it was collected (an error under `python -W error::ResourceWarning`)."""
    import gc
    import warnings

    from PIL import Image
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    frames = [Image.new("P", (20, 20), i) for i in (0, 1)]
    frames[0].save(tmp_path / "one.gif")
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "blue.png")
    for name in ("one.gif", "two.gif", "blue.png"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            sample.load_image(tmp_path / name, args)
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)], name


def test_an_image_with_a_damaged_exif_block_is_seen_as_stored():
    """PIL reads a damaged EXIF block and fails only in writing it back for the turned image
    (struct.error, TypeError): a traceback, for a photo that loaded before EXIF was looked at."""
    import io
    import warnings

    from PIL import Image
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    photo = Image.new("RGB", (40, 20), "red")
    photo.paste((0, 0, 255), (0, 0, 20, 20))
    plain = io.BytesIO()
    photo.save(plain, "JPEG")
    expected = sample.load_image(plain, args)
    head = b"Exif\0\0MM\0*\0\0\0\x08\0"  # a make "cam", orientation 6, and a resolution (type 5)
    tail = b"\0\x02\0\0\0\x04cam\0\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\x01"
    rational = b"2" + b"\0" * 7 + b"H\0\0\0\x01"
    for exif in (head + b"\x03\x01\x08" + tail + b"\x1a\0\x05\0\0\0\x01\0\0\0" + rational,  # struct.error
                 head + b"\x1f\x01\x1e" + tail + b"\x84\0\x05\0\0\0t\0\0\0" + rational,  # TypeError
                 bytes.fromhex("4578696600004d4d002a0000000800ce010f000e000000062300003e01120003000000010006"
                               "00000131000500000001000000440131000200000003737700000000000043616e6f6e0000"
                               "00004800000001")):  # the software tag as a number: AttributeError
        damaged = io.BytesIO()
        photo.save(damaged, "JPEG", exif=exif)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (PIL's "Corrupt EXIF data")
            assert torch.equal(sample.load_image(damaged, args), expected)


def test_a_16_bit_grey_image_keeps_its_shades():
    """PIL opens a 16-bit grey PNG as mode I;16, whose convert("RGB") clips every value above 255:
    mid-grey was seen as white. It is scaled to 8 bits instead."""
    import io

    import numpy as np
    from PIL import Image
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    grey = io.BytesIO()
    Image.fromarray(np.full((20, 20), 32896, dtype=np.uint16)).save(grey, "PNG")  # 128 * 257: mid-grey
    assert Image.open(grey).mode == "I;16"
    assert torch.allclose(sample.load_image(grey, args), torch.tensor(128 / 255 * 2 - 1), atol=1e-6)


@pytest.mark.parametrize("value", [129, 386, 65406 - 129])
def test_a_16_bit_grey_image_is_rounded_to_8_bits_not_truncated(value):
    """16-bit grey scales to the nearest 8-bit value, value * 255 / 65535 rounded: PIL's point()
    truncates, so 386 (1.502) read as 1 and 129 (0.502) as black."""
    import io

    import numpy as np
    from PIL import Image
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    grey = io.BytesIO()
    Image.fromarray(np.full((20, 20), value, dtype=np.uint16)).save(grey, "PNG")
    eight = round(value * 255 / 65535)
    assert torch.allclose(sample.load_image(grey, args), torch.tensor(eight / 255 * 2 - 1), atol=1e-6)


def test_a_16_bit_grey_images_transparent_shade_is_seen_over_white():
    """A 16-bit grey PNG's transparent shade (its tRNS value, 16-bit) is white, the other shades
    scaled to 8 bits, as every other transparency is seen over white.
    Bug caught: the shade was matched against the 8-bit image (no 8-bit value equals 315), so the
    clear pixels kept their dark grey."""
    import io

    import numpy as np
    from PIL import Image
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    shades = np.full((args.image_size, args.image_size), 315, dtype=np.uint16)
    shades[:, args.image_size // 2:] = 32896  # the right half opaque mid-grey (128 * 257)
    grey = io.BytesIO()
    Image.fromarray(shades).save(grey, "PNG", transparency=315)
    assert Image.open(grey).mode == "I;16" and Image.open(grey).info["transparency"] == 315
    half = args.image_size // 2
    image = sample.load_image(grey, args)
    assert torch.equal(image[:, :, :half - 1], torch.ones(3, args.image_size, half - 1))  # clear: white
    assert torch.allclose(image[:, :, half + 1:], torch.tensor(128 / 255 * 2 - 1), atol=1e-6)


def test_uncached_decoding_with_an_image_takes_a_generated_patch_token_as_text(monkeypatch):
    """The image fills the prompt's <|patch|> tokens; a <|patch|> the model picks is a token like
    any other, as in the cached path (whose decode steps see no image). The uncached path gave
    the image to those too: a ValueError (one more <|patch|> than the image has features)."""
    model = small_model(vision=True, vision_dim=32, vision_layers=1, vision_heads=2, vision_mlp_dim=128,
                        image_size=56, patch_size=14, projector_input_dim=32, projector_output_dim=32)
    images = torch.randn(2, 3, 56, 56)
    prompts = [[0, *sample.image_prompt(model.args), 20, 21], [0, *sample.image_prompt(model.args), 30]]
    choose, calls = sample.choose, []

    def choose_a_patch_once(logits, *args, **kwargs):  # the third token of each row is a <|patch|>
        calls.append(1)
        nxt = choose(logits, *args, **kwargs)
        return torch.full_like(nxt, model.args.patch_id) if len(calls) == 3 else nxt
    monkeypatch.setattr(sample, "choose", choose_a_patch_once)
    rows = []
    for use_cache in (True, False):
        calls.clear()
        rows.append(sample.generate(model, prompts, 8, greedy=True, images=images, use_cache=use_cache,
                                    stop_at_eos=False))
    assert rows[0] == rows[1] and rows[0][0][2] == rows[0][1][2] == model.args.patch_id


def test_prompt_file_dash_reads_standard_input(run_dir, monkeypatch, capsys):
    """--prompt_file - takes the prompts from standard input (it was "No such file or directory"),
    as the file would give them: BOM dropped, CRLF a line break."""
    import io
    import sys
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeffonce upon\r\n\nthe dog\n".encode())))
    sample.main(["--ckpt", str(run_dir), "--greedy", "--max_new_tokens", "2", "--prompt_file", "-"])
    out = capsys.readouterr().out
    assert "sample 2 of 2 " in out and "\nonce upon" in out and "\nthe dog" in out


@pytest.mark.parametrize("stdin, want", [
    (None, "--prompt_file -: standard input is closed; pipe the prompts into it, one per line, or pass "
           "a text file"),
    ("\n \n", "--prompt_file - holds no prompt (standard input was empty or blank); pipe the prompts in, "
             "one per line, or leave --prompt_file out")])
def test_prompt_file_dash_with_nothing_on_standard_input_names_the_fix(monkeypatch, stdin, want):
    """The fix for a closed standard input was "..., or - for standard input", which is what was given."""
    import io
    import sys
    monkeypatch.setattr(sys, "stdin", stdin and io.TextIOWrapper(io.BytesIO(stdin.encode())))
    args = config.ModelArgs(**config.PRESETS["debug"]["ModelArgs"])
    with pytest.raises(sample.SampleError) as e:
        sample.prompts_from(SampleArgs(prompt_file="-"), None, args, print)
    assert str(e.value).startswith(want) and "- for standard input" not in str(e.value)


def test_endoftext_typed_in_a_prompt_is_text_as_inside_a_training_story():
    """Training encodes a story's text with special-token strings as text (Tokenizer.encode_docs); a
    prompt's "<|endoftext|>" became the special token, a story break the model never saw there."""
    from tokenizer import Tokenizer
    tok = Tokenizer.train(["once upon a time there was a dog. the end."] * 20, vocab_size=280)
    args = config.ModelArgs(**config.PRESETS["debug"]["ModelArgs"])
    text = "the end.<|endoftext|>once upon a time"
    (ids,) = sample.prompts_from(SampleArgs(prompt=[text], max_new_tokens=3), tok, args, print)
    assert ids == [args.eos_id, *tok.encode_docs([text])[0]]
    assert args.eos_id not in ids[1:] and tok.decode(ids[1:]) == text


def test_a_folder_of_runs_given_as_ckpt_names_its_newest_run_as_ckpt(tmp_path, capsys):
    """Catches sample.py --ckpt checkpoints (the folder of runs) advising "pass checkpoints/r (the
    newest)" without the option it goes to: the advice is --ckpt checkpoints/r, exit status 2."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "last.pt").write_bytes(b"a checkpoint")
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"{tmp_path} is a folder of runs, not a run; pass --ckpt {tmp_path / 'r'} (the newest)" in err


def test_a_missing_prompt_file_names_the_fix(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(run_dir), "--prompt_file", str(tmp_path / "nope.txt")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and len(err.splitlines()) == 1
    assert err.endswith("No such file or directory; pass a text file with one prompt per line, or - for "
                        "standard input")


@pytest.mark.parametrize("num_samples", [1, 2])
def test_ctrl_c_keeps_what_was_generated(run_dir, monkeypatch, capsys, num_samples):
    """Ctrl-C during a batch printed nothing of its samples (they are printed at the end): each is
    printed as far as it got, marked, and the exit status is 130; a streamed sample ends its line."""
    real = sample.generate

    def interrupted(model, prompts, max_new_tokens, on_token, **kw):  # Ctrl-C after the first host read
        def then_ctrl_c(rows, ended):
            on_token(rows, [False] * len(rows))  # (no row has ended)
            raise KeyboardInterrupt
        real(model, prompts, sample.CHECK_EVERY, on_token=then_ctrl_c, **kw)

    monkeypatch.setattr(sample, "generate", interrupted)
    argv = ["--ckpt", str(run_dir), "--prompt", "once upon", "--num_samples", str(num_samples), "--seed", "3"]
    with pytest.raises(SystemExit) as e:
        sample.main(argv)
    got = capsys.readouterr()
    assert e.value.code == 130 and got.err.strip() == "sample.py: interrupted"
    monkeypatch.setattr(sample, "generate", real)
    sample.main(argv + ["--max_new_tokens", str(sample.CHECK_EVERY)])
    whole = capsys.readouterr().out
    if num_samples == 1:
        assert got.out.startswith("once upon") and got.out.endswith("\n") and len(got.out) > 10
    else:
        assert got.out == whole.replace(f"of {num_samples} ", f"of {num_samples} (interrupted) ")


def test_ctrl_c_marks_only_the_samples_that_had_not_ended(monkeypatch, capsys):
    """Bug caught: Ctrl-C during a batch marked every sample "(interrupted)", the ones that had
    already ended at <|endoftext|> too: a finished story read as cut short."""
    from types import SimpleNamespace
    model = small_model()
    prompts = [PROMPTS[1], PROMPTS[2]]
    rows = sample.generate(model, prompts, 40, greedy=True, stop_at_eos=False)
    model.args.eos_id = next(t for t in rows[0][4:10] if t not in rows[1][:16] and t not in rows[0][:4])
    real = sample.generate

    def interrupted(*a, on_token, **kw):  # Ctrl-C right after the first host read
        def then_ctrl_c(*seen):
            on_token(*seen)
            raise KeyboardInterrupt
        return real(*a, on_token=then_ctrl_c, **kw)

    monkeypatch.setattr(sample, "generate", interrupted)

    def decode(ids):
        return " ".join(map(str, ids))
    tok, cpu = SimpleNamespace(decode=decode, decode_cut=decode), torch.device("cpu")  # (tell: decode_cut)
    with pytest.raises(KeyboardInterrupt):
        sample.tell(model, tok, prompts, None, SampleArgs(max_new_tokens=40, greedy=True), cpu)
    out = capsys.readouterr().out
    assert f"{'-' * 20} sample 1 of 2 {'-' * 20}" in out and "sample 2 of 2 (interrupted)" in out


# --- what a mutation audit of sample.py found untested ----------------------------------------

def test_top_k_above_the_vocabulary_keeps_every_token():
    """Catches top_k passed to topk() uncapped (a RuntimeError for --top_k over the vocabulary's
    size): a top_k past the vocabulary keeps every token, as top_k 0 does."""
    logits = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample.filter_logits(logits, top_k=50), logits)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    assert sample.choose(logits, generators, top_k=50).shape == (2,)


def test_bf16_logits_are_sampled_as_their_fp32_values():
    """Catches choose() dropping its .float(): bf16 logits (a bf16 model's) were divided, filtered
    and drawn against in bf16, other tokens than their fp32 values give from the same generators."""
    logits = (torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 3).bfloat16()
    ours, theirs = ([torch.Generator().manual_seed(10 + i) for i in range(4)] for _ in range(2))
    for _ in range(30):
        assert sample.choose(logits, ours, temperature=0.7, top_p=0.95).tolist() == \
            sample.choose(logits.float(), theirs, temperature=0.7, top_p=0.95).tolist()


def test_left_pad_right_aligns_each_row_and_counts_positions_from_its_first_token():
    """Catches padding that is not pad_id at position -1, rows not right-aligned, and positions
    counting from the batch's first column (or from 1) instead of each row's first real token."""
    tokens, positions = sample.left_pad([[5, 6, 7], [8], [9, 10]], 1, "cpu")
    assert tokens.tolist() == [[5, 6, 7], [1, 1, 8], [1, 9, 10]]
    assert positions.tolist() == [[0, 1, 2], [-1, -1, 0], [-1, 0, 1]]


def test_a_batch_with_no_room_to_generate_gives_empty_rows():
    """Catches the early return for a batch with no room (max_new_tokens 0, or every prompt filling
    the context) skipped: the loop never ran and `rows` was never set (an UnboundLocalError)."""
    model = small_model()
    assert sample.generate(model, PROMPTS, 0) == [[], [], []]
    full = [0, *range(200, 263)]  # 64 tokens: the whole context
    assert sample.generate(model, [full, full], 5, use_cache=False) == [[], []]


def test_generation_stops_at_the_first_check_where_every_row_has_ended():
    """Catches the loop running on to max_new_tokens once every row has ended (the stop check's
    break lost, or a row at its own context limit not counted as ended): rows ended by
    <|endoftext|> or by their context within the first 16 tokens stop the loop at the first
    host read, so on_token is called once."""
    model = small_model()
    long = [0, *range(100, 160)]  # 61 tokens: room for 3 in the context of 64
    prompts = [PROMPTS[1], long]
    rows = sample.generate(model, prompts, 40, greedy=True, stop_at_eos=False)
    assert len(rows[0]) == 40 and len(rows[1]) == 3
    eos = next(t for t in rows[0][4:10] if t not in rows[1] and t not in rows[0][:4])
    model.args.eos_id = eos
    seen = []

    def on_token(*a):
        seen.append(a)
    stopped = sample.generate(model, prompts, 40, greedy=True, on_token=on_token)
    assert stopped == [rows[0][:rows[0].index(eos)], rows[1]]
    assert seen == [(stopped, [True, True])]
    seen.clear()  # the rows that ended by <|endoftext|> alone
    assert sample.generate(model, prompts[:1], 40, greedy=True, on_token=on_token) == stopped[:1]
    assert seen == [(stopped[:1], [True])]


def test_image_prompt_is_llama4s_single_tile_layout():
    """Catches the image's tokens out of Llama 4's order or count: <|image_start|> <|image|>, one
    <|patch|> per image token, <|image_end|>."""
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True, "image_size": 56,
                               "patch_size": 14})
    assert args.image_tokens == 4  # 4 x 4 patches, pixel-shuffled to 2 x 2
    assert sample.image_prompt(args) == [args.image_start_id, args.image_id, *[args.patch_id] * 4,
                                         args.image_end_id]


def test_a_prompt_holding_any_image_token_is_refused():
    """Catches one of the four image tokens left out of the check: each, typed in a prompt, is a
    SampleError naming the fix."""
    for token in ["<|image_start|>", "<|image|>", "<|patch|>", "<|image_end|>"]:
        with pytest.raises(sample.SampleError, match=r"holds an image token .*--image puts an image in"):
            stub_prompts(f"look {token} here", new=3, vision=True)


def test_an_image_token_in_a_text_models_prompt_is_not_told_to_use_image():
    """Bug caught: a model without the vision stub was told "--image puts an image in" for an image
    token typed in its prompt: --image is then refused (the checkpoint has no vision stub)."""
    with pytest.raises(sample.SampleError, match=r"holds an image token .*; remove it \(this model has no "
                                                 r"vision stub: it reads no image\)$"):
        stub_prompts("look <|image|> here", new=3)
    with pytest.raises(sample.SampleError, match=r"remove it \(--image puts an image in\)$"):
        stub_prompts("look <|image|> here", new=3, vision=True)


def test_prompts_and_a_prompt_file_are_all_told_each_num_samples_times_in_order(tmp_path):
    """Catches --prompt_file's prompts replacing the --prompt ones (both are told, --prompt first),
    and the --num_samples copies of a prompt not kept together, in the prompts' order."""
    from types import SimpleNamespace
    path = tmp_path / "prompts.txt"
    path.write_text("c d\n\ne\n")
    args = config.ModelArgs(**config.PRESETS["debug"]["ModelArgs"])
    words = {w: 20 + i for i, w in enumerate("abcde")}
    tok = SimpleNamespace(encode_docs=lambda texts: [[words[w] for w in t.split()] for t in texts])
    got = sample.prompts_from(SampleArgs(prompt=["a", "b"], prompt_file=str(path), num_samples=2,
                                         max_new_tokens=3), tok, args, print)
    eos = args.eos_id
    assert got == [[eos, 20], [eos, 20], [eos, 21], [eos, 21], [eos, 22, 23], [eos, 22, 23], [eos, 24],
                   [eos, 24]]


def test_prompts_from_leaves_the_prompt_list_it_was_given_as_it_was(tmp_path):
    """Catches prompts_from adding the --prompt_file's lines to SampleArgs.prompt itself: a second call
    on the same settings (a caller sampling twice) told the file's prompts twice."""
    from types import SimpleNamespace
    path = tmp_path / "prompts.txt"
    path.write_text("c\n")
    args = config.ModelArgs(**config.PRESETS["debug"]["ModelArgs"])
    tok = SimpleNamespace(encode_docs=lambda texts: [[20 + "abc".index(t)] for t in texts])
    settings = SampleArgs(prompt=["a"], prompt_file=str(path), max_new_tokens=3)
    first = sample.prompts_from(settings, tok, args, print)
    assert settings.prompt == ["a"] and first == [[args.eos_id, 20], [args.eos_id, 22]]
    assert sample.prompts_from(settings, tok, args, print) == first


def test_a_utf32_big_endian_byte_order_mark_is_named(tmp_path):
    """Catches a UTF-32 big-endian file's byte-order mark (00 00 FE FF) passed over: the file was said to
    be UTF-32BE "without a byte-order mark?", which it has."""
    path = tmp_path / "p.txt"
    path.write_bytes(codecs.BOM_UTF32_BE + "once upon\n".encode("utf-32-be"))
    with pytest.raises(sample.SampleError) as e:
        sample.prompt_file_lines(str(path))
    assert "UTF-32 text, not UTF-8 (it starts with a UTF-32 byte-order mark, 00 00 FE FF); convert it: " \
        "iconv -f UTF-32 -t UTF-8 " in str(e.value)


def test_prompt_file_dash_takes_a_bare_cr_as_a_line_break(monkeypatch):
    """Catches standard input's lone CR (an old Mac file piped in) left inside a prompt: as in a
    --prompt_file, CRLF and CR both end a line, and a BOM is dropped, whatever stdin's encoding."""
    import io
    import sys
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeffonce\rupon\r\ncaf\u00e9\n".encode()),
                                                       encoding="latin-1"))
    assert sample.read_prompt_file("-") == "once\nupon\ncaf\u00e9\n"


def test_a_utf16_standard_input_names_a_conversion_that_pipes_into_it(monkeypatch):
    """Catches --prompt_file - of UTF-16 text naming `iconv -f UTF-16 -t UTF-8 - > --utf8` as the fix (a
    file named --utf8 that nothing reads): for standard input the converted text is piped in."""
    import io
    import sys
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("once upon\n".encode("utf-16"))))
    with pytest.raises(sample.SampleError) as e:
        sample.prompt_file_lines("-")
    assert str(e.value) == ("--prompt_file -: UTF-16 text, not UTF-8 (it starts with a UTF-16 byte-order "
                            "mark, FF FE); convert it: iconv -f UTF-16 -t UTF-8 FILE | sample.py ... "
                            "--prompt_file -")


def test_the_conversion_command_quotes_a_file_name_with_a_space(tmp_path):
    """Catches the iconv command named for a UTF-16 "my prompts.txt" left unquoted: pasted, `iconv ... my
    prompts.txt > my prompts-utf8.txt` reads the wrong files and truncates a file named "my"."""
    import shlex
    path = tmp_path / "my prompts.txt"
    path.write_bytes("once upon\n".encode("utf-16"))
    with pytest.raises(sample.SampleError) as e:
        sample.prompt_file_lines(str(path))
    command = str(e.value).split("; convert it: ")[1]
    assert shlex.split(command) == ["iconv", "-f", "UTF-16", "-t", "UTF-8", str(path), ">",
                                    str(tmp_path / "my prompts-utf8.txt")]


@pytest.mark.parametrize("data", [b"\xff", b"\xe9\n", b"ab\xff"])
def test_a_short_file_that_is_not_utf8_is_not_named_utf16_or_utf32(data, tmp_path):
    """Catches a prompt file of 1 to 3 bytes, Latin-1 say, named "UTF-32BE without a byte-order mark"
    (or UTF-16): with no whole 4 (or 2) bytes to count NULs in, the NUL tests held for 0 of 0."""
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    with pytest.raises(sample.SampleError) as e:
        sample.prompt_file_lines(str(path))
    byte = len(data) - 1 if data.endswith(b"\xff") else 0
    assert str(e.value) == f"--prompt_file {path}: not UTF-8 text (byte {byte}); save it as UTF-8"


@pytest.mark.parametrize("data", [b"a\0b\n", b"\0abc", b"\0a"])
def test_a_short_file_with_one_nul_is_not_named_utf16(data, tmp_path):
    """Bug caught: a 4-byte binary file, a\\0b\\n, was "1 of 4 bytes are NUL, every other one: UTF-16LE
    without a byte-order mark?": one NUL falls on one parity in any file, so it tells nothing of UTF-16
    (whose NULs fill every other byte) in UTF-8 text; two (a\\0b\\0 is "ab" in UTF-16LE) still name it,
    and so does one beside bytes that are not UTF-8 (é in UTF-16LE, E9 00)."""
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    with pytest.raises(sample.SampleError) as e:
        sample.prompt_file_lines(str(path))
    assert str(e.value) == (f"--prompt_file {path}: not text (1 NUL byte: a binary file?); pass a text file "
                            "with one prompt per line")
    path.write_bytes(b"a\0b\0")
    with pytest.raises(sample.SampleError, match=r"2 of 4 bytes are NUL, every other one: UTF-16LE"):
        sample.prompt_file_lines(str(path))
    path.write_bytes("é".encode("utf-16-le"))  # (E9 00)
    with pytest.raises(sample.SampleError, match=r"1 of 2 bytes are NUL, every other one: UTF-16LE"):
        sample.prompt_file_lines(str(path))


@pytest.mark.parametrize("text, codec, want", [
    ("once upon a time \U0001F600 there was a dog\n", "utf-32-le", "three in every four: UTF-32LE"),
    ("once upon a time \u0432 \u043b\u0435\u0441\u0443\n", "utf-16-le", "every other one: UTF-16LE"),
    ("\u0417\u0430\u0433\u043e\u043b\u043e\u0432\u043e\u043a " * 30 + "\n" + "once upon a time\n" * 300,
     "utf-16-be", "every other one: UTF-16BE")], ids=["utf32-emoji", "utf16-cyrillic", "utf16-title"])
def test_utf16_and_utf32_with_some_non_latin_text_are_still_named(text, codec, want, tmp_path):
    """Catches the NUL counts that name UTF-16 and UTF-32 without a byte-order mark asking every character
    to be Latin-1 (a word in Cyrillic, an emoji: "a binary file?"), or reading only the first few hundred
    bytes (a title line in Cyrillic before English stories); they ask for most, over the first 64 KiB."""
    path = tmp_path / "p.txt"
    path.write_bytes(text.encode(codec))
    with pytest.raises(sample.SampleError) as e:
        sample.prompt_file_lines(str(path))
    assert f"{want} without a byte-order mark?)" in str(e.value)


def test_the_nul_count_of_a_large_utf16_file_is_of_the_whole_file():
    """Catches not_utf8 counting the NUL bytes of the first 64 KiB it samples, not of the file: "32,768
    of 170,000 bytes are NUL" of a 170 kB UTF-16 file, half of whose bytes are NUL."""
    data = ("once upon a time\n" * 5000).encode("utf-16-be")
    assert "(85,000 of 170,000 bytes are NUL, every other one: UTF-16BE" in sample.not_utf8("p.txt", data, 0)


def test_an_hf_folder_holding_a_last_pt_too_is_loaded_as_an_hf_folder(tmp_path, monkeypatch):
    """Catches sample.py --hf refusing an exported folder (config.json there) as a run folder whenever a
    last.pt lies beside its files: only a folder with last.pt and no config.json is a run folder."""
    (tmp_path / "last.pt").write_bytes(b"a checkpoint")
    (tmp_path / "config.json").write_text("{}")
    loaded, device = [], torch.device("cuda", 3)  # (never used: load_hf is faked)

    def load_hf(path, device, dtype):
        loaded.append((path, device, dtype))
        raise sample.SampleError("loaded as an HF folder")
    monkeypatch.setattr(sample.checkpoint, "load_hf", load_hf)
    with pytest.raises(sample.SampleError, match="^loaded as an HF folder$"):
        sample.load(SampleArgs(hf=str(tmp_path)), device, torch.bfloat16)
    assert loaded == [(str(tmp_path), device, torch.bfloat16)]  # (onto the device, in the dtype asked)


def test_several_samples_are_printed_each_under_its_numbered_line():
    """Catches the samples' layout: each under a line numbering it (1-based, of how many, the note
    after), its prompt's text then its story, and a line break after each."""
    from types import SimpleNamespace
    tok = SimpleNamespace(decode=lambda ids: "".join(chr(96 + i) for i in ids))
    got = sample.samples(["Once", "Then"], [[1, 2], [3]], tok, [False, True])
    bar = "-" * 20
    assert got == (f"{bar} sample 1 of 2 {bar}\nOnceab\n"
                   f"{bar} sample 2 of 2 (interrupted) {bar}\nThenc\n")
    assert sample.samples(["x"], [[]], tok) == f"{bar} sample 1 of 1 {bar}\nx\n"


def test_write_flushes_what_it_streams(monkeypatch):
    """Catches write() leaving the text in stdout's buffer: a streamed story shows only at the end
    (or when the buffer fills), not as it is generated."""
    import sys
    calls = []
    out = type("Out", (), {"write": lambda self, s: calls.append(("write", s)),
                           "flush": lambda self: calls.append(("flush",)), "encoding": "utf-8"})()
    monkeypatch.setattr(sys, "stdout", out)
    sample.write("once")
    assert calls == [("write", "once"), ("flush",)]


def test_an_image_is_given_to_every_prompt_and_sample_in_the_weights_dtype(run_dir, tmp_path, monkeypatch):
    """Catches main giving generate() one image for a batch (not one per prompt x --num_samples)
    or in fp32 for bf16 weights."""
    from PIL import Image
    model = small_model(vision=True, vision_dim=32, vision_layers=1, vision_heads=2, vision_mlp_dim=128,
                        image_size=56, patch_size=14, projector_input_dim=32, projector_output_dim=32)
    from tokenizer import Tokenizer
    tok = Tokenizer.load(run_dir / "tokenizer.json")
    monkeypatch.setattr(sample, "load", lambda sample_args, device, dtype: (model.to(dtype), tok, "v"))
    seen = []

    def generate(model, prompts, max_new_tokens, images, **kw):
        seen.append((len(prompts), tuple(images.shape), images.dtype))
        return [[5] for _ in prompts]
    monkeypatch.setattr(sample, "generate", generate)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    sample.main(["--ckpt", str(run_dir), "--image", str(tmp_path / "red.png"), "--prompt", "once",
                 "--prompt", "lily", "--num_samples", "2", "--max_new_tokens", "2", "--dtype", "bfloat16"])
    assert seen == [(4, (4, 3, 56, 56), torch.bfloat16)]


def test_stop_at_eos_false_generates_past_end_of_text():
    """Catches stop_at_eos=False still stopping at <|endoftext|> (the benchmarks time every one of
    max_new_tokens): the rows are as long, whatever the end-of-text id."""
    model = small_model()
    rows = sample.generate(model, PROMPTS, 20, greedy=True, stop_at_eos=False)
    model.args.eos_id = rows[0][3]
    assert sample.generate(model, PROMPTS, 20, greedy=True, stop_at_eos=False) == rows


def test_no_cache_alone_does_not_warn_about_compiling(run_dir, capsys):
    """Catches the --no_cache warning given for --compile auto (the default, eager on the CPU) or
    false: only --compile true asks for a compiled step that --no_cache does not have."""
    for how in ([], ["--compile", "false"]):
        sample.main(["--ckpt", str(run_dir), "--prompt", "once", "--max_new_tokens", "2", "--no_cache", *how])
        assert "warning" not in capsys.readouterr().err


# --- a third mutation audit of sample.py: the loop's bookkeeping, the filters' edges, the trials --

def test_top_p_1_keeps_every_token_even_where_the_mass_rounds_to_1_early():
    """Catches top_p 1.0 (the default) run through the top-p filter: once the running mass rounds
    to 1.0 in fp32, the tokens after it were dropped, so the rarest tokens could never be drawn."""
    logits = torch.tensor([[0.0, -100.0, -100.0, -120.0], [-100.0, 3.0, -100.0, 2.0]])
    assert torch.equal(sample.filter_logits(logits, top_p=1.0), logits)
    assert torch.equal(sample.filter_logits(logits, top_k=4, top_p=1.0), logits)


def test_a_small_temperature_is_sampled_as_it_is_and_a_tinier_one_as_min_temperature():
    """Catches a MIN_TEMPERATURE floor far above 1e-6 (a --temperature 0.05 sampled as a larger one):
    a temperature above the floor draws what torch.multinomial draws at that temperature, and one
    below it what the floor draws."""
    base = torch.randn(4, 40, generator=torch.Generator().manual_seed(1))
    for t in (0.05, 1e-5):
        logits = base * t  # ties within t: each temperature draws other tokens
        ours, theirs = ([torch.Generator().manual_seed(20 + i) for i in range(4)] for _ in range(2))
        for _ in range(10):
            probs = (logits / t).softmax(-1)
            want = [torch.multinomial(p, 1, generator=g).item() for p, g in zip(probs, theirs, strict=True)]
            assert sample.choose(logits, ours, temperature=t).tolist() == want
    ours, floor = ([torch.Generator().manual_seed(i) for i in range(4)] for _ in range(2))
    tiny = torch.tensor([[0.0, 1e-6, 2e-6, -1e-6]] * 4)
    for _ in range(10):
        assert sample.choose(tiny, ours, temperature=1e-9).tolist() == \
            sample.choose(tiny, floor, temperature=sample.MIN_TEMPERATURE).tolist()


def test_a_huge_temperature_samples_uniformly_over_the_tokens_left_not_end_of_text():
    """Bug caught: a temperature past float32's largest (--temperature 1e300, or inf in generate) was
    inf in float32, the never-drawn tokens' -inf logits / inf were NaN, and argmax took token 0: every
    story ended at once, empty, without a word. It now samples as 1e30 (MAX_TEMPERATURE) does: uniformly."""
    logits = torch.randn(3, 12, generator=torch.Generator().manual_seed(0)) * 5
    logits[:, 2:5] = float("-inf")  # (as generate masks the never-drawn tokens)
    for t in (1e300, float("inf")):
        ours, cap = ([torch.Generator().manual_seed(i) for i in range(3)] for _ in range(2))
        drawn = set()
        for _ in range(40):
            got = sample.choose(logits, ours, temperature=t)
            assert got.tolist() == sample.choose(logits, cap, temperature=1e30).tolist()
            drawn |= set(got.tolist())
        assert drawn == set(range(12)) - {2, 3, 4}  # every token left, none masked
    ours = [torch.Generator().manual_seed(1)]
    assert sample.choose(logits[:1], ours, temperature=1e300, top_k=2).item() in \
        logits[0].topk(2).indices.tolist()
    model = small_model()
    rows = sample.generate(model, PROMPTS, 8, temperature=float("inf"), seed=1)
    assert all(len(r) > 0 for r in rows)  # (eos is 1 token of 320: 8 of them in a row is no chance)


def test_row_r_of_a_batch_draws_with_a_generator_seeded_seed_plus_r():
    """Catches each row's generator seeded otherwise than --seed + its row (seed + r + 1, or every
    row the same seed): a row's story is what torch.multinomial draws, step by step, from a full
    forward's logits at the temperature asked, with torch.Generator().manual_seed(seed + r)."""
    model = small_model()
    prompts, seed, temperature = [PROMPTS[1], PROMPTS[2]], 5, 0.9
    rows = sample.generate(model, prompts, 6, temperature=temperature, seed=seed, stop_at_eos=False)
    for r, (prompt, got) in enumerate(zip(prompts, rows, strict=True)):
        g, ids = torch.Generator().manual_seed(seed + r), list(prompt)
        with torch.no_grad():
            for _ in range(6):
                probs = (model(torch.tensor([ids])).logits[0, -1].float() / temperature).softmax(-1)
                ids.append(torch.multinomial(probs, 1, generator=g).item())
        assert got == ids[len(prompt):]


def test_without_compile_the_decode_step_is_never_compiled(monkeypatch):
    """Catches the step's compile trials armed whatever compile says: compile=False (the CPU's
    default) went through torch.compile all the same."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    model = small_model()
    sample.generate(model, PROMPTS, 5, greedy=True, stop_at_eos=False)
    assert seen == []


def test_every_compiled_call_starts_a_cuda_graph_step_and_the_cache_is_marked_static(monkeypatch):
    """Catches a compiled call not preceded by torch.compiler.cudagraph_mark_step_begin() (under CUDA
    graphs the last step's outputs would be held, or overwritten while still read), and the cache's
    tensors not marked static for the compiler (a CUDA graph would copy them in at every replay)."""
    events = []

    def compile(fn, **kwargs):
        def compiled(*args):
            events.append("call")
            return fn(*args)
        return compiled
    monkeypatch.setattr(torch, "compile", compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: events.append("mark"))
    monkeypatch.setattr(KVCache, "mark_static", lambda self: events.append("static") or self)
    sample.generate(small_model(), PROMPTS, 6, greedy=True, compile=True, stop_at_eos=False)
    assert events == ["static"] + ["mark", "call"] * 5  # 6 tokens: the prefill's, then 5 steps


@pytest.mark.parametrize("compile, use_cache, expert_dim, want", [
    (True, True, 32, "sparse"),  # grouped_mm takes these widths: the sparse MoE, compiled as is
    (True, False, 30, "sparse"),  # --no_cache has no compiled step: nothing to swap
    (True, True, 30, "reference")])  # a compiled step where grouped_mm cannot take the widths
def test_the_reference_moe_runs_only_in_a_compiled_step_that_needs_it(monkeypatch, compile, use_cache,
                                                                      expert_dim, want):
    """Catches the reference MoE (every expert on every token) run where the sparse one would do:
    in a compiled step whose widths grouped_mm takes, or on --no_cache's eager path."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    model = small_model(expert_dim=expert_dim)
    impls = set()
    moe = next(m for m in model.modules() if isinstance(m, MoE))
    moe.register_forward_pre_hook(lambda m, args: impls.add(m.impl))
    sample.generate(model, PROMPTS, 4, greedy=True, compile=compile, use_cache=use_cache, stop_at_eos=False)
    assert impls == {want}


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_row_past_its_own_context_limit_is_not_checked_for_finite_logits(monkeypatch, use_cache):
    """Catches the non-finite check reading a row's tokens past its own context limit: on CUDA a
    row that has stopped there may see no cache slot on a chunked layer, NaN logits that mean
    nothing (its tokens are cut), and the batch stopped with "weights are broken"."""
    model = small_model()
    prompts = [PROMPTS[1], [0, *range(100, 160)]]  # the second: room for 3 tokens of the context of 64
    want = sample.generate(model, prompts, 20, greedy=True, stop_at_eos=False, use_cache=use_cache)
    start = sample.start

    def start_nan_past_the_limit(*args, **kwargs):
        logits, step = start(*args, **kwargs)
        calls = []

        def nan_step(nxt):
            calls.append(1)
            out = step(nxt).clone()
            if len(calls) >= 3:  # the logits for row 1's fourth token, past its limit
                out[1] = float("nan")
            return out
        return logits, nan_step
    monkeypatch.setattr(sample, "start", start_nan_past_the_limit)
    assert sample.generate(model, prompts, 20, greedy=True, stop_at_eos=False, use_cache=use_cache) == want
    assert [len(r) for r in want] == [20, 3]


def test_bf16_weights_keep_their_rope_tables_in_fp32(run_dir):
    """Catches --dtype bfloat16 casting the model without recomputing its RoPE tables: .to(bf16)
    rounds inv_freq to bf16 (positions rotate by the wrong angles, more so the further into the
    story); they stay fp32, as trained."""
    from model import rope_frequencies
    model, _, _ = sample.load(SampleArgs(ckpt=str(run_dir)), "cpu", torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.inv_freq.dtype == torch.float32 and torch.equal(model.inv_freq, rope_frequencies(model.args))


def test_the_kv_cache_is_no_longer_than_the_context():
    """Catches the cache sized prompt + max_new_tokens past the context: --max_new_tokens 1000 on a
    context of 64 allocated 1,000-odd slots per layer (memory, and a compiled step reads every
    slot), where no row ever holds more than max_seq_len positions."""
    model = small_model()
    tokens, positions = sample.left_pad(PROMPTS, model.args.pad_id, "cpu")
    with torch.no_grad():
        _, step = sample.start(model, tokens, positions, None, 1000, True, False)
    assert step.cache.length == model.args.max_seq_len == 64


def test_top_k_keeps_every_token_tied_with_the_kth():
    """Catches top_k keeping exactly k tokens (topk's pick among equals, by index): the tokens tied
    with the k-th are kept with it, whatever their place in the vocabulary."""
    logits = torch.tensor([[3.0, 2.0, 0.0, 2.0, 1.0], [1.0, 1.0, 1.0, 5.0, 0.0]])
    kept = torch.isfinite(sample.filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, True, False, True, False], [True, True, True, True, False]]


def test_a_compile_failure_is_recorded_for_the_benchmark(monkeypatch, capsys):
    """Catches the fallback not recording why it fell back: scripts/bench_sample.py reads
    DecodeStep.failures to say that a compiled variant was timed eagerly."""
    def fail(*args, **kwargs):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(sample.DecodeStep, "failures", [])
    monkeypatch.setattr(torch, "compile", fail)
    sample.generate(small_model(), PROMPTS, 3, greedy=True, compile=True, stop_at_eos=False)
    assert sample.DecodeStep.failures == ["RuntimeError: no compiler here"]
    assert "compiling the decode step failed (RuntimeError: no compiler here)" in capsys.readouterr().err


def test_several_samples_print_nothing_before_they_are_all_told(run_dir, capsys):
    """Catches a batch streaming its first row as it is generated (on_token writing whatever the
    batch): several samples are printed at the end only, each under its numbered line, nothing
    before the first."""
    from tokenizer import Tokenizer
    rows = sample.main(["--ckpt", str(run_dir), "--prompt", "once upon", "--num_samples", "2",
                        "--max_new_tokens", "20", "--seed", "4"])
    tok = Tokenizer.load(run_dir / "tokenizer.json")
    assert capsys.readouterr().out == sample.samples(["once upon"] * 2, rows, tok)



def test_each_sample_of_a_batch_is_the_story_its_seed_tells_alone(run_dir, capsys):
    """Checks README's claim from the command line: --num_samples 3 --seed S, two prompts of
    different lengths (left padding), prints for row r what one sample alone (streamed) prints with
    --seed S + r, and the same batch again gives the same text."""
    prompts = ["once upon a time there was a little girl named lily", "lily"]
    argv = ["--ckpt", str(run_dir), "--max_new_tokens", "30", "--temperature", "1.5"]
    rows = sample.main([*argv, "--prompt", prompts[0], "--prompt", prompts[1], "--num_samples", "3",
                        "--seed", "5"])
    batch = capsys.readouterr().out
    for r, row in enumerate(rows):
        alone = sample.main([*argv, "--prompt", prompts[r // 3], "--seed", str(5 + r)])
        assert alone == [row] and f"\n{capsys.readouterr().out}" in batch
    assert len({tuple(row) for row in rows}) > 2  # (the samples of a prompt differ)
    sample.main([*argv, "--prompt", prompts[0], "--prompt", prompts[1], "--num_samples", "3", "--seed", "5"])
    assert capsys.readouterr().out == batch


def test_a_fallback_at_the_second_call_counts_the_compiled_call_in_the_caches_seen(monkeypatch, capsys):
    """Catches the fallback counting the trial calls that ran compiled wrongly (both trials, or
    none): the cache's `seen` (the columns fed, which eager calls read and the length check counts)
    is the prompts' columns plus one per step, whichever steps ran compiled."""
    def compiled_once_then_fail(fn, **kwargs):
        def step(model, tokens, cache):
            if not calls:
                calls.append(1)
                seen = cache.seen
                logits = fn(model, tokens, cache)
                cache.seen = seen  # as a compiled call leaves it
                return logits
            raise RuntimeError("recording failed")
        return step
    calls = []
    monkeypatch.setattr(torch, "compile", compiled_once_then_fail)
    model = small_model()
    tokens, positions = sample.left_pad(PROMPTS, model.args.pad_id, "cpu")
    with torch.no_grad():
        _, step = sample.start(model, tokens, positions, None, 10, True, True, padding=8)
        for t in range(4):
            step(torch.tensor([7 + t] * 3))
    assert step.cache.seen == tokens.shape[1] + 4 and calls == [1]
    assert "compiling the decode step failed (RuntimeError: recording failed)" in capsys.readouterr().err


def test_top_p_is_taken_from_the_distribution_at_the_temperature_asked():
    """Catches the temperature applied after the top-p filter: at temperature 0.25 the top token of
    (0.5, 0.3, 0.2) holds 86% of the mass, so top_p 0.6 keeps it alone; filtered at temperature 1
    the second token stayed (11% of the draws)."""
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().expand(64, 3)
    generators = [torch.Generator().manual_seed(i) for i in range(64)]
    assert sample.choose(logits, generators, temperature=0.25, top_p=0.6).tolist() == [0] * 64


def test_a_file_that_is_no_image_is_told_to_pass_one(tmp_path):
    """Bug caught: a --image that is a file but no image (Pillow's UnidentifiedImageError is an OSError,
    as a folder's and a missing file's are) given another case's fix: it is told to pass an image file."""
    args = config.ModelArgs(**{**config.PRESETS["debug"]["ModelArgs"], "vision": True})
    notes = tmp_path / "notes.png"
    notes.write_text("not an image\n")
    with pytest.raises(sample.SampleError, match=r"cannot read it as an image .*\); pass a PNG or JPEG file "
                                                 r"\(any format Pillow reads\)$"):
        sample.load_image(notes, args)


@pytest.mark.parametrize("stderr", ["full", "closed"])
def test_a_warning_stderr_cannot_take_neither_stops_the_story_nor_lands_in_it(run_dir, stderr):
    """Bugs caught: sample.py ... --greedy --top_k 3 2>/dev/full exited 1 with nothing printed (the
    warning's failed write killed it before the story); with stderr closed (2>&-: sys.stderr is None,
    and print's file=None is stdout) the warning was the story's first line. Now the warning is
    dropped and the story is what it is without it."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    argv = [sys.executable, str(Path(sample.__file__).parent / "sample.py"), "--ckpt", str(run_dir),
            "--prompt", "once", "--max_new_tokens", "8", "--greedy"]
    want = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert want.returncode == 0 and want.stderr == ""
    with open(os.devnull if stderr == "closed" else "/dev/full", "w") as err:
        done = subprocess.run([*argv, "--top_k", "3"], stdout=subprocess.PIPE, stderr=err, text=True,
                              timeout=120, preexec_fn=(lambda: os.close(2)) if stderr == "closed" else None)
    assert (done.returncode, done.stdout) == (0, want.stdout)


@pytest.mark.parametrize("setting, value", [("num_local_experts", 8), ("vocab_size", 400)])
def test_an_hf_config_that_does_not_fit_its_weights_names_the_shapes_whole(run_dir, tmp_path, capsys, setting,
                                                                          value):
    """Bug caught: sample.py --hf of a folder whose config.json does not fit its weights (8 experts
    for 4, a vocab_size of 400) cut load_state_dict's text at 300 characters, mid-shape: "the shape
    in current model is torch.Size([); export ...". Now each misshapen weight is its name and both
    shapes, whole, and the rest are counted."""
    import json

    from scripts.export_hf import main as export_main
    hf = tmp_path / "hf"
    export_main([str(run_dir), str(hf)])
    capsys.readouterr()
    cfg = json.loads((hf / "config.json").read_text())
    was, dim = cfg[setting], cfg["hidden_size"]
    (hf / "config.json").write_text(json.dumps({**cfg, setting: value}))
    with pytest.raises(SystemExit) as e:
        sample.main(["--hf", str(hf), "--max_new_tokens", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "torch.Size" not in err
    first = (f"layers.0.feed_forward.router.weight is [{was}, {dim}] in the file, [{value}, {dim}] by the "
             "settings; " if setting == "num_local_experts" else
             f"embed_tokens.weight is [{was}, {dim}] in the file, [{value}, {dim}] by the settings; ")
    assert f"its weights do not fit its settings ({first}" in err
    assert err.endswith(("more problems); export the folder again with scripts/export_hf.py\n",
                         "by the settings); export the folder again with scripts/export_hf.py\n"))


def test_many_missing_weights_are_named_whole_and_counted():
    """Bug caught (with the above): a long list of missing keys was cut mid-name at 300 characters;
    now the first few whole names, and how many more."""
    import checkpoint
    keys = [f"layers.{i}.feed_forward.experts.gate_up_proj" for i in range(30)]
    e = RuntimeError("Error(s) in loading state_dict for Llama4:\n\tMissing key(s) in state_dict: "
                     + ", ".join(f'"{k}"' for k in keys) + ". ")
    said = checkpoint.weight_problems(e)
    assert said.startswith(f'Missing key(s) in state_dict: "{keys[0]}", "{keys[1]}"') and len(said) < 300
    n = said.count('"') // 2
    assert said.endswith(f'"{keys[n - 1]}" and {30 - n} more')


def test_an_image_token_in_a_prompt_option_is_a_bad_option_and_in_a_prompt_file_a_bad_file(run_dir, tmp_path,
                                                                                          capsys):
    """Bug caught: --prompt 'a<|image|>b' exited 1, where every other bad option value exits 2; a
    --prompt_file line holding one is a bad file: exit 1, naming the file."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a<|image|>b\n")
    fix = ("holds an image token (<|image_start|>, <|image|>, <|patch|> or <|image_end|>); remove it "
           "(this model has no vision stub: it reads no image)\n")  # (a vision one's: --image puts one in)
    for argv, code, where in [(["--prompt", "a<|image|>b"], 2, "--prompt 'a<|image|>b'"),
                              (["--prompt_file", str(prompts)], 1, f"--prompt_file {prompts}: the prompt "
                                                                   "'a<|image|>b'")]:
        with pytest.raises(SystemExit) as e:
            sample.main(["--ckpt", str(run_dir), "--max_new_tokens", "2", *argv])
        assert (e.value.code, capsys.readouterr().err) == (code, f"sample.py: error: {where} {fix}")


# A Ctrl-C as torch's import reaches numpy's: "numpy", inside the import (torch's C code imports numpy and
# clears what that raised), or "callback", inside a weakref callback (as importlib's module locks have).
CTRL_C_IN_IMPORT = """
import os, runpy, signal, sys, time, weakref
how, script = sys.argv[1], sys.argv[2]

class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            if how in ("numpy", "sigterm"):
                os.kill(os.getpid(), signal.SIGTERM if how == "sigterm" else signal.SIGINT)
                time.sleep(0.5)
            else:
                class Thing:
                    pass
                thing = Thing()
                ref = weakref.ref(thing, lambda r: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5)))
                del thing
                assert ref() is None
        return None

sys.meta_path.insert(0, Finder())
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.parametrize("how", ["numpy", "callback", "sigterm"])
def test_a_ctrl_c_while_torch_imports_stops_sample(run_dir, how):
    """Bug caught: a Ctrl-C at the start of sample.py was sometimes ignored (about 1 in 10 between 0.1
    and 1.1 s): torch's import swallowed the KeyboardInterrupt (its C code imports numpy and clears the
    error; an importlib weakref callback drops it), the whole story was told, exit 0. Now the signal
    is held back during the import and acted on at its end: one line, exit 130, no story."""
    import signal
    import subprocess
    import sys
    from pathlib import Path
    script = Path(sample.__file__).parent / "sample.py"
    done = subprocess.run([sys.executable, "-c", CTRL_C_IN_IMPORT, how, str(script), "--ckpt", str(run_dir),
                           "--prompt", "once", "--max_new_tokens", "5"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode in (130, -signal.SIGINT), (done.returncode, done.stdout, done.stderr)
    assert done.stderr.strip() == "sample.py: interrupted" and done.stdout == ""


# SIGTERM (as `timeout` sends) at the model's third forward: the prefill, then two decoding steps.
SIGTERM_IN_DECODING = """
import os, runpy, signal, sys, time
import model
calls, real = [], model.Llama4.forward

def forward(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
    return real(self, *args, **kwargs)

model.Llama4.forward = forward
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_sigterm_while_decoding_prints_what_was_generated(run_dir):
    """Bug caught: SIGTERM (`timeout 60 python sample.py --num_samples 4`) killed sample.py as it
    decoded: none of the batch's samples printed, no line, exit 143. Now as Ctrl-C: each sample as
    far as it got, marked, one line, exit 130."""
    import signal
    import subprocess
    import sys
    from pathlib import Path
    root = Path(sample.__file__).parent
    done = subprocess.run([sys.executable, "-c", SIGTERM_IN_DECODING, str(root / "sample.py"), "--ckpt",
                           str(run_dir), "--prompt", "once", "--num_samples", "2", "--max_new_tokens", "40"],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode in (130, -signal.SIGINT), (done.returncode, done.stdout, done.stderr)
    assert done.stderr.strip() == "sample.py: interrupted"
    assert "sample 1 of 2 (interrupted)" in done.stdout and "sample 2 of 2 (interrupted)" in done.stdout


def test_generate_refuses_a_negative_top_k_and_a_top_p_above_1_as_the_command_line_does():
    """Bug caught: generate() as a library took top_k=-5 and top_p=1.5 (or NaN) as "off" and sampled
    from every token without a word, where sample.py's --top_k -5 and --top_p 1.5 are refused. top_p
    <= 0 stays the top token alone (tested above)."""
    model = small_model()
    for how, message in [(dict(top_k=-5), "top_k: must be >= 0 (0 = off), got -5"),
                         (dict(top_p=1.5), "top_p: must be at most 1 (1 = off), got 1.5"),
                         (dict(top_p=float("nan")), "top_p: must be at most 1 (1 = off), got nan")]:
        with pytest.raises(ValueError, match=rf"^{re.escape(message)}$"):
            sample.generate(model, PROMPTS, 4, **how)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_row_that_ended_feeds_padding_and_its_logits_are_no_longer_checked(monkeypatch, use_cache):
    """A row that drew <|endoftext|> feeds padding from then on, and what its logits hold then (NaN
    here, as a row past its end may see on CUDA) stops nothing: its tokens are cut.
    Mutation caught: the `done` mask not set at <|endoftext|> (NaN logits after a row's end stopped
    the batch as "weights are broken"), and an ended row feeding the tokens it still draws instead of
    padding."""
    model = small_model()
    prompts = [PROMPTS[1], PROMPTS[2]]
    rows = sample.generate(model, prompts, 20, greedy=True, stop_at_eos=False, use_cache=use_cache)
    k = next(i for i in range(2, 12) if rows[0][i] not in rows[1] and rows[0][i] not in rows[0][:i])
    model.args.eos_id = rows[0][k]  # row 0 ends at its token k, row 1 runs on
    start, fed = sample.start, []

    def start_spied(*args, **kwargs):
        logits, step = start(*args, **kwargs)

        def spied(nxt):
            fed.append(nxt.tolist())
            out = step(nxt).clone()
            if len(fed) > k:  # the logits for row 0's tokens after its end
                out[0] = float("nan")
            return out
        return logits, spied
    monkeypatch.setattr(sample, "start", start_spied)
    assert sample.generate(model, prompts, 20, greedy=True, use_cache=use_cache) == [rows[0][:k], rows[1]]
    assert [f[0] for f in fed] == rows[0][:k + 1] + [model.args.pad_id] * (18 - k)
    assert [f[1] for f in fed] == rows[1][:19]
