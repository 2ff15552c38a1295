"""The project's error types: each is something a user can fix, raised with a one-line message
that names the problem and the fix. Entry points print `<prog>: error: <message>` and exit with
`exit_code`: 2 for a bad setting (as argparse does), 1 for everything else.

    UserError          the base; entry points catch it
      ConfigError      a setting is missing, mistyped or out of range (exit 2)
        DeviceError    a setting this process's device cannot take (each rank checks its own; exit 2)
          MachineError a device this machine lacks (no CUDA, too few GPUs, too little CPU memory)
      DataError        bad text, tokenizer or token cache
      CheckpointError  a checkpoint is missing, corrupt, or does not match the settings
      RunError         a run cannot start or go on (busy run folder, non-finite weights)
      StorageError     a file cannot be written (disk full, quota, read-only); the old one is intact
      RankError        under torchrun: another rank failed where this one waited for it, or this rank
                       met what rank 0 says for all (non-finite steps or weights) (no line)

Under torchrun every rank meets a bad setting alike, so rank 0 alone prints it (`reports`); a
DeviceError, which one rank may meet alone, is printed by each rank that meets it, a MachineError
by each machine's first process (LOCAL_RANK 0). (Other errors that every rank meets in a set-up
step, a corrupt checkpoint, are printed by rank 0 alone too, and a bad setting rank 0 did not meet,
by the lowest rank that met it, once for each distinct line: runtime.all_ranks_or_none.)

Importing this module makes a Ctrl-C that nothing catches one line, `<prog>: interrupted`, instead
of a traceback (the exit status stays a SIGINT's, 130): train.py, sample.py and the scripts/ that import
torch import it before torch, whose import takes seconds.

tolerant_consoles puts sys.stdout and sys.stderr in Consoles: a training run whose console goes away
trains on; quiet_stderr puts stderr alone in one, which drops a warning it cannot write (sample.py,
export_hf.py). signals_kept raises again a Ctrl-C lost in a garbage collector's callback (data.py's).
"""


import errno
import os
import select
import signal
import sys
import threading
from contextlib import contextmanager


class UserError(Exception):
    """`message; fix` on one line. `fix`, the advice, may be given apart: `problem` is then the line
    without it, for a caller that gives its own advice (a cache that is rebuilt rather than fixed).
    `alone`: this rank met it where rank 0 did not (runtime.all_ranks_or_none), and no lower rank
    met the same line, so it prints it."""
    exit_code = 1
    alone = False

    def __init__(self, message, fix: str | None = None):
        self.problem = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        self.fix = fix
        super().__init__(f"{self.problem}; {fix}" if fix else self.problem)


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


class MachineError(DeviceError):
    """A device this machine lacks (no CUDA, too few GPUs, too little CPU memory): the same for each
    process on it."""


class RankError(UserError):
    pass


def main_rank() -> bool:
    """False in a torchrun worker other than rank 0 (torchrun sets RANK and TORCHELASTIC_RUN_ID
    before any process group exists; a RANK alone, as some schedulers export, does not count)."""
    return os.environ.get("RANK", "0") == "0" or "TORCHELASTIC_RUN_ID" not in os.environ


def reports(e: UserError) -> bool:
    """Whether this process prints `e`: a bad setting (the same on every rank) on rank 0 alone, a
    RankError (the failing rank prints its own) nowhere, a MachineError on each machine's local rank
    0, anything else (a DeviceError too) on every rank that meets it."""
    if isinstance(e, RankError):
        return False
    if e.alone:  # (a bad setting rank 0 did not meet: a checkpoint that differs on another machine)
        return True
    if isinstance(e, MachineError):  # (a node of a job may lack what another has; a LOCAL_RANK without
        # torchrun, left in the shell or another launcher's, is no job's)
        return "TORCHELASTIC_RUN_ID" not in os.environ or os.environ.get("LOCAL_RANK", "0") == "0"
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
    devnull first, or what its buffer still holds fails again at exit. (config.Parser's --help too.)
    `e.done`, where the script set it, says what was done all the same ("the export in hf/ is whole")."""
    if not isinstance(e, BrokenPipeError):
        where = "somewhere with room" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "to a file"
        done = f" ({e.done})" if getattr(e, "done", None) else ""
        try:
            print(f"{prog}: error: cannot write to standard output ({e.strerror or e}); send the output "
                  f"{where}, or to a terminal{done}", file=sys.stderr)
        except OSError:  # stderr full too: the status says it (and not Python's 120 for a failed exit)
            drop_output(sys.stderr)
    drop_output()
    sys.exit(status or (141 if isinstance(e, BrokenPipeError) else 1))


class _Stdout:
    """sys.stdout while run_script runs a script: an OSError from a write or flush is marked as
    standard output's (`e.stdout`), as a print's error names no file to tell it from another's."""

    def __init__(self, stream):
        self.stream = stream
        self.failed = None  # an error a caller took (a Console: train.py trains on), said at the end

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


_LOST: list[BaseException] = []  # what a signal's handler raised inside signals_kept


@contextmanager
def signals_kept():
    """Python drops an exception raised inside a garbage collector's callback (it prints
    "Exception ignored in: <function WeakKeyDictionary...>" and goes on), and a Ctrl-C as
    tokenizing begins lands there: the run went on to train. Inside the block, what the SIGINT
    and SIGTERM handlers raise (SIGINT: KeyboardInterrupt; train.py's SIGTERM too) is recorded as it
    is raised; if it was lost, it is raised again at the next batch tokenized (data.py calls
    raise_lost_signal there), or at the block's end, or in place of an error that leaves the block
    after it (one a cut download raised), and Python's "Exception ignored" report of it
    (sys.unraisablehook) is left out."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    kept = {s: h for s, h in old.items() if callable(h)}
    if threading.current_thread() is not threading.main_thread():  # (handlers belong to the main one)
        kept = {}

    def handler(signum, frame):
        try:
            kept[signum](signum, frame)
        except BaseException as e:
            _LOST.append(e)
            raise
    def unraisable(report):  # a lost interrupt is raised again, not reported as a traceback
        if not any(report.exc_value is e for e in _LOST):
            hook(report)
    _LOST.clear()
    for s in kept:
        signal.signal(s, handler)
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    except BaseException as e:
        if _LOST and not isinstance(e, KeyboardInterrupt):  # (the user asked to stop: not exit 1)
            raise _LOST[0] from None
        raise
    finally:
        sys.unraisablehook = hook
        for s, h in kept.items():
            signal.signal(s, h)
        lost = list(_LOST)
        _LOST.clear()
    if lost:  # (reached only when no exception left the block: the one raised was lost)
        raise lost[0]


def raise_lost_signal():
    """Raise the first interrupt signals_kept recorded that is still pending (none: nothing)."""
    if _LOST:
        raise _LOST.pop(0)


def drop_output(stream=None):
    """A failed output stream (stdout by default) pointed at devnull (Python's advice), or what its
    buffer still holds fails again at exit."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, (stream or sys.stdout).fileno())
        os.close(null)
    except (AttributeError, ValueError, OSError):  # no file behind it (an io.StringIO): nothing to fail
        pass


class Console:
    """sys.stdout or sys.stderr while train.py runs: a run does not die because its console went
    away (`train.py | head`, a log file on a full disk, 2>/dev/full). At the first failed write the
    stream is dropped, with one line on the other one if that still works, and the run trains on
    (metrics.jsonl and the checkpoints carry on); its descriptor then points at /dev/null, so that
    the flush at exit does not fail on what the stream still holds."""

    def __init__(self, stream, name: str, prog: str, warn: bool = True):
        self.lost = stream is None  # (closed before the start: `>&-`)
        self.stream = open(os.devnull, "w") if stream is None else stream
        self.name, self.prog, self.warn, self.other = name, prog, warn, None

    def write(self, text: str) -> int:
        written = self.guard(self.stream.write, text)
        return len(text) if written is None else written

    def flush(self) -> None:
        self.guard(self.stream.flush)

    def guard(self, call, *args):
        if self.lost:
            return None
        try:
            return call(*args)
        except OSError as e:
            self.lost = True
            drop_output(self.stream)
            if getattr(e, "stdout", False):  # run_script's (compare.py runs train.main): said at its end
                self.stream.failed = e
            if self.other is not None and self.warn:
                self.other.write(f"{self.prog}: warning: cannot write to {self.name} ({e.strerror or e}); "
                                 "going on without it (metrics.jsonl and the checkpoints carry on)\n")
                self.other.flush()
            return None

    def __getattr__(self, name):  # isatty, encoding, fileno, ...
        return getattr(self.stream, name)


def tolerant_consoles(prog: str, warn: bool = True):
    """sys.stdout and sys.stderr as Consoles until the returned function puts the old ones back
    (warn: the line that a lost one is gone without, not for --eval_only, which fails instead)."""
    old = sys.stdout, sys.stderr
    out = Console(sys.stdout, "standard output", prog, warn)
    err = Console(sys.stderr, "standard error", prog, warn)
    out.other, err.other = err, out
    sys.stdout, sys.stderr = out, err

    def restore():
        for stream in (out, err):  # what a stream still holds meets its closed pipe here, not at exit
            stream.flush()
        sys.stdout, sys.stderr = old
    return restore


def quiet_stderr():
    """sys.stderr as a Console that drops, with no word, what it cannot take, until the returned function
    puts the old one back: a warning to a full stderr (2>/dev/full) does not stop sample.py's story or
    export_hf.py's export, and one to a closed stderr (2>&-, where sys.stderr is None and print's
    file=None means stdout) does not land in the story. The exit status still says a failure."""
    old = sys.stderr
    sys.stderr = Console(old, "standard error", "", warn=False)

    def restore():
        sys.stderr.flush()  # (what it still holds meets its end here, dropped if it fails)
        sys.stderr = old
    return restore


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
    if main_rank() and sys.stderr is not None:  # (None: stderr closed; print would put it in stdout)
        print(f"\n{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)


_excepthook, sys.excepthook = sys.excepthook, _interrupted


def first_line(e: BaseException) -> str:
    """`Type: first line of the message` of a foreign exception, for a one-line report."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
