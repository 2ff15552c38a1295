"""train.py's set-up and start: load_data (the tokenizer checked before data work, rank 0 first),
make_log, setup and build_job (the model's seed, the Job's fields, the compile choice, the resumed
state), start_logging and open_logs (the start-up summary, rank 0 alone), run (the run folder
released) and memory_advice. Each test names the bug it catches: a mutation audit found these went
unnoticed."""

import fcntl
import gc
import json
import shutil
from contextlib import contextmanager

import pytest
import torch
from conftest import WORDS, write_stories

import checkpoint
import config
import data
import runplan
import runtime
import train
from config import ModelArgs, TrainArgs
from errors import RunError
from model import count_parameters, flops_per_token


def argv(tmp_path, corpus, cache, *extra):
    return ["--preset", "debug", "--data", str(corpus), "--out_dir", str(tmp_path / "ckpt"),
            "--cache_dir", str(cache), "--plot", "", "--wandb_mode", "disabled", *extra, "--run", "r"]


@pytest.fixture(scope="module")
def done(tmp_path_factory, corpus, cache):
    """A run of 2 steps (evaluated at step 2: its checkpoint holds a finite best)."""
    tmp = tmp_path_factory.mktemp("done")
    train.main(argv(tmp, corpus, cache, "--max_steps", "2"))
    return tmp / "ckpt" / "r"


def copy_run(done, tmp_path):
    shutil.copytree(done, tmp_path / "ckpt" / "r")
    return tmp_path / "ckpt" / "r"


def parse(args):
    parsed = config.parse_args([ModelArgs, TrainArgs], args, prog="train.py",
                               checked_later=lambda ns: bool(ns.resume) or ns.eval_only)
    preset, (model_args, train_args) = parsed
    return model_args, train_args, preset, parsed.given


@pytest.fixture
def set_up():
    """train.setup on a command line; the run folders it holds are released at the end."""
    jobs = []

    def make(args):
        job, state = train.setup(*parse(args))
        jobs.append(job)
        return job, state
    yield make
    for job in jobs:
        if job.folder is not None:
            job.folder.release()


# --- load_data --------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["--resume", "--init_from"])
def test_a_resume_with_another_tokenizer_is_refused_before_any_data_work(tmp_path, done, corpus, cache,
                                                                          monkeypatch, how):
    """The first tokenizer check (before data.prepare) skipped: the caches were built first (at
    --init_from too, with the tokenizer beside the checkpoint)."""
    run_dir = copy_run(done, tmp_path)
    spec = json.loads((run_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = [k for k, v in vocab.items() if v in (100, 101)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (run_dir / "tokenizer.json").write_text(json.dumps(spec))
    prepared = []
    monkeypatch.setattr(data, "prepare", lambda *a, **k: prepared.append(1))
    extra = ["--resume"] if how == "--resume" else ["--init_from", str(run_dir), "--out_dir",
                                                    str(tmp_path / "new")]
    with pytest.raises(checkpoint.CheckpointError, match="is not the tokenizer"):
        train.setup(*parse(argv(tmp_path, corpus, cache, "--max_steps", "4", *extra)))
    assert prepared == []


def test_a_resume_whose_tokenizer_json_is_gone_checks_the_cached_tokenizer(tmp_path, done, cache, set_up):
    """The second tokenizer check (of the one data.prepare found or trained, the run's tokenizer.json
    gone) skipped: a resume on other text trained on with another tokenizer of the same size."""
    run_dir = copy_run(done, tmp_path)
    (run_dir / "tokenizer.json").unlink()
    other = write_stories(tmp_path / "other.txt", words=[w + "s" for w in WORDS])
    with pytest.raises(checkpoint.CheckpointError, match="is not the tokenizer"):
        set_up(argv(tmp_path, other, tmp_path / "cache", "--max_steps", "4", "--resume"))


def test_the_data_is_prepared_by_rank_0_first(tmp_path, corpus, cache, monkeypatch):
    """load_data not inside runtime.rank0_first: under torchrun every rank built the caches at once."""
    inside, order = [], []

    @contextmanager
    def rank0_first(world, device):
        inside.append(True)
        yield
        inside.pop()
    real = data.prepare
    monkeypatch.setattr(runtime, "rank0_first", rank0_first)
    monkeypatch.setattr(data, "prepare", lambda *a, **k: order.append(list(inside)) or real(*a, **k))
    plan = runplan.plan_run(*parse(argv(tmp_path, corpus, cache, "--max_steps", "2")))
    train.load_data(plan, runtime.World(), torch.device("cpu"), print)
    assert order == [[True]]


def test_make_log_prints_on_rank_0_alone(capsys):
    """make_log printing on every rank: under torchrun each line came once per process."""
    train.make_log(runtime.World(1, 2))("from rank 1")
    train.make_log(runtime.World(0, 2))("from rank 0")
    out = capsys.readouterr().out
    assert "from rank 0" in out and "from rank 1" not in out


# --- build_job ----------------------------------------------------------------------------------

def test_a_new_models_weights_are_a_function_of_the_seed(tmp_path, corpus, cache, set_up):
    """torch.manual_seed(seed) dropped before building the model: runs with one seed differed."""
    torch.manual_seed(123)
    a, _ = set_up(argv(tmp_path / "a", corpus, cache, "--seed", "5"))
    torch.rand(10)
    b, _ = set_up(argv(tmp_path / "b", corpus, cache, "--seed", "5"))
    c, _ = set_up(argv(tmp_path / "c", corpus, cache, "--seed", "6"))
    wa, wb, wc = (j.model.state_dict()["embed_tokens.weight"] for j in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_grad_checkpoint_reaches_the_model(tmp_path, corpus, cache, set_up):
    """--grad_checkpoint not passed to the model: it kept every activation (out of memory); nor
    --grad_checkpoint_layers (every layer recomputed), nor the model's layers to the evaluation's auto
    batch (2 of the debug preset's 4 recomputed: 3x --batch_size, evened out)."""
    on, _ = set_up(argv(tmp_path / "a", corpus, cache, "--grad_checkpoint", "true",
                        "--grad_checkpoint_layers", "2", "--batch_size", "1"))
    off, _ = set_up(argv(tmp_path / "b", corpus, cache, "--batch_size", "1"))
    assert on.model.grad_checkpoint is True and off.model.grad_checkpoint is False
    assert on.model.grad_checkpoint_layers == 2 and off.model.grad_checkpoint_layers == 0
    assert len(off.val.x) == off.val.batch_size == 4  # (4 windows: one batch of 4, at most 4x)
    assert on.val.batch_size == 2  # (at most 3: two batches of 2)


def build(tmp_path, corpus, cache, *extra, world=None):
    """build_job on a command line's plan (no settings checks, no run folder), on the CPU."""
    plan = runplan.plan_run(*parse(argv(tmp_path, corpus, cache, *extra)))
    return train.build_job(plan, torch.device("cpu"), world or runtime.World(), lambda msg: None)


def test_a_ranks_job_holds_its_micro_batches_ddp_and_the_runs_figures(tmp_path, corpus, cache, monkeypatch):
    """The Job of rank 1 of 2: its micro-batches (not rank 0's), DDP wrapping the compiled model with
    find_unused_parameters for a vision model, DDP's no_sync, tokens per step over all ranks, FLOPs
    per token at the context length, and the peak measured at the run's dtype."""
    wrapped, peaks = [], []

    class DDP(torch.nn.Module):
        def __init__(self, module, device_ids=None, find_unused_parameters=False, broadcast_buffers=True):
            super().__init__()
            self.module = module
            wrapped.append((module, device_ids, find_unused_parameters))
            # Bug caught: DDP broadcast rank 0's buffers (RoPE tables each rank makes alike) at every forward
            assert broadcast_buffers is False

        def no_sync(self):
            return train.nullcontext()
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", DDP)
    monkeypatch.setattr(runtime, "rank0_first", lambda world, device: train.nullcontext())
    monkeypatch.setattr(runtime, "peak_flops", lambda device, dtype: peaks.append(dtype) or 7e12)
    job, _ = build(tmp_path, corpus, cache, "--grad_accum", "4", "--batch_size", "3", "--max_seq_len", "32",
                   "--dtype", "bfloat16", world=runtime.World(1, 2))
    assert job.micros == [1, 3]
    (module, device_ids, unused), = wrapped
    assert module is job.compiled is job.model and device_ids is None and unused is False
    assert isinstance(job.runner, DDP) and job.no_sync == job.runner.no_sync
    assert job.tokens_per_step == 4 * 3 * 32 and job.world.size == 2
    assert job.fpt == flops_per_token(job.model_args, 32)
    assert job.peak == 7e12 and peaks == [torch.bfloat16]
    wrapped.clear()
    build(tmp_path / "v", corpus, cache, "--vision", "true", world=runtime.World(0, 2))
    assert wrapped[0][2] is True


@pytest.mark.parametrize("mode, trials", [("default", 1), ("reduce-overhead", 2), ("max-autotune", 2)])
def test_a_compiled_model_gets_its_mode_and_trials_and_an_eager_one_none(tmp_path, corpus, cache,
                                                                           monkeypatch, mode, trials):
    """The compile mode dropped, the trials of a CUDA-graph mode (2: compile, then record) made 1, or
    an eager model given trials (its first steps are not compiling: the start-up line says so)."""
    modes = []

    def compile_model(model, choice, device, log=print, mode="default"):
        modes.append((choice, mode))
        return torch.nn.Sequential(model) if choice == "true" else model
    monkeypatch.setattr(runtime, "compile_model", compile_model)
    job, _ = build(tmp_path, corpus, cache, "--compile", "true", "--compile_mode", mode)
    assert modes == [("true", mode)] and job.compiled is not job.model and job.runner is job.compiled
    assert job.trials == job.eval_trials == trials
    eager, _ = build(tmp_path / "e", corpus, cache, "--compile", "false", "--compile_mode", mode)
    assert eager.compiled is eager.model and eager.trials == eager.eval_trials == 0


def resave(path, **changes):
    checkpoint.save_checkpoint(path, {**checkpoint.load_checkpoint(path), **changes})


def test_a_resumed_job_goes_on_from_its_checkpoint(tmp_path, done, corpus, cache, set_up):
    """A resumed Job losing what its checkpoint holds: the clock of the earlier sessions, the best of a
    checkpoint that names no validation windows (older ones: the best kept), the open window, the W&B
    run, the checkpoint's path, or `continues` (it truncates metrics.jsonl to the checkpoint's step)."""
    run_dir = copy_run(done, tmp_path)
    window = {"steps": 1, "tokens": 256}
    resave(run_dir / "last.pt", elapsed=500.0, best_val=1.25, val_set="", window=window, wandb_id="w1")
    job, state = set_up(argv(tmp_path, corpus, cache, "--max_steps", "4", "--resume"))
    assert state.step == 2 and state.elapsed == 500.0 and job.clock.elapsed() >= 500.0
    assert state.best_val == 1.25 and state.val_set == job.val.key != ""
    assert job.resumed_window == window and job.wandb_id == "w1" and job.continues
    assert job.ckpt_path == run_dir / "last.pt"
    assert job.opt.state_dict()["state"]  # AdamW's moments, loaded
    fork, _ = set_up(["--resume", str(run_dir / "last.pt"), "--run", "f", "--out_dir", str(tmp_path / "ckpt"),
                      "--max_steps", "4", "--cache_dir", str(cache), "--plot", ""])
    assert not fork.continues and fork.wandb_id is None and fork.resumed_window == window


def test_eval_only_of_a_weights_only_checkpoint_builds_no_optimizer(tmp_path, done, corpus, cache, set_up):
    """--eval_only building an optimizer, restoring the random state, or locking the run folder: a
    checkpoint holding the weights alone could not be evaluated, nor a run a train.py is training."""
    run_dir = copy_run(done, tmp_path)
    ckpt = checkpoint.load_checkpoint(run_dir / "last.pt")
    keep = ("model", "model_args", "train_args", "preset", "tokenizer", "step")
    checkpoint.save_checkpoint(run_dir / "last.pt", {k: ckpt[k] for k in keep})
    with open(run_dir / "run.lock", "a") as held:  # as a training train.py holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        job, state = set_up(["--run", "r", "--out_dir", str(tmp_path / "ckpt"), "--eval_only", "--val_data",
                             str(corpus), "--cache_dir", str(cache)])
    assert job.opt is None and job.train_data is None and state.step == 2 and job.folder is None
    assert torch.equal(job.model.state_dict()["embed_tokens.weight"], ckpt["model"]["embed_tokens.weight"])


# --- start_logging, run -----------------------------------------------------------------------------

def test_the_start_up_summary_names_the_runs_figures(tmp_path, done, corpus, cache, set_up):
    """The start-up line losing the resumed step, the tokens per step, the world size, eager/compiled,
    the peak; the "compiling" line shown for an eager model."""
    copy_run(done, tmp_path)
    lines = []
    job, state = set_up(argv(tmp_path, corpus, cache, "--max_steps", "9", "--resume", "--max_minutes", "7"))
    job.log, job.peak = lines.append, 3.5e12
    train.start_logging(job, state)
    run = next(line for line in lines if line.startswith("run: "))
    assert "eager, world size 1 | 256 tokens per step (1 x 4 x 64) | steps 2 -> 9 or 7 minutes" in run
    assert run.endswith("| peak 3.50 TFLOP/s") and "dtype float32" in run
    assert not any(line.startswith("compiling") for line in lines)
    assert json.loads((job.run_dir / "train.json").read_text())["max_steps"] == 9
    lines.clear()
    job.trials, job.compiled = 1, torch.nn.Sequential(job.model)
    job.metrics.finish(exit_code=0)
    train.start_logging(job, state)
    assert any(line.startswith("compiling") for line in lines)
    assert "compiled, world size 1" in next(line for line in lines if line.startswith("run: "))
    job.metrics.finish(exit_code=0)


def test_wandb_gets_the_parameter_counts_and_expert_panels_named_by_the_models_layer(tmp_path, corpus, cache,
                                                                                     set_up, monkeypatch):
    """Bug caught: W&B's config held no parameter counts (MoE and dense runs could not be compared
    there), and its expert panels counted MoE layers alone: with --moe_every 2 the MoE layers 1 and
    3 were experts/layer0 and layer1 in W&B, while scripts/compare.py labels them layer 1 and 3."""
    from test_runlog import Rows
    started = []

    def start_wandb(targs, run_dir, settings, log):
        started.append((settings, Rows()))
        return started[-1][1]
    monkeypatch.setattr(train.runlog, "start_wandb", start_wandb)
    job, state = set_up(argv(tmp_path, corpus, cache, "--max_steps", "2", "--moe_every", "2"))
    train.open_logs(job, state)
    job.metrics.write({"kind": "train", "step": 1, "expert_share": [[0.5, 0.5, 0, 0], [0.25] * 4],
                       "router_entropy": [1.0, 0.5]})  # (a record lists the MoE layers alone)
    job.metrics.finish()
    ((settings, run),) = started
    assert {k for k in run.rows[0] if "layer" in k} == {
        "router_entropy/layer1", "router_entropy/layer3", *(f"experts/layer{i}/expert{e}" for i in (1, 3)
                                                             for e in range(4))}
    counts = count_parameters(job.model)
    assert settings["parameters"] == {k: counts[k] for k in ("total", "active_per_token")}
    assert counts["total"] > counts["active_per_token"] > 0


def test_start_logging_on_another_rank_than_0_writes_nothing(tmp_path, corpus, cache, set_up, monkeypatch):
    """open_logs run on every rank: under torchrun each process wrote the settings files, the tokenizer
    and metrics.jsonl (and started a W&B run)."""
    job, state = set_up(argv(tmp_path, corpus, cache, "--max_steps", "2"))
    job.world = runtime.World(1, 2)
    monkeypatch.setattr(runtime, "all_reduce", lambda values, device, world, op=None: values)
    train.start_logging(job, state)
    assert sorted(p.name for p in job.run_dir.iterdir()) == ["run.lock"] and job.metrics is None


def locked(path) -> bool:
    """Whether another open file holds the flock on `path`."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_the_run_folder_is_held_until_the_run_ends_and_released_by_an_error(tmp_path, corpus, cache,
                                                                              monkeypatch):
    """setup not handing the folder to the Job (its lock closed as setup returned: another train.py
    could take the folder mid-run), or run() not releasing it at its end (an error a caller holds, as
    compare.py's in-process runs, kept the folder locked)."""
    lock, held = tmp_path / "ckpt" / "r" / "run.lock", []

    def run_job(job, state):
        (job.run_dir / "train.json").write_text("{}")  # (a folder holding a file is kept)
        gc.collect()
        held.append(locked(lock))
        raise RuntimeError("failed in the loop")
    monkeypatch.setattr(train, "run_job", run_job)
    with pytest.raises(RuntimeError) as failed:  # (kept: its traceback holds the run's frames)
        train.run(*parse(argv(tmp_path, corpus, cache, "--max_steps", "1")))
    assert held == [True] and not locked(lock) and "failed in the loop" in str(failed.value)


def test_memory_advice_names_the_batch_where_it_is_known():
    """memory_advice naming "now None" at set-up, or dropping the batch once it is known."""
    assert "(now 6; --grad_accum keeps the global batch)" in train.memory_advice(6)
    assert "now" not in train.memory_advice() and "--grad_checkpoint true" in train.memory_advice()


def test_memory_advice_does_not_advise_the_checkpointing_a_run_already_has():
    """Bug caught: a run out of memory with --grad_checkpoint true was told to set --grad_checkpoint
    true; with --grad_checkpoint_layers N the way on is more layers (or 0: every one), unless N is
    every layer the model has (it was told to raise it)."""
    assert "set --grad_checkpoint true" in train.memory_advice(6, None, TrainArgs())
    every = train.memory_advice(6, None, TrainArgs(grad_checkpoint=True))
    assert "grad_checkpoint" not in every and "lower --batch_size (now 6" in every
    some = train.memory_advice(6, None, TrainArgs(grad_checkpoint=True, grad_checkpoint_layers=2))
    assert "or raise --grad_checkpoint_layers (now 2; 0 recomputes every layer)" in some
    assert some == train.memory_advice(6, None, TrainArgs(grad_checkpoint=True, grad_checkpoint_layers=2), 4)
    # as many as the model has recompute every layer, as 0 does: no more to raise
    assert train.memory_advice(6, None, TrainArgs(grad_checkpoint=True, grad_checkpoint_layers=4), 4) == every


def test_memory_advice_after_an_evaluation_of_one_window_a_batch_does_not_say_lower_it():
    """Bug caught: an evaluation out of memory at batches of one window (--eval_batch_size 1, or a rank's
    one window) was told "lower --eval_batch_size", which cannot go lower; larger ones are."""
    assert "lower --eval_batch_size" in train.memory_advice(6, 2)
    assert "lower --eval_batch_size" not in train.memory_advice(6, 1)
    assert train.memory_advice(6, 1) == train.memory_advice(6)


def test_an_interrupt_during_the_run_names_the_run_folder(tmp_path, corpus, cache, monkeypatch):
    """run() not setting the KeyboardInterrupt's run_dir: main's interrupt line could not name the
    checkpoints left to resume from."""
    def run_job(job, state):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "run_job", run_job)
    with pytest.raises(KeyboardInterrupt) as e:
        train.run(*parse(argv(tmp_path, corpus, cache, "--max_steps", "1")))
    assert e.value.run_dir == tmp_path / "ckpt" / "r"


def test_a_process_of_the_job_lost_in_the_run_is_one_line_naming_what_is_left(tmp_path, corpus, cache,
                                                                               monkeypatch):
    """Bug caught: a torchrun worker killed (kill -9) left each other rank a page of gloo traceback
    ("Connection reset by peer"), where a line saying so and what is left to resume from will do."""
    import torch.distributed as dist
    def run_job(job, state):
        (job.run_dir / "last.pt").write_bytes(b"")
        monkeypatch.setattr(dist, "is_initialized", lambda: True)  # (a collective of a torchrun job)
        raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:3830: Connection reset "
                           "by peer. This is typically caused by a remote worker hanging")
    monkeypatch.setattr(train, "run_job", run_job)
    with pytest.raises(RunError) as e:
        train.run(*parse(argv(tmp_path, corpus, cache, "--max_steps", "1")))
    run_dir = tmp_path / "ckpt" / "r"
    assert str(e.value) == ("another process of this torchrun job stopped (Connection reset by peer: it was "
                            "killed or failed, and torchrun's log names it); the checkpoints written are "
                            f"complete (--resume {run_dir} continues from its last.pt)")


@pytest.mark.parametrize("extra", [["--max_steps", "1"], ["--eval_only"]])
def test_training_and_evaluation_get_the_backends_timeout_back_once_set_up(tmp_path, corpus, cache, done,
                                                                           monkeypatch, extra):
    """Catches the ranks training (or evaluating) with set-up's long timeout (runtime.SETUP_TIMEOUT, for
    rank 0's data), where a hang would be found hours late, not at the backend's 10 minutes."""
    calls = []
    monkeypatch.setattr(train.runtime, "set_up_done", lambda: calls.append(True))
    monkeypatch.setattr(train, "loop", lambda job, state: calls.append("loop") or {})
    monkeypatch.setattr(train, "evaluate_only", lambda job, state: calls.append("eval") or {})
    if "--eval_only" in extra:
        copy_run(done, tmp_path)
    train.main(argv(tmp_path, corpus, cache, *extra))
    assert calls == [True, "eval" if "--eval_only" in extra else "loop"]


def test_a_process_lost_in_set_up_is_one_line_too(monkeypatch, capsys):
    """Bug caught (the review's): a process killed while the others set up (the data, minutes) or at the
    last barrier still gave gloo's traceback: main() says it in one line, exit 1."""
    import torch.distributed as dist
    def run(*args):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "destroy_process_group", lambda: None)
        raise RuntimeError("[gloo/transport/tcp/pair.cc:589] Read error: Connection closed by peer")
    monkeypatch.setattr(train, "run", run)
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "debug"])
    assert e.value.code == 1 and capsys.readouterr().err == (
        "train.py: error: another process of this torchrun job stopped (Connection closed by peer: it was "
        "killed or failed, and torchrun's log names it); no checkpoint was written\n")


def lost_peer(monkeypatch, where, *names):
    """`where`'s functions `names` raise what gloo raises for a process of the job gone; the process group
    taken for initialised, its teardown recorded."""
    import torch.distributed as dist
    torn_down = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: torn_down.append(True))

    def lost(*args, **kwargs):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:60579")
    for name in names:
        monkeypatch.setattr(where, name, lost)
    return torn_down


def test_a_process_lost_in_set_up_names_what_is_left_in_the_run_folder(tmp_path, corpus, cache, done,
                                                                       monkeypatch, capsys):
    """Bug caught: a torchrun worker killed while the others prepared the data of a new run left them
    `the checkpoints already written are complete` (none was, and the folder was gone), and one lost in
    an --eval_only pass `--resume ... continues from its last.pt`."""
    torn_down = lost_peer(monkeypatch, train, "build_job")
    with pytest.raises(SystemExit) as e:
        train.main(argv(tmp_path, corpus, cache, "--max_steps", "1"))
    assert e.value.code == 1 and capsys.readouterr().err.endswith(
        "torchrun's log names it); no checkpoint was written\n")
    assert not (tmp_path / "ckpt" / "r").exists() and torn_down == [True]
    copy_run(done, tmp_path)
    monkeypatch.undo()  # (set-up works: the process is lost during the evaluation)
    lost_peer(monkeypatch, train, "run_job")
    with pytest.raises(SystemExit) as e:
        train.main(argv(tmp_path, corpus, cache, "--eval_only"))
    assert e.value.code == 1 and capsys.readouterr().err.endswith(
        "torchrun's log names it); nothing was written (--eval_only only reads)\n")


def test_a_process_lost_at_the_last_barrier_is_one_line_too(tmp_path, monkeypatch, capsys):
    """Bug caught: rank 0 killed while it finished (its W&B run's upload) after the others were done left
    them gloo's traceback from the barrier before the process group is torn down, not one line."""
    import torch.distributed as dist
    torn_down = lost_peer(monkeypatch, dist, "barrier")
    monkeypatch.setattr(train, "run", lambda *args: {"run_dir": str(tmp_path)})
    # Bug caught: the others waited there under the backend's default timeout (NCCL's 10 minutes), which
    # rank 0's W&B upload could outlast: the barrier waits with set-up's long one
    monkeypatch.setattr(train.runtime, "wait_long", lambda: torn_down.append("long"))
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "debug"])
    assert e.value.code == 1 and torn_down == ["long", True] and capsys.readouterr().err == (
        "train.py: error: another process of this torchrun job stopped (Connection closed by peer: it was "
        f"killed or failed, and torchrun's log names it); the checkpoints written are complete (--resume "
        f"{tmp_path} continues from its last.pt)\n")


def test_a_ctrl_c_while_the_run_is_planned_is_an_interrupt_with_no_run_folder(monkeypatch):
    """Catches setup naming the run folder of a plan not made yet (plan_run now runs inside the ranks'
    agreement): a Ctrl-C while a checkpoint loads was an AttributeError traceback."""
    def plan_run(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train.runplan, "plan_run", plan_run)
    with pytest.raises(KeyboardInterrupt) as e:
        train.setup(*parse(["--preset", "debug"]))
    assert getattr(e.value, "run_dir", None) is None


def test_a_lost_peers_network_error_is_named_by_its_first_line():
    """Catches peer_lost_error looking for gloo's words in a DistNetworkError that has none of them (a
    StopIteration traceback instead of the line)."""
    import torch.distributed as dist
    e = dist.DistNetworkError("failed to recv, got 0 bytes\nException raised from recvBytes")
    assert str(train.peer_lost_error(e, None)).startswith(
        "another process of this torchrun job stopped (DistNetworkError: failed to recv, got 0 bytes: it was")


def test_a_resume_that_runs_a_put_off_evaluation_first_drops_its_val_record(tmp_path, done, corpus, cache,
                                                                              set_up):
    """open_logs not passing the checkpoint's eval_due to Metrics: the val record a killed resumed run
    wrote for the put-off evaluation stayed, and the evaluation run again wrote it twice."""
    run_dir = copy_run(done, tmp_path)
    resave(run_dir / "last.pt", eval_due=True)
    job, state = set_up(argv(tmp_path, corpus, cache, "--max_steps", "4", "--resume"))
    assert state.eval_due
    train.open_logs(job, state)
    job.metrics.finish(exit_code=0)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == []
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]


def test_setup_names_a_new_run_by_rank_0s_clock(monkeypatch):
    """Bug caught: each rank's own time.time() taken for a new run's folder name (under torchrun they
    differ by a second: ranks in different folders); rank 0's goes to every rank (an all_reduce of it
    and zeros)."""
    sent, got = [], []

    class Planned(Exception):
        pass

    def plan_run(*args):
        got.append(args[-1])
        raise Planned
    monkeypatch.setattr(train.runtime, "setup_distributed", lambda device: (device, runtime.World(1, 2)))
    monkeypatch.setattr(train.runtime, "all_reduce",  # (then the verdict on the failed plan)
                        lambda values, *a, **k: sent.append(values) or ([42.0] if len(sent) == 1 else values))
    monkeypatch.setattr(train.runplan, "plan_run", plan_run)
    with pytest.raises(Planned):
        train.setup(*parse(["--preset", "debug"]))
    assert sent[0] == [0.0] and got == [42.0]  # (rank 1 sends nothing of its own clock)
    assert sent[1] == [1.0, 0.0]  # (its failed plan told to the others; then which failed rank says it)
