"""Shared test helpers: the `debug` preset every test builds on, the shared TinyStories files.
(The repository root is on sys.path through pytest's `pythonpath` in pyproject.toml.)"""

import dataclasses
import os
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
