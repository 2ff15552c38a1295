"""Shared test helpers: the `debug` preset every test builds on, the shared TinyStories files.
(The repository root is on sys.path through pytest's `pythonpath` in pyproject.toml.)"""

import atexit
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import config

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "tinystories"
DEBUG = config.preset("debug", config.ModelArgs)  # vocab 320, dim 64, 4 layers, 4 experts, context 64
WORDS = ("the cat sat on a mat and a dog ran to the park where kids play with a red ball "
         "every day mom said be kind lily smiled tim was happy they ate cake").split()

# Keep tests off the network, the user's W&B account and datasets cache (a hub copy there would
# load), and on the CPU: the suite holds the CPU's paths (host syncs, op counts, tokens);
# LLAMA4_TEST_CUDA=1 lets it see a GPU. Set, not defaulted: a shell's own settings must not win.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="tests-hf-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], True)
if os.environ.get("LLAMA4_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Ctrl-C as in a terminal, for the tests of it (and their child processes): a shell starts a job it
# puts in the background (`make test &`, nohup) with SIGINT ignored, which Python then keeps
signal.signal(signal.SIGINT, signal.default_int_handler)


def debug_args(**overrides) -> config.ModelArgs:
    """The debug preset's ModelArgs with a few fields changed for one test's purpose."""
    return dataclasses.replace(DEBUG, **overrides)


def write_stories(path: Path, n: int = 200, seed: int = 0, words=WORDS, length=(30, 80)) -> Path:
    """n synthetic stories of `length` words in the official TinyStories layout (separated by
    <|endoftext|> lines): with WORDS, text enough for the debug preset's 320-token BPE."""
    rng = random.Random(seed)
    stories = [" ".join(rng.choice(words) for _ in range(rng.randint(*length))).capitalize() + "."
               for _ in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n<|endoftext|>\n".join(stories) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small synthetic story file in the official TinyStories layout, one per test module (a module
    may define its own)."""
    return write_stories(tmp_path_factory.mktemp("corpus") / "stories.txt")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A token and tokenizer cache folder shared by a test module's runs."""
    return tmp_path_factory.mktemp("cache")


def shared_file(name: str) -> Path:
    """A file from ../shared/data/tinystories, or skip the test when the folder is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared beside the clone holds the TinyStories samples)")
    return path


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write (storage.atomic_write) goes to /dev/full, where a write fails with ENOSPC
    as on a full disk; the temporary file is still created beside the target, so that its removal
    is tested too."""
    import storage
    real = tempfile.mkstemp

    def mkstemp(*args, **kw):
        fd, name = real(*args, **kw)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name
    monkeypatch.setattr(storage.tempfile, "mkstemp", mkstemp)


@contextmanager
def small_filesystem(path, size="256k"):
    """A real filesystem of `size` at `path` (a tmpfs), or skip when this machine cannot mount one
    (not root): the `full_disk` fixture covers the same code with a patched writer."""
    path.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({out.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::nonzero")


def is_host_sync(event) -> bool:
    """A profiler event that makes the host wait for a CUDA device: nonzero anywhere (its output
    size lives on the device); a scalar read (item, bool(), int(), torch.equal) made by Python code,
    not inside another aten op (CPU kernels such as grouped_mm and fused AdamW read their own small
    inputs that way; their CUDA kernels do not)."""
    if event.name == "aten::nonzero":
        return True
    if event.name not in SYNC_OPS:
        return False
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def host_syncs(fn) -> int:
    """Times fn makes the host read a device value: the profiler events above, plus Tensor.tolist,
    .cpu() and .numpy() (copies to the host: no aten op for a tensor already on the CPU, so counted
    by wrapping them). On CPU nothing waits; on CUDA each would."""
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        for name in ["tolist", "cpu", "numpy"]:
            method = getattr(torch.Tensor, name)
            mp.setattr(torch.Tensor, name,
                       lambda t, *a, method=method, **k: calls.append(1) or method(t, *a, **k))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    return sum(is_host_sync(e) for e in prof.events()) + len(calls)


# ---------------------------------------------------------------------------------------------
# What ends a run from outside: a signal, a crash. (train and checkpoint are imported where used:
# train imports datasets, which reads HF_DATASETS_CACHE, set above, when it is imported.)


class Crash(BaseException):
    """A crash (kill -9, a lost machine) at a chosen point: not an Exception, so train.py's error
    handling does not catch it and nothing after it runs."""


def stop_at(monkeypatch, at: int):
    """As a signal would stop train.py: after step `at` (once state.step is `at`); returns the undo."""
    import train
    real_agree = train.agree
    monkeypatch.setattr(train, "agree", lambda job, state, *a: real_agree(job, state, *a) or state.step == at)
    return lambda: monkeypatch.setattr(train, "agree", real_agree)


def crash_in_step(monkeypatch, n: int):
    """A crash as step n (counted from 1: after n - 1 steps) begins; returns the undo."""
    import train
    real_step = train.train_step

    def crashing(job, batches, step, lr):
        if step == n - 1:
            raise Crash()
        return real_step(job, batches, step, lr)
    monkeypatch.setattr(train, "train_step", crashing)
    return lambda: monkeypatch.setattr(train, "train_step", real_step)


def crash_after_saving(monkeypatch, step: int, name: str = "last.pt"):
    """A crash just after train.py saved `name` at `step` (the file complete; saved by train.py's own
    process, not in the background: a crash there is the process's); returns the undo."""
    import checkpoint
    real_save = checkpoint.save_checkpoint
    monkeypatch.setattr(checkpoint, "BACKGROUND", False)

    def saved_then_crashed(path, state):
        real_save(path, state)
        if state["step"] == step and Path(path).name == name:
            raise Crash()
    monkeypatch.setattr(checkpoint, "save_checkpoint", saved_then_crashed)
    return lambda: monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)


def option_helps(monkeypatch, parse) -> dict:
    """{option: its help text} of the config.Parser that parse(["--help"]) builds (a script's own)."""
    parsers, parse_args = [], config.Parser.parse_args
    monkeypatch.setattr(config.Parser, "parse_args",
                        lambda self, *a, **k: parsers.append(self) or parse_args(self, *a, **k))
    with pytest.raises(SystemExit):
        parse(["--help"])
    return {a.option_strings[-1]: a.help for a in parsers[0]._actions if a.option_strings}


class WeightCasts(TorchDispatchMode):
    """Counts foreach copies (CastOnce's) and casts from fp32 to bf16 (autocast's and the loss's
    casts of the weights, and of activations: compare differences)."""

    def __init__(self):
        super().__init__()
        self.foreach, self.casts = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.foreach += func is torch.ops.aten._foreach_copy_.default
        self.casts += (func is torch.ops.aten._to_copy.default and args[0].dtype == torch.float32
                       and (kwargs or {}).get("dtype") == torch.bfloat16)
        return func(*args, **(kwargs or {}))
