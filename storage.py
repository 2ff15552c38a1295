"""Files that must never be half-written: atomic replacement, JSON, and JSON Lines logs.

    atomic_write(path, data)   replace a file all at once (bytes, or a function that writes them)
    save_json(path, obj)       atomic_write of indented, key-sorted JSON
    append_jsonl(path, record) add one line to a log
    read_jsonl(path)           the log's records, a torn last line dropped with a warning

How this departs from the obvious version:
- A crash at any moment leaves either the old file or the new one, never a mix: the data goes to
  a temporary file beside the target, is flushed and fsync'ed, renamed over the target, and the
  folder is fsync'ed so the rename itself survives a power cut. Temporary files are named
  `.tmp-*`, so a run folder can sweep the ones a killed process left behind.
- The new file gets the permissions an ordinary `open(path, "w")` would give it (0666 less the
  umask), not the 0600 of the temporary file, so a shared run folder stays readable.
- A log line is written with one `write` call; a process killed (or a disk filled) during it
  leaves at most one torn line, at the end, which `read_jsonl` drops and reports instead of
  failing on it for ever after.
"""

import json
import os
import tempfile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data) -> None:
    """Replace `path` with `data` (bytes, or a function writing to a binary file) so that a crash
    at any moment leaves either the old file or the new one, never a mix."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_json(path, obj) -> None:
    """Write JSON atomically (see atomic_write)."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def append_jsonl(path, record: dict) -> None:
    """Append one JSON line, in one write call."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path, warn=None) -> list[dict]:
    """The records of a JSON Lines file. A last line that is not valid JSON (a write cut short by
    a crash or a full disk) is dropped, and `warn` is told; a bad line elsewhere is an error
    (ValueError naming the file and the line)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records = []
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i != last:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON; fix or delete that line") from None
            if warn is not None:
                warn(f"{path}: dropped a torn last line (line {i + 1}, {len(line)} characters), "
                     "left by a write that was cut short")
    return records
