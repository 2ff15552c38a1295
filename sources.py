"""Sources: where a run's text comes from, read as documents (data.py tokenizes them).

    resolve_sources(train_args)      the training and validation Splits a run asks for (no text read yet)
    Split                            one split's documents: a source, whole or one side of a held-out slice
    held_out_every, fraction_for     1 in how many documents is held out; a --val_fraction for 1 in n
    warn_overlap                     a warning when --val_data names files of --data, or copies of them
    warn_split_names                 a warning when a folder's files name both a training and a held-out split
    source_warnings                  the sources' settings that have no effect, as warning lines
    plain_text_fields                the text-field settings a .txt --data or --val_data makes moot
    resolve_files(spec, flag)        a file, a folder or a glob -> the files it names
    with_text                        those files less the empty ones, each left out with a warning line
    project_folder                   whether a folder is a token cache or run folder of this project's
    load_files, load_hub             local files or a hub split as a `datasets.Dataset` with a "text" column
    local_hf_dataset                 whether an --hf_dataset is a local folder (read, saved and named as one)
    saved_hf_dataset                 an --hf_dataset as saved: a local folder's absolute path, or a hub name
    document                         a document's text as it is tokenized (data.py applies it)
    plural, in_bytes                 counts and sizes in log lines (data.py's too)
    DOCUMENT_RULES, HELD_OUT_RULES   versions of these rules, part of the cache keys (data.py's)

In the file the building blocks come first (small helpers, finding the files, reading them, the hub),
and the Splits that resolve_sources builds from them last.

Sources. By default TinyStories from the Hugging Face Hub through `datasets.load_dataset` (splits
train and validation), cached where `datasets` caches. Or local files, for offline machines and
custom corpora: --data / --val_data take a file, a folder or a glob of
- .txt in the official TinyStories layout: documents separated by lines that hold only
  <|endoftext|> (a marker inside a line is then text);
- .txt without such lines: documents separated by the markers inside lines (a story per line
  ending in one, GPT-2's a<|endoftext|>b) where the file has them, unless its blank lines are over
  100 times as many (a stray marker in the text; the log says which it chose when both are
  there); else by blank lines (or lines of spaces and tabs), a long file of neither one document,
  as the log says; all read by our generator through
  `datasets.Dataset.from_generator`, \\r\\n and \\r read as \\n, a BOM (U+FEFF) dropped wherever
  it is (two files joined hold one inside: a marker line behind it is one);
- .jsonl (or .json: one array of records) with a text field (--text_field; --val_text_field for
  --val_data's, where it differs), and .parquet or .arrow (Arrow IPC, as
  `datasets.Dataset.save_to_disk` writes: its folder's state.json and dataset_info.json are left
  out) with a text column ("json", "parquet" and "arrow").
A folder gives all such files under it, except in hidden folders and in the run's --cache_dir and
--out_dir (so `--data .` does not read our own cache and run files), or in another token cache or
run folder of this project's (project_folder: the corpus/cache that `cd corpus; train.py --data .`
made, met by a later `--data corpus`), named in a log line (one named as the source itself, or
as a glob's folder, is refused, naming it); an empty file among them, a
.txt of whitespace alone, or a .jsonl, .json, .parquet or .arrow file of no records, is left out,
with a warning line. A folder or glob whose files name one split in two formats or more
(TinyStories-train.txt beside data/train-*.parquet: a whole hub download holds each split as .txt
and as .parquet) is refused, naming a copy of each: it would read the same text once per copy; one
format's files (a file, or a quoted glob) are read. Files named as a training split beside files
named as a validation or test split are read with a warning (warn_split_names).
Without a validation source, 1 in round(1 / --val_fraction) documents is held out, evenly spread
(documents k-1, 2k-1, ... of --data's files in order: a file added before another shifts the slice
of those after it, which train.py warns of at a resume, runplan.held_out_moved), and the log says
so. Documents are stripped of surrounding whitespace; empty ones are dropped. Line endings are
normalised to \\n (Python's universal newlines) and U+FEFF dropped, in every format: the same text
gives the same tokens from a .txt, a .jsonl, a .parquet or the hub.

How this departs from the obvious version:
- A Split is identified without reading it: its `signature` (each file's path, size and
  modification time, the document rules, the held-out slice) is what data.py's cache keys hold,
  so a cache hit on local files costs a few stat calls (and, where a --val_data file has the size
  of a --data file, a comparison of their bytes: warn_overlap). The `datasets` cache of a file's documents
  is keyed by the same absolute path, size and time (`datasets` alone keys a .jsonl's by its path
  and time).
- A --data that is a pipe (`cat x | ... --data /dev/stdin`, a FIFO) is refused as such: a source
  is read more than once (scanned, then read, and identified by its size and time).
- Bytes that are not UTF-8 in a .txt file are replaced by U+FFFD and counted in the log, per file;
  a file with more than 1% such bytes is refused (it is in another encoding: convert it). .jsonl,
  .parquet and .arrow must be valid UTF-8 (the formats require it) and are refused otherwise.
- An --hf_dataset that is a local folder of .txt files is refused, naming the --data to pass:
  `datasets` reads each line of a .txt as a document (a story's paragraphs apart, its separator
  lines as text). A local folder of parquet or JSON Lines files reads a row per document, as the hub;
  one that `datasets` cannot read (no such split; one split save_to_disk wrote) is named as the
  folder at fault, not the hub or its cache.
- The hub is probed with one request before `datasets` (which retries for ~25 s) is asked, so a
  machine without network fails at once with a line naming --data. HF_HUB_OFFLINE=1 or
  HF_DATASETS_OFFLINE=1 skip the probe and use the `datasets` cache; so does an --hf_dataset that is
  a local folder (`datasets` reads a folder that exists, whatever the hub holds). Such a folder keys
  our caches by its absolute path, and a run saves it so (saved_hf_dataset). A split is read from its
  own files, keyed by each one's path, size and time (and its README.md config's settings); a path
  that is no folder is refused as such. Offline, a bare name that is no folder here is asked of the
  `datasets` cache, which may hold an older version's copy of a folder of that name (`datasets`
  warns that it reads a cached version).
"""

import codecs
import dataclasses
import errno
import filecmp
import glob
import hashlib
import json
import logging
import math
import os
import re
import shlex
import sys
from functools import cache
from pathlib import Path

import numpy as np

import config
import storage
from errors import DataError, first_line
from tokenizer import EOT

DOCUMENT_RULES = 6  # version of how sources split into documents (and empty rows are left out of
# a held-out slice's count): a new one rebuilds their caches (4: \r\n and \r are \n in every format;
# 5: U+FEFF is dropped wherever it is, in every format; 6: a line over a read, a MiB, keeps its spaces;
# test_data's DOCUMENT_DIGESTS holds what each reads)
HELD_OUT_RULES = 2  # version of which rows a held-out slice counts as documents: a new one rebuilds the
# caches of held-out slices alone (2: a row of byte-order marks and whitespace is none, as document() says)
KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
FORMATS = ".txt, .jsonl, .json, .parquet or .arrow"
# compressed files: suffix, magic bytes, format, the command that decompresses it
COMPRESSORS = [(".gz", b"\x1f\x8b", "gzip", "gunzip"), (".bz2", b"BZh", "bzip2", "bunzip2"),
               (".xz", b"\xfd7zXZ\x00", "xz", "unxz"), (".zst", b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
               (".zip", b"PK\x03\x04", "zip", "unzip")]
PACKED = {suffix: (kind, tool) for suffix, _, kind, tool in COMPRESSORS}  # by name (resolve_files)
COMPRESSED = {magic: (kind, tool) for _, magic, kind, tool in COMPRESSORS}  # by bytes (_check_text)
SAVED = ("state.json", "dataset_info.json")  # what `save_to_disk` writes beside its .arrow files: not text
MAX_NON_UTF8 = 0.01  # share of bytes above which a .txt file is refused rather than repaired
READ_CHUNK = 1 << 20  # bytes read at a time when scanning a .txt file
BOM = "\ufeff"  # a byte-order mark, not text wherever it is (two files joined hold one inside): dropped


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'s' * (count != 1)}"


def in_bytes(n: float) -> str:
    for unit in ["B", "KB", "MB", "GB"]:
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def document(text: str) -> str:
    """A document as it is tokenized: \\r\\n and \\r read as \\n and U+FEFF dropped (as a .txt
    file's are, whatever the format), surrounding whitespace stripped."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return (text.replace(BOM, "") if BOM in text else text).strip()


# ---------------------------------------------------------------------------------------------
# Finding the files: a file, a folder or a glob -> the files it names


def _walk(folder: str, hidden: bool = False, kinds=KINDS) -> list[str]:
    """The data files under a folder (hidden ones and those in hidden folders left out, unless
    `hidden`), in linked folders too, but for a link up (a loop); a file reached twice is listed at
    each path (resolve_files keeps the first in sorted order). `kinds`: the suffixes listed (PACKED:
    the compressed files)."""
    found = []

    def visit(path: Path, above: frozenset) -> None:
        if (real := os.path.realpath(path)) in above:
            return
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:  # (a folder we may not read: passed over, as a glob passes it)
            return
        for e in entries:
            if e.name.startswith(".") and not hidden:
                continue
            try:
                folder, file = e.is_dir(), e.is_file()
            except OSError:  # (a link in a loop of links: passed over, as a glob passes it and a broken link)
                continue
            if folder:
                visit(path / e.name, above | {real})
            elif file and Path(e.name).suffix.lower() in kinds:
                found.append(str(path / e.name))  # (Path's join: a.txt under --data ., not ./a.txt)
    visit(Path(folder), frozenset())
    return found


def project_folder(folder) -> str | None:
    """What of this project's `folder` is, told by files that only it writes there: "a token cache"
    (data.py's lock files, .locks/tokenizer-*.lock and .locks/tokens-*.lock, left in place), "a run
    folder" (train.py's run.lock beside other files of a run, or alone: storage.run_folder_files, as
    --resume and --ckpt tell one), or None. Not by the name of a folder or the kinds of its files: a
    folder of the user's is never taken for one of ours."""
    folder = Path(folder)
    locks = folder / ".locks"
    if any(locks.glob("tokenizer-*.lock")) or any(locks.glob("tokens-*.lock")):
        return "a token cache"
    if storage.run_folder_files(folder):
        return "a run folder"
    return None


def _named(folder, what: str) -> str:
    """What project_folder says `folder` is, a run folder's files named (which told it, to look at)."""
    return f"{what} ({', '.join(storage.run_folder_files(folder))})" if what == "a run folder" else what


def _not_ours(folder: str, flag: str) -> None:
    """A folder named as a source (or a glob's folder as typed) that is a token cache or run folder of
    this project's is refused, naming it (and a run folder's files, which told it): its files are what
    this project wrote, not text (one met inside a folder named is left out instead, with a log line:
    _LeftOut)."""
    if what := project_folder(folder):
        named = ", ".join(storage.run_folder_files(folder)) + ": " if what == "a run folder" else ""
        raise DataError(f"{flag}: '{folder}' is {what} of this project's ({named}files train.py wrote, not "
                        f"text); point {flag} at the text instead{_stale_lock(folder) * bool(named)}")


def _stale_lock(folder) -> str:
    """For a run folder that holds text too (files of FORMATS that are none of a run's): the other way
    out, its run.lock deleted. A run that stopped there early left it (an older version did whenever it
    failed early; a run killed still does), and beside the user's own tokenizer.json or train.json it
    makes their folder of text a run's. "" where the folder holds no text, or its run.lock is held (a
    live train.py's, or an import's: not one to delete)."""
    texts = sorted(p.name for p in Path(folder).iterdir() if p.suffix.lower() in KINDS and p.is_file()
                   and p.name not in storage.RUN_FILES)
    lock = Path(folder) / storage.RunFolder.LOCK
    try:
        if not texts or not lock.is_file() or storage.held(lock):
            return ""
    except OSError:  # (a lock we may not open: no advice to delete it)
        return ""
    more = f" and {len(texts) - 1} more" * (len(texts) > 1)
    theirs = " and ".join(n for n in storage.run_folder_files(folder) if n != storage.RunFolder.LOCK)
    return (f", or, if {texts[0]}{more} and {theirs} are yours, delete {lock}, left by a run that stopped "
            "there (or by an older version)")


class _LeftOut:
    """Called on a path: whether resolve_files leaves that file of a folder or glob out for the
    folder it is in. That folder is one of `skip`, the run's --cache_dir and --out_dir (`own`), or a
    token cache or run folder of this project's (project_folder) at or below `base`: the folder `spec`
    names, or a glob's folders as typed (`in_ours`). `ours` maps each such folder of this project's
    that held files to what it is (a run folder's files named), for the log line."""

    def __init__(self, skip, spec: str):
        parts = spec.split(os.sep)
        head = parts[:_folders_that_exist(parts)]
        self.base = Path(spec if os.path.isdir(spec) else os.sep.join(head) or (os.sep if head else "."))
        self.skip = [Path(d).resolve() for d in skip]
        self.kind_of, self.ours = {}, {}  # project_folder of each folder looked at; those that held files

    def own(self, path: str) -> bool:
        return any(Path(path).resolve().is_relative_to(d) for d in self.skip)

    def in_ours(self, path: str) -> bool:
        for folder in [q for q in Path(path).parents if q.is_relative_to(self.base)]:  # (none above base)
            if folder not in self.kind_of:
                self.kind_of[folder] = project_folder(folder)
            if self.kind_of[folder]:
                self.ours[folder] = _named(folder, self.kind_of[folder])
                return True
        return False

    def __call__(self, path: str) -> bool:
        return self.own(path) or self.in_ours(path)

    def refuse(self, raw: list[str], spec: str, flag: str) -> None:
        """A folder or glob whose files `raw` were all left out is refused, saying so (not "holds no
        .txt file" of a folder that held some)."""
        if any(map(self, raw)):
            where = " and ".join(["this run's --out_dir and --cache_dir"] * any(map(self.own, raw))
                                 + [f"this project's token caches and run folders ({_listed(self.ours)})"]
                                 * bool(self.ours))
            raise DataError(f"{flag}: '{spec}' holds no {FORMATS} file outside {where}, which {flag} leaves "
                            "out; check the path, or move the text out of them")


def _no_files_in(spec: str, flag: str, skipped: _LeftOut) -> DataError:
    """The line refusing a folder that gives no file: all left out (`skipped`), or compressed, or in
    hidden folders, or none there."""
    skipped.refuse(_walk(spec), spec, flag)
    if packed := [f for f in _walk(spec, kinds=PACKED) if not skipped(f)]:
        return DataError(f"{flag}: folder '{spec}' holds no {FORMATS} file{_compressed_advice(packed, flag)}")
    hidden = [f for f in _walk(spec, hidden=True) if not skipped(f)]  # (".data/train.txt")
    return DataError(f"{flag}: folder '{spec}' holds no {FORMATS} file" + (
        f" but in hidden folders or files, which a folder leaves out ({hidden[0]}"
        f"{', ...' * (len(hidden) > 1)}); check the path, or name the hidden one" if hidden
        else "; check the path"))


def resolve_files(spec: str, flag: str, skip=(), log=None) -> list[str]:
    """A file, a folder or a glob -> a sorted list of files.

    A folder gives its .txt, .jsonl, .json, .parquet and .arrow files at any depth, and so does each
    folder a glob matches; the glob's other matches are left out, as a folder's are. Folders and
    globs alike leave out:
    - files in hidden folders below the folder named (a glob that names a hidden folder takes its files);
    - the SAVED files of a `save_to_disk` folder (a DatasetDict's folder, which holds every split, is
      refused);
    - files in the `skip` folders: the run's --cache_dir and --out_dir, whose .json files are ours;
    - files in another token cache or run folder of this project's (project_folder) at or below the
      folder named or a glob's folders as typed, with a line to `log` naming them.
    A path that exists is read as typed, and so are the folders of a glob that exist (run[1]/*.txt).
    A file reached by two paths (a symlink beside its target, a hard link) is listed once, at its
    first path. A ~ that the shell left (a quoted '~/corpus/*.txt') is the home folder. Empty files
    are listed: with_text leaves them out. A folder or glob whose files name a split in two formats
    (a hub download's TinyStories-train.txt and data/train-*.parquet: copies) is refused (_one_copy)."""
    spec = storage.expand_home(spec)
    skipped = _LeftOut(skip, spec)
    if os.path.isdir(spec) or (not os.path.isfile(spec) and _glob_pattern(spec)):
        _not_ours(spec if os.path.isdir(spec) else str(skipped.base), flag)

    def wanted(path: str) -> bool:
        p = Path(path)
        if skipped(path):
            return False
        if p.name == "dataset_dict.json":
            raise DataError(_dataset_dict_refusal(p.parent, flag))
        return not (p.name in SAVED and any(p.parent.glob("*.arrow")))

    if os.path.isdir(spec):
        files = sorted(filter(wanted, _walk(spec)))
        if not files:
            raise _no_files_in(spec, flag, skipped)
    elif os.path.isfile(spec):  # before the glob test: a file may be named tiny[1].txt
        files = [spec]
    elif pattern := _glob_pattern(spec):
        matches = glob.glob(pattern, recursive=True)
        found = [m for m in matches if os.path.isfile(m)] + [f for m in matches if os.path.isdir(m)
                                                             for f in _walk(m)]
        raw, found = found, sorted(set(filter(wanted, found)))  # (a set: dir/** matches a file and its dirs)
        files = [f for f in found if Path(f).suffix.lower() in KINDS]  # (the others left out, as in a folder)
        if not files and (packed := sorted({f for f in found if Path(f).suffix.lower() in PACKED} | {
                f for m in matches if os.path.isdir(m) for f in _walk(m, kinds=PACKED) if not skipped(f)})):
            raise DataError(f"{flag}: '{spec}' matches no {FORMATS} file{_compressed_advice(packed, flag)}")
        if not found:
            skipped.refuse(raw, spec, flag)
            fix = _list_advice(spec, flag) or "; check the path or glob"
            raise DataError(f"{flag}: no files match '{spec}'{fix}")
        if not files:
            raise DataError(f"{flag}: '{spec}' matches no {FORMATS} file (only {found[0]}"
                            f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}); check the glob")
    elif os.path.exists(spec):  # a pipe (/dev/stdin of `cat x |`, a FIFO) or a device: read more than once
        raise DataError(f"{flag}: '{spec}' is not a regular file (a pipe or a device), and the text is read "
                        f"more than once; save it to a .txt file and point {flag} at that")
    elif os.path.islink(spec) and _link_loop(spec):
        raise DataError(f"{flag}: '{spec}' is a link that leads back to itself (a loop, through "
                        f"'{os.readlink(spec)}'); fix the link or the path")
    elif os.path.islink(spec):
        raise DataError(f"{flag}: '{spec}' is a link to '{os.readlink(spec)}', which does not exist; fix the "
                        "link or the path")
    elif spec.endswith(("/", os.sep)) and os.path.isfile(spec.rstrip("/" + os.sep)):  # (tab completion's /)
        raise DataError(f"{flag}: '{spec.rstrip('/' + os.sep)}' is a file, not a folder; drop the trailing "
                        f"{spec[-1]}")
    else:
        raise DataError(f"{flag}: no such file '{spec}'{_list_advice(spec, flag) or '; check the path'}")
    first = {}  # a file reached by two paths (a symlink or hard link beside it, a glob through a linked
    for f in files:  # folder): once
        first.setdefault(_identity(f), f)
    files = list(first.values())
    if skipped.ours and log:
        log(f"data: {flag} {spec}: left out {plural(len(skipped.ours), 'folder')} that this project wrote "
            f"({_listed(skipped.ours)})")
    for f in files:
        if (suffix := Path(f).suffix.lower()) in PACKED:  # (a.txt.gz: no other format to convert it to)
            raise DataError(f"{flag}: '{f}' is {PACKED[suffix][0]}-compressed; decompress it "
                            f"({PACKED[suffix][1]} {shlex.quote(f)}) and point {flag} at what it holds")
        if suffix not in KINDS:
            raise DataError(f"{flag}: '{f}' is not {FORMATS}; convert it or leave it out")
    return files if os.path.isfile(spec) else _one_copy(files, spec, flag)


def _compressed_advice(files: list[str], flag: str) -> str:
    """The end of the line refusing a folder or glob of compressed files alone (a.txt.gz: text, but
    not readable as it is): which they are, and how to decompress them."""
    first, more = files[0], len(files) - 1
    tool = PACKED[Path(first).suffix.lower()][1]
    them, hold = ("them", "they hold") if more else ("it", "it holds")
    return (f", only compressed ones ({first}{f' and {more} more' if more else ''}); decompress {them} "
            f"({tool} {shlex.quote(first)}{', ...' * bool(more)}) and point {flag} at what {hold}")


def _listed(folders: dict) -> str:
    """Folders and what each is (`{path: what}`), the first three of them, in a line."""
    items = [f"{folder}: {what}" for folder, what in sorted(folders.items())]
    return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")


def _list_advice(spec: str, flag: str) -> str | None:
    """The end of the line refusing a list of sources in one `spec` ('a.txt,b.txt', 'a.txt b.txt': "no
    such file"), where each of its parts names something on its own; else None. A comma or space in
    the name of a folder that exists is the path's own ('my corpus/x.txt' is no list of 'my' and
    'corpus/x.txt'), not a list's."""
    path = spec.split(os.sep)
    if re.search(r"[,\s]", os.sep.join(path[:_folders_that_exist(path)])):
        return None
    parts = [p for p in re.split(r"[,\s]+", spec) if p]
    if len(parts) < 2 or not all(glob.glob(_glob_pattern(part) or glob.escape(part), recursive=True)
                                 for part in map(storage.expand_home, parts)):
        return None
    named = " and ".join(parts) if len(parts) == 2 else f"{', '.join(parts[:2])} and {len(parts) - 2} more"
    return (f", but {named} each exist: {flag} takes one file, folder or glob, "
            f"not a list; put the files in one folder and pass that, or a quoted glob that matches them "
            f"({flag} 'corpus/*.txt')")


def _link_loop(path: str) -> bool:
    """Whether following the link `path` comes back to a link already followed (a -> b -> a)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def _glob_pattern(spec: str) -> str | None:
    """The glob that `spec` is, its folders that exist as typed read as such (run[1]/*.txt: the
    folder run[1], not run1), or None where the rest holds no *, ? or [ (a path, not a glob)."""
    parts = spec.split(os.sep)
    head = _folders_that_exist(parts)
    rest = os.sep.join(parts[head:])
    if not any(c in rest for c in "*?["):
        return None
    return glob.escape(os.sep.join(parts[:head]) + os.sep) + rest if head else rest


def _folders_that_exist(parts: list[str]) -> int:
    """How many of a path's `parts`, from the first, name a folder that exists (the last part aside)."""
    head = 0
    while head < len(parts) - 1 and os.path.isdir(os.sep.join(parts[:head + 1]) or os.sep):
        head += 1
    return head


def _dataset_dict_refusal(folder: Path, flag: str) -> str:
    """The line refusing a DatasetDict's folder (all its splits in one): it names the split `flag`
    should read (its train split for --data, its validation split for --val_data) and the option
    for another."""
    try:
        splits = json.loads((folder / "dataset_dict.json").read_bytes())["splits"]
    except (OSError, ValueError, LookupError, TypeError):
        splits = []
    names = ("train",) if flag == "--data" else ("validation", "valid", "val", "test")
    split = next((s for s in names if s in splits), None) or next(iter(splits), names[0])
    other = "--val_data" if flag == "--data" else "--data"
    return (f"{flag}: '{folder}' is a DatasetDict saved by save_to_disk; point {flag} at one split's folder "
            f"({folder / str(split)}), {other} at another")


def _identity(path: str) -> tuple[int, int] | str:
    """What a file is, whatever its name: a symlink and a hard link are the file they name. Where
    the file system gives no inode number (0: FAT, some network shares on Windows), its real path:
    else every file there would be one file, and all but the first left out."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


def with_text(files: list[str], spec: str, flag: str, log) -> list[str]:
    """resolve_files' files without the empty ones (0 bytes), each left out with a warning line, so
    that one stray empty file does not stop a run on a folder or glob (nor is part of the split's
    signature: text written into it later is a new source). An empty file named alone, or a folder
    or glob of empty files alone, is refused. (A .txt of whitespace alone, and a file of no records,
    is left out when it is read: load_files.)"""
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty and os.path.isfile(spec):
        raise DataError(f"{flag}: '{spec}' is empty; remove it or point {flag} at text")
    if empty and len(empty) == len(files):
        raise DataError(f"{flag}: every file of '{spec}' is empty ({empty[0]}{', ...' * (len(empty) > 1)}); "
                        f"point {flag} at text")
    for f in empty:
        log(f"data: warning: {flag}: '{f}' is empty; left out of {spec}")
    return [f for f in files if f not in empty]


# ---------------------------------------------------------------------------------------------
# Reading the files: each a `datasets.Dataset` with one "text" column, joined by load_files


class NoText(DataError):
    """A .txt file with no text but whitespace (and separators): refused named alone, left out of a
    folder or glob with a warning line (load_files), as with_text leaves out an empty file. `told`:
    what the warning line says of the file."""

    def __init__(self, flag: str, path: str, what: str, fix: str = "check the file"):
        self.told = f"has no usable text ({what})"
        super().__init__(f"{flag}: '{path}' {self.told}; {fix}")


class NoRecords(NoText):
    """A .jsonl, .json, .parquet or .arrow file of no records (blank lines, an empty array, no rows):
    as NoText, refused named alone and left out of a folder or glob with a warning line. `problem`:
    _json_problem's, _json_array_problem's or _table_problem's line."""

    def __init__(self, flag: str, path: str, problem: str):
        self.told = problem.split("; ")[0]
        DataError.__init__(self, f"{flag}: {path}: {problem}")


NO_RECORDS = ("has no records", "has no rows")  # how the lines of a file of no records start


# .txt files: scanned once for their layout, then split into documents as a stream


SPACES = b" \t\f\v"  # spaces on a line (the newline aside)
MARKER_LINE = re.compile(b"(?m)^[" + SPACES + b"]*" + re.escape(EOT.encode()) + b"[" + SPACES + b"]*\n")
BLANK_LINE = re.compile(b"(?m)^[" + SPACES + b"]*\n")
SEPARATORS = {"lines": re.compile(MARKER_LINE.pattern.decode()),  # (the text split's: the scan's, decoded)
              "blank": re.compile(BLANK_LINE.pattern.decode()), "inline": re.compile(re.escape(EOT))}
INLINE_SHARE = 100  # markers inside lines separate documents unless blank lines are this many times more
ONE_DOCUMENT_LINES = 1000  # lines from which a file with no separator, one document, is said to be one


def _check_text(path, flag: str, head: bytes, size: int, nul: int, bad: int, by_four) -> None:
    """A DataError for a .txt file that is not UTF-8 text, from its first bytes and its counts of NUL
    bytes (`by_four`: of them at offsets 0, 1, 2 and 3 modulo 4) and of bytes that are not UTF-8:
    compressed, UTF-32, UTF-16, a binary file, another encoding."""
    packed = [kind for magic, kind in COMPRESSED.items() if head.startswith(magic)]
    if packed and max(nul, bad) > MAX_NON_UTF8 * size:  # (not text: the magic bytes are no accident)
        raise DataError(f"{flag}: '{path}' is {packed[0][0]}-compressed, not text; decompress it "
                        f"({packed[0][1]}) and point {flag} at the text")
    # UTF-32 has a byte-order mark (before UTF-16's: FF FE 00 00 starts with FF FE), or NULs in 3 of
    # every 4 bytes of Latin text, none (or nearly) at offsets 0 (little-endian) or 3 modulo 4
    utf32 = head[:4] in (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE) or (
        sorted(by_four)[1] >= 0.9 * size / 4 and min(by_four) * 20 <= max(by_four))
    if nul > MAX_NON_UTF8 * size and utf32:
        raise DataError(f"{flag}: '{path}' is not UTF-8 text ({nul:,} of {size:,} bytes are NUL: UTF-32?); "
                        "convert it, e.g. iconv -f utf-32 -t utf-8")
    # UTF-16 has a byte-order mark, or its NULs (the high bytes of ASCII: half of Latin text's bytes,
    # fewer in other scripts) nearly all at odd offsets (little-endian) or at even ones; a binary
    # file's (a program, an image) fall on both; one NUL falls on one parity in any file: a sign of UTF-16
    # beside bytes that are not UTF-8 (the newline of CJK text), not in UTF-8 text (a\0b\n)
    odd_nul = by_four[1] + by_four[3]
    utf16 = head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) or (
        (nul > 1 or bad) and nul <= 0.55 * size and max(odd_nul, nul - odd_nul) >= 0.95 * nul)
    if nul > MAX_NON_UTF8 * size and utf16:
        raise DataError(f"{flag}: '{path}' is not UTF-8 text ({nul:,} of {size:,} bytes are NUL: UTF-16?); "
                        "convert it, e.g. iconv -f utf-16 -t utf-8")
    if nul > MAX_NON_UTF8 * size:
        raise DataError(f"{flag}: '{path}' is not text ({nul:,} of {size:,} bytes are NUL: a binary file?); "
                        f"point {flag} at text")
    if bad > MAX_NON_UTF8 * size:
        raise DataError(f"{flag}: '{path}' is not UTF-8 text ({bad:,} of {size:,} bytes are not UTF-8); "
                        "convert it, e.g. iconv -f latin1 -t utf-8")


def _scan_txt(path: str, flag: str) -> tuple[str, int, str | None]:
    """One streaming pass over a .txt file: (its layout, bytes that are not UTF-8, a line saying
    which of two signals it followed, or None). The layout: "lines" where lines holding only
    <|endoftext|> separate documents (the official one; a marker inside a line is then text), else
    "inline" where markers inside lines do (one story per line ending in it, or GPT-2's
    a<|endoftext|>b), unless the file has over INLINE_SHARE times as many blank lines (a stray
    marker in a file of blank-line documents: text), else "blank" (blank lines). Line endings and
    BOMs are read as the text-mode split reads them (\\r\\n and \\r are \\n, every U+FEFF dropped).

    A long file with no separator at all is one document, and the line says so (_layout).
    Refuses a file with no text besides whitespace and markers, or with over 1% non-UTF-8 bytes.
    """
    marker = EOT.encode()
    keep = len(marker) - 1  # bytes of a long line kept: a marker may start in them
    utf8 = codecs.getincrementaldecoder("utf-8")("ignore")  # drops exactly the invalid bytes
    size = valid = nul = markers = marker_lines = blank = newlines = 0
    by_four = [0, 0, 0, 0]  # NUL bytes at offsets 0, 1, 2 and 3 modulo 4 (UTF-16's and UTF-32's fall on some)
    has_text = False
    carry = b""  # the line the last chunk ended in (newlines made \n), and a \r that may precede a \n

    def count(lines: bytes):  # whole lines, each ending in \n
        nonlocal markers, marker_lines, blank, newlines, has_text
        markers += lines.count(marker)
        newlines += lines.count(b"\n")
        marker_lines += len(MARKER_LINE.findall(lines))
        blank += len(BLANK_LINE.findall(lines))
        # text as the split judges a document: str.strip's whitespace (U+3000, U+00A0 too) is none
        # ("ignore": a character cut by a long line's carry; a lone bad byte is no text to train on)
        has_text = has_text or bool(lines.replace(marker, b"").decode("utf-8", "ignore").strip())

    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0)
        while chunk := f.read(READ_CHUNK):
            if n := chunk.count(0):  # valid UTF-8, but text has none: UTF-16's fall on one parity
                nul += n
                for i in range(4):
                    by_four[(size + i) % 4] += chunk[i::4].count(0)
            size += len(chunk)
            valid += len(utf8.decode(chunk).encode())
            buf = carry + chunk  # (a BOM cut by the chunk's end is whole in the next one's carry)
            held = b"\r" if buf.endswith(b"\r") else b""  # (its \n may come in the next chunk; and the
            # start of a BOM the chunk cut: a long marker line's bytes to come, which made it text)
            held = held or next((buf[-n:] for n in (2, 1) if buf.endswith(codecs.BOM_UTF8[:n])), b"")
            buf = buf[:len(buf) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            buf = buf.replace(codecs.BOM_UTF8, b"")
            cut = buf.rfind(b"\n") + 1
            count(buf[:cut])
            tail = buf[cut:]
            if len(tail) > READ_CHUNK:  # a long line: kept as short as tells what it may be
                text = tail.strip(SPACES)
                if len(text) > len(marker):  # no separator, whatever follows: counted now, but for its
                    last = tail.rfind(marker)  # last bytes, where a marker may begin (none ends there)
                    floor = last + len(marker) if last >= 0 else 0
                    start = max(len(tail) - keep, floor)
                    while floor < start < len(tail) and 0x80 <= tail[start] < 0xC0:  # (a character whole)
                        start -= 1
                    markers += tail.count(marker)
                    counted = tail[:start].replace(marker, b"")
                    has_text = has_text or bool(counted.decode("utf-8", "ignore").strip())
                    tail = b"\x1f" + tail[start:]  # (\x1f: whitespace to str.strip, so no text; not in
                    # SPACES: no blank or marker line)
                else:  # spaces around at most a marker: their first and last tell what the line is
                    start = tail.find(text) if text else len(tail)  # (as _txt_documents reads it)
                    tail = tail[:min(start, 1)] + text + tail[start + len(text):][-1:]
            carry = tail + held
    valid += len(utf8.decode(b"", final=True).encode())
    if carry.replace(b"\r", b""):
        count(carry.replace(b"\r", b"") + b"\n")
    bad = size - valid
    _check_text(path, flag, head, size, nul, bad, by_four)
    if not has_text:
        bytes_too = f", {plural(bad, 'byte')} not UTF-8" if bad else ""
        raise NoText(flag, path, f"only whitespace{bytes_too}"
                     f"{' and ' + EOT + ' separators' if markers else ''}")
    layout, why = _layout(markers, marker_lines, blank, newlines)
    return layout, bad, why


def _layout(markers: int, marker_lines: int, blank: int, lines: int) -> tuple[str, str | None]:
    """A .txt file's layout from its counts of markers, marker lines, blank lines and lines (as
    _scan_txt says), and a line saying which of two signals it followed (of marker lines too, where
    blank lines are over INLINE_SHARE times as many), or that a long file with no separator at all is
    one document (a document per line is no layout of ours), or None."""
    if marker_lines:  # (blank lines far more: a stray marker line, or books; said, not judged)
        return "lines", (f"{plural(marker_lines, EOT + ' line')} and {plural(blank, 'blank line')}: "
                         "documents split at the marker lines alone, the blank lines kept inside them"
                         if blank > INLINE_SHARE * marker_lines else None)
    inline = markers and markers * INLINE_SHARE >= blank
    if not markers and not blank and lines >= ONE_DOCUMENT_LINES:
        return "blank", (f"{lines:,} lines, none blank and no {EOT}: read as one document; if each line is "
                         f"a document, put a blank line after each (sed G) or end each with {EOT}")
    both = f"{markers:,} {EOT} inside lines and {blank:,} blank lines" if markers and blank else None
    why = both and (f"{both}: documents split at the markers" if inline else
                    f"{both}: documents split at the blank lines, the markers kept as text")
    return ("inline" if inline else "blank"), why


def _txt_documents(path: str, stamp: str, layout: str):
    """Documents of a .txt file, split as _scan_txt's `layout` says. `stamp`: size, mtime and
    DOCUMENT_RULES, for the cache key. Every BOM (U+FEFF) is dropped; line endings are read as \\n
    (universal newlines). Each part of the text is split once: a document (or a line) of any length
    streams through."""
    separator, keep, lines = SEPARATORS[layout], len(EOT) - 1, layout != "inline"
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        doc: list[str] = []  # the document being read, in parts
        line, mid = "", False  # the end of the last chunk, not yet split; mid: it goes on a line whose
        # start is already in `doc`, behind a "\x01" that keeps the rest from reading as a line's start
        aside = None  # (short, parts): `line` starts with a long line of spaces around at most a marker,
        # held as short as tells whether it separates documents; its text, kept aside, if it does not

        def split(text: str) -> tuple[list[str], str]:  # the documents `text` ends, and its last part
            parts = separator.split(text)
            if mid and text:
                parts[0] = parts[0][1:]
            if aside and parts[0].startswith(aside[0]):  # (a separator there would leave "": short is not)
                parts[0] = "".join(aside[1]) + parts[0][len(aside[0]):]
            return parts[:-1], parts[-1]

        while chunk := f.read(READ_CHUNK):
            buf = line + chunk.replace(BOM, "")
            if not lines:  # markers inside lines: all split now, but the last characters of what
                done, last = split(buf)  # follows the last one, where a marker may begin
                line = last[max(0, len(last) - keep):]
                last = last[:len(last) - len(line)]
            else:  # whole lines (a separator is one)
                cut, moved, held = buf.rfind("\n") + 1, False, None
                rest = buf[cut:]
                if len(rest) > READ_CHUNK:  # a long line
                    text = rest.strip(SPACES.decode())
                    if len(text) > len(EOT) or (mid and cut == 0):  # no separator, whatever follows (or
                        cut, moved = len(buf), True  # the rest of a line that is none): into the document
                    else:  # spaces around at most a marker: their first and last tell what the line is
                        start = rest.find(text) if text else len(rest)  # (text starts with no space)
                        short = rest[:min(start, 1)] + text + rest[start + len(text):][-1:]
                        held = (short, aside[1] + [rest[len(aside[0]):]] if aside and cut == 0 else [rest])
                        buf = buf[:cut] + short
                done, last = split(buf[:cut])
                aside = held or (aside if cut == 0 else None)
                mid, line = (True, "\x01") if moved else (mid and cut == 0, buf[cut:])
            for part in done:
                text = "".join(doc) + part
                if text.strip():
                    yield {"text": text}
                doc = []
            doc.append(last)
        done, last = split(line + "\n")  # (the last line, with the newline it may lack)
        for part in [*done, last]:
            text = "".join(doc) + part
            doc = []
            if text.strip():
                yield {"text": text}


# Records (.jsonl, .json, .parquet, .arrow): why `datasets` could not read a file, in words


def _field_option(flag: str) -> str:
    """The option that names the text field of `flag`'s files: --val_data's has its own."""
    return "--val_text_field" if flag == "--val_data" else "--text_field"


LONE_SURROGATE = ("holds a lone surrogate (an escape such as \\ud83d without its pair: half of a character, "
                  "as text cut inside an emoji)")
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # (paired or not: json.loads tells)


def _json_problem(path: str, field: str, flag: str) -> str | None:
    """The first line of a JSON Lines file that has no string `field`, described, or that it has no
    records (blank lines only); None if all do."""
    records = 0
    with open(path, "rb") as f:  # (lines end in \n, \r\n or a lone \r, as pyarrow reads them)
        lines = (part for line in f for part in line.removesuffix(b"\n").removesuffix(b"\r").split(b"\r"))
        for n, line in enumerate(lines, 1):
            if n == 1:
                line = line.removeprefix(codecs.BOM_UTF8)  # (pyarrow reads past a BOM: so do we)
            if not line.strip():
                continue
            records += 1
            if line.startswith(codecs.BOM_UTF8):  # (pyarrow reads one only at the start of the file)
                return (f"line {n} starts with a byte-order mark (U+FEFF: files joined?), which pyarrow "
                        "reads only at the start of the file; remove it")
            try:
                record = json.loads(line.decode())  # (json.loads would take UTF-16 bytes: pyarrow does not)
            except UnicodeDecodeError:
                return f"line {n} is not UTF-8; convert the file to UTF-8"
            except ValueError:
                return f"line {n} is not valid JSON; fix or remove it"
            if _lone_surrogate_in(record):  # (json.loads takes "\ud83d" alone: pyarrow does not)
                return f"line {n} {LONE_SURROGATE}; fix or remove the line"
            if not isinstance(record, dict) or field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else _json_type(record)
                fix = (_nested_fix(record, field, path, flag)
                       or f"every line needs one, or pass {_field_option(flag)} NAME")
                return f"line {n} has no '{field}' field (it has: {keys or 'nothing'}); {fix}"
            if not isinstance(record[field], str):
                fix = (_nested_fix(record, field, path, flag)
                       or f"fix the line or pass {_field_option(flag)} NAME")
                return f"line {n}: '{field}' is {_json_type(record[field])}, not text; {fix}"
    return None if records else f"has no records (only blank lines); remove it or point {flag} at text"


def _nested_fix(record, field: str, path: str, flag: str, array: bool = False) -> str | None:
    """For a record whose text is inside an object ({"meta": {"text": ...}}), which no text field
    option names (--text_field meta.text, meta, or text): the jq command that lifts it out into a
    "text" field of JSON Lines (`array`: of a .json array's records), and what to pass then; else None."""
    if not isinstance(record, dict):
        return None

    def text_at(keys):
        obj = record
        for key in keys:
            obj = obj.get(key) if isinstance(obj, dict) else None
        return isinstance(obj, str)
    inside = record.get(field) if isinstance(record.get(field), dict) else {}
    strings = sorted((k for k, v in inside.items() if isinstance(v, str)),
                     key=lambda k: (k != "text", -len(inside[k])))  # (text, or the longest: not an id)
    paths = [field.split(".")] * ("." in field) + [[field, k] for k in strings[:1]] + [
        [k, field] for k, v in record.items() if isinstance(v, dict)]
    keys = next((p for p in paths if text_at(p)), None)
    if keys is None:
        return None
    expr = "".join(f".{k}" if re.fullmatch(r"[A-Za-z_]\w*", k, re.ASCII)
                   else "." * (i == 0) + f"[{json.dumps(k)}]"  # (.a["b c"]: jq 1.6 takes no .a.["b c"])
                   for i, k in enumerate(keys))
    out = f"{Path(path).with_suffix('')}-text.jsonl"
    option = _field_option(flag)
    return (f"its text is inside '{'.'.join(keys)}', and nested fields are not read; lift it out (jq -c "
            f"{shlex.quote(('.[] | ' if array else '') + '{text: ' + expr + '}')} {shlex.quote(path)} > "
            f"{shlex.quote(out)}) and point {flag} at that" + f" without {option}" * (field != "text"))


def _lone_surrogate_problem(path: str) -> str | None:
    """The row of a .json array that holds a lone surrogate, which `datasets` reads with that half
    character silently dropped (a .jsonl's line is refused: _json_problem), or None. The file is
    parsed only where its bytes hold a surrogate's escape."""
    with open(path, "rb") as f:
        raw = f.read()
    if not SURROGATE_ESCAPE.search(raw):
        return None
    try:
        data = json.loads(raw.removeprefix(codecs.BOM_UTF8).decode())
    except ValueError:  # (JSON Lines in a .json, which pyarrow read: it refuses a lone surrogate)
        return None
    for row, record in enumerate(data if isinstance(data, list) else [data]):
        if _lone_surrogate_in(record):
            return f"row {row} {LONE_SURROGATE}; fix or remove the row"
    return None


def _lone_surrogate_in(record) -> bool:
    """Whether a record json.loads read holds a lone surrogate (an escaped half of a UTF-16 pair)."""
    try:
        json.dumps(record, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _json_type(value) -> str:
    """A JSON value's type in words for an error line: null for None (not NoneType)."""
    return "null" if value is None else type(value).__name__


def _json_array_problem(path: str, field: str, flag: str) -> str | None:
    """Why a .json file is no array of records with a string `field`: not JSON (JSON Lines, which
    `datasets` reads in a .json too, get _json_problem's line), an empty array (`datasets` says
    "corresponds to no data"), or the first record without the field as text; None otherwise (an
    object: _json_object_problem's). Read whole: only after `datasets` failed on it."""
    with open(path, "rb") as f:
        raw = f.read().removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode()  # (json.loads would take UTF-16 bytes: `datasets` does not)
    except UnicodeDecodeError:
        return "is not UTF-8; convert the file to UTF-8"
    if not text.strip():  # (whitespace: JSON Lines of blank lines, as _json_problem says)
        return _json_problem(path, field, flag)
    try:
        data = json.loads(text)
    except ValueError as e:
        try:  # JSON Lines: the first line is JSON by itself
            json.loads(next((line for line in text.splitlines() if line.strip()), ""))
            return _json_problem(path, field, flag)
        except ValueError:
            return f"is not valid JSON ({e}); fix the file"
    if data == []:
        return f"has no records (an empty array); remove it or point {flag} at text"
    option = _field_option(flag)
    for row, record in enumerate(data if isinstance(data, list) else []):
        if not isinstance(record, dict) or field not in record:
            keys = ", ".join(record) if isinstance(record, dict) else _json_type(record)
            fix = (_nested_fix(record, field, path, flag, array=True)
                   or f"every record needs one, or pass {option} NAME")
            return f"row {row} has no '{field}' field (it has: {keys or 'nothing'}); {fix}"
        if record[field] is None:
            return f"row {row}: '{field}' is empty (null); fill or drop the row"
        if not isinstance(record[field], str):
            fix = _nested_fix(record, field, path, flag, array=True) or f"fix the row or pass {option} NAME"
            return f"row {row}: '{field}' is {_json_type(record[field])}, not text; {fix}"
    return None


def _json_object_problem(path: str, field: str, flag: str) -> str | None:
    """For a .json file that is one object holding the records in a list ({"data": [...]}, which
    `datasets` reads as one row of lists): that, the jq command that makes it JSON Lines, and the
    --text_field (--val_text_field for --val_data) that reads those lines where it is not `field`
    (--text_field data named the list); None otherwise. Read whole: only after the file was refused."""
    try:
        with open(path, "rb") as f:
            obj = json.load(f)
    except ValueError:
        return None
    lists = {k: v for k, v in obj.items() if isinstance(v, list) and v} if isinstance(obj, dict) else {}
    records = [k for k, v in lists.items() if isinstance(v[0], dict)]
    texts = [k for k, v in lists.items() if isinstance(v[0], str)]
    key = next((k for k in records if field in lists[k][0]), None) or next(iter(records + texts), None)
    if key is None:
        return None
    expr = (f".{key}[]" if re.fullmatch(r"[A-Za-z_]\w*", key, re.ASCII) else f".[{json.dumps(key)}][]") \
        + ("" if key in records else f" | {{{json.dumps(field)}: .}}")
    out = Path(path).with_suffix(".jsonl")
    what = "records" if key in records else "texts"
    record = lists[key][0] if key in records else {field: ""}  # (texts become records with `field`)
    strings = [k for k, v in record.items() if isinstance(v, str)]  # the longest first: the text, not an id
    strings.sort(key=lambda k: -len(record[k]))
    name = field if field in record else next((k for k in ["text", *strings] if k in strings), field)
    option = _field_option(flag)  # (no --val_text_field reads --text_field's field, maybe not "text")
    then = "" if name == field else f" with {option} {shlex.quote(name)}" + (
        " (or no --text_field)" if name == "text" and option == "--text_field" else "")
    return (f"is one JSON object with the {what} in its '{key}' list, not an array of records; convert it "
            f"to JSON Lines (jq -c {shlex.quote(expr)} {shlex.quote(path)} > {shlex.quote(str(out))}) and "
            f"point {flag} at that{then}")


def _table_problem(path: str, kind: str, flag: str) -> str | None:
    """Why `datasets` could not read a parquet or Arrow file, in words, where pyarrow can tell."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def arrow_rows():  # (the stream format save_to_disk writes, or the file format)
        try:
            with pa.memory_map(path) as f:
                return pa.ipc.open_stream(f).read_all().num_rows
        except pa.ArrowInvalid:
            with pa.memory_map(path) as f:
                return pa.ipc.open_file(f).read_all().num_rows
    try:
        rows = pq.ParquetFile(path).metadata.num_rows if kind == "parquet" else arrow_rows()
    except Exception as e:
        return (f"is not {'a parquet' if kind == 'parquet' else 'an Arrow'} file, or a damaged one "
                f"({first_line(e)}); replace it or leave it out")
    return f"has no rows; remove it or point {flag} at text" if rows == 0 else None


# One file, then a list of them


def _load_file(path: str, flag: str, field: str, cache_dir: str, log):
    """One local file as a `datasets.Dataset` with a "text" column, cached by `datasets` in cache_dir."""
    _no_bars_in_logs()
    kind = KINDS[Path(path).suffix.lower()]
    if kind == "text":
        return _load_txt(path, flag, cache_dir, log)
    return _load_records(path, kind, flag, field, cache_dir)


def _no_bars_in_logs() -> None:
    """No `datasets` progress bars where standard error is no terminal (a log file): the tokenization
    bar follows the same rule. `datasets` is imported on first use: ~1 s, and a cache hit of
    data.prepare() never needs it."""
    import datasets

    if not sys.stderr.isatty():
        datasets.disable_progress_bars()


def _load_txt(path: str, flag: str, cache_dir: str, log):
    """A .txt file's documents, scanned for their layout (and refused where it is no text), then
    split by our generator."""
    import datasets

    layout, bad, why = _scan_txt(path, flag)
    if why:
        log(f"data: {path}: {why}")
    if bad:
        log(f"data: warning: {path}: {plural(bad, 'byte')} not UTF-8, replaced by U+FFFD")
    st = os.stat(path)
    try:  # `datasets` keys its cache by gen_kwargs: the path is absolute, as the same name typed in
        # another folder is another file, of the same size and time maybe; the stamp holds the rules (it
        # fingerprints _txt_documents by name, not code: an earlier version's documents came back)
        stamp = f"{st.st_size}:{st.st_mtime_ns}:rules {DOCUMENT_RULES}"
        return datasets.Dataset.from_generator(
            _txt_documents, features=datasets.Features({"text": datasets.Value("string")}),
            cache_dir=cache_dir, gen_kwargs={"path": os.path.abspath(path), "stamp": stamp, "layout": layout})
    except Exception as e:
        if damaged := _damaged_cache(e, cache_dir):
            raise damaged from None
        raise


def _load_records(path: str, kind: str, flag: str, field: str, cache_dir: str):
    """A .jsonl, .json, .parquet or .arrow file's records through `datasets.load_dataset`, their `field`
    as the "text" column; where `datasets` fails, or the column is no text, a line saying why."""
    import datasets

    jsonl = Path(path).suffix.lower() == ".jsonl"  # (_json_problem reads lines: a .json array has none)
    library_log = logging.getLogger("datasets")
    level = library_log.level
    library_log.setLevel(logging.CRITICAL)  # it logs a failed read before raising: ours is the one line
    st = os.stat(path)  # (`datasets` keys its cache by path and mtime alone: text of another size under
    stamp = f"{st.st_size}-{st.st_mtime_ns}"  # the old time, as `cp -p` leaves it, came from the old cache)
    try:
        ds = datasets.load_dataset(kind, name=stamp, data_files=path, split="train", cache_dir=cache_dir)
    except Exception as e:
        cause = storage.os_error_in(e)
        if cause and (cause.errno in storage.NO_ROOM or storage.refused_in(cause, cache_dir)):
            raise  # the cache it writes, not the file: data._cache_writes says so
        if damaged := _damaged_cache(e, cache_dir):
            raise damaged from None
        if kind != "json":
            problem = _table_problem(path, kind, flag)
        else:
            problem = _json_problem(path, field, flag) if jsonl else (
                _json_array_problem(path, field, flag) or _json_object_problem(path, field, flag))
        if problem and problem.startswith(NO_RECORDS):  # (left out of a folder or glob: load_files)
            raise NoRecords(flag, path, problem) from None
        raise DataError(f"{flag}: {path}: {problem or 'cannot read it (' + first_line(_reason(e)) + ')'}") \
            from None
    finally:
        library_log.setLevel(level)
    if kind == "json" and not jsonl and (problem := _lone_surrogate_problem(path)):  # (as a .jsonl's line is)
        raise DataError(f"{flag}: {path}: {problem}")
    if problem := _column_problem(ds, field, option=_field_option(flag)):
        if jsonl:  # the line at fault, where it is one
            problem = _json_problem(path, field, flag) or problem
        elif kind == "json":  # records inside an object (no --text_field reads them), or the row at fault
            # (or the text nested in an object, where no record has the field: _json_array_problem)
            problem = (_json_object_problem(path, field, flag) or _json_array_problem(path, field, flag)
                       or problem)
        raise DataError(f"{flag}: {path}: {problem}")
    feature = ds.features[field]
    ds = ds.select_columns([field])
    if field != "text":
        ds = ds.rename_column(field, "text")
    return ds.cast_column("text", datasets.Value("string")) if feature.dtype != "string" else ds


class DamagedCache(DataError):
    """`datasets` failing to read back its own cache of a file (_damaged_cache): the cache's fault, not
    a source file's, so a folder's advice to name the text alone (_local_split) is not added to it."""


def _damaged_cache(e: BaseException, cache_dir: str) -> DataError | None:
    """The DataError for `datasets` failing to read back its own cache of a file (an .arrow file in
    cache_dir cut short, altered or gone: "Expected to be able to read ... bytes", "Tried reading
    schema message", "[Errno 2] Failed to open local file"), told by what failed (pyarrow, an OSError
    without a number, or one of a file not found) and where: in datasets' ArrowReader, which reads only
    the cache, not our files. None for any other failure: an OS error with another number
    (permissions, a full disk), a split of no rows ("corresponds to no data")."""
    import pyarrow as pa

    for error in (e, e.__cause__ or e.__context__):
        if not isinstance(error, pa.ArrowException) and not (
                isinstance(error, OSError) and error.errno in (None, errno.ENOENT)):
            continue
        tb, files = error.__traceback__, []
        while tb is not None:  # (the file it read, where a frame of the reader names it)
            if Path(tb.tb_frame.f_code.co_filename).parts[-2:] == ("datasets", "arrow_reader.py"):
                files.append(tb.tb_frame.f_locals.get("filename"))
            tb = tb.tb_next
        if files:
            what = next((f"{f}: " for f in reversed(files) if isinstance(f, str)), "")
            return DamagedCache(f"the datasets cache in {cache_dir} is damaged ({what}{first_line(error)}); "
                                f"delete that folder (rm -r {shlex.quote(cache_dir)}: it is made again from "
                                "the text) and run again")
    return None


def _reason(e: BaseException) -> BaseException:
    """The error behind `datasets`' DatasetGenerationError ("An error occurred while generating the
    dataset", which says nothing): pyarrow's, which names the fault and its row."""
    while type(e).__name__ == "DatasetGenerationError" and (e.__cause__ or e.__context__):
        e = e.__cause__ or e.__context__
    return e


def _column_problem(ds, field: str, utf8: bool = True, option: str = "--text_field") -> str | None:
    """Why column `field` of a loaded dataset is not text a run can read (missing, not strings,
    null rows, with utf8: bytes that are not UTF-8, which pyarrow keeps as a .jsonl has them), or
    None. `option` is the one that names the field."""
    if field not in ds.column_names:
        return f"has no column '{field}' (it has: {', '.join(ds.column_names)}); pass {option} NAME"
    feature = ds.features[field]
    if getattr(feature, "dtype", None) not in ("string", "large_string", "string_view"):
        return f"column '{field}' holds {feature}, not text; pass {option} NAME"
    column = ds.data.column(field)
    if column.null_count:
        row = column.is_null().to_pylist().index(True)
        return f"row {row}: '{field}' is empty (null); fill or drop the row"
    if utf8:
        try:
            column.validate(full=True)
        except Exception:
            return f"'{field}' holds bytes that are not UTF-8; convert the file to UTF-8"
    return None


def load_files(files: list[str], flag: str, text_field: str = "text", cache_dir: str | None = None,
               log=print, spec: str = ""):
    """Local files as one `datasets.Dataset` with a "text" column: one row per document, file order.
    Of a folder or glob `spec`, a .txt file of whitespace alone (NoText), or a .jsonl, .json, .parquet
    or .arrow file of no records (NoRecords), is left out with a warning line, as with_text leaves out
    an empty one; where every file is such, the folder is refused."""
    import datasets

    parts, blank, records = [], [], False
    for f in files:
        try:
            parts.append(_load_file(f, flag, text_field, cache_dir, log))
        except NoText as e:
            if not spec or os.path.isfile(spec):
                raise
            blank.append(f)
            records = records or isinstance(e, NoRecords)
            log(f"data: warning: {flag}: '{f}' {e.told}; left out of {spec}")
    if not parts:
        raise NoText(flag, spec, f"every file holds only whitespace{', no records' * records} or nothing: "
                     f"{blank[0]}{', ...' * (len(blank) > 1)}", f"point {flag} at text")
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


# ---------------------------------------------------------------------------------------------
# The hub: an --hf_dataset, a hub name or a local folder


TRAIN_LOCALLY = "pass --data FILE (and --val_data FILE) to train on local text"
EVALUATE_LOCALLY = "pass --val_data FILE to evaluate on local text"  # (--eval_only: nothing is trained)


def local_hf_dataset(name: str) -> bool:
    """Whether an --hf_dataset is a local folder (one that exists: `datasets` reads it before it asks the
    hub), which is read without the hub's probe, keyed and saved by its absolute path, and named as a
    folder, not the hub, in log lines and messages; else it is a hub name."""
    return os.path.isdir(name)


def saved_hf_dataset(name: str) -> str:
    """An --hf_dataset as a run saves it and its caches are keyed: a local folder that exists (which
    `datasets` reads before it asks the hub) as its absolute path, so that a resume from another folder
    reads the same files (not a `datasets` cache of that name, nor the hub), and `hub` and its absolute
    path share one token cache; a hub name as it is."""
    return os.path.abspath(name) if local_hf_dataset(name) else name


def load_hub(name: str, split: str, text_field: str = "text", fix: str = TRAIN_LOCALLY):
    """A split of a hub dataset through `datasets.load_dataset`; fails fast when the hub is out of reach.
    A local folder (`datasets` reads one that exists before it asks the hub) is read without the probe."""
    import datasets

    _no_bars_in_logs()  # ("Generating train split: ..." of a local folder, the hub's downloads)
    if refusal := _local_txt_refusal(name, split):
        raise DataError(refusal)
    local = local_hf_dataset(name)
    if not local and path_like(name):  # (a path: the hub's probe would say "Repo id must be ...", no help)
        what = "a file, not a folder" if os.path.isfile(name) else "no such folder"
        raise DataError(f"--hf_dataset {name}: {what} (a hub dataset is named as OWNER/NAME); {fix}")
    if not datasets.config.HF_HUB_OFFLINE and not local:
        from huggingface_hub import HfApi
        try:  # one request, no retries: `datasets` would retry for ~25 s before giving up
            HfApi().dataset_info(name, timeout=10)
        except Exception as e:
            raise DataError(f"cannot get {name!r} from the Hugging Face Hub ({first_line(e)}); {fix}, or "
                            "set HF_HUB_OFFLINE=1 to use a copy in the datasets cache") from None
    library_log = logging.getLogger("datasets")
    level = library_log.level
    if local:  # it logs a failed read before raising: ours is the one line (a hub name's warnings are
        library_log.setLevel(logging.CRITICAL)  # said: offline, its cached copy's)
    try:
        ds = _load_local_folder(name, split) if local else datasets.load_dataset(name, split=split)
    except Exception as e:
        if local:  # (`datasets` read the folder: neither the hub nor its cache is at fault)
            raise DataError(_local_load_failure(name, split, e, fix)) from None
        if datasets.config.HF_HUB_OFFLINE:
            raise DataError(f"cannot load {name!r}: offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set) "
                            f"and not in the datasets cache, or that cache failed ({first_line(e)}); {fix}") \
                from None
        raise DataError(f"cannot load split {split!r} of {name!r} from the Hugging Face Hub "
                        f"({first_line(e)}); {fix}") from None
    finally:
        library_log.setLevel(level)
    if problem := _column_problem(ds, text_field, utf8=False):  # (the hub's arrow files are UTF-8)
        raise DataError(f"{name!r} [{split}] {problem}")
    ds = ds.select_columns([text_field])
    return ds.rename_column(text_field, "text") if text_field != "text" else ds


def path_like(name: str) -> bool:
    """Whether an --hf_dataset that is no folder here is a path, not a hub name: those are NAME or
    OWNER/NAME, never absolute, nor starting with . or ~ (a quoted ~ the config made the home folder)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def _load_local_folder(name: str, split: str):
    """A split of an --hf_dataset that is a local folder, read by the builder `datasets` picks for it
    (parquet, json, arrow, ...) from that split's files alone, its cache keyed by each file's path, size
    and time, as --data's files are: `datasets` keys a folder's cache by the files' times alone (other
    text under the old time, as `cp -p` or `rsync -t` leave it, read the old rows), and by every
    split's files (an edit of the validation files made the training split again)."""
    import datasets
    try:
        builder = datasets.load_dataset_builder(name)
        files = [str(f) for f in (builder.config.data_files or {}).get(split, [])]
    except Exception:  # (no data files: load_dataset says what is wrong)
        files = []
    if not files or os.path.isfile(os.path.join(name, "state.json")):  # (no such split, one split
        # save_to_disk wrote: load_dataset says what is wrong)
        return datasets.load_dataset(name, split=split)
    stamps = [[os.path.abspath(f), st.st_size, st.st_mtime_ns] for f, st in ((f, os.stat(f)) for f in files)]
    stamp = hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:16]
    return datasets.load_dataset(builder.name, name=f"local-{stamp}", data_files={split: files}, split=split,
                                 **_reading_settings(builder.config))


def _reading_settings(builder_config) -> dict:
    """The settings of a builder config that are not its class's defaults, but for its name and files:
    how a README.md's config reads its files (a parquet `filters`, a CSV `sep`, a JSON `field`), which
    `datasets` keys its cache by, as it does the files."""
    default = type(builder_config)()
    own = ("name", "version", "data_dir", "data_files", "description")
    return {f.name: getattr(builder_config, f.name) for f in dataclasses.fields(builder_config)
            if f.name not in own and getattr(builder_config, f.name) != getattr(default, f.name)}


def _local_load_failure(name: str, split: str, e: Exception, fix: str) -> str:
    """The line for an --hf_dataset that is a local folder `datasets` could not read a split of (no
    such split, a folder save_to_disk wrote, which --data reads): the folder named, not the hub."""
    if os.path.isfile(os.path.join(name, "state.json")):  # (save_to_disk's one split)
        flag = "--data" if split == "train" else "--val_data"
        fix = f"pass {flag} {shlex.quote(name)} instead, which reads it"
    for path in map(str, sorted(Path(name).rglob("*"))):  # (a file of no rows, a damaged one: named)
        kind = KINDS.get(Path(path).suffix.lower())
        hidden = any(part.startswith(".") for part in Path(path).relative_to(name).parts)
        if kind in ("parquet", "arrow") and not hidden and \
                (problem := _table_problem(path, kind, "--hf_dataset")):
            return f"--hf_dataset {name}: {path} {problem}"
    e = _reason(e)
    return f"--hf_dataset {name}: cannot load split {split!r} of this local folder ({first_line(e)}); {fix}"


def _local_txt_refusal(name: str, split: str) -> str | None:
    """The line refusing an --hf_dataset that is a local folder of .txt files, or None: `datasets`
    reads those one line per document (a story's paragraphs apart, its <|endoftext|> lines as text),
    where --data splits them into stories. The flag's text is the split's file, or the folder where
    all of its text is the split's (never another split's text: --data FOLDER of train and validation
    files trained on both); of compressed ones (data/train.txt.gz, which `datasets` reads as .txt and
    --data refuses), the command that decompresses them comes first. A local folder of parquet or JSON
    Lines files (the hub's layout, which the tests stand in for the hub with) reads as the hub does: a
    row per document."""
    if not local_hf_dataset(name):
        return None
    import datasets
    try:
        builder = datasets.load_dataset_builder(name)
    except Exception:  # (no data files, ...: load_dataset says what is wrong)
        return None
    if builder.name != "text":
        return None
    splits = builder.config.data_files or {}
    files = [str(f) for f in splits.get(split, [])]
    flag = "--data" if split == "train" else "--val_data"
    packed = [f for f in files if Path(f).suffix.lower() in PACKED]  # (a.txt.gz: --data refuses it as it is)
    unpack = ""
    if packed:
        tools = {PACKED[Path(f).suffix.lower()][1] for f in packed}
        command = (f"{tools.pop()} {' '.join(map(shlex.quote, packed))}" if len(tools) == 1  # (to paste)
                   else f"{PACKED[Path(packed[0]).suffix.lower()][1]} {shlex.quote(packed[0])}, ...")
        unpack = f"decompress {'them' if len(packed) > 1 else 'it'} ({command}) and "
        files = [str(Path(f).with_suffix("")) if f in packed else f for f in files]  # (what they hold)
    if len(files) == 1:
        named = shlex.quote(files[0])
    elif not files:  # (the folder's text is another split's: the training text, as --val_data)
        named = f"FILE (it has no {split} text)"
    elif len(files) == sum(len(f) for f in splits.values()):  # (all its text is this split's)
        named = shlex.quote(name)
    else:  # (the folder is this split's and another's: --data FOLDER trained on the validation text)
        named = f"with a folder or glob of its {split} files alone ({files[0]}, ...)"
    return (f"--hf_dataset {name}: a local folder of .txt files, which `datasets` reads one line per "
            f"document (a story's paragraphs apart, its {EOT} lines as text); {unpack}pass {flag} {named} "
            "instead, which splits it into stories")


# ---------------------------------------------------------------------------------------------
# Splits: what a run reads, identified before anything is read


def held_out_every(val_fraction: float) -> int:
    """Without a validation source, 1 in this many documents of --data is held out (at least 1 in 2:
    an older checkpoint's --val_fraction may be over the 0.5 allowed now)."""
    return max(2, round(1 / val_fraction))


def fraction_for(n: int) -> float:
    """A --val_fraction that holds out one of n documents: 1 / n rounded up at 3 significant digits
    (1 in round(1 / f) is held out: 1 / n rounded to the nearest may round past n)."""
    f = 1 / n
    step = 10 ** (math.floor(math.log10(f)) - 2)
    return math.ceil(round(f / step, 6)) * step  # (round: 1 / 10000 / 1e-6 is 100.00000000000001)


class Split:
    """One split's documents: a source (local files or a hub split), all of it or one side of a
    held-out slice (1 in `every` documents: the (every-1)-th, (2 every-1)-th, ... for "val").

    `signature` identifies the documents cheaply (paths, sizes, mtimes): it keys the caches. For a
    hub split it needs the loaded dataset (its files in the datasets cache), so `source` may be a
    function. `documents()` loads them through `datasets`, once, on first use.
    """

    def __init__(self, label: str, source, load, keep: str = "all", every: int = 0, whole: str = ""):
        self.label, self.source, self.load, self.keep, self.every = label, source, load, keep, every
        self.whole = whole or label  # the label of the source a held-out side is part of
        self._documents = None

    @property
    def signature(self) -> dict:
        source = self.source() if callable(self.source) else self.source
        held_out = {"counting": HELD_OUT_RULES} if self.keep != "all" else {}
        return {"source": source, "keep": self.keep, "every": self.every, **held_out}

    def documents(self):
        if self._documents is None:  # (a held-out side: one pass over the column to find it)
            self._documents = self._select()
        return self._documents

    def _select(self):
        ds = self.load()
        if self.keep == "all":
            return ds
        import pyarrow.compute as pc
        kept = []  # the rows that are documents once document() drops U+FEFF and strips whitespace
        for chunk in ds.data.column("text").chunks:  # (a chunk at a time: not the corpus twice)
            text = pc.utf8_trim_whitespace(pc.replace_substring(chunk, BOM, ""))
            kept.append(pc.greater(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False))
        rows = np.flatnonzero(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
        held = np.arange(len(rows)) % self.every == self.every - 1
        if self.keep == "val" and not held.any():
            n = len(rows)
            if n == 0:  # (the training text's problem, as the tokenizer's training says it)
                raise DataError(f"{self.whole} has no usable text; check the files")
            fix = f" or raise --val_fraction to {fraction_for(n):.3g} or more" if n > 1 else ""
            raise DataError(f"--data: holding out 1 in {self.every} of its {plural(n, 'document')} leaves "
                            f"none for validation; pass --val_data{fix}")
        return ds.select(rows[held if self.keep == "val" else ~held])


def _local_split(spec: str, flag: str, text_field: str, cache_dir: Path, log, skip=()) -> Split:
    """The Split of a --data or --val_data: its files found and stat'ed now, read on first use."""
    spec = storage.expand_home(spec)  # (a quoted ~: its label and its folder test below, as resolve_files)
    files = with_text(resolve_files(spec, flag, skip, log), spec, flag, log)
    stats = [os.stat(f) for f in files]
    stamps = [[os.path.abspath(f), st.st_size, st.st_mtime_ns] for f, st in zip(files, stats, strict=True)]
    # plain text has no fields: its shards are keyed as under the default whatever --text_field says
    # (a --text_field typed for a .txt retokenized it, to the same tokens)
    plain = all(KINDS[Path(f).suffix.lower()] == "text" for f in files)
    source = {"files": stamps, "text_field": "text" if plain else text_field, "documents": DOCUMENT_RULES}
    size = in_bytes(sum(s.st_size for s in stats))
    label = f"{flag} {spec} ({len(files)} file{'s' * (len(files) > 1)}, {size})"

    def load():
        try:
            return load_files(files, flag, text_field, str(cache_dir / "datasets"), log, spec)
        except DataError as e:
            if len(files) == 1 or isinstance(e, (NoText, DamagedCache)):  # (no fault of one file: the
                raise  # folder's files of whitespace alone, or its cache)
            # (--data . read a tokenizer.json in a cache folder, and was told to convert it to records)
            which = "in it" if os.path.isdir(spec) else "it matches"  # (a folder, or a glob)
            text = "training" if flag == "--data" else "validation"
            raise DataError(f"{e}; or, if that file is no {text} text, name the text alone ({flag} "
                            f"{shlex.quote(spec)} reads every {FORMATS} file {which}: {len(files)})") \
                from None
    return Split(label, source, cache(load))


def _hub_split(name: str, split: str, text_field: str, fix: str = TRAIN_LOCALLY) -> Split:
    """The Split of an --hf_dataset's split: nothing asked of the hub until its signature or documents are."""
    load = cache(lambda: load_hub(name, split, text_field, fix))

    def source():
        ds = load()
        files = [f["filename"] for f in ds.cache_files]
        return {"hub": saved_hf_dataset(name), "split": split, "text_field": text_field, "rows": len(ds),
                "files": files, "documents": DOCUMENT_RULES}

    where = "a local folder" if local_hf_dataset(name) else "Hugging Face Hub"
    return Split(f"{name} [{split}] ({where})", source, load)


def warn_overlap(train: Split, val: Split, log) -> None:
    """A warning when --val_data names a file that --data names too (the same file: by a symlink
    or a hard link too), or a copy of one (the same bytes: compared only where the sizes match,
    and up to the first byte that differs)."""
    def files(split):
        return {_identity(f[0]): os.path.realpath(f[0]) for f in split.source["files"]}
    train_files, val_files = files(train), files(val)
    shared = sorted(val_files[k] for k in val_files.keys() & train_files.keys())
    by_size = {}  # size -> --data's files of that size
    for path in train_files.values():
        by_size.setdefault(os.path.getsize(path), []).append(path)
    for path in sorted(val_files[k] for k in val_files.keys() - train_files.keys()):
        same = [t for t in by_size.get(os.path.getsize(path), []) if same_bytes(path, t)]
        if same:
            shared.append(f"{path}, a copy of {same[0]}")
    if shared:
        log(f"warning: --val_data and --data share {plural(len(shared), 'file')} ({shared[0]}"
            f"{', ...' * (len(shared) > 1)}): the validation loss is not held out; give --val_data other "
            "text, or leave it out to hold out 1 in round(1 / --val_fraction) documents of --data")


def same_bytes(a: str, b: str) -> bool:
    """Whether files a and b hold the same bytes (read up to the first block that differs); False
    where either cannot be read (a warm cache's run never reads its text: that is no reason to stop)."""
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


TRAIN_WORDS = {"train", "training"}  # words of a file's name that name a split (as `datasets` reads them)
HELD_OUT_WORDS = {"validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation"}


def split_named(files: list[str]) -> tuple[list[str], list[str]]:
    """Of several files, those whose names name a training split and those that name a validation
    or test split, by the words of their paths below the folder they share (TinyStories-valid.txt,
    data/validation-00000-of-00001.parquet, valid/part-0.txt); a file that names both is in neither."""
    if len(files) < 2:
        return [], []
    top = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    train, held = [], []
    for f in files:
        words = set(re.split(r"[^a-z0-9]+", os.path.relpath(os.path.abspath(f), top).lower()))
        if bool(words & TRAIN_WORDS) != bool(words & HELD_OUT_WORDS):
            (train if words & TRAIN_WORDS else held).append(f)
    return train, held


def _one_copy(files: list[str], spec: str, flag: str) -> list[str]:
    """A folder's or glob's files, where they hold one copy of each split; one whose files name a split
    (split_named) in more than one format is refused: a dataset's download (the hub's
    roneneldan/TinyStories: TinyStories-train.txt beside data/train-*.parquet) holds the same text in
    each, and the run would read every copy. Empty files (with_text leaves them out) are no copy."""
    for split, named in zip(("training", "validation or test"), split_named(files), strict=True):
        kinds = {}  # format -> its files named as this split
        for f in named:
            if os.path.getsize(f):
                kinds.setdefault(KINDS[Path(f).suffix.lower()], []).append(f)
        if len(kinds) > 1:
            use = "train" if flag == "--data" else "validate"
            copies = "; ".join(f"{fs[0]}{', ...' * (len(fs) > 1)}" for fs in kinds.values())
            one = next(iter(kinds.values()))[0]
            raise DataError(f"{flag}: '{spec}' holds the {split} split in {len(kinds)} formats ({copies}), "
                            f"as a dataset's download holds the same text in each, and the run would {use} "
                            f"on every copy; point {flag} at one copy: a file ({one}) or a quoted glob of "
                            "one format's files")
    return files


def warn_split_names(split: Split, spec: str, flag: str, log) -> None:
    """A warning when a folder or glob of --data (--val_data) holds files named as a training split
    beside files named as a validation or test split (a TinyStories download: TinyStories-train.txt
    beside TinyStories-valid.txt; the hub's data/train-*.parquet beside data/validation-*.parquet):
    it reads them all, so the run trains on the validation text (validates on the training text)."""
    train, held = split_named([f[0] for f in split.source["files"]])
    if not (train and held):
        return
    if flag == "--data":
        ours, other, what, others = held, train, "a validation or test split", "training ones"
        fix = ("point --data at the training files alone (a folder or quoted glob of them), --val_data at "
               "the others")
    else:
        ours, other, what, others = train, held, "a training split", "validation or test ones"
        fix = "point --val_data at the validation files alone"
    use = "trains" if flag == "--data" else "validates"
    log(f"data: warning: {flag} {spec} holds files named as {what} ({ours[0]}{', ...' * (len(ours) > 1)}) "
        f"beside {others} ({other[0]}{', ...' * (len(other) > 1)}), and the run {use} on both; {fix}")


def resolve_sources(train_args: config.TrainArgs, log=print, need_train: bool = True) -> tuple[Split, Split]:
    """The training and validation splits that train_args asks for (no text is read yet, but for
    warn_overlap's comparison of files of one size).
    need_train=False (evaluating): with a --val_data, or the hub's validation split, the training
    split is None and the log names the validation text alone; a --val_data is still checked against
    --data's files where they are there (a checkpoint is scored where its training text is not)."""
    cache_dir = Path(train_args.cache_dir)
    ours = (cache_dir, train_args.out_dir)  # left out of folders and globs

    def local(spec, flag):  # (a --val_data's own --val_text_field; the hub's splits share their columns)
        field = train_args.val_text_field if flag == "--val_data" else ""
        return _local_split(spec, flag, field or train_args.text_field, cache_dir, log, ours)

    if not need_train and (train_args.val_data or not train_args.data):  # (the training text is not read)
        val = (local(train_args.val_data, "--val_data") if train_args.val_data
               else _hub_split(train_args.hf_dataset, "validation", train_args.text_field, EVALUATE_LOCALLY))
        log(f"data: validation: {val.label}")
        if train_args.val_data:
            warn_split_names(val, train_args.val_data, "--val_data", log)
        if train_args.val_data and train_args.data:  # (scoring the text a run trained on, without a word)
            try:
                warn_overlap(local(train_args.data, "--data"), val, log)
            except (DataError, OSError):  # (the training text gone, moved or unreadable: nothing to compare)
                pass
        return None, val
    train = (local(train_args.data, "--data") if train_args.data
             else _hub_split(train_args.hf_dataset, "train", train_args.text_field))
    if train_args.val_data:
        val = local(train_args.val_data, "--val_data")
        if train_args.data:  # (the split warning too, where it applies: its fix is the one that helps)
            warn_overlap(train, val, log)
    elif not train_args.data:
        val = _hub_split(train_args.hf_dataset, "validation", train_args.text_field)
    else:
        every = held_out_every(train_args.val_fraction)
        val = Split(f"1 in {every} documents of --data, held out (no --val_data; --val_fraction "
                    f"{train_args.val_fraction}, evenly spread)", train.source, train.load, "val", every,
                    train.label)
        train = Split(train.label, train.source, train.load, "train", every)
    log(f"data: train: {train.label}; validation: {val.label}")
    for spec, flag, split in ((train_args.data, "--data", train), (train_args.val_data, "--val_data", val)):
        if spec:
            warn_split_names(split, spec, flag, log)
    return train, val


def plain_text_fields(data: str, val_data: str, val_text_field: str) -> set[str]:
    """The text-field settings that plain text makes moot: "text_field" where --data is a .txt file
    (unless it names the field of --val_data's records, no --val_text_field naming theirs: vs.jsonl
    beside t.txt), "val_text_field" where --val_data is one. A folder or glob may hold records."""
    val_reads_it = val_data and not val_text_field and not val_data.lower().endswith(".txt")
    moot = set()
    if data.lower().endswith(".txt") and not val_reads_it:
        moot.add("text_field")
    if val_data.lower().endswith(".txt"):
        moot.add("val_text_field")
    return moot


def source_warnings(t, given) -> list[str]:
    """The text sources' settings that have no effect, for train.py (runplan.setting_warnings) and data.py:
    a text field named for plain text, a --val_fraction where a validation source is given, an
    --hf_dataset beside --data."""
    lines = []
    moot = plain_text_fields(t.data, t.val_data, t.val_text_field)
    for option, field, spec in (("--text_field", "text_field" in given, t.data),
                                ("--val_text_field", bool(t.val_text_field), t.val_data)):
        if field and option[2:] in moot:
            flag = "--data" if option == "--text_field" else "--val_data"
            lines.append(f"{option} has no effect: {flag} {spec} is plain text (it names the text field of "
                         ".jsonl, .json, .parquet and .arrow records)")
    if "hf_dataset" in given and t.data:  # (the hub is read only for a split no file gives)
        lines.append(f"--hf_dataset has no effect: --data {t.data} is the training text, and the validation "
                     "text is --val_data's or held out of --data")
    if "val_fraction" in given and (t.val_data or not t.data):
        source = f"--val_data {t.val_data}" if t.val_data else "the hub's validation split"
        if not t.val_data and local_hf_dataset(t.hf_dataset):  # (it said "the hub's" of a local folder)
            source = f"the validation split of the local folder {t.hf_dataset}"
        lines.append(f"--val_fraction has no effect: {source} is the validation text (it holds out "
                     "part of --data only when no --val_data is given)")
    return lines
