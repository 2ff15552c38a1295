"""train.py's training loop, piece by piece: the optimizer (its settings, and those kept at resume),
accumulation (DDP's no_sync, router seeds, means), a step's learning rate and gradients, the compiled
model's fallback, the batches of a step, Stop's signals, agree, evaluate_and_save, main's exits; and
evaluation and logging: each rank's share of the validation windows and the sums over the ranks, rank 0
alone writing, tokens/s and MFU under torchrun, a resumed window's tokens and process-steps, best.pt's
ties, an evaluation's seconds, --eval_only's line.
Each test names the bug it catches: a mutation audit found these went unnoticed."""

import json
import math
import signal
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import debug_args

import errors
import runtime
import train
from config import TrainArgs
from model import Llama4


def tiny_model(**overrides):
    torch.manual_seed(0)
    return Llama4(debug_args(max_seq_len=16, **overrides))


def step_job(model, train_args, **extra):
    """What train_step reads of a Job, on the CPU, with the eager model."""
    opt = train.make_optimizer(model, train_args, torch.device("cpu"))
    return SimpleNamespace(model=model, runner=model, opt=opt, train_args=train_args, micros=[0],
                           autocast=train.nullcontext(), no_sync=train.nullcontext, **extra)


def batch(seed=0, rows=2, T=16):
    x = torch.randint(0, 320, (rows, T), generator=torch.Generator().manual_seed(seed))
    return x, x.roll(-1, 1)


# --- the optimizer --------------------------------------------------------------------------

def test_adamw_takes_beta1_and_beta2_as_given_and_is_fused_on_the_cpu():
    """Catches --beta1 and --beta2 swapped (or dropped) on their way to AdamW, or the CPU's unfused
    AdamW (which ignores found_inf: a non-finite step would be applied)."""
    opt = train.make_optimizer(tiny_model(), TrainArgs(beta1=0.8, beta2=0.99), torch.device("cpu"))
    assert all(g["betas"] == (0.8, 0.99) and g["fused"] for g in opt.param_groups)


def test_a_resumed_optimizer_keeps_its_moments_and_the_settings_typed_at_resume():
    """Catches load_optimizer leaving the checkpoint's weight decay and betas in place (a --weight_decay
    or --beta2 typed at resume silently ignored), or not loading the checkpoint's moments."""
    model = tiny_model()
    old = train.make_optimizer(model, TrainArgs(weight_decay=0.1, beta2=0.95), torch.device("cpu"))
    model(*batch()[:1], targets=batch()[1]).loss.backward()
    old.step()
    new = train.make_optimizer(model, TrainArgs(weight_decay=0.2, beta2=0.9), torch.device("cpu"))
    train.load_optimizer(new, old.state_dict())
    assert [g["weight_decay"] for g in new.param_groups] == [0.2, 0.0]
    assert all(g["betas"] == (0.9, 0.9) for g in new.param_groups)
    p = next(model.parameters())
    assert torch.equal(new.state[p]["exp_avg"], old.state[p]["exp_avg"])
    assert float(new.state[p]["step"]) == 1


def test_an_optimizer_state_of_other_parameter_groups_is_the_checkpoints_fault_in_one_line():
    """Bug caught: a checkpoint of the first train.py (its router noise projection decayed, in the
    first group: the groups' sizes differ from this version's) resumed with torch's ValueError
    traceback from load_state_dict; now a CheckpointError naming the file and --init_from."""
    model = tiny_model()
    old = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.dim() >= 2]},
                             {"params": [p for p in model.parameters() if p.dim() < 2]}])
    new = train.make_optimizer(model, TrainArgs(), torch.device("cpu"))
    with pytest.raises(train.CheckpointError, match=r"^ck/last\.pt: its optimizer state is not of this "
                       r"version's parameter groups \(.*\); start a new run from its weights with "
                       r"--init_from ck/last\.pt$"):
        train.load_optimizer(new, old.state_dict(), "ck/last.pt")


# --- accumulation and a step ----------------------------------------------------------------

def test_ddp_syncs_gradients_on_the_last_micro_batch_only():
    """Catches no_sync put on the wrong micro-batch (DDP would all-reduce early, and the last micro-batch's
    gradients would stay local to each rank)."""
    model, synced = tiny_model(router_noise=False), []

    @contextmanager
    def no_sync():
        synced.append(False)
        yield
    real_backward = torch.Tensor.backward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.Tensor, "backward",
                   lambda t, *a, **k: synced.append(True) or real_backward(t, *a, **k))
        train.accumulate(model, [batch(i) for i in range(3)], 0, 0, [0, 1, 2], train.nullcontext(), no_sync)
    # each micro-batch: no_sync entered (False) or not, then its backward (True)
    assert synced == [False, True, False, True, True]


def test_a_ranks_router_noise_is_seeded_by_its_micro_batch_numbers_not_their_positions(monkeypatch):
    """Catches the router seed drawn from a micro-batch's position in this rank's list: rank 1 of 2 (micro-
    batches 1 and 3) would repeat rank 0's noise, and N processes would no longer equal one."""
    seen, real_seed = [], train.seed_generators
    monkeypatch.setattr(train, "seed_generators", lambda s, device: seen.append(s) or real_seed(s, device))
    model = Llama4(debug_args(max_seq_len=16, router_noise=True)).train()
    train.accumulate(model, [batch(1), batch(3)], 7, 4, [1, 3], train.nullcontext(), train.nullcontext)
    assert seen == [train.micro_seed(7, 4, 1), train.micro_seed(7, 4, 3)]


def test_a_micro_batch_seeds_the_generators_it_draws_from_and_formats_no_traceback(monkeypatch):
    """Bug caught: torch.manual_seed at each micro-batch also queued the seed for every accelerator
    torch had not started (XPU and MTIA on a CUDA machine, CUDA on the CPU), formatting a traceback
    of the call for each: host work in every step of a host-bound eager loop. The noise is still
    torch.manual_seed's (a run resumed from an older checkpoint goes on as before), and on CUDA the
    seed goes to the batch's device's generator, not the current device's (--device cuda:1)."""
    import traceback
    formatted = []
    monkeypatch.setattr(traceback, "format_stack", lambda *a, **k: formatted.append(1) or [])
    model = Llama4(debug_args(max_seq_len=16, router_noise=True)).train()
    train.accumulate(model, [batch(1), batch(3)], 7, 4, [1, 3], train.nullcontext(), train.nullcontext)
    assert formatted == []
    train.seed_generators(5, torch.device("cpu"))
    drawn = torch.randn(4)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.randn(4))

    class Generator:
        seed = None

        def manual_seed(self, seed):
            self.seed = seed
    gens = [Generator(), Generator()]
    monkeypatch.setattr(torch.cuda, "default_generators", gens)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    train.seed_generators(7, torch.device("cuda", 1))
    assert (gens[0].seed, gens[1].seed) == (None, 7)
    train.seed_generators(8, torch.device("cuda"))  # (no index: the current device's)
    assert (gens[0].seed, gens[1].seed) == (8, 7)


def test_router_entropy_is_a_mean_over_the_micro_batches_and_expert_counts_a_sum():
    """Catches the router entropy summed over the micro-batches (k times too high at --grad_accum k)."""
    model = tiny_model(router_noise=False)
    _, counts1, entropy1 = train.accumulate(model, [batch()], 0, 0, [0], train.nullcontext(),
                                            train.nullcontext)
    _, counts4, entropy4 = train.accumulate(model, [batch()] * 4, 0, 0, [0, 1, 2, 3], train.nullcontext(),
                                            train.nullcontext)
    assert torch.allclose(entropy4, entropy1, rtol=1e-5) and torch.equal(counts4, 4 * counts1)


def test_a_step_applies_the_learning_rate_it_is_given_and_leaves_no_gradients():
    """Catches train_step not setting the step's learning rate on the optimizer (the schedule ignored:
    every step at the initial --lr), or leaving the gradients to add up into the next step."""
    model = tiny_model()
    job = step_job(model, TrainArgs(lr=1e-2, weight_decay=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    out = train.train_step(job, [batch()], 0, lr=0.0)
    assert float(out.grad_norm) > 0 and float(out.skipped) == 0
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))  # lr 0: no change
    assert all(p.grad is None for p in model.parameters())
    train.train_step(job, [batch()], 1, lr=1e-3)
    assert job.opt.param_groups[0]["lr"] == 1e-3
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_a_steps_tokens_count_every_micro_batch_of_grad_accum():
    """Catches Job.tokens_per_step leaving out --grad_accum: the run's token count (logged, checkpointed,
    tokens/s and MFU) would be grad_accum times too low."""
    job = SimpleNamespace(train_args=TrainArgs(batch_size=2, grad_accum=3),
                          model_args=debug_args(max_seq_len=16))
    assert train.Job.tokens_per_step.fget(job) == 2 * 3 * 16


def test_a_step_whose_gradient_overflowed_to_inf_is_skipped(monkeypatch):
    """Catches train_step skipping NaN gradients alone: a step whose gradients overflowed to inf (no NaN)
    would be applied, and AdamW would turn the weights to NaN."""
    real = train.accumulate

    def overflows(runner, *rest):
        out = real(runner, *rest)
        next(runner.parameters()).grad[0] = float("inf")
        return out
    monkeypatch.setattr(train, "accumulate", overflows)
    model = tiny_model()
    job = step_job(model, TrainArgs(lr=1e-2))
    before = [p.detach().clone() for p in model.parameters()]
    out = train.train_step(job, [batch()], 0, lr=1e-2)
    assert float(out.skipped) == 1
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


# --- a compiled model's fallback ------------------------------------------------------------

def fallback_job(trials=1, eval_trials=1, size=1, eager_eval_s=math.inf):
    said = []  # (eager_eval_s: by default, the eager evaluations have taken long enough to compile)
    return SimpleNamespace(trials=trials, eval_trials=eval_trials, eager_eval_s=eager_eval_s,
                           world=runtime.World(0, size),
                           log=said.append, model="eager", compiled="compiled", runner="ddp(compiled)",
                           said=said, opt=SimpleNamespace(zero_grad=lambda set_to_none: None))


def test_a_compiled_step_that_fails_after_its_trials_is_raised_not_run_eagerly(monkeypatch):
    """Catches first_steps never counting its trials down: a failure at any later step (a real bug,
    a lost device) would be taken for a compiler's and the run would go on eagerly with a warning."""
    calls = []

    def step(job, batches, step, lr):
        calls.append((step, job.runner))
        if step == 1 and job.runner != "eager":
            raise RuntimeError("not the compiler")
        return step
    monkeypatch.setattr(train, "train_step", step)
    job = fallback_job(trials=1)
    assert train.first_steps(job, [], 0, 1e-3) == 0 and job.trials == 0
    with pytest.raises(RuntimeError, match="not the compiler"):
        train.first_steps(job, [], 1, 1e-3)
    assert job.said == [] and job.runner == "ddp(compiled)"


def test_a_compiled_evaluation_that_fails_after_its_trials_is_raised(monkeypatch):
    """Catches evaluate_job never counting its trials down (any later evaluation's failure taken for
    the compiler's)."""
    calls = []

    def evaluate(model, val, autocast, device, stop, bar):
        calls.append(model)
        if len(calls) == 2:
            raise RuntimeError("not the compiler")
        return {"model": model}
    monkeypatch.setattr(train, "evaluate", evaluate)
    job = fallback_job(eval_trials=1)
    job.val = job.autocast = job.device = None
    assert train.evaluate_job(job) == {"model": "compiled"} and job.eval_trials == 0
    with pytest.raises(RuntimeError, match="not the compiler"):
        train.evaluate_job(job)
    assert calls == ["compiled", "compiled"] and job.said == []


def test_a_compiled_run_evaluates_eagerly_until_its_evaluations_have_cost_what_compiling_does(monkeypatch):
    """Compiling the evaluation costs seconds (8 for scout-128m on an H200) where an eager pass over a
    small validation set takes a fraction of one: a compiled run's evaluations run the eager model
    until they have taken train.COMPILE_EVAL_AFTER_S in all, then the compiled one (with its
    fallback trials); a pass a signal cut short (None) counts nothing. Bug caught: a 90-second run
    spent 8 s compiling an evaluation whose eager passes took 0.07 s each."""
    passes = iter([{"seconds": 4.0}, None, *[{"seconds": 4.0}] * 3, {"seconds": 1.0}])
    calls = []
    monkeypatch.setattr(train, "evaluate", lambda model, *a: calls.append(model) or next(passes))
    monkeypatch.setattr(train, "COMPILE_EVAL_AFTER_S", 10.0)
    job = fallback_job(eval_trials=1, eager_eval_s=0.0)
    job.val = job.autocast = job.device = None
    results = [train.evaluate_job(job) for _ in range(6)]
    assert calls == ["eager"] * 4 + ["compiled"] * 2 and job.eager_eval_s == 12.0
    assert results[1] is None and job.eval_trials == 0 and job.said == []
    job = fallback_job(eager_eval_s=0.0)  # an eager run (or one fallen back): its one model
    job.compiled, job.val, job.autocast, job.device = job.model, None, None, None
    monkeypatch.setattr(train, "evaluate", lambda model, *a: calls.append(model) or {"seconds": 1.0})
    train.evaluate_job(job)
    assert calls[-1] == "eager" and job.eager_eval_s == 0.0


def test_an_evaluations_seconds_are_the_ranks_mean_and_alike_on_every_rank(monkeypatch):
    """Under torchrun an evaluation's seconds travel with its sums in the pass's one all-reduce, and
    are the ranks' mean: every rank reads the same figure, so evaluate_job's switch to the compiled
    model (train.COMPILE_EVAL_AFTER_S) comes at the same pass on all of them. The other rank is
    faked: the all-reduce adds its figures (3 s for its pass).
    Bug caught: each rank summed its own seconds, and near the threshold one rank compiled its
    evaluation a pass before another (which waited in the all-reduce meanwhile)."""
    torch.manual_seed(0)
    model = Llama4(debug_args())
    x = torch.randint(0, model.args.vocab_size, (4, 16))
    n = x.numel()
    val = SimpleNamespace(x=x, y=x, batch_size=4, tokens=n, bytes=n, world=runtime.World(0, 2))
    reduced = []

    def all_reduce(values, device, world):
        reduced.append(values)
        return [v * 2 for v in values[:4]] + [values[4] + 3.0]
    monkeypatch.setattr(train.runtime, "all_reduce", all_reduce)
    result = train.evaluate(model, val, train.nullcontext(), "cpu")
    assert result["seconds"] == pytest.approx((reduced[0][4] + 3.0) / 2) and result["tokens"] == 2 * n


def test_a_failed_compiled_step_moves_training_and_evaluation_to_the_eager_model(monkeypatch):
    """Catches run_eagerly after a training step's failure leaving evaluations on the compiled model (or
    its trials), the loop on it, or dynamo's graphs (and CUDA graph memory) kept."""
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    job = fallback_job(trials=1, eval_trials=1)
    train.run_eagerly(job, RuntimeError("no kernel"), "training step 1")
    assert (job.runner, job.compiled, job.trials, job.eval_trials) == ("eager", "eager", 0, 0)
    assert resets == [1] and "failed at training step 1 (RuntimeError: no kernel)" in job.said[0]


def test_under_torchrun_a_failed_compiled_evaluation_falls_back_on_every_rank(monkeypatch):
    """Catches an evaluation's failure under torchrun stopping the run as a training step's does: every
    rank evaluates the same windows, so each falls back alike; training stays compiled."""
    monkeypatch.setattr(torch._dynamo, "reset", lambda: pytest.fail("training is still compiled"))
    job = fallback_job(trials=1, eval_trials=1, size=2)
    train.run_eagerly(job, RuntimeError("no kernel"), "an evaluation")
    assert (job.runner, job.compiled, job.trials, job.eval_trials) == ("ddp(compiled)", "eager", 1, 0)


def test_a_compiled_step_that_fails_is_taken_again_from_cleared_gradients(monkeypatch):
    """Catches first_steps taking a failed compiled step again without clearing the gradients its
    backward left: the eager step would add them to its own (a step twice as large, or worse)."""
    monkeypatch.setattr(torch._dynamo, "reset", lambda: None)
    model, said, real = tiny_model(), [], train.train_step
    job = step_job(model, TrainArgs(), trials=1, world=runtime.World(), log=said.append, compiled=model)

    def fails_after_backward(job, batches, step, lr):
        if not said:  # the compiled attempt: its backward ran, then the compiler gave up
            model(*batches[0][:1], targets=batches[0][1]).loss.backward()
            raise RuntimeError("no kernel")
        assert all(p.grad is None for p in model.parameters()), "the failed attempt's gradients are kept"
        return real(job, batches, step, lr)
    monkeypatch.setattr(train, "train_step", fails_after_backward)
    out = train.first_steps(job, [batch()], 0, 1e-3)
    assert float(out.skipped) == 0 and "failed at training step 1" in said[0] and job.trials == 0


# --- the batches of a step ------------------------------------------------------------------

def test_each_step_and_each_seed_draws_other_batches():
    """Catches batches_at passing a fixed step (every step trains on the same windows) or a fixed seed
    (--seed not changing the data order)."""
    def job(seed):
        return SimpleNamespace(device=torch.device("cpu"), micros=[0], model_args=debug_args(max_seq_len=16),
                               train_data=SimpleNamespace(tokens=np.arange(10_000)),
                               train_args=TrainArgs(batch_size=2, seed=seed))
    x5 = train.batches_at(job(3), 5)[0][0]
    assert not torch.equal(x5, train.batches_at(job(3), 6)[0][0])
    assert not torch.equal(x5, train.batches_at(job(4), 5)[0][0])


def test_a_rank_draws_the_micro_batches_of_its_own_numbers():
    """Catches batches_at numbering a rank's micro-batches by their position in its list: rank 1 of 2
    (micro-batches 1 and 3) would train on rank 0's windows, half the global batch repeated."""
    job = SimpleNamespace(device=torch.device("cpu"), micros=[1, 3], model_args=debug_args(max_seq_len=16),
                          train_data=SimpleNamespace(tokens=np.arange(10_000)),
                          train_args=TrainArgs(batch_size=2))
    got = [x for x, _ in train.batches_at(job, 5)]
    want = [train.data.get_batch(np.arange(10_000), 2, 16, seed=job.train_args.seed, step=5, micro=m)[0]
            for m in (1, 3)]
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


# --- signals --------------------------------------------------------------------------------

@contextmanager
def stop_handler():
    """A Stop whose log is a list, its signal handlers put back afterwards whatever the test did."""
    said = []
    stop = train.Stop(said.append)
    try:
        yield stop, said
    finally:
        stop.restore()


def test_a_first_signal_during_a_save_asks_for_a_stop_and_the_save_goes_on():
    """Catches a first signal during a save taken for a second (the run aborts after the save instead
    of stopping cleanly), and one during a save before the first step (the put-off evaluation's save
    of a resumed run) aborting in the middle of the save."""
    for started in (False, True):
        with stop_handler() as (stop, said):
            stop.started = started
            try:
                with stop.saving():
                    stop.handle(signal.SIGTERM, None)  # no KeyboardInterrupt here, nor after the block
            except KeyboardInterrupt:
                pytest.fail(f"a first signal during a save aborted (started={started})")
            assert stop.requested and not stop.abort and "SIGTERM: finishing this step" in said[-1]


def test_under_torchrun_the_first_signals_line_promises_a_save_only_if_every_process_is_there():
    """Bug caught: `kill -9` of one torchrun worker made torchrun SIGTERM the others, and rank 0 printed
    "SIGTERM: finishing ..., then saving a resumable checkpoint" just before its next collective failed
    with "another process of this torchrun job stopped ...; no checkpoint was written"."""
    said = []
    stop = train.Stop(said.append, "the steps of the next 10 s or so", peers=True)
    try:
        stop.started = True
        stop.handle(signal.SIGTERM, None)
    finally:
        stop.restore()
    assert said == ["\nSIGTERM: finishing the steps of the next 10 s or so, then saving a resumable "
                    "checkpoint if every process of the job is still running (torchrun also sends "
                    "SIGTERM when one has stopped; send it again to abort)"]
    with stop_handler() as (stop, said):  # one process: nothing else can prevent the save
        stop.started = True
        stop.handle(signal.SIGINT, None)
        assert said == ["\nSIGINT: finishing this step, then saving a resumable checkpoint (send it again to "
                        "abort)"]


def test_a_signal_during_an_evaluation_says_it_finishes_the_evaluations_batch():
    """Bug caught: a signal during an evaluation said "finishing this step", though the step was done
    and the evaluation is what it cuts short (and puts off); after the evaluation the line is the
    loop's again."""
    with stop_handler() as (stop, said):
        stop.started = True
        with stop.during("this evaluation's batch (the evaluation is put off)"):
            stop.handle(signal.SIGINT, None)
            assert said == ["\nSIGINT: finishing this evaluation's batch (the evaluation is put off), then "
                            "saving a resumable checkpoint (send it again to abort)"]
        assert stop.until == "this step"


def test_a_signal_before_the_first_step_aborts_and_puts_the_handlers_back():
    """Catches the abort before the first step leaving train.py's handler in place: a later Ctrl-C (while
    the exception unwinds, or after the run in the same process) would still reach the Stop."""
    before = signal.getsignal(signal.SIGINT)
    with stop_handler() as (stop, said):
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) is before and said == [] and not stop.requested


def test_a_second_signal_after_a_save_aborts_at_once_and_puts_the_handlers_back():
    """Catches a save leaving the Stop marked as saving (a second signal after it would wait for a
    save that never comes), or the abort leaving train.py's handler in place (a third Ctrl-C, while
    the exception unwinds, would not be Python's)."""
    before = signal.getsignal(signal.SIGINT)
    with stop_handler() as (stop, said):
        stop.started = True
        with stop.saving():
            pass
        try:
            stop.handle(signal.SIGINT, None)
        except KeyboardInterrupt:
            pytest.fail("a first signal after a save aborted")
        assert stop.requested and signal.getsignal(signal.SIGINT) == stop.handle
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT, None)
        assert not stop.abort and signal.getsignal(signal.SIGINT) is before


def test_ranks_take_the_largest_clock_and_any_stop_request(monkeypatch):
    """Catches agree summing the ranks' clocks (a budget spent N times too fast) or their stop flags,
    rather than taking the largest."""
    ops = []
    monkeypatch.setattr(runtime, "all_reduce",
                        lambda values, device, world, op=None: ops.append(op) or values)
    job = SimpleNamespace(world=runtime.World(0, 2), train_args=TrainArgs(log_every=10, max_steps=25),
                          device="cpu", clock=train.Clock(0), agreed=(0, 0.0), agree_at=1)
    assert not train.agree(job, train.LoopState(step=1), SimpleNamespace(requested=False))
    assert ops == [train.dist.ReduceOp.MAX]


def test_under_torchrun_a_sessions_first_step_is_agreed_on(monkeypatch, tmp_path):
    """Catches the loop not agreeing at its first step under torchrun: the pace between agreements is
    not measured, and a signal is not acted on before the first log step, which may come after the
    30 s torchrun gives its workers."""
    taken, agreed = [], []
    out = train.StepOutput(torch.zeros(4), None, None, torch.tensor(1.0), torch.tensor(0.0))
    monkeypatch.setattr(train, "first_steps", lambda job, batches, step, lr: taken.append(step + 1) or out)
    monkeypatch.setattr(runtime, "all_reduce", lambda values, device, world, op=None:
                        agreed.append(taken[-1]) or values)
    for name in ("start_logging", "log_step", "wrap_up", "evaluate_and_save"):
        monkeypatch.setattr(train, name, lambda *a: None)
    monkeypatch.setattr(train, "batches_at", lambda job, step: [])
    job = SimpleNamespace(train_args=TrainArgs(max_steps=7, log_every=10), world=runtime.World(0, 2),
                          run_dir=tmp_path, log=lambda msg: None, model=torch.nn.Linear(1, 1),
                          device=torch.device("cpu"), clock=train.Clock(0), tokens_per_step=1, metrics=None,
                          resumed_window=None, drawing=None)
    train.loop(job, train.LoopState(step=2))  # a resumed session: its first step is step 3
    assert taken == [3, 4, 5, 6, 7] and agreed[0] == 3 and agreed[-1] == 7


def test_a_single_process_moves_the_runs_clock_at_every_step(monkeypatch):
    """Catches agree (one process) leaving the state's clock where it was: --max_minutes would never end
    the run, the schedule would not follow the clock, and checkpoints would save a stale elapsed."""
    monkeypatch.setattr(train.Clock, "elapsed", lambda self: 42.0)
    job = SimpleNamespace(world=runtime.World(), clock=train.Clock(1))
    state = train.LoopState(step=3, elapsed=1.0)
    assert not train.agree(job, state, SimpleNamespace(requested=False)) and state.elapsed == 42.0
    assert train.agree(job, state, SimpleNamespace(requested=True))


def test_a_budget_is_spent_once_the_clock_reaches_it_not_only_past_it():
    """Mutation caught: Clock.spent comparing elapsed > budget rather than >=: a session whose clock
    stands exactly at --max_minutes would train a step more, where runplan.limit_reached (>=) takes
    the same checkpoint for a finished run. No budget (0) is never spent."""
    clock = train.Clock(max_minutes=1)
    assert clock.spent(train.LoopState(elapsed=60.0)) and not clock.spent(train.LoopState(elapsed=59.5))
    assert not train.Clock(max_minutes=0).spent(train.LoopState(elapsed=1e9))


# --- the loop -------------------------------------------------------------------------------

def test_the_schedule_reads_the_clock_in_minutes(monkeypatch, tmp_path):
    """Catches the loop passing lr_at the seconds spent rather than the minutes: under --max_minutes
    the cosine would run 60 times too fast."""
    seen, real = [], train.lr_at
    monkeypatch.setattr(train, "lr_at",
                        lambda t, step, minutes=0.0: seen.append(minutes) or real(t, step, minutes))
    lrs, out = [], train.StepOutput(torch.zeros(4), None, None, torch.tensor(1.0), torch.tensor(0.0))
    monkeypatch.setattr(train, "first_steps", lambda job, batches, step, lr: lrs.append(lr) or out)
    for name in ("start_logging", "log_step", "wrap_up"):
        monkeypatch.setattr(train, name, lambda *a: None)
    monkeypatch.setattr(train, "evaluate_and_save", lambda *a: None)
    monkeypatch.setattr(train, "batches_at", lambda job, step: [])
    monkeypatch.setattr(train.Clock, "elapsed", lambda self: 120.0)  # 2 minutes at every agreement
    t = TrainArgs(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=3, max_minutes=10)
    job = SimpleNamespace(train_args=t, world=runtime.World(), run_dir=tmp_path, log=lambda msg: None,
                          model=torch.nn.Linear(1, 1), device=torch.device("cpu"), clock=train.Clock(10),
                          tokens_per_step=1, metrics=None, resumed_window=None, drawing=None)
    result = train.loop(job, train.LoopState())
    assert result["finished"] == "max_steps" and seen == [0.0, 2.0, 2.0]
    assert lrs == [1.0, pytest.approx(real(t, 1, 2.0)), pytest.approx(real(t, 2, 2.0))]


def test_a_signal_off_the_evaluation_grid_puts_no_evaluation_off(monkeypatch, tmp_path):
    """Catches a signal at a step that is not an evaluation step marking an evaluation due: the resumed
    run would evaluate (and write a val record, and maybe best.pt) off the --eval_every grid."""
    calls = []
    monkeypatch.setattr(train, "evaluate_step", lambda job, state, window: calls.append(("eval", state.step)))
    monkeypatch.setattr(train, "write_checkpoint", lambda job, state, window, name, wait=False: calls.append(
        (name, state.step, state.eval_due)))
    job = SimpleNamespace(train_args=TrainArgs(max_steps=6, eval_every=2, save_every=4), run_dir=tmp_path)
    state, window = train.LoopState(step=3), train.Window(train.LoopState(), torch.device("cpu"))
    assert train.evaluate_and_save(job, state, window, stop_now=True) is None
    assert calls == [("last.pt", 3, False)] and not state.eval_due


def test_a_save_settles_the_windows_skipped_steps_into_the_checkpoint(monkeypatch, tmp_path):
    """Catches write_checkpoint not settling the window's non-finite steps into the state first: the
    checkpoint would hold the count and streak of the last log step, and a run resumed from it would
    forget the steps skipped since."""
    saved = []
    monkeypatch.setattr(train.checkpoint, "save_checkpoint",
                        lambda path, ckpt: saved.append((path.name, ckpt)))
    cpu = torch.device("cpu")
    job = SimpleNamespace(model=torch.nn.Linear(1, 1), world=runtime.World(), device=cpu, stop=None,
                          run_dir=tmp_path, tokens_per_step=1, peak=None, clock=train.Clock(0),
                          saves=train.checkpoint.Saves(background=False),  # (recorded here)
                          to_checkpoint=lambda state, window: (state.skipped_steps, state.bad_in_row,
                                                               window["settled"]))
    state, window = train.LoopState(), train.Window(train.LoopState(), cpu)
    for skipped in (1.0, 0.0, 1.0, 1.0):
        window.add(train.StepOutput(torch.zeros(4), None, None, torch.tensor(1.0), torch.tensor(skipped)))
    train.write_checkpoint(job, state, window, "last.pt")
    assert saved == [("last.pt", (3, 2, 3))]


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_checkpoint_saves_the_clock_after_its_steps_evaluation(monkeypatch, tmp_path, ranks):
    """Catches a save keeping the elapsed seconds agree read after the step, before its evaluation and
    best.pt's save: a run resumed from it never counts those seconds (a --max_minutes budget larger
    than it was given, a schedule behind the uninterrupted run's). Under torchrun the ranks' largest."""
    if ranks == 2:
        as_two_ranks(monkeypatch)
    now, saved = [0.0], []
    monkeypatch.setattr(train.Clock, "elapsed", lambda self: self.before + now[0])

    def evaluate(job, state, stop=None):
        now[0] += 30.0  # the evaluation's seconds
        return True
    monkeypatch.setattr(train, "run_eval", evaluate)
    monkeypatch.setattr(train.checkpoint, "save_checkpoint",
                        lambda path, ckpt: saved.append((path.name, ckpt)))
    cpu = torch.device("cpu")
    job = SimpleNamespace(model=torch.nn.Linear(1, 1), world=runtime.World(0, ranks), device=cpu, stop=None,
                          run_dir=tmp_path, tokens_per_step=1, peak=None, clock=train.Clock(10, 100.0),
                          saves=train.checkpoint.Saves(background=False),  # (recorded here)
                          train_args=TrainArgs(max_steps=10, eval_every=4, save_every=4),
                          to_checkpoint=lambda state, window: state.elapsed)
    state = train.LoopState(step=4, elapsed=100.0)  # as agree left it after the step
    assert train.evaluate_and_save(job, state, train.Window(train.LoopState(), cpu), stop_now=False) == 4
    assert saved == [("best.pt", 130.0), ("last.pt", 130.0)] and state.elapsed == 130.0


# --- how main exits ------------------------------------------------------------------------

def test_main_reports_out_of_memory_in_one_line_and_lets_any_other_error_through(monkeypatch, capsys):
    """Catches main taking every exception from set-up for out of memory (a bug would be reported as
    "out of memory", with advice about the batch, and its traceback lost)."""
    def fails(error):
        def run(*args, **kwargs):
            raise error
        return run
    monkeypatch.setattr(train, "run", fails(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):
        train.main(["--preset", "debug"])
    assert "out of memory" not in capsys.readouterr().err
    monkeypatch.setattr(train, "run", fails(torch.OutOfMemoryError("CUDA out of memory. Tried")))
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "debug"])
    assert e.value.code == 1
    assert capsys.readouterr().err == ("train.py: error: out of memory (OutOfMemoryError: CUDA out of "
                                       "memory. Tried); lower --batch_size or set --grad_checkpoint true; "
                                       "the checkpoints already written are complete\n")


# --- evaluation and logging under torchrun, best.pt's ties, the clock, --eval_only ------------

def as_two_ranks(monkeypatch):
    """runtime.all_reduce as under torchrun with 2 ranks that hold the same numbers (a sum doubles them;
    a verdict or a MAX is the rank's own); a tensor's all_reduce leaves it as it is."""
    monkeypatch.setattr(runtime, "all_reduce", lambda values, device, world, op=None:
                        [2 * v for v in values] if op is None else list(values))
    monkeypatch.setattr(train.dist, "all_reduce", lambda tensor, *a, **k: None)


def eval_set(n_tokens=41, world=None, batch_size=2, eval_windows=0):
    """An EvalSet of windows of 4 over n_tokens token ids (a byte each) for `world`, in batches of
    batch_size windows."""
    return train.EvalSet(SimpleNamespace(tokens=np.arange(5, 5 + n_tokens), meta={"sha256": "0" * 64}),
                         SimpleNamespace(token_bytes=np.ones(320, dtype=np.int64)), debug_args(max_seq_len=4),
                         TrainArgs(batch_size=batch_size, eval_batch_size=batch_size,
                                   eval_windows=eval_windows), world or runtime.World(), "cpu")


class MeanTarget(torch.nn.Module):
    """A stand-in model whose loss on a batch is the mean id of its real targets."""

    def forward(self, x, targets):
        return SimpleNamespace(lm_loss=targets[targets >= 0].double().mean())


def test_under_torchrun_each_rank_evaluates_its_own_share_of_the_windows():
    """Catches EvalSet giving every rank the first rank's windows (under torchrun the validation loss
    would be rank 0's share counted N times, the rest of the set never evaluated)."""
    whole, ranks = eval_set(), [eval_set(world=runtime.World(r, 2)) for r in (0, 1)]
    real = torch.cat([v.x[(v.y >= 0).any(1)] for v in ranks])
    assert torch.equal(real, whole.x[(whole.y >= 0).any(1)])
    assert sum(v.tokens for v in ranks) == whole.tokens == 40


def test_under_torchrun_evaluation_sums_nats_tokens_and_bytes_over_the_ranks(monkeypatch):
    """Catches evaluate reporting this rank's tokens or bytes rather than the sums over the ranks, or
    dividing this rank's nats by every rank's tokens (the loss N times too low under torchrun)."""
    as_two_ranks(monkeypatch)
    val = eval_set(world=runtime.World(0, 2))  # windows 0-4 of 10: targets 6..25
    r = train.evaluate(MeanTarget(), val, train.nullcontext(), "cpu")
    assert (r["tokens"], r["bytes"]) == (2 * val.tokens, 2 * val.bytes) == (40, 40)
    assert r["nats_per_token"] == pytest.approx(np.arange(6, 26).mean())


def test_an_evaluation_reports_the_seconds_it_took(monkeypatch):
    """Catches evaluate's seconds not measured around the pass (the val record's val_seconds wrong)."""
    now = [100.0]
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    class Slow(MeanTarget):
        def forward(self, x, targets):
            now[0] += 1.5
            return super().forward(x, targets)
    assert train.evaluate(Slow(), eval_set(n_tokens=17), train.nullcontext(), "cpu")["seconds"] == 3.0


def test_a_tie_with_the_best_validation_is_no_improvement(monkeypatch):
    """Catches run_eval taking a result equal to the best for an improvement: best.pt rewritten with a
    later, no better checkpoint (and its step moved on)."""
    results = iter([2.0, 2.0, 1.5, 1.5])
    monkeypatch.setattr(train, "evaluate_job", lambda job, stop, bar=None: {"nats_per_token": next(results)})
    monkeypatch.setattr(train, "write_val_record", lambda job, state, r: None)
    job, state = SimpleNamespace(world=runtime.World(), device="cpu"), train.LoopState()
    assert [train.run_eval(job, state) for _ in range(4)] == [True, False, True, False]
    assert state.best_val == 1.5


def test_an_evaluation_a_signal_cut_short_writes_no_best_pt(monkeypatch):
    """Mutation caught: evaluate_step writing best.pt when run_eval returns None (a signal cut the
    evaluation short) as for an improvement: best.pt would hold weights never evaluated, in place of
    the best ones."""
    monkeypatch.setattr(train, "run_eval", lambda job, state, stop=None: None)
    saved = []
    monkeypatch.setattr(train, "write_checkpoint", lambda job, state, window, name, wait=False: saved.append(
        name))
    assert train.evaluate_step(SimpleNamespace(), train.LoopState(step=4), None) is None
    assert saved == []


def test_under_torchrun_only_rank_0_writes_records_checkpoints_and_the_eval_only_line(monkeypatch, tmp_path,
                                                                                      capsys):
    """Catches a rank other than 0 writing the val record (or the train record) to metrics.jsonl, saving a
    checkpoint, or printing --eval_only's JSON line: each once per rank, the files written over by
    every process at once."""
    as_two_ranks(monkeypatch)
    wrote = []
    monkeypatch.setattr(train, "evaluate_job", lambda job, stop=None, bar=None: {"nats_per_token": 1.0})
    monkeypatch.setattr(train, "write_val_record", lambda job, state, r: wrote.append("val"))
    monkeypatch.setattr(train.checkpoint, "save_checkpoint", lambda path, ckpt: wrote.append(path.name))
    cpu = torch.device("cpu")
    job = SimpleNamespace(world=runtime.World(1, 2), device=cpu, model=torch.nn.Linear(1, 1), stop=None,
                          run_dir=tmp_path, tokens_per_step=1, peak=None, ckpt_path=tmp_path / "last.pt",
                          imported=False, to_checkpoint=lambda state, window: {}, fpt=1.0,
                          train_args=TrainArgs(), clock=train.Clock(0),
                          metrics=SimpleNamespace(write=lambda rec: wrote.append("train")))
    state, window = train.LoopState(), train.Window(train.LoopState(), cpu)
    assert train.run_eval(job, state)
    train.write_checkpoint(job, state, window, "last.pt")
    window.add(train.StepOutput(torch.ones(4), None, None, torch.tensor(1.0), torch.tensor(0.0)))
    train.log_step(job, state, window, 1e-3, SimpleNamespace(set_postfix=lambda **kw: wrote.append("bar")))
    assert train.evaluate_only(job, state) == {"nats_per_token": 1.0, "step": 0,
                                               "checkpoint": str(tmp_path / "last.pt")}
    assert wrote == [] and capsys.readouterr().out == ""


def test_under_torchrun_every_rank_learns_whether_rank_0_printed_the_eval_only_line(monkeypatch, tmp_path):
    """Bug caught: `torchrun --nproc_per_node 2 -- train.py --eval_only ... > /dev/full` hung (2 runs in 3)
    after rank 0's one line: rank 1 had finished and waited at the last barrier for a rank 0 that failed
    to print its result, and rank 0, leaving its process group under it, never exited. Now the ranks
    agree on the print: rank 0 raises its error, the others a RankError (no line), none waits."""
    monkeypatch.setattr(train, "evaluate_job", lambda job, stop=None, bar=None: {"nats_per_token": 1.0})
    told = []

    def rank_0_failed(values, device, world, op=None):  # (the verdict: [failures, rank 0's failure])
        told.append(list(values))
        return [1.0, 1.0]
    monkeypatch.setattr(runtime, "all_reduce", rank_0_failed)
    job = SimpleNamespace(world=runtime.World(1, 2), device=torch.device("cpu"), imported=False,
                          ckpt_path=tmp_path / "last.pt")
    with pytest.raises(errors.RankError, match="^another rank failed printing the result$"):
        train.evaluate_only(job, train.LoopState())
    job.world = runtime.World(0, 2)
    monkeypatch.setattr(train.sys, "stdout", SimpleNamespace(write=lambda text: len(text), flush=lambda: None,
                                                             lost=True))
    with pytest.raises(errors.RunError, match="^cannot print the result: standard output is closed"):
        train.evaluate_only(job, train.LoopState())
    assert told == [[0.0, 0.0], [1.0, 1.0]]  # (rank 1 waited for the verdict; rank 0 told its failure)


def logged_on_two_ranks(monkeypatch, tmp_path, steps=2, seconds=1.0):
    """log_step's train record on rank 0 of 2, over `steps` steps of `seconds` on a fake clock, each of 100
    tokens (the global batch, both ranks' micro-batches) at 6 FLOPs each; a peak of 1000 FLOP/s."""
    as_two_ranks(monkeypatch)
    now = [0.0]
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    records = []
    cpu = torch.device("cpu")
    job = SimpleNamespace(device=cpu, world=runtime.World(0, 2), tokens_per_step=100, fpt=6.0, peak=1000.0,
                          train_args=TrainArgs(), run_dir=tmp_path, log=lambda msg: None,
                          metrics=SimpleNamespace(write=records.append))
    state, window = train.LoopState(), train.Window(train.LoopState(), cpu)
    for _ in range(steps):
        now[0] += seconds
        window.add(train.StepOutput(torch.ones(4), None, None, torch.tensor(1.0), torch.tensor(0.0)))
        state.step, state.tokens = state.step + 1, state.tokens + 100
    train.log_step(job, state, window, 1e-3, SimpleNamespace(set_postfix=lambda **kw: None))
    return records[-1]


def test_under_torchrun_tokens_per_second_are_the_global_batchs_and_mfu_counts_every_process(monkeypatch,
                                                                                           tmp_path):
    """Catches tokens/s or MFU divided by the number of processes once more (a step's tokens are already
    the global batch's, over all ranks) or the possible FLOPs counted for one process (MFU N times too
    high under torchrun)."""
    rec = logged_on_two_ranks(monkeypatch, tmp_path)
    # 200 tokens in 2 s; 1200 FLOPs done of the 2 processes' 2 x 2 s x 1000 FLOP/s
    assert rec["tokens_per_s"] == pytest.approx(100.0) and rec["mfu"] == pytest.approx(0.3)
    assert rec["loss"] == 1.0 and rec["window_steps"] == 2


def test_a_resumed_window_counts_its_earlier_tokens_at_the_tokens_per_step_they_had():
    """Catches an older checkpoint's window (saved without its tokens) resumed with its earlier steps'
    tokens left out (tokens/s and MFU low), not counted at today's tokens per step; and a newer one's
    counted at today's, not at those they were taken with (another --batch_size or --grad_accum)."""
    cpu = torch.device("cpu")
    job = SimpleNamespace(device=cpu, world=runtime.World(), tokens_per_step=100,
                          resumed_window={"steps": 2, "busy_seconds": 2.0, "tokens": 400})  # 200 a step
    window = train.Window.from_checkpoint(train.LoopState(), job)
    window.add(train.StepOutput(torch.ones(4), None, None, torch.tensor(1.0), torch.tensor(0.0)))
    assert window.tokens(job) == 500
    del job.resumed_window["tokens"]  # an older checkpoint's: at today's tokens per step
    assert train.Window.from_checkpoint(train.LoopState(), job).tokens(job) == 200


def test_under_torchrun_a_resumed_windows_sums_are_rank_0s_alone():
    """Catches every rank taking up the saved window's sums (they are already summed over the ranks): the
    resumed record's loss sums and applied steps counted once per rank (its means right by chance, its
    expert shares and the steps it averages over not)."""
    cpu = torch.device("cpu")
    saved = {"steps": 2, "busy_seconds": 2.0, "applied": torch.tensor(4.0), "losses": torch.full((4,), 8.0)}
    for rank, applied, losses in ((0, 4.0, 8.0), (1, 0.0, 0.0)):
        job = SimpleNamespace(device=cpu, world=runtime.World(rank, 2), tokens_per_step=100,
                              resumed_window=saved)
        window = train.Window.from_checkpoint(train.LoopState(), job)
        assert float(window.applied) == applied and torch.equal(window.losses, torch.full((4,), losses))


def test_eval_only_evaluates_the_eager_model_and_prints_the_step_and_checkpoint(monkeypatch, tmp_path,
                                                                                  capsys):
    """Catches --eval_only's line without the checkpoint it evaluated or its step, or a compiled
    model's one pass evaluated compiled (compiling it costs more than the pass saves:
    train.COMPILE_EVAL_AFTER_S)."""
    seen = []
    monkeypatch.setattr(train, "evaluate",
                        lambda model, val, autocast, device, stop, bar: seen.append(model) or {"seconds": 1})
    job = SimpleNamespace(eval_trials=1, compiled="compiled", model="eager", val=None, autocast=None,
                          device="cpu", world=runtime.World(), ckpt_path=tmp_path / "best.pt",
                          imported=False, eager_eval_s=0.0)
    result = train.evaluate_only(job, train.LoopState(step=7))
    assert result == {"seconds": 1, "step": 7, "checkpoint": str(tmp_path / "best.pt")} and seen == ["eager"]
    assert capsys.readouterr().out.splitlines() == [json.dumps(result)]


def test_a_window_saved_again_after_a_resume_counts_each_processes_steps_once(monkeypatch):
    """Catches Window.rank_steps counting a resumed window's steps from before again at today's number of
    processes (a window saved by 2 processes, resumed by 1 and saved again: 7 process-steps, not 5)."""
    monkeypatch.setattr(train.dist, "all_reduce", lambda tensor, *a, **k: None)
    cpu = torch.device("cpu")
    job = SimpleNamespace(device=cpu, world=runtime.World(0, 2), tokens_per_step=100, peak=None,
                          resumed_window=None)
    window = train.Window(train.LoopState(), cpu)
    for _ in range(2):
        window.add(train.StepOutput(torch.ones(4), None, None, torch.tensor(1.0), torch.tensor(0.0)))
    job.resumed_window = window.to_checkpoint(job)
    assert (job.resumed_window["steps"], job.resumed_window["rank_steps"]) == (2, 4)
    job.world = runtime.World()
    window = train.Window.from_checkpoint(train.LoopState(), job)
    window.add(train.StepOutput(torch.ones(4), None, None, torch.tensor(1.0), torch.tensor(0.0)))
    saved = window.to_checkpoint(job)
    assert (saved["steps"], saved["rank_steps"], saved["tokens"]) == (3, 5, 300)


def test_a_window_resumed_by_1_then_2_processes_weighs_each_step_once(monkeypatch):
    """Catches a saved window's sums (of per-rank means, over the saving run's ranks) taken up as they
    are by another number of processes: 2 steps saved by 2 ranks then weighed twice what the step the
    1 process took after them did (2.6, not 3.0, where an uninterrupted run weighs each step once); and
    the window saved again by that process, resumed by 2, scaled by its process-steps per step (5 / 3)
    rather than by the 1 process whose sums they now are."""
    monkeypatch.setattr(train.dist, "all_reduce", lambda tensor, *a, **k: tensor.mul_(2))  # 2 ranks alike
    cpu = torch.device("cpu")
    job = SimpleNamespace(device=cpu, world=runtime.World(0, 2), tokens_per_step=100, peak=None,
                          resumed_window=None)
    window = train.Window(train.LoopState(), cpu)
    for _ in range(2):
        window.add(train.StepOutput(torch.full((4,), 2.0), None, None, torch.tensor(1.0), torch.tensor(0.0)))
    job.resumed_window = window.to_checkpoint(job)
    job.world = runtime.World()
    window = train.Window.from_checkpoint(train.LoopState(), job)
    window.add(train.StepOutput(torch.full((4,), 5.0), None, None, torch.tensor(1.0), torch.tensor(0.0)))
    assert window.record(job)["loss"] == pytest.approx((2.0 + 2.0 + 5.0) / 3)
    job.resumed_window = window.to_checkpoint(job)
    job.world = runtime.World(0, 2)
    # rank 0 holds both ranks' sums: 2 x (2 + 2 + 5)
    window = train.Window.from_checkpoint(train.LoopState(), job)
    assert (float(window.losses[0]), float(window.applied)) == (18.0, 6.0)


def test_an_older_checkpoints_window_resumed_under_torchrun_counts_its_steps_at_todays_processes():
    """Catches a window saved without its process-steps (an older checkpoint's) counting them as one
    process's when resumed by 2: its applied steps (the means' divisor) and busy process-seconds (MFU's
    earlier FLOPs at today's peak) half what they were."""
    cpu = torch.device("cpu")
    job = SimpleNamespace(device=cpu, world=runtime.World(0, 2), tokens_per_step=100, peak=None,
                          resumed_window={"steps": 2, "busy_seconds": 3.0, "losses": torch.full((4,), 8.0)})
    window = train.Window.from_checkpoint(train.LoopState(), job)
    assert (window.rank_steps(job.world), float(window.applied)) == (4, 4.0)
    assert window.process_seconds(job.world, window.busy_before) == 6.0
