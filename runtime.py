"""Where the code runs: the device, the processes of a torchrun job, the compute precision and the
device's peak FLOP/s (for MFU). Used by train.py and sample.py.

    resolve_device("auto")    cuda:0 when there is a GPU, else cpu; a clear error for a bad name
    World / setup_distributed the rank and world size, one process per GPU under torchrun
    data_parallel             DDP around the model, its buffers not broadcast at each forward
    set_up_done, wait_long    the collectives' timeout back to the backend's once set-up is done;
                              the long one again for the final barrier
    local_processes           the job's processes on this machine (which share its CPU memory)
    all_reduce, rank0_first   a few numbers summed over the ranks; rank 0 building caches first
    all_ranks_or_none         set-up checks every rank learns the outcome of (a failed rank's
                              error printed once, no rank left waiting at a collective)
    compute_dtype, autocast   bf16 autocast on CUDA from sm80 on, else fp32 (unless asked otherwise)
    compile_model             torch.compile where --compile says so (wants_compile), through
                              static_compile (a Llama4 by regions: RegionalModel);
                              compile_problem: a two-op preflight
    peak_flops                a table of GPU bf16 peaks on CUDA; a GEMM timed now on CPU
    device_memory             the GPU's memory, or the machine's (or its cgroup limit) on CPU
    out_of_memory             whether an exception is (or wraps) running out of memory
    compile_failure           the one-line reason a compiled call failed, for its eager fallback
    peer_lost                 whether an error is a collective's, another process of the job gone
    tell_peers_stop           a signal to one rank, told to the others between collectives (an
                              evaluation's), through the job's store: peer_stopping

How this departs from the obvious version:
- Compiling is static (dynamic=False: one graph per shape, never a symbolic batch) and draws the
  router noise from torch's generator, as eager mode does: a compiled run draws the noise its
  --compile false twin draws, and either can resume the other.
- The model compiles by regions, each decoder layer on its own and the head (RegionalModel), not
  whole: one graph serves every layer of a kind, so compiling scout-128m took 1.5-1.8x less time
  (scripts/bench_compile.py), and no more with more layers.
- The CPU's peak is the fastest of half a second of GEMMs, not their mean, so a busy moment at
  start-up does not lower it (and lift the MFU).
- A set-up step that fails on one rank is learned by all (all_ranks_or_none): no rank waits at a
  collective for one that has gone; one that fails on every rank is printed by rank 0 alone.
- While rank 0 alone prepares the data (rank0_first), the others wait on the job's store, looking
  every RANK0_LOOK_SECONDS (in a collective Python runs no signal handler: a SIGTERM took effect when
  rank 0 was done, minutes later), for up to SETUP_TIMEOUT: past it, a hung rank 0, they stop there
  (rank0_done; they went on into the collective, found it 6 hours in). Then they wait in a collective
  (the verdict): the process group starts with SETUP_TIMEOUT, not NCCL's 10 minutes (gloo's 30), and
  gets its backend's default back when set-up is done (set_up_done), so a hang in training is found
  as soon as before;
  the final barrier, where the others wait while rank 0 finishes its W&B run, has it again (wait_long).
- The marks a rank leaves in the job's store (a stop, rank 0's data done) are its attempt's (job_key):
  torchrun keeps the store across restarts (--max_restarts) and changes of machines (--nnodes MIN:MAX),
  where a new attempt read the one before's (its evaluations cut short at once, as if a rank had been
  stopped). An attempt is an id rank 0 draws at set-up (_new_attempt): the restart count, the key
  before, stays the same when the machines change.
"""

import inspect
import itertools
import os
import re
import secrets
import time
import warnings
import zlib
from contextlib import contextmanager, nullcontext, suppress
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist

from config import CUDA_GRAPH_MODES
from errors import ConfigError, DeviceError, MachineError, RankError, RunError, UserError, first_line
from model import Llama4, Regions, checkpoint_layer, run_layer


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda:0 when available, else cpu; cpu, cuda or cuda:N otherwise (a ConfigError for others:
    cpu:1 too, which torch takes as the one CPU device)."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: this project runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        if device.index:  # torch runs cpu:N on the one CPU device: not a second one
            raise ConfigError(f"--device {name}: there is one CPU device; use --device cpu")
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():  # (a node of a job may lack what another has)
            raise MachineError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MachineError(f"--device {name}: there are {torch.cuda.device_count()} GPUs here; "
                              f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


class World(NamedTuple):
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def local_processes() -> int:
    """The processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if "TORCHELASTIC_RUN_ID" in os.environ else 1


def setup_distributed(device: torch.device) -> tuple[torch.device, World]:
    """Under torchrun: join the process group (NCCL on CUDA, gloo on CPU), one GPU per process.
    A RANK without the rest of torchrun's variables (a scheduler's, or one left in the shell) is
    a ConfigError naming them, not torch's rendezvous traceback."""
    if "RANK" not in os.environ:
        return device, World()
    missing = [v for v in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"RANK={os.environ['RANK']} is set, but not {', '.join(missing)}: this is not a "
                          "torchrun job; start it with torchrun, or unset RANK to train in one process")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    # torch._dynamo (which DDP imports) keeps references to the torch objects it finds at import,
    # the default group among them: one created before it outlives destroy_process_group, and a
    # gloo group torn down as the interpreter exits can abort it ("terminate called without an
    # active exception", exit -6). Imported first, it holds no group.
    from torch import _dynamo  # noqa: F401
    if device.type == "cuda":  # (bound to its GPU: barrier() then warns of no guess at the device)
        dist.init_process_group("nccl", device_id=device, timeout=SETUP_TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=SETUP_TIMEOUT)
    world = World(dist.get_rank(), dist.get_world_size())
    _new_attempt(world)
    return device, world


_attempt = "0"  # this attempt's id in its store keys (job_key): rank 0's, drawn at setup_distributed


def _new_attempt(world: World) -> None:
    """A fresh id for this attempt's store keys (job_key), drawn by rank 0 and broadcast to the others
    (a collective, at set-up, where every rank is there). torchrun's agent keeps its store, the
    workers' keys with it, across the attempts of a job: the restarts --max_restarts allows, and a
    change of machines in an elastic job (--nnodes MIN:MAX), which is no restart
    (TORCHELASTIC_RESTART_COUNT stays) and whose new round's workers reach the same store unprefixed
    (torch 2.13: elastic/agent/server/api.py, "membership changes do not count as retries";
    elastic/rendezvous/dynamic_rendezvous.py keeps one shared TCPStore server across rounds)."""
    global _attempt
    drawn = [secrets.token_hex(8) if world.main else None]
    dist.broadcast_object_list(drawn, src=0)
    _attempt = drawn[0]


def data_parallel(model, device: torch.device, find_unused: bool):
    """DDP around model, with no broadcast of rank 0's buffers at each forward: they are RoPE tables
    and the MoE layers' expert ids, which each rank makes alike from the settings. torch 2.13 calls
    that forward_sync_buffers (and warns, on every rank, at broadcast_buffers, which is all that
    earlier versions know). The model's weights are cast per use, not all at once
    (Llama4.cast_weights_once): at once, every gradient would reach DDP's buckets at the end of
    backward, and no all-reduce would overlap it. Its checkpointed layers (--grad_checkpoint) are
    recomputed by torch's non-reentrant checkpoint (Llama4.reentrant_checkpoint): DDP's search for
    unused parameters (vision models) cannot see into a reentrant one, and would mark its weights
    ready twice."""
    inner = getattr(model, "_orig_mod", model)  # (the model under its compiled wrapper)
    inner.cast_weights_once = False
    inner.reentrant_checkpoint = False
    ddp = torch.nn.parallel.DistributedDataParallel
    known = inspect.signature(ddp).parameters
    no_broadcast = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused, **{no_broadcast: False})


# Rank 0 alone prepares a new run's data (the hub's TinyStories on first use: its download, a BPE and
# the tokenizing, minutes to tens of minutes) while the other ranks wait (on the store, then in a
# collective), which NCCL aborted after 10 minutes (gloo after 30), the job with it.
SETUP_TIMEOUT = timedelta(hours=3)


def set_up_done() -> None:
    """The process group's timeout back to its backend's default (NCCL's 10 minutes, gloo's 30) once
    set-up is done: a hang in training is then found as soon as without SETUP_TIMEOUT."""
    _set_timeout(None)


def wait_long() -> None:
    """SETUP_TIMEOUT again, for the final barrier: the other ranks wait there while rank 0 finishes its
    W&B run (the upload of what is left: minutes on a slow network), which NCCL's 10 minutes aborted,
    a run that had finished and saved reported failed."""
    _set_timeout(SETUP_TIMEOUT)


def _set_timeout(timeout: timedelta | None) -> None:
    """The process group's timeout for its collectives: `timeout`, or (None) its backend's default."""
    if not dist.is_initialized():
        return
    from torch.distributed import constants, distributed_c10d
    if timeout is None:
        nccl = dist.get_backend() == "nccl"
        timeout = constants.default_pg_nccl_timeout if nccl else constants.default_pg_timeout
    distributed_c10d._set_pg_timeout(timeout)  # (torchtitan's way, after a step)


def all_reduce(values: list[float], device, world: World, op=None) -> list[float]:
    """Sum (or `op`, e.g. dist.ReduceOp.MAX) of a few numbers over the ranks."""
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def _verdict(ok: bool, device, world: World) -> tuple[bool, bool]:
    """(whether every rank's `ok` is true, whether rank 0's is) (a collective: every rank must call it)."""
    failed = float(not ok)
    total, rank0 = all_reduce([failed, failed if world.main else 0.0], device, world)
    return total == 0, rank0 == 0


def _first_to_say(line: str | None, device, world: World) -> bool:
    """Whether no lower rank failed with this rank's `line` (None: this rank did not fail), so that ranks
    that met one error alike print it once (a collective: every rank must call it)."""
    said = [0.0] * world.size  # (a line's CRC-32, plus 1: a number float64 holds exactly, 0 for none)
    if line is not None:
        said[world.rank] = zlib.crc32(line.encode(errors="surrogatepass")) + 1.0  # (a non-UTF-8 path's)
    lines = all_reduce(said, device, world)
    return said[world.rank] not in lines[:world.rank]


@contextmanager
def rank0_first(world: World, device):
    """Rank 0 runs the block first (building the data caches); the other ranks then run it (and
    find the caches built). Two processes writing one cache would delete each other's files.
    Where rank 0's block fails (bad data: it prints why), the others stop with a RankError rather
    than a broken barrier's traceback; where rank 0's succeeds and another's fails (a file another
    machine lacks), all learn it at a second verdict that rank 0 joins with an empty block, and the
    lowest rank that met each line prints it (all_ranks_or_none). The others wait for rank 0's block
    on the job's store, not in a collective (rank0_done), so that a signal stops one of them at once
    (torchrun's agent then stops rank 0 as it stops the rest of a failed job)."""
    if world.size == 1:
        yield
        return
    done = job_key(f"runtime/rank0_first/{next(_RANK0_BLOCKS)}/done")  # (every rank counts its calls alike)
    if not world.main:
        rank0_done(done, world)
        if not _verdict(True, device, world)[0]:
            raise RankError("rank 0 failed setting up the data")
        with all_ranks_or_none(world, device, "setting up the data"):  # (rank 0's succeeded: a failure
            yield  # is this rank's own to print, once where several met it)
        return
    with all_ranks_or_none(world, device, "setting up the data"):
        try:
            yield
        finally:
            store_mark(done)
    with all_ranks_or_none(world, device, "setting up the data"):  # (the others', after rank 0's)
        pass


_RANK0_BLOCKS = itertools.count()  # rank0_first's calls in this process: a store key for each
RANK0_LOOK_SECONDS = 0.05  # how often the other ranks look whether rank 0's block is done


def rank0_done(key: str, world: World) -> None:
    """Wait until rank 0 has marked `key` in the job's store (its block done, or failed), looking every
    RANK0_LOOK_SECONDS: Python runs its signal handlers between looks, where it runs none in a
    collective (a SIGTERM then took effect when rank 0 was done, minutes later). A signal meanwhile
    is told to the others (tell_peers_stop) before it stops this rank. Past SETUP_TIMEOUT with no mark
    the rank stops (rank 1 says why, the others silently: rank 0 says nothing), rather than going on
    to the verdict, which waited for a hung rank 0 as long again under the group's timeout (6 hours
    in all); torchrun's agent then stops rank 0 as it stops the rest of a failed job."""
    if not dist.is_initialized():  # (a fake group: the verdict alone)
        return
    store = dist.distributed_c10d._get_default_store()
    # (rank 1, which says why, gives up first, the others 1% later: none stops silently while rank 1,
    # seeing a mark that came between, goes on; nor before rank 1 has said it, their clocks apart)
    deadline = time.monotonic() + SETUP_TIMEOUT.total_seconds() * (1 if world.rank == 1 else 1.01)
    try:
        while not store.check([key]):
            if time.monotonic() >= deadline:
                minutes = f"{SETUP_TIMEOUT.total_seconds() / 60:g} minutes"
                raise (RunError if world.rank == 1 else RankError)(
                    f"rank 0 did not finish setting up the data within {minutes} (it may be stuck: its "
                    "output says where)", "prepare the data in one process first (python data.py with the "
                    "run's options), then start the job again")
            time.sleep(RANK0_LOOK_SECONDS)
    except KeyboardInterrupt:
        tell_peers_stop()
        raise


@contextmanager
def all_ranks_or_none(world: World, device, what: str):
    """Every rank runs the block, then all learn whether it succeeded everywhere: a rank whose block
    failed raises its own error (and prints it, a bad setting too: `alone`; where several ranks met
    the same line, the lowest of them alone), the others a RankError (no line of their own), rather
    than waiting at their next collective for a rank that has gone.
    Where rank 0's block failed too, another rank's UserError is a RankError as well: the ranks read
    the same settings and files, and rank 0's line stands for all (not one line per process). The
    block must hold no collective."""
    try:
        yield
    except BaseException as e:
        if world.size > 1:
            rank0_ok = _verdict(False, device, world)[1]
            first = _first_to_say(str(e), device, world) if rank0_ok else True
            # (a DeviceError is this rank's own device's: printed by each rank that meets it)
            if isinstance(e, UserError) and not isinstance(e, DeviceError) and not (world.main or rank0_ok):
                raise RankError(f"rank 0 failed {what} too") from None
            if isinstance(e, UserError) and not (world.main or isinstance(e, DeviceError)):
                if not first:  # (a lower rank prints this line: one a machine of a job on several, not eight)
                    raise RankError(f"a lower rank failed {what} alike") from None
                e.alone = True  # rank 0 succeeded: this rank's line is the only one (errors.reports)
        raise
    if world.size > 1:
        ok, rank0_ok = _verdict(True, device, world)
        if not ok:
            if rank0_ok:  # (the failed ranks learn which of them prints each line)
                _first_to_say(None, device, world)
            raise RankError(f"another rank failed {what}")


def met_alike(world: World, message: str) -> UserError:
    """The error for a failure every rank meets alike, from the same figures (summed losses, the
    same weights): a RunError on rank 0, which prints it, a RankError on the others (no line of
    their own), so that a job says it once."""
    return (RunError if world.main else RankError)(message)


# a rank a signal cut short in an evaluation says so in the job's store (torchrun's, which every rank
# reaches without a collective); the others look there about every PEER_STOP_SECONDS (train.evaluate)
STOP_KEY = "train.py/stop"
PEER_STOP_SECONDS = 1.0


def tell_peers_stop() -> None:
    """Mark in the process group's store that this rank was asked to stop (for good: the run stops)."""
    store_mark(job_key(STOP_KEY))


def job_key(name: str) -> str:
    """`name` as this attempt's key in the job's store: torchrun's agent keeps its store across a job's
    attempts (a restart, a change of machines: _new_attempt), where a mark the attempt before left (a
    stop, rank 0's data done) would be read as this one's. The attempt is rank 0's id for it, drawn at
    set-up: TORCHELASTIC_RESTART_COUNT, the key before, stays the same when the machines change."""
    return f"{name}/attempt-{_attempt}"


def store_mark(key: str) -> None:
    """Set `key` in the process group's store (none: nothing). A store gone (its host stopped) is let
    be: the collective after finds the job broken, and the error on its way out is kept."""
    if dist.is_available() and dist.is_initialized():
        with suppress(RuntimeError):
            dist.distributed_c10d._get_default_store().set(key, "1")


def peer_stopping() -> bool:
    """Whether a rank of the job has marked the store (tell_peers_stop): a round trip to it, no collective."""
    return (dist.is_available() and dist.is_initialized()
            and dist.distributed_c10d._get_default_store().check([job_key(STOP_KEY)]))


# what a collective says when another process of the job has gone: gloo's connection to it reset or
# closed, NCCL's remote error (not NCCL's other errors: a local CUDA fault, out of memory)
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "ncclRemoteError",
             "remote process exited")


def peer_lost(e: BaseException) -> bool:
    """Whether `e` is a collective failing because another process of the torchrun job went away (killed,
    or crashed). (NCCL mostly waits for its watchdog instead, and torchrun then stops the others.)"""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return isinstance(e, dist.DistNetworkError) or (
        isinstance(e, RuntimeError) and any(m in str(e) for m in PEER_LOST))


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: auto = bfloat16 on CUDA (float32 below sm80, which has no bf16 tensor cores),
    float32 on CPU."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
        return torch.bfloat16 if bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast (fp32 weights, bf16 matmuls), or nothing for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compile_model(model, choice: str, device: torch.device, log=print, mode: str = "default"):
    """torch.compile(model, mode=mode) when `choice` (--compile) says so: true, or auto on CUDA.
    Where compiling is unavailable (no C compiler, no Triton, an unsupported Python), `auto` and
    `true` fall back to the eager model with one warning line (and where compiling this model
    fails, train.py's first steps do: train.first_steps). `mode` (--compile_mode):
    reduce-overhead replays the compiled forward and backward as CUDA graphs (on CUDA; the CPU
    compiles as by default)."""
    if not wants_compile(choice, device):
        return model
    problem = compile_problem(device)
    if problem:
        log(f"warning: torch.compile is unavailable here ({problem}); running eagerly (--compile false "
            "skips this check)")
        return model
    return static_compile(model, mode)


def wants_compile(choice: str, device: torch.device) -> bool:
    """--compile true, or auto on CUDA."""
    return choice == "true" or (choice == "auto" and device.type == "cuda")


# the kinds of decoder layer, each a graph of a region's (RoPE or NoPE, MoE or dense)
REGION_KINDS = 4


def static_compile(model, mode: str = "default", whole: bool = False):
    """torch.compile in `mode` (--compile_mode), for static shapes: a run's shapes never change,
    and a graph with a symbolic batch (what automatic dynamic shapes make of a second shape in one
    process) is slower than one compiled for the batch it runs. A Llama4 compiles by regions
    (RegionalModel) unless `whole`; another model (bench_model's transformers one) whole. Random
    numbers (the router noise) come from torch's generator, as in eager mode, not from the
    compiler's own (other numbers for the same seed): a compiled run trains as the --compile false
    run does, and either can resume the other. It costs one unfused kernel per MoE layer
    (inductor's fallback_random, set for the process). With --grad_checkpoint the recomputed noise
    restores the generator's state, an op CUDA graph trees refuse: reduce-overhead would then run
    those graphs without CUDA graphs (not yet seen on a GPU)."""
    import torch._inductor.config
    torch._inductor.config.fallback_random = True
    # the router's fp32 matmuls (the routing decision, kept out of bf16 on purpose) would make
    # Inductor warn on CUDA, on two lines, that TF32 is not enabled: they stay fp32, without the warning
    warnings.filterwarnings("ignore", "TensorFloat32 tensor cores for float32 matrix multiplication",
                            UserWarning)
    options = dict(mode=None if mode == "default" else mode, dynamic=False)
    if isinstance(model, Llama4) and not whole:
        # a region's code is every RegionalModel's in the process and holds a graph for each kind of
        # layer where the whole forward held one: the recompile limit (8 a code object) scaled by as
        # much, or the graphs past it (bench_model's variants at two batches) run eagerly
        import torch._dynamo.config
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, REGION_KINDS * 8)
        return RegionalModel(model, **options)
    return torch.compile(model, **options)


class RegionalModel(torch.nn.Module):
    """A Llama4 whose forward runs each decoder layer, and its head (final norm, router losses,
    loss), as a compiled region (model.Regions; torchtitan compiles its blocks so): the compiler
    traces and lowers one layer of each kind (RoPE or NoPE, MoE or dense; training or evaluation)
    and every other layer of that kind runs the same graph, where the whole model compiled is
    every layer traced and lowered again, unrolled. A scout-128m training step compiled 1.5x
    faster so on a CPU, 1.8x with its kernels built (scripts/bench_compile.py), and the time no
    longer grows with the layers. The embedding and the RoPE tables run eagerly (a dozen ops a
    step). The model is the wrapper's `_orig_mod`, as in torch.compile's: its state dict is the
    model's under that prefix, and its attributes read and set through. Under CUDA graphs
    (reduce-overhead, max-autotune) each forward is one step of CUDA graph trees: without
    gradients (evaluation) each region's call would otherwise start a new one, whose replays
    overwrite the last region's outputs, the next region's input (torch's cudagraph_trees:
    can_start_new_generation)."""

    def __init__(self, model: Llama4, **options):
        super().__init__()
        self.cuda_graphs = options.get("mode") in CUDA_GRAPH_MODES  # (set before the model: its own)
        self._orig_mod = model
        self.regions = Regions(layer=torch.compile(run_layer, **options),
                               checkpointed=torch.compile(checkpoint_layer, **options),
                               head=torch.compile(Llama4._head, **options))

    def forward(self, *args, **kwargs):
        if self.cuda_graphs:  # the last forward's outputs are consumed (train.accumulate, evaluate)
            torch.compiler.cudagraph_mark_step_begin()
        return self._orig_mod(*args, regions=self.regions, **kwargs)

    @property
    def training(self) -> bool:  # the model's, as in torch.compile's wrapper (eval() or train() on either)
        model = self.__dict__.get("_modules", {}).get("_orig_mod")
        return True if model is None else model.training

    @training.setter
    def training(self, mode: bool):  # (nn.Module's train() sets the model's too, as a child's)
        pass

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._orig_mod, name)

    def __setattr__(self, name, value):  # the model's settings go to the model, as in torch.compile's
        own = ("_orig_mod", "regions", "training", "cuda_graphs")
        if name in own or "_orig_mod" not in self.__dict__["_modules"]:
            super().__setattr__(name, value)
        else:
            setattr(self._orig_mod, name, value)


def compile_problem(device: torch.device) -> str | None:
    """Compile a two-op function, forward and backward, on `device`: None when that works, else why."""
    try:
        x = torch.ones(8, device=device, requires_grad=True)
        torch.compile(lambda t: (t * 2).sin().sum(), fullgraph=True)(x).backward()
        return None
    except Exception as e:  # whatever the backend raises: the reason is reported, training goes on
        return first_line(e)
    finally:
        torch._dynamo.reset()


# out of memory raised as a RuntimeError, not torch.OutOfMemoryError: the CPU allocator's, and CUDA's
# outside torch's caching allocator (a library's workspace: torch.AcceleratorError, cuBLAS)
OUT_OF_MEMORY_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "CUDA error: out of memory",
                          "CUBLAS_STATUS_ALLOC_FAILED")


def out_of_memory(e: BaseException | None) -> bool:
    """An out-of-memory error (CUDA's, the CPU allocator's RuntimeError, Python's MemoryError), or an
    exception wrapping one: Inductor raises what fails while it compiles (max-autotune allocates to time
    its kernels) inside its own InductorError. (Not an error raised while handling one: its
    __context__ is not followed.)"""
    for _ in range(8):  # a short chain: the compiler's wrappers, then the error
        if e is None:
            return False
        if isinstance(e, torch.OutOfMemoryError | MemoryError) or (isinstance(e, RuntimeError) and any(
                m in str(e) for m in OUT_OF_MEMORY_MESSAGES)):
            return True
        e = getattr(e, "inner_exception", None) or e.__cause__
    return False


def compile_failure(e: Exception) -> str:
    """Why a compiled model's call failed, in one line for a warning, before falling back to
    eager (train.py's first steps, sample.py's decode step); `e` itself, raised again, when it
    is out of memory, which running eagerly would not fix."""
    if out_of_memory(e):
        raise e
    return first_line(e)[:200]


GPU_BF16_PEAK = {  # dense bf16 tensor-core FLOP/s, by the first key in the device name (V100 and T4,
    # without bf16 tensor cores, have none: no MFU there)
    "H100 NVL": 835e12, "H200 NVL": 835e12, "H100 PCIe": 756e12, "H200": 989e12, "H100": 989e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10G": 125e12,
    "A10": 125e12, "A6000": 155e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "B200": 2250e12,
}


def gpu_bf16_peak(name: str) -> float | None:
    """The table's peak for a device name ("NVIDIA H100 80GB HBM3": the H100 SXM's), or None. A key
    ends where the name's model ends ("A100" is not "RTX A1000"'s; "GH200" holds an H200)."""
    return next((v for k, v in GPU_BF16_PEAK.items() if re.search(re.escape(k) + r"(?![0-9A-Za-z])", name)),
                None)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak: a table of GPU bf16 peaks on CUDA (none for other dtypes, whose peaks
    the table does not hold: no MFU then); a GEMM measured now on CPU."""
    if device.type == "cuda":
        if dtype != torch.bfloat16:
            return None
        return gpu_bf16_peak(torch.cuda.get_device_name(device))
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: the first call's set-up is not the peak
    return 2 * n**3 / fastest_call(lambda: a @ b, seconds=0.5)


def fastest_call(fn, seconds: float, clock=time.perf_counter) -> float:
    """The shortest of the times fn() took, calling it for `seconds`: a peak, which the moments
    another process held the CPU do not lower (the mean over the time did: a busy start-up gave a
    third of the peak, and an MFU over 100% for the whole run)."""
    best, end = float("inf"), clock() + seconds
    while True:
        t = clock()
        fn()
        now = clock()
        best = min(best, now - t)
        if now >= end:
            return best


CGROUP_MEMORY_MAX = "/sys/fs/cgroup/memory.max"  # this container's memory limit under cgroup v2, or "max"


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory the device has: the GPU's total, or on CPU the machine's physical memory
    (or the cgroup v2 limit of this container, when lower). None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        with open(CGROUP_MEMORY_MAX) as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total
