"""runtime.py and errors.py, unit by unit: the device, torchrun's variables and collectives (faked:
no process group), the precision, compiling's choice, the peaks, the memory; the error types, their
exit statuses and one-line reports, the signal handlers and the Consoles. CUDA is faked where a
branch needs it (torch.cuda's functions monkeypatched); what only a GPU can run is not here."""

import errno
import io
import itertools
import os
import signal
import subprocess
import sys
import time
import warnings
import zlib
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from conftest import ROOT

import errors
import runtime
from errors import ConfigError, DeviceError, RankError, UserError
from runtime import World

# --- resolve_device ---------------------------------------------------------------------------


def fake_gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_a_gpu_index_past_the_last_is_refused_naming_the_range(monkeypatch):
    """Catches cuda:N with N == the number of GPUs accepted (> for >=), or the range named wrong."""
    fake_gpus(monkeypatch, 2)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda:1")
    assert runtime.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(errors.MachineError, match=r"^--device cuda:2: there are 2 GPUs here; use cuda:0 to "
                                                r"cuda:1$"):  # (the machine's: once a machine under torchrun)
        runtime.resolve_device("cuda:2")


def test_cuda_where_there_is_none_is_a_device_error(monkeypatch):
    """Catches --device cuda taken on a machine without CUDA (a node of a job may lack it)."""
    fake_gpus(monkeypatch, 0)
    with pytest.raises(errors.MachineError, match="CUDA is not available here; use --device cpu"):
        runtime.resolve_device("cuda")
    with pytest.raises(DeviceError):
        runtime.resolve_device("cuda:0")
    assert runtime.resolve_device("cpu") == torch.device("cpu")


def test_a_bad_device_name_is_a_config_error_not_torchs():
    """Catches torch's RuntimeError for a name that is no device reaching the user as a traceback."""
    with pytest.raises(ConfigError, match="--device gpu0: not a device name; use auto, cpu, cuda or cuda:N"):
        runtime.resolve_device("gpu0")
    with pytest.raises(ConfigError, match="runs on cpu or cuda"):
        runtime.resolve_device("meta")


def test_a_cpu_index_is_refused_and_cpu_0_is_the_cpu():
    """Catches --device cpu:1 taken (torch runs it on the one CPU device, as if a second existed)."""
    with pytest.raises(ConfigError, match=r"^--device cpu:1: there is one CPU device; use --device cpu$"):
        runtime.resolve_device("cpu:1")
    assert runtime.resolve_device("cpu:0") == runtime.resolve_device("cpu") == torch.device("cpu")



def test_auto_is_the_first_gpu_where_there_is_one(monkeypatch):
    """Catches --device auto giving cuda (no index: the current GPU, not a set one) or cpu with a GPU."""
    fake_gpus(monkeypatch, 2)
    assert runtime.resolve_device("auto") == torch.device("cuda", 0)
    fake_gpus(monkeypatch, 0)
    assert runtime.resolve_device("auto") == torch.device("cpu")

# --- setup_distributed, all_reduce, _verdict, rank0_first, all_ranks_or_none -------------------


TORCHRUN = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


@pytest.fixture
def torchrun_env(monkeypatch):
    """torchrun's variables cleared, and the process group faked: init_process_group's backend kept."""
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    joined = []
    def init_process_group(backend, **kw):
        joined.append(backend)
        if backend == "nccl":  # Bug caught: no device_id (barrier() warned it guessed the device)
            assert kw == {"device_id": torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))),
                          "timeout": runtime.SETUP_TIMEOUT}
        else:
            assert kw == {"timeout": runtime.SETUP_TIMEOUT}
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "get_rank", lambda: int(os.environ["RANK"]))
    monkeypatch.setattr(dist, "get_world_size", lambda: int(os.environ["WORLD_SIZE"]))
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src: None)  # (the attempt's id)
    monkeypatch.setattr(runtime, "_attempt", runtime._attempt)
    return joined


def test_without_rank_no_process_group_is_joined(torchrun_env, monkeypatch):
    """Catches setup_distributed joining a group (or another device) without torchrun's RANK."""
    monkeypatch.setenv("LOCAL_RANK", "1")  # (not torchrun's without RANK)
    assert runtime.setup_distributed(torch.device("cpu")) == (torch.device("cpu"), World(0, 1))
    assert torchrun_env == []


@pytest.mark.parametrize("missing", ["WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"])
def test_a_rank_without_each_torchrun_variable_is_a_config_error_naming_it(torchrun_env, monkeypatch,
                                                                            missing):
    """Catches one of torchrun's variables left out of the check (torch's rendezvous traceback then)."""
    for name, value in dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        if name != missing:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^RANK=0 is set, but not {missing}: this is not a torchrun job"):
        runtime.setup_distributed(torch.device("cpu"))
    assert torchrun_env == []


def test_each_process_takes_the_gpu_of_its_local_rank_and_nccl(torchrun_env, monkeypatch):
    """Catches a process on the GPU of its global rank (cuda:5 on a node of 4), the GPU not made
    current, or the backends swapped (gloo on CUDA, nccl on CPU)."""
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert runtime.setup_distributed(torch.device("cuda")) == (torch.device("cuda", 1), World(5, 8))
    assert current == [torch.device("cuda", 1)] and torchrun_env == ["nccl"]
    assert runtime.setup_distributed(torch.device("cpu")) == (torch.device("cpu"), World(5, 8))
    assert torchrun_env == ["nccl", "gloo"] and len(current) == 1



def test_a_process_without_local_rank_takes_the_first_gpu(torchrun_env, monkeypatch):
    """Catches LOCAL_RANK's default (0) taken from the global rank: cuda:3 on a one-GPU node."""
    for name, value in dict(RANK="3", WORLD_SIZE="4", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    assert runtime.setup_distributed(torch.device("cuda")) == (torch.device("cuda", 0), World(3, 4))

def test_the_ranks_wait_for_rank_0s_data_past_the_backends_timeout_and_train_with_it(monkeypatch):
    """Bug caught: while rank 0 alone prepared the data (the hub's TinyStories: its download and
    tokenizing can take over 10 minutes), the others waited in a collective that NCCL aborts after 10
    minutes (gloo 30), the whole job with it. A real gloo group (one process) starts with
    SETUP_TIMEOUT and gets gloo's default back once set-up is done."""
    import socket

    from torch.distributed import constants
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(name, value)
    runtime.setup_distributed(torch.device("cpu"))
    try:
        gloo = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
        assert gloo.options._timeout == runtime.SETUP_TIMEOUT > timedelta(hours=1)
        runtime.set_up_done()
        assert gloo.options._timeout == constants.default_pg_timeout == timedelta(minutes=30)
        runtime.wait_long()  # Bug caught: the final barrier, rank 0 finishing its W&B run, under the default
        assert gloo.options._timeout == runtime.SETUP_TIMEOUT
    finally:
        dist.destroy_process_group()
    runtime.set_up_done()  # (no group: nothing to do)


def test_an_nccl_group_gets_nccls_own_timeout_back_after_set_up(monkeypatch):
    """The NCCL branch of set_up_done (CUDA only; the group faked): NCCL's default (10 minutes on a
    CUDA build of torch; None on this CPU build, where it is faked), not gloo's 30, once set-up is
    done, and SETUP_TIMEOUT again for the final barrier."""
    from torch.distributed import constants, distributed_c10d
    set_to = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(constants, "default_pg_nccl_timeout", timedelta(minutes=10))
    monkeypatch.setattr(distributed_c10d, "_set_pg_timeout",
                        lambda timeout, group=None: set_to.append(timeout))
    runtime.set_up_done()
    runtime.wait_long()
    assert set_to == [timedelta(minutes=10), runtime.SETUP_TIMEOUT]


@pytest.fixture
def fake_all_reduce(monkeypatch):
    """dist.all_reduce faked: each call's values and op are recorded, and `others` (what the other
    ranks hold) is combined in by the op."""
    calls = SimpleNamespace(seen=[], others=None)

    def all_reduce(t, op):
        calls.seen.append((t.tolist(), op, t.dtype))
        if calls.others is not None:
            other = torch.tensor(calls.others, dtype=t.dtype)
            t.copy_({dist.ReduceOp.SUM: t + other, dist.ReduceOp.MIN: torch.minimum(t, other),
                     dist.ReduceOp.MAX: torch.maximum(t, other)}[op])
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    return calls


def test_all_reduce_sums_by_default_in_float64_and_one_process_skips_it(fake_all_reduce):
    """Catches all_reduce taking another op than a sum by default, a lossy dtype (a token count over
    2**24 in float32), or a collective called in a one-process run (there is no group)."""
    assert runtime.all_reduce([1.0, 2.0], "cpu", World()) == [1.0, 2.0] and fake_all_reduce.seen == []
    fake_all_reduce.others = [3.0, 4.0]
    big = 2.0**24 + 1
    assert runtime.all_reduce([1.0, big], "cpu", World(0, 2)) == [4.0, big + 4.0]
    assert fake_all_reduce.seen == [([1.0, big], dist.ReduceOp.SUM, torch.float64)]
    assert runtime.all_reduce([1.0, 9.0], "cpu", World(0, 2), op=dist.ReduceOp.MAX) == [3.0, 9.0]


@pytest.mark.parametrize("rank, mine, others, verdict", [
    (0, True, [0.0, 0.0], (True, True)), (0, True, [1.0, 0.0], (False, True)),
    (0, False, [0.0, 0.0], (False, False)), (1, False, [0.0, 0.0], (False, True)),
    (1, True, [1.0, 1.0], (False, False)), (1, False, [1.0, 1.0], (False, False))])
def test_the_verdict_is_true_only_where_every_rank_succeeded(fake_all_reduce, rank, mine, others, verdict):
    """Catches the verdict taken as any rank's success, or a failure read as success; or rank 0's
    outcome (the second) taken from another rank's."""
    fake_all_reduce.others = others  # (the other ranks' failures, summed; rank 0's, where it is another)
    assert runtime._verdict(mine, "cpu", World(rank, 2)) == verdict
    assert fake_all_reduce.seen[0][1] == dist.ReduceOp.SUM


def test_a_rank_other_than_0_waits_for_rank_0_and_stops_where_it_failed(fake_all_reduce):
    """Catches ranks other than 0 running the block without waiting for rank 0's verdict (two
    processes writing one cache), or running it after rank 0 failed."""
    ran = []
    fake_all_reduce.others = [0.0, 0.0]
    with runtime.rank0_first(World(1, 2), "cpu"):
        ran.append(len(fake_all_reduce.seen))
    assert ran == [1]  # the block ran after the verdict, not before
    fake_all_reduce.others = [1.0, 1.0]
    with pytest.raises(RankError, match="rank 0 failed setting up the data"):
        with runtime.rank0_first(World(1, 2), "cpu"):
            ran.append("ran")
    assert ran == [1]


def test_rank_0_runs_the_block_first_then_tells_the_others(fake_all_reduce):
    """Catches rank 0 telling the others before its block ran (they would read half-built caches),
    or keeping a failure to itself (the others then wait at the barrier for ever)."""
    ran = []
    fake_all_reduce.others = [0.0, 0.0]
    with runtime.rank0_first(World(0, 2), "cpu"):
        ran.append(len(fake_all_reduce.seen))
    assert ran == [0] and [v for v, _, _ in fake_all_reduce.seen] == [[0.0, 0.0]] * 2  # (then the others')
    with pytest.raises(ValueError):
        with runtime.rank0_first(World(0, 2), "cpu"):
            raise ValueError("bad data")
    assert [v for v, _, _ in fake_all_reduce.seen] == [[0.0, 0.0]] * 2 + [[1.0, 1.0]]
    with runtime.rank0_first(World(), "cpu"):  # one process: no collective
        ran.append("alone")
    assert ran == [0, "alone"] and len(fake_all_reduce.seen) == 3


def test_a_ctrl_c_in_one_ranks_block_is_told_to_the_others(fake_all_reduce):
    """Catches all_ranks_or_none telling the others of an Exception only: a KeyboardInterrupt (or a
    SystemExit) on one rank left the others waiting at their next collective."""
    for stop in (KeyboardInterrupt, SystemExit):
        with pytest.raises(stop):
            with runtime.all_ranks_or_none(World(1, 2), "cpu", "its checks"):
                raise stop()
    verdicts = [v for v, _, _ in fake_all_reduce.seen][::2]  # (each then followed by which rank says it)
    assert verdicts == [[1.0, 0.0], [1.0, 0.0]]
    with pytest.raises(KeyboardInterrupt):  # one process: nothing to tell
        with runtime.all_ranks_or_none(World(), "cpu", "its checks"):
            raise KeyboardInterrupt
    assert len(fake_all_reduce.seen) == 4



def test_a_rank_whose_block_succeeded_stops_where_another_failed(fake_all_reduce):
    """Catches all_ranks_or_none letting a rank go on where another rank's block failed (it would wait
    for ever at its next collective), or rank 0 in rank0_first going on after another's failure."""
    fake_all_reduce.others = [1.0, 0.0]
    with pytest.raises(RankError, match="^another rank failed its checks$"):
        with runtime.all_ranks_or_none(World(0, 2), "cpu", "its checks"):
            pass
    with pytest.raises(RankError, match="another rank failed setting up the data"):
        with runtime.rank0_first(World(0, 2), "cpu"):
            pass
    assert [v for v, _, _ in fake_all_reduce.seen] == [[0.0, 0.0]] * 4  # (each verdict, then no line to say)


def test_an_error_every_rank_meets_in_a_set_up_step_is_rank_0s_line_alone(fake_all_reduce):
    """Bug caught: a corrupt checkpoint (or another tokenizer) under torchrun printed once per process,
    two lines sometimes run into one. Where rank 0's block failed too, another rank's UserError is a
    RankError (no line); where rank 0's succeeded, or the error is a bug's, the rank raises its own."""
    fake_all_reduce.others = [1.0, 1.0]  # rank 0 failed
    with pytest.raises(RankError, match="^rank 0 failed its checks too$"):
        with runtime.all_ranks_or_none(World(1, 2), "cpu", "its checks"):
            raise errors.CheckpointError("last.pt is corrupt")
    with pytest.raises(ValueError):  # (a bug's traceback is never hidden)
        with runtime.all_ranks_or_none(World(1, 2), "cpu", "its checks"):
            raise ValueError("a bug")
    with pytest.raises(errors.CheckpointError):  # rank 0 prints its own
        with runtime.all_ranks_or_none(World(0, 2), "cpu", "its checks"):
            raise errors.CheckpointError("last.pt is corrupt")
    fake_all_reduce.others = [0.0, 0.0]  # rank 0 succeeded: this rank's error is its own to print
    with pytest.raises(errors.CheckpointError):
        with runtime.all_ranks_or_none(World(1, 2), "cpu", "its checks"):
            raise errors.CheckpointError("last.pt is corrupt here")
    with pytest.raises(errors.DeviceError):
        with runtime.all_ranks_or_none(World(1, 2), "cpu", "its checks"):
            raise errors.DeviceError("cuda:1 has too little memory")
    fake_all_reduce.others = [1.0, 1.0]  # a DeviceError is this rank's device's, whatever rank 0 met
    with pytest.raises(errors.DeviceError):
        with runtime.all_ranks_or_none(World(1, 2), "cpu", "its checks"):
            raise errors.DeviceError("cuda:1 has too little memory")


def test_an_error_several_ranks_meet_where_rank_0_did_not_is_printed_by_the_lowest_of_them(monkeypatch):
    """Bug caught: ranks 1 and 2 of `torchrun --nproc_per_node 3` (or every process of a second machine)
    that met one error rank 0 did not (a checkpoint missing on that machine's disk) each printed it:
    the same line once per process. Now the lowest rank with that line prints it, the others none (a
    RankError); a rank whose line differs prints its own."""
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    for rank1_says, printed in (("last.pt: no such file", False), ("best.pt: no such file", True)):
        def all_reduce(values, device, world, op=None, rank1_says=rank1_says):  # ranks 1, 2 failed, not 0
            if len(values) == 2:
                return [2.0, 0.0]
            return [0.0, zlib.crc32(rank1_says.encode()) + 1.0, values[2]]  # (each rank's line's number)
        monkeypatch.setattr(runtime, "all_reduce", all_reduce)
        with pytest.raises(UserError) as e:
            with runtime.all_ranks_or_none(World(2, 3), "cpu", "loading the checkpoint"):
                raise errors.CheckpointError("last.pt: no such file")
        assert errors.reports(e.value) is printed, rank1_says
        with pytest.raises(errors.CheckpointError) as e:  # rank 1, the lowest to meet it, prints it
            with runtime.all_ranks_or_none(World(1, 3), "cpu", "loading the checkpoint"):
                raise errors.CheckpointError(rank1_says)
        assert errors.reports(e.value)


def test_a_line_naming_a_non_utf8_path_still_reaches_the_collective(monkeypatch):
    """Bug caught: a rank whose error named a run folder that is not UTF-8 (`mkdir $'r\\xff'`, which a
    resume takes: printed as r\\udcff) raised UnicodeEncodeError in all_ranks_or_none, before the
    collective that tells which rank prints the line: that rank's error was lost and the other ranks
    waited for it at that collective. Now the line is counted and the rank's own error raised."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    calls = []
    def all_reduce(values, device, world, op=None):  # rank 1 failed, rank 0 did not
        calls.append(len(values))
        return [1.0, 0.0] if len(values) == 2 else [0.0, values[1]]
    monkeypatch.setattr(runtime, "all_reduce", all_reduce)
    with pytest.raises(errors.CheckpointError) as e:
        with runtime.all_ranks_or_none(World(1, 2), "cpu", "loading the checkpoint"):
            raise errors.CheckpointError("checkpoints/r\udcff/last.pt: no such file")
    assert calls == [2, 2] and errors.reports(e.value)  # (the verdict, then whose line it is)


def test_a_bad_setting_one_rank_meets_alone_is_printed_by_that_rank(fake_all_reduce, monkeypatch):
    """Bug caught: a ConfigError rank 0 did not meet (a checkpoint of other model settings on another
    machine's disk, a data file there that is not rank 0's) was printed by no process: the rank that
    met it kept quiet as for a bad setting every rank meets, rank 0 stopped with a RankError (no line
    either), and the torchrun job ended without a word of why. Now that rank prints it."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    for others, alone in (([0.0, 0.0], True), ([1.0, 1.0], False)):  # rank 0 succeeded; failed
        fake_all_reduce.others = others
        with pytest.raises(UserError) as e:
            with runtime.all_ranks_or_none(World(1, 2), "cpu", "its checks"):
                raise errors.ConfigError("dim: checkpoint 64, asked 48")
        assert errors.reports(e.value) is alone  # (rank 0's own line stands for all where it failed too)
    fake_all_reduce.others = [0.0, 0.0]  # rank0_first: this rank runs the block once rank 0's succeeded
    with pytest.raises(errors.ConfigError) as e:
        with runtime.rank0_first(World(1, 2), "cpu"):
            raise errors.ConfigError("--val_text_field: no such column")
    assert errors.reports(e.value)
    assert not errors.reports(errors.ConfigError("x"))  # (one every rank meets: rank 0's line alone)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a machine's: still said once a machine (LOCAL_RANK 0)
    with pytest.raises(errors.MachineError) as e:
        with runtime.all_ranks_or_none(World(1, 2), "cpu", "its checks"):
            raise errors.MachineError("--device cuda: this machine has no CUDA")
    assert not errors.reports(e.value)


def test_peer_lost_is_a_collective_failing_for_a_process_gone(monkeypatch):
    """Bug caught: a torchrun worker killed (kill -9) left the others a page of gloo traceback. The
    errors a lost process gives are recognised, only inside a process group."""
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:38300: Connection reset "
                        "by peer. This is typically caused by a remote worker hanging")
    assert not runtime.peer_lost(gloo)  # (no process group: not a collective's)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    assert runtime.peer_lost(gloo) and runtime.peer_lost(RuntimeError("... Connection closed by peer ..."))
    assert runtime.peer_lost(dist.DistBackendError("NCCL error: remote process exited or there was a network "
                                                   "error, NCCL version 2.27"))
    assert runtime.peer_lost(dist.DistNetworkError("failed to connect"))
    assert not runtime.peer_lost(RuntimeError("shape mismatch")) and not runtime.peer_lost(ValueError("x"))
    assert not runtime.peer_lost(ConnectionResetError(104, "Connection reset by peer"))  # (a download's)
    # Bug caught: every NCCL error taken for a lost process (a local CUDA fault's cause then hidden)
    assert not runtime.peer_lost(dist.DistBackendError("NCCL error: unhandled cuda error"))

# --- compute_dtype, wants_compile, compile_model ----------------------------------------------


def test_an_explicit_dtype_is_taken_as_named_on_any_device(monkeypatch):
    """Catches --dtype bfloat16 or float32 read as the other, or overridden by the GPU's capability."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    for device in (torch.device("cpu"), torch.device("cuda", 0)):
        assert runtime.compute_dtype("bfloat16", device) == torch.bfloat16
        assert runtime.compute_dtype("float32", device) == torch.float32


def test_compile_auto_means_cuda_only_and_true_everywhere():
    """Catches --compile auto compiling on the CPU (minutes of compile for a CPU run), or true not."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert [runtime.wants_compile(c, cpu) for c in ("auto", "true", "false")] == [False, True, False]
    assert [runtime.wants_compile(c, cuda) for c in ("auto", "true", "false")] == [True, True, False]


def test_an_unavailable_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    """Catches compile_model compiling anyway where the preflight failed, or falling back silently."""
    said = []
    monkeypatch.setattr(runtime, "compile_problem", lambda device: "RuntimeError: no C compiler")
    monkeypatch.setattr(runtime, "static_compile", lambda model, mode: pytest.fail("compiled anyway"))
    model = torch.nn.Linear(2, 2)
    assert runtime.compile_model(model, "true", torch.device("cpu"), said.append) is model
    assert said == ["warning: torch.compile is unavailable here (RuntimeError: no C compiler); running "
                    "eagerly (--compile false skips this check)"]


def test_compile_model_passes_the_mode_on(monkeypatch):
    """Catches --compile_mode dropped between compile_model and static_compile."""
    monkeypatch.setattr(runtime, "compile_problem", lambda device: None)
    monkeypatch.setattr(runtime, "static_compile", lambda model, mode: ("compiled", model, mode))
    model = torch.nn.Linear(2, 2)
    assert runtime.compile_model(model, "true", torch.device("cpu"), print, mode="reduce-overhead") == (
        "compiled", model, "reduce-overhead")


def test_static_compile_is_static_with_eager_random_numbers(monkeypatch):
    """Catches a dynamic (symbolic-batch) compile, the compiler's own random numbers, or --compile_mode
    default passed to torch.compile by name (it takes None)."""
    import torch._inductor.config
    asked = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: asked.append(kw) or model)
    # (config.patch, not monkeypatch: monkeypatch's undo deletes an inductor setting, and every later
    # compile in the session then fails)
    with torch._inductor.config.patch(fallback_random=False):
        runtime.static_compile("m")
        runtime.static_compile("m", "max-autotune")
        assert torch._inductor.config.fallback_random is True
    assert asked == [dict(mode=None, dynamic=False), dict(mode="max-autotune", dynamic=False)]


def test_the_compile_preflight_names_the_failure_and_resets(monkeypatch):
    """Catches compile_problem letting the backend's error out (the run dies instead of going on
    eagerly), or leaving dynamo's caches of the probe behind."""
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))

    def broken(fn, **kw):
        raise RuntimeError("Compiler: cc is not found\nmore detail")
    monkeypatch.setattr(torch, "compile", broken)
    assert runtime.compile_problem(torch.device("cpu")) == "RuntimeError: Compiler: cc is not found"
    assert resets == [1]



def test_the_compile_preflight_runs_a_backward_and_resets_when_it_works(monkeypatch):
    """Catches compile_problem skipping the backward (a backend whose backward fails passed the
    preflight, and the run died at its first step), or resetting dynamo only when it failed."""
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))

    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward: no kernel\ndetail")
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # eager: works
    assert runtime.compile_problem(torch.device("cpu")) is None and resets == [1]
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda t: fn(NoBackward.apply(t)))
    assert runtime.compile_problem(torch.device("cpu")) == "RuntimeError: backward: no kernel"
    assert resets == [1, 1]


def test_the_compile_preflight_names_a_missing_backend_too(monkeypatch):
    """Catches compile_problem taking RuntimeError alone: a backend that cannot be imported (no Triton)
    raises an ImportError, and the run then died rather than going on eagerly."""
    monkeypatch.setattr(torch._dynamo, "reset", lambda: None)

    def no_triton(fn, **kw):
        raise ImportError("No module named 'triton'")
    monkeypatch.setattr(torch, "compile", no_triton)
    assert runtime.compile_problem(torch.device("cpu")) == "ImportError: No module named 'triton'"

# --- out_of_memory, compile_failure -----------------------------------------------------------


def test_out_of_memory_follows_a_compilers_wrappers():
    """Catches out_of_memory looking at the error alone, or following only one kind of link (an
    InductorError's inner_exception, a raise ... from's __cause__), or following __context__."""
    oom = torch.OutOfMemoryError("CUDA out of memory")
    inner = RuntimeError("inductor")
    inner.inner_exception = oom
    assert runtime.out_of_memory(oom) and runtime.out_of_memory(inner)
    caused = RuntimeError("wrapper")
    caused.__cause__ = inner
    assert runtime.out_of_memory(caused)
    context = RuntimeError("while handling")
    context.__context__ = oom
    assert not runtime.out_of_memory(context) and not runtime.out_of_memory(None)


def test_pythons_memory_error_is_out_of_memory():
    """Bug caught: a MemoryError (a host allocation by Python itself, as a list of a billion rows) was
    not out of memory: sample.py and train.py gave a traceback instead of their one line."""
    assert runtime.out_of_memory(MemoryError())
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = MemoryError()
    assert runtime.out_of_memory(wrapped)


def test_out_of_memory_outside_torchs_allocator_is_out_of_memory():
    """Bug caught: CUDA running out outside torch's caching allocator (torch.AcceleratorError, a
    RuntimeError: "CUDA error: out of memory"; cuBLAS's workspace) taken for a compile failure (an
    eager fallback) or a traceback, not the one line about --batch_size."""
    for message in ("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
                    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                    "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"):
        assert runtime.out_of_memory(RuntimeError(message)), message
    assert not runtime.out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not runtime.out_of_memory(ValueError("CUDA error: out of memory"))  # (not the runtime's)


def test_static_compile_keeps_inductors_tf32_warning_off_the_console():
    """Bug caught: every compiled bf16 run on CUDA printed Inductor's two-line warning that TF32 is not
    enabled, for the router's fp32 matmuls (kept fp32 on purpose); other warnings still show."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        runtime.static_compile(torch.nn.Linear(2, 2))
        warnings.warn("TensorFloat32 tensor cores for float32 matrix multiplication available but not "
                      "enabled", UserWarning, stacklevel=1)
        warnings.warn("another", UserWarning, stacklevel=1)
    said = [str(w.message) for w in seen]  # (and what importing the compiler warns, deprecations)
    assert "another" in said and not [m for m in said if "TensorFloat32" in m]


def test_compile_failure_is_one_short_line_and_out_of_memory_raised_again():
    """Catches compile_failure's warning line unbounded (a compiler's error runs to pages), or an
    out-of-memory error turned into an eager fallback that runs out of memory again."""
    assert runtime.compile_failure(ValueError("x" * 500 + "\nsecond")) == ("ValueError: " + "x" * 500)[:200]
    oom = torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(torch.OutOfMemoryError):
        runtime.compile_failure(oom)


# --- peak_flops, device_memory ----------------------------------------------------------------


def test_a_gpus_bf16_peak_is_read_from_its_name(monkeypatch):
    """Catches peak_flops on CUDA ignoring the device's name, or giving a bf16 peak for fp32."""
    names = []
    monkeypatch.setattr(torch.cuda, "get_device_name",
                        lambda device=None: names.append(device) or "NVIDIA L4")
    assert runtime.peak_flops(torch.device("cuda", 1), torch.bfloat16) == 121e12
    assert names == [torch.device("cuda", 1)]
    assert runtime.peak_flops(torch.device("cuda", 1), torch.float32) is None



def test_gpu_names_that_hold_another_gpus_name_get_their_own_peak():
    """Catches the table's order letting a shorter name win ("L4" in "NVIDIA L40S", "L40" in "L40S",
    "A10" in "A10G"), or a peak of these GPUs mistyped."""
    names = {"NVIDIA L4": 121e12, "NVIDIA L40": 181e12, "NVIDIA L40S": 362e12, "NVIDIA A10G": 125e12,
             "NVIDIA A10": 125e12, "NVIDIA RTX A6000": 155e12, "NVIDIA GeForce RTX 4090": 165e12,
             "NVIDIA B200": 2250e12, "NVIDIA A800-SXM4-80GB": 312e12, "NVIDIA GeForce RTX 3090": 71e12}
    assert {n: runtime.gpu_bf16_peak(n) for n in names} == names


def test_a_gpu_whose_name_starts_with_a_table_name_is_not_that_gpu():
    """Bug caught: a key matched anywhere in the name, digits following it included: "NVIDIA RTX
    A1000" (a 6 GB workstation GPU) took the A100's 312 TFLOP/s (MFU a tenth of the truth). A key
    now ends where the name's model number ends; names that hold another GPU's after a prefix (GH200,
    GB200: the H200's and B200's chips) still get its peak."""
    assert runtime.gpu_bf16_peak("NVIDIA RTX A1000 6GB Laptop GPU") is None
    assert runtime.gpu_bf16_peak("NVIDIA RTX A1000") is None
    names = {"NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
             "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
             "NVIDIA H200": 989e12, "NVIDIA H200 NVL": 835e12, "NVIDIA GH200 480GB": 989e12,
             "NVIDIA GB200": 2250e12}
    assert {n: runtime.gpu_bf16_peak(n) for n in names} == names


def test_the_cpu_peak_times_a_gemm_in_the_runs_dtype(monkeypatch):
    """Catches the CPU's peak timed in float32 for a bfloat16 run (another peak: a wrong MFU), or its
    FLOP count (2 n**3) wrong."""
    seen = []
    monkeypatch.setattr(runtime, "fastest_call", lambda fn, seconds: seen.append(fn().dtype) or 0.5)
    assert runtime.peak_flops(torch.device("cpu"), torch.bfloat16) == 2 * 1024**3 / 0.5
    assert seen == [torch.bfloat16]

def test_gpu_memory_is_the_devices_total(monkeypatch):
    """Catches device_memory on CUDA giving the machine's memory (or another GPU's)."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: asked.append(device) or SimpleNamespace(total_memory=80 * 2**30))
    assert runtime.device_memory(torch.device("cuda", 1)) == 80 * 2**30 and asked == [torch.device("cuda", 1)]


def test_cpu_memory_without_a_cgroup_file_is_the_machines(tmp_path, monkeypatch):
    """Catches device_memory failing (or giving None) where there is no cgroup v2 file (macOS, v1)."""
    monkeypatch.setattr(runtime, "CGROUP_MEMORY_MAX", str(tmp_path / "none"))
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert runtime.device_memory(torch.device("cpu")) == physical


def test_cpu_memory_that_cannot_be_told_is_none(monkeypatch):
    """Catches device_memory raising where sysconf has no such name (Windows, some BSDs)."""
    def sysconf(name):
        raise ValueError(f"unrecognized configuration name {name}")
    monkeypatch.setattr(os, "sysconf", sysconf)
    assert runtime.device_memory(torch.device("cpu")) is None



def test_cpu_memory_whose_sysconf_fails_is_none(monkeypatch):
    """Catches device_memory raising where sysconf fails with an OSError (a name the system lacks)."""
    def sysconf(name):
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(os, "sysconf", sysconf)
    assert runtime.device_memory(torch.device("cpu")) is None

# --- errors: types, statuses, reports, first_line ---------------------------------------------


def test_each_error_types_exit_status():
    """Catches a bad setting exiting 1 (argparse's is 2), or another error exiting 2."""
    assert [e.exit_code for e in (errors.ConfigError, errors.DeviceError)] == [2, 2]
    others = (errors.UserError, errors.DataError, errors.CheckpointError, errors.RunError,
              errors.StorageError, errors.RankError)
    assert [e.exit_code for e in others] == [1] * len(others)
    assert all(issubclass(e, errors.UserError) for e in others)
    assert issubclass(errors.DeviceError, errors.ConfigError) and issubclass(errors.ConfigError, ValueError)


def test_a_user_errors_message_is_one_line():
    """Catches a message's lines kept (the entry point's `prog: error:` line then runs over several),
    or its blank lines and indentation left in."""
    e = errors.DataError("  the file is bad\n\n      because of this  \nfix it\n")
    assert str(e) == "the file is bad because of this fix it"


@pytest.mark.parametrize("rank, elastic, main", [(None, None, True), (None, "job", True), ("0", "job", True),
                                                 ("1", "job", False), ("1", None, True)])
def test_main_rank_is_false_only_in_a_torchrun_worker_other_than_0(monkeypatch, rank, elastic, main):
    """Catches main_rank reading a scheduler's RANK alone as a worker's (no process prints the error),
    or rank 0 under torchrun as not main."""
    for name, value in (("RANK", rank), ("TORCHELASTIC_RUN_ID", elastic)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert errors.main_rank() is main
    assert errors.reports(errors.DataError("x"))  # (every rank prints what is not a bad setting)
    assert errors.reports(errors.ConfigError("x")) is main



def test_a_device_error_is_said_by_every_rank_and_a_rank_error_by_none(monkeypatch):
    """Catches a DeviceError (one rank's own GPU) kept quiet off rank 0 like a bad setting (no rank then
    says why the job stopped), or a RankError printed (a second line for one failure)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert errors.reports(errors.DeviceError("x")) and not errors.reports(errors.ConfigError("x"))
    assert not errors.reports(errors.RankError("x"))
    monkeypatch.setenv("RANK", "0")
    assert not errors.reports(errors.RankError("x"))

def test_first_line_is_the_type_and_the_messages_first_line():
    """Catches first_line giving the whole message, a leading blank line, or failing on no message."""
    assert errors.first_line(RuntimeError("\n  one\ntwo")) == "RuntimeError: one"
    assert errors.first_line(KeyError()) == "KeyError"
    assert errors.first_line(OSError("  ")) == "OSError"


# --- errors: signals ----------------------------------------------------------------------------


def test_take_signal_gives_the_old_handler_and_keeps_an_ignored_signal_ignored():
    """Catches take_signal returning the new handler instead of the old (the restore then keeps
    ours), or taking a signal the process was started to ignore."""
    def mine(signum, frame):
        pass

    def ours(signum, frame):
        pass
    old = signal.signal(signal.SIGUSR1, mine)
    try:
        assert errors.take_signal(signal.SIGUSR1, ours) is mine
        assert signal.getsignal(signal.SIGUSR1) is ours
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        assert errors.take_signal(signal.SIGUSR1, ours) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_sigterm_interrupts_until_restored():
    """Catches sigterm_interrupts not raising KeyboardInterrupt on SIGTERM, or its restore not
    putting the old handler back."""
    def mine(signum, frame):
        pass
    old = signal.signal(signal.SIGTERM, mine)
    try:
        restore = errors.sigterm_interrupts()
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        restore()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)



def test_sigterm_interrupts_restores_a_handler_python_did_not_set_as_the_default():
    """Catches the restore passing None (the old handler where one was not set from Python) to
    signal.signal, a TypeError as the run ends, rather than SIGTERM's default."""
    old = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(errors, "take_signal", lambda signum, handler: None)
            restore = errors.sigterm_interrupts()
        restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, old)


def test_signals_kept_leaves_an_ignored_signal_ignored_and_puts_pythons_hook_back(monkeypatch):
    """Catches signals_kept wrapping a handler that is not a function (SIG_IGN: a SIGTERM the run was
    started to ignore then reached a wrapper), or leaving its unraisable hook in place after the block."""
    import sys

    def hook(report):
        pass
    monkeypatch.setattr(sys, "unraisablehook", hook)
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with errors.signals_kept():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert sys.unraisablehook is not hook
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and sys.unraisablehook is hook
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_lost_interrupt_raised_again_is_raised_once():
    """Catches raise_lost_signal leaving the interrupt it raised pending: caught once (a clean-up's
    handler), it was raised again at the next batch, and again at the block's end."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with errors.signals_kept():
            try:  # (what a garbage collector's callback does with it)
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            except KeyboardInterrupt:
                pass
            with pytest.raises(KeyboardInterrupt):
                errors.raise_lost_signal()
            errors.raise_lost_signal()  # nothing left: the block ends without a second one
    except KeyboardInterrupt:  # (failed here, not left to stop pytest's session)
        pytest.fail("the interrupt already raised was raised again")
    finally:
        signal.signal(signal.SIGINT, old)

# --- errors: Console, tolerant_consoles, the top-level handler ----------------------------------


class Gone(io.StringIO):
    """A stream whose writes fail from `after` writes on (a closed pipe, a full disk)."""

    def __init__(self, after=0, error=None):
        super().__init__()
        self.after, self.flushes = after, 0
        self.error = error or BrokenPipeError(32, "Broken pipe")

    def write(self, text):
        if self.after <= 0:
            raise self.error
        self.after -= 1
        return super().write(text)

    def flush(self):
        self.flushes += 1
        if self.after <= 0:
            raise self.error


def test_a_console_that_goes_away_is_dropped_with_one_line_on_the_other():
    """Catches a lost console stopping the run, being written to again (a second failure, a second
    warning), its write's count wrong, or the warning not said (or said twice) on the other stream."""
    out, err = errors.Console(Gone(after=1), "standard output", "train.py"), errors.Console(
        io.StringIO(), "standard error", "train.py")
    out.other, err.other = err, out
    assert out.write("step 1\n") == 7
    assert out.write("step 2\n") == 7 and out.lost  # lost here: the run goes on
    assert out.write("step 3\n") == 7
    out.flush()
    assert out.stream.getvalue() == "step 1\n"
    assert err.stream.getvalue() == ("train.py: warning: cannot write to standard output (Broken pipe); "
                                     "going on without it (metrics.jsonl and the checkpoints carry on)\n")


def test_a_console_without_warn_or_other_is_dropped_quietly():
    """Catches warn=False (--eval_only) still saying the line, or a console with no other failing."""
    out = errors.Console(Gone(), "standard output", "train.py", warn=False)
    err = io.StringIO()
    out.other = err
    assert out.write("x") == 1 and out.lost and err.getvalue() == ""
    alone = errors.Console(Gone(), "standard error", "train.py")
    assert alone.write("x") == 1 and alone.lost



def test_a_lost_consoles_warning_is_flushed_at_once():
    """Catches the warning that a console is lost left in the other stream's buffer (a block-buffered
    log file shows it, if ever, at exit: long after the run stopped printing)."""
    class Counted(io.StringIO):
        flushes = 0

        def flush(self):
            self.flushes += 1
    out, other = errors.Console(Gone(), "standard output", "train.py"), Counted()
    out.other = other
    out.write("x")
    assert other.flushes == 1 and "cannot write to standard output" in other.getvalue()

def test_a_console_closed_before_the_start_is_lost_from_the_start():
    """Catches `>&-` (sys.stdout None) failing at the first print."""
    console = errors.Console(None, "standard output", "train.py")
    assert console.lost and console.write("x") == 1
    console.flush()


def test_tolerant_consoles_pair_the_streams_and_put_them_back(monkeypatch):
    """Catches a lost stdout's warning sent to itself (so never seen) rather than to stderr, or the old
    streams not put back (and flushed) by restore."""
    out, err = Gone(after=0), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    import sys
    restore = errors.tolerant_consoles("train.py")
    print("hello")
    assert sys.stdout.lost and "cannot write to standard output" in err.getvalue()
    restore()
    assert sys.stdout is out and sys.stderr is err


def test_restoring_the_consoles_flushes_what_they_hold(monkeypatch):
    """Catches tolerant_consoles' restore not flushing its Consoles: what a stream still held then met
    a closed pipe at exit, outside the Console (a traceback), not inside it (dropped quietly)."""
    out, err = Gone(after=10), Gone(after=10)
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    restore = errors.tolerant_consoles("train.py")
    restore()
    assert (out.flushes, err.flushes) == (1, 1)


def test_the_uncaught_interrupt_is_one_line_on_rank_0_only(monkeypatch, capsys):
    """Catches the excepthook printing the interrupt on every rank, or passing a non-interrupt by."""
    monkeypatch.setattr("sys.argv", ["/x/train.py"])
    passed = []
    monkeypatch.setattr(errors, "_excepthook", lambda *a: passed.append(a[0]))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    errors._interrupted(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    errors._interrupted(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert capsys.readouterr().err == "\ntrain.py: interrupted\n"
    errors._interrupted(ValueError, ValueError(), None)
    assert passed == [ValueError]


def test_the_uncaught_interrupt_with_stderr_closed_says_nothing(monkeypatch, capsys):
    """Holds: with stderr closed (`2>&-`: sys.stderr is None) the interrupt's line is not said, rather
    than said in standard output (print's file=None), in the middle of sample.py's story."""
    monkeypatch.setattr("sys.argv", ["/x/sample.py"])
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr("sys.stderr", None)
    errors._interrupted(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert capsys.readouterr().out == ""


def test_run_script_prints_a_user_errors_line_and_exits_with_its_status(capsys):
    """Catches run_script exiting 1 for a bad setting (or 2 for another error), or the line's form."""
    for error, status in ((errors.ConfigError("--x 3: too big"), 2), (errors.DataError("--x 3: too big"), 1)):
        def main(error=error):
            raise error
        with pytest.raises(SystemExit) as e:
            errors.run_script(main, "tool.py")
        assert e.value.code == status
        assert capsys.readouterr().err == "tool.py: error: --x 3: too big\n"



def test_run_script_puts_stdout_back_after_the_script(monkeypatch):
    """Catches run_script leaving its wrapper as sys.stdout after main returned or failed (a later
    caller, a test, then writes through a wrapper of a stream it never chose)."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    import sys
    assert errors.run_script(lambda: print("hi") or 7, "tool.py") == 7 and sys.stdout is out

    def main():
        raise errors.DataError("bad")
    with pytest.raises(SystemExit):
        errors.run_script(main, "tool.py")
    assert sys.stdout is out and out.getvalue() == "hi\n"


ROOM = "somewhere with room"


@pytest.mark.parametrize("code, where", [(errno.ENOSPC, ROOM), (errno.EDQUOT, ROOM), (errno.EFBIG, ROOM),
                                         (errno.EIO, "to a file")])
def test_stdout_without_room_names_the_fix(monkeypatch, code, where):
    """Catches a quota (EDQUOT) or file-size limit (EFBIG) told to send the output "to a file" (it is
    one already: the fix is room), or a status chosen before lost."""
    err = io.StringIO()
    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.setattr("sys.stderr", err)
    with pytest.raises(SystemExit) as e:
        errors.stdout_failed(OSError(code, os.strerror(code)), "tool.py")
    assert e.value.code == 1
    assert err.getvalue() == (f"tool.py: error: cannot write to standard output ({os.strerror(code)}); "
                              f"send the output {where}, or to a terminal\n")


def test_stdout_and_stderr_both_full_exit_with_the_status(monkeypatch):
    """Catches stderr's failure while saying stdout's escaping stdout_failed (a traceback, and Python's
    120 at exit) rather than the status alone."""
    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.setattr("sys.stderr", Gone(error=OSError(errno.ENOSPC, "No space left on device")))
    for status, expected in ((0, 1), (2, 2)):
        with pytest.raises(SystemExit) as e:
            errors.stdout_failed(OSError(errno.ENOSPC, "No space left on device"), "tool.py", status)
        assert e.value.code == expected


# a process group of one rank on the CPU (gloo), for the scripts below (each in a fresh process)
ONE_RANK = """
import os, socket
import torch, torch.distributed as dist
import runtime
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
device, world = runtime.setup_distributed(torch.device("cpu"))
"""

DATA_PARALLEL = """
import warnings
warnings.simplefilter("error")
""" + ONE_RANK + """
model = torch.nn.Linear(2, 2)
model.register_buffer("table", torch.ones(3), persistent=False)
ddp = runtime.data_parallel(model, device, find_unused=False)
print(ddp.broadcast_buffers, ddp.will_sync_module_buffers(), ddp.find_unused_parameters,
      model.cast_weights_once)
dist.destroy_process_group()
"""


DATA_PARALLEL_CHECKPOINTED = ONE_RANK + """
import dataclasses
import config
from model import Llama4
torch.manual_seed(0)
model = Llama4(dataclasses.replace(config.preset("debug", config.ModelArgs), vision=True))
model.train().set_grad_checkpointing(True)
ddp = runtime.data_parallel(model, device, find_unused=True)
x = torch.randint(0, model.args.vocab_size, (2, 16))
for _ in range(2):
    ddp(x, targets=x).loss.backward()
print(model.reentrant_checkpoint, model.layers[0].self_attn.o_proj.weight.grad is not None)
dist.destroy_process_group()
"""


def test_ddp_trains_a_checkpointing_vision_model_on_text():
    """Under DDP a checkpointed layer is recomputed by torch's non-reentrant checkpoint
    (runtime.data_parallel sets Llama4.reentrant_checkpoint off): a vision model trained on text
    has unused weights (the vision tower), so DDP searches for them, and cannot see into a
    reentrant checkpoint, whose recomputed weights it then marks ready twice.
    Bug caught: "Expected to mark a variable ready only once" at the first backward. (A fresh
    process: DDP's process group.)"""
    out = subprocess.run([sys.executable, "-c", DATA_PARALLEL_CHECKPOINTED], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["False", "True"], out.stderr[-3000:]


def test_ddp_is_built_with_no_buffer_broadcast_and_no_warning():
    """Under torchrun every rank printed torch 2.13's FutureWarning that DDP's broadcast_buffers is
    deprecated (for forward_sync_buffers): four lines a rank at every start. Its buffers are still
    not broadcast at each forward, and the model's weights are cast per use (cast_weights_once off:
    cast at once, every gradient would reach DDP's buckets at the end of backward, overlapping no
    all-reduce with it). (A fresh process: DDP's process group.)"""
    out = subprocess.run([sys.executable, "-c", DATA_PARALLEL], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["False"] * 4, out.stderr[-3000:]


def test_a_restarted_torchrun_attempt_reads_no_mark_of_the_attempt_before(fake_all_reduce, monkeypatch):
    """torchrun --max_restarts N keeps its agent's store across the attempts (the workers' keys with
    it): a mark the attempt before left (a SIGTERM's stop, rank 0's data done) is not this attempt's
    (each attempt's id is rank 0's, drawn at set-up: faked here).
    Bug caught: a restarted attempt's ranks read the first attempt's marks: its evaluations were cut
    short at once (peer_stopping, as if a rank had been stopped), and its ranks other than 0 went past
    the wait for rank 0's data (rank0_first) into a collective, where a SIGTERM waits for rank 0."""
    store = dist.HashStore()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    fake_all_reduce.others = [0.0, 0.0]
    monkeypatch.setattr(runtime, "_attempt", "first")  # the first attempt: rank 0's data, then a stop
    monkeypatch.setattr(runtime, "_RANK0_BLOCKS", itertools.count())
    with runtime.rank0_first(World(0, 2), "cpu"):
        pass
    runtime.tell_peers_stop()
    assert runtime.peer_stopping()
    monkeypatch.setattr(runtime, "_attempt", "second")  # the restart: new processes, the same store
    monkeypatch.setattr(runtime, "_RANK0_BLOCKS", itertools.count())
    assert not runtime.peer_stopping()
    looks = []

    def sleep(seconds):  # rank 1 waits on the store for rank 0 of this attempt; a SIGTERM meanwhile
        looks.append(seconds)
        raise KeyboardInterrupt
    monkeypatch.setattr(runtime.time, "sleep", sleep)
    ran = []
    with pytest.raises(KeyboardInterrupt):
        with runtime.rank0_first(World(1, 2), "cpu"):
            ran.append("block")
    assert looks == [runtime.RANK0_LOOK_SECONDS] and ran == []
    assert runtime.peer_stopping()  # (the SIGTERM told to this attempt's ranks)


def test_a_new_round_of_an_elastic_job_reads_no_mark_of_the_round_before(monkeypatch):
    """A change of machines in an elastic torchrun job (--nnodes MIN:MAX) starts new workers on the
    agent's store (its shared TCPStore, kept across rounds; the workers' keys unprefixed by round),
    and is no restart: TORCHELASTIC_RESTART_COUNT stays. Each attempt's keys are rank 0's id, drawn
    at set-up (runtime._new_attempt). Real gloo groups, one rank each, on a store standing for the agent's.
    Bug caught: the keys were the restart count's: a new round read the round before's marks (a
    stop: its evaluations cut short at once; rank 0's data done: the others past the wait for it)."""
    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True)  # (torchrun's agent's)
    for name, value in dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(agent.port),
                            TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runtime, "_attempt", runtime._attempt)
    stopping = []
    for _ in range(2):  # the round before (a rank stopped), then the new one
        runtime.setup_distributed(torch.device("cpu"))
        try:
            stopping.append(runtime.peer_stopping())
            runtime.tell_peers_stop()
        finally:
            dist.destroy_process_group()
    assert stopping == [False, False]


def test_a_rank_whose_rank_0_never_marks_its_data_done_stops_at_the_deadline(fake_all_reduce, monkeypatch):
    """The ranks other than 0 wait on the job's store for rank 0's data (rank0_done) for SETUP_TIMEOUT;
    past it, with no mark, they stop there: rank 1 with a line (rank 0, hung, says nothing), the others
    silently (a RankError: one line for the job).
    Bug caught: they went on into the verdict, a collective, which waits for the hung rank 0 as long
    again under the group's timeout: a hung rank 0 was found after 6 hours."""
    store = dist.HashStore()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    monkeypatch.setattr(runtime, "SETUP_TIMEOUT", timedelta(seconds=0.2))
    for rank, kind in ((1, errors.RunError), (2, RankError)):
        monkeypatch.setattr(runtime, "_RANK0_BLOCKS", itertools.count())
        start = time.monotonic()
        with pytest.raises(kind) as caught, runtime.rank0_first(World(rank, 3), "cpu"):
            pytest.fail("the block ran without rank 0's data")
        assert 0.2 <= time.monotonic() - start < 2
        assert str(caught.value) == (
            "rank 0 did not finish setting up the data within 0.00333333 minutes (it may be stuck: its "
            "output says where); prepare the data in one process first (python data.py with the run's "
            "options), then start the job again")
        assert errors.reports(caught.value) == (rank == 1)
    assert fake_all_reduce.seen == []  # (no collective entered)


def test_rank_1_gives_up_on_rank_0_first_and_the_others_a_little_later(fake_all_reduce, monkeypatch):
    """Rank 1, which says why the job stops, gives up waiting for rank 0's data at SETUP_TIMEOUT; the
    other ranks 1% later, so that a mark that comes between (rank 0 done at the last moment) is seen
    by them, and none stops silently while rank 1 goes on. Review's race: all gave up at the same
    time, and one could stop silently as rank 1, seeing the mark, went on: the job said nothing."""
    store = dist.HashStore()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    monkeypatch.setattr(runtime, "SETUP_TIMEOUT", timedelta(seconds=100))
    now = [0.0]

    def sleep(seconds):  # a clock of its own: rank 0 marks its data done 100.5 s in
        now[0] += seconds
        if now[0] >= 100.5:
            store.set(runtime.job_key("runtime/rank0_first/0/done"), "1")
    monkeypatch.setattr(runtime, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    for rank in (1, 2):
        now[0] = 0.0
        monkeypatch.setattr(runtime, "_RANK0_BLOCKS", itertools.count())
        store.delete_key(runtime.job_key("runtime/rank0_first/0/done"))
        ran = []
        if rank == 1:
            with pytest.raises(errors.RunError), runtime.rank0_first(World(rank, 3), "cpu"):
                ran.append(rank)
        else:
            with runtime.rank0_first(World(rank, 3), "cpu"):
                ran.append(rank)
        assert ran == ([] if rank == 1 else [2]) and now[0] < 101


RANK0_HUNG = """
import os, time
from datetime import timedelta
import torch
import errors, runtime
device, world = runtime.setup_distributed(torch.device("cpu"))
runtime.SETUP_TIMEOUT = timedelta(seconds=1)  # the wait on the store (the group's timeout stays 3 hours)
if world.main:
    time.sleep(120)  # rank 0 hung in setting up the data: it never marks the store
start = time.monotonic()
try:
    with runtime.rank0_first(world, device):
        pass
except errors.UserError as e:
    print(type(e).__name__, f"{time.monotonic() - start:.1f}", e, flush=True)
os._exit(1)  # (no teardown of the group with rank 0 hung)
"""


def test_under_torchrun_a_rank_whose_rank_0_hangs_stops_within_the_deadline():
    """A real gloo job of 2 processes, its group's timeout SETUP_TIMEOUT (3 hours), the wait on the
    store for rank 0's data cut to 1 s: rank 1 stops about 1 s in, with its line, while rank 0 hangs.
    Bug caught: rank 1 went on into the verdict, where it waited for rank 0 as long again (the test's
    time limit ran out)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_USE_AGENT_STORE"}
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", RANK0_HUNG], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**env, "RANK": str(rank)})
             for rank in (0, 1)]
    try:
        out, err = procs[1].communicate(timeout=120)  # (2 imports of torch and set-up: 10 s under load)
        assert procs[0].poll() is None  # (rank 0 still hung)
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    kind, took, line = out.split(" ", 2)
    assert (kind, line.strip()) == ("RunError", "rank 0 did not finish setting up the data within 0.0166667 "
                                    "minutes (it may be stuck: its output says where); prepare the data in "
                                    "one process first (python data.py with the run's options), then start "
                                    "the job again"), err[-3000:]
    assert 1 <= float(took) < 10


# --- what a mutation probe of runtime.py found untested ----------------------------------------


def test_rank_0s_block_marks_the_store_for_the_others_when_it_fails_too(fake_all_reduce, monkeypatch):
    """The ranks other than 0 wait on the job's store for rank 0's mark (rank0_done): rank 0 leaves it
    whether its block succeeded or failed, so that the others go on to the verdict at once.
    Mutation caught: the mark left out (or left only where the block succeeded): the other ranks
    waited for SETUP_TIMEOUT (3 hours) before they learned that rank 0 had failed."""
    store = dist.HashStore()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setattr(runtime, "_RANK0_BLOCKS", itertools.count())
    fake_all_reduce.others = [0.0, 0.0]
    with runtime.rank0_first(World(0, 2), "cpu"):
        pass
    with pytest.raises(ValueError):
        with runtime.rank0_first(World(0, 2), "cpu"):
            raise ValueError("bad data")
    assert store.check([runtime.job_key("runtime/rank0_first/0/done"),
                        runtime.job_key("runtime/rank0_first/1/done")])


def test_local_processes_are_torchruns_local_world_size_and_one_without_torchrun(monkeypatch):
    """The processes sharing this machine's memory: torchrun's LOCAL_WORLD_SIZE in a torchrun job, 1
    where a RANK or LOCAL_WORLD_SIZE was left in the shell (or set by a scheduler) without torchrun.
    Mutation caught: a torchrun job told by RANK: one process checked its batch against an eighth of
    the machine's memory, refused for the 8 processes a leftover LOCAL_WORLD_SIZE=8 said were there."""
    for name in ("TORCHELASTIC_RUN_ID", "RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert runtime.local_processes() == 1
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert runtime.local_processes() == 1
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert runtime.local_processes() == 8


def test_a_machine_error_is_said_by_each_machines_first_process(monkeypatch):
    """Holds: under torchrun a MachineError is printed by the first process of each machine (LOCAL_RANK
    0), a second machine's too (RANK 8), and by no other process of a machine."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    for rank, local, says in (("8", "0", True), ("9", "1", False), ("0", "0", True)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", local)
        assert errors.reports(errors.MachineError("no CUDA")) is says, (rank, local)


def test_run_script_keeps_a_failures_status_over_a_closed_pipe(monkeypatch):
    """Holds: a script that fails (sys.exit(3), its line already said) and whose output then meets a
    closed pipe exits with its failure's status, not the pipe's quiet 141."""
    class Closed(io.StringIO):
        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", Closed())

    def main():
        print("partial")
        sys.exit(3)
    with pytest.raises(SystemExit) as e:
        errors.run_script(main, "x.py")
    assert e.value.code == 3


def test_run_script_with_stdout_closed_runs_the_script(monkeypatch):
    """Holds: with stdout closed from the start (`>&-`: sys.stdout is None) a script runs, its prints
    going nowhere (not into a wrapper of None, an AttributeError), and a broken pipe that is not
    stdout's (a subprocess's) goes on as itself, not as an AttributeError from asking None for its
    descriptor (the traceback then names errors.py's look at stdout, not the script's pipe)."""
    monkeypatch.setattr(sys, "stdout", None)
    assert errors.run_script(lambda: print("table") or 7, "x.py") == 7

    def main():
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    with pytest.raises(BrokenPipeError):
        errors.run_script(main, "x.py")
