"""The model on its own: causality, KV cache, sparse vs reference MoE, routing extras,
activation checkpointing, parameter counts and bad input."""

import math
import re
from dataclasses import replace

import pytest
import torch
from conftest import DEBUG, WeightCasts, debug_args

import config
import model as model_module
from config import ModelArgs
from model import KVCache, Llama4, MoE, count_parameters, flops_per_token, group_sizes, router_stats

V = DEBUG.vocab_size  # the debug preset: 4 layers (NoPE on layer 3), 4 experts, chunks of 8, context 64


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return Llama4(debug_args(**overrides)).eval()


def set_impl(model, impl):
    for m in model.modules():
        if isinstance(m, MoE):
            m.impl = impl


# --- causality ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, dict(moe_every=2), dict(qk_norm=False, top_k=2),
                                       dict(attn_chunk_size=64)])
@pytest.mark.parametrize("T", [44, 48])  # 48 = 6 whole chunks (folded path), 44 = 5 and a tail
def test_future_tokens_never_change_past_logits(overrides, T):
    model = build(**overrides)
    x = torch.randint(0, V, (2, T))
    with torch.no_grad():
        ref = model(x).logits
        for t in [0, 7, 8, 21, T - 2]:
            y = x.clone()
            y[:, t + 1:] = torch.randint(0, V, (2, T - t - 1))
            out = model(y).logits
            assert torch.allclose(out[:, :t + 1], ref[:, :t + 1], atol=1e-6), t
            assert not torch.allclose(out[:, t + 1:], ref[:, t + 1:])


@pytest.mark.parametrize("overrides", [{}, dict(attn_chunk_size=64)])
def test_future_tokens_never_change_past_logits_on_the_masked_path(overrides):
    """The path sample.py takes (explicit positions: a left-padded batch, -1 for padding) builds its
    own mask (attention_mask) rather than SDPA's is_causal: a future token changes no earlier logit
    there either. Bug caught (a mutation): attention_mask without its causal condition passed the
    causality test above."""
    model = build(**overrides)
    T, pad = 44, 5
    x = torch.randint(0, V, (2, T))
    positions = torch.arange(T).repeat(2, 1)
    positions[1] = torch.arange(T) - pad
    positions[1, :pad] = -1  # row 1: 5 padding columns, then its tokens from position 0
    with torch.no_grad():
        ref = model(x, positions=positions).logits
        for t in [pad, pad + 7, 21, T - 2]:
            y = x.clone()
            y[:, t + 1:] = torch.randint(0, V, (2, T - t - 1))
            out = model(y, positions=positions).logits
            assert torch.allclose(out[0, :t + 1], ref[0, :t + 1], atol=1e-6), t
            assert torch.allclose(out[1, pad:t + 1], ref[1, pad:t + 1], atol=1e-6), t
            assert not torch.allclose(out[:, t + 1:], ref[:, t + 1:])


def test_causal_in_training_mode_with_noise_off():
    model = build(router_noise=False).train()
    x = torch.randint(0, V, (1, 48))
    y = x.clone()
    y[:, 30:] = 0
    assert torch.allclose(model(x).logits[:, :30], model(y).logits[:, :30], atol=1e-6)


@pytest.mark.parametrize("weight", [True, False])
def test_rms_norm_is_hfs_formula(weight):
    """RMSNorm (F.rms_norm: on CUDA one fused kernel each way, which this CPU cannot run; here the
    composite ops) is HF's x * rsqrt(mean(x^2) + eps) in fp32, then the weight: values and grads."""
    from model import RMSNorm
    norm = RMSNorm(64, 1e-5, weight=weight)
    if weight:
        torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 64, requires_grad=True)
    hf = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    hf = hf * norm.weight if weight else hf
    ours = norm(x)
    g = torch.randn_like(x)
    assert torch.equal(ours, hf)  # fp32 on the CPU: the same ops, bit for bit
    inputs = (x, norm.weight) if weight else (x,)  # the weight inside F.rms_norm: the same gradients
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(hf, inputs, g), strict=True):
        assert torch.equal(a, b)
    xb = (x.detach() * 3).bfloat16()  # bf16 (weights cast for decoding): normed in fp32, rounded once
    hf_bf16 = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    assert torch.equal(norm.bfloat16()(xb), hf_bf16 * norm.weight if weight else hf_bf16)


def test_each_layer_type_is_present():
    a = debug_args(moe_every=2)
    assert [a.uses_rope(i) for i in range(4)] == [True, True, True, False]  # NoPE is layer 3
    assert [a.is_moe_layer(i) for i in range(4)] == [False, True, False, True]


def test_attention_is_chunked_on_rope_layers_only():
    """A token in chunk 2 cannot see chunk 0 through a RoPE layer: with a single RoPE layer the
    logits at position 20 ignore tokens 0..7; with a single NoPE layer they do not."""
    rope_only = build(n_layers=1, nope_every=2)
    nope_only = build(n_layers=1, nope_every=1)
    x = torch.randint(0, V, (1, 24))
    y = x.clone()
    y[:, :8] = (y[:, :8] + 1) % V
    with torch.no_grad():
        assert torch.allclose(rope_only(x).logits[:, 16:], rope_only(y).logits[:, 16:], atol=1e-6)
        # (a real difference, not rounding: a NoPE layer chunked by mistake differs by about 1e-6)
        assert (nope_only(x).logits[:, 16:] - nope_only(y).logits[:, 16:]).abs().max() > 0.1


# --- KV cache -------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [[20, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [5, 3, 8, 1, 17, 2],
                                   [1] * 40])
def test_cache_steps_equal_full_forward(steps):
    """Steps of any sizes, across chunk boundaries, equal one full forward; the static cache is
    written in place and never grows or moves (what a CUDA graph replaying the step relies on)."""
    model = build()
    x = torch.randint(0, V, (2, sum(steps)))
    with torch.no_grad():
        full = model(x).logits
        cache, outs, start = KVCache(model.args, batch_size=2, length=sum(steps)), [], 0
        buffers = [(t.data_ptr(), t.shape) for t in [*cache.k, *cache.v, cache.next_pos]]
        for n in steps:
            outs.append(model(x[:, start:start + n], cache=cache).logits)
            start += n
            assert [(t.data_ptr(), t.shape) for t in [*cache.k, *cache.v, cache.next_pos]] == buffers
            assert cache.next_pos.tolist() == [start, start]
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5
    assert buffers[0][1] == (2, model.args.n_kv_heads, sum(steps) + 1, model.args.head_dim)


def test_left_padded_batch_equals_rows_alone():
    model = build()
    a, b = torch.randint(2, V, (1, 13)), torch.randint(2, V, (1, 6))
    pad = model.args.pad_id
    tokens = torch.cat([a, torch.cat([torch.full((1, 7), pad), b], 1)])
    positions = torch.stack([torch.arange(13), torch.arange(-7, 6).clamp(min=-1)])
    with torch.no_grad():
        cache = KVCache(model.args, batch_size=2, length=14)
        batched = model(tokens, positions=positions, cache=cache).logits
        assert not cache.k[0][1, :, 6:-1].any()  # row 1's padding went to the scratch slot
        step = model(torch.tensor([[5], [9]]), cache=cache).logits  # positions 13 and 6
        alone_a = model(torch.cat([a, torch.tensor([[5]])], 1)).logits
        alone_b = model(torch.cat([b, torch.tensor([[9]])], 1)).logits
    assert (batched[0] - alone_a[0, :13]).abs().max() < 1e-5
    assert (batched[1, 7:] - alone_b[0, :6]).abs().max() < 1e-5
    assert (step[0, 0] - alone_a[0, 13]).abs().max() < 1e-5
    assert (step[1, 0] - alone_b[0, 6]).abs().max() < 1e-5
    assert torch.isfinite(batched).all()


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fused_projections_equal_hfs_separate_ones(autocast, mode, monkeypatch):
    """Without a KV cache (training and evaluation), q, k and v are one matmul over their weights
    side by side, and RoPE and the QK norm run once over q and k; decoding (a cache) keeps HF's
    separate projections, which copy no weights per call. Same loss and, up to rounding, the same
    gradients (the input's gradient is one sum inside the matmul, not three added after: in bf16 a
    few units in the last place). Evaluation took HF's three projections until 2026-12-04 (night):
    a seventh more of its eager ops."""
    from model import Attention
    model = getattr(build(router_noise=False), mode)()  # (eval() with gradients on: differentiated)
    args = model.args
    x = torch.randint(0, V, (2, 48))
    linear, rows = torch.nn.functional.linear, []  # the output rows of each linear's weight
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda x, w, *a: rows.append(w.shape[0]) or linear(x, w, *a))
    runs, fused, project = {}, (args.n_heads + 2 * args.n_kv_heads) * args.head_dim, Attention._project
    for how in ["fused", "separate"]:
        if how == "separate":  # decoding's projections, forced without a cache
            monkeypatch.setattr(Attention, "_project",
                                lambda self, x, rope, fused=True: project(self, x, rope, False))
        model.zero_grad()
        rows.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x, targets=x)
        out.lm_loss.backward()
        runs[how] = out.lm_loss.detach(), {n: p.grad for n, p in model.named_parameters()
                                            if p.grad is not None}
        assert rows.count(fused) == (args.n_layers if how == "fused" else 0)  # one matmul per layer
    (lt, gt), (le, ge) = runs["fused"], runs["separate"]
    assert torch.allclose(lt, le, rtol=1e-6, atol=0)  # (equal on this CPU)
    assert gt.keys() == ge.keys() and any("k_proj" in n for n in gt)
    for name, g in ge.items():  # relative to each gradient's largest entry
        assert (gt[name] - g).abs().max() <= (3e-2 if autocast else 1e-5) * g.abs().max(), name
    monkeypatch.setattr(Attention, "_project", project)
    rows.clear()
    with torch.no_grad():
        model.eval()(x[:, :4], cache=KVCache(args, batch_size=2, length=8))  # decoding: HF's three
    assert rows and rows.count(fused) == 0


# --- MoE: sparse dispatch vs the reference loop ---------------------------------------------

@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_sparse_dispatch_equals_reference_values_and_gradients(top_k):
    model = build(top_k=top_k, router_noise=False).train()
    x = torch.randint(0, V, (3, 30))
    grads = {}
    for impl in ["sparse", "reference"]:
        set_impl(model, impl)
        model.zero_grad()
        out = model(x, targets=x)
        out.loss.backward()
        grads[impl] = (out.loss.detach(), out.expert_counts,
                       {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (la, ca, ga), (lb, cb, gb) = grads["sparse"], grads["reference"]
    assert torch.allclose(la, lb, atol=1e-5) and torch.equal(ca, cb)
    assert ga.keys() == gb.keys() and any(".experts." in n for n in ga)
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5), name


@pytest.mark.parametrize("top_k", [1, 2])
def test_the_sparse_dispatch_gathers_both_ways_and_scatters_no_rows(top_k):
    """The rows go to their experts and back by gathers (index_select), forward and backward: no
    scatter-add of activations or gradients (x[order]'s autograd backward is an index_put with
    accumulate, which sorts its indices on a GPU; index_add and its compiled form are atomic adds).
    (The permutation's inverse is an integer scatter; topk's backward scatters the router's (N, E)
    logit gradients.) The sort by expert sorts byte keys: a CUDA radix sort takes
    one pass per byte (eight for topk's int64 indices).
    Nor does it fill any rows with zeros: for k = 1 the combine takes the gathered rows as they
    are, where a select of slot 0 had a backward that filled an (N, 1, dim) tensor with zeros and
    copied the gradient into it (two kernels a layer, each over the layer's activations).
    Bug caught: the dispatch of 2026-12-04 scattered with index_add, took x[order]'s backward and
    sorted int64 keys; the select's zeros (2026-12-04, evening)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    scatters = ("index_put", "index_add", "scatter", "scatter_add", "_index_put_impl")

    class Scatters(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen, self.sorted, self.zeroed = [], [], []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__.rstrip("_")
            if name == "sort":
                self.sorted.append(args[0].dtype)
            if name in scatters:
                self.seen.append((name, args[0].dtype, args[0].shape[-1]))
            out = func(*args, **(kwargs or {}))
            if (name in ("select_backward", "zeros", "new_zeros", "zero", "fill", "zeros_like")
                    and out.is_floating_point() and out.shape[-1] == moe.router.in_features):
                self.zeroed.append(name)  # rows of activations (or their gradients) set to 0
            return out

    moe = next(m for m in build(top_k=top_k).train().modules() if isinstance(m, MoE))
    h = torch.randn(2, 24, moe.router.in_features, requires_grad=True)
    with Scatters() as mode:
        out, _ = moe(h)
        out.square().sum().backward()
    rows = [s for s in mode.seen if s[1].is_floating_point and s[2] != moe.n_experts]
    assert any(s[1] == torch.int64 for s in mode.seen) and not rows, mode.seen
    assert mode.sorted == [torch.uint8] and not mode.zeroed, mode.zeroed
    assert h.grad is not None and moe.experts.gate_up_proj.grad is not None


@pytest.mark.parametrize("n_experts, low, high", [(300, 100, 299), (257, 0, 256)])
def test_more_than_256_experts_are_sorted_by_their_full_index(n_experts, low, high):
    """The sort by expert takes byte keys up to 256 experts (ids 0..255); past them, the int64
    indices (a byte key would wrap expert 299 onto 43, before 100, and 256, the first id past a byte,
    onto 0: the groups would be wrong). 257 holds the bound itself (a mutation probe's)."""
    moe = next(m for m in build(n_experts=n_experts, top_k=1).modules() if isinstance(m, MoE))
    h = torch.randn(64, moe.router.in_features)
    with torch.no_grad():  # feature 0 decides: expert `low` or `high`
        moe.router.weight.mul_(0.01)[:, 0] = 0
        moe.router.weight[low, 0], moe.router.weight[high, 0] = 10, -10
        h[:, 0] = torch.linspace(-1, 1, 64).sign() * 5
        sparse, routing = moe(h[None])
        moe.impl = "reference"
        reference, _ = moe(h[None])
    assert group_sizes(routing.ends)[low] == group_sizes(routing.ends)[high] == 32
    assert torch.allclose(sparse, reference, atol=1e-5)


@pytest.mark.parametrize("autocast, device", [(False, "cpu"), (True, "cpu"), (True, "cuda")])
def test_the_shared_expert_is_a_group_of_the_experts_grouped_gemms_but_in_decoding(monkeypatch, autocast,
                                                                                   device):
    """Under autocast on CUDA, in training and evaluation, the shared expert runs as one more group
    of the routed experts' two grouped GEMMs (its weights appended to the copy autocast makes), not as
    three matmuls of its own each way (9 fewer ops a layer in a training step); decoding (a KV
    cache's call), which would copy every expert's weights at each token to append them, fp32, whose
    expert weights are read in place, and the CPU run it on its own. Both give the same output and
    the same gradient to every weight and to the input. (CUDA's path on the CPU: its device in
    model.SHARED_IN_GROUPS_DEVICES.)
    Bug caught: the shared expert's own matmuls in a bf16 training step (2026-12-04: 9 ops a layer)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import model as model_module
    if device == "cuda":
        monkeypatch.setattr(model_module, "SHARED_IN_GROUPS_DEVICES", ("cpu",))

    class Matmuls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.mm = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.mm += func.overloadpacket.__name__ in ("mm", "addmm", "bmm")
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    moe = MoE(debug_args(top_k=2, router_noise=False)).train()
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.1)
    h = torch.randn(2, 12, 64)
    results = {}
    for decoding in (False, True):
        x = h.clone().requires_grad_(True)
        moe.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), Matmuls() as mode:
            out, _ = moe(x, decoding=decoding)
            out.float().square().sum().backward()
        results[decoding] = (out.float(), x.grad, {n: p.grad.clone() for n, p in moe.named_parameters()},
                             mode.mm)
    (a, xa, ga, mm_fused), (b, xb, gb, mm_own) = results[False], results[True]
    # the router's matmuls (forward, and two for its gradients), and the shared expert's 3 x 3 on its own
    assert (mm_fused, mm_own) == ((3, 12) if autocast and device == "cuda" else (12, 12))
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(xa, xb, **tol)
    assert ga.keys() == gb.keys() and any(n.startswith("shared_expert.") for n in ga)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], **tol, msg=name)


@pytest.mark.parametrize("impl", ["sparse", "reference"])
def test_moe_runs_under_bf16_autocast(impl):
    """bf16 autocast (the default on CUDA) mixes bf16 expert outputs with fp32 activations; the
    router stays in fp32 (its logits, hence the routing and the scores)."""
    model = build(top_k=2).train()
    set_impl(model, impl)
    x = torch.randint(0, V, (2, 24))
    routing = []
    for m in model.modules():
        if isinstance(m, MoE):
            m.register_forward_hook(lambda m, i, o: routing.append(o[1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, targets=x)
    out.loss.backward()
    assert routing and all(r.logits.dtype == torch.float32 for r in routing)
    assert out.logits is None and torch.isfinite(out.loss)  # the fused loss: no logits kept
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()
               if p.requires_grad and p.grad is not None)


def test_router_scores_keep_their_gradient_under_bf16():
    """The expert score sigmoid(top logit) is taken in fp32 and cast, as HF does. A bf16 sigmoid
    gives the same values, but it rounds to 1.0 above a logit of about 5.5, and its backward
    (y(1 - y) from the rounded y) then gives the router no gradient through the score. Under
    autocast the router's logits are fp32 anyway; with bf16 weights (as sample.py casts them on
    CUDA) they are bf16, the case held here."""
    torch.manual_seed(0)
    moe = MoE(debug_args(router_noise=False)).train()
    for w in moe.parameters():  # the experts are allocated empty; Llama4 initialises them
        torch.nn.init.normal_(w, std=0.02)
    moe.bfloat16()  # bf16 weights, no autocast: the router's logits are bf16 (under autocast, fp32)
    logits = torch.full((6, 4), -2.0)
    logits[:, 0] = torch.linspace(5.5, 8.0, 6)  # confident routing to expert 0
    logits = logits.bfloat16().requires_grad_(True)
    moe.router.forward = lambda x: logits
    out, _ = moe(torch.randn(1, 6, 64).bfloat16())
    out.float().sum().backward()
    expected = torch.sigmoid(logits[:, 0].detach().double())
    slope = expected * (1 - expected)  # d score / d logit, 4e-3 .. 3e-4
    assert (logits.grad[:, 0].abs() > 0).all() and slope.min() > 1e-4


def test_loop_fallback_equals_grouped_mm(monkeypatch):
    """The loop over experts (what trains where grouped_mm is missing: fp32 on CUDA, GPUs other
    than sm90 and sm100) gives grouped_mm's values and, in training, its loss and every gradient."""
    import model as model_module
    m = build(top_k=2, router_noise=False)
    x = torch.randint(0, V, (2, 16))
    runs = []
    for supported in [True, False]:
        if not supported:
            monkeypatch.setattr(model_module, "grouped_mm_supported", lambda t, widths=(): False)
        with torch.no_grad():
            logits = m.eval()(x).logits
        m.train().zero_grad()
        loss = m(x, targets=x).loss
        loss.backward()
        runs.append((logits, loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()
                                             if p.grad is not None}))
    (fast, loss_fast, grads_fast), (slow, loss_slow, grads_slow) = runs
    assert torch.allclose(fast, slow, atol=1e-5) and torch.allclose(loss_fast, loss_slow, atol=1e-6)
    assert grads_fast.keys() == grads_slow.keys() and any(".experts." in n for n in grads_fast)
    for name, g in grads_fast.items():
        assert torch.allclose(g, grads_slow[name], atol=1e-6), name


@pytest.mark.parametrize("capability, fast", [((8, 0), False), ((9, 0), True), ((10, 0), True),
                                              ((12, 0), False)])
def test_grouped_mm_on_cuda_only_where_it_has_kernels(monkeypatch, capability, fast):
    """On CUDA, grouped_mm's own kernels are sm90's and sm100's; elsewhere (an A100, an RTX 50xx)
    torch's fallback reads the offsets on the host, so the MoE takes its own sync-free paths."""
    from types import SimpleNamespace

    import model as model_module
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    x = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16, element_size=lambda: 2)
    assert model_module.grouped_mm_supported(x, (512, 576)) is fast
    assert not model_module.grouped_mm_supported(SimpleNamespace(**{**vars(x), "dtype": torch.float32}))


@pytest.mark.parametrize("capability, zeroed", [((9, 0), True), ((10, 0), False), ((10, 3), False)])
def test_empty_groups_are_zeroed_where_grouped_mm_leaves_them(monkeypatch, capability, zeroed):
    """On Blackwell (sm100, sm103) torch's grouped_mm leaves the weight gradient of an expert no token
    went to unwritten (pytorch/pytorch#172439): the MoE zeroes it there (ZeroEmptyGroups); an H100's
    kernel writes zeros itself, and the CPU's."""
    from types import SimpleNamespace

    import model as model_module
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert model_module.empty_groups_unzeroed(SimpleNamespace(device=torch.device("cuda", 0))) is not zeroed
    assert not model_module.empty_groups_unzeroed(torch.ones(1))


@pytest.mark.parametrize("blackwell", [True, False])
def test_an_idle_experts_gradient_is_zero_where_grouped_mm_leaves_garbage(monkeypatch, blackwell):
    """With a grouped_mm that leaves an empty group's weight gradient as NaN (what sm100's may
    leave), the experts no row went to still get a zero gradient where empty_groups_unzeroed says
    so, and the others the gradient of the unpoisoned kernel; without it, the NaN reaches them
    (what the guard is for)."""
    from types import SimpleNamespace

    import model as model_module
    torch.manual_seed(0)
    experts = model_module.Experts(4, 16, 32)
    for p in experts.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ends = torch.tensor([3, 3, 8, 8], dtype=torch.int32)  # groups of 3, 0, 5 and 0 rows: experts 1, 3 idle
    xs = torch.randn(8, 16)
    experts(xs, ends).sum().backward()
    clean = [p.grad.clone() for p in (experts.gate_up_proj, experts.down_proj)]
    experts.zero_grad()

    real = torch.nn.functional

    def poisoned(x, w, offs):
        empty = torch.diff(offs, prepend=offs.new_zeros(1)) == 0  # (E,) groups without rows
        w = w.view_as(w)
        w.register_hook(lambda g: g.masked_fill(empty.view(-1, 1, 1), float("nan")))  # (their gradient)
        return real.grouped_mm(x, w, offs=offs)
    functional = SimpleNamespace(**{n: getattr(real, n) for n in dir(real) if not n.startswith("__")})
    functional.grouped_mm = poisoned
    monkeypatch.setattr(model_module, "F", functional)  # (model.py's name for it only)
    monkeypatch.setattr(model_module, "empty_groups_unzeroed", lambda x: blackwell)
    experts(xs, ends).sum().backward()
    for p, want in zip((experts.gate_up_proj, experts.down_proj), clean, strict=True):
        if blackwell:
            assert torch.equal(p.grad, want) and p.grad[[1, 3]].abs().sum() == 0
        else:
            assert p.grad[[1, 3]].isnan().all() and torch.equal(p.grad[[0, 2]], want[[0, 2]])


def test_sampling_puts_nothing_on_the_expert_weights(monkeypatch):
    """Without gradients (sampling, evaluation) the idle experts need no zeroing: ZeroEmptyGroups is
    not applied on sm100 there (parameters keep requires_grad under no_grad)."""
    import model as model_module

    class Refused:
        @staticmethod
        def apply(*args):
            raise AssertionError("ZeroEmptyGroups applied")
    monkeypatch.setattr(model_module, "empty_groups_unzeroed", lambda x: True)
    monkeypatch.setattr(model_module, "ZeroEmptyGroups", Refused)
    experts = model_module.Experts(4, 16, 32)
    ends = torch.tensor([3, 3, 8, 8], dtype=torch.int32)  # groups of 3, 0, 5 and 0 rows
    with torch.no_grad():
        experts(torch.randn(8, 16), ends)
    with pytest.raises(AssertionError, match="ZeroEmptyGroups applied"):  # (with gradients: it is)
        experts(torch.randn(8, 16), ends)


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float32), ((8, 0), torch.bfloat16),
                                               ((9, 0), torch.bfloat16)])
def test_auto_dtype_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, dtype):
    """--dtype auto on a T4 or V100 (no bf16 tensor cores) is float32, not emulated bf16."""
    import runtime
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert runtime.compute_dtype("auto", torch.device("cuda", 0)) == dtype
    assert runtime.compute_dtype("auto", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("dtype, widths", [(torch.float32, dict(expert_dim=30)),
                                            (torch.bfloat16, dict(expert_dim=36)),
                                            (torch.bfloat16, dict(dim=60, n_heads=6, n_kv_heads=2))])
def test_widths_grouped_mm_cannot_take_run_the_loop(dtype, widths):
    """grouped_mm needs rows of whole multiples of 16 bytes: other widths (an expert_dim of 30 in
    fp32, 36 or a dim of 60 in bf16) run the loop over experts, in training and evaluation, rather
    than fail; the values are the reference path's. In bf16 the two round differently (a bf16
    sum of a token's expert outputs, or one at a time, in another order): each is held to the fp32
    reference's logits, the sparse path no further from them than the reference path."""
    m = build(top_k=2, router_noise=False, **widths).train()
    x = torch.randint(0, V, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        m(x, x).loss.backward()
        m.eval()
        with torch.no_grad():
            sparse = m(x).logits.float()
            set_impl(m, "reference")
            reference = m(x).logits.float()
    if dtype == torch.float32:
        assert torch.allclose(sparse, reference, atol=1e-4)
        return
    with torch.no_grad():
        exact = m(x).logits  # fp32, the reference path
    assert (sparse - exact).abs().max() <= (reference - exact).abs().max() + 0.05


def test_dropless_every_assignment_is_computed():
    model = build(top_k=2)
    out = model(torch.randint(0, V, (2, 25)))
    assert out.expert_counts.shape == (4, 4)
    assert (out.expert_counts.sum(-1) == 2 * 25 * 2).all()


# --- routing extras -------------------------------------------------------------------------

def test_noise_only_in_training_mode():
    model = build()
    x = torch.randint(0, V, (2, 32))
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)  # eval: deterministic
        model.train()
        for m in model.modules():  # make the noise large enough to flip routing
            if isinstance(m, MoE):
                torch.nn.init.constant_(m.router_noise.bias, 5.0)
        a, b = model(x).expert_counts, model(x).expert_counts
        assert not torch.equal(a, b)
        model.eval()
        assert torch.equal(model(x).expert_counts, model(x).expert_counts)


def test_aux_and_z_loss_equal_hand_computed_values():
    torch.manual_seed(0)
    moe = MoE(debug_args(router_noise=False))
    h = torch.randn(1, 6, 64)
    logits = torch.tensor([[2.0, 1, 0, 0], [0, 3, 0, 0], [0, 0, 1, 0],
                           [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 4]])
    moe.router.weight.data.zero_()
    with torch.no_grad():  # route through a known logit table
        moe.router.forward = lambda x: logits
        _, (clean, ends) = moe(h)
    assert torch.equal(clean, logits)
    # top-1 picks experts 0, 1, 2, 1, 0, 3 -> f = (2, 2, 1, 1) / 6
    counts = group_sizes(ends)
    assert counts.tolist() == [2, 2, 1, 1] and ends.tolist() == [2, 4, 5, 6]
    p = logits.softmax(-1).mean(0)
    expected = 4 * (2 / 6 * p[0] + 2 / 6 * p[1] + 1 / 6 * p[2] + 1 / 6 * p[3])
    # two layers at once: this one, and one with the experts' shares swapped around
    other = torch.roll(logits, 1, dims=-1)
    aux, z, entropy = router_stats(torch.stack([logits, other]), torch.stack([counts, counts.roll(1)]), 1)
    assert aux.shape == z.shape == entropy.shape == (2,)
    assert torch.allclose(aux[0], expected) and torch.allclose(aux[1], expected)
    assert torch.allclose(z[0], (torch.logsumexp(logits, -1) ** 2).mean())
    probs = logits.softmax(-1)
    assert torch.allclose(entropy, -(probs * probs.log()).sum(-1).mean())


def test_total_loss_adds_router_terms_with_their_coefficients():
    model = build(router_aux_loss_coef=0.01, router_z_loss_coef=0.001).train()
    x = torch.randint(0, V, (2, 16))
    seen = []  # each MoE layer's routing, to compute its terms one layer at a time
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o[1])) for m in model.modules()
             if isinstance(m, MoE)]
    out = model(x, targets=x)
    for h in hooks:
        h.remove()
    assert torch.allclose(out.loss, out.lm_loss + 0.01 * out.aux_loss + 0.001 * out.z_loss)
    per_layer = [router_stats(r.logits[None], group_sizes(r.ends)[None], 1) for r in seen]
    assert len(per_layer) == 4
    assert torch.equal(out.expert_counts, group_sizes(torch.stack([r.ends for r in seen])))
    assert torch.allclose(out.aux_loss, torch.cat([a for a, _, _ in per_layer]).mean())
    assert torch.allclose(out.z_loss, torch.cat([z for _, z, _ in per_layer]).mean())
    assert torch.allclose(out.router_entropy, torch.cat([e for _, _, e in per_layer]))
    evaluated = model.eval()(x, targets=x)  # eval: the LM loss alone, as transformers computes it
    assert evaluated.aux_loss is None and torch.equal(evaluated.loss, evaluated.lm_loss)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_loss_counts_real_tokens_only(impl):
    model = build()
    model.loss_impl = impl
    x = torch.randint(0, V, (2, 16))
    y = x.clone()
    y[1, 8:] = -1
    out = model(x, targets=y)
    assert (out.logits is None) == (impl == "fused")  # fused: no (B, T, V) logits
    logp = model(x).logits.log_softmax(-1)
    picked = torch.cat([logp[0].gather(-1, y[0, :, None]).flatten(),
                        logp[1, :8].gather(-1, y[1, :8, None]).flatten()])
    assert torch.allclose(out.lm_loss, -picked.mean())
    with torch.no_grad():  # evaluation: the same loss; the fused loss takes no gradients, keeps no logits
        evaluated = model.eval()(x, targets=y)
    assert (evaluated.logits is None) == (impl == "fused")
    assert torch.allclose(evaluated.lm_loss, out.lm_loss)


def test_the_reference_loss_is_a_class_level_switch(monkeypatch):
    """`Llama4.loss_impl = "reference"`, as the model's docstring has it, reaches every model, built
    before or after (it was an instance attribute: the class-level switch did nothing)."""
    before = build()
    monkeypatch.setattr(Llama4, "loss_impl", "reference")
    x = torch.randint(0, V, (1, 8))
    for model in (before, build()):
        assert model(x, targets=x).logits is not None  # lm_head + F.cross_entropy: logits returned


def test_fused_loss_keeps_the_gradient_of_confident_tokens_under_bf16():
    """Under bf16 autocast the loss's gradient (softmax - one-hot) is bf16, but its target column
    p_t - 1 must be rounded once, from fp32: rounding p_t first makes it 0 for every token predicted
    with p_t > 0.998 (a trained model's common case). Checked row by row against float64, on the
    same bf16 logits, from near-uniform to near-certain predictions."""
    from model import linear_cross_entropy
    g = torch.Generator().manual_seed(0)
    n, d, v = 96, 32, 256
    w = torch.randn(v, d, generator=g)
    t = torch.randint(0, v, (n,), generator=g)
    x = w[t] * torch.linspace(0.0, 0.6, n)[:, None] + 0.1 * torch.randn(n, d, generator=g)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear_cross_entropy(x, w, t).backward()
    xb, wb = x.detach().bfloat16(), w.bfloat16()
    p = (xb @ wb.t()).double().softmax(-1)  # the bf16 logits the model computed, then exact
    miss = 1 - p.gather(1, t[:, None]).squeeze(1)  # 1 - p_t
    confident = miss < 0.002
    resolved = miss > 1e-6  # beyond fp32's log-softmax (and F.cross_entropy's): 1 - p_t rounds to 0
    assert (confident & resolved).sum() >= 10 and (~confident).sum() >= 10  # both kinds of row
    expected = (p - torch.nn.functional.one_hot(t, v).double()) @ wb.double() / n  # (n, d)
    err = ((x.grad.double() - expected).norm(dim=1) / expected.norm(dim=1))[resolved]
    assert err.max() < 0.03, err


@pytest.mark.parametrize("chunk", [2 ** 25, 7 * V])  # one chunk; chunks of 7 rows, the last one short
@pytest.mark.parametrize("autocast", [False, True])
def test_fused_loss_equals_the_reference_in_value_and_gradients(monkeypatch, chunk, autocast):
    """linear_cross_entropy (chunks, gradients taken in the forward pass) against lm_head +
    F.cross_entropy on fp32 logits: the loss and every gradient, with ignored targets, in fp32 and
    under bf16 autocast (where both run the output layer in bf16)."""
    import model as model_module
    monkeypatch.setattr(model_module, "LOSS_CHUNK", chunk)
    model = build(router_noise=False).train()
    x = torch.randint(0, V, (3, 20))
    y = torch.randint(0, V, (3, 20))
    y[0, 5:9] = -1
    y[2, :] = -1
    runs = {}
    for impl in ["fused", "reference"]:
        model.loss_impl = impl
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x, targets=y)
        out.loss.backward()
        runs[impl] = (out.lm_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                              if p.grad is not None})
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            no_grad = model(x, targets=y).lm_loss  # evaluation: the loss without the gradient work
        assert torch.equal(no_grad, runs[impl][0]), impl
    (la, ga), (lb, gb) = runs["fused"], runs["reference"]
    tol = 3e-2 if autocast else 1e-5  # bf16: the 1/N scale rounds before or after the cast
    assert (la - lb).abs() <= tol * lb.abs() and ga.keys() == gb.keys() and "lm_head.weight" in ga
    for name in ga:  # relative to the largest gradient of each parameter
        assert (ga[name] - gb[name]).abs().max() <= tol * gb[name].abs().max(), name


def test_fused_loss_without_gradients_does_no_gradient_work(monkeypatch):
    """Evaluation's loss: one matmul per chunk (its logits), not three (logits, then the gradients
    of x and of the weight), though the inputs require gradients."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import model as model_module

    class Matmuls(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(model_module, "LOSS_CHUNK", 7 * V)  # chunks of 7 rows: 9 chunks of 60 rows
    x, w = torch.randn(60, 16, requires_grad=True), torch.randn(V, 16, requires_grad=True)
    t = torch.randint(0, V, (60,))
    counts = []
    for grad in [False, True]:
        with torch.set_grad_enabled(grad), Matmuls() as mm:
            model_module.linear_cross_entropy(x, w, t)
        counts.append(mm.n)
    assert counts == [9, 27]


def test_the_fused_loss_of_no_rows_is_0():
    """Bug caught: without gradients (evaluation), no rows at all was a ValueError (torch.cat of
    no chunks' losses), where "no target >= 0" is a loss of 0."""
    from model import linear_cross_entropy
    with torch.no_grad():
        loss = linear_cross_entropy(torch.randn(0, 16), torch.randn(V, 16), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0


def test_the_fused_loss_launches_few_ops_per_chunk(monkeypatch):
    """Eager mode on a GPU launches each op of the loss's loop once per chunk (32 chunks a
    scout-128m step at batch 128, where the loop was 704 of the step's 1,535 aten ops on the H200),
    so what does not need a chunk's logits is done once, over all rows. Bug caught (a CPU proxy
    for launches; views not counted, as in bench_model's ops): 22 ops per chunk with gradients
    and 10 without, then 15 and 5, now 13 and 4 (one arange for the whole chunks' rows, and x's
    ignored rows zeroed once for the weight gradient)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import model as model_module

    class Ops(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += not func.is_view
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(model_module, "LOSS_CHUNK", 7 * V)  # chunks of 7 rows
    per_chunk = {}
    for grad in [False, True]:
        counts = []
        for chunks in (1, 9):
            x = torch.randn(7 * chunks, 16, requires_grad=True)
            w = torch.randn(V, 16, requires_grad=True)
            t = torch.randint(0, V, (7 * chunks,))
            with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad), Ops() as ops:
                model_module.linear_cross_entropy(x, w, t)
            counts.append(ops.n)
        per_chunk[grad] = (counts[1] - counts[0]) / 8
    assert per_chunk[False] <= 4 and per_chunk[True] <= 13, per_chunk


def emulate_fp32_out_gemms(monkeypatch):
    """The eager CUDA path of the fused loss on the CPU: its device joins FP32_OUT_DEVICES and
    mm_fp32's direct GEMMs are computed as cuBLAS computes them (bf16 operands, fp32 sums), which
    the CPU's mm refuses (its out_dtype overload is CUDA's; the calls themselves are checked on
    the meta device below)."""
    import model as model_module
    plain = model_module.mm_fp32

    def mm_fp32(a, b, acc=None, direct=False):
        if not direct:
            return plain(a, b, acc)
        out = a.float() @ b.float()
        return out if acc is None else acc + out
    monkeypatch.setattr(model_module, "FP32_OUT_DEVICES", ("cpu",))
    monkeypatch.setattr(model_module, "mm_fp32", mm_fp32)


@pytest.mark.parametrize("direct", [False, True])
def test_the_fused_loss_casts_no_logits_where_gemms_write_fp32(monkeypatch, direct):
    """Where a GEMM can write fp32 from bf16 operands (torch.mm's out_dtype on CUDA, emulated here),
    a chunk's logits and its weight gradient come out of their matmuls in fp32 and the softmax is
    written in bf16 by exp itself. Bug caught: each chunk cast its (c, V) logits to fp32, its
    softmax back to bf16 and its (V, D) weight gradient to fp32, three passes more a chunk, the
    first and last by CUDA's unvectorised copy kernel (142 launches, 6.5 ms of an eager MoE
    step's 47.7 ms of kernels at batch 128 on the H200). The loss and gradients stay those of
    F.cross_entropy on the same logits (within the bf16 rounding the direct path skips)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import model as model_module
    if direct:
        emulate_fp32_out_gemms(monkeypatch)
    monkeypatch.setattr(model_module, "LOSS_CHUNK", 7 * V)  # chunks of 7 rows
    n, d = 63, 16  # 9 chunks; shapes (7, V) and (V, 16) are the logits' and the weight gradient's
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, requires_grad=True)
    w = torch.randn(V, d, generator=g, requires_grad=True)
    t = torch.randint(0, V, (n,), generator=g)
    t[4:9] = -1

    class Casts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket is torch.ops.aten._to_copy and tuple(out.shape) in ((7, V), (V, d)):
                self.n += 1
            return out
    with torch.autocast("cpu", dtype=torch.bfloat16), Casts() as casts:
        loss = model_module.linear_cross_entropy(x, w, t)
    loss.backward()
    assert casts.n == (0 if direct else 27) + 2  # + the weight to bf16 and its gradient back, once
    xr, wr = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    logits = xr.bfloat16().float() @ wr.bfloat16().float().t()  # the bf16 operands' exact products
    ref = torch.nn.functional.cross_entropy(logits, t, ignore_index=-1)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=0)
    for got, want in ((x.grad, xr.grad), (w.grad, wr.grad)):  # bf16 gradients of logits: 1e-2
        assert (got - want).abs().max() <= 2e-2 * want.abs().max()


def test_the_fused_loss_calls_torchs_fp32_out_gemms_as_they_are_declared(monkeypatch):
    """The eager CUDA path's calls, run on the meta device (where torch registers mm's out_dtype
    overload, as on CUDA; the CPU has none): a misspelt or mistyped call fails here, not first on a
    GPU. Forward and backward, fp32 loss, bf16 gradients of x and weight. Bug caught (under torch
    2.11, make test-gpu-versions): the weight gradient's sum by addmm's out_dtype, which 2.11's meta
    kernel (fake tensors' too: the memory model's) read as addmm's beta, a TypeError."""
    import model as model_module
    assert model_module.FP32_OUT_DEVICES == ("cuda",)  # (this torch has the overloads: the path is on)
    monkeypatch.setattr(model_module, "FP32_OUT_DEVICES", ("meta",))
    x = torch.empty(40, 16, device="meta", dtype=torch.bfloat16, requires_grad=True)
    w = torch.empty(V, 16, device="meta", dtype=torch.bfloat16, requires_grad=True)
    t = torch.zeros(40, dtype=torch.long, device="meta")
    assert model_module.fp32_out_gemm(x) and not model_module.fp32_out_gemm(x.float())
    total = model_module.LinearCrossEntropy.apply(x, w, t, 7, True)  # 6 chunks, the last short
    total.backward()
    assert total.dtype == torch.float32 and total.shape == ()
    assert x.grad.dtype == w.grad.dtype == torch.bfloat16 and w.grad.shape == (V, 16)


@pytest.mark.parametrize("overrides", [
    dict(n_experts=1),  # one routed expert (and the shared one)
    dict(moe_every=9, nope_every=9),  # above n_layers: dense, RoPE on every layer
    dict(nope_every=1, top_k=4),  # NoPE on every layer; every expert for every token
    dict(max_seq_len=21, attn_chunk_size=8),  # a context that ends in a partial chunk
    dict(max_seq_len=3, attn_chunk_size=1, attn_floor_scale=1),
    dict(dim=68, n_heads=2, n_kv_heads=1, expert_dim=98, mlp_dim=36),  # 392-byte expert rows: no grouped_mm
])
def test_odd_valid_shapes_train(overrides):
    """Settings config.py accepts but no preset has: a training step's loss and gradients are finite."""
    torch.manual_seed(0)
    model = Llama4(debug_args(**overrides)).train()
    T = model.args.max_seq_len
    out = model(torch.randint(0, V, (2, T)), torch.randint(0, V, (2, T)))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- activation checkpointing ---------------------------------------------------------------

@pytest.mark.parametrize("reentrant, autocast", [(True, False), (False, False), (True, True)])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(reentrant, autocast):
    """A checkpointed step, its layers recomputed by torch's reentrant checkpoint (eager) or the
    non-reentrant one (compiled, DDP), fp32 or under bf16 autocast: the loss, expert counts and
    gradients of the step that keeps its activations, the router's (through the aux loss, which
    reads the layers' logits out of the checkpoint) and the router noise's included."""
    model = build().train()
    model.reentrant_checkpoint = reentrant
    x = torch.randint(0, V, (2, 32))
    results = []
    for enabled in [False, True]:
        model.set_grad_checkpointing(enabled)
        model.zero_grad()
        torch.manual_seed(5)  # same router noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x, targets=x)
        out.loss.backward()
        results.append((out.loss.detach(), out.expert_counts,
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (la, ca, ga), (lb, cb, gb) = results
    assert torch.equal(ca, cb) and torch.allclose(la, lb, atol=1e-6)
    for a, b in zip(ga, gb, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("case", ["eager", "flag off (DDP)", "frozen embeddings", "first 2 layers"])
def test_an_eager_checkpointed_layer_is_recomputed_by_the_reentrant_checkpoint(monkeypatch, case):
    """Eager, each checkpointed layer goes through torch's reentrant checkpoint, which hooks no saved
    tensor (the non-reentrant one calls Python three times for each of the ~50 a MoE layer saves: at
    a host-bound shape a checkpointed step took 1.41-1.46x the time of one keeping its activations,
    against 1.13-1.21x reentrant). The non-reentrant one under DDP (reentrant_checkpoint off: DDP's
    unused-parameter search cannot see into the reentrant one; tests/test_runtime.py) and for a
    layer input without gradients (frozen embeddings), where the reentrant one would give the
    first layer's weights no gradient: they get the gradients of the step without checkpointing.
    With --grad_checkpoint_layers 2, the first two layers alone are recomputed, the same gradients.
    Bug caught: a frozen embedding's step whose first layer learnt nothing (grads None)."""
    real, calls = model_module.checkpoint, []
    monkeypatch.setattr(model_module, "checkpoint",
                        lambda *a, use_reentrant, **k: calls.append(use_reentrant) or real(
                            *a, use_reentrant=use_reentrant, **k))
    model = build(router_noise=False).train()
    model.reentrant_checkpoint = case != "flag off (DDP)"
    model.embed_tokens.weight.requires_grad_(case != "frozen embeddings")
    x = torch.randint(0, V, (2, 16))
    grads = []
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled, 2 if case == "first 2 layers" else 0)
        model.zero_grad(set_to_none=True)
        model(x, targets=x).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    n = model.args.n_layers  # (frozen embeddings: the first layer's input alone has no gradient)
    expected = {"eager": [True] * n, "flag off (DDP)": [False] * n, "first 2 layers": [True] * 2,
                "frozen embeddings": [False] + [True] * (n - 1)}
    assert n > 2 and calls == expected[case]
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert grads[1][name] is not None and torch.allclose(g, grads[1][name], atol=1e-6), name


def test_a_checkpointed_layer_is_recomputed_from_the_layouts_of_its_first_forward(monkeypatch):
    """The reentrant checkpoint runs a layer's first forward without gradients and recomputes it
    with them; attention must read the same q, k and v layouts both times (evaluation's strided
    views, training's contiguous copies: on a GPU another layout may take another kernel, whose
    rounding would give the recomputation, and the gradients, other values or routes than the
    forward's loss).
    Bug caught: the first forward read views where its recomputation read contiguous copies."""
    real, seen = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: seen.append((q.stride(), k.stride(), v.stride())) or
                        real(q, k, v, **kw))
    model = build(router_noise=False).train()
    model.set_grad_checkpointing(True)
    x = torch.randint(0, V, (2, 16))
    model(x, targets=x).loss.backward()
    n = len(seen) // 2  # the first forwards, then their recomputations (the layers in reverse)
    assert n and sorted(seen[:n]) == sorted(seen[n:])


def test_activation_checkpointing_keeps_a_cache():
    """A cached forward in training mode with checkpointing on writes and reads the cache, as
    without checkpointing (checkpointing is skipped for it: recomputing would write it twice)."""
    model = build(router_noise=False).train()
    model.set_grad_checkpointing(True)
    x = torch.randint(0, V, (1, 11))
    full = model(x).logits
    cache = KVCache(model.args, batch_size=1, length=11)
    model(x[:, :10], cache=cache)
    last = model(x[:, 10:], cache=cache).logits
    assert (last - full[:, 10:]).abs().max() < 1e-5


# --- parameter counts (meta device) ---------------------------------------------------------

def hf_count(args):
    pytest.importorskip("transformers")
    from transformers import Llama4Config, Llama4ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from checkpoint import hf_config
    hf_logging.set_verbosity_error()
    cfg = hf_config(args)
    cfg.pop("model_type"), cfg.pop("architectures")
    with torch.device("meta"):
        return sum(p.numel() for p in Llama4ForConditionalGeneration(Llama4Config(**cfg)).parameters())


@pytest.mark.parametrize("name", ["scout-17b-16e", "maverick-17b-128e"])
def test_released_shapes_count_like_transformers(name):
    args = config.preset(name, ModelArgs)
    with torch.device("meta"):
        counts = count_parameters(Llama4(args))
    assert counts["total"] == hf_count(args)
    if name == "scout-17b-16e":
        assert counts["total"] == 108_641_793_536
        assert counts["text"] == 107_769_861_120
        assert counts["vision"] == 850_960_896 + 20_971_520
        assert 17e9 < counts["active_per_token"] < 17.3e9


def test_count_params_script_explains_the_model_card(capsys):
    from scripts import count_params
    counts = count_params.main(["--preset", "scout-17b-16e"])
    out = capsys.readouterr().out
    assert "108,641,793,536" in out and "109,676,279,296" in out and "exactly one embedding matrix" in out
    assert counts["total"] + counts["embedding"] == count_params.SCOUT_CARD_TOTAL


def test_count_params_script_refuses_a_training_setting_in_one_line(capsys):
    """A train.py command line pasted in: --lr or --batch_size change no parameter count, and
    are named as training settings (the parser said "unknown option", did you mean --help or
    --patch_size); a model setting counts, an unknown option still gets its nearest."""
    from scripts import count_params
    for typed in (["--lr", "1e-3"], ["--batch_size=4"]):
        with pytest.raises(SystemExit) as e:
            count_params.main(["--preset", "debug", "--top_k", "2", *typed])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        flag = typed[0].split("=")[0]
        assert err.startswith(f"count_params.py: error: {flag} is a training setting (train.py's), which "
                              "changes no parameter count; drop it")
    assert count_params.main(["--preset", "debug", "--top_k", "2"])["active_per_token"] == 166_480
    with pytest.raises(SystemExit):
        count_params.main(["--preset", "debug", "--nope", "1"])
    assert "unknown option --nope (did you mean --nope_every?)" in capsys.readouterr().err


def test_count_params_script_refuses_the_vocabularies_train_py_refuses(capsys):
    """--vocab_size 100 was counted while train.py refuses it (a byte-level BPE needs 264): the
    two agree on the smallest vocabulary, one line and exit status 2."""
    from scripts import count_params
    with pytest.raises(SystemExit) as e:
        count_params.main(["--preset", "debug", "--vocab_size", "100"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("count_params.py: error: --vocab_size 100 is too small") and "264" in err
    assert count_params.main(["--preset", "debug", "--vocab_size", "264"])["total"] > 0


def test_default_preset_has_about_128m_parameters():
    with torch.device("meta"):
        counts = count_parameters(Llama4(ModelArgs()))
    assert 125e6 < counts["total"] < 131e6


def hand_flops(a, T):
    """Training FLOPs per token by hand from the shapes, layer by layer: 6 x the weights a token
    multiplies (norm weights multiply no matrix), 12 x heads x head_dim x the keys a query sees."""
    flops = 6 * a.dim * a.vocab_size  # lm_head (the embedding is a lookup)
    for i in range(a.n_layers):
        flops += 6 * (2 * a.dim * a.n_heads * a.head_dim + 2 * a.dim * a.n_kv_heads * a.head_dim)  # q o k v
        flops += 6 * (a.dim * a.n_experts + 3 * a.dim * a.expert_dim * (1 + a.top_k) if a.is_moe_layer(i)
                      else 3 * a.dim * a.mlp_dim)  # router, shared and top_k routed experts; or SwiGLU
        span = a.attn_chunk_size if a.uses_rope(i) else T
        flops += 12 * a.n_heads * a.head_dim * sum(t % span + 1 for t in range(T)) / T  # query t: its chunk's
    return flops


@pytest.mark.parametrize("overrides", [{}, dict(moe_every=2), dict(n_layers=7, moe_every=3, nope_every=2),
                                       dict(n_layers=3, moe_every=5, vision=True, router_noise=False),
                                       dict(n_layers=1), dict(n_layers=9, top_k=2, attn_chunk_size=64)])
@pytest.mark.parametrize("seq_len", [64, 20, 5])  # 20: two chunks of 8 and one of 4
def test_flops_per_token_is_the_hand_count(overrides, seq_len):
    """MFU's FLOPs: the RMSNorm weights were counted as matmul weights (0.5% too many on debug),
    and a window whose last chunk is short as if all its chunks were whole."""
    args = debug_args(**overrides)
    assert flops_per_token(args, seq_len) == pytest.approx(hand_flops(args, seq_len), rel=1e-12)


def counted_training_flops(args, batch: int, seq_len: int) -> dict:
    """torch's FlopCounterMode over one training forward and backward (the fused loss included), by
    aten op. Two kernels it has no formula for are counted here from their shapes: grouped_mm (the
    experts: 2 x rows x in x out, the rows being those routed, not every token) and the CPU's SDPA,
    counted as its causal mask lets it work (2 matmuls, forward; 4, backward; over the keys each query
    sees, T(T+1)/2 a chunk) where torch's own formulas count a full T x T."""
    from torch.utils.flop_counter import FlopCounterMode
    aten = torch.ops.aten

    def grouped(a, b, *rest, out_shape=None, **kw):  # (M, K) x (G, K, N), or (K, M) x (M, N) -> (G, K, N)
        return 2 * a[0] * a[1] * b[-1]

    def keys(q, k, causal):
        return q[2] * (q[2] + 1) // 2 if causal else q[2] * k[2]

    def sdpa(q, k, v, dropout_p=0.0, is_causal=False, *rest, out_shape=None, **kw):
        return 4 * q[0] * q[1] * q[3] * keys(q, k, is_causal)

    def sdpa_backward(grad, q, k, v, out, lse, dropout_p=0.0, is_causal=False, *rest, out_shape=None, **kw):
        return 8 * q[0] * q[1] * q[3] * keys(q, k, is_causal)
    formulas = {aten._grouped_mm: grouped, aten._scaled_dot_product_flash_attention_for_cpu: sdpa,
                aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward}
    torch.manual_seed(0)
    model = Llama4(args).train()
    x, y = (torch.randint(0, args.vocab_size, (batch, seq_len)) for _ in range(2))
    with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        model(x, targets=y).loss.backward()
    return {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("overrides, seq_len", [
    ({}, 64), ({}, 20), (dict(moe_every=2), 64), (dict(n_layers=2, moe_every=3), 64),
    (dict(top_k=2), 40), (dict(nope_every=1), 64), (dict(vocab_size=4096), 64)])
def test_flops_per_token_is_what_a_training_step_runs(overrides, seq_len):
    """MFU's FLOPs against torch's FlopCounterMode on a real training step (a count independent of
    the shapes flops_per_token reads): dense and MoE layers, top-1 and top-2 (the experts a token is
    not routed to cost nothing), chunked and NoPE attention, a window with a partial last chunk, a
    large vocabulary (lm_head is a matmul; the embedding, a lookup, is not). Without the router noise,
    which flops_per_token leaves out by its docstring; with it, the noise's matmul is the difference."""
    args = debug_args(router_noise=False, **overrides)
    counts = counted_training_flops(args, 2, seq_len)
    assert {"aten.mm", "aten._scaled_dot_product_flash_attention_for_cpu"} <= set(counts)  # (counted)
    assert ("aten._grouped_mm" in counts) == any(args.is_moe_layer(i) for i in range(args.n_layers))
    assert sum(counts.values()) == pytest.approx(2 * seq_len * flops_per_token(args, seq_len), rel=1e-12)
    noisy = replace(args, router_noise=True)
    moe_layers = sum(noisy.is_moe_layer(i) for i in range(noisy.n_layers))
    extra = 6 * noisy.dim * noisy.n_experts * moe_layers  # the noise projection, per token
    assert sum(counted_training_flops(noisy, 2, seq_len).values()) == pytest.approx(
        2 * seq_len * (flops_per_token(noisy, seq_len) + extra), rel=1e-12)


def test_flops_per_token_answers_a_billion_layers_without_building_them(monkeypatch):
    """It built every layer on the meta device: --n_layers 1000000000 (which count_params.py and
    memory_model.py take) never answered. Each kind of layer is now built once and multiplied."""
    tiny = config.preset("tiny", ModelArgs)  # NoPE every 4th layer: 4 layers repeat
    four, eight = (flops_per_token(replace(tiny, n_layers=n), 256) for n in (4, 8))
    built = []
    block_init = model_module.Block.__init__

    def counted_init(self, *a):
        built.append(1)
        assert len(built) <= 4, "flops_per_token builds every layer"
        block_init(self, *a)
    monkeypatch.setattr(model_module.Block, "__init__", counted_init)
    huge = flops_per_token(replace(tiny, n_layers=10**9), 256)
    assert huge == pytest.approx(four + (10**9 // 4 - 1) * (eight - four), rel=1e-12)


# --- bad input ------------------------------------------------------------------------------

def test_sequence_longer_than_max_seq_len_is_a_clear_error():
    model = build()
    with pytest.raises(ValueError, match="longer than max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    cache = KVCache(model.args, batch_size=1)
    model(torch.zeros(1, 60, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="longer than max_seq_len"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    cache = KVCache(model.args, batch_size=1, length=10)
    model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"longer than the KV cache \(10 positions\)"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("bad", [-1, V])
def test_out_of_range_token_ids_are_a_clear_error(bad):
    model = build()
    x = torch.zeros(1, 5, dtype=torch.long)
    x[0, 2] = bad
    with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
        model(x)


def test_wrong_number_of_image_tokens_is_a_clear_error():
    model = build(vision=True, vision_dim=32, vision_layers=1, vision_heads=2, vision_mlp_dim=128,
                  image_size=56, patch_size=14, projector_input_dim=32, projector_output_dim=32)
    a = model.args
    tokens = torch.tensor([[a.image_start_id] + [a.patch_id] * 3 + [a.image_end_id]])
    with pytest.raises(ValueError, match=re.escape("3 <|patch|> tokens for 1 image")):
        model(tokens, images=torch.randn(1, 3, 56, 56))
    tokens = torch.tensor([[a.image_start_id] + [a.patch_id] * 4 + [a.image_end_id]])
    assert model(tokens, images=torch.randn(1, 3, 56, 56)).logits.shape == (1, 6, a.vocab_size)


def test_images_for_a_text_only_model_are_a_clear_error():
    with pytest.raises(ValueError, match="without the vision stub"):
        build()(torch.zeros(1, 4, dtype=torch.long), images=torch.randn(1, 3, 56, 56))


@pytest.mark.parametrize("weights", [[1], {"lm_head.weight": 1}])
def test_a_checkpoint_whose_model_is_not_weights_is_a_clear_error(tmp_path, weights):
    """A hand-made .pt whose "model" is no state dict: a CheckpointError, not load_model's
    AttributeError ('list' object has no attribute 'items')."""
    import checkpoint
    torch.save({"model": weights, "model_args": config.to_dict(DEBUG)}, tmp_path / "x.pt")
    with pytest.raises(checkpoint.CheckpointError, match="its model is not a dict of tensors"):
        checkpoint.load_model(tmp_path / "x.pt")


@pytest.mark.parametrize("T", [13, 44, 64])
def test_training_forward_builds_no_t_by_t_mask(T, monkeypatch):
    """Positions 0..T-1 (training, evaluation): chunks are folded or attend on their own; no mask."""
    import model as model_module
    m = build()
    x = torch.randint(0, V, (2, T))
    with torch.no_grad():
        ref = m(x, positions=torch.arange(T).expand(2, T)).logits  # the masked path, as reference
        monkeypatch.setattr(model_module, "attention_mask", lambda *a, **k: pytest.fail("a mask was built"))
        assert (m(x).logits - ref).abs().max() < 1e-5


def test_few_row_logits_equal_lm_head_and_keep_gradients():
    """Decoding's logits on the CPU go through weight @ x.T (a faster kernel there for a few rows):
    the same values as lm_head up to rounding, for one row (sent as two), a few, and past FEW_ROWS;
    with gradients, lm_head itself (training never takes the other path)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 320, bias=False)
    for shape in [(1, 1, 64), (8, 1, 64), (2, 9, 64), (model_module.FEW_ROWS + 1, 64)]:
        x = torch.randn(shape)
        with torch.no_grad():
            got = model_module.few_row_logits(x, head)
        assert got.shape == (*shape[:-1], 320)
        torch.testing.assert_close(got, head(x), rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 1, 64, requires_grad=True)
    model_module.few_row_logits(x, head).sum().backward()
    torch.testing.assert_close(x.grad, head.weight.sum(0).expand(3, 1, 64))


# --- found by a mutation audit: each test catches a one-line bug the tests above let through --

def test_load_balancing_loss_is_one_when_balanced_under_top_2():
    """Catches the expert share f_e not divided by top_k (a balanced top-2 router scored 2, not 1)."""
    logits = torch.zeros(1, 8, 4)  # uniform router probabilities
    counts = torch.full((1, 4), 4)  # 8 tokens x 2 slots spread evenly over 4 experts
    aux, _, _ = router_stats(logits, counts, top_k=2)
    assert torch.allclose(aux, torch.ones(1))


def test_z_loss_trains_the_router_when_its_coefficient_is_set():
    """Catches the z-loss detached (z_grad off) although --router_z_loss_coef is non-zero."""
    model = build(router_z_loss_coef=0.1, router_noise=False).train()
    x = torch.randint(0, V, (2, 16))
    routers = [layer.feed_forward.router.weight for layer in model.layers]
    grads = torch.autograd.grad(model(x, targets=x).z_loss, routers)
    assert all(g.abs().sum() > 0 for g in grads)


def test_router_noise_starts_at_its_documented_std():
    """Catches the noise bias set to ROUTER_NOISE_INIT itself (std softplus(0.01) = 0.70, not 0.01)."""
    for m in build().modules():
        if isinstance(m, MoE):
            std = torch.nn.functional.softplus(m.router_noise(torch.randn(3, 64)))
            assert torch.allclose(std, torch.full_like(std, model_module.ROUTER_NOISE_INIT))


def test_activation_checkpointing_keeps_the_folded_chunk_path(monkeypatch):
    """Catches checkpointed layers called without default_pos: the same values, but a T x T mask built."""
    model = build(router_noise=False).train()
    model.set_grad_checkpointing(True)
    monkeypatch.setattr(model_module, "attention_mask", lambda *a, **k: pytest.fail("a mask was built"))
    x = torch.randint(0, V, (2, 24))
    model(x, targets=x).loss.backward()


def test_a_padding_query_sees_key_slot_0_alone():
    """Catches padding queries left with no visible key: an empty softmax row, NaN wherever the
    attention kernel does not zero it (torch 2.13's CPU kernel does, so no logits test here sees it)."""
    pos = torch.tensor([[-1, -1, 0, 1]])
    for chunk in (None, 8):
        allowed = model_module.attention_mask(pos, pos, chunk)[0, 0]
        assert allowed.tolist() == [[True, False, False, False]] * 2 + [[False, False, True, False],
                                                                        [False, False, True, True]]


# --- found by a second mutation audit (attention, cache, routing scores, init, images) -------

def test_init_draws_every_weight_at_its_documented_std():
    """Catches an init that skips a weight or draws it at another std (the embedding left at N(0, 1),
    the experts' down_proj scaled by depth, a bias not zeroed, the vision class and position
    embeddings at init_std rather than vision_dim^-0.5): N(0, init_std) for every linear, embedding,
    router and expert weight, biases 0, norm weights 1, as the spec and init_weights say."""
    model = build(vision=True, vision_dim=32, vision_layers=1, vision_heads=2, vision_mlp_dim=128,
                  image_size=56, patch_size=14, projector_input_dim=32, projector_output_dim=32)
    std, seen = model.args.init_std, set()
    for name, p in model.named_parameters():
        if ".router_noise." in name:  # the one deviation: zero weight, a bias giving noise std 0.01
            continue
        if name.endswith(".bias"):
            assert not p.any(), name
        elif "norm" in name:
            assert (p == 1).all(), name
        elif name.endswith(("class_embedding", "positional_embedding_vlm")):
            assert abs(p.std().item() / model.args.vision_dim ** -0.5 - 1) < 0.35, name
        else:
            assert p.numel() >= 256 and abs(p.float().std().item() / std - 1) < 0.15, (name, p.std())
            assert abs(p.float().mean().item()) < 0.2 * std, name
            seen.add(name.split(".")[-2] if name.endswith(".weight") else name.split(".")[-1])
    assert {"embed_tokens", "lm_head", "router", "gate_up_proj", "down_proj", "q_proj", "linear_1"} <= seen


def identity_experts(xs, ends, also=None):
    """Experts.forward made the identity on the expert inputs; the shared expert, where it is passed
    (`also`), runs as it is."""
    return xs if also is None else (xs, also[1](also[0]))


def test_router_scores_are_the_sigmoid_of_the_noisy_logits_in_training():
    """Catches the expert score taken from the clean logit while top-k picked on the noisy one (with
    noisy top-k gating, Shazeer et al., the gate is the noisy logit's sigmoid), and a noise scale
    other than softplus (exp gives the same 0.01 at init, not later). Experts made the
    identity and the shared expert zero, the output is h x sigmoid(noisy top logit)."""
    torch.manual_seed(0)
    moe = MoE(debug_args(router_noise=True)).train()
    for w in moe.experts.parameters():
        torch.nn.init.normal_(w, std=0.1)
    moe.experts.forward = identity_experts  # out = sum of the scaled inputs, + the shared expert's
    torch.nn.init.zeros_(moe.shared_expert.down_proj.weight)
    torch.nn.init.zeros_(moe.router_noise.weight)
    torch.nn.init.constant_(moe.router_noise.bias, 1.0)  # noise std softplus(1) = 1.31
    h = torch.randn(1, 24, 64)
    logits = h[0] @ moe.router.weight.detach().T  # (24, 4) the clean logits
    torch.manual_seed(7)
    with torch.no_grad():
        out, routing = moe(h)
    torch.manual_seed(7)
    noisy = logits + torch.randn_like(logits) * torch.nn.functional.softplus(torch.ones(4))
    top = noisy.max(-1).values
    assert not torch.equal(noisy.argmax(-1), logits.argmax(-1))  # the noise moved some tokens
    torch.testing.assert_close(routing.logits, logits)  # the losses see the clean logits
    torch.testing.assert_close(out[0], h[0] * torch.sigmoid(top)[:, None])


def test_the_router_and_its_noise_are_one_matmul_in_training_with_their_gradients():
    """In training the router's logits and its noise scale come from one matmul over their weights
    side by side (2E columns: a GEMM of E = 16 columns half fills its tiles on a GPU), with the
    gradients of two separate linears. Experts made the identity and the shared expert zero, as
    above, so the output is h x sigmoid(noisy top logit)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Widths(TorchDispatchMode):  # the output widths of the matmuls that run
        def __init__(self):
            super().__init__()
            self.widths = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
                self.widths.append(out.shape[-1])
            return out

    torch.manual_seed(0)
    moe = MoE(debug_args(router_noise=True, top_k=1)).train()
    moe.experts.forward = identity_experts
    torch.nn.init.zeros_(moe.shared_expert.down_proj.weight)
    torch.nn.init.normal_(moe.router_noise.weight, std=0.1)
    E, h = moe.n_experts, torch.randn(1, 24, 64)
    torch.manual_seed(7)
    with Widths() as mode:
        out, routing = moe(h)
    assert mode.widths.count(2 * E) == 1 and E not in mode.widths, mode.widths
    (out.square().sum() + routing.logits.square().sum()).backward()
    params = [moe.router.weight, moe.router_noise.weight, moe.router_noise.bias]
    w, wn, b = [p.detach().clone().requires_grad_() for p in params]
    torch.manual_seed(7)
    logits, noise = h[0] @ w.T, h[0] @ wn.T + b  # (24, E) each: two linears
    top = (logits + torch.randn_like(logits) * torch.nn.functional.softplus(noise)).max(-1).values
    (((h[0] * torch.sigmoid(top)[:, None]) ** 2).sum() + logits.square().sum()).backward()
    for p, ref in zip(params, [w, wn, b], strict=True):
        torch.testing.assert_close(p.grad, ref.grad)


def test_under_autocast_the_router_reads_the_fp32_normed_x_not_its_bf16_copy():
    """A MoE layer's router runs in fp32 under bf16 autocast on the normed x as the norm gave it,
    not on the bf16 copy the experts read, cast back (one rounding to bf16 less, and two casts a
    layer fewer: the cast back and its gradient's): its logits are those of the fp32 normed x
    (catches the router handed h, the bf16 copy)."""
    torch.manual_seed(0)
    model = Llama4(debug_args(router_noise=False)).train()
    block, seen = model.layers[0], {}
    block.post_attention_layernorm.register_forward_hook(lambda m, a, out: seen.update(normed=out))
    block.feed_forward.register_forward_hook(lambda m, a, out: seen.update(logits=out[1].logits))
    x = torch.randint(0, 320, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, targets=x)
    normed, logits, w = seen["normed"].detach(), seen["logits"].detach(), block.feed_forward.router.weight
    assert normed.dtype == logits.dtype == torch.float32
    torch.testing.assert_close(logits, normed.reshape(-1, 64) @ w.detach().T, rtol=0, atol=0)
    rounded = normed.bfloat16().float().reshape(-1, 64) @ w.detach().T  # the bf16 copy, cast back
    assert not torch.equal(logits, rounded)


def test_last_only_with_targets_is_a_clear_error():
    """Catches the last_only-with-targets check dropped (the loss would be taken on one position)."""
    model = build()
    x = torch.randint(0, V, (1, 8))
    with pytest.raises(ValueError, match="last_only computes one position's logits"):
        model(x, targets=x, last_only=True)
    assert model(x, last_only=True).logits.shape == (1, 1, V)


def test_image_mask_places_the_features_where_it_says():
    """Catches image_mask ignored (features placed at the <|patch|> tokens whatever the mask): the
    features replace the embeddings the mask marks, whichever tokens stand there."""
    model = build(vision=True, vision_dim=32, vision_layers=1, vision_heads=2, vision_mlp_dim=128,
                  image_size=56, patch_size=14, projector_input_dim=32, projector_output_dim=32)
    a = model.args
    images = torch.randn(1, 3, 56, 56)
    patched = torch.tensor([[11, a.image_start_id] + [a.patch_id] * 4 + [a.image_end_id, 12]])
    other = patched.clone()
    other[0, 2:6] = torch.tensor([20, 21, a.patch_id, 23])  # one <|patch|> token left, off the mask
    mask = torch.zeros_like(patched, dtype=torch.bool)
    mask[0, 2:6] = True
    with torch.no_grad():
        ref = model(patched, images=images).logits
        got = model(other, images=images, image_mask=mask).logits
    torch.testing.assert_close(got, ref)


def test_the_length_check_counts_the_most_padded_rows_tokens():
    """Catches the KV cache's length check counting the padding (cache.padding, set by whoever pads,
    ignored): a left-padded prompt filling the cache then refused a decoding step that fits."""
    model = build()
    a, b = torch.randint(2, V, (1, 10)), torch.randint(2, V, (1, 6))
    tokens = torch.cat([a, torch.cat([torch.full((1, 4), model.args.pad_id), b], 1)])
    positions = torch.stack([torch.arange(10), torch.arange(-4, 6).clamp(min=-1)])
    cache = KVCache(model.args, batch_size=2, length=10)
    cache.padding = 4  # row 1 has 6 tokens: 4 more fit
    with torch.no_grad():
        model(tokens, positions=positions, cache=cache)
        steps = [model(torch.tensor([[7], [t]]), cache=cache).logits[1, 0] for t in (8, 9, 10, 11)]
        alone = model(torch.cat([b, torch.tensor([[8, 9, 10, 11]])], 1)).logits[0, 6:]
        assert (torch.stack(steps) - alone).abs().max() < 1e-5
        with pytest.raises(ValueError, match=r"longer than the KV cache \(10 positions\)"):
            model(torch.tensor([[7], [12]]), cache=cache)


def test_token_ids_are_checked_only_where_reading_them_costs_nothing():
    """Catches the token-id check run in training (a host sync every step on a GPU) or in decoding
    steps after the first (one every token): a prompt is checked, those are not."""
    from conftest import host_syncs
    model = build(router_noise=False)
    x = torch.randint(0, V, (2, 16))
    assert host_syncs(lambda: model(x)) > 0  # evaluation without targets: the prompt is checked
    assert host_syncs(lambda: model(x, targets=x)) == 0
    assert host_syncs(lambda: model.train()(x, targets=x)) == 0
    assert host_syncs(lambda: model(x)) == 0  # training without targets
    model.eval()
    cache = KVCache(model.args, batch_size=2, length=20)
    with torch.no_grad():
        model(x, cache=cache)
        assert host_syncs(lambda: model(x[:, :1], cache=cache)) == 0


def test_a_row_past_the_end_of_the_cache_writes_the_scratch_slot():
    """Catches positions past the cache's end written at their own slot (past the last one: an index
    error): a less padded row runs past the end while the most padded one still fits; the short
    row's logits are its own alone, step by step."""
    model = build()
    a, b = torch.randint(2, V, (1, 4)), torch.randint(2, V, (1, 2))
    tokens = torch.cat([a, torch.cat([torch.full((1, 2), model.args.pad_id), b], 1)])
    positions = torch.tensor([[0, 1, 2, 3], [-1, -1, 0, 1]])
    cache = KVCache(model.args, batch_size=2, length=6)
    cache.padding = 2
    with torch.no_grad():
        model(tokens, positions=positions, cache=cache)
        steps = [model(torch.tensor([[7], [t]]), cache=cache).logits[1, 0] for t in (8, 9, 10, 11)]
        alone = model(torch.cat([b, torch.tensor([[8, 9, 10, 11]])], 1)).logits[0, 2:]
    assert cache.next_pos.tolist() == [8, 6]  # row 0 reached positions 6 and 7: past the end
    assert (torch.stack(steps) - alone).abs().max() < 1e-5


def test_a_model_built_from_a_state_recomputes_its_vision_rope():
    """Catches reset_buffers leaving the vision RoPE tables behind (on the meta device after
    build_from_state, in bf16 after a cast): the rebuilt model's image logits are the original's."""
    from model import build_from_state
    model = build(vision=True, vision_dim=32, vision_layers=1, vision_heads=2, vision_mlp_dim=128,
                  image_size=56, patch_size=14, projector_input_dim=32, projector_output_dim=32)
    a = model.args
    tokens = torch.tensor([[11, a.image_start_id] + [a.patch_id] * 4 + [a.image_end_id, 12]])
    images = torch.randn(1, 3, 56, 56)
    rebuilt = build_from_state(a, model.state_dict()).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(tokens, images=images).logits, model(tokens, images=images).logits)
    model.bfloat16().reset_buffers()
    assert model.inv_freq.dtype == model.vision_model.rope_cos.dtype == torch.float32


def spec_attention(attn, args, x, pos):
    """One attention layer from the spec's formulas, in float64, with no code of model.py's but its
    projections: interleaved-pair RoPE (a complex product) and the weightless RMS QK norm on RoPE
    layers, temperature tuning on NoPE layers, query head j reading kv head j // (Hq / Hkv), causal
    attention within aligned chunks on RoPE layers, full causal attention on NoPE ones."""
    B, T, _ = x.shape
    H, Hkv, D = args.n_heads, args.n_kv_heads, args.head_dim
    q = attn.q_proj(x).view(B, T, H, D).double()
    k = attn.k_proj(x).view(B, T, Hkv, D).double()
    v = attn.v_proj(x).view(B, T, Hkv, D).double()
    p = pos.double()
    if args.uses_rope(attn.layer):
        angle = p[..., None] * args.rope_theta ** (-torch.arange(0, D, 2).double() / D)  # (B, T, D/2)
        turn = torch.polar(torch.ones_like(angle), angle)[:, :, None]

        def rotate(t):
            pairs = torch.view_as_complex(t.reshape(B, T, -1, D // 2, 2))
            return torch.view_as_real(pairs * turn).flatten(-2)
        q, k = rotate(q), rotate(k)
        if args.qk_norm:
            q, k = (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + args.norm_eps) for t in (q, k))
    elif args.attn_temperature_tuning:
        scale = 1 + args.attn_scale * torch.log(1 + torch.floor((p + 1) / args.attn_floor_scale))
        q = q * scale[..., None, None]
    k, v = k.repeat_interleave(H // Hkv, dim=2), v.repeat_interleave(H // Hkv, dim=2)
    qp, kp = pos[:, :, None], pos[:, None, :]
    allowed = kp <= qp
    if args.uses_rope(attn.layer):
        allowed &= kp // args.attn_chunk_size == qp // args.attn_chunk_size
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
    y = torch.einsum("bhqk,bkhd->bqhd", scores.masked_fill(~allowed[:, None], -math.inf).softmax(-1), v)
    return attn.o_proj(y.reshape(B, T, H * D).float())


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("T, explicit", [(20, False), (24, False), (20, True)])
def test_attention_equals_the_specs_formulas_without_transformers(mode, T, explicit):
    """Catches, where transformers is not installed (the parity tests skip), a wrong RoPE (frequency
    or direction), the QK norm skipped, the temperature tuned wrongly or on RoPE layers, kv
    heads tiled rather than grouped, chunked attention on NoPE layers: every layer's attention (eval's
    separate projections and training's fused one; the folded, tail and masked paths) against the
    spec's formulas in float64."""
    model = build(router_noise=False, n_heads=4, n_kv_heads=2)
    getattr(model, mode)()
    seen = {}

    def keep(m, inputs, output):  # each layer's input and output (a hook returning nothing)
        seen[m.layer] = inputs[0], output
    hooks = [layer.self_attn.register_forward_hook(keep) for layer in model.layers]
    x = torch.randint(0, V, (2, T))
    with torch.no_grad():
        model(x, positions=torch.arange(T).expand(2, T) if explicit else None)
        for h in hooks:
            h.remove()
        assert sorted(seen) == [0, 1, 2, 3]  # layer 3 is NoPE
        for i, (inp, out) in seen.items():
            pos = torch.arange(T).expand(2, T)
            expected = spec_attention(model.layers[i].self_attn, model.args, inp, pos)
            assert (out - expected).abs().max() < 1e-5, i


def test_left_padded_batch_without_a_cache_equals_rows_alone():
    """Catches explicit positions taken for the default ones when there is no cache (sample.py's
    batched prompts without a cache): padding seen as tokens, RoPE and chunks counted by slot."""
    model = build()
    a, b = torch.randint(2, V, (1, 13)), torch.randint(2, V, (1, 6))
    tokens = torch.cat([a, torch.cat([torch.full((1, 7), model.args.pad_id), b], 1)])
    positions = torch.stack([torch.arange(13), torch.arange(-7, 6).clamp(min=-1)])
    with torch.no_grad():
        batched = model(tokens, positions=positions).logits
        assert (batched[0] - model(a).logits[0]).abs().max() < 1e-5
        assert (batched[1, 7:] - model(b).logits[0]).abs().max() < 1e-5


# --- found by a third mutation audit (vision, decoding, the fused loss) -----------------------

SMALL_VISION = dict(vision=True, vision_dim=32, vision_layers=1, vision_heads=2, vision_mlp_dim=128,
                    image_size=56, patch_size=14, projector_input_dim=32, projector_output_dim=32)


def test_too_many_patch_tokens_are_a_clear_error_too():
    """Catches the <|patch|> count checked one way only (too few): five <|patch|> tokens for one image
    of four features fell through to masked_scatter, whose RuntimeError names no fix."""
    model = build(**SMALL_VISION)
    a = model.args
    tokens = torch.tensor([[a.image_start_id] + [a.patch_id] * 5 + [a.image_end_id]])
    with pytest.raises(ValueError, match=re.escape("5 <|patch|> tokens for 1 image(s) of 4 features")):
        model(tokens, images=torch.randn(1, 3, 56, 56))


def test_a_batch_with_no_real_target_has_a_zero_loss_not_nan():
    """Catches the fused loss's count of real targets not clamped to 1: a batch whose targets are all
    ignored gave 0 / 0, a NaN loss and NaN gradients (the docstring promises 0)."""
    model = build(router_noise=False).train()
    x = torch.randint(0, V, (2, 8))
    out = model(x, targets=torch.full_like(x, -1))
    out.lm_loss.backward()
    assert out.lm_loss.item() == 0
    assert not model.lm_head.weight.grad.any()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_fused_loss_skips_every_negative_target_not_only_minus_1():
    """Catches the fused loss ignoring -1 alone (F.cross_entropy's ignore_index): a target of -100
    (HF's ignore index) was read as token 0 (clamped) and counted in the loss and its gradients."""
    from model import linear_cross_entropy
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(12, 16, generator=g), torch.randn(V, 16, generator=g)
    t = torch.randint(1, V, (12,), generator=g)
    t[3:7] = -1
    runs = []
    for ignore in (-1, -100):
        xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        loss = linear_cross_entropy(xi, wi, t.masked_fill(t < 0, ignore))
        loss.backward()
        runs.append((loss.detach(), xi.grad, wi.grad))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_fused_loss_trains_the_output_layer_alone_when_its_input_is_frozen():
    """Catches the fused loss taking gradients only when its input x requires them: with the body
    frozen (x without gradients, lm_head trained) backward found no saved gradient and failed."""
    from model import linear_cross_entropy
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 16, generator=g)
    t = torch.randint(0, V, (10,), generator=g)
    w = torch.randn(V, 16, generator=g, requires_grad=True)
    linear_cross_entropy(x, w, t).backward()
    ref = w.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(x @ ref.t(), t).backward()
    torch.testing.assert_close(w.grad, ref.grad)


def test_grouped_mm_takes_every_width_of_whole_16_byte_rows():
    """Catches the width check counting elements, not bytes (w % 16): an fp32 expert_dim of 100
    (400-byte rows) ran the loop over experts, which reads the group sizes on the host every call."""
    from model import grouped_mm_supported
    fp32, bf16 = torch.empty(2, 4), torch.empty(2, 4, dtype=torch.bfloat16)
    assert grouped_mm_supported(fp32, (68, 100)) and grouped_mm_supported(bf16, (64, 96))
    assert not grouped_mm_supported(fp32, (64, 30)) and not grouped_mm_supported(bf16, (64, 100))


def test_a_bf16_cache_masks_in_bf16_and_decodes_as_the_full_forward():
    """Catches the decoding mask built in fp32 whatever the cache's dtype: with bf16 weights and
    cache (sample.py on CUDA) attention then converted it in every layer at every step."""
    model = build().bfloat16().reset_buffers()
    x = torch.randint(0, V, (1, 12))
    cache = KVCache(model.args, batch_size=1, length=12, dtype=torch.bfloat16)
    with torch.no_grad():
        model(x[:, :9], cache=cache)
        step = cache.step(torch.tensor([[9]]))
        assert step.mask(8).dtype == step.mask(None).dtype == torch.bfloat16
        last = torch.cat([model(x[:, t:t + 1], cache=cache).logits for t in (9, 10, 11)], 1)
        full = model(x).logits[:, 9:]
    assert (last.float() - full.float()).abs().max() < 0.1


def test_one_row_of_decoding_logits_goes_as_two_columns_of_one_matmul():
    """Catches few_row_logits sending a single row alone (the matrix-vector kernel, as slow as
    F.linear's on the CPU: the point of the path is lost though the values stay the same), or
    taking its path past FEW_ROWS rows or with gradients (lm_head's own matmul there)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.mv, torch.ops.aten.addmm):
                self.calls.append((func.overloadpacket.__name__, *[tuple(a.shape) for a in args[:2]]))
            return func(*args, **(kwargs or {}))

    head = torch.nn.Linear(64, 320, bias=False)
    many = model_module.FEW_ROWS + 1
    for x, grad, want in [(torch.randn(1, 1, 64), False, ("mm", (320, 64), (64, 2))),
                          (torch.randn(5, 64), False, ("mm", (320, 64), (64, 5))),
                          (torch.randn(many, 64), False, ("mm", (many, 64), (64, 320))),
                          (torch.randn(1, 64, requires_grad=True), True, ("mm", (1, 64), (64, 320)))]:
        with torch.set_grad_enabled(grad), Shapes() as seen:
            model_module.few_row_logits(x, head)
        assert seen.calls == [want], (x.shape, grad)


def test_an_eager_cache_step_reads_only_the_slots_written(monkeypatch):
    """Catches an eager decoding step reading more of the cache than the columns fed so far (one
    slot longer, or all S + 1: masked, so the same values, but every layer's attention reads and
    masks slots no token has written, at every token); a compiled step reads all S + 1 (its
    shapes fixed), and the window stops at S + 1 when rows run past the end."""
    model = build()
    cache = KVCache(model.args, batch_size=2, length=12)
    got = []
    real = model_module.CacheStep.update
    monkeypatch.setattr(model_module.CacheStep, "update",
                        lambda self, i, k, v: got.append(self.n) or real(self, i, k, v))
    with torch.no_grad():
        model(torch.randint(0, V, (2, 5)), cache=cache)
        model(torch.randint(0, V, (2, 1)), cache=cache)
    assert set(got[:model.args.n_layers]) == {5} and set(got[model.args.n_layers:]) == {6}
    cache.seen = 40
    assert cache.step(torch.tensor([[39], [39]])).n == 13



def cast_once_step(monkeypatch, once: bool, shared_in_groups: bool = True, micro_batches: int = 2,
                   impl: str = "sparse", **overrides):
    """A bf16-autocast training step of a debug model on CUDA's path (model.CAST_ONCE_DEVICES, and
    SHARED_IN_GROUPS_DEVICES where shared_in_groups, on the CPU), its weights cast at once or per
    use, its MoE layers' `impl`: (losses, gradients, WeightCasts)."""
    monkeypatch.setattr(model_module, "CAST_ONCE_DEVICES", ("cpu",))
    monkeypatch.setattr(model_module, "SHARED_IN_GROUPS_DEVICES", ("cpu",) if shared_in_groups else ())
    torch.manual_seed(0)
    model = Llama4(debug_args(**overrides)).train()
    model.cast_weights_once = once
    set_impl(model, impl)
    x = torch.randint(0, model.args.vocab_size, (micro_batches, 2, 32),
                      generator=torch.Generator().manual_seed(1))
    losses = []
    with WeightCasts() as counted:
        for i in range(micro_batches):  # gradients accumulate over micro-batches, as train.accumulate's do
            torch.manual_seed(5 + i)  # (the router noise)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x[i], targets=x[i])
            assert model_module._cast_once == {}  # (the copies are the forward's alone)
            out.loss.backward()
            losses.append(float(out.loss.detach()))
    return losses, {n: p.grad for n, p in model.named_parameters()}, counted


@pytest.mark.parametrize("moe_every, shared_in_groups", [(1, True), (2, True), (1, False)])
def test_weights_cast_at_once_give_autocasts_losses_and_gradients_bit_for_bit(monkeypatch, moe_every,
                                                                              shared_in_groups):
    """An eager training forward under autocast on CUDA (its path here, on the CPU) casts the weights
    autocast casts all at once (model.CastOnce: foreach copies, not a cast per weight and a cast back
    per gradient): the same losses and every gradient bit for bit, over two micro-batches whose
    gradients accumulate, with dense layers too (moe_every 2), and with the shared expert in the
    experts' grouped GEMMs (its weights transposed into their stacks) or not.
    Bugs caught: a weight read as itself beside its copy (cast again, and a zero gradient beside the
    real one), a gradient cast back to another weight of its shape (the plan's order), the shared
    expert's transposed gradients."""
    per_use = cast_once_step(monkeypatch, False, shared_in_groups, moe_every=moe_every)
    once = cast_once_step(monkeypatch, True, shared_in_groups, moe_every=moe_every)
    assert per_use[0] == once[0]
    assert per_use[1].keys() == once[1].keys()
    for name, g in per_use[1].items():
        assert torch.equal(g, once[1][name]), name
    # two micro-batches, each way: one foreach copy, and one more of the shared expert's transposed weights
    assert (per_use[2].foreach, once[2].foreach) == (0, 2 * 2 * (2 if shared_in_groups else 1))
    # the casts a forward no longer makes: q, k and v (one cast), o; the experts' two stacks, or their
    # two weights and the shared expert's three; a dense layer's three; the output layer's
    layers, moe = debug_args().n_layers, debug_args().n_layers // moe_every
    weights = 2 * layers + (2 if shared_in_groups else 5) * moe + 3 * (layers - moe) + 1
    assert per_use[2].casts - once[2].casts == 2 * weights


def test_a_training_step_inspects_no_signature(monkeypatch):
    """The model's autograd Functions (the MoE's row permutations, ContiguousGrad, ZeroEmptyGroups,
    CastOnce, the fused loss) take their ctx in forward: torch's Function.apply binds the arguments
    of one written with a separate setup_context through inspect.signature at every call: host
    time (3 a MoE layer; an eager step on a GPU is bound by the host). A CPU
    proxy: an eager training step on CUDA's path, Blackwell's zeroing included, calls no
    inspect.signature.
    Bug caught: the three MoE Functions written with setup_context (18 calls a scout-128m forward)."""
    import inspect
    monkeypatch.setattr(model_module, "CAST_ONCE_DEVICES", ("cpu",))
    monkeypatch.setattr(model_module, "SHARED_IN_GROUPS_DEVICES", ("cpu",))
    monkeypatch.setattr(model_module, "empty_groups_unzeroed", lambda x: True)
    torch.manual_seed(0)
    model = Llama4(debug_args()).train()
    x = torch.randint(0, model.args.vocab_size, (2, 16))
    calls, signature = [], inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: calls.append(a) or signature(*a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, targets=x).loss.backward()
    assert calls == [] and model.layers[0].feed_forward.experts.gate_up_proj.grad is not None


def test_the_reference_moe_casts_its_experts_weights_each_alone(monkeypatch):
    """With MoE.impl = "reference" (the plain loop over experts, no grouped GEMMs) on CUDA's path, the
    weights cast at once are the experts' and the shared expert's own, each alone, which the loop
    reads (Experts.expert, the shared FeedForward): the losses and gradients of casting per use, bit
    for bit, and no copy of the shared expert's weights transposed into the experts' stacks.
    Bug caught: the stacks with_shared reads were made and never read (the loop's weights cast per
    use besides); a plan kept from the sparse path's step."""
    per_use = cast_once_step(monkeypatch, False, impl="reference")
    once = cast_once_step(monkeypatch, True, impl="reference")
    assert per_use[0] == once[0]
    for name, g in per_use[1].items():
        assert torch.equal(g, once[1][name]), name
    assert once[2].foreach == 2 * 2  # two micro-batches, one foreach copy each way: nothing transposed
    layers = debug_args().n_layers  # q, k and v (one cast), o; five weights an MoE layer; the output layer's
    assert per_use[2].casts - once[2].casts >= 2 * (2 * layers + 5 * layers + 1)
    model = Llama4(debug_args()).train()  # one model, its impl switched between steps: a plan for each
    for impl in ("sparse", "reference", "sparse"):
        set_impl(model, impl)
        with WeightCasts() as counted, torch.autocast("cpu", dtype=torch.bfloat16):
            x = torch.randint(0, model.args.vocab_size, (2, 16))
            model(x, targets=x).loss.backward()
        assert counted.foreach == (2 if impl == "reference" else 4), impl


@pytest.mark.parametrize("case", ["cpu", "flag off (DDP)", "checkpointing", "no gradients", "decoding",
                                  "no autocast", "bf16 weights"])
def test_weights_are_cast_per_use_where_casting_at_once_does_not_pay(monkeypatch, case):
    """Llama4.weights_cast_once casts at once only in an eager training forward under autocast, on
    CUDA (model.CAST_ONCE_DEVICES), fp32 weights, outside DDP (runtime.data_parallel turns
    cast_weights_once off: every gradient would reach its buckets at the end of backward) and without
    activation checkpointing (all the gradients at once would add a bf16 copy of every weight's to
    the peak a checkpointed step lowered; its recomputation casts again anyway); not in a forward
    without gradients unless for a whole pass (train.evaluate's: tests/test_compile.py), nor in
    decoding (every weight copied at each token). Each of those runs as before: no foreach copy,
    no copy left behind."""
    if case != "cpu":
        monkeypatch.setattr(model_module, "CAST_ONCE_DEVICES", ("cpu",))
    torch.manual_seed(0)
    model = Llama4(debug_args(router_noise=False)).train()
    model.cast_weights_once = case != "flag off (DDP)"
    model.set_grad_checkpointing(case == "checkpointing")
    if case == "bf16 weights":
        model = model.to(torch.bfloat16).reset_buffers()
    x = torch.randint(0, model.args.vocab_size, (2, 16))
    cache = KVCache(model.args, 2) if case == "decoding" else None
    with WeightCasts() as counted, torch.set_grad_enabled(case not in ("no gradients", "decoding")), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=case != "no autocast"):
        out = model(x, targets=None if cache else x, cache=cache)
    assert counted.foreach == 0 and model_module._cast_once == {}
    assert out.logits is not None or out.loss.isfinite()


def test_a_forward_that_fails_leaves_no_weight_copies_behind(monkeypatch):
    """The weights' copies of a forward that raised (out of memory, say) are dropped with it, and the
    next forward casts its own.
    Bug caught: copies left in model._cast_once would be read by every later forward, evaluation and
    decoding included, stale and in bf16."""
    monkeypatch.setattr(model_module, "CAST_ONCE_DEVICES", ("cpu",))
    torch.manual_seed(0)
    model = Llama4(debug_args()).train()
    x = torch.randint(0, model.args.vocab_size, (2, 16))
    norm = model.norm.forward
    monkeypatch.setattr(model.norm, "forward", lambda t: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="out of memory"):
        model(x, targets=x)
    assert model_module._cast_once == {}
    monkeypatch.setattr(model.norm, "forward", norm)
    with WeightCasts() as counted, torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, targets=x).loss.backward()
    assert counted.foreach == 2  # (one each way: the shared expert on its own on the CPU)


def test_cast_once_aligns_each_copy_and_gradient_and_casts_like_to():
    """model.CastOnce on weights of odd sizes (3 x 5, 7): each copy and each gradient starts at a
    multiple of model.CAST_ALIGN elements of its buffer (cuBLAS runs slower kernels on operands not
    aligned to 16 bytes; grouped_mm refuses them), and holds w.to(bf16), transposed where the plan
    says; each weight's gradient is its copy's, cast back.
    Bug caught: views packed end to end, the second starting 15 elements (30 bytes) in."""
    from model import CAST_ALIGN, CastOnce, CastPlan
    a, b = torch.nn.Linear(5, 3, bias=False), torch.nn.Linear(7, 1, bias=False)
    plan = CastPlan()
    plan.weight(a)
    plan.tensor(b, "t", (7, 1), [(b, "weight", (), True)])
    copies = CastOnce.apply(plan, torch.bfloat16, *plan.weights())
    assert [c.storage_offset() % CAST_ALIGN for c in copies] == [0, 0]
    assert torch.equal(copies[0], a.weight.bfloat16()) and torch.equal(copies[1], b.weight.t().bfloat16())
    g = [torch.randn(c.shape).to(torch.bfloat16) for c in copies]
    torch.autograd.backward(copies, g)
    assert [w.grad.storage_offset() % CAST_ALIGN for w in (a.weight, b.weight)] == [0, 0]
    assert torch.equal(a.weight.grad, g[0].float()) and torch.equal(b.weight.grad, g[1].t().float())
