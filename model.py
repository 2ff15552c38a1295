"""The Llama 4 model: a text decoder with a sparse mixture of experts, and the vision stub.

Faithful to Hugging Face `transformers` (`Llama4ForCausalLM`, `Llama4ForConditionalGeneration`):
the same weights give the same logits (tests/test_model_parity.py). Module and parameter names are
the HF ones, so export is a matter of adding prefixes (checkpoint.hf_state_dict, which
scripts/export_hf.py runs). In short:

    tokens -> embed_tokens -> n_layers x Block -> norm -> lm_head -> logits
    Block:  x = x + self_attn(input_layernorm(x));  x = x + feed_forward(post_attention_layernorm(x))
    self_attn: GQA. RoPE layers: interleaved-pair RoPE, then the weightless RMS QK norm (qk_norm),
               attention within aligned chunks of attn_chunk_size (key k seen by query q iff
               k <= q and k // C == q // C). NoPE layers, every nope_every-th (layers 3, 7, 11, ...
               by default): no positions, full causal attention, query temperature tuning
               (attn_temperature_tuning).
    feed_forward: on every moe_every-th layer (every layer by default) an MoE: a shared expert plus
               the top-k routed experts of the raw router logits (no softmax, no renormalising),
               each fed its input times sigmoid(its logit); a dense SwiGLU (mlp_dim) otherwise.

What it holds, one section each, in this order:
    building blocks     RMSNorm, compute_weight (how modules read weights), FeedForward (SwiGLU),
                        rope_frequencies, rope_tables, apply_rope
    attention           attention_mask, Attention (GQA; chunked on RoPE layers, causal on NoPE ones)
    grouped_mm          grouped_mm_supported, grouped_mm_any_dtype and what its gradients need,
                        PermuteRows (the dispatch's gathers)
    mixture of experts  Experts, Routing, router_stats (the router losses of all layers at once), MoE
    the decoder         to_compute_dtype, CastPlan and CastOnce (weights cast at once), Block,
                        recomputed_layers, checkpoint_layer, run_layer and Regions (what compiles by
                        regions), Output, Llama4
    the vision stub     VisionModel and its parts, Projector
    the loss            linear_cross_entropy: lm_head and the cross-entropy, chunk by chunk
    generation          KVCache and CacheStep (the static KV cache), few_row_logits (decoding's logits)
    initialisation      init_weights, build_from_state, weight_decayed (AdamW's two groups)
    parameter counts    count_parameters, summed_over_layers, flops_per_token (on the meta device)

How it departs from the obvious version (and from HF's code):
- Sparse MoE dispatch: tokens are sorted by expert and each expert runs one matmul on its own
  tokens (`grouped_mm` where the device has it, a loop over groups otherwise). HF runs every
  expert on every token. The rows go to their experts and back by gathers of a permutation and
  its inverse, in backward too (PermuteRows), not autograd's scatter-adds; under autocast on CUDA
  the shared expert is one more group of the same grouped GEMMs (Experts.with_shared). `MoE.impl =
  "reference"` selects a plain masked loop over experts, kept to test the fast path against.
- Training-only routing extras (HF has none): noisy top-k gating with a learned noise scale, the
  switch load-balancing loss, an optional router z-loss, per-expert token counts. All are
  deterministic or off in eval(), so eval() is exactly HF's model in fp32 (in bf16, ours rounds q
  and k once after RoPE and the QK norm where HF rounds after each: one bf16 rounding more
  precise; Attention._rope_and_norm). The losses are computed once for all MoE layers, from
  their stacked router logits (router_stats), not layer by layer. Under autocast the router stays in
  fp32 (HF's runs in bf16 there; fp32 parity is unaffected).
- Positions are explicit (B, T) tensors: left-padded batches (position -1 = padding) and the KV
  cache fall out of the same mask code. RoPE, chunk boundaries and temperature tuning all count
  from each row's first real token (HF counts chunks that way too, but tunes the temperature by
  slot), so a left-padded row equals the row alone.
- The KV cache is static and indexed by position (gpt-fast's, and HF's StaticCache): allocated
  once, written with a scatter, read whole under a mask; chunked layers mask the older chunks
  rather than drop them. A decoding step then has fixed shapes and no host read, so it can be
  compiled into a CUDA graph (sample.py does); no cache (the full forward) is the reference.
- Chunked attention with default positions and no cache (training and evaluation) folds each
  aligned chunk into the batch and runs plain causal attention on it: no T x T mask is
  materialised and no masked-out work is done.
- Under autocast each normed activation is cast to bf16 once, in Block (`to_compute_dtype`), and
  shared by the projections that read it; autocast alone casts it again for each one (q, k, v).
- An eager training step under autocast on CUDA casts the weights autocast would cast (every
  matmul's but the router's) all at once, into one buffer, and their gradients back at once
  (CastOnce: foreach copies; Llama4.weights_cast_once), where autocast casts each weight at its use
  and backward each gradient: 996 aten ops a scout-128m step where there were 1,100. Modules read
  their weights through compute_weight; Attention's q, k and v side by side and the experts' stacks
  with the shared expert appended come out of the same copy ready-made. The values and gradients
  are autocast's bit for bit (tests/test_model.py). An eager evaluation casts them at once for its
  whole pass (402 -> 356 ops a pass of one batch); compiled steps, decoding, DDP and checkpointed
  steps cast per use.
- Without a KV cache (training and evaluation), q, k and v come from one matmul over their
  weights side by side, and RoPE and the QK norm run once over q and k together: a seventh fewer
  kernels in an eager step (one weight cast and one matmul each way instead of three, no sum of
  three input gradients, half the RoPE and norm ops), and in evaluation a seventh fewer ops too.
  Decoding keeps HF's separate projections, which copy no weights per call (decoding on a CPU is
  bound by reading them); tests hold the two equal. So do the router's logits and its noise scale
  (training only): one fp32 matmul of 2E columns, not two of E.
- The loss never holds the (B*T, V) logits: given targets, `linear_cross_entropy` runs the output
  layer and the cross-entropy chunk by chunk, taking their gradients on the way when training (no
  logits are returned then; evaluation gets the loss alone too). In eager mode on CUDA its
  GEMMs write fp32 from bf16 operands (torch.mm's out_dtype), so no chunk's logits or weight
  gradient is rounded to bf16 and cast back. `Llama4.loss_impl = "reference"` is lm_head +
  F.cross_entropy, kept to test against; without targets (sampling) the model returns logits as
  usual.
- Decoding's logits on the CPU (a few rows, no gradients) are computed as weight @ x.T
  (`few_row_logits`): for a weight as large as lm_head's (V x D, 67 MB in fp32 at scout-128m),
  the kernel F.linear reaches there is 2.5-6x slower for 1-16 rows, and was a third of each
  decoded token's time.
- Compiled (runtime.static_compile), the model runs its layers and its head (the final norm, the
  router losses and the loss) as compiled regions, which runtime.RegionalModel passes to forward
  (Regions): the compiler traces one layer of each kind and every layer of that kind runs its
  graph, where compiling the whole forward traces and lowers each layer again.
- Activation checkpointing (--grad_checkpoint) recomputes each layer, eager, through torch's
  reentrant checkpoint, which hooks none of the tensors a layer saves for backward; the
  non-reentrant one, torch's advice, calls Python three times for each. A checkpointed training
  step bound by the host took 1.13-1.21x the time of one keeping its activations, where it took
  1.41-1.46x (docs/performance.md). Compiled, under DDP and for an input without gradients, the
  non-reentrant one (`checkpoint_layer`). --grad_checkpoint_layers N recomputes the first N layers
  alone: less memory saved, for less time.
- The `<|pad|>` embedding row is an ordinary one: HF builds embed_tokens with padding_idx, which
  gives that row no gradient. No training text holds the pad id (special-token text is read as
  plain text), so the two train alike; only tokens that hold it would tell them apart.
"""

import contextlib
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake
from torch.utils.checkpoint import checkpoint

from config import ModelArgs

# ---------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """x / rms(x), in fp32, times a learned weight (or no weight, for the QK norm).

    F.rms_norm is HF's x * rsqrt(mean(x^2) + eps) * weight: on the CPU the same ops, on CUDA
    (torch >= 2.8) one fused kernel each way instead of about 6 forward and 14 backward (eager
    steps and decoding are bound by kernel launches there; compiled code fuses either). An fp32
    input (the residual stream, also under autocast) takes the weight inside the kernel: on the CPU
    bit for bit HF's values and gradients; on CUDA backward then keeps only x and 1/rms, not also
    an fp32 copy of the normed x for the weight's gradient (one (B, T, dim) fp32 per norm). A bf16
    input (weights cast for decoding) is normed in fp32 and rounded, then weighted, as HF's
    x.float() ... .type_as(x) * weight does (tests/test_model.py), without the two casts."""

    def __init__(self, dim: int, eps: float, weight: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x):
        if x.dtype == torch.float32 or self.weight is None:  # the weight inside the fused kernel
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight  # HF: round, then the weight


# (module, name) -> a tensor in the compute dtype, while an eager training forward under autocast on
# CUDA has cast the weights autocast would cast all at once (Llama4.weights_cast_once, CastPlan); else
# empty. The modules read their matmuls' weights through compute_weight and cast_copy.
_cast_once: dict = {}


def cast_copy(module: nn.Module, name: str) -> torch.Tensor | None:
    """What this forward's CastOnce made under (module, name): one of module's weights in the
    compute dtype, or several of them put together (CastPlan); None where it made none."""
    return None if torch.compiler.is_compiling() or not _cast_once else _cast_once.get((module, name))


def compute_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """module's weight `name` as this forward reads it: its copy in the compute dtype where the
    forward cast the weights at once (cast_copy), else the weight itself (which autocast casts)."""
    w = cast_copy(module, name)
    return getattr(module, name) if w is None else w


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x) for a Linear without bias, through compute_weight."""
    return F.linear(x, compute_weight(layer))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The shared expert and the dense layers. (Not fused into
    one gate-and-up matmul, as Attention's q, k and v are in training: on the CPU that was slower,
    its gradient being put together in one more pass, for 2% fewer ops per step.)"""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return linear(F.silu(linear(x, self.gate_proj)) * linear(x, self.up_proj), self.down_proj)

    def plan_cast(self, plan: "CastPlan"):
        for m in (self.gate_proj, self.up_proj, self.down_proj):
            plan.weight(m)


def rope_frequencies(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies f_j = theta^(-2j/D), with optional llama3 scaling. Shape (D/2,)."""
    D = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float) / D))
    if args.rope_scaling == "llama3":
        factor, low, high = args.rope_factor, args.rope_low_freq_factor, args.rope_high_freq_factor
        L0 = args.rope_original_max_seq_len
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > L0 / low, inv_freq / factor, inv_freq)
        if high > low:  # the band between L0/high and L0/low is interpolated smoothly
            s = (L0 / wavelen - low) / (high - low)
            smooth = (1 - s) * scaled / factor + s * scaled
            medium = (wavelen >= L0 / high) & (wavelen <= L0 / low)
            scaled = torch.where(medium, smooth, scaled)
        inv_freq = scaled
    return inv_freq


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (..., D/2) -> (cos, cos) and (-sin, sin) per pair, (..., D): what apply_rope takes,
    built once per forward call."""
    return torch.stack([cos, cos], -1).flatten(-2), torch.stack([-sin, sin], -1).flatten(-2)


def apply_rope(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) by angle p * f_j, in fp32 (not rotate-half):
    (x[2j] cos - x[2j+1] sin, x[2j+1] cos + x[2j] sin) = x * (cos, cos) + swapped pairs * (-sin,
    sin), three ops rather than seven (HF's complex product is one, but Inductor cannot compile
    complex numbers).

    x: (B, T, H, D); cos2, sin2 (rope_tables): (B, T, 1, D) or (T, 1, D). Returns fp32: the caller
    casts back once, after the QK norm where there is one (which also runs in fp32).
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x[2j+1], x[2j]) pairs, (B, T, H, D)
    return torch.addcmul(xf * cos2, swapped, sin2)


# ---------------------------------------------------------------------------------------------
# Attention


def attention_mask(q_pos, k_pos, chunk_size=None):
    """Boolean mask (B, 1, Tq, Tk): key visible to query iff causal, not padding and, on chunked
    layers, in the same aligned chunk. q_pos (B, Tq), k_pos (B or 1, Tk), -1 = padding. A padding
    query sees key slot 0 alone, so its row is not empty (an empty row is NaN on some backends,
    zeros on others, such as torch 2.13's CPU kernel). A query whose chunk starts after every key
    (a stopped row's, past the end of a KV cache) sees none: a row whose output is never read."""
    q, k = q_pos[:, :, None], k_pos[:, None, :]  # (B, Tq, 1), (B or 1, 1, Tk)
    allowed = (k <= q) & (k >= 0)
    if chunk_size is not None:  # causal already: the key need only be at or after its chunk's start.
        # (Not (k // C) == (q // C): compiled by Inductor on the CPU (torch 2.13), the division over
        # the keys left the last Tk % 16 slots unwritten, garbage in the decode step's mask.)
        allowed &= k >= (q // chunk_size) * chunk_size
    first_slot = torch.arange(k_pos.shape[1], device=q_pos.device) == 0  # (Tk,)
    allowed |= first_slot & (q < 0)
    return allowed[:, None]


class Attention(nn.Module):
    """Grouped-query self-attention of one layer. RoPE layers: interleaved RoPE, the QK norm and
    attention within aligned chunks; NoPE layers (every nope_every-th): no positions, full causal
    attention and query temperature tuning."""

    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.use_rope = args.uses_rope(layer)
        self.chunk_size = args.attn_chunk_size if self.use_rope else None
        self.qk_norm = RMSNorm(self.head_dim, args.norm_eps, weight=False) if (
            args.qk_norm and self.use_rope) else None
        self.temperature = args.attn_temperature_tuning and not self.use_rope
        self.attn_scale, self.floor_scale = args.attn_scale, args.attn_floor_scale
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x, pos, rope, cache: "CacheStep | None" = None, default_pos: bool = False):
        """x (B, T, dim); pos (B, T) positions, -1 for padding; rope = rope_tables(cos, sin) for `pos`;
        cache: this call's KVCache.step(pos). default_pos: pos is arange(T) in every row and there
        is no cache (training and evaluation)."""
        B, T, _ = x.shape
        q, k, v = self._project(x, rope, cache is None)  # (B, T, H, D), (B, T, Hkv, D), (B, T, Hkv, D)
        if self.temperature:  # NoPE layers
            p = pos.clamp(min=0).float()
            scale = 1.0 + self.attn_scale * torch.log1p(torch.floor((p + 1.0) / self.floor_scale))  # (B, T)
            q = (q * scale[:, :, None, None]).type_as(q)  # (B, T, 1, 1) over every head
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D), (B, Hkv, T, D) x 2

        if default_pos:
            y = self._attend_aligned(q, k, v)
        else:
            if cache is not None:  # the static cache, under a mask
                k, v = cache.update(self.layer, k, v)  # (B, Hkv, n, D) each
                mask = cache.mask(self.chunk_size)
            else:
                mask = attention_mask(pos, pos, self.chunk_size)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, H, T, D) -> (B, T, H*D)
        return linear(y, self.o_proj)

    def _project(self, x, rope, fused: bool = True):
        """q, k, v of x (B, T, dim), RoPE (and the QK norm) applied on RoPE layers. `fused` (no KV
        cache: training and evaluation): one matmul over the three weights side by side; else
        (decoding) HF's three. In training, a NoPE layer's q with temperature tuning on is still a
        view of the fused projection: forward's temperature makes it anew."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        if not fused:  # HF's three projections (the reference, tests/test_model.py): no weight copy
            q = self.q_proj(x).view(B, T, H, D)  # (B, T, H*D) -> (B, T, H, D)
            k = self.k_proj(x).view(B, T, Hkv, D)  # (B, T, Hkv*D) -> (B, T, Hkv, D)
            v = self.v_proj(x).view(B, T, Hkv, D)  # (B, T, Hkv*D) -> (B, T, Hkv, D)
            if self.use_rope:
                q, k = self._rope_and_norm(q, rope, v.dtype), self._rope_and_norm(k, rope, v.dtype)
            return q, k, v
        # training: one matmul; q and k side by side, so RoPE and the norm run once
        w = cast_copy(self, "qkv")  # ((H+2Hkv)D, dim), made by CastOnce, or:
        if w is None:
            w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        qk, v = F.linear(x, w).view(B, T, H + 2 * Hkv, D).split([H + Hkv, Hkv], dim=2)  # (B, T, H+Hkv, D), v
        if self.use_rope:
            qk = self._rope_and_norm(qk, rope, v.dtype)
        q, k = qk.split([H, Hkv], dim=2)  # (B, T, H, D), (B, T, Hkv, D)
        # without gradients (evaluation), views are what attention reads: strided rows, no copies.
        # Not in training mode: a checkpointed layer's first forward runs without gradients
        # (checkpoint_layer) and must read the layouts its recomputation reads (the same kernels)
        if not (torch.is_grad_enabled() or self.training):
            return q, k, v
        # what attention keeps for backward must not be views that hold all of q, k and v
        # (RoPE made q and k anew; on NoPE layers the temperature makes q anew, where tuned)
        v = v.contiguous()
        if not self.use_rope:
            k = k.contiguous()
            q = q if self.temperature else q.contiguous()
        return q, k, v

    def plan_cast(self, plan: "CastPlan"):
        """q, k and v side by side (_project's one matmul in training), and o."""
        a = self.q_proj.weight.shape[0]
        b, c = a + self.k_proj.weight.shape[0], a + 2 * self.k_proj.weight.shape[0]
        plan.tensor(self, "qkv", (c, self.q_proj.weight.shape[1]), [
            (self.q_proj, "weight", (slice(0, a),), False), (self.k_proj, "weight", (slice(a, b),), False),
            (self.v_proj, "weight", (slice(b, c),), False)])
        plan.weight(self.o_proj)

    def _rope_and_norm(self, t, rope, dtype):
        """RoPE, then the QK norm where there is one, both in fp32, then one cast back to `dtype`.
        t (B, T, heads, D). HF casts back after RoPE and again after the norm: equal in fp32, one
        bf16 rounding more precise here (kept: bf16 runs resume bit for bit)."""
        t = apply_rope(t, *rope)
        if self.qk_norm is not None:
            t = self.qk_norm(t)
        return t.to(dtype)

    def _attend_aligned(self, q, k, v):
        """Positions 0..T-1 in every row: causal attention, chunk by chunk on chunked layers. No mask
        is built: whole chunks are folded into the batch, a last partial chunk attends on its own."""
        B, _, T, D = q.shape
        C = self.chunk_size
        if C is None or T <= C:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        n = T // C
        full = n * C

        def fold(t):  # the whole chunks into the batch: (B, H, n*C, D) -> (B*n, H, C, D)
            return t[:, :, :full].reshape(B, t.shape[1], n, C, D).transpose(1, 2).reshape(B * n, -1, C, D)
        y = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), is_causal=True, enable_gqa=True)
        y = y.view(B, n, -1, C, D).transpose(1, 2).reshape(B, -1, full, D)  # (B, H, n*C, D)
        if full < T:  # the last, partial chunk: causal attention within itself
            tail = F.scaled_dot_product_attention(q[:, :, full:], k[:, :, full:], v[:, :, full:],
                                                  is_causal=True, enable_gqa=True)
            y = torch.cat([y, tail], dim=2)
        return y


# ---------------------------------------------------------------------------------------------
# grouped_mm: the kernel of the sparse expert dispatch, and what it needs around it


def grouped_mm_supported(x: torch.Tensor, widths=()) -> bool:
    """torch's grouped GEMM: CPU (fp32/bf16) and CUDA sm90/sm100 (bf16; on other GPUs torch's
    fallback reads the group offsets on the host, a sync per call), for rows of `widths`
    elements (the model's dim and expert_dim) in x's dtype that are whole multiples of 16 bytes, as
    its strides must be (an expert_dim of 98 in fp32, or a dim of 60 in bf16, is not)."""
    return grouped_mm_supports(x.device, x.dtype, widths)


def grouped_mm_supports(device: torch.device, dtype: torch.dtype, widths=()) -> bool:
    """grouped_mm_supported for a tensor of `dtype` on `device`."""
    if not hasattr(F, "grouped_mm") or any(w * dtype.itemsize % 16 for w in widths):
        return False
    if device.type == "cpu":
        return dtype in (torch.float32, torch.bfloat16)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] in (9, 10) and dtype == torch.bfloat16
    return False


@torch.library.custom_op("llama4::grouped_mm", mutates_args=())
def grouped_mm_any_dtype(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """F.grouped_mm as one opaque op, for dtypes torch.compile cannot trace it in (its fake kernel
    takes bf16 only; the CPU kernel takes fp32 too). Either x (M, K) in groups of rows with w
    (G, K, N) -> (M, N), or x (K, M) and w (M, N) in groups of M -> (G, K, N) (weight gradients)."""
    return F.grouped_mm(x, w, offs=offs)


@grouped_mm_any_dtype.register_fake
def _(x, w, offs):
    if w.dim() == 3:
        return x.new_empty(x.shape[0], w.shape[-1])
    return x.new_empty(offs.shape[0], x.shape[0], w.shape[-1])


def _grouped_mm_backward(ctx, grad):
    x, w, offs = ctx.saved_tensors
    grad = grad.contiguous()  # grouped_mm refuses expanded (stride-0) gradients
    grad_x = grouped_mm_any_dtype(grad, w.transpose(-2, -1), offs)  # (M, N) x (G, N, K) -> (M, K)
    grad_w = grouped_mm_any_dtype(x.t(), grad, offs)  # (K, M) x (M, N) -> (G, K, N)
    return grad_x, grad_w, None


grouped_mm_any_dtype.register_autograd(
    _grouped_mm_backward, setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))


class ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (grouped_mm's own backward,
    fp32 and bf16 alike, refuses expanded, stride-0 gradients, which a .sum() or .mean() loss hands it)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def empty_groups_unzeroed(x: torch.Tensor) -> bool:
    """Whether grouped_mm on x's device may leave the weight gradient of an empty group (an expert
    no token was routed to) unwritten: Blackwell (sm100 and later), where torch's CUTLASS kernel
    does not clear a group whose summed dimension is 0 (pytorch/pytorch#172439; sm90 writes zeros)."""
    return x.device.type == "cuda" and torch.cuda.get_device_capability(x.device)[0] >= 10


def group_sizes(ends: torch.Tensor) -> torch.Tensor:
    """Group ends (..., E) -> the groups' sizes (..., E), int64: the assignments routed to each expert."""
    ends = ends.long()
    return torch.diff(ends, dim=-1, prepend=ends.new_zeros(*ends.shape[:-1], 1))


class ZeroEmptyGroups(torch.autograd.Function):
    """Identity on expert weights (E, ...) whose backward zeroes the gradient of the experts with no
    rows (group ends (E,) equal to the previous expert's): what grouped_mm left there is whatever the
    memory held, NaN included (masked_fill, not a product: 0 * NaN is NaN). On the device, no host
    sync."""

    @staticmethod
    def forward(ctx, w, ends):
        ctx.save_for_backward(ends)
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad):
        (ends,) = ctx.saved_tensors
        empty = (group_sizes(ends) == 0).view(-1, *[1] * (grad.dim() - 1))  # (E, 1, 1)
        return grad.masked_fill(empty, 0), None


class PermuteRows(torch.autograd.Function):
    """x[perm] for a permutation `perm` of x's rows, whose backward is the inverse permutation's
    gather, grad[inverse]: autograd's for x[perm] is a scatter-add (an index_put with
    accumulate, which sorts the indices on CUDA, and atomic adds when compiled), as is index_add's
    forward. The MoE's dispatch to its experts and back is two of these, gathers both ways."""

    @staticmethod
    def forward(ctx, x, perm, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


# ---------------------------------------------------------------------------------------------
# Mixture of experts


SHARED_IN_GROUPS_DEVICES = ("cuda",)  # where the shared expert joins the experts' grouped GEMMs


class Experts(nn.Module):
    """E SwiGLU experts in the HF layout: gate_up_proj (E, dim, 2I) with gate = first I columns,
    down_proj (E, I, dim). Expert_e(z) = (silu(z G_e) * (z U_e)) D_e."""

    def __init__(self, n_experts: int, dim: int, hidden: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, dim, 2 * hidden))
        self.down_proj = nn.Parameter(torch.empty(n_experts, hidden, dim))

    def expert(self, e: int, z: torch.Tensor) -> torch.Tensor:
        """Expert e on its inputs z (n, dim) -> (n, dim): the fallback's and MoE._reference's."""
        gate, up = (z @ compute_weight(self, "gate_up_proj")[e]).chunk(2, dim=-1)  # (n, 2I) -> (n, I) each
        return (F.silu(gate) * up) @ compute_weight(self, "down_proj")[e]  # (n, dim)

    def forward(self, xs: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """xs (M, dim) sorted by expert, ends (E,) int32 end row of each expert's group -> (M, dim)."""
        w1, w2 = compute_weight(self, "gate_up_proj"), compute_weight(self, "down_proj")
        if torch.is_autocast_enabled(xs.device.type):  # grouped_mm is not on autocast's list
            dtype = torch.get_autocast_dtype(xs.device.type)
            xs, w1, w2 = xs.to(dtype), w1.to(dtype), w2.to(dtype)
        if grouped_mm_supported(xs, (xs.shape[-1], w2.shape[1])):  # no host sync: groups stay on the device
            return self._grouped(xs, w1, w2, ends)
        # the fallback: one matmul per expert, the group sizes read on the host
        groups = xs.split(group_sizes(ends).tolist())
        return torch.cat([self.expert(e, z) if len(z) else z for e, z in enumerate(groups)])

    def with_shared(self, xs, ends, h, shared: FeedForward) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(xs, ends) and the shared expert (a FeedForward of the experts' widths) on h (N, dim):
        ((M, dim), (N, dim)). Under autocast on CUDA (SHARED_IN_GROUPS_DEVICES), where grouped_mm
        runs, the shared expert is one more group of the same two grouped GEMMs, its weights appended:
        9 fewer ops a training step's layer than its own three matmuls each way (their weights' casts
        and matmuls, the gradients' matmuls and casts back), for one more copy of the experts' weights
        than autocast's cast makes anyway. Elsewhere each runs on its own: in fp32 the experts'
        weights are read where they are; on the CPU the copy (40 MB a layer at scout-128m, past
        malloc's threshold for mapping fresh pages) cost more than the ops saved; decoding
        (MoE.forward) would copy them all at each token."""
        if not self.shares_groups(xs.device):
            return self(xs, ends), shared(h)
        dtype = torch.get_autocast_dtype(xs.device.type)
        w1, w2 = cast_copy(self, "w1"), cast_copy(self, "w2")  # made by CastOnce, or:
        if w1 is None:
            gate_up = torch.cat([shared.gate_proj.weight, shared.up_proj.weight]).t()  # (dim, 2I)
            w1 = torch.cat([self.gate_up_proj, gate_up[None]]).to(dtype)  # (E + 1, dim, 2I): the shared last
            w2 = torch.cat([self.down_proj, shared.down_proj.weight.t()[None]]).to(dtype)  # (E + 1, I, dim)
        offs = F.pad(ends, (0, 1), value=len(xs) + len(h))  # (E + 1,): h's rows after the experts'
        ys = self._grouped(torch.cat([xs.to(dtype), h.to(dtype)]), w1, w2, offs)  # (M + N, dim)
        return ys.split([len(xs), len(h)])

    def shares_groups(self, device: torch.device) -> bool:
        """Whether with_shared runs the shared expert as one more group (autocast on, on CUDA, where
        grouped_mm takes autocast's dtype and the widths)."""
        kind, widths = device.type, (self.gate_up_proj.shape[1], self.down_proj.shape[1])  # (dim, I)
        return (kind in SHARED_IN_GROUPS_DEVICES and torch.is_autocast_enabled(kind)
                and grouped_mm_supports(device, torch.get_autocast_dtype(kind), widths))

    def plan_cast(self, plan: "CastPlan", shared: FeedForward, grouped: bool = True):
        """The experts' weights and the shared expert's: as with_shared's two (E + 1) stacks where it
        runs the shared expert as one more group, else (or where the MoE does not call with_shared:
        `grouped` False, its reference loop) each alone."""
        if not (grouped and self.shares_groups(self.gate_up_proj.device)):
            plan.weight(self, "gate_up_proj")
            plan.weight(self, "down_proj")
            return shared.plan_cast(plan)
        (E, dim, I2), I, every = self.gate_up_proj.shape, self.down_proj.shape[1], slice(None)
        plan.tensor(self, "w1", (E + 1, dim, I2), [  # the shared expert's gate and up, transposed, last
            (self, "gate_up_proj", (slice(0, E),), False),
            (shared.gate_proj, "weight", (E, every, slice(0, I)), True),
            (shared.up_proj, "weight", (E, every, slice(I, I2)), True)])
        plan.tensor(self, "w2", (E + 1, I, dim), [
            (self, "down_proj", (slice(0, E),), False), (shared.down_proj, "weight", (E,), True)])

    def _grouped(self, xs, w1, w2, offs):
        """forward through torch's grouped GEMM: two grouped_mm calls over all experts at once; offs
        (E,) int32, the end row of each expert's group."""
        # Blackwell leaves an idle expert's weight gradient unwritten (no gradients when sampling)
        if torch.is_grad_enabled() and w1.requires_grad and empty_groups_unzeroed(xs):
            w1, w2 = ZeroEmptyGroups.apply(w1, offs), ZeroEmptyGroups.apply(w2, offs)
        if xs.dtype != torch.bfloat16 and (torch.compiler.is_compiling() or is_fake(xs)):
            # traced on fake tensors (torch.compile, scripts/memory_model.py), F.grouped_mm takes bf16 only
            gate, up = grouped_mm_any_dtype(xs, w1, offs).chunk(2, dim=-1)  # (M, I) each
            return grouped_mm_any_dtype(F.silu(gate) * up, w2, offs)  # (M, dim)
        gate, up = F.grouped_mm(xs, w1, offs=offs).chunk(2, dim=-1)  # (M, I) each
        return ContiguousGrad.apply(F.grouped_mm(F.silu(gate) * up, w2, offs=offs))  # (M, dim)


class Routing(NamedTuple):
    """What one MoE layer reports besides its output; the model turns the layers' reports into
    their losses and statistics at once (router_stats)."""
    logits: torch.Tensor  # (N, E) the router's clean logits (before noise)
    ends: torch.Tensor  # (E,) int32: assignments routed to experts 0..e, the end of e's group of rows


def router_stats(logits: torch.Tensor, counts: torch.Tensor, top_k: int, z_grad: bool = True):
    """Every MoE layer's switch load-balancing loss E * sum_e f_e P_e (1.0 when perfectly
    balanced), router z-loss (mean squared logsumexp) and mean router entropy (nats, detached),
    each (L,), from the clean logits (L, N, E) and the counts (L, E). One set of ops for all layers
    (per layer they were a fifth of what an MoE layer adds to a training step's kernels).
    z_grad=False: the z-loss is logged, not differentiated (its coefficient is 0)."""
    logits = logits.float()
    # log-probabilities through one logsumexp, shared by all three terms (computing softmax and
    # logsumexp separately made torch.compile on CPU, torch 2.13, drop the gradient that reaches
    # the router through the expert scores; tests/test_compile.py holds this)
    lse = torch.logsumexp(logits, -1, keepdim=True)  # (L, N, 1)
    log_probs = logits - lse  # (L, N, E)
    probs = log_probs.exp()
    n_experts, n_tokens = logits.shape[-1], logits.shape[-2]
    f = counts.float() / (n_tokens * top_k)  # (L, E) share of assignments per expert
    aux = n_experts * (f * probs.mean(-2)).sum(-1)  # (L,)
    z = (lse if z_grad else lse.detach()).pow(2).mean((-2, -1))  # (L,)
    entropy = -(probs.detach() * log_probs.detach()).sum(-1).mean(-1)  # (L,), logged only
    return aux, z, entropy


class MoE(nn.Module):
    """Shared expert + top-k routed experts; the router's sigmoid score scales the expert input.

    out = shared(h) + sum_{e in topk(logits)} Expert_e(sigmoid(logit_e) * h)

    The top k of the raw logits (noisy in training), no softmax and no renormalisation; the shared
    expert is a FeedForward of expert_dim that every token goes through.
    """

    impl = "sparse"  # or "reference": the plain masked loop over experts

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_experts, self.top_k = args.n_experts, args.top_k
        self.router = nn.Linear(args.dim, args.n_experts, bias=False)
        # Noisy top-k gating (Shazeer et al. 2017): logits + N(0, 1) * softplus(h W + b), training
        # only. Not part of HF's model; dropped on export.
        self.router_noise = nn.Linear(args.dim, args.n_experts, bias=True) if args.router_noise else None
        self.experts = Experts(args.n_experts, args.dim, args.expert_dim)
        self.shared_expert = FeedForward(args.dim, args.expert_dim)
        self.register_buffer("expert_ids", self.expert_keys(torch.arange(args.n_experts)), persistent=False)

    def expert_keys(self, ids: torch.Tensor) -> torch.Tensor:
        """Expert ids as the keys the rows are sorted by: bytes where they fit (on CUDA a radix sort
        makes a pass per byte of its keys: one pass, not the eight of topk's int64)."""
        return ids.to(torch.uint8) if self.n_experts <= 256 else ids

    def forward(self, x, decoding: bool = False, router_input=None) -> tuple[torch.Tensor, Routing]:
        """x (B, T, dim) -> out (B, T, dim), the layer's Routing (logits and group ends). decoding (a KV
        cache's call): the shared expert on its own (Experts.forward). router_input: what the router
        reads, x's values before x was cast to the compute dtype (Block: the fp32 normed x; default x)."""
        h = x.reshape(-1, x.shape[-1])  # (N, dim)
        # The router runs in its weights' dtype, outside autocast: in fp32 under bf16 autocast
        # (Switch Transformer's "selective precision": routing decisions and scores from fp32
        # logits), on the fp32 normed x the Block hands it, not h rounded to bf16 and cast back (two
        # casts a layer, one each way, and a rounding); backward keeps that fp32 (N, dim) per MoE
        # layer, about 4% more activation memory. With bf16 weights (sample.py on CUDA) it is HF's
        # bf16 router.
        r = h if router_input is None else router_input.reshape(h.shape)  # (N, dim)
        with torch.autocast(h.device.type, enabled=False):
            hr = r.to(self.router.weight.dtype)
            if self.training and self.router_noise is not None:  # the logits and the noise's scale
                # from one matmul (its weights side by side): a GEMM 16 columns wide half fills its tiles
                w = torch.cat([self.router.weight, self.router_noise.weight])  # (2E, dim)
                logits, noise = F.linear(hr, w).split(self.n_experts, dim=-1)  # (N, E) each
                scale = F.softplus(noise + self.router_noise.bias)
                select = logits + torch.randn_like(logits) * scale
            else:
                logits = select = self.router(hr)  # (N, E)
            top_logit, top_idx = select.topk(self.top_k, dim=-1)  # (N, k)
            # (N, k) in fp32 then cast, as HF: a bf16 sigmoid gives the same values, but its backward
            # takes y(1 - y) from the rounded y, which loses the router's gradient once y nears 1
            scores = torch.sigmoid(top_logit.float()).to(h.dtype)

        # the (N*k,) assignments, (token, slot) in order, sorted by expert; where each expert's group
        # of sorted rows ends, from the sorted keys (no count by scatter-add, then a cumsum)
        keys, order = self.expert_keys(top_idx.reshape(-1)).sort(stable=True)  # (N*k,) each
        ends = torch.searchsorted(keys, self.expert_ids, right=True, out_int32=True)  # (E,)
        if self.impl == "sparse":
            out = self._sparse(h, order, ends, scores, decoding)
        else:
            out = self._reference(h, top_idx, scores)
        return out.view_as(x), Routing(logits, ends)  # out (N, dim) -> (B, T, dim)

    def plan_cast(self, plan: "CastPlan"):  # (not the router's weights: it runs in fp32)
        self.experts.plan_cast(plan, self.shared_expert, grouped=self.impl == "sparse")

    def _sparse(self, h, order, ends, scores, decoding=False):
        arange = torch.arange(order.shape[0], device=order.device)
        rank = arange.scatter(0, order, arange)  # (N*k,) each assignment's sorted row: order's inverse
        scaled = (h[:, None, :] * scores[:, :, None]).reshape(-1, h.shape[-1])  # (N*k, dim) by (token, slot)
        xs = PermuteRows.apply(scaled, order, rank)  # (N*k, dim) expert inputs, grouped by expert
        if decoding:
            ys, out = self.experts(xs, ends), self.shared_expert(h)
        else:  # the shared expert as one more group of the experts' grouped GEMMs (under autocast)
            ys, out = self.experts.with_shared(xs, ends, h, self.shared_expert)
        # ys (N*k, dim) in the sorted order; out (N, dim), under autocast bf16 like ys
        back = PermuteRows.apply(ys, rank, order)  # (N*k, dim) by (token, slot)
        if self.top_k > 1:  # (for k = 1 the rows are the tokens': no select, whose backward fills zeros)
            back = back.view(-1, self.top_k, h.shape[-1]).sum(1)  # (N, k, dim) -> (N, dim)
        return out + back.to(out.dtype)  # + its k outputs

    def _reference(self, h, top_idx, scores):
        out = self.shared_expert(h)
        for e in range(self.n_experts):
            hit = top_idx == e  # (N, k)
            rows = hit.any(-1)
            score = (scores * hit).sum(-1, keepdim=True)  # (N, 1): sigmoid score of e, or 0
            out = out + torch.where(rows[:, None], self.experts.expert(e, h * score), 0.0)
        return out


# ---------------------------------------------------------------------------------------------
# The decoder


def to_compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """x in autocast's dtype where autocast is on (the residual stream stays fp32). A normed
    activation is read by several projections (q, k and v; the shared expert's gate and up; not the
    router and its noise, which read the fp32 normed x itself): cast once here, autocast would cast
    it once per projection, and backward would cast each gradient back. The autocast projections
    see the same values; the MoE's expert inputs (h x router score) are a bf16 product rather than
    an fp32 one cast after, and the branches' gradients are summed in bf16 before the one cast
    back, not in fp32 after several: rounding, no more."""
    kind = x.device.type
    return x.to(torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else x


# where a training forward casts the weights once, all together (Llama4.weights_cast_once): CUDA.
# Not the CPU, which is bound by arithmetic, not launches, and where the buffers (the copies' and the
# gradients', past malloc's threshold for mapping fresh pages) cost page faults at every step
CAST_ONCE_DEVICES = ("cuda",)


CAST_ALIGN = 128  # elements: where each tensor starts in CastOnce's buffers (256 bytes in bf16), as the
# caching allocator aligns its own blocks: cuBLAS picks slower kernels for operands not aligned to 16
# bytes, and grouped_mm refuses them


def flat_views(shapes, dtype: torch.dtype, device) -> list[torch.Tensor]:
    """Views in `shapes` of one new buffer, each starting at a multiple of CAST_ALIGN elements."""
    sizes = [math.prod(s) for s in shapes]
    padded = [-(-n // CAST_ALIGN) * CAST_ALIGN for n in sizes]
    flat = torch.empty(sum(padded), dtype=dtype, device=device)
    return [(v if n == p else v[:n]).view(s) for v, n, p, s in zip(flat.split(padded), sizes, padded, shapes,
                                                                     strict=True)]


class CastPlan:
    """The compute-dtype tensors one CastOnce makes, and where each weight goes in them. A tensor is
    one weight, read through compute_weight(module, name), or several put together, read through
    cast_copy(module, name): Attention's q, k and v side by side, the experts with the shared expert
    appended (Experts.with_shared). A weight's place in its tensor is a view in the weight's shape
    (an index, then a transpose or not), and the same view of the tensor's gradient is its
    gradient. Data only (no closures): a model keeps its plans (Llama4.weights_cast_once)."""

    def __init__(self):
        self.keys, self.shapes = [], []  # per tensor made: (module, name), shape
        self.slots, self.places = [], []  # per weight: (module, name), (tensor's index, index, transposed)

    def weight(self, module: nn.Module, name: str = "weight"):
        self.tensor(module, name, getattr(module, name).shape, [(module, name, (), False)])

    def tensor(self, module: nn.Module, name: str, shape, pieces):
        """A tensor of `shape`, cast_copy(module, name), of pieces [(module, weight name, index,
        transposed)]: weight = tensor[index], transposed or not."""
        for m, n, index, transposed in pieces:
            self.slots.append((m, n))
            self.places.append((len(self.shapes), index, transposed))
        self.keys.append((module, name))
        self.shapes.append(torch.Size(shape))

    def weights(self) -> list[torch.Tensor]:
        return [getattr(m, n) for m, n in self.slots]

    def pieces(self, tensors) -> list[torch.Tensor]:
        """Each weight's view of `tensors` (the tensors made, or their gradients)."""
        views = [tensors[i][index] if index else tensors[i] for i, index, _ in self.places]
        return [v.t() if transposed else v for v, (_, _, transposed) in zip(views, self.places, strict=True)]


class CastOnce(torch.autograd.Function):
    """The weights -> the tensors of a CastPlan in `dtype`, views of one buffer (flat_views) that
    foreach copies fill; backward reads each weight's gradient out of the tensors' gradients the
    same way, cast back into one buffer. Two or three ops each way where autocast casts each
    weight, backward casts each gradient back, and copies those of the weights read transposed
    (the shared expert's in the experts' grouped GEMMs). The values are autocast's (the same
    rounding), and so is each weight's gradient (its one use's, cast once); the weights'
    gradients are views of one buffer."""

    @staticmethod
    def forward(ctx, plan: CastPlan, dtype, *weights):
        ctx.plan, ctx.dtype = plan, weights[0].dtype
        tensors = flat_views(plan.shapes, dtype, weights[0].device)
        copy_pieces(plan.pieces(tensors), weights)
        return tuple(tensors)

    @staticmethod
    def backward(ctx, *grads):
        pieces = ctx.plan.pieces(grads)
        out = flat_views([g.shape for g in pieces], ctx.dtype, pieces[0].device)
        copy_pieces(out, pieces)
        return None, None, *out


def copy_pieces(dst: list[torch.Tensor], src: list[torch.Tensor]):
    """dst[i].copy_(src[i]) for each i, as two foreach copies: one of the pairs whose strides are
    alike (on CUDA one kernel for all of them, casting as it copies: its fast path takes only such
    pairs), one of the rest (the shared expert's weights, transposed in the experts' stacks, and
    any gradient in another layout than its weight's: a copy each)."""
    alike = [a.stride() == b.stride() for a, b in zip(dst, src, strict=True)]
    for same in (True, False):
        which = [i for i, x in enumerate(alike) if x == same]
        if which:
            torch._foreach_copy_([dst[i] for i in which], [src[i] for i in which])


@contextlib.contextmanager
def cast_once(plan: CastPlan, dtype):
    """Within the block, compute_weight and cast_copy give the tensors of `plan`, made by CastOnce
    from the weights (fp32 all: else there is nothing to do, and autocast casts what it casts)."""
    weights = plan.weights()
    if any(w.dtype != torch.float32 for w in weights):
        yield
        return
    _cast_once.update(zip(plan.keys, CastOnce.apply(plan, dtype, *weights), strict=True))
    try:
        yield
    finally:
        _cast_once.clear()


class Block(nn.Module):
    """One decoder layer: x + attention(norm(x)), then + feed_forward(norm(x)) (MoE or dense SwiGLU)."""

    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.self_attn = Attention(args, layer)
        self.is_moe = args.is_moe_layer(layer)
        self.feed_forward = MoE(args) if self.is_moe else FeedForward(args.dim, args.mlp_dim)
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, pos, rope, cache=None, default_pos=False):
        """x (B, T, dim) -> (B, T, dim), and the MoE layer's Routing (None on a dense layer)."""
        x = x + self.self_attn(to_compute_dtype(self.input_layernorm(x)), pos, rope, cache, default_pos)
        normed = self.post_attention_layernorm(x)  # (B, T, dim) in the residual stream's dtype
        h = to_compute_dtype(normed)
        if self.is_moe:  # (the router reads the normed x as it is: fp32 under autocast)
            y, routing = self.feed_forward(h, decoding=cache is not None, router_input=normed)
            return x + y, routing
        return x + self.feed_forward(h), None


def recomputed_layers(setting: int, n_layers: int) -> int:
    """How many decoder layers, the first ones, activation checkpointing recomputes under
    --grad_checkpoint_layers `setting` (0: all n_layers)."""
    return setting or n_layers


def checkpoint_layer(layer: Block, x, positions, rope, default_pos: bool, reentrant: bool):
    """layer(x, ...) with its activations recomputed in backward rather than kept (activation
    checkpointing): (x, Routing or None). Eager, by torch's reentrant checkpoint: its forward runs
    without gradients, its backward runs the layer again and backward through it. The non-reentrant
    one keeps the graph and hooks every tensor the layer saves for backward (about 50 a MoE layer,
    three Python calls each: packed, recomputed, unpacked); at a shape where the host is the bound
    (as in an eager step on a GPU), a checkpointed training step took 1.41-1.46x the time of one
    that keeps its activations, against 1.13-1.21x reentrant (docs/performance.md). The
    non-reentrant one where the reentrant cannot serve: compiled (the compiler takes the
    non-reentrant one as its own), under DDP (Llama4.reentrant_checkpoint), or for an input without
    gradients (frozen embeddings: the reentrant one would give the layer's weights none)."""
    if not reentrant:
        return checkpoint(layer, x, positions, rope, None, default_pos, use_reentrant=False)

    def run(x):  # outputs flat, tensors only (the reentrant one is an autograd Function)
        y, routing = layer(x, positions, rope, None, default_pos)
        return (y,) if routing is None else (y, *routing)

    out = checkpoint(run, x, use_reentrant=True)
    return out[0], (Routing(*out[1:]) if len(out) > 1 else None)


def run_layer(layer: Block, x, positions, rope, default_pos: bool):
    """layer(x, ...) without a KV cache: the function a regionally compiled model compiles for its
    layers (Regions.layer), one graph for all layers of a kind."""
    return layer(x, positions, rope, None, default_pos)


class Regions(NamedTuple):
    """The compiled functions a regionally compiled model (runtime.RegionalModel) runs: a training
    or evaluation forward calls `layer` (run_layer compiled) on each decoder layer, or
    `checkpointed` (checkpoint_layer compiled) under --grad_checkpoint, then `head` (Llama4._head
    compiled) once; the embedding and the RoPE tables run eagerly (a dozen ops)."""
    layer: object
    checkpointed: object
    head: object


@dataclass
class Output:
    logits: torch.Tensor | None  # (B, T, V), (B, 1, V) with last_only, None with a fused loss
    loss: torch.Tensor | None = None  # lm_loss + aux coef * aux_loss + z coef * z_loss
    lm_loss: torch.Tensor | None = None  # mean cross-entropy over real targets (target >= 0)
    aux_loss: torch.Tensor | None = None  # load-balancing loss, mean over MoE layers
    z_loss: torch.Tensor | None = None  # router z-loss, mean over MoE layers
    router_entropy: torch.Tensor | None = None  # (L_moe,) mean router entropy per MoE layer
    # (aux_loss, z_loss, router_entropy: training mode only; eval() is HF's model, nothing added)
    expert_counts: torch.Tensor | None = None  # (L_moe, E) assignments (top_k per token, padding too)


class Llama4(nn.Module):
    """The text decoder: Llama4ForCausalLM's modules, under its names less their `model.` prefix.
    With args.vision, the vision stub beside it: Llama4ForConditionalGeneration's vision_model and
    multi_modal_projector. forward returns an Output: the logits, and the losses given targets."""

    # "fused": with targets, linear_cross_entropy (the loss alone, no logits returned);
    # "reference": lm_head, then F.cross_entropy on the fp32 logits (tests hold them equal).
    loss_impl = "fused"
    # an eager training forward under autocast on CUDA casts the weights autocast would cast all at
    # once (weights_cast_once); off under DDP (runtime.data_parallel), whose gradient buckets would
    # then all be ready at the end of backward, with no communication overlapping it
    cast_weights_once = True
    # an eager checkpointed layer is recomputed by torch's reentrant checkpoint (checkpoint_layer);
    # off under DDP (runtime.data_parallel), whose unused-parameter search cannot see into it. The
    # reentrant one takes loss.backward() only: torch.autograd.grad or backward(inputs=...) through
    # a checkpointing model want it off
    reentrant_checkpoint = True

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_frequencies(args), persistent=False)
        if args.vision:
            self.vision_model = VisionModel(args)
            self.multi_modal_projector = Projector(args)
        self.grad_checkpoint = False
        self.grad_checkpoint_layers = 0  # recompute only the first N layers under grad_checkpoint (0 = all)
        self.cast_plans = {}  # (device, dtype, the MoE layers' impl) -> weights_cast_once's CastPlan
        init_weights(self)

    def forward(self, tokens, targets=None, *, images=None, image_mask=None, positions=None, cache=None,
                last_only=False, regions: "Regions | None" = None) -> Output:
        """tokens (B, T) ids; targets (B, T) next-token ids, -1 = ignore; images (N, 3, S, S) in
        the order of their <|patch|> tokens; image_mask (B, T) bool: the tokens the images fill
        (default: every <|patch|>); positions (B, T), -1 = padding (default: counting on from the
        cache, or from 0); cache: a KVCache to write this call's keys into and read; last_only: the
        last position's logits alone, (B, 1, V). Given targets (loss_impl "fused"), no logits.
        regions: the compiled layer and head to run (runtime.RegionalModel passes them; no cache)."""
        if last_only and targets is not None:
            raise ValueError("last_only computes one position's logits; it cannot take targets")
        if regions is not None and cache is not None:
            raise ValueError("a regionally compiled model does not decode; pass the cache to the model")
        self._check_input(tokens, targets, cache)
        with self.weights_cast_once(cache) if regions is None else contextlib.nullcontext():
            return self._forward(tokens, targets, images, image_mask, positions, cache, last_only, regions)

    def _forward(self, tokens, targets, images, image_mask, positions, cache, last_only, regions) -> Output:
        B, T = tokens.shape
        x = self.embed_tokens(tokens)  # (B, T, dim)
        x = self._merge_images(tokens, x, images, image_mask)
        default_pos = positions is None and cache is None
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)  # (B, T)
            if cache is not None:  # each row counts on from its own next position
                positions = positions + cache.next_pos[:, None]
        if cache is not None:  # in place, on the device: no host read, a CUDA graph can hold it
            cache.next_pos.copy_(positions.max(dim=1).values + 1)
            if not torch.compiler.is_compiling():
                cache.seen += T
        freqs = positions.clamp(min=0).float()[..., None] * self.inv_freq  # (B, T, D/2)
        rope = rope_tables(freqs.cos()[:, :, None, :], freqs.sin()[:, :, None, :])  # (B, T, 1, D) each

        step = cache.step(positions) if cache is not None else None  # write slots, masks: once

        routing = []
        recomputed = recomputed_layers(self.grad_checkpoint_layers, len(self.layers))
        for i, layer in enumerate(self.layers):
            if self.checkpointing() and step is None and i < recomputed:
                if regions is not None:  # (compiled, as the whole model compiles it: non-reentrant)
                    x, r = regions.checkpointed(layer, x, positions, rope, default_pos, False)
                else:
                    reentrant = (self.reentrant_checkpoint and x.requires_grad
                                 and not torch.compiler.is_compiling())
                    x, r = checkpoint_layer(layer, x, positions, rope, default_pos, reentrant)
            elif regions is not None:
                x, r = regions.layer(layer, x, positions, rope, default_pos)
            else:
                x, r = layer(x, positions, rope, step, default_pos)
            if r is not None:
                routing.append(r)
        head = regions.head if regions is not None else Llama4._head
        return head(self, x, routing, targets, last_only)

    def _head(self, x, routing: list, targets, last_only: bool) -> Output:
        """The final norm of the last layer's x (B, T, dim), then the logits or the loss against
        targets, and the router losses and counts of the MoE layers' `routing`."""
        x = self.norm(x)
        if last_only:
            x = x[:, -1:]  # (B, 1, dim)
        fused = targets is not None and self.loss_impl == "fused"
        out = Output(logits=None if fused else few_row_logits(x, self.lm_head))
        if routing:
            out.expert_counts = group_sizes(torch.stack([r.ends for r in routing]))  # (L_moe, E)
            if self.training:  # all MoE layers at once: (L_moe, N, E) logits
                aux, z, out.router_entropy = router_stats(
                    torch.stack([r.logits for r in routing]), out.expert_counts, self.args.top_k,
                    z_grad=self.args.router_z_loss_coef != 0)
                out.aux_loss, out.z_loss = aux.mean(), z.mean()
        if targets is not None:
            self._add_loss(out, x, targets, fused)
        return out

    def weights_cast_once(self, cache=None, whole_pass: bool = False):
        """A context in which, for an eager training forward under autocast on CUDA (gradients on,
        no KV cache, fp32 weights), the weights autocast casts for its matmuls (attention's, the
        feed forwards' and experts', the output layer's: not the router's, norms' or embedding's)
        are their compute-dtype copies, all made by one CastOnce (this model's CastPlan, built
        once): two or three ops each way where autocast casts each weight and backward casts each
        gradient back (a scout-128m step at batch 1: 996 aten ops, 1,100 before; eager on a GPU is
        bound by launching them). The same values and gradients. `whole_pass`: for the forwards of
        an evaluation, around all its batches (train.evaluate), as autocast's own cache lasts for a
        pass; a forward without gradients otherwise casts per use. Not when compiling (the compiler
        fuses the casts), decoding (it would copy every weight at each token), under DDP
        (cast_weights_once) or in a checkpointed training forward (the bf16 gradients of every
        weight, all held until the last, would add to the peak it lowered, 25% at batch 32; its
        recomputation casts again): a checkpointing model's evaluations still cast at once."""
        device = self.lm_head.weight.device
        kind = device.type
        if not (kind in CAST_ONCE_DEVICES and self.cast_weights_once and not self.checkpointing()
                and cache is None and (torch.is_grad_enabled() or whole_pass)
                and torch.is_autocast_enabled(kind) and not torch.compiler.is_compiling() and not _cast_once):
            return contextlib.nullcontext()
        dtype = torch.get_autocast_dtype(kind)
        key = (device, dtype, tuple(getattr(layer.feed_forward, "impl", None) for layer in self.layers))
        if (plan := self.cast_plans.get(key)) is None:  # (a MoE's impl changes what it reads)
            plan = self.cast_plans[key] = CastPlan()
            for layer in self.layers:
                layer.self_attn.plan_cast(plan)
                layer.feed_forward.plan_cast(plan)
            plan.weight(self.lm_head)
        return cast_once(plan, dtype)

    def _add_loss(self, out: Output, x, targets, fused: bool):
        """Set out.lm_loss, the mean cross-entropy of the normed x (B, T, dim) against targets
        (B, T), and out.loss, which adds the router losses' weighted share where there are some."""
        if fused:  # x (B, T, dim) -> (B*T, dim), targets (B, T) -> (B*T,)
            weight = compute_weight(self.lm_head)  # (V, dim)
            out.lm_loss = linear_cross_entropy(x.flatten(0, 1), weight, targets.flatten())
        else:  # logits (B, T, V) -> (B*T, V)
            out.lm_loss = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(),
                                          ignore_index=-1)
        out.loss = out.lm_loss
        if out.aux_loss is not None:
            out.loss = out.loss + self.args.router_aux_loss_coef * out.aux_loss
            if self.args.router_z_loss_coef:  # off by default: no backward through it then
                out.loss = out.loss + self.args.router_z_loss_coef * out.z_loss

    def _check_input(self, tokens, targets, cache):
        """Lengths always; token ids only where reading them costs nothing that matters: not with
        targets or in training (train.py checks each token shard once when it opens it, and its
        training and evaluation pass targets) and not in decoding steps after the first (the
        tokens are the model's own choices), where it would make the host wait for the device at
        every call."""
        compiling = torch.compiler.is_compiling()  # a compiled step reads no host counter
        seen, padding = (cache.seen, cache.padding) if cache is not None and not compiling else (0, 0)
        total = tokens.shape[1] + seen - padding  # the most padded (shortest) row's tokens
        if total > self.args.max_seq_len:
            raise ValueError(f"sequence of {total} tokens is longer than max_seq_len="
                             f"{self.args.max_seq_len}; shorten the input or raise --max_seq_len")
        if cache is not None and total > cache.length:
            raise ValueError(f"sequence of {total} tokens is longer than the KV cache "
                             f"({cache.length} positions); build the cache longer")
        decoding = seen > 0
        if not (self.training or targets is not None or decoding or compiling):
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.args.vocab_size:
                raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary "
                                 f"[0, {self.args.vocab_size}); the tokenizer and the model disagree")

    def _merge_images(self, tokens, x, images, image_mask=None):
        """Image features replace, in order, the embeddings of the <|patch|> tokens (or of those
        image_mask marks)."""
        if images is None:
            return x
        is_patch = tokens == self.args.patch_id if image_mask is None else image_mask
        if not self.args.vision:
            raise ValueError("images given to a model without the vision stub; build it with --vision")
        feats = self.image_features(images)  # (N_images * image_tokens, dim)
        n = int(is_patch.sum())
        if n != feats.shape[0]:
            raise ValueError(f"{n} <|patch|> tokens for {images.shape[0]} image(s) of "
                             f"{self.args.image_tokens} features each; put {self.args.image_tokens} "
                             "<|patch|> tokens per image in the prompt")
        return x.masked_scatter(is_patch[..., None], feats.to(x.dtype))

    def image_features(self, images):
        """(N, 3, S, S) pixels -> (N * image_tokens, dim) features in the text model's space."""
        return self.multi_modal_projector(self.vision_model(images)).flatten(0, 1)

    def set_grad_checkpointing(self, enabled: bool, layers: int = 0):
        """Activation checkpointing of every decoder layer, or (`layers` > 0) of the first `layers`
        alone: each layer recomputed saves about as much step memory and costs about as much time
        (Megatron-LM's --recompute-num-layers, its "block" method)."""
        self.grad_checkpoint, self.grad_checkpoint_layers = enabled, layers

    def checkpointing(self) -> bool:
        """Whether a forward now checkpoints its layers: grad_checkpoint set, in training, gradients
        on (and no KV cache: _forward checks that)."""
        return self.grad_checkpoint and self.training and torch.is_grad_enabled()

    def reset_buffers(self, device=None):
        """Recompute the RoPE tables in fp32 and the MoE layers' expert ids (after building on meta,
        or casting to bf16)."""
        device = device or self.embed_tokens.weight.device
        self.inv_freq = rope_frequencies(self.args).to(device)
        if self.args.vision:
            cos, sin = vision_rope(self.args)
            self.vision_model.rope_cos, self.vision_model.rope_sin = cos.to(device), sin.to(device)
        for m in self.modules():
            if isinstance(m, MoE):
                m.expert_ids = m.expert_keys(torch.arange(m.n_experts, device=device))
        return self


# ---------------------------------------------------------------------------------------------
# The vision stub (Llama4VisionModel + Llama4MultiModalProjector, same names and shapes)


def vision_rope(args: ModelArgs):
    """2D RoPE for the patch grid: the first half of each head's pairs rotate with the column
    (x + 1), the second half with the row (y + 1); the class token (last) is not rotated.
    Returns cos, sin of shape (P + 1, 1, Dv/2)."""
    g = args.image_size // args.patch_size
    Dv = args.vision_dim // args.vision_heads
    idx = torch.arange(g * g)
    f = 1.0 / (args.vision_rope_theta ** (torch.arange(0, Dv // 2, 2).float() / (Dv // 2)))  # (Dv/4,)
    angles = torch.cat([((idx % g) + 1)[:, None] * f, ((idx // g) + 1)[:, None] * f], dim=-1)  # (P, Dv/2)
    angles = torch.cat([angles, torch.zeros(1, Dv // 2)])  # (P + 1, Dv/2)
    return angles.cos()[:, None, :], angles.sin()[:, None, :]


class VisionAttention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.head_dim = args.vision_heads, args.vision_dim // args.vision_heads
        self.q_proj = nn.Linear(args.vision_dim, args.vision_dim)
        self.k_proj = nn.Linear(args.vision_dim, args.vision_dim)
        self.v_proj = nn.Linear(args.vision_dim, args.vision_dim)
        self.o_proj = nn.Linear(args.vision_dim, args.vision_dim)

    def forward(self, x, rope):
        B, P, _ = x.shape
        q = self.q_proj(x).view(B, P, self.n_heads, self.head_dim)  # (B, P, H*D) -> (B, P, H, D)
        k = self.k_proj(x).view(B, P, self.n_heads, self.head_dim)  # (B, P, H, D)
        v = self.v_proj(x).view(B, P, self.n_heads, self.head_dim)  # (B, P, H, D)
        q, k = apply_rope(q, *rope).to(v.dtype), apply_rope(k, *rope).to(v.dtype)
        # (B, H, P, D) each; bidirectional
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(y.transpose(1, 2).reshape(B, P, -1))  # (B, H, P, D) -> (B, P, H*D)


class VisionMLP(nn.Module):
    def __init__(self, d_in, d_hidden, d_out, bias, gelu_out=False):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden, bias=bias)
        self.fc2 = nn.Linear(d_hidden, d_out, bias=bias)
        self.gelu_out = gelu_out

    def forward(self, x):
        x = self.fc2(F.gelu(self.fc1(x)))
        return F.gelu(x) if self.gelu_out else x


class VisionLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(args.vision_dim)
        self.self_attn = VisionAttention(args)
        self.post_attention_layernorm = nn.LayerNorm(args.vision_dim)
        self.mlp = VisionMLP(args.vision_dim, args.vision_mlp_dim, args.vision_dim, bias=True)

    def forward(self, x, rope):
        x = x + self.self_attn(self.input_layernorm(x), rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class PatchEmbedding(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.patch_size = args.patch_size
        self.linear = nn.Linear(3 * args.patch_size**2, args.vision_dim, bias=False)

    def forward(self, images):
        patches = F.unfold(images, kernel_size=self.patch_size, stride=self.patch_size)  # (N, 3p^2, P)
        return self.linear(patches.transpose(1, 2))  # (N, P, Hv)


class VisionEncoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(args) for _ in range(args.vision_layers))


class PixelShuffleAdapter(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.ratio = args.pixel_shuffle_ratio
        # its input is the shuffled width vision_dim / ratio^2, which HF's config (and ours) holds in
        # vision_mlp_dim (intermediate_size); ModelArgs checks that they are equal
        self.mlp = VisionMLP(args.vision_mlp_dim, args.projector_input_dim, args.projector_output_dim,
                             bias=False, gelu_out=True)

    def forward(self, x):
        return self.mlp(pixel_shuffle(x, self.ratio))


def pixel_shuffle(x, ratio):
    """(N, g*g, C) -> (N, (g*r)^2, C/r^2): each output token concatenates an s x s block of
    patches (s = 1/r), row by row: for r = 0.5, token (i, j) is patches (2i, 2j), (2i, 2j+1),
    (2i+1, 2j), (2i+1, 2j+1) of the g x g grid, as in transformers' pixel_shuffle."""
    N, P, C = x.shape
    g, s = math.isqrt(P), round(1 / ratio)
    x = x.view(N, g // s, s, g // s, s, C)  # (N, row block, dr, col block, dc, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (N, row block, col block, dr, dc, C)
    return x.reshape(N, (g // s) ** 2, s * s * C)  # (N, (g/s)^2 tokens, s*s*C: the block's patches)


class VisionModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        n_patches = (args.image_size // args.patch_size) ** 2
        self.patch_embedding = PatchEmbedding(args)
        self.class_embedding = nn.Parameter(torch.empty(args.vision_dim))
        self.positional_embedding_vlm = nn.Parameter(torch.empty(n_patches + 1, args.vision_dim))
        self.layernorm_pre = nn.LayerNorm(args.vision_dim)
        self.layernorm_post = nn.LayerNorm(args.vision_dim)
        self.model = VisionEncoder(args)
        self.vision_adapter = PixelShuffleAdapter(args)
        cos, sin = vision_rope(args)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, images):
        """(N, 3, S, S) -> (N, image_tokens, projector_output_dim)."""
        x = self.patch_embedding(images)  # (N, P, Hv)
        x = torch.cat([x, self.class_embedding.expand(x.shape[0], 1, -1)], dim=1)  # (N, P+1, Hv), class last
        x = self.layernorm_pre(x + self.positional_embedding_vlm)
        rope = rope_tables(self.rope_cos, self.rope_sin)  # (P + 1, 1, Dv) each
        for layer in self.model.layers:
            x = layer(x, rope)
        x = self.layernorm_post(x)[:, :-1]  # (N, P, Hv): the class token dropped
        return self.vision_adapter(x)


class Projector(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.linear_1 = nn.Linear(args.projector_output_dim, args.dim, bias=False)

    def forward(self, x):
        return self.linear_1(x)


# ---------------------------------------------------------------------------------------------
# The loss: cross-entropy through the output layer, without the (N, V) logits

LOSS_CHUNK = 2 ** 25  # logits per chunk: 128 MB in fp32 (1,024 rows of a 32768-token vocabulary),
# held twice for a moment (the fp32 logits and their log-softmax)

# where torch.mm takes out_dtype (an fp32 product of bf16 operands): CUDA, from torch 2.8
FP32_OUT_DEVICES = ("cuda",) if hasattr(torch.ops.aten.mm, "dtype") else ()


def fp32_out_gemm(x: torch.Tensor) -> bool:
    """Whether the loss's GEMMs on x (bf16 or fp16) write their fp32 products directly (torch.mm's
    out_dtype: one cuBLAS GEMM, which accumulates in fp32 anyway; CUDA only in torch 2.11-2.13)
    rather than round them to x's dtype and cast them back. Not under torch.compile, which fuses
    that cast into the next kernel itself."""
    return (x.device.type in FP32_OUT_DEVICES and x.dtype in (torch.bfloat16, torch.float16)
            and not torch.compiler.is_compiling())


def mm_fp32(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor | None = None, direct: bool = False):
    """a @ b in fp32, added to acc (fp32, in place) where given. With `direct` (fp32_out_gemm) the
    GEMM writes fp32; otherwise its product in a and b's dtype is cast to fp32, a pass more over
    it (unvectorised on CUDA). The direct product is the more precise: not rounded to bf16 first.
    (Not addmm's out_dtype, which would add acc in the GEMM: torch 2.11's meta kernel for it,
    which fake tensors run, takes the dtype for addmm's beta.)"""
    out = torch.mm(a, b, out_dtype=torch.float32) if direct else torch.mm(a, b).float()
    return out if acc is None else acc.add_(out)


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of x @ weight.T against targets (-1 = ignore), and its gradients,
    chunk by chunk: a chunk's logits (c, V) live only inside the loop, and its gradient
    (softmax - one-hot) is taken there too, so the backward pass only scales the saved gradients.
    The full (N, V) logits, their fp32 copy and their log-softmax are never in memory.
    Without gradients (evaluation) the loop computes the loss alone.
    (The idea of Liger-Kernel's fused linear cross-entropy; plain PyTorch ops here.)
    Eager mode on a GPU launches each op of the loop once per chunk (32 chunks a step of
    scout-128m at batch 128), so the loop holds only what needs the chunk's logits: the target
    mask, the clamped targets and the sum are taken once, over all rows."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_rows: int, with_grad: bool):
        # x (N, D) and weight (V, D) in one dtype (the compute dtype), targets (N,)
        ignored = targets < 0  # (N,)
        t = targets.clamp(min=0)  # (N,)
        if with_grad:
            grad_x, grad_w = torch.empty_like(x), None  # grad_w: (V, D), fp32 sum
            # ignored rows add no weight gradient: x's rows zeroed once (an (N, D) copy for the loss's
            # time), not a chunk's at each chunk
            kept_x = x.masked_fill(ignored[:, None], 0)  # (N, D)
        direct = fp32_out_gemm(x)  # eager CUDA: GEMMs that write fp32 (no cast of logits or grad_w)
        whole = torch.arange(min(chunk_rows, x.shape[0]), device=x.device)  # (c,) a whole chunk's rows
        target_lps = []
        for i in range(0, x.shape[0], chunk_rows):
            xc, tc = x[i:i + chunk_rows], t[i:i + chunk_rows]  # (c, D), (c,)
            # (the last, partial chunk its own arange: one arange sliced failed to compile in torch
            # 2.11 at a second shape)
            rc = whole if len(tc) == len(whole) else torch.arange(len(tc), device=x.device)  # (c,)
            log_probs = mm_fp32(xc, weight.t(), direct=direct).log_softmax(-1)  # (c, V) fp32
            target_lp = log_probs[rc, tc]  # (c,)
            target_lps.append(target_lp)
            if not with_grad:
                continue
            # d(total)/d(logits) = softmax - one-hot, in the compute dtype; the target column is
            # p_t - 1 from fp32 (expm1), rounded once: a bf16 p_t, then - 1, would zero the
            # gradient of every token predicted with p_t > 0.998
            if direct:  # exp in fp32 written in bf16: one pass (on the CPU it is twice the time of two)
                g = torch.exp(log_probs, out=torch.empty_like(log_probs, dtype=x.dtype))  # softmax (c, V)
            else:
                g = log_probs.exp_().to(x.dtype)  # softmax (c, V), in place of the log-probabilities
            g[rc, tc] = torch.expm1(target_lp).to(g.dtype)  # (an index_put: a bf16 scatter is slow on CPU)
            torch.mm(g, weight, out=grad_x[i:i + chunk_rows])  # (c, D)
            grad_w = mm_fp32(g.t(), kept_x[i:i + chunk_rows], grad_w, direct)  # (V, D) fp32
        # (out of place: under torch.compile, torch 2.11 loses the gradient of an output that was
        # updated in place, and every gradient through the loss came out 0)
        total = -torch.cat(target_lps or [x.new_zeros(0, dtype=torch.float32)]).masked_fill(ignored, 0).sum()
        if with_grad:
            ctx.save_for_backward(grad_x.masked_fill_(ignored[:, None], 0), grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_total.to(grad_x.dtype), grad_w * grad_total.to(grad_w.dtype), None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of x @ weight.T (x (N, D), weight (V, D)) over targets >= 0, the same
    value and gradients as F.cross_entropy(F.linear(x, weight).float(), targets, ignore_index=-1)
    under the same autocast (tests/test_model.py), in chunks of LOSS_CHUNK logits. Two edges
    differ: with no target >= 0 it is 0 (F.cross_entropy gives NaN), and every negative target
    is skipped (F.cross_entropy skips only -1)."""
    kind = x.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
    with_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    with torch.autocast(kind, enabled=False):  # cast once here, not per chunk
        total = LinearCrossEntropy.apply(x.to(dtype), weight.to(dtype), targets,
                                         max(1, LOSS_CHUNK // weight.shape[0]), with_grad)
    return total / (targets >= 0).sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------
# Generation: the static KV cache, and the logits of a few rows


class KVCache:
    """Keys and values of every layer for generation: static, allocated once, indexed by position.

    Layer i keeps k[i], v[i] of shape (B, Hkv, S + 1, D). The token at position p of row b is
    written at slot p, whatever padding came before it, so every row's cache is aligned by
    position and left padding needs no special case when decoding. Slot S is scratch: padding
    tokens (position -1) are written there and no live query sees it. Writes are scatters and
    attention reads all S + 1 slots under a mask (slots and masks are built once per forward
    call, in its CacheStep), so a decoding step keeps its shapes and never reads the device from
    the host: what torch.compile and CUDA graphs need (mark_static() tells the compiler the
    tensors keep their addresses, as transformers' StaticCache does).

    Positions must count 0, 1, 2, ... from each row's first real token, padding only on the left
    (what sample.left_pad makes), so that no position is beyond the columns fed so far.
    `next_pos` (B,), on the device, is the position the next token of each row takes. `seen`
    counts the columns fed by eager calls (padding included), for the length check; a compiled
    step leaves it alone (a host counter would recompile the step at every token), so whoever
    runs compiled steps bounds them by `length` (sample.generate does). `padding` is the left
    padding of the most padded row (whoever pads sets it): the length check counts that row's
    tokens, seen - padding, the fewest. The other rows reach the end sooner; a position past the
    end is written to the scratch slot, and its row's output means nothing from then on: the
    caller no longer reads it (sample.generate cuts each row at its own context limit).
    """

    def __init__(self, args: ModelArgs, batch_size: int, length: int | None = None, device=None,
                 dtype=torch.float32):
        self.length = length or args.max_seq_len  # S: positions 0 .. S - 1
        shape = (batch_size, args.n_kv_heads, self.length + 1, args.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.seen = 0
        self.padding = 0

    def mark_static(self):
        """For torch.compile: the tensors keep their addresses from call to call, so a CUDA graph
        reads and writes them in place (imports torch._dynamo, a second or so: only when compiling)."""
        for t in [*self.k, *self.v, self.next_pos]:
            torch._dynamo.mark_static_address(t)
        return self

    def step(self, pos) -> "CacheStep":
        """This forward call's use of the cache, for its tokens at positions `pos` (B, T), after
        `seen` counts them. A compiled call reads all S + 1 slots (fixed shapes); an eager one only
        the first `seen`, which hold every position written so far (the rest are masked anyway)."""
        n = self.length + 1 if torch.compiler.is_compiling() else min(self.seen, self.length + 1)
        return CacheStep(self, pos, n)


class CacheStep:
    """One forward call's use of a KVCache, shared by all its layers: the slots its tokens go to
    and, per layer type (chunked or not), the mask of the first n slots its queries see, each
    built once per call rather than once per layer."""

    def __init__(self, cache: KVCache, pos, n: int):
        self.cache, self.pos, self.n = cache, pos, n
        # (B, T): padding, and a stopped row's positions past the end, to the scratch slot
        self.slot = pos.masked_fill((pos < 0) | (pos >= cache.length), cache.length)
        self.masks = {}

    def update(self, i, k, v):
        """Write layer i's keys and values (B, Hkv, T, D) at this call's slots; return the layer's
        keys and values in the first n slots, (B, Hkv, n, D) each."""
        K, V = self.cache.k[i], self.cache.v[i]
        index = self.slot[:, None, :, None].expand_as(k)  # (B, Hkv, T, D): slot of each key
        K.scatter_(2, index, k.to(K.dtype))
        V.scatter_(2, index, v.to(V.dtype))
        return K[:, :, :self.n], V[:, :, :self.n]

    def mask(self, chunk_size):
        """(B, 1, T, n), additive: 0 where a query sees a slot (slot s holds position s; the scratch
        slot, position S, is beyond every query), -inf elsewhere; in the cache's dtype, so that
        attention does not convert a boolean mask in every layer. (A stopped row's queries past the
        end write to the scratch slot; on a chunked layer they may see no slot at all: a row whose
        output, NaN on some backends and zeros on others, is never read.)"""
        if chunk_size not in self.masks:
            slots = torch.arange(self.n, device=self.pos.device)[None]  # (1, n)
            allowed = attention_mask(self.pos, slots, chunk_size)
            zeros = torch.zeros(allowed.shape, dtype=self.cache.k[0].dtype, device=allowed.device)
            self.masks[chunk_size] = zeros.masked_fill(~allowed, float("-inf"))
        return self.masks[chunk_size]


FEW_ROWS = 16  # up to this many rows, CPU logits without gradients go through few_row_logits' path


def few_row_logits(x: torch.Tensor, lm_head: nn.Linear) -> torch.Tensor:
    """lm_head(x); on the CPU, for at most FEW_ROWS rows without gradients (decoding), computed as
    weight @ x.T, which oneDNN runs 2.5-6x faster there for a weight this large (measured on 2
    cores: 1.7 ms against 5.8 for one row, 4 against 10 for eight). A row alone goes as two: one
    row takes a matrix-vector path as slow as F.linear's. The values are F.linear's up to rounding.
    x (..., D) -> (..., V)."""
    rows = x.reshape(-1, x.shape[-1])  # (N, D)
    n = rows.shape[0]
    if x.device.type != "cpu" or n > FEW_ROWS or (torch.is_grad_enabled() and x.requires_grad):
        return linear(x, lm_head)
    both = torch.cat([rows, rows]) if n == 1 else rows  # (max(N, 2), D)
    return (lm_head.weight @ both.t()).t()[:n].reshape(*x.shape[:-1], -1)  # (N, V) -> (..., V)


# ---------------------------------------------------------------------------------------------
# Initialisation


ROUTER_NOISE_INIT = 0.01  # initial noise std: routing starts almost noise-free


@torch.no_grad()
def init_weights(model: Llama4):
    """The one weight init: N(0, init_std) for every linear, embedding, router and expert weight,
    as transformers does; norms at 1, biases at 0; the vision class and position embeddings
    N(0, vision_dim^-0.5), as HF. One deviation, outside HF's model: the router noise projection
    starts at zero weight and a bias giving noise std ROUTER_NOISE_INIT."""
    std = model.args.init_std
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, Experts):
            nn.init.normal_(m.gate_up_proj, 0.0, std)
            nn.init.normal_(m.down_proj, 0.0, std)
        elif isinstance(m, (RMSNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, VisionModel):
            scale = m.class_embedding.shape[0] ** -0.5
            nn.init.normal_(m.class_embedding, 0.0, scale)
            nn.init.normal_(m.positional_embedding_vlm, 0.0, scale)
    for m in model.modules():  # after the generic pass, which also visited these Linears
        if isinstance(m, MoE) and m.router_noise is not None:
            nn.init.zeros_(m.router_noise.weight)
            nn.init.constant_(m.router_noise.bias, math.log(math.expm1(ROUTER_NOISE_INIT)))


def build_from_state(args: ModelArgs, state: dict, device="cpu") -> Llama4:
    """A model holding `state` (tensors already on `device`), built on the meta device so no
    random initialisation is computed and thrown away."""
    with torch.device("meta"):
        model = Llama4(args)
    model.load_state_dict(state, strict=True, assign=True)
    return model.reset_buffers(device)  # the non-persistent buffers are still on the meta device


def weight_decayed(name: str, p: nn.Parameter) -> bool:
    """Whether AdamW decays a parameter (the first of train.make_optimizer's two groups): matrices, not
    norms, biases, nor the router noise projection, which sets the noise scale (decaying it would push
    the noise to a constant, not to zero)."""
    return p.dim() >= 2 and ".router_noise." not in name


# ---------------------------------------------------------------------------------------------
# Parameter counts


def count_parameters(model: Llama4) -> dict:
    """Total, active per token (routed experts count top_k / n_experts), embedding and the rest.
    Works on the meta device."""
    args = model.args
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for m in model.modules() if isinstance(m, Experts) for p in m.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters()
                 if n.startswith(("vision_model.", "multi_modal_projector.")))
    noise = sum(p.numel() for m in model.modules() if isinstance(m, MoE) and m.router_noise is not None
                for p in m.router_noise.parameters())
    embedding = model.embed_tokens.weight.numel()
    return {
        "total": total,
        "text": total - vision,
        "vision": vision,
        "embedding": embedding,
        "non_embedding": total - embedding,
        "routed_experts": routed,
        "router_noise": noise,
        "active_per_token": total - vision - routed + routed * args.top_k // args.n_experts,
    }


def summed_over_layers(args: ModelArgs, measure) -> dict:
    """measure(model), a dict of counts that add up over a model's modules (parameters by kind,
    count_parameters), for the model `args` describes, without building its layers: layers differ
    in their parameters only by their feed-forward (MoE or dense; a NoPE layer's QK norm has no
    weight), so three models of one or two layers, on the meta device, give what lies outside the
    layers and what each kind of layer holds, and the whole is their sum over the layers. Any
    n_layers answers at once (built layer by layer, --n_layers 2000000000 took hours)."""
    def measured(n_layers, moe_every):
        with torch.device("meta"):
            return measure(Llama4(replace(args, n_layers=n_layers, moe_every=moe_every)))

    one_moe, one_dense, two_moe = measured(1, 1), measured(1, 2), measured(2, 1)
    n_moe = args.n_moe_layers
    out = {}
    for k in one_moe | one_dense | two_moe:
        moe = two_moe.get(k, 0) - one_moe.get(k, 0)  # one MoE layer
        outside = one_moe.get(k, 0) - moe  # embedding, final norm, lm_head, vision
        dense = one_dense.get(k, 0) - outside  # one dense layer
        out[k] = outside + n_moe * moe + (args.n_layers - n_moe) * dense
    return out


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token: 6 x active matmul parameters (embedding lookups, the RMSNorm
    weights, which multiply no matrix, and the router noise projection, a training extra outside
    HF's model, excluded) plus attention's score and value matmuls, 12 x heads x head_dim x mean
    keys per query over a window of seq_len tokens (causal: (seq_len + 1) / 2; on chunked layers
    the same within each aligned chunk, the window's last chunk possibly shorter). The matmul
    parameters are counted without building every layer (summed_over_layers): any n_layers
    answers at once."""
    def matmul(model):  # active matmul parameters
        counts = count_parameters(model)
        norms = sum(p.numel() for m in model.modules() if isinstance(m, RMSNorm) for p in m.parameters())
        return {"matmul": counts["active_per_token"] - counts["embedding"] - counts["router_noise"] - norms}

    n_nope = args.n_layers // args.nope_every  # layers nope_every - 1, 2 * nope_every - 1, ...

    def attn(span):  # one layer's attention matmuls per token, queries seeing 1..span keys per chunk
        full, rest = divmod(seq_len, span)
        keys = (full * span * (span + 1) + rest * (rest + 1)) / 2 / seq_len  # mean keys per query
        return 12 * args.n_heads * args.head_dim * keys
    return (6 * summed_over_layers(args, matmul)["matmul"]
            + (args.n_layers - n_nope) * attn(args.attn_chunk_size) + n_nope * attn(seq_len))
