"""Shared test helpers: the `debug` preset every test builds on, the shared TinyStories files.
(The repository root is on sys.path through pytest's `pythonpath` in pyproject.toml.)"""

import dataclasses
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

import config

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "tinystories"
DEBUG = config.preset("debug", config.ModelArgs)  # vocab 320, dim 64, 4 layers, 4 experts, context 64

# Keep tests off the network and off the user's W&B account.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def debug_args(**overrides) -> config.ModelArgs:
    """The debug preset's ModelArgs with a few fields changed for one test's purpose."""
    return dataclasses.replace(DEBUG, **overrides)


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
