"""What GPU speed rests on, held on a CPU: the model compiles whole (no graph break), and by
regions as train.py compiles it (one graph a kind of layer), and the compiled model trains exactly
like the eager one; a training step never waits for the device, and evaluation waits once, at its
end."""

import dataclasses
import json
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import Crash, WeightCasts, crash_after_saving, debug_args, host_syncs

import checkpoint
import runtime
import train
from model import Llama4
from runtime import World


def test_compiled_model_equals_eager_in_loss_and_every_gradient():
    """fullgraph=True: one graph for forward and backward, or an error. Router noise off (plain
    torch.compile draws its own random numbers: see the next test); balancing loss and z-loss on."""
    torch.manual_seed(0)
    model = Llama4(debug_args(router_noise=False, router_z_loss_coef=1e-3)).train()
    x = torch.randint(0, model.args.vocab_size, (2, model.args.max_seq_len))
    results = []
    for runner in [model, torch.compile(model, fullgraph=True)]:
        model.zero_grad()
        out = runner(x, targets=x)
        out.loss.backward()
        results.append((out.loss.detach(), out.expert_counts,
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, counts_a, grads_a), (loss_b, counts_b, grads_b) = results
    assert torch.equal(counts_a, counts_b)
    assert (loss_a - loss_b).abs() < 1e-5
    for name, g in grads_a.items():
        assert (g - grads_b[name]).abs().max() < 1e-5, name
    assert grads_a["layers.0.feed_forward.router.weight"].abs().max() > 1e-3  # the router learns


@pytest.mark.parametrize("checkpointing", ["none", "every layer", "the first layer"])
def test_a_compiled_run_draws_the_eager_router_noise(checkpointing):
    """train.py compiles with runtime.static_compile, by regions (each layer and the head), whose
    graphs draw the router noise from torch's generator as eager mode does: the same seed gives the
    same noise, loss and gradients (plain torch.compile's own random numbers gave a loss 1e-4 away
    here); with --grad_checkpoint too, where the compiled layers are recomputed by the non-reentrant
    checkpoint and the eager ones by the reentrant one; with --grad_checkpoint_layers 1, the first
    layer through the checkpointed region and the others through the plain one."""
    torch.manual_seed(0)
    model = Llama4(debug_args(router_noise=True)).train()
    model.set_grad_checkpointing(checkpointing != "none", 1 if checkpointing == "the first layer" else 0)
    x = torch.randint(0, model.args.vocab_size, (2, model.args.max_seq_len))
    results = []
    for runner in [model, runtime.static_compile(model)]:
        model.zero_grad()
        torch.manual_seed(5)
        out = runner(x, targets=x)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert (loss_a - loss_b).abs() < 1e-5
    for name, g in grads_a.items():
        assert (g - grads_b[name]).abs().max() < 1e-5, name
    assert grads_a["layers.0.feed_forward.router_noise.weight"].abs().max() > 0  # the noise was drawn


@pytest.mark.parametrize("shared_in_groups", [False, True])
def test_the_cuda_default_compiles_each_region_whole_under_bf16_autocast(monkeypatch, shared_in_groups):
    """What train.py runs on CUDA, on the CPU: the model compiled by regions (runtime.RegionalModel:
    each layer and the head), each with fullgraph=True, under bf16 autocast, the fused loss
    included (it casts once and turns autocast off inside), close to eager in loss and in every
    parameter's gradient (bf16 rounding: a few percent of each one's largest), the experts' too;
    and on CUDA's path, the shared expert in the experts' grouped GEMMs (model.SHARED_IN_GROUPS_DEVICES)
    and the eager step's weights cast at once (model.CAST_ONCE_DEVICES), which a compiled one leaves
    to the compiler."""
    import model as model_module
    if shared_in_groups:
        monkeypatch.setattr(model_module, "SHARED_IN_GROUPS_DEVICES", ("cpu",))
        monkeypatch.setattr(model_module, "CAST_ONCE_DEVICES", ("cpu",))
    torch.manual_seed(0)
    model = Llama4(debug_args(router_noise=False)).train()
    x = torch.randint(0, model.args.vocab_size, (2, 32))
    results = []
    for runner in [model, runtime.RegionalModel(model, dynamic=False, fullgraph=True)]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = runner(x, targets=x)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert (loss_a - loss_b).abs() < 1e-2
    for name, g in grads_a.items():
        assert g.abs().max() > 0 and (g - grads_b[name]).abs().max() < 5e-2 * g.abs().max(), name


def test_a_regionally_compiled_model_traces_each_kind_of_layer_once():
    """runtime.static_compile compiles a Llama4 by regions (runtime.RegionalModel): one graph for
    each kind of layer (RoPE or NoPE, MoE or dense) and one for the head, for training and for
    evaluation, whatever the number of layers: 12 layers compile the graphs 4 do, where the whole
    model compiled traces and lowers every layer again (scout-128m compiled 1.5-1.8x slower so:
    scripts/bench_compile.py). Bug caught: a layer's own attribute in its graph's
    guards (its index, say) compiles one graph a layer, and past torch's 8 a frame, runs eagerly."""
    from torch._dynamo.utils import counters

    def graphs(n_layers):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = Llama4(debug_args(n_layers=n_layers, moe_every=2)).train()
        compiled = runtime.static_compile(model)
        x = torch.randint(0, model.args.vocab_size, (2, 16))
        compiled(x, targets=x).loss.backward()
        training = counters["stats"]["unique_graphs"]
        model.eval()
        with torch.no_grad():
            compiled(x, targets=x)
        return training, counters["stats"]["unique_graphs"]
    # RoPE dense (layer 0), RoPE MoE (1), NoPE MoE (3), the head; again in evaluation
    assert graphs(12) == graphs(4) == (4, 8)


def test_regions_compiled_at_several_shapes_in_one_process_all_stay_compiled():
    """A region's code (run_layer, the head) is one for every RegionalModel of a process, and holds a
    graph for each kind of layer (up to 4) at each shape, mode and model, where the whole model's
    forward held one: torch's recompile limit (8 a code object) was met 4 times sooner.
    Bug caught: bench_model --compile_batches 1,2 (its MoE, dense and evaluation variants at two
    batches: 12 layer graphs) ran some "compiled" variants eagerly, one warning the only sign; here
    3 kinds of layer evaluated at 3 batch sizes (9 layer graphs) ran the last eagerly."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Llama4(debug_args(n_layers=4, moe_every=2)).eval()  # RoPE dense, RoPE MoE, NoPE MoE
    with torch._dynamo.config.patch(recompile_limit=8), torch.no_grad():  # (torch's, and back after)
        compiled = runtime.static_compile(model)
        for batch in (1, 2, 3):
            x = torch.randint(0, model.args.vocab_size, (batch, 16))
            compiled(x, targets=x)
    assert not [k for k in counters["unimplemented"] if "recompile limit" in k]
    assert counters["stats"]["unique_graphs"] == 3 * (3 + 1)  # each batch: 3 kinds of layer, the head


class GraphTrees:
    """torch.compile as CUDA graph trees (reduce-overhead) treat a compiled function's outputs, on the
    CPU: each call of a compiled function is a new torch.compile invocation, and one with no backward
    pending (no gradients) starts a new generation, whose replays overwrite every output of the last
    one (torch 2.11, torch/_inductor/cudagraph_trees.py: can_start_new_generation,
    dealloc_current_path_weakrefs). Once torch.compiler.cudagraph_mark_step_begin() has been called,
    generations are its steps instead. An overwritten output read again raises, as on CUDA."""

    def __init__(self, monkeypatch):
        self.calls, self.marks, self.gen, self.pending = 0, 0, None, False
        self.live, self.dead = [], []
        monkeypatch.setattr(torch, "compile", self.compile)
        monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", self.mark)

    def mark(self):
        self.marks += 1

    def compile(self, fn, mode=None, dynamic=None, **_):
        def run(*args, **kwargs):
            self.calls += 1
            now = self.marks or self.calls
            if now != self.gen and (self.marks or not self.pending):  # a new generation
                self.gen, self.dead, self.live = now, self.dead + self.live, []
            inputs = torch.utils._pytree.tree_leaves((args, kwargs))
            if any(t is d for t in inputs for d in self.dead):
                raise RuntimeError("Error: accessing tensor output of CUDAGraphs that has been overwritten "
                                   "by a subsequent run.")
            out = fn(*args, **kwargs)
            self.pending = self.pending or torch.is_grad_enabled()
            fields = dataclasses.fields(out) if dataclasses.is_dataclass(out) else None
            parts = out if fields is None else [getattr(out, f.name) for f in fields]
            self.live += [t for t in torch.utils._pytree.tree_leaves(parts) if isinstance(t, torch.Tensor)]
            return out
        return run


def test_a_regionally_compiled_model_under_cuda_graphs_evaluates_and_trains(monkeypatch):
    """Under CUDA graphs (--compile_mode reduce-overhead on CUDA), a RegionalModel's forward is one
    step of the graph trees (torch.compiler.cudagraph_mark_step_begin), not one per region: each
    region reads the last one's output, and the head every MoE layer's routing. Bug caught: without
    gradients (train.evaluate) every region's call started a new generation, which overwrote the
    output the next region reads ("accessing tensor output of CUDAGraphs that has been overwritten"):
    the compiled evaluation failed and train.py evaluated eagerly from then on. Training steps
    (backward pending) went on as before, and a model compiled whole (one call a forward) too."""
    trees = GraphTrees(monkeypatch)
    model = Llama4(debug_args())
    compiled = runtime.RegionalModel(model, mode="reduce-overhead", dynamic=False)
    x = torch.randint(0, model.args.vocab_size, (2, model.args.max_seq_len))
    for _ in range(2):
        compiled.train()
        loss = compiled(x, targets=x).loss
        loss.backward()
        trees.pending = False  # (the backward graphs ran)
        compiled.eval()
        with torch.no_grad():
            assert torch.isfinite(compiled(x, targets=x).lm_loss)
    assert trees.marks == 4
    trees.marks = 0
    runtime.RegionalModel(model, dynamic=False)(x, targets=x)  # (no CUDA graphs: no steps marked)
    assert trees.marks == 0


def test_a_regionally_compiled_model_is_the_model_underneath():
    """A RegionalModel holds the model as torch.compile's wrapper does (its state dict the model's
    under `_orig_mod.`, the same parameters, attributes read and set through), and refuses a KV cache: it
    compiles training and evaluation forwards (sample.py compiles its decoding step itself)."""
    model = Llama4(debug_args())
    compiled = runtime.static_compile(model)
    assert isinstance(compiled, runtime.RegionalModel) and compiled._orig_mod is model
    assert compiled.args is model.args and list(compiled.parameters()) == list(model.parameters())
    compiled.loss_impl = "reference"  # (set on the model: a setting on the wrapper would do nothing)
    assert model.loss_impl == "reference" and "loss_impl" not in vars(compiled)
    compiled.eval()
    assert not model.training and not compiled.training
    assert list(compiled.state_dict()) == [f"_orig_mod.{k}" for k in model.state_dict()]
    with pytest.raises(ValueError, match="does not decode; pass the cache to the model"):
        compiled(torch.zeros(1, 4, dtype=torch.long), cache=object())
    assert not isinstance(runtime.static_compile(model, whole=True), runtime.RegionalModel)


def test_idle_experts_are_zeroed_inside_one_compiled_graph():
    """model.ZeroEmptyGroups (what the MoE puts on its expert weights on sm100, whose grouped_mm can
    leave an idle expert's weight gradient unwritten) compiles with fullgraph=True, and there too
    turns what reaches an idle expert (NaN, inf) into zeros and passes the others' gradients on."""
    from model import ZeroEmptyGroups
    w = torch.ones(4, 3, 2, requires_grad=True)
    ends = torch.tensor([2, 2, 7, 7], dtype=torch.int32)  # groups of 2, 0, 5 and 0 rows
    grad = torch.full((4, 3, 2), 3.0)
    grad[1], grad[3] = float("nan"), float("inf")
    out = torch.compile(lambda w, e: ZeroEmptyGroups.apply(w, e) * 2, fullgraph=True)(w, ends)
    out.backward(grad)
    assert w.grad[[1, 3]].eq(0).all() and w.grad[[0, 2]].eq(6).all()


def test_a_training_step_makes_no_host_sync(tmp_path, corpus):
    """Runs of 3 and of 9 steps with logging, evaluation and saving only at the end make the same
    number of host syncs: the steps in between make none."""
    def run(steps):
        argv = ["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"),
                "--cache_dir", str(tmp_path / "cache"), "--plot", "", "--max_steps", str(steps),
                "--log_every", "1000", "--eval_every", "1000", "--save_every", "1000", "--run", f"r{steps}"]
        return host_syncs(lambda: train.main(argv))
    run(2)  # build the caches first, so that both runs below do the same work outside the loop
    assert run(9) == run(3)


@pytest.mark.parametrize("compile_eval_after_s", [0.0, 60.0])
def test_a_compiled_run_compiles_each_graph_once(tmp_path, corpus, monkeypatch, compile_eval_after_s):
    """train.py --compile true compiles the same graphs whatever the run's length: the start-up
    preflight; for training (forward with its backward) a RoPE layer, a NoPE layer and the head
    (the regions: runtime.RegionalModel), and the same three for evaluation once the eager
    evaluations have taken train.COMPILE_EVAL_AFTER_S (at 0, from the first); below it (60 s here,
    past what a short run's evaluations take on a loaded machine) they stay eager and compile
    nothing. Going back and forth between training and evaluation, logging and saving recompile
    nothing (on a GPU each recompile of
    scout-128m would cost about a minute). Runs of 4 and 8 steps, evaluating, logging and saving
    every 2, compile the same graphs."""
    from torch._dynamo.utils import counters
    monkeypatch.setattr(train, "COMPILE_EVAL_AFTER_S", compile_eval_after_s)

    def graphs(steps):
        torch._dynamo.reset()
        counters.clear()
        train.main(["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"),
                    "--cache_dir", str(tmp_path / "cache"), "--plot", "", "--compile", "true",
                    "--max_steps", str(steps), "--eval_every", "2", "--log_every", "2", "--save_every", "2",
                    "--run", f"c{steps}"])
        return counters["stats"]["unique_graphs"], counters["frames"]["ok"]
    assert graphs(8) == graphs(4) == ((7, 6) if compile_eval_after_s == 0 else (4, 3))


def test_a_compiled_run_crashed_after_a_save_resumes_bit_exactly(tmp_path, corpus, monkeypatch):
    """Holds: a --compile true run (MoE layers with noisy top-1 routing: the debug preset) crashed
    after its checkpoint at step 2 and resumed with the compiler's caches dropped, as a new process
    starts, ends with the weights, optimizer state and metrics.jsonl train and validation records
    of the uninterrupted run, bit for bit (the README's exact resume, which test_train holds for
    eager runs; CUDA's default is a compiled run). A resumed step run eagerly shows here as float
    rounding (the resumed half run with --compile false: other losses, weights 1.6e-7 away). The
    evaluations stay eager in both sessions: train.COMPILE_EVAL_AFTER_S, a time each session counts
    from 0, picks eager or compiled, which differ in rounding. About 15 s (60 s with Inductor's
    caches cold)."""
    monkeypatch.setattr(train, "COMPILE_EVAL_AFTER_S", 1e9)
    base = ["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"), "--cache_dir",
            str(tmp_path / "cache"), "--plot", "", "--compile", "true", "--max_steps", "3",
            "--save_every", "2", "--eval_every", "2"]
    train.main([*base, "--run", "whole"])
    undo = crash_after_saving(monkeypatch, 2)
    with pytest.raises(Crash):
        train.main([*base, "--run", "broken"])
    undo()
    torch._dynamo.reset()
    train.main([*base, "--resume", "--run", "broken"])
    runs = {}
    for run in ("whole", "broken"):
        lines = (tmp_path / "ckpt" / run / "metrics.jsonl").read_text().splitlines()
        timings = ("tokens_per_s", "mfu", "minutes", "val_seconds")
        ckpt = checkpoint.load_checkpoint(tmp_path / "ckpt" / run / "last.pt")
        runs[run] = ([{k: v for k, v in r.items() if k not in timings} for r in map(json.loads, lines)],
                     {**ckpt["model"], **{f"{i}.{k}": v for i, s in ckpt["optimizer"]["state"].items()
                                          for k, v in s.items()}})
    assert [(r["kind"], r["step"]) for r in runs["broken"][0]] == \
        [("train", 1), ("train", 2), ("val", 2), ("train", 3), ("val", 3)]
    assert runs["broken"][0] == runs["whole"][0]
    for name, value in runs["whole"][1].items():
        assert torch.equal(value, runs["broken"][1][name]), name


def test_an_eager_evaluation_casts_each_weight_once_a_pass():
    """Under bf16 autocast an eager evaluation runs every batch in one autocast context, whose cache
    keeps each weight's bf16 copy for the pass: a batch after the first casts activations (and the
    experts' and output layer's weights, cast by hand), not again the weights autocast casts. Bug
    caught: an autocast context per batch recast them all: 71 casts a batch on the debug preset,
    now 43 (its 4 layers' q, k, v, o and shared-expert weights: 28). Casts of floating tensors
    (the MoE's sort casts its integer keys to bytes)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Casts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func is torch.ops.aten._to_copy.default and args[0].is_floating_point()
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = Llama4(debug_args())
    B, T, V = 4, 32, model.args.vocab_size
    x = torch.randint(0, V, (3 * B, T), generator=torch.Generator().manual_seed(0))
    y = x.roll(-1, 1)
    y[:, -1] = -1

    def evaluate(rows):  # (result, casts) of one pass over x[rows]
        n = int((y[rows] >= 0).sum())
        val = SimpleNamespace(x=x[rows], y=y[rows], batch_size=B, tokens=n, bytes=n, world=World())
        with Casts() as casts:
            return train.evaluate(model, val, torch.autocast("cpu", dtype=torch.bfloat16), "cpu"), casts.n
    (three, casts_three), casts_one = evaluate(slice(0, 3 * B)), evaluate(slice(0, B))[1]
    assert (casts_three - casts_one) / 2 <= 43, (casts_one, casts_three)
    # the same losses as a pass per batch, each with its own casts
    alone = [evaluate(slice(i, i + B))[0] for i in (0, B, 2 * B)]
    nats = sum(r["nats_per_token"] * r["tokens"] for r in alone)
    assert three["nats_per_token"] == pytest.approx(nats / three["tokens"], rel=1e-12)


@pytest.mark.parametrize("batches, checkpointing", [(1, False), (3, False), (3, True)])
def test_an_eager_evaluation_on_cuda_casts_the_weights_at_once_for_the_pass(monkeypatch, batches,
                                                                              checkpointing):
    """On CUDA's path (model.CAST_ONCE_DEVICES and SHARED_IN_GROUPS_DEVICES on the CPU), an eager
    evaluation casts the weights all at once for the whole pass (Llama4.weights_cast_once with
    whole_pass: two foreach copies, whatever the batches), not each in every batch's forward nor
    once per use: the same loss, bit for bit, as casting per use (cast_weights_once off), where
    autocast's cache keeps only the copies of weights (o's), not of what is put together from
    them, so a pass of 3 batches cast those 3 times. A model that checkpoints its training steps
    (--grad_checkpoint) does not checkpoint an evaluation, and casts at once there too.
    Bugs caught: a pass that made its copies per batch, or none; none for a checkpointing model."""
    import model as model_module
    monkeypatch.setattr(model_module, "CAST_ONCE_DEVICES", ("cpu",))
    monkeypatch.setattr(model_module, "SHARED_IN_GROUPS_DEVICES", ("cpu",))

    torch.manual_seed(0)
    model = Llama4(debug_args())
    model.set_grad_checkpointing(checkpointing)
    x = torch.randint(0, model.args.vocab_size, (12, 32), generator=torch.Generator().manual_seed(0))
    n = x.numel()
    results = {}
    for cast_once in (False, True):
        model.cast_weights_once = cast_once
        val = SimpleNamespace(x=x, y=x, batch_size=12 // batches, tokens=n, bytes=n, world=World())
        with WeightCasts() as copies:
            r = train.evaluate(model, val, torch.autocast("cpu", dtype=torch.bfloat16), "cpu")
        results[cast_once] = (r["nats_per_token"], copies.foreach, copies.casts)
    (nats, foreach, casts), (nats_once, foreach_once, casts_once) = results[False], results[True]
    assert nats == nats_once and (foreach, foreach_once) == (0, 2)
    # casting per use: o's weight once a pass (autocast's cache), and in every batch what the cache
    # does not hold: q, k and v put together, the experts' two stacks, the output layer's (the loss's)
    layers = model.args.n_layers
    assert casts - casts_once == layers + (3 * layers + 1) * batches, (casts, casts_once)


@pytest.mark.parametrize("compiled", [False, True])
def test_evaluation_waits_for_the_device_once_and_gives_the_logits_loss(compiled):
    """evaluate() over 1 batch of windows and over 4 makes the same host syncs, one (the total
    read at the end): no per-window id check or scalar read. Its loss, computed without the
    (B, T, V) logits, is the one the logits give."""
    torch.manual_seed(0)
    model = Llama4(debug_args())
    runner = torch.compile(model, fullgraph=True) if compiled else model
    B, T, V = 4, model.args.max_seq_len, model.args.vocab_size

    def val_set(batches):
        x = torch.randint(0, V, (B * batches, T), generator=torch.Generator().manual_seed(batches))
        y = x.roll(-1, 1)
        y[:, -1] = -1
        y[-1] = -1  # a padding window, as EvalSet adds to fill the last batch
        n = int((y >= 0).sum())
        return SimpleNamespace(x=x, y=y, batch_size=B, tokens=n, bytes=n, world=World())

    val = val_set(4)
    result = train.evaluate(runner, val, nullcontext(), "cpu")  # compiles first, when compiled
    assert result["tokens"] == val.tokens and model.training  # back in training mode
    with torch.no_grad():
        nats = F.cross_entropy(model.eval()(val.x).logits.flatten(0, 1), val.y.flatten(), ignore_index=-1,
                               reduction="sum")
    assert result["nats_per_token"] == pytest.approx(float(nats) / val.tokens, rel=1e-5)
    syncs = []
    for n in (1, 4):
        v = val_set(n)
        syncs.append(host_syncs(lambda v=v: train.evaluate(runner, v, nullcontext(), "cpu")))
    assert syncs == [1, 1]


def test_aten_ops_per_training_step_stay_within_their_budget():
    """Eager on a GPU is bound by kernel launches; aten ops per step are their CPU proxy
    (scripts/bench_model.py reports them). Debug preset (4 MoE layers), bf16 autocast, torch as
    pinned: each normed activation is cast to bf16 once, not once per projection, and the MoE
    dispatch gathers its inputs once, a z-loss that is off (the default) is not differentiated,
    the router's losses and statistics are computed for all layers at once, the router runs in
    fp32 outside autocast (h cast once, not its weights), and RoPE takes three ops, not seven, and
    stays in fp32 through the QK norm; in training q, k and v are one matmul, and RoPE and the QK
    norm run once over q and k. Before: MoE 1,202 ops, dense twin 783; then 1,115 and 759; then
    934 and 687; then 811 and 564; then 830 and 563: the dispatch's gathers both ways
    (PermuteRows: the permutation's inverse, 3 ops, and an add for index_add) and its sort's byte
    keys (a cast), 5 a layer, for what is one op on the CPU and many kernels on CUDA: x[order]'s
    backward (index_put with accumulate sorts its indices there) and a radix sort of int64 keys (8
    passes, 1 for bytes); then 826 and 563, the router and its noise one matmul; then 810 and 563,
    each expert's group of rows ending where a search of the sorted keys says (no count by
    scatter-add, nor its cumsum), the permutation's inverse an out-of-place scatter; then 810 and 563,
    and on CUDA's path 706 and 521: the shared expert one more group of the routed experts' grouped
    GEMMs (774 with it alone), and the weights autocast casts cast all at once, their gradients cast
    back at once (model.CastOnce); now 800 and 561, on CUDA's path 696 and 519: the fused AdamW
    clips the gradients (no multiply of them all), and the router reads the fp32 normed x (no cast
    of its bf16 copy back, nor of that cast's gradient) (the budgets leave a little room for a torch
    update)."""
    import config
    from scripts import bench_model
    base = config.to_dict(debug_args())
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    ops = {v: bench_model.ops_per_step(v, base, 4, cpu, bf16) for v in ["moe", "dense"]}
    assert ops["moe"] <= 815 and ops["dense"] <= 575, ops
    assert (ops["moe"] - ops["dense"]) / 4 <= 62, ops  # what one MoE layer adds over a dense one
    import model as model_module  # CUDA's path: the shared expert in the experts' grouped GEMMs
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_module, "SHARED_IN_GROUPS_DEVICES", ("cpu",))
        shared = bench_model.ops_per_step("moe", base, 4, cpu, bf16)
        mp.setattr(model_module, "CAST_ONCE_DEVICES", ("cpu",))
        cuda_path = {v: bench_model.ops_per_step(v, base, 4, cpu, bf16) for v in ["moe", "dense"]}
    assert ops["moe"] - shared == 4 * 9, (shared, ops)
    assert cuda_path["moe"] <= 710 and cuda_path["dense"] <= 530, cuda_path


def test_compile_mode_reaches_torch_compile(tmp_path, corpus, monkeypatch, capsys):
    """--compile_mode goes from the command line to torch.compile (reduce-overhead: CUDA graphs on
    CUDA), and the start-up summary says how the model runs; the default mode passes none. Shapes
    are static (dynamic=False): a run has one, and a symbolic batch (automatic dynamic shapes, at
    a second shape) makes slower kernels. scripts/bench_model.py compiles so too."""
    import runtime
    seen = []
    monkeypatch.setattr(runtime, "compile_problem", lambda device: None)

    def fake_compile(fn, mode=None, dynamic=None):  # each region as it is (train.py sees a RegionalModel)
        seen.append((mode, dynamic))
        return fn
    monkeypatch.setattr(torch, "compile", fake_compile)
    for mode, says in [("reduce-overhead", "compiled (reduce-overhead), "), ("default", "compiled, ")]:
        train.main(["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"),
                    "--cache_dir", str(tmp_path / "cache"), "--plot", "", "--max_steps", "1", "--compile",
                    "true", "--compile_mode", mode, "--run", mode])
        out = capsys.readouterr().out
        assert f"dtype float32, {says}world size 1" in out and "\ncompiling: the first step" in out
    assert seen == [("reduce-overhead", False)] * 3 + [(None, False)] * 3  # the layer, checkpointed, head
    from scripts import bench_model
    seen.clear()
    bench_model.make_step("moe+compile", bench_model.QUICK_SHAPE, 2, torch.device("cpu"), torch.float32)
    assert seen == [(None, False)] * 3


def test_compiling_is_the_default_on_cuda_only_and_unavailable_compiling_runs_eagerly(tmp_path, corpus,
                                                                                    monkeypatch, capsys):
    """Issue 11: --compile auto (train.py's default) compiles on CUDA and not on the CPU; --compile
    false opts out on CUDA too, true compiles on the CPU too. Where compiling is unavailable (no C
    compiler, no Triton), auto and true give one warning line and the eager model, and the run
    trains eagerly."""
    from config import TrainArgs
    assert TrainArgs().compile == "auto"
    model, seen = torch.nn.Linear(2, 2), []
    monkeypatch.setattr(runtime, "compile_problem", lambda device: seen.append(device.type))
    monkeypatch.setattr(runtime, "static_compile", lambda m, mode="default": ("compiled", m, mode))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    got = {(c, d.type): runtime.compile_model(model, c, d, print) for c in ["auto", "true", "false"]
           for d in [cpu, cuda]}
    compiled = ("compiled", model, "default")
    assert got == {("auto", "cpu"): model, ("auto", "cuda"): compiled, ("true", "cpu"): compiled,
                   ("true", "cuda"): compiled, ("false", "cpu"): model, ("false", "cuda"): model}
    assert seen == ["cuda", "cpu", "cuda"] and capsys.readouterr().out == ""
    monkeypatch.setattr(runtime, "compile_problem", lambda device: "no C compiler found")
    for choice, device in [("auto", cuda), ("true", cuda), ("true", cpu)]:
        assert runtime.compile_model(model, choice, device, print) is model
        assert capsys.readouterr().out == ("warning: torch.compile is unavailable here (no C compiler "
                                           "found); running eagerly (--compile false skips this check)\n")
    choices = []  # train.py, without --compile, asks for auto; with --compile true where it cannot, eager

    def compile_model(model, choice, *args, **kwargs):
        choices.append(choice)
        return runtime_compile_model(model, choice, *args, **kwargs)
    runtime_compile_model = runtime.compile_model
    monkeypatch.setattr(runtime, "compile_model", compile_model)
    argv = ["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"), "--cache_dir",
            str(tmp_path / "cache"), "--plot", "", "--max_steps", "1"]
    train.main([*argv, "--run", "default"])
    assert "float32, eager, world size 1" in capsys.readouterr().out
    assert train.main([*argv, "--compile", "true", "--run", "unavailable"])["step"] == 1
    out = capsys.readouterr().out
    assert out.count("warning: torch.compile is unavailable here (no C compiler found)") == 1
    assert "float32, eager, world size 1" in out and "compiling: the first step" not in out
    assert choices == ["auto", "true"]


class ReplayingRunner(torch.nn.Module):
    """CUDA graphs (--compile_mode reduce-overhead) on the CPU, as the loop sees them: a replay
    writes its outputs into the buffers of the previous call's, so this poisons the tensors the
    previous call returned before each call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.returned = model, []

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            for t in self.returned:
                t.fill_(float("nan") if t.is_floating_point() else -10**6)
        out = self.model(*args, **kwargs)
        self.returned = [v for v in vars(out).values() if isinstance(v, torch.Tensor)]
        return out


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_the_loop_holds_no_model_output_past_the_next_call(tmp_path, corpus, monkeypatch, grad_accum):
    """Under CUDA graphs a model output is valid until the next call: the training loop (with and
    without accumulation) and evaluation must copy what they keep. Train records (losses, expert
    shares, router entropy, over 3-step windows) and validation records equal a plain run's.
    (Gradients are another matter: a replay overwrites them too, so train.py refuses CUDA graphs
    with more than one micro-batch per process; tests/test_faults.py holds that.)"""
    import json

    import runtime
    runs = {}
    for name in ["plain", "replaying"]:
        if name == "replaying":
            monkeypatch.setattr(runtime, "compile_model", lambda model, *a, **k: ReplayingRunner(model))
        train.main(["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"),
                    "--cache_dir", str(tmp_path / "cache"), "--plot", "", "--max_steps", "6",
                    "--log_every", "3", "--eval_every", "3", "--grad_accum", str(grad_accum),
                    "--compile", "true" if name == "replaying" else "false", "--run", name])
        lines = (tmp_path / "ckpt" / name / "metrics.jsonl").read_text().splitlines()
        timings = ("tokens_per_s", "mfu", "minutes", "val_seconds")
        runs[name] = [{k: v for k, v in r.items() if k not in timings} for r in map(json.loads, lines)]
    assert runs["replaying"] == runs["plain"] and len(runs["plain"]) == 4


class FailingRunner(torch.nn.Module):
    """A compiled model whose first call in training mode (or in evaluation mode) fails, as a
    compiler or a CUDA graph recording might on some GPU. A failing training call leaves
    gradients behind, as a backward that fails half-way does."""

    def __init__(self, model, fail: str, calls: int = 1, error=RuntimeError):
        super().__init__()
        self.model, self.fail, self.calls, self.error = model, fail, calls, error
        self.seen = {"train": 0, "eval": 0}

    def forward(self, *args, **kwargs):
        kind = "train" if self.model.training else "eval"
        self.seen[kind] += 1
        if kind == self.fail and self.seen[kind] == self.calls:
            for p in self.model.parameters() if kind == "train" else []:
                p.grad = torch.full_like(p, 1e3)
            raise self.error("Triton compilation failed: out of resource: shared memory")
        return self.model(*args, **kwargs)


@pytest.mark.parametrize("fail,calls,mode", [("train", 1, "default"), ("train", 2, "reduce-overhead"),
                                             ("eval", 1, "default"), ("eval", 2, "reduce-overhead")])
def test_a_compiled_model_that_fails_at_first_runs_eagerly_as_an_eager_run(tmp_path, corpus, monkeypatch,
                                                                           capsys, fail, calls, mode):
    """A compiled model's first steps and evaluations (compiling; under CUDA graphs, recording on
    the second call) may fail on a GPU the project never ran on. One warning line, then the run
    goes on eagerly: the failed step again, from the same batches and seeds (evaluations compiled
    from the first: train.COMPILE_EVAL_AFTER_S at 0). The stand-in's
    calls before its failure are the eager model's, so metrics and final weights equal an eager
    run's exactly (a real compiled first step differs in rounding). Later calls never go to the
    compiled model again."""
    import json

    import runtime
    monkeypatch.setattr(train, "COMPILE_EVAL_AFTER_S", 0.0)
    runners = []

    def failing(model, *args, **kwargs):
        runners.append(FailingRunner(model, fail, calls))
        return runners[-1]
    runs = {}
    for name in ["eager", "failing"]:
        if name == "failing":
            monkeypatch.setattr(runtime, "compile_model", failing)
        train.main(["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"),
                    "--cache_dir", str(tmp_path / "cache"), "--plot", "", "--max_steps", "4",
                    "--log_every", "1", "--eval_every", "2", "--compile_mode", mode, "--run", name,
                    "--compile", "true" if name == "failing" else "false"])
        lines = (tmp_path / "ckpt" / name / "metrics.jsonl").read_text().splitlines()
        timings = ("tokens_per_s", "mfu", "minutes", "val_seconds")
        runs[name] = ([{k: v for k, v in r.items() if k not in timings} for r in map(json.loads, lines)],
                      torch.load(tmp_path / "ckpt" / name / "last.pt", weights_only=True)["model"])
    out = capsys.readouterr().out
    what = f"training step {calls}" if fail == "train" else "an evaluation"
    assert out.count(f"warning: the compiled model failed at {what} (RuntimeError: Triton") == 1
    assert runs["failing"][0] == runs["eager"][0]
    for k, v in runs["eager"][1].items():
        assert torch.equal(v, runs["failing"][1][k]), k
    seen = runners[0].seen
    assert seen[fail] == calls  # nothing went to the compiled model after its failure
    if fail == "eval":
        assert seen["train"] == 4  # training stays compiled


def test_out_of_memory_in_a_compiled_first_step_is_not_a_compiler_failure(tmp_path, corpus, monkeypatch,
                                                                         capsys):
    """Running out of memory is not taken for a compiler failure (the eager model would take
    more): when the compiled model runs (a bare OutOfMemoryError) and when the compiler does
    (max-autotune allocates to time kernels; dynamo and Inductor wrap what their backend
    raises). Either way train.py stops with one line naming the fix, no fallback warning."""
    import runtime

    def oom_backend(gm, example_inputs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    argv = ["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"), "--cache_dir",
            str(tmp_path / "cache"), "--plot", "", "--max_steps", "2", "--compile", "true"]
    monkeypatch.setattr(runtime, "compile_model",
                        lambda model, *a, **k: FailingRunner(model, "train", error=torch.OutOfMemoryError))
    for run in ["oom", "oom-compiling"]:
        if run == "oom-compiling":
            monkeypatch.undo()
            monkeypatch.setattr(runtime, "compile_problem", lambda device: None)
            monkeypatch.setattr(runtime, "static_compile", lambda model, mode="default": torch.compile(
                model, backend=oom_backend, dynamic=False))
        try:
            with pytest.raises(SystemExit) as e:
                train.main([*argv, "--run", run])
        finally:
            torch._dynamo.reset()
        out, err = capsys.readouterr()
        assert e.value.code == 1 and "warning: the compiled model failed" not in out
        line = err.splitlines()[-1]  # (after the progress bar's)
        assert line.startswith("train.py: error: out of memory (") and "Traceback" not in err
        assert "lower --batch_size (now 4; --grad_accum keeps the global batch)" in line
    assert runtime.out_of_memory(RuntimeError("wrapper")) is False
    try:  # a bug met while handling an out-of-memory error is not one
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError:
            raise KeyError("a bug") from None
    except KeyError as bug:
        assert runtime.out_of_memory(bug) is False
    assert runtime.out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. "
                                              "DefaultCPUAllocator: can't allocate memory: you tried"))


def test_under_torchrun_a_compiled_first_step_that_fails_is_a_one_line_error():
    """Processes that fell back on their own could disagree (one compiled, one eager, DDP
    hooks half run): under torchrun the failure is one line naming --compile false."""
    from errors import RunError
    job = SimpleNamespace(world=World(0, 2), log=print)
    with pytest.raises(RunError, match=r"step 1 \(RuntimeError: boom\); run with --compile false"):
        try:
            raise RuntimeError("boom\nmore")
        except RuntimeError as e:
            train.run_eagerly(job, e, "training step 1")


def test_a_real_compiler_failure_falls_back(tmp_path, corpus, monkeypatch, capsys):
    """torch.compile with a backend that raises, as Inductor would on a kernel it cannot build:
    dynamo's own exception (BackendCompilerFailed) reaches the fallback, and the run finishes."""
    import runtime

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no kernel for this op")
    monkeypatch.setattr(runtime, "compile_problem", lambda device: None)
    monkeypatch.setattr(runtime, "static_compile", lambda model, mode="default": torch.compile(
        model, backend=broken_backend, dynamic=False))
    try:
        result = train.main(["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"),
                             "--cache_dir", str(tmp_path / "cache"), "--plot", "", "--max_steps", "2",
                             "--compile", "true", "--run", "real"])
    finally:
        torch._dynamo.reset()
    assert result["step"] == 2
    assert "failed at training step 1 (BackendCompilerFailed: " in capsys.readouterr().out
