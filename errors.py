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

Importing this module makes a Ctrl-C that nothing catches one line, `<prog>: interrupted`, instead
of a traceback (the exit status stays a SIGINT's, 130): train.py and sample.py import it before torch, whose
import takes seconds.
"""


import errno
import os
import select
import signal
import sys
import threading


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
    its exit status (scripts/ that have no handler of their own), and output read by something that
    stops early (`| head -1`) ending quietly, with the status a SIGPIPE gives (141), as cat's does;
    after a UserError or a failing sys.exit (argparse's 2), with that status. A broken pipe that is
    not stdout's (a closed subprocess or socket) is not that: it goes on as an uncaught error.
    Standard output that fails otherwise (`> FILE` on a full disk) is one line saying so, exit 1 (or
    the status already chosen); an OSError that is not stdout's goes on as an uncaught error."""
    status = 0
    stdout = sys.stdout
    if stdout is not None:
        sys.stdout = _Stdout(stdout)
    try:
        try:
            result = main()
            if getattr(sys.stdout, "failed", None) is not None:  # lost inside train.main: said here
                raise sys.stdout.failed
            return result
        except UserError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            status = e.exit_code
            sys.exit(e.exit_code)
        except SystemExit as e:  # a failure's status, already said, outranks the pipe (--help's 0 does not)
            if e.code:
                status = e.code
            raise
        finally:  # what stdout still holds (--help's text too) meets a closed pipe here, not at exit
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError as e:
        if not (getattr(e, "stdout", False) or _stdout_closed()):  # (marked: stdout's, maybe since dropped)
            raise
        stdout_failed(e, prog, status)
    except OSError as e:
        if not getattr(e, "stdout", False):
            raise
        stdout_failed(e, prog, status)
    finally:
        if isinstance(sys.stdout, _Stdout):
            sys.stdout = stdout


def stdout_failed(e: OSError, prog: str, status=0):
    """Standard output's failed write `e`, said as run_script says it, and exit: a closed pipe (`| head`
    that stopped reading) quietly with a SIGPIPE's status (141), anything else (`> FILE` on a full disk)
    in one line, exit 1; `status`, a failure's already chosen (and said), outranks either. Stdout goes to
    devnull first, or what its buffer still holds fails again at exit. (config.Parser's --help too.)"""
    if not isinstance(e, BrokenPipeError):
        where = "somewhere with room" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "to a file"
        try:
            print(f"{prog}: error: cannot write to standard output ({e.strerror or e}); send the output "
                  f"{where}, or to a terminal", file=sys.stderr)
        except OSError:  # stderr full too: the status says it (and not Python's 120 for a failed exit)
            drop_output(sys.stderr)
    drop_output()
    sys.exit(status or (141 if isinstance(e, BrokenPipeError) else 1))


class _Stdout:
    """sys.stdout while run_script runs a script: an OSError from a write or flush is marked as
    standard output's (`e.stdout`), as a print's error names no file to tell it from another's."""

    def __init__(self, stream):
        self.stream = stream
        self.failed = None  # an error a caller took (train.py's Console: it trains on), said at the end

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def write(self, text):
        return self._marked(self.stream.write, text)

    def flush(self):
        return self._marked(self.stream.flush)

    @staticmethod
    def _marked(call, *args):
        try:
            return call(*args)
        except OSError as e:
            e.stdout = True
            raise


def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt (a Ctrl-C: the entry point's one line and clean-up) until the
    returned function puts the old handler back (a no-op off the main thread, where Python cannot
    set handlers). train.py's loop takes the signal itself; this covers the rest of a run."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = take_signal(signal.SIGTERM, signal.default_int_handler)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def take_signal(signum, handler):
    """signal.signal, but a signal the process was told to ignore (SIG_IGN: what a non-interactive
    shell's background job starts with for SIGINT) stays ignored; the old handler."""
    if signal.getsignal(signum) is signal.SIG_IGN:
        return signal.SIG_IGN
    return signal.signal(signum, handler)


def drop_output(stream=None):
    """A failed output stream (stdout by default) pointed at devnull (Python's advice), or what its
    buffer still holds fails again at exit."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, (stream or sys.stdout).fileno())
        os.close(null)
    except (AttributeError, ValueError, OSError):  # no file behind it (an io.StringIO): nothing to fail
        pass


def _stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reader is gone: polling its write end says so
    (POLLERR on Linux, POLLHUP on macOS). False where it cannot tell (no stdout, no file behind it,
    no poll on Windows)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _interrupted(kind, value, traceback):
    """sys.excepthook: an uncaught KeyboardInterrupt (one during the imports) is one line, from rank 0
    alone under torchrun; anything else (and an interactive session's, with no program) goes to the
    hook there was."""
    if not issubclass(kind, KeyboardInterrupt) or not sys.argv[0]:
        return _excepthook(kind, value, traceback)
    if main_rank():
        print(f"\n{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)


_excepthook, sys.excepthook = sys.excepthook, _interrupted


def first_line(e: BaseException) -> str:
    """`Type: first line of the message` of a foreign exception, for a one-line report."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
