"""Files that must never be half-written or overwritten by accident: atomic replacement, JSON,
JSON Lines logs, folder locks, and where the scripts may write their results.

    atomic_write(path, data)   replace a file all at once (bytes, or a function that writes them)
    save_json(path, obj)       atomic_write of indented, key-sorted JSON
    append_jsonl(path, record) add one line to a log
    numbered_jsonl(path)       the log's records, each with its line number (for errors that name it),
                               a torn last line dropped with a warning
    writable_folder(path)      mkdir -p, and a file made and removed there: an output folder, checked
                               before the work
    lock(path)                 an exclusive lock held while a file stays open (one process per folder)
    RunFolder(path)            a run's folder, made and locked by the one train.py that holds it
    run_folder_files(folder)   the files that make a folder a run's (its run.lock beside others, or
                               alone), [] where it is none (checkpoint.run_folders also takes a
                               folder holding a checkpoint: a run copied without its run.lock)
    os_error_in, refused_in    the OSError behind a wrapped failure; whether it is a write refused in a folder
    results_path(parser, ...)  where a script writes results: never over the README's figures by accident
                               (results_file: one file, its folder checked to take it before the work)
    special_kind, not_an_image, not_a_file_to_write, not_a_result   what an output may not be written
                               over: a device or FIFO (atomic_write refuses it), a run's own file, a
                               folder, a file that is not an earlier result of the same benchmark
    too_long(option, path)     a name in a path past the 255 bytes a file system takes (a line, not
                               errno 36's traceback)
    not_utf8_name(option, path)  a folder pyarrow cannot open: its name on disk is not the UTF-8 of
                               the one Python holds (a Latin-1 or C locale, a name in other bytes)
    expand_home(path)          a path typed with a ~ the shell left (quoted), its home folder put in
    fork_call / child_end      work done by a forked child process that ignores Ctrl-C, and its end

How this departs from the obvious version:
- A crash at any moment leaves either the old file or the new one, never a mix: the data goes to
  a temporary file beside the target, is flushed and fsync'ed, renamed over the target, and the
  folder is fsync'ed so the rename itself survives a power cut. Temporary files are named
  `.tmp-*`, so a run folder (and a cache's shard folder: data.py) can sweep the ones a killed
  process left behind.
- A write that fails for want of space (or quota, or a read-only disk) is a StorageError naming
  the file, the reason and the fix, one line, with the old file intact and no temporary left.
  torch.save reports such a failure as "RuntimeError: ... unexpected pos ..."; the OSError that
  caused it is found in the exception's context and reported instead. A KeyboardInterrupt that
  torch turned into the same RuntimeError is raised again as what it was.
- The new file gets the permissions an ordinary `open(path, "w")` would give it (0666 less the
  umask), not the 0600 of the temporary file, so a shared run folder stays readable.
- A log line is written with one `write` call; a disk that fills (or a `ulimit -f` reached)
  during it is one line, and the part written is cut off again (a log its first line would have
  made is removed, as atomic_write leaves no file); a process killed during it leaves at most one
  torn line, at the end, which `numbered_jsonl` drops and reports instead of failing on it for
  ever after.
- Locks are `flock`s on a file that is never deleted while in use (but by its holder, as it lets
  go of a run.lock it made beside none of a run's files: RunFolder.release, or of one an import
  made: checkpoint.import_hf, or of a lock file it made on a full disk, but a cache's, held empty
  instead; one who locked the file it unlinked locks the new one instead): the kernel releases one
  when its process dies, so a lock file left by a crash (or `kill -9`) blocks nothing.
"""

import contextlib
import errno
import json
import os
import re
import signal
import socket
import stat
import sys
import tempfile
import time
import warnings
from pathlib import Path

from errors import RunError, StorageError, first_line

REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EROFS: "the disk is read-only",
           errno.EFBIG: "the file is over this process's (ulimit -f) or the file system's size limit"}
DEFAULT_FIX = "write somewhere else"
OUT_FIX = "pick another --out_dir"  # where a write in a run folder fails
SPACE = (errno.ENOSPC, errno.EDQUOT)  # what freeing space helps
NO_ROOM = (*SPACE, errno.EFBIG)  # a write that failed for want of room (or past `ulimit -f`): named as
# such, not put down to the file read or the path


def advice(cause: OSError, fix: str | None) -> str:
    """The fix for a failed write: `fix` (where else to write), after "free some space" when the
    disk or the quota is full, or "raise ulimit -f" past a size limit (where else to write helps
    only when the limit is the file system's)."""
    first = ""
    if cause.errno in SPACE:
        first = "free some space or "
    elif cause.errno == errno.EFBIG:
        first = "raise the limit (ulimit -f unlimited) or "
    return first + (fix or DEFAULT_FIX)


def os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind an exception (`datasets` and pyarrow wrap it in their own), or None."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def refused_in(cause: OSError, folder) -> bool:
    """Whether an OSError is a write refused in `folder`: a read-only disk (nothing is written
    elsewhere), or no permission for a file in it or for a folder on the way to it (a file elsewhere
    not readable is another matter)."""
    if cause.errno == errno.EROFS:
        return True
    if cause.errno != errno.EACCES:
        return False
    if cause.filename is None:
        return True
    path, folder = Path(os.fsdecode(cause.filename)).resolve(), Path(folder).resolve()
    return path.is_relative_to(folder) or folder.is_relative_to(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path, e: BaseException, fix: str | None = None, intact: bool = False) -> BaseException:
    """What to raise for a write to `path` that failed with `e`: a StorageError when the cause is
    an OSError (found through the exception's context: torch.save wraps it in a RuntimeError), the
    KeyboardInterrupt itself when that was the cause, else `e` unchanged (a bug, not the disk)."""
    cause = e
    while cause is not None and not isinstance(cause, (OSError, KeyboardInterrupt)):
        cause = cause.__cause__ or cause.__context__ if isinstance(cause, RuntimeError) else None
    if isinstance(cause, KeyboardInterrupt):
        return cause
    if not isinstance(cause, OSError):
        return e
    reason = REASONS.get(cause.errno) or cause.strerror or str(cause)
    detail = f" ({cause.strerror})" if cause.errno in REASONS and cause.strerror else ""
    kept = "; the previous file is intact" if intact else ""
    return StorageError(f"cannot write {path}: {reason}{detail}{kept}; {advice(cause, fix)}")


@contextlib.contextmanager
def signals_put_off():
    """SIGINT and SIGTERM noted, not acted on, until the block ends, then raised again: for a short
    series of renames that must not stop half way. Not pthread_sigmask: it holds back the main
    thread's signals only, and one of torch's worker threads would take a Ctrl-C instead. (A no-op
    off the main thread, where Python cannot set handlers.)"""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    kept = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
            for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in kept.items():
            signal.signal(s, handler)
        for s in caught:
            signal.raise_signal(s)


# what matplotlib writes (Figure.savefig's formats); a plot named otherwise is written as PNG
IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".eps", ".ps", ".pgf",
                  ".svgz", ".raw", ".rgba", ".gif", ".avif")
RUN_FILES = ("last.pt", "best.pt", "model.json", "train.json", "tokenizer.json", "metrics.jsonl", "run.lock",
             "wandb_unfinished.txt")  # what train.py keeps in a run folder


def run_files(folder, but=()) -> list[str]:
    """The RUN_FILES in `folder`, by their names alone (what a write there would replace: a run's
    files are refused as an export's or a GPU check's output; run_folder_files tells a run's folder),
    leaving out `but`: an export's folder holds a tokenizer.json too, a GPU check's a train.json."""
    return [name for name in RUN_FILES if name not in but and (Path(folder) / name).is_file()]


def run_folder_files(folder) -> list[str]:
    """The files that make `folder` a training run's, [] where it is none: its run.lock (train.py's
    first file there, made by nothing else) beside other RUN_FILES, or alone (a run killed before it
    wrote another; hidden files aside). Not by names alone: a run.lock an older version left in a
    folder of text, a train.json of the user's (their records) or of gpu_check.py's results make
    none. What --data leaves out (sources.project_folder), what a folder of runs lists and --resume
    and --ckpt take for a run (checkpoint.run_folders, find_checkpoint; they also take a folder
    holding a checkpoint, a run copied without its run.lock), and a run that has logged nothing yet
    (runlog) all ask this."""
    found = run_files(folder)
    if RunFolder.LOCK not in found:
        return []
    try:
        alone = all(p.name in found or p.name.startswith(".") for p in Path(folder).iterdir())
    except OSError:  # (unreadable: known by its files alone)
        alone = False
    return found if len(found) > 1 or alone else []


def not_an_image(option: str, path: str, folder=".", example: str = "loss.png") -> str | None:
    """Why a plot may not be written at `path` (relative to `folder`), or None: a name that is no
    image's and is one of a run folder's files, or a file already there that is not a PNG (--plot
    metrics.jsonl, train.json or last.pt replaced that file of the run with a PNG; a PNG there is
    this plot from before, at --resume), a device, named pipe or socket (special_kind), a folder, or
    a new name whose suffix is no image format's (matplotlib takes the format from the name: --plot
    model.pt was a PNG of that name). A name without a suffix is written as a PNG."""
    suffix, target = Path(path).suffix.lower(), Path(folder) / path
    if not suffix[1:].isalpha():  # (loss-0.1, lr3e-4_wd0.1: a name of numbers, no format's suffix)
        suffix = ""
    if path and (problem := too_long(option, target)):  # (is_dir raised on it: a traceback)
        return problem
    if path and (problem := special_file(option, target)):  # (--plot /dev/null: root lost the device)
        return problem
    if path and (target.is_dir() or path.endswith(os.sep)):  # (it warned at every evaluation, or wrote
        # a file of the folder's name)
        what = "is a folder" if target.is_dir() else "names a folder (it ends in a slash)"
        return f"{option} {path} {what}; name the image file, e.g. {option} {Path(path) / example}"
    if not path or suffix in IMAGE_SUFFIXES:  # ("": no plot)
        return None
    if Path(path).name not in RUN_FILES:
        try:
            if not target.is_file():  # (written as a PNG where the name has no suffix)
                return None if not suffix else (
                    f"{option} {path}: matplotlib writes no {suffix} file, and the format comes from the "
                    "name; name a .png, .svg or .pdf file")
            with open(target, "rb") as f:  # (a PNG there: this plot from before)
                if f.read(8) == b"\x89PNG\r\n\x1a\n":
                    return None
        except OSError:  # (unreadable: writing it fails later, in a line of its own)
            return None
    return (f"{option} {path}: the plot would replace that file with an image; name a .png, .svg or "
            ".pdf file")


def make_folder(path, fix: str | None = None) -> Path:
    """mkdir -p, with a failure (a file in the way, no permission, a full disk, a name too long) a
    StorageError, and the parents it made before failing removed again."""
    made = missing_folder(path)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_made(path, made)  # (--out NEW/<a name too long>: NEW was left behind, empty)
        why = no_folder(path, e)
        raise StorageError(f"cannot create the folder {path}: {why}; {advice(e, fix)}") from None
    return Path(path)


def missing_folder(path) -> Path | None:
    """The outermost of `path` and its parents that does not exist: the first folder make_folder would
    make (None where `path` is there)."""
    path = Path(path)  # (os.path.exists: Path.exists raises for a name too long, which is not there)
    return next((p for p in reversed([path, *path.parents]) if not os.path.exists(p)), None)


def remove_made(path, made: Path | None) -> None:
    """Remove `path` and its parents up to `made` (missing_folder's answer before they were made), while
    they are empty: what a failed write leaves of the folders it made. None: nothing was made."""
    if made is None:
        return
    for folder in [Path(path), *Path(path).parents]:
        try:
            folder.rmdir()
        except OSError as e:  # (not there: mkdir failed below the folders it made, a name too long)
            if e.errno not in (errno.ENOENT, errno.ENAMETOOLONG):  # not empty: someone put a file there
                return
        if folder == made:
            return


def no_folder(path, e: OSError) -> str:
    """Why mkdir -p `path` failed, in words: the file in the way, or the folder that takes no new ones."""
    why = e.strerror or e
    if isinstance(e, (FileExistsError, NotADirectoryError)):  # ("File exists" of what?)
        blocker = next((p for p in [Path(path), *Path(path).parents] if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else why
    elif isinstance(e, FileNotFoundError):  # (parents=True: /proc says so of a folder it will not make)
        holder = next((p for p in Path(path).parents if p.is_dir()), None)
        why = f"{holder} takes no new folders" if holder is not None else why
    return str(why)


def writable_folder(path, fix: str | None = None) -> Path:
    """make_folder, then a file made and removed in it: a folder that takes no new file (/proc, /sys,
    a read-only disk, no permission) is a StorageError before the work, not after minutes of it, and
    the folders made for it are removed again (a refused --out was left behind, empty)."""
    made = missing_folder(path)
    path = make_folder(path, fix)
    try:
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".tmp-")
        os.close(fd)
        os.remove(tmp)
    except OSError as e:  # (/proc says ENOENT of a folder that is there)
        remove_made(path, made)
        why = "it takes no new files" if e.errno == errno.ENOENT else REASONS.get(e.errno) or e.strerror or e
        raise StorageError(f"cannot write in the folder {path}: {why}; {advice(e, fix)}") from None
    return path


SPECIAL_FILES = [(stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                 (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket")]


NAME_MAX = 255  # bytes in one file or folder name (Linux's and macOS's file systems)


def too_long(option: str, path) -> str | None:
    """Why `path` cannot name a file, or None: a name in it longer than NAME_MAX bytes (pathlib's
    exists() and is_dir() raise on it, errno 36, where a missing file is False: a traceback)."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            short = part if len(part) <= 40 else part[:20] + "..." + part[-10:]
            return (f"{option} names {short}, {len(os.fsencode(part))} bytes long; a file or folder name "
                    f"takes at most {NAME_MAX}: use a shorter one")
    return None


def not_utf8_name(option: str, path) -> str | None:
    """Why pyarrow (the datasets cache's reader) cannot open files under `path`, or None. pyarrow
    opens a path by the UTF-8 of the name Python holds, and Python names a file by the locale's
    encoding: under a Latin-1 locale a non-ASCII name is other bytes (its files "not found", a
    cache said damaged), under C without UTF-8 mode a lone surrogate (a UnicodeEncodeError's
    traceback), and in any locale a name whose bytes are not UTF-8 has no UTF-8 at all. A name of
    characters the locale's encoding lacks (one a checkpoint saved under a UTF-8 locale) is refused too."""
    full = os.path.abspath(path)
    try:
        if full.encode("utf-8") == full.encode(sys.getfilesystemencoding(), "surrogateescape"):
            return None
    except UnicodeEncodeError:
        pass
    where = "" if os.path.isabs(path) else f" (it is {full!r})"
    if sys.getfilesystemencoding().replace("-", "").lower() == "utf8":
        return (f"{option} {path!r}{where} is not a UTF-8 name, and pyarrow (which reads the datasets "
                f"cache of local text) opens only UTF-8 ones; pick a {option} in plain ASCII")
    return (f"{option} {path!r}{where} is not plain ASCII, and file names here are "
            f"{sys.getfilesystemencoding()} (the locale's), where pyarrow (which reads the datasets cache "
            f"of local text) opens UTF-8 ones; run with LC_ALL=C.UTF-8, or pick a {option} in plain ASCII")


def expand_home(path: str) -> str:
    """`path` with its leading ~ or ~user made the home folder, where the shell left it (a quoted
    '~/corpus/*.txt': "no such file '~/x.txt'"); a folder named ~ in the working directory is read
    as typed (a path that exists is)."""
    head = path.split(os.sep, 1)[0]
    return os.path.expanduser(path) if head.startswith("~") and not os.path.lexists(head) else path


def special_kind(path) -> str | None:
    """What `path` is when it is a device, named pipe or socket ("a character device"), or None (a
    file, a folder, nothing there, or a name the OS cannot take). Writing there atomically (a new
    file renamed over the name) would replace it: `--out /dev/null` run as root replaced /dev/null
    with a PNG. atomic_write refuses it; the scripts' --out and train.py's --plot, before any work."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((what for test, what in SPECIAL_FILES if test(mode)), None)


def special_file(option: str, path) -> str | None:
    """The one-line error for `option` naming a device, named pipe or socket (special_kind), or None."""
    if kind := special_kind(path):
        return (f"{option} {path} is {kind}, not a file: what is written there replaces it; name a "
                "file to write")
    return None


def not_a_file_to_write(option: str, path: str | None, example: str) -> str | None:
    """Why a script's output file may not be written at `path`, or None, said before any work (the
    write came after minutes of benchmark): empty (an unset variable: "cannot write .: Device or
    resource busy"), a folder ("the previous file is intact"), or a special file. (A folder that
    cannot be made for it is make_folder's line, also before the work.) None: no such option given."""
    if path is None:
        return None
    if not path:
        return f"{option} is empty; name the file to write, e.g. {option} {example}"
    if os.path.isdir(path):
        return (f"{option} {path} is a folder; name the file to write, e.g. "
                f"{option} {os.path.join(path, example)}")
    return special_file(option, path)


RESULT_MAX_BYTES = 1 << 26  # a benchmark's JSON is kilobytes: a bigger file is something else (not read)


def not_a_result(option: str, path: str | None, example: str, keys: tuple[str, ...],
                 foreign: tuple[str, ...] = ()) -> str | None:
    """Why a benchmark's JSON may not be written at `path`, or None, said before any work: what
    not_a_file_to_write refuses, a name that is no .json file's, or a file already there that is
    not an earlier result of the same benchmark (a JSON object holding all of `keys`, or gpu_check.py's
    stand-in for one, {"not_measured": ...}): `--out RUN/last.pt` replaced a checkpoint with JSON,
    `--out RUN/train.json` a run's settings. An earlier result (the README's figure, a rerun) and an
    empty file (mktemp's) may be replaced; a file holding any of `foreign` is another benchmark's (one
    whose keys include all of these). None: no such option given."""
    if path is None:
        return None
    if problem := not_a_file_to_write(option, path, example):
        return problem
    instead = f"name a new .json file, e.g. {option} {example}"  # (not beside it: a run's folder, img/)
    if Path(path).suffix.lower() != ".json":
        return f"{option} {path}: the results are JSON; {instead}"
    doc = None
    try:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:  # (nothing there to lose)
            return None
        if os.path.getsize(path) <= RESULT_MAX_BYTES:
            with open(path, "rb") as f:
                doc = json.load(f)
    except (OSError, ValueError):  # (unreadable, or not JSON: refused as something else)
        pass
    ours = set(keys) <= doc.keys() and not set(foreign) & doc.keys() if isinstance(doc, dict) else False
    if ours or (isinstance(doc, dict) and "not_measured" in doc):
        return None
    return (f"{option} {path} is not an earlier result of this benchmark, and the results would replace "
            f"it; {instead}")


def foreign_results(option: str, folder, files: dict, prog: str, fix: str) -> str | None:
    """Why a script may not write its results in `folder`, or None, said before its runs: the
    foreign_files there. compare.py and sweep.py replaced a user's notes in compare.md, or another
    benchmark's JSON, after their runs."""
    theirs = foreign_files(option, folder, files)
    if not theirs:
        return None
    said, it = not_earlier_results(theirs, prog)
    return f"{option} {folder}: {said}, and the results would replace {it}; {fix}, or move {it} away"


def foreign_files(option: str, folder, files: dict) -> list[str]:
    """The names of `files` (name -> the keys its JSON holds, or the bytes its markdown begins with, or a
    list of such starts) that stand in `folder` as no earlier result of the script writing them (empty
    files and new names are fine), or as a folder or special file."""
    theirs = []
    for name, ours in files.items():
        path = os.path.join(folder, name)
        if isinstance(ours, tuple):
            theirs += [name] if not_a_result(option, path, name, ours) else []
            continue
        try:
            bad = not_a_file_to_write(option, path, name) or (
                os.path.isfile(path) and os.path.getsize(path) > 0 and not _begins(path, ours))
        except OSError:  # (unreadable: its write fails later, in a line of its own)
            bad = False
        theirs += [name] if bad else []
    return theirs


def not_earlier_results(names: list[str], prog: str) -> tuple[str, str]:
    """("a and b there are not earlier results of prog", "them"): how the refusals name such files."""
    is_, it = ("is not an earlier result", "it") if len(names) == 1 else ("are not earlier results", "them")
    return f"{' and '.join(names)} there {is_} of {prog}", it


def results_option(results, out, fallback) -> str:
    """The option that chose a results folder, as a refusal names it: --out where one was given, the
    script's --out_dir (`fallback`) where the results go there, else the defaults' folder (img/)."""
    if out is not None:
        return "--out"
    return "--out_dir" if Path(results) == Path(fallback) else "the results folder"


def _begins(path: str, start: bytes | list[bytes]) -> bool:
    starts = tuple(start) if isinstance(start, list) else (start,)
    with open(path, "rb") as f:
        return f.read(max(map(len, starts))).startswith(starts)


def atomic_write(path, data, fix: str | None = None) -> None:
    """Replace `path` with `data` (bytes, or a function writing to a binary file) so that a crash
    at any moment leaves either the old file or the new one, never a mix. A failed write raises
    StorageError (see write_error; `fix` is the advice it ends with)."""
    path = os.fspath(path)
    if kind := special_kind(path):  # (os.replace would put a file in its place)
        raise StorageError(f"cannot write {path}: it is {kind}, which a file written there would replace; "
                           f"{fix or DEFAULT_FIX}")
    folder = os.path.dirname(path) or "."
    existed, replaced = os.path.exists(path), False
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        replaced = True
        sync_folder(folder)  # make the rename itself durable
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        mapped = write_error(path, e, fix, intact=existed and not replaced)  # (replaced: the new one is)
        if mapped is e:
            raise
        raise mapped from None


def sync_folder(folder) -> None:
    """fsync a folder: the renames into it made durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_json(path, obj, fix: str | None = None, sort_keys: bool = True) -> None:
    """Write JSON atomically (see atomic_write); sort_keys=False keeps the dicts' order."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode(), fix)


def results_path(parser, opts, figure: Path, ignore=(), extra=(), fallback=None) -> Path | None:
    """Where a script writes its results: --out when given; else `figure` (a file or folder the
    README quotes) only for a run with every option at its default (those in `ignore` aside, such
    as a --device the figure's name already follows) and no `extra` options passed through, so
    that a quick run or another shape never replaces it; else `fallback` (None: nowhere), and a
    line on stderr says so. An option typed with its default value counts as left at its default.
    An empty --out (an unset shell variable, which was the current folder) is a one-line error."""
    if opts.out == "":
        parser.error("--out is empty (an unset variable?); name where to write the results, or leave --out "
                     "out for its default")
    if opts.out is not None:
        return Path(opts.out)
    defaults = vars(parser.parse_args([]))
    changed = [k for k, v in vars(opts).items() if k != "out" and k not in ignore and defaults.get(k) != v]
    changed += [w for w in extra if w.startswith("-")]
    if not changed:
        return figure
    flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    instead = f"they go to {fallback}" if fallback is not None else "pass --out FILE to keep them"
    print(f"{parser.prog}: the results are not written to {figure}, which holds the README's run "
          f"(this one sets {flags.get(changed[0], changed[0])}); {instead}", file=sys.stderr)
    return fallback


def results_file(parser, opts, figure: Path, **kw) -> Path | None:
    """results_path for a script that writes one file, with its folder made and checked to take a
    file before the work (a folder that takes none, /sys, was found after minutes of it)."""
    out = results_path(parser, opts, figure, **kw)
    if out is not None:
        writable_folder(out.parent, "pick another --out")
    return out


def results_fix(results: Path, fallback) -> str:
    """The advice where results_path's folder cannot be made: the option that chose it (`fallback`,
    the script's --out_dir, when no --out was given)."""
    return "pick another --out_dir (or a --out)" if Path(results) == Path(fallback) else "pick another --out"


def append_jsonl(path, record: dict, fix: str | None = None) -> None:
    """Append one JSON line, in one write call. A failed write (a full disk, `ulimit -f`) raises
    StorageError, and the part of the line it wrote is cut off again: the log is as it was (a log
    this call made is removed: an empty metrics.jsonl was taken for a run's log by plot_runs)."""
    line = (json.dumps(record) + "\n").encode()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    try:
        try:  # (made here, known by the open itself: a log another process made meanwhile stays)
            fd, made = os.open(path, flags | os.O_EXCL, 0o666), True
        except FileExistsError:
            fd, made = os.open(path, flags, 0o666), False
    except OSError as e:
        raise write_error(path, e, fix) from None
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        while line:  # (one call, unless the disk took only part of it: the next then fails)
            line = line[os.write(fd, line):]
    except OSError as e:
        if made:
            with contextlib.suppress(OSError):  # (the file stays empty where it cannot go)
                os.unlink(path)
        os.ftruncate(fd, end)
        raise write_error(path, e, fix, intact=end > 0) from None
    finally:
        os.close(fd)


def numbered_jsonl(path, warn=None, fix=None) -> list[tuple[int, dict]]:
    """The records of a JSON Lines file, each with its line number (from 1) in the file, for an
    error about a record to name its line (and advise `fix`: by default, to fix or delete that
    line). A last line that is not valid JSON and was cut short (a crash or a full disk during the
    write: no newline after it, or the start of a record, `{`, whose newline an editor added on
    saving) is dropped, and `warn` is told; a bad line elsewhere, a complete one (`hello` and its
    newline), or JSON that is not a record (an edit: no write cut short leaves one), is an error
    (ValueError naming the file and the line)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records = []
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record, torn = json.loads(line), False
        except ValueError:
            record, torn = None, True
        # cut short: no newline after it, or a record's start (an editor added the newline); no prefix of
        # {...} is JSON, and a null is an edit
        cut_short = i == len(lines) - 1 or line.lstrip().startswith("{")
        if torn and i == last and cut_short:
            if warn is not None:
                warn(f"{path}: dropped a torn last line (line {i + 1}, {len(line)} characters), "
                     "left by a write that was cut short")
            continue
        if not isinstance(record, dict):  # (valid JSON that is not a record: a log's reader would trip on it)
            fix = fix or "fix or delete that line"
            raise ValueError(f"{path}: line {i + 1} is not a JSON record; {fix}") from None
        records.append((i + 1, record))
    return records


# ---------------------------------------------------------------------------------------------
# Work in a child process


def fork_call(work) -> tuple[int, int] | None:
    """Run work() in a forked child process (Linux: train.py's checkpoints and plot, written while
    training goes on) that ignores SIGINT and SIGTERM (sent to a whole process group by Ctrl-C and
    torchrun: the parent decides what they stop): (its pid, the read end of a pipe that gets the text
    work() returns, or its failure's: a StorageError's line, another's first line), or None where no
    child could be forked (memory, a process limit). The child ends with os._exit: no atexit work,
    no buffers of the parent's flushed twice."""
    read, write = os.pipe()
    stopping = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)  # (none lands before the child ignores it)
    try:
        with warnings.catch_warnings():  # (Python 3.12: a fork by a process with threads, which ours has)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return None
    if pid == 0:  # the child: never returns
        status = 1
        try:
            for s in stopping:
                signal.signal(s, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read)
            said = work()
            _write_all(write, said or "")
            status = 0
        except BaseException as e:
            with contextlib.suppress(BaseException):
                _write_all(write, str(e) if isinstance(e, StorageError) else first_line(e))
        finally:
            os._exit(status)
    os.close(write)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return pid, read


def _write_all(fd: int, text: str) -> None:
    data = text.encode(errors="replace")
    while data:
        data = data[os.write(fd, data):]


def child_end(pid: int, read: int) -> tuple[str | None, str]:
    """Wait for fork_call's child: (None where it succeeded, else how it ended: "killed by SIGKILL",
    "status 1"), and the text it sent."""
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}", text
    return (None if os.WEXITSTATUS(status) == 0 else f"status {os.WEXITSTATUS(status)}"), text


def running(pid: int) -> bool:
    """Whether fork_call's child `pid` has not ended yet (it is not reaped here: child_end does)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


# ---------------------------------------------------------------------------------------------
# Locks


class Busy(Exception):
    """Another process holds the lock; `holder` says who (as it wrote into the lock file)."""

    def __init__(self, path, holder: str):
        super().__init__(f"{path} is locked by {holder}")
        self.holder = holder


def held(path) -> bool:
    """Whether another process holds the lock `lock` takes on `path` (probed with a shared flock,
    let go at once; a missing file is created, as `lock` would)."""
    import fcntl
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def lock(path, wait: bool = False, who: str = "", full_ok: bool = False):
    """Take an exclusive flock on `path` (created if need be) and return the open file: the lock
    lasts until the file is closed or the process ends. The file then says who holds it ("pid N on
    HOST since TIME", after `who`: IMPORTING, an import's). With wait=False a lock held elsewhere
    raises Busy at once; with wait=True this waits for it. The file is never deleted while in use
    (but by its holder, as it lets it go: RunFolder.release, checkpoint.import_hf, or as a file it
    made cannot take its line: a full disk), so that two processes always lock the same file; a file
    its holder unlinked after this opened it is let go, and the one at `path` now is locked instead.
    With full_ok (a cache's build lock: data._building, and its sweep's: data._sweep_temporaries), a
    disk with no room for the line leaves the file empty and held (Busy names its holder "another
    process"): a cache hit needs no room, and a build fails at its first write as it would have here."""
    import fcntl  # POSIX only, as is the rest of the training stack
    while True:
        try:  # (made here, or not, as the open found it: another process may make it after a check)
            f, made = open(path, "x+"), True
        except FileExistsError:
            f, made = open(path, "a+"), False
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise Busy(path, holder) from None
            if same_file(f, path):
                line = (f"{who}pid {os.getpid()} on {socket.gethostname()} since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode()
                try:  # (unbuffered: a line the disk refused is not flushed again, and refused, at close)
                    os.ftruncate(f.fileno(), 0)
                    while line:
                        line = line[os.write(f.fileno(), line):]
                except OSError as e:  # (a full disk) a file made here goes, unlinked while still locked
                    if not (full_ok and e.errno in NO_ROOM):
                        if made:
                            os.unlink(path)
                        raise
                    os.ftruncate(f.fileno(), 0)  # (the part written, if any: shrinking takes no room)
                f.made = made  # (RunFolder: a run.lock made by this run goes if it wrote nothing)
                return f
        except BaseException:
            f.close()
            raise
        f.close()  # (unlinked by its holder as it let go: two processes would each hold a lock)


def same_file(f, path) -> bool:
    """Whether the open file `f` is the file at `path` now (not one unlinked, or replaced, since)."""
    try:
        here, there = os.fstat(f.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def ended(holder: str) -> bool:
    """Whether a lock's holder, as `lock` wrote it ("pid N on HOST since TIME"), is a process of this
    machine that has ended (the lock then held by a child process it forked, fork_call's)."""
    found = re.search(r"pid (\d+) on (\S+) since", holder)
    if found is None or found[2] != socket.gethostname():
        return False
    try:
        os.kill(int(found[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # (another user's: alive)
        pass
    return False


IMPORTING = "export_hf.py --import, "  # how an import's run.lock begins (checkpoint.import_hf)


class RunFolder:
    """The run folder, held by this process (rank 0) from before anything is written until the run
    ends: created if need be, locked (run.lock, an flock the kernel drops if the process dies), and
    swept of the temporaries a killed save left. A second train.py on the folder stops with a line
    naming the first (an import writing there holds it too: checkpoint.import_hf, named as such). A
    run.lock this run made goes when it ends having written none of a run's other files (RUN_FILES)
    there: a run that failed early in a folder of the user's (--out_dir D --run R, R their folder of
    text) left it looking like a run folder (sources.project_folder, checkpoint.run_folders); one
    there before (a previous run's) stays. The folders this run created (a new --out_dir too) and
    left empty are removed."""

    LOCK = "run.lock"

    def __init__(self, path: Path):
        self.path, self.lock = path, None
        # the outermost folder mkdir makes: a new --out_dir was left behind, empty, by a run that failed
        self.made = missing_folder(path)
        self.created = self.made is not None
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.lock = lock(path / self.LOCK)
        except Busy as e:  # (an import takes it while it writes there: checkpoint.import_hf)
            if ended(e.holder):  # (train.py killed: its fork_call children hold the lock they inherited)
                raise RunError(f"{path} is held by a child process of a train.py that has ended "
                               f"({e.holder}): it still writes a checkpoint or plot that train.py began; "
                               "wait for it to end (seconds), or pick another --run") from None
            by = "an import" if e.holder.startswith(IMPORTING) else "another train.py"
            raise RunError(f"{path} is in use by {by} ({e.holder}); wait for it to end or stop "
                           "it, or pick another --run") from None
        except OSError as e:
            if self.created:  # folders made here a moment ago and left empty go
                self.remove_made()
            why = REASONS.get(e.errno) or no_folder(path, e)
            fix = advice(e, "pick another --out_dir or --run")  # (a full disk: free some space, too)
            raise RunError(f"cannot write to {path} ({why}); {fix}") from None
        self.found = self._file_stamps()  # (a folder of the user's may hold a tokenizer.json of its own)
        for stale in path.glob(".tmp-*"):  # left by a save that was killed; the real files are intact
            if not stale.is_dir():  # (a killed export's staging folder: the next export's to sweep)
                stale.unlink(missing_ok=True)

    def _file_stamps(self) -> dict:
        """The run's files in the folder but run.lock, each with what tells a file written since."""
        found = {}
        for name in run_files(self.path, but=(self.LOCK,)):
            with contextlib.suppress(OSError):  # (gone meanwhile)
                st = (self.path / name).stat()
                found[name] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return found

    def remove_made(self) -> None:
        """Remove the folders __init__ made, from the run folder up, while they are empty."""
        remove_made(self.path, self.made)

    def release(self) -> None:
        if self.lock is None:
            return
        try:
            ours = self.lock.made and same_file(self.lock, self.path / self.LOCK)  # (not a previous run's)
            if ours and self._file_stamps() == self.found:  # (the run wrote none of its files here)
                # unlinked while still locked: no one else can hold it (lock takes the file there instead)
                with contextlib.suppress(OSError):  # (a folder made read-only meanwhile: the lock stays)
                    (self.path / self.LOCK).unlink()
        finally:
            self.lock.close()
            self.lock = None
        if self.created:
            self.remove_made()
