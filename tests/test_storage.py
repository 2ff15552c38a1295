"""storage.py: atomic writes (permissions, a full disk), JSON Lines with a torn last line, locks."""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
import torch
from conftest import ROOT, small_filesystem

import checkpoint
import config
import sources
import storage
from errors import StorageError


def records(path, warn=None) -> list[dict]:
    """A JSON Lines file's records, as storage.numbered_jsonl reads them, without their line numbers."""
    return [record for _, record in storage.numbered_jsonl(path, warn)]


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_an_ordinary_write_would(tmp_path, mask, mode):
    with umask(mask):
        storage.atomic_write(tmp_path / "a.pt", b"new")
        storage.save_json(tmp_path / "b.json", {"x": 1})
    for name in ("a.pt", "b.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode  # not the temporary file's 0600


class FullAfter:
    """A binary file that takes `room` bytes and then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def test_full_disk_is_one_line_naming_the_file_and_the_old_file_stays(tmp_path, full_disk):
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")
    with pytest.raises(StorageError) as e:
        storage.atomic_write(path, b"x" * 1000, fix="pick another --out_dir")
    msg = str(e.value)
    assert msg.startswith(f"cannot write {path}: the disk is full") and "\n" not in msg
    assert "the previous file is intact" in msg and msg.endswith("pick another --out_dir")
    assert path.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


def test_a_folder_sync_that_fails_after_the_rename_does_not_claim_the_old_file_stays(tmp_path, monkeypatch):
    """The rename went through and the folder's fsync failed (EIO, a network file system): the
    error said "the previous file is intact" of a file already replaced by the new one."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")

    def eio(folder):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(storage, "sync_folder", eio)
    with pytest.raises(StorageError) as e:
        storage.atomic_write(path, b"the new one")
    assert "Input/output error" in str(e.value) and "intact" not in str(e.value)
    assert path.read_bytes() == b"the new one"


def test_atomic_write_syncs_the_new_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    # catches: a write whose data or rename is not fsync'ed (a power cut could leave an empty last.pt)
    path, events = tmp_path / "last.pt", []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        mode = os.fstat(fd).st_mode
        events.append("folder" if stat.S_ISDIR(mode) else f"file of {os.fstat(fd).st_size} bytes")
        real_fsync(fd)
    monkeypatch.setattr(storage.os, "fsync", fsync)
    monkeypatch.setattr(storage.os, "replace", lambda a, b: events.append("rename") or real_replace(a, b))
    storage.atomic_write(path, b"new data")
    assert events == ["file of 8 bytes", "rename", "folder"]


def test_a_run_folder_sweeps_killed_saves_and_leaves_an_exports_staging_folder(tmp_path):
    """A killed export into a run folder leaves its hidden .tmp-export-* folder: the run folder's
    sweep of killed saves' temporaries unlinked it, a traceback (IsADirectoryError) at the next run."""
    run = tmp_path / "r"
    (run / ".tmp-export-1-x").mkdir(parents=True)
    (run / ".tmp-abc-last.pt").write_bytes(b"half a save")
    folder = storage.RunFolder(run)
    try:
        assert sorted(p.name for p in run.iterdir()) == [".tmp-export-1-x", "run.lock"]
    finally:
        folder.release()


def test_torch_save_on_a_full_disk_is_the_disk_error_not_unexpected_pos(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")
    state = {"w": torch.zeros(10_000)}
    with pytest.raises(StorageError, match="the disk is full") as e:
        storage.atomic_write(path, lambda f: torch.save(state, FullAfter(f, 2000)))
    assert "unexpected pos" not in str(e.value)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_interrupt_inside_torch_save_stays_an_interrupt(tmp_path):
    class Interrupted(FullAfter):
        def write(self, b):
            raise KeyboardInterrupt
    state = {"w": torch.zeros(10)}
    with pytest.raises(KeyboardInterrupt):
        storage.atomic_write(tmp_path / "x.pt", lambda f: torch.save(state, Interrupted(f, 0)))
    assert list(tmp_path.iterdir()) == []


def test_a_bug_inside_the_writer_is_not_called_a_disk_error(tmp_path):
    def buggy(f):
        raise TypeError("not a disk problem")
    with pytest.raises(TypeError):
        storage.atomic_write(tmp_path / "x", buggy)


def test_appending_to_a_log_on_a_full_disk_is_one_line_and_leaves_no_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    storage.append_jsonl(path, {"step": 1})
    real_write = os.write
    taken = []

    def full(fd, data):  # the disk takes 5 bytes of the line, then is full
        if taken:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken.append(fd)
        return real_write(fd, data[:5])
    with monkeypatch.context() as m:
        m.setattr(storage.os, "write", full)
        with pytest.raises(StorageError, match=r"metrics.jsonl: the disk is full") as e:
            storage.append_jsonl(path, {"step": 2})
    assert "\n" not in str(e.value) and taken
    assert path.read_text() == '{"step": 1}\n'  # the 5 bytes written cut off again: no torn line
    storage.append_jsonl(path, {"step": 3})  # (room again: the log goes on, every line whole)
    assert records(path) == [{"step": 1}, {"step": 3}]


def test_a_log_line_past_ulimit_f_is_cut_off_again(tmp_path):
    """A real short write: `ulimit -f` lets the line in up to the limit, then fails (EFBIG)."""
    path = tmp_path / "metrics.jsonl"
    code = ("import resource, storage\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
            "try:\n"
            f"    for i in range(100): storage.append_jsonl({str(path)!r}, {{'step': i, 'pad': 'x' * 30}})\n"
            "except storage.StorageError as e: print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout
    assert out.count("\n") == 1 and "(ulimit -f)" in out and "raise the limit (ulimit -f unlimited)" in out
    assert path.stat().st_size < 1000 and path.read_bytes().endswith(b"}\n")
    assert len(records(path)) == path.read_bytes().count(b"\n")  # every line whole


def test_a_real_full_filesystem(tmp_path):
    with small_filesystem(tmp_path / "small") as disk:
        storage.atomic_write(disk / "last.pt", lambda f: torch.save({"w": torch.zeros(10)}, f))
        before = (disk / "last.pt").read_bytes()
        with pytest.raises(StorageError, match="the disk is full"):
            storage.atomic_write(disk / "last.pt", lambda f: torch.save({"w": torch.zeros(100_000)}, f))
        assert (disk / "last.pt").read_bytes() == before
        assert [p.name for p in disk.iterdir()] == ["last.pt"]


# --- JSON Lines ------------------------------------------------------------------------------

def test_a_torn_last_line_is_dropped_with_a_warning_and_a_bad_middle_line_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    warnings = []
    assert records(path, warn=warnings.append) == [{"step": 1}, {"step": 2}]
    assert "dropped a torn last line (line 3" in warnings[0]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        records(path)
    path.write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n')  # JSON, but not a record: no TypeError later
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        records(path)
    # Bug caught: JSON that is not a record as the last line (an edit: a record cut short is never JSON)
    # was dropped as "a torn last line ... left by a write that was cut short"
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        records(path, warn=warnings.append)
    # Bug caught: a last line of JSON null (an edit too) was dropped as a torn line
    path.write_text('{"step": 1}\nnull\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        records(path, warn=warnings.append)


# --- locks -----------------------------------------------------------------------------------

HOLD = """
import sys, time
import storage
held = storage.lock(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_lock_held_by_a_live_process_names_it_and_a_dead_ones_blocks_nothing(tmp_path):
    path = tmp_path / "run.lock"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(storage.Busy) as e:
            storage.lock(path)
        assert e.value.holder.startswith(f"pid {child.pid} on ")
    finally:
        child.kill()
        child.wait()
    assert path.read_text().startswith(f"pid {child.pid}")  # the dead process's file is still there ...
    held = storage.lock(path)  # ... and blocks nothing
    assert path.read_text().startswith(f"pid {os.getpid()} ")
    held.close()


def test_results_go_to_the_readme_figure_only_from_a_run_at_the_defaults(tmp_path, capsys):
    """A quick run or another shape never replaces the figure the README quotes: it writes where
    --out says, or nowhere, with a line saying how to keep it."""
    import argparse
    p = argparse.ArgumentParser(prog="bench.py")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    figure = tmp_path / "img" / "figure.json"
    assert storage.results_path(p, p.parse_args([]), figure) == figure
    assert storage.results_path(p, p.parse_args(["--device", "cuda"]), figure, ignore=("device",)) == figure
    given = p.parse_args(["--quick", "--out", "x.json"])
    assert storage.results_path(p, given, figure) == storage.Path("x.json")
    assert storage.results_path(p, p.parse_args(["--quick"]), figure) is None
    assert capsys.readouterr().err.strip() == f"bench.py: the results are not written to {figure}, which " \
        "holds the README's run (this one sets --quick); pass --out FILE to keep them"
    storage.results_path(p, p.parse_args(["--no-hf"]), figure)
    assert "(this one sets --no-hf)" in capsys.readouterr().err  # the option as typed, not its dest
    # compare.py and sweep.py: options passed through to train.py count; their runs' folder instead
    runs = tmp_path / "runs"
    assert storage.results_path(p, p.parse_args([]), figure, extra=["--dim", "96"], fallback=runs) == runs
    assert "(this one sets --dim); they go to" in capsys.readouterr().err


def test_a_file_size_limit_is_named_as_such(tmp_path):
    """`ulimit -f` (RLIMIT_FSIZE): a write past it fails with EFBIG, which is not a full disk."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")
    code = ("import resource, storage\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
            f"try: storage.atomic_write({str(path)!r}, b'x' * 5000)\n"
            "except storage.StorageError as e: print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout
    assert "the file is over this process's (ulimit -f) or the file system's size limit" in out
    assert "the disk is full" not in out and "free some space" not in out and out.strip().endswith(
        "; raise the limit (ulimit -f unlimited) or write somewhere else")  # (not only somewhere else)
    assert path.read_bytes() == b"the previous checkpoint"


# --- what a second mutation audit of storage.py found untested -------------------------------

def test_a_full_quota_is_named_and_advises_freeing_space(tmp_path):
    """Catches advice() offering "free some space" for ENOSPC alone: a full quota (EDQUOT) is freed
    the same way, and its line named the quota, not the disk."""
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert storage.advice(quota, "pick another --out_dir") == "free some space or pick another --out_dir"
    msg = str(storage.write_error(tmp_path / "last.pt", quota, "pick another --out_dir", intact=True))
    assert msg == (f"cannot write {tmp_path / 'last.pt'}: the disk quota is used up "
                   f"({os.strerror(errno.EDQUOT)}); the previous file is intact; free some space or pick "
                   "another --out_dir")
    assert storage.advice(OSError(errno.EROFS, "Read-only file system"), None) == storage.DEFAULT_FIX


def test_the_oserror_behind_a_wrapped_failure_is_found_through_its_context():
    """Catches os_error_in following only __cause__: a library that raises its own error while
    handling the OSError (`raise X` in an except block, no `from`) hid a full disk."""
    def wrapped(wrap_with_from):
        try:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as inner:
                if wrap_with_from:
                    raise RuntimeError("arrow write failed") from inner
                raise ValueError("arrow write failed")  # noqa: B904 (as a library does)
        except Exception as e:
            return e
    for how in (True, False):
        cause = storage.os_error_in(wrapped(how))
        assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC
    assert storage.os_error_in(ValueError("no OSError behind it")) is None


def test_a_write_refused_in_a_folder_is_told_from_a_file_elsewhere(tmp_path):
    """Catches refused_in getting a refusal wrong: a read-only disk, no permission for a file in the
    folder or for a folder on the way to it, or with no file named, is the folder's; no permission
    for a file elsewhere is not."""
    folder = tmp_path / "cache"

    def denied(name):
        return OSError(errno.EACCES, "Permission denied", None if name is None else str(name))
    assert storage.refused_in(OSError(errno.EROFS, "Read-only file system"), folder)
    assert storage.refused_in(denied(folder / "shard-0.bin"), folder)  # a file in it
    assert storage.refused_in(denied(tmp_path), folder)  # a folder on the way to it
    assert storage.refused_in(denied(None), folder)
    assert not storage.refused_in(denied(tmp_path / "elsewhere" / "data.txt"), folder)
    assert not storage.refused_in(OSError(errno.ENOENT, "No such file or directory", str(folder)), folder)


def test_a_bug_raised_while_handling_a_disk_error_is_not_called_a_disk_error(tmp_path):
    """Catches write_error following the context of any exception, not only torch's RuntimeError:
    a TypeError raised in a writer's except block over an OSError became "cannot write ...: the disk
    is full", hiding the bug; the file as it was, no temporary left."""
    path = tmp_path / "x.json"
    path.write_bytes(b"old")

    def buggy(f):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise TypeError("a bug in the handler")  # noqa: B904
    with pytest.raises(TypeError, match="a bug in the handler"):
        storage.atomic_write(path, buggy)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_make_folder_makes_every_missing_parent_and_a_file_in_the_way_is_one_line(tmp_path):
    """Catches make_folder without parents=True (an --out of a/b/c failed with a traceback-free but
    wrong "No such file or directory"), and a file in the way not being a StorageError."""
    assert storage.make_folder(tmp_path / "a" / "b" / "c", "pick another --out") == tmp_path / "a" / "b" / "c"
    assert (tmp_path / "a" / "b" / "c").is_dir()
    storage.make_folder(tmp_path / "a" / "b" / "c")  # already there: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError) as e:
        storage.make_folder(tmp_path / "file" / "sub", "pick another --out")
    assert str(e.value).startswith(f"cannot create the folder {tmp_path / 'file' / 'sub'}: ")
    assert str(e.value).endswith("; pick another --out") and "\n" not in str(e.value)


@pytest.mark.parametrize("under", ["", "sub"])
def test_make_folder_names_the_file_in_the_way(tmp_path, under):
    """make_folder said "File exists" (or "Not a directory") without saying which file: the folder's
    own name taken by a file (export_hf.py RUN FILE), or a file above it."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError) as e:
        storage.make_folder(tmp_path / "file" / under, "export it elsewhere")
    assert f": {tmp_path / 'file'} is a file, not a folder; export it elsewhere" in str(e.value)
    assert (tmp_path / "file").read_text() == "x"


def test_a_torn_last_line_followed_by_blank_lines_is_still_the_last_line(tmp_path):
    """Catches numbered_jsonl taking the file's last line, blank or not, for its last record: a torn
    line with a newline after it (an editor adds one on saving) failed every resume after."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n\n')
    warnings = []
    assert records(path, warn=warnings.append) == [{"step": 1}]
    assert len(warnings) == 1 and "dropped a torn last line (line 2, 15 characters)" in warnings[0]


def test_a_complete_last_line_that_is_not_json_is_damage_not_a_torn_write(tmp_path):
    """Bug caught: a last line of text with its newline (`echo hello >> metrics.jsonl`) was dropped as
    "a torn last line ... left by a write that was cut short", though a write cut short leaves no
    newline after it (and a record's start, `{`, an editor may end with one): an error naming the line,
    as a bad line elsewhere is; a torn line without its newline, whatever it holds, is still dropped."""
    path = tmp_path / "metrics.jsonl"
    for text in ('{"step": 1}\nhello\n', '{"step": 1}\nhello\n\n', '{"step": 1}\n]\n'):
        path.write_text(text)
        warnings = []
        with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not a JSON record; fix or delete"):
            records(path, warn=warnings.append)
        assert warnings == [], text
    for text in ('{"step": 1}\nhel', '{"step": 1}\n\0\0\0', '{"step": 1}\n{"step": 2, "lo\n'):
        path.write_text(text)
        warnings = []
        assert records(path, warn=warnings.append) == [{"step": 1}] and len(warnings) == 1, text
        assert "dropped a torn last line (line 2" in warnings[0]


def test_a_log_line_the_disk_refused_says_the_log_is_as_it_was(tmp_path, monkeypatch):
    """Catches append_jsonl's failure line not saying the log is intact (the part written is cut
    off again), and a log that cannot be opened claiming it."""
    path = tmp_path / "metrics.jsonl"
    storage.append_jsonl(path, {"step": 1})

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with monkeypatch.context() as m:
        m.setattr(storage.os, "write", full)
        with pytest.raises(StorageError) as e:
            storage.append_jsonl(path, {"step": 2}, fix="pick another --out_dir")
    assert str(e.value) == (f"cannot write {path}: the disk is full ({os.strerror(errno.ENOSPC)}); the "
                            "previous file is intact; free some space or pick another --out_dir")
    assert path.read_text() == '{"step": 1}\n'  # as it was
    with pytest.raises(StorageError) as e:  # a folder in the way: nothing was written, nothing claimed
        storage.append_jsonl(tmp_path / "missing" / "metrics.jsonl", {"step": 1})
    assert "intact" not in str(e.value) and str(e.value).endswith("; write somewhere else")


def test_a_first_log_line_the_disk_refused_claims_no_previous_file(tmp_path, monkeypatch):
    """Bug caught (a new run on a real full tmpfs): the first metrics.jsonl line refused said "the
    previous file is intact" of a log that was not there before."""
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(storage.os, "write", full)
    with pytest.raises(StorageError) as e:
        storage.append_jsonl(tmp_path / "metrics.jsonl", {"step": 1}, fix="pick another --out_dir")
    assert str(e.value) == (f"cannot write {tmp_path / 'metrics.jsonl'}: the disk is full "
                            f"({os.strerror(errno.ENOSPC)}); free some space or pick another --out_dir")


def test_a_first_log_line_the_disk_refused_leaves_no_empty_log(tmp_path, monkeypatch):
    """Bug caught: a new run's first metrics.jsonl line refused (a full disk) left an empty
    metrics.jsonl, which `plot_runs.py OUT_DIR` named as the newest run to plot (it had nothing to
    plot) and a rerun reported "replacing its 0 records". A log that was there, empty, stays."""
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(storage.os, "write", full)
    with pytest.raises(StorageError):
        storage.append_jsonl(tmp_path / "metrics.jsonl", {"step": 1})
    assert list(tmp_path.iterdir()) == []  # as it was: no file
    (tmp_path / "metrics.jsonl").write_bytes(b"")  # an empty log of before (a run killed as it opened it)
    with pytest.raises(StorageError):
        storage.append_jsonl(tmp_path / "metrics.jsonl", {"step": 1})
    assert (tmp_path / "metrics.jsonl").read_bytes() == b""


def test_a_run_folder_goes_at_release_only_when_this_run_made_it_and_left_it_empty(tmp_path):
    """Catches RunFolder.release removing a folder it did not make (an empty folder the user made
    for the run), and unlinking run.lock from a folder it keeps (one with files in it: the lock
    file must stay, so that two processes always lock the same file)."""
    made = tmp_path / "made"
    storage.RunFolder(made).release()
    assert not made.exists()  # made here and left empty: gone
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    storage.RunFolder(theirs).release()
    assert theirs.is_dir() and not any(theirs.iterdir())  # there before: kept (this run's run.lock goes)
    written = tmp_path / "written"
    folder = storage.RunFolder(written)
    (written / "train.json").write_text("{}")
    folder.release()
    assert sorted(p.name for p in written.iterdir()) == ["run.lock", "train.json"]
    assert folder.lock is None and not storage.held(written / "run.lock")  # let go all the same


def test_a_run_lock_made_in_a_folder_of_the_users_goes_unless_the_run_wrote_its_files_there(tmp_path):
    """Bug caught: a run that failed early (bad data) in a folder of the user's (--out_dir D --run R)
    left run.lock beside their files, which then made it a run folder to sources.project_folder (a
    tokenizer.json of theirs beside it: --data R refused, R's text skipped under --data D) and to
    checkpoint.run_folders. A run.lock there before (a previous run's) stays, as does one beside a
    file of the run's written (or written over) by this run."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "a.txt").write_text("Once upon a time.")
    (theirs / "tokenizer.json").write_text("{}")  # theirs, not a run's
    storage.RunFolder(theirs).release()
    assert sorted(p.name for p in theirs.iterdir()) == ["a.txt", "tokenizer.json"]
    assert sources.project_folder(theirs) is None and checkpoint.run_folders(tmp_path) == []
    folder = storage.RunFolder(theirs)
    (theirs / "tokenizer.json").write_text('{"model": {}}')  # written over by the run
    folder.release()
    assert sorted(p.name for p in theirs.iterdir()) == ["a.txt", "run.lock", "tokenizer.json"]
    assert not storage.held(theirs / "run.lock")
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "run.lock").write_text("pid 1 on host since then\n")  # a run's that wrote nothing else
    storage.RunFolder(previous).release()
    assert [p.name for p in previous.iterdir()] == ["run.lock"]


def test_a_lock_its_holder_unlinks_while_another_waits_is_not_held_twice(tmp_path):
    """Bug caught: a process that opened run.lock before its holder unlinked it (RunFolder.release)
    took the flock on the unlinked file, and a third then made a new run.lock and locked it too: two
    holders of one folder. lock() now locks the file at the path."""
    path = tmp_path / "run.lock"
    first, taken = storage.lock(path), []
    waiter = threading.Thread(target=lambda: taken.append(storage.lock(path, wait=True)))
    waiter.start()
    time.sleep(0.3)  # (the waiter has opened the file and waits for its flock)
    path.unlink()
    first.close()
    waiter.join(10)
    try:
        assert path.exists() and storage.same_file(taken[0], path)
        with pytest.raises(storage.Busy):  # a third process is refused
            storage.lock(path).close()
    finally:
        taken[0].close()


def test_a_new_out_dir_a_run_made_goes_with_its_run_folder_when_left_empty(tmp_path, monkeypatch):
    """Bug caught: a run that failed before writing anything (or resumed finished into a fork) under a
    new --out_dir removed its run folder but left the --out_dir it made, empty; one there before, or
    one that holds something else, stays."""
    storage.RunFolder(tmp_path / "new" / "deeper" / "r").release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "theirs").mkdir()
    storage.RunFolder(tmp_path / "theirs" / "new" / "r").release()
    assert [p.name for p in tmp_path.iterdir()] == ["theirs"] and not any((tmp_path / "theirs").iterdir())
    folder = storage.RunFolder(tmp_path / "theirs" / "new" / "r")
    (tmp_path / "theirs" / "new" / "notes").write_text("mine")  # (put there as it ran)
    folder.release()
    assert [p.name for p in (tmp_path / "theirs" / "new").iterdir()] == ["notes"]

    def denied(path, wait=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(storage, "lock", denied)
    with pytest.raises(storage.RunError):
        storage.RunFolder(tmp_path / "other" / "r")
    assert not (tmp_path / "other").exists()


def test_a_run_folder_sweeps_the_temporaries_of_every_kind_of_save(tmp_path):
    """Catches the sweep taking checkpoints' temporaries alone: a killed atomic write of
    train.json or tokenizer.json left its .tmp-* file in the folder for good. Files not named
    .tmp-* stay."""
    run = tmp_path / "r"
    run.mkdir()
    for name in (".tmp-a1-last.pt", ".tmp-b2-train.json", ".tmp-c3-tokenizer.json", "notes.tmp-x", "last.pt"):
        (run / name).write_bytes(b"x")
    folder = storage.RunFolder(run)
    try:
        assert sorted(p.name for p in run.iterdir()) == ["last.pt", "notes.tmp-x", "run.lock"]
    finally:
        folder.release()


def test_a_lock_held_without_a_note_is_named_another_process_and_held_sees_it(tmp_path):
    """Catches Busy naming no one when the holder has not written its line yet (an empty lock
    file: "locked by " and nothing), and `held` missing a lock held elsewhere or taking one itself."""
    import fcntl
    path = tmp_path / "run.lock"
    with open(path, "a+") as other:  # another open file: its flock conflicts as another process's
        fcntl.flock(other, fcntl.LOCK_EX)
        assert storage.held(path)
        with pytest.raises(storage.Busy) as e:
            storage.lock(path)
        assert e.value.holder == "another process" and str(e.value) == f"{path} is locked by another process"
    assert not storage.held(path) and not storage.held(path)  # (a probe takes nothing)
    mine = storage.lock(path)
    try:
        assert path.read_text().startswith(f"pid {os.getpid()} on ")
    finally:
        mine.close()


def test_a_cache_lock_on_a_full_disk_is_held_with_no_line_and_a_run_lock_is_not(tmp_path, monkeypatch):
    """A lock file whose "pid N on HOST" line the disk refuses: with full_ok (the cache's build
    locks: data._building) the flock is kept on the empty file, which names "another process" to
    whoever asks; without it (run.lock) the error stands and a file made there goes. The part of
    the line written is cut off, and nothing raises again as the lock is let go.
    Bug caught (a disk-full probe): a finished cache on a full disk, its .locks/ files gone (`cp -r
    cache/*` skips hidden folders), stopped train.py with "the disk is full" though every lookup was
    a hit: lock() made the lock file, could not write its line, deleted the file and raised."""
    real = os.write

    def full(fd, data):  # the disk takes 5 bytes of the line, then is full
        if len(data) > 5:
            return real(fd, data[:5])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    new, old = tmp_path / "new.lock", tmp_path / "old.lock"
    old.write_text("pid 1 on gone since 2020-01-01 00:00:00\n")  # a dead holder's line
    with monkeypatch.context() as m:
        m.setattr(storage.os, "write", full)
        for path in (new, old):
            held = storage.lock(path, full_ok=True)
            try:
                assert path.read_bytes() == b"" and storage.same_file(held, path)
                with pytest.raises(storage.Busy) as e:  # two processes never both hold it
                    storage.lock(path, full_ok=True)
                assert e.value.holder == "another process"
            finally:
                held.close()
            assert path.exists() and not storage.held(path)
        with pytest.raises(OSError) as e:
            storage.lock(tmp_path / "run.lock")
        assert e.value.errno == errno.ENOSPC and not (tmp_path / "run.lock").exists()
    mine = storage.lock(new, full_ok=True)  # room again: the line is written
    try:
        assert new.read_text().startswith(f"pid {os.getpid()} on ")
    finally:
        mine.close()


# --- what a third mutation audit of storage.py found untested --------------------------------

def test_an_error_outside_the_named_reasons_is_said_once_and_one_without_strerror_still_named(tmp_path):
    """Catches write_error repeating the strerror of an errno it has no words of its own for
    ("Input/output error (Input/output error)"), and naming an OSError that carries no strerror
    "None" instead of its text."""
    path = tmp_path / "last.pt"
    eio = OSError(errno.EIO, "Input/output error")
    assert str(storage.write_error(path, eio)) == (
        f"cannot write {path}: Input/output error; write somewhere else")
    bare = OSError("the mount went away")
    assert str(storage.write_error(path, bare, "pick another --out_dir")) == (
        f"cannot write {path}: the mount went away; pick another --out_dir")


def test_a_failed_first_write_of_a_file_does_not_claim_a_previous_one_is_intact(tmp_path, full_disk):
    """Catches atomic_write saying "the previous file is intact" where there was no previous file
    (the first save of a run on a full disk): the line must not promise a checkpoint that is not there."""
    with pytest.raises(StorageError) as e:
        storage.atomic_write(tmp_path / "last.pt", b"x" * 100)
    assert "intact" not in str(e.value) and str(e.value).startswith(f"cannot write {tmp_path / 'last.pt'}: ")
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_to_a_bare_file_name_goes_to_the_current_folder(tmp_path, monkeypatch):
    """Catches atomic_write taking the folder of a bare name ("results.json", no folder in it) as
    "": mkstemp and the folder's fsync then failed, and `--out results.json` wrote nothing."""
    monkeypatch.chdir(tmp_path)
    storage.atomic_write("results.json", b"data")
    storage.save_json("b.json", {"x": 1})
    assert (tmp_path / "results.json").read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "results.json"]


def test_save_json_is_indented_key_sorted_and_ends_with_a_newline_unless_told_to_keep_the_order(tmp_path):
    """Catches save_json writing keys in the dict's order by default (train.json and the README's
    figures then changed with every run that built its dict otherwise: diffs full of noise), or
    on one line, or without the final newline."""
    storage.save_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    storage.save_json(tmp_path / "c.json", {"b": 1, "a": 2}, sort_keys=False)
    assert (tmp_path / "c.json").read_text() == '{\n  "b": 1,\n  "a": 2\n}\n'


def test_the_option_named_for_a_run_off_the_figure_is_its_long_spelling(capsys, tmp_path):
    """Catches results_path naming an option by its first spelling: `-q/--quick` was named "-q",
    which the line's reader cannot look up as easily as --quick."""
    import argparse
    p = argparse.ArgumentParser(prog="bench.py")
    p.add_argument("-q", "--quick", action="store_true")
    p.add_argument("--out", default=None)
    assert storage.results_path(p, p.parse_args(["-q"]), tmp_path / "figure.json") is None
    assert "(this one sets --quick)" in capsys.readouterr().err


def test_a_new_log_gets_the_mode_an_ordinary_write_would(tmp_path):
    """Catches append_jsonl creating metrics.jsonl 0600: in a shared run folder no one else could
    read the run's log (plot_runs.py of another user failed on it)."""
    with umask(0o022):
        storage.append_jsonl(tmp_path / "metrics.jsonl", {"step": 1})
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == 0o644


def test_a_last_line_torn_inside_a_character_is_dropped_not_a_decode_error(tmp_path):
    """Catches numbered_jsonl reading strictly as UTF-8: a write cut off in the middle of a multi-byte
    character (a story's "é") made every later resume fail with UnicodeDecodeError."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"text": "caf' + "é".encode()[:1])
    warnings = []
    assert records(path, warn=warnings.append) == [{"step": 1}]
    assert len(warnings) == 1 and "dropped a torn last line (line 2" in warnings[0]


def test_held_on_a_missing_lock_file_is_false_and_creates_it(tmp_path):
    """Catches `held` failing (FileNotFoundError) on a run folder with no run.lock yet: it is not
    held, and the file is made as `lock` would make it."""
    path = tmp_path / "run.lock"
    assert not storage.held(path) and path.is_file()


def test_a_lock_taken_with_wait_waits_for_the_holder_to_let_go(tmp_path):
    """Catches lock(wait=True) raising Busy at once, as wait=False does, instead of waiting for
    the process that holds it."""
    import fcntl
    import threading
    path = tmp_path / "run.lock"
    other = open(path, "a+")  # another open file: its flock conflicts as another process's would
    fcntl.flock(other, fcntl.LOCK_EX)
    timer = threading.Timer(0.3, other.close)
    timer.start()
    try:
        mine = storage.lock(path, wait=True)
    finally:
        timer.join()
        other.close()
    try:
        assert path.read_text().startswith(f"pid {os.getpid()} on ")
    finally:
        mine.close()


def test_a_run_folder_that_cannot_be_locked_is_one_line_and_the_folder_it_made_goes(tmp_path, monkeypatch):
    """Catches RunFolder leaving behind the empty folder it made when run.lock cannot be written
    (no permission, a full disk): the failed run left a run folder with nothing in it; a folder
    that was there before stays."""
    def denied(path, wait=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(storage, "lock", denied)
    made, theirs = tmp_path / "made", tmp_path / "theirs"
    theirs.mkdir()
    for run in (made, theirs):
        with pytest.raises(storage.RunError) as e:
            storage.RunFolder(run)
        assert str(e.value) == (f"cannot write to {run} (Permission denied); pick another --out_dir or "
                                "--run")
    assert not made.exists() and theirs.is_dir()


def no_room(monkeypatch):
    """Writes fail as on a full disk (lock() writes its line with os.write, unbuffered)."""
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(storage.os, "write", full)


def test_a_run_folder_on_a_full_disk_leaves_no_run_lock_and_says_free_some_space(tmp_path, monkeypatch):
    """Bug caught: a new run on a full disk (seen on a real 0-byte-free tmpfs: its folder is made, the
    lock file's line is not written) left an empty run.lock (alone, what makes a folder a killed run's)
    in the folders it made, and said "(No space left on device); pick another --out_dir or --run",
    not that the disk is full nor to free some space."""
    no_room(monkeypatch)
    made, theirs = tmp_path / "out" / "made", tmp_path / "theirs"
    theirs.mkdir()
    for run in (made, theirs):
        with pytest.raises(storage.RunError) as e:
            storage.RunFolder(run)
        assert str(e.value) == (f"cannot write to {run} (the disk is full); free some space or pick another "
                                "--out_dir or --run")
    assert not (tmp_path / "out").exists() and list(theirs.iterdir()) == []


def test_a_lock_file_made_meanwhile_by_another_process_stays_on_a_full_disk(tmp_path, monkeypatch):
    """Bug caught: lock() read "no file there" before its open, another process made the lock file (and
    let it go) in between, and this process, whose line the full disk refused, unlinked that file as
    its own: a run.lock there before does not stay on a full disk."""
    path = tmp_path / "run.lock"
    real = open

    def theirs_first(file, mode):
        if not os.path.lexists(file):  # (the other process, between the check and the open)
            with real(file, "w") as f:
                f.write("pid 1 on elsewhere since 2024-01-01 00:00:00\n")
        return real(file, mode)
    monkeypatch.setattr(storage, "open", theirs_first, raising=False)
    no_room(monkeypatch)
    with pytest.raises(OSError):
        storage.lock(path)
    assert path.is_file()


def test_a_run_folder_on_a_real_full_disk(tmp_path):
    with small_filesystem(tmp_path / "small", "64k") as disk:
        with open(disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError):  # (filled)
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(storage.RunError, match="the disk is full"):
            storage.RunFolder(disk / "out" / "r")
        assert [p.name for p in disk.iterdir()] == ["filler"]


def test_a_run_folder_where_a_file_is_names_that_file(tmp_path):
    """Bug caught: --run naming a file (or an --out_dir that is one) said "cannot write to
    checkpoints/r (File exists)" or "(Not a directory)", not which file is in the way."""
    (tmp_path / "notes").write_text("mine")
    for run in (tmp_path / "notes", tmp_path / "notes" / "r"):
        with pytest.raises(storage.RunError) as e:
            storage.RunFolder(run)
        assert str(e.value) == (f"cannot write to {run} ({tmp_path / 'notes'} is a file, not a folder); pick "
                                "another --out_dir or --run")
    assert (tmp_path / "notes").read_text() == "mine"


def test_a_plot_may_replace_a_png_from_before_but_no_other_file(tmp_path):
    """Catches not_an_image refusing a PNG already there (the same plot, written before the run
    was resumed: every --resume with --plot was refused), and letting a plot replace a file that
    is no image (notes.dat) or a run's own file whatever is in it."""
    (tmp_path / "plot.dat").write_bytes(b"\x89PNG\r\n\x1a\n" + b"rest")
    (tmp_path / "notes.dat").write_text("my notes")
    assert storage.not_an_image("--plot", "plot.dat", tmp_path) is None
    assert "matplotlib writes no .dat file" in storage.not_an_image("--plot", "new.dat", tmp_path)  # (a PNG)
    assert storage.not_an_image("--plot", "plot.PNG", tmp_path) is None
    assert storage.not_an_image("--plot", "notes.dat", tmp_path) == (
        "--plot notes.dat: the plot would replace that file with an image; name a .png, .svg or .pdf file")
    assert storage.not_an_image("--plot", "metrics.jsonl", tmp_path) is not None  # (not there yet: refused)


def test_a_plot_named_without_a_suffix_does_not_replace_a_file_that_is_no_image(tmp_path):
    """Catches not_an_image passing every name without a suffix: `--plot LICENSE` (or plot_runs.py
    --out notes) wrote a PNG over that file, though the plot is written under the very name given
    (format png, no suffix added); such a name not there yet, or a PNG there, is fine, as is "" (no plot)."""
    (tmp_path / "notes").write_text("my notes")
    (tmp_path / "plot").write_bytes(b"\x89PNG\r\n\x1a\n" + b"rest")
    assert storage.not_an_image("--plot", "notes", tmp_path) == (
        "--plot notes: the plot would replace that file with an image; name a .png, .svg or .pdf file")
    assert storage.not_an_image("--plot", "plot", tmp_path) is None
    assert storage.not_an_image("--plot", "new", tmp_path) is None
    assert storage.not_an_image("--plot", "", tmp_path) is None


def test_a_benchmark_result_replaces_only_an_earlier_result_of_its_own(tmp_path):
    """Bug caught: a benchmark's --out took any file (bench_sample.py --out RUN/last.pt wrote JSON over
    the checkpoint). not_a_result: a .json name, and a file already there holding the benchmark's keys
    (or gpu_check.py's {"not_measured": ...}) or empty; a folder, not JSON, a JSON that is not a dict, a
    dict without the keys (a run's train.json, another benchmark's result) or a file too big to be one:
    one line naming a .json file beside it."""
    keys = ("config", "results")
    files = {"mine.json": {"config": {}, "results": {}, "incomplete": "x"},
             "gone.json": {"not_measured": "x"}, "train.json": {"lr": 1e-3}, "list.json": [1],
             "other.json": {"config": {}, "batches": {}}}
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "last.json").write_bytes(b"PK\x03\x04\xff")
    (tmp_path / "big.json").write_text(json.dumps({"config": {}, "results": "x" * storage.RESULT_MAX_BYTES}))
    (tmp_path / "dir.json").mkdir()
    for name in ["mine.json", "gone.json", "empty.json", "new.json", "new.JSON"]:
        assert storage.not_a_result("--out", str(tmp_path / name), "b.json", keys) is None, name
    assert storage.not_a_result("--out", None, "b.json", keys) is None
    fix = "name a new .json file, e.g. --out b.json"  # (not beside the file refused: a run's folder)
    for name in ["train.json", "list.json", "other.json", "last.json", "big.json"]:
        assert storage.not_a_result("--out", str(tmp_path / name), "b.json", keys) == (
            f"--out {tmp_path / name} is not an earlier result of this benchmark, and the results would "
            f"replace it; {fix}")
    assert storage.not_a_result("--out", "last.pt", "b.json", keys) == (
        "--out last.pt: the results are JSON; name a new .json file, e.g. "
        "--out b.json")
    assert "is a folder" in storage.not_a_result("--out", str(tmp_path / "dir.json"), "b.json", keys)


def test_a_signal_put_off_is_raised_when_the_block_ends_and_the_handler_is_restored():
    """Catches signals_put_off dropping the Ctrl-C it held back (an export interrupted during its
    renames went on as if none came), or not putting back the handler it replaced (later Ctrl-Cs
    were ignored for good)."""
    import signal
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with storage.signals_put_off():
        pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    done = []
    with pytest.raises(KeyboardInterrupt):
        with storage.signals_put_off():
            signal.raise_signal(signal.SIGINT)
            done.append("the rest of the block")
    assert done == ["the rest of the block"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_run_on_a_busy_folder_leaves_the_first_ones_save_in_progress_alone(tmp_path):
    """Catches RunFolder sweeping .tmp-* files before it holds the lock: a second train.py on a
    busy run folder deleted the save the first one was writing, then was refused."""
    import fcntl
    run = tmp_path / "r"
    run.mkdir()
    (run / ".tmp-abc-last.pt").write_bytes(b"a save in progress")
    with open(run / "run.lock", "a+") as other:  # held as another process's would be
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(storage.RunError, match="is in use by another train.py"):
            storage.RunFolder(run)
    assert (run / ".tmp-abc-last.pt").read_bytes() == b"a save in progress"


KILLED_WHILE_ITS_CHILD_WRITES = """
import os, signal, sys, time
import storage
folder = storage.RunFolder(storage.Path(sys.argv[1]))
pid, _ = storage.fork_call(lambda: time.sleep(60))  # (a checkpoint being written)
storage.Path(sys.argv[2]).write_text(str(pid))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_folder_a_killed_train_py_s_child_still_holds_names_that_child(tmp_path):
    """Bug caught: a train.py killed (-9) while a child process wrote its checkpoint left the folder
    locked by that child, and a --resume was told it is "in use by another train.py (pid N ...); wait
    for it to end or stop it": pid N was gone (kill: no such process), the child unnamed."""
    run = tmp_path / "r"
    subprocess.run([sys.executable, "-c", KILLED_WHILE_ITS_CHILD_WRITES, str(run), str(tmp_path / "child")],
                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)  # (not piped:
    # the child inherits them, and a pipe would be waited on for its end)
    child = int((tmp_path / "child").read_text())
    try:
        holder = (run / "run.lock").read_text().strip()
        with pytest.raises(storage.RunError) as e:
            storage.RunFolder(run)
        assert str(e.value) == (f"{run} is held by a child process of a train.py that has ended ({holder}): "
                                "it still writes a checkpoint or plot that train.py began; wait for it to "
                                "end (seconds), or pick another --run")
    finally:
        os.kill(child, signal.SIGKILL)
    assert not storage.ended(f"pid {os.getpid()} on {storage.socket.gethostname()} since now")
    assert not storage.ended(f"pid {child} on another-host since now")  # (its pids are not ours to look up)


def test_an_interrupt_torch_wrapped_in_a_runtime_error_is_raised_as_the_interrupt(tmp_path):
    """Catches atomic_write raising torch's RuntimeError (its "unexpected pos" over a Ctrl-C in the
    middle of a save) instead of the KeyboardInterrupt behind it: an interrupted save became a crash
    with a traceback; the old file stays and no temporary is left."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")

    def interrupted(f):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 64 vs 0")  # noqa: B904
    with pytest.raises(KeyboardInterrupt):
        storage.atomic_write(path, interrupted)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --- what a mutation probe of storage.py found untested --------------------------------------

def test_a_run_file_written_over_at_its_size_or_under_its_time_counts_as_written(tmp_path):
    """RunFolder.release tells a file the run wrote by its size and its modification time both: a
    train.json written over in place at the same size (its time moved), or a metrics.jsonl appended to
    on a file system whose coarse clock left its time as it was, is the run's, and run.lock stays.
    Mutation caught: either stamp left out: the run's run.lock unlinked beside files it wrote (the
    folder then no run folder to sources.project_folder and checkpoint.run_folders)."""
    for name, write in (("train.json", lambda p: p.write_text('{"b": 2}')),
                        ("metrics.jsonl", lambda p: p.write_text(p.read_text() + '{"step": 2}\n'))):
        folder = tmp_path / name
        folder.mkdir()
        path = folder / name
        path.write_text('{"a": 1}' if name == "train.json" else '{"step": 1}\n')
        os.utime(path, ns=(10**18, 10**18))
        run = storage.RunFolder(folder)
        write(path)
        if name == "train.json":  # (in place, at the size it had: its time alone tells)
            os.utime(path, ns=(2 * 10**18, 2 * 10**18))
        else:  # (its size alone tells)
            os.utime(path, ns=(10**18, 10**18))
        run.release()
        assert (folder / "run.lock").exists(), name


def test_a_killed_runs_lock_beside_hidden_files_alone_is_a_run_folder(tmp_path):
    """A run killed before it wrote a file but run.lock leaves a folder of that one file, beside hidden
    ones (a save's .tmp-* that was killed too, a .DS_Store): a run folder still. Beside a file of the
    user's it is none.
    Mutation caught: a hidden file counted as the user's, so that the killed run's folder was no run
    folder (its text read by --data, --resume not finding it)."""
    (tmp_path / "run.lock").write_text("")
    (tmp_path / ".tmp-abc-last.pt").write_bytes(b"\0")
    assert storage.run_folder_files(tmp_path) == ["run.lock"]
    (tmp_path / "notes.txt").write_text("mine")
    assert storage.run_folder_files(tmp_path) == []


def test_a_cache_lock_whose_line_fails_for_another_reason_than_room_is_an_error(tmp_path, monkeypatch):
    """full_ok keeps a cache's lock held empty where the disk has no room for its line; a write that
    fails otherwise (an I/O error) is raised as it is without full_ok, the file made for it gone.
    Mutation caught: full_ok taking every failed write for a full disk (a failing disk's lock held
    empty, and the build going on to fail later on its first write, far from the cause)."""
    def broken(fd, data):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    path = tmp_path / "tokens.lock"
    monkeypatch.setattr(storage.os, "write", broken)
    with pytest.raises(OSError) as e:
        storage.lock(path, full_ok=True)
    assert e.value.errno == errno.EIO and not path.exists()


def test_a_name_of_255_bytes_is_taken_and_one_of_256_is_too_long(tmp_path):
    """NAME_MAX (255 bytes) is the longest name a file system takes: that name is fine, one byte more
    is the one-line error (a character of two bytes counts as two).
    Mutation caught: the bound taken as exclusive: a name of exactly 255 bytes refused."""
    assert storage.too_long("--out", tmp_path / ("x" * 255)) is None
    assert "256 bytes long" in storage.too_long("--out", tmp_path / ("x" * 256))
    assert "256 bytes long" in storage.too_long("--out", tmp_path / ("é" * 128))
    assert storage.too_long("--out", tmp_path / ("é" * 127 + "x")) is None


def test_a_lock_file_replaced_at_its_path_is_no_longer_the_same_file(tmp_path):
    """same_file tells whether an open lock file is still the file at its path: not once another file
    has been put there (made after its holder unlinked it, or renamed over it).
    Mutation caught: same_file true whenever something is at the path: a waiter kept its flock on the
    unlinked file while a third process locked the new one (two holders of one folder), and
    RunFolder.release unlinked a run.lock that another run had made."""
    path = tmp_path / "run.lock"
    path.write_text("")
    with open(path, "a+") as f:
        assert storage.same_file(f, path)
        other = tmp_path / "other"
        other.write_text("")
        os.replace(other, path)
        assert not storage.same_file(f, path)
        path.unlink()
        assert not storage.same_file(f, path)


def test_a_folder_pyarrow_cannot_open_is_named_with_the_fix(monkeypatch, tmp_path):
    """Bug caught: under a Latin-1 locale a non-ASCII --cache_dir held a datasets cache that pyarrow
    (opening the UTF-8 of the name: other bytes) could not find: "the datasets cache ... is damaged;
    delete that folder", met again at the next run. An ASCII name, or a UTF-8 locale, is fine."""
    assert storage.not_utf8_name("--cache_dir", tmp_path / "café") is None  # (the tests' UTF-8 locale)
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    assert storage.not_utf8_name("--cache_dir", tmp_path / "cache") is None
    problem = storage.not_utf8_name("--cache_dir", "café")
    assert "is not plain ASCII" in problem and "iso8859-1" in problem and "LC_ALL=C.UTF-8" in problem
    assert f"(it is {os.path.abspath('café')!r})" in problem  # (a relative one: where it is)
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "utf-8")
    assert "is not a UTF-8 name" in storage.not_utf8_name("--cache_dir", "caf\udce9")


@pytest.mark.parametrize("encoding, name", [("ascii", "cäche"), ("iso8859-1", "c☕che")])
def test_a_saved_folder_name_this_locale_cannot_write_is_named_with_the_fix(monkeypatch, encoding, name):
    """A --cache_dir a checkpoint saved under a UTF-8 locale (its JSON holds the characters, not the
    command line's bytes) resumed under C (ascii) or Latin-1: the name is refused with the locale fix.
    Bug caught: not_utf8_name encoded the name in the locale's encoding first, outside its try: a
    UnicodeEncodeError's traceback from TrainArgs at --resume, where a line was meant."""
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: encoding)
    problem = storage.not_utf8_name("--cache_dir", name)
    assert "is not plain ASCII" in problem and encoding in problem and "LC_ALL=C.UTF-8" in problem
    with pytest.raises(config.ConfigError, match=r"^--cache_dir .*LC_ALL=C\.UTF-8"):
        config.TrainArgs(data="stories.txt", cache_dir=name)
