"""The project's error types: each is something a user can fix, raised with a one-line message
that names the problem and the fix. Entry points print `<prog>: error: <message>` and exit with
`exit_code`: 2 for a bad setting (as argparse does), 1 for everything else.

    UserError          the base; entry points catch it
      ConfigError      a setting is missing, mistyped or out of range (exit 2)
        DeviceError    a setting this process's device cannot take (each rank checks its own; exit 2)
      DataError        bad text, tokenizer or token cache
      CheckpointError  a checkpoint is missing, corrupt, or does not match the settings
      RunError         a run cannot start or go on (busy run folder, non-finite weights)
      StorageError     a file cannot be written (disk full, quota, read-only); the old one is intact
      RankError        under torchrun: another rank failed where this one waited for it (no line)

Under torchrun every rank meets a bad setting alike, so rank 0 alone prints it (`reports`); a
DeviceError, which one rank may meet alone, is printed by each rank that meets it.
"""


import os
import sys


class UserError(Exception):
    exit_code = 1

    def __init__(self, message):
        super().__init__(" ".join(line.strip() for line in str(message).splitlines() if line.strip()))


class ConfigError(UserError, ValueError):
    exit_code = 2


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass


class RunError(UserError):
    pass


class StorageError(UserError):
    pass


class DeviceError(ConfigError):
    pass


class RankError(UserError):
    pass


def main_rank() -> bool:
    """False in a torchrun worker other than rank 0 (torchrun sets RANK and TORCHELASTIC_RUN_ID
    before any process group exists; a RANK alone, as some schedulers export, does not count)."""
    return os.environ.get("RANK", "0") == "0" or "TORCHELASTIC_RUN_ID" not in os.environ


def reports(e: UserError) -> bool:
    """Whether this process prints `e`: a bad setting (the same on every rank) on rank 0 alone, a
    RankError (the failing rank prints its own) nowhere, anything else (a DeviceError too) on
    every rank that meets it."""
    if isinstance(e, RankError):
        return False
    return main_rank() or not isinstance(e, ConfigError) or isinstance(e, DeviceError)


def run_script(main, prog: str):
    """A script's entry point: main(), with a UserError printed as `<prog>: error: <message>` and
    its exit status (scripts/ that have no handler of their own)."""
    try:
        return main()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def first_line(e: BaseException) -> str:
    """`Type: first line of the message` of a foreign exception, for a one-line report."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
