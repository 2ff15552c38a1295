"""Data: text in, token shards out (through the tokenizer of tokenizer.py), then batches.

    prepare(train_args, model_args)  sources -> tokenizer -> token shards: a training run's data
    prepare_eval(..., tokenizer)     the validation shard alone, for evaluating a checkpoint
    TokenData                        one tokenized split: tokens.bin (read through np.memmap) + meta.json
    get_batch                        random training windows, a pure function of (seed, step, micro)
    val_windows, n_val_windows       fixed, ordered windows that cover the validation split once
    rank_windows                     the part of them a DDP rank evaluates
    count_bytes, bits_per_byte       exact bits-per-byte bookkeeping

Sources. By default TinyStories from the Hugging Face Hub through `datasets.load_dataset` (splits
train and validation), cached where `datasets` caches. Or local files, for offline machines and
custom corpora: --data / --val_data take a file, a folder or a glob of
- .txt in the official TinyStories layout: documents separated by lines that hold only
  <|endoftext|> (a marker inside a line is then text);
- .txt without such lines: documents separated by the markers inside lines (a story per line
  ending in one, GPT-2's a<|endoftext|>b) where the file has them, unless its blank lines are over
  100 times as many (a stray marker in the text; the log says which it chose when both are
  there); else by blank lines (or lines of spaces and tabs); all read by our generator through
  `datasets.Dataset.from_generator`, \\r\\n and \\r read as \\n, a BOM (U+FEFF) dropped wherever
  it is (two files joined hold one inside: a marker line behind it is one);
- .jsonl (or .json: one array of records) with a text field (--text_field; --val_text_field for
  --val_data's, where it differs), and .parquet or .arrow (Arrow IPC, as
  `datasets.Dataset.save_to_disk` writes: its folder's state.json and dataset_info.json are left
  out) with a text column ("json", "parquet" and "arrow").
A folder gives all such files under it, except in hidden folders and in the run's --cache_dir and
--out_dir (so `--data .` does not read our own cache and run files).
Without a validation source, 1 in round(1 / --val_fraction) documents is held out, evenly spread
(documents k-1, 2k-1, ...), and the log says so. Documents are stripped of surrounding whitespace;
empty ones are dropped. Line endings are normalised to \\n (Python's universal newlines) and U+FEFF
dropped, in every format: the same text gives the same tokens from a .txt, a .jsonl, a .parquet or
the hub.

Token stream layout: every document is preceded by the separator, [eos] doc1 [eos] doc2 ..., so
token 0 of a stream is eos, every text token can be a target, and eos is predicted at each story end
of the stream except the last. Special-token strings inside the text are encoded as plain text, so
the only special tokens in a shard are the separators put there, and meta.json's byte count (the
UTF-8 bytes of the documents) equals the sum of the tokens' bytes.

How this departs from the obvious version:
- Everything made lives under --cache_dir, in a folder named by a hash of what made it: the
  tokenizer by (training source, vocabulary, cap), the shards by (source, tokenizer JSON). Sources
  are identified by path, size and modification time (as `datasets` does), so a cache hit on local
  files costs a few stat calls and never imports `datasets`, and a changed source or tokenizer is
  never mixed in.
- Nothing half-written or altered is ever trusted: the shard is written to a temporary file and
  renamed into place, and meta.json is written last (atomically) and checked on every open against
  the shard's size, the format version, the tokenizer hash and the largest token id (one np.max
  pass); the shard's sha256 is checked too whenever its size or modification time is not the one
  meta.json recorded (hashing costs a read of the file, ~2 s per GB, too much for every open of
  the 1.9 GB TinyStories shard). A shard that fails is rebuilt, with a log line.
- One process at a time builds or checks a cache folder or trains a tokenizer (an flock in
  --cache_dir/.locks/): runs sharing --cache_dir wait for each other's builds instead of deleting
  each other's files or training the same tokenizer twice.
- Nothing under --cache_dir is deleted (a run started before the change, or an older checkout of
  the project, may still read a shard):
  a cache miss names, in one log line with their size and an `rm -r` command, the older shards of
  the same files (or hub split) and tokenizer that other document rules, another shard format or an
  earlier version of the files left behind (1.9 GB each on TinyStories), but for those another
  process holds the lock of. Shards of another tokenizer are never named: another run may use them.
- A full disk under --cache_dir (or a file past `ulimit -f`; while writing a shard, the tokenizer,
  or `datasets`' own cache, which wraps the OSError in its errors) is one DataError/StorageError
  line naming --cache_dir; so is a --cache_dir that cannot be written (read-only, or not ours) on
  a cache miss. A log line that cannot be printed (standard output closed, as by `| head`, or on
  a full disk) is one line naming standard output, not the cache.
- A --data that is a pipe (`cat x | ... --data /dev/stdin`, a FIFO) is refused as such: a source
  is read more than once (scanned, then read, and identified by its size and time).
- A document longer than 2^20 characters (PIECE_CHARS, about 1 MB) is tokenized (and the BPE
  trained on it) in pieces cut where the byte-level pre-tokenizer starts a word anyway
  (tokenizer.pieces): the same ids, bounded memory. `datasets` still holds
  such a document as one row, so reading it costs its size in memory a few times over.
- Parallel tokenization uses num_proc Python threads over the Rust encoder (which releases the
  GIL) instead of processes: no pickling or start-up cost, so it pays off even for small files, and
  the output is identical to a serial loop. Batches are streamed, so memory does not grow with the
  corpus.
- Bytes that are not UTF-8 in a .txt file are replaced by U+FFFD and counted in the log, per file;
  a file with more than 1% such bytes is refused (it is in another encoding: convert it). .jsonl,
  .parquet and .arrow must be valid UTF-8 (the formats require it) and are refused otherwise.
- Bits per byte count the separator as 0 bytes, while its prediction loss still counts: the figure
  is slightly conservative (higher) compared with counting only text tokens.
- The hub is probed with one request before `datasets` (which retries for ~25 s) is asked, so a
  machine without network fails at once with a line naming --data. HF_HUB_OFFLINE=1 or
  HF_DATASETS_OFFLINE=1 skip the probe and use the `datasets` cache.
- The BPE is trained on at most --tokenizer_train_mb MB from the start of the training split
  (whole documents, but of one over PIECE_CHARS only its pieces up to the cap); the full
  TinyStories training split is ~1.9 GB.

`python data.py --preset tiny --data FILE` prepares a run's tokenizer and shards without training.
"""

import codecs
import errno
import glob
import hashlib
import json
import logging
import math
import os
import re
import shlex
import sys
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import config
import errors
import storage
from config import SPECIAL_TOKENS
from errors import DataError, UserError, first_line
from tokenizer import EOT, PIECE_CHARS, Tokenizer, check_tokenizer, pieces, too_small

FORMAT = 2  # version of the shard layout and meta.json; caches of another version are rebuilt
META_FIELDS = ("tokenizer_hash", "vocab_size", "dtype", "n_tokens", "n_docs", "n_bytes", "sha256", "mtime_ns")
DOCUMENT_RULES = 5  # version of how sources split into documents (and empty rows are left out of
# a held-out slice's count): a new one rebuilds their caches (4: \r\n and \r are \n in every format;
# 5: U+FEFF is dropped wherever it is, in every format)
HELD_OUT_RULES = 2  # version of which rows a held-out slice counts as documents: a new one rebuilds the
# caches of held-out slices alone (2: a row of byte-order marks and whitespace is none, as _document says)
TOKENIZER_FORMAT = 3  # version of the tokenizer training rules; cached tokenizers of another are retrained
# (2: long runs reach the trainer in pieces; a text without them trains the same tokenizer as 1;
# 3: a document over PIECE_CHARS that crosses --tokenizer_train_mb gives only its pieces up to it)
KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
FORMATS = ".txt, .jsonl, .json, .parquet or .arrow"
SAVED = ("state.json", "dataset_info.json")  # what `save_to_disk` writes beside its .arrow files: not text
MAX_NON_UTF8 = 0.01  # share of bytes above which a .txt file is refused rather than repaired
CACHE_FIX = "pick another --cache_dir"  # where a write under --cache_dir fails
BATCH_DOCS = 1024  # documents per thread per tokenization batch
READ_CHUNK = 1 << 20  # bytes read at a time when scanning a .txt file
CACHE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a cache write that failed for want of room (or
# past `ulimit -f`): named as such, not put down to the source file or the path
BOM = "\ufeff"  # a byte-order mark, not text wherever it is (two files joined hold one inside): dropped


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'s' * (count != 1)}"


def _size(n: float) -> str:
    for unit in ["B", "KB", "MB", "GB"]:
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Token shards


class TokenData:
    """One tokenized split in a folder: tokens.bin (uint16; uint32 for a vocabulary over 65,536) and
    meta.json.

    Opening checks meta.json against the shard and raises DataError when they disagree, so a
    partial, foreign or altered shard is never used: the format, the tokenizer hash (when given)
    and the size always; the largest token id always (it must be in the vocabulary: one pass of
    np.max, ~0.1 s per GB); the sha256 of tokens.bin whenever the file's size or modification time
    is not the one meta.json recorded (a read of the whole file, ~2 s per GB, so only then).
    """

    def __init__(self, path, tokenizer_hash: str | None = None):
        self.path = Path(path)
        meta_path, bin_path = self.path / "meta.json", self.path / "tokens.bin"
        if not meta_path.is_file():
            raise DataError(f"{self.path} has no meta.json: the tokenization did not finish; run again to "
                            "rebuild it")
        try:
            meta = json.loads(meta_path.read_bytes())
        except ValueError:
            raise DataError(f"{meta_path} is not valid JSON; delete it and run again") from None
        if not isinstance(meta, dict):
            raise DataError(f"{meta_path} is not a table of the shard's figures; run again to rebuild it")
        if meta.get("format") != FORMAT:
            raise DataError(f"{self.path} was written in format {meta.get('format')}, not {FORMAT}; run "
                            "again to rebuild it")
        missing = [k for k in META_FIELDS if k not in meta]
        if missing:  # (a hand edit, or a damaged file that is still JSON)
            raise DataError(f"{meta_path} lacks {', '.join(missing)}; run again to rebuild it")
        if tokenizer_hash is not None and meta["tokenizer_hash"] != tokenizer_hash:
            raise DataError(f"{self.path} was written by tokenizer {meta['tokenizer_hash'][:12]}, not by "
                            f"this run's {tokenizer_hash[:12]}; delete it or let prepare() rebuild it")
        dtype = np.dtype(meta["dtype"])
        st = bin_path.stat() if bin_path.is_file() else None
        size = st.st_size if st else 0
        if st is None or size != meta["n_tokens"] * dtype.itemsize:
            raise DataError(f"{bin_path} holds {size} bytes, not the {meta['n_tokens']} tokens meta.json "
                            "promises; run again to rebuild it")
        if st.st_mtime_ns != meta["mtime_ns"] and _sha256(bin_path) != meta["sha256"]:
            raise DataError(f"{bin_path} changed since it was written (its sha256 is not the one meta.json "
                            "recorded); run again to rebuild it")
        self.meta = meta
        self.tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(meta["n_tokens"],))
        top = _max_id(self.tokens)
        if top >= meta["vocab_size"]:
            raise DataError(f"{bin_path} holds token id {top}, outside the tokenizer's {meta['vocab_size']} "
                            "tokens; run again to rebuild it")

    n_tokens = property(lambda self: self.meta["n_tokens"])
    n_bytes = property(lambda self: self.meta["n_bytes"])
    n_docs = property(lambda self: self.meta["n_docs"])

    def __len__(self):
        return self.n_tokens

    def __repr__(self):
        return f"TokenData({str(self.path)!r}, {self.n_tokens:,} tokens, {self.n_docs:,} documents)"


def _document(text: str) -> str:
    """A document as it is tokenized: \\r\\n and \\r read as \\n and U+FEFF dropped (as a .txt
    file's are, whatever the format), surrounding whitespace stripped."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return (text.replace(BOM, "") if BOM in text else text).strip()


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _max_id(tokens) -> int:
    step = 1 << 26  # 64M tokens at a time: bounded memory on any shard
    return max((int(tokens[i:i + step].max()) for i in range(0, len(tokens), step)), default=0)


def _encoded(tokenizer: Tokenizer, texts: list[str], threads: int, dtype):
    """The shard's stream for `texts` ([eos] doc [eos] doc ...) as arrays of bounded size: short
    documents together, a long one in pieces (tokenizer.pieces: the same ids as the whole),
    `threads` pieces at a time. Memory stays bounded whatever the length of a document."""
    eos, short = tokenizer.eos_id, []

    def flush():
        flat = []
        for ids in tokenizer.encode_docs(short, threads):
            flat.append(eos)
            flat.extend(ids)
        short.clear()
        return np.array(flat, dtype=dtype)

    for text in texts:
        if len(text) <= PIECE_CHARS:
            short.append(text)
            continue
        if short:
            yield flush()
        yield np.array([eos], dtype=dtype)
        parts = pieces(text, PIECE_CHARS)
        for i in range(0, len(parts), threads):
            yield np.array([t for ids in tokenizer.encode_docs(parts[i:i + threads], threads) for t in ids],
                           dtype=dtype)
    if short:
        yield flush()


def write_tokens(folder, batches, tokenizer: Tokenizer, *, threads: int = 1, meta: dict | None = None,
                 what: str = "the text", total: int | None = None, desc: str = "tokenizing") -> TokenData:
    """Tokenize `batches` (an iterable of lists of documents) into folder/tokens.bin + meta.json.

    Streams: one batch in memory at a time, a long document a few pieces at a time (_encoded).
    The shard goes to a temporary file renamed into place when complete; meta.json (with the
    shard's sha256 and modification time, which TokenData checks, and its largest id, which
    TokenData computes again) is removed first and written last, so an interrupted run leaves
    nothing a later open() would trust. `total` (documents) sizes the progress bar.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [folder / "meta.json", folder / "tokens.bin", *folder.glob(".tmp-*")]:  # meta.json first
        stale.unlink(missing_ok=True)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    counts = {"tokens": 0, "docs": 0, "bytes": 0, "max_id": 0}
    sha = hashlib.sha256()

    def write(f):
        with tqdm(total=total, unit="doc", desc=desc, disable=None, leave=False) as bar:
            for batch in batches:
                errors.raise_lost_signal()
                texts = [s for s in map(_document, batch) if s]
                for ids in _encoded(tokenizer, texts, threads, dtype):
                    raw = ids.tobytes()
                    f.write(raw)
                    sha.update(raw)
                    counts["tokens"] += len(ids)
                    counts["max_id"] = max(counts["max_id"], int(ids.max(initial=0)))
                counts["docs"] += len(texts)
                counts["bytes"] += sum(len(t.encode()) for t in texts)
                bar.update(len(batch))
        if counts["docs"] == 0:
            raise DataError(f"{what} has no usable text (only whitespace or separators); check the files")

    storage.atomic_write(folder / "tokens.bin", write, CACHE_FIX)
    meta = {**(meta or {}), "format": FORMAT, "tokenizer_hash": tokenizer.hash,
            "vocab_size": tokenizer.vocab_size, "dtype": dtype.name, "n_tokens": counts["tokens"],
            "n_docs": counts["docs"], "n_bytes": counts["bytes"], "max_id": counts["max_id"],
            "sha256": sha.hexdigest(), "mtime_ns": (folder / "tokens.bin").stat().st_mtime_ns,
            "layout": "[eos] doc [eos] doc ..."}
    storage.save_json(folder / "meta.json", meta, CACHE_FIX)
    return TokenData(folder, tokenizer.hash)


# ---------------------------------------------------------------------------------------------
# Sources: local files and the hub, as `datasets.Dataset`s with one "text" column


def resolve_files(spec: str, flag: str, skip=()) -> list[str]:
    """A file, a folder or a glob -> sorted list of files. A folder gives its .txt, .jsonl, .json,
    .parquet and .arrow files at any depth, and so does a folder a glob matches, leaving out those in
    hidden folders under it and the SAVED files of a `save_to_disk` folder (a glob leaves out the
    other files it matches, as a folder does; a DatasetDict's folder is refused: it holds all splits);
    files in the `skip` folders (the run's --cache_dir and --out_dir, whose .json files are ours)
    are left out of folders and globs alike (a glob that names a hidden folder takes its files).
    A file reached by two paths (a symlink beside its target, a hard link) is listed once, at its
    first path."""
    skip = [Path(d).resolve() for d in skip]

    def wanted(path: str) -> bool:
        real, p = Path(path).resolve(), Path(path)
        if any(real.is_relative_to(d) for d in skip):
            return False
        if p.name == "dataset_dict.json":
            raise DataError(f"{flag}: '{p.parent}' is a DatasetDict saved by save_to_disk; point {flag} at "
                            f"one split's folder ({p.parent / 'train'}), --val_data at another")
        return not (p.name in SAVED and any(p.parent.glob("*.arrow")))

    def walk(folder: str) -> list[str]:
        return [str(p) for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in KINDS
                and not any(part.startswith(".") for part in p.relative_to(folder).parts)]

    if os.path.isdir(spec):
        files = sorted(filter(wanted, walk(spec)))
        if not files:
            raise DataError(f"{flag}: folder '{spec}' holds no {FORMATS} file; check the path")
    elif os.path.isfile(spec):  # before the glob test: a file may be named tiny[1].txt
        files = [spec]
    elif any(c in spec for c in "*?["):
        matches = glob.glob(spec, recursive=True)
        found = [m for m in matches if os.path.isfile(m)] + [f for m in matches if os.path.isdir(m)
                                                             for f in walk(m)]
        found = sorted(set(filter(wanted, found)))  # (a set: dir/** matches a file and its folders)
        files = [f for f in found if Path(f).suffix.lower() in KINDS]  # (the others left out, as in a folder)
        if not found:
            raise DataError(f"{flag}: no files match '{spec}'; check the path or glob")
        if not files:
            raise DataError(f"{flag}: '{spec}' matches no {FORMATS} file (only {found[0]}"
                            f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}); check the glob")
    elif os.path.exists(spec):  # a pipe (/dev/stdin of `cat x |`, a FIFO) or a device: read more than once
        raise DataError(f"{flag}: '{spec}' is not a regular file (a pipe or a device), and the text is read "
                        f"more than once; save it to a .txt file and point {flag} at that")
    elif os.path.islink(spec):
        raise DataError(f"{flag}: '{spec}' is a link to '{os.readlink(spec)}', which does not exist; fix the "
                        "link or the path")
    else:
        raise DataError(f"{flag}: no such file '{spec}'; check the path")
    first = {}  # a file reached by two paths (a symlink or hard link beside it, a glob through a linked
    for f in files:  # folder): once
        first.setdefault(_identity(f), f)
    files = list(first.values())
    for f in files:
        if Path(f).suffix.lower() not in KINDS:
            raise DataError(f"{flag}: '{f}' is not {FORMATS}; convert it or leave it out")
        if os.path.getsize(f) == 0:
            raise DataError(f"{flag}: '{f}' is empty; remove it or point {flag} at text")
    return files


def _identity(path: str) -> tuple[int, int] | str:
    """What a file is, whatever its name: a symlink and a hard link are the file they name. Where
    the file system gives no inode number (0: FAT, some network shares on Windows), its real path:
    else every file there would be one file, and all but the first left out."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


SPACES = b" \t\f\v"  # spaces on a line (the newline aside)
MARKER_LINE = re.compile(b"(?m)^[" + SPACES + b"]*" + re.escape(EOT.encode()) + b"[" + SPACES + b"]*\n")
BLANK_LINE = re.compile(b"(?m)^[" + SPACES + b"]*\n")
SEPARATORS = {"lines": re.compile(MARKER_LINE.pattern.decode()),  # (the text split's: the scan's, decoded)
              "blank": re.compile(BLANK_LINE.pattern.decode()), "inline": re.compile(re.escape(EOT))}
INLINE_SHARE = 100  # markers inside lines separate documents unless blank lines are this many times more
COMPRESSED = {b"\x1f\x8b": ("gzip", "gunzip"), b"BZh": ("bzip2", "bunzip2"), b"\xfd7zXZ\x00": ("xz", "unxz"),
              b"\x28\xb5\x2f\xfd": ("zstd", "unzstd"), b"PK\x03\x04": ("zip", "unzip")}  # (magic bytes)


def _scan_txt(path: str, flag: str) -> tuple[str, int, str | None]:
    """One streaming pass over a .txt file: (its layout, bytes that are not UTF-8, a line saying
    which of two signals it followed, or None). The layout: "lines" where lines holding only
    <|endoftext|> separate documents (the official one; a marker inside a line is then text), else
    "inline" where markers inside lines do (one story per line ending in it, or GPT-2's
    a<|endoftext|>b), unless the file has over INLINE_SHARE times as many blank lines (a stray
    marker in a file of blank-line documents: text), else "blank" (blank lines). Line endings and
    BOMs are read as the text-mode split reads them (\\r\\n and \\r are \\n, every U+FEFF dropped).

    Refuses a file with no text besides whitespace and markers, or with over 1% non-UTF-8 bytes.
    """
    marker = EOT.encode()
    keep = len(marker) - 1  # bytes of a long line kept: a marker may start in them
    utf8 = codecs.getincrementaldecoder("utf-8")("ignore")  # drops exactly the invalid bytes
    size = valid = nul = markers = marker_lines = blank = 0
    has_text = False
    carry = b""  # the line the last chunk ended in (newlines made \n), and a \r that may precede a \n

    def count(lines: bytes):  # whole lines, each ending in \n
        nonlocal markers, marker_lines, blank, has_text
        markers += lines.count(marker)
        marker_lines += len(MARKER_LINE.findall(lines))
        blank += len(BLANK_LINE.findall(lines))
        has_text = has_text or bool(lines.replace(marker, b"").strip())

    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0)
        while chunk := f.read(READ_CHUNK):
            size += len(chunk)
            nul += chunk.count(0)  # valid UTF-8, but text has none: UTF-16 has one every 2 bytes
            valid += len(utf8.decode(chunk).encode())
            buf = carry + chunk  # (a BOM cut by the chunk's end is whole in the next one's carry)
            held = b"\r" if buf.endswith(b"\r") else b""  # (its \n may come in the next chunk)
            buf = buf[:len(buf) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            buf = buf.replace(codecs.BOM_UTF8, b"")
            cut = buf.rfind(b"\n") + 1
            count(buf[:cut])
            tail = buf[cut:]
            if len(tail) > READ_CHUNK:  # a long line: kept as short as tells what it may be
                text = tail.strip(SPACES)
                if len(text) > len(marker):  # no separator, whatever follows: its start counted now
                    markers += tail.count(marker)
                    has_text = has_text or bool(tail.replace(marker, b"").replace(b"\x01", b"").strip())
                    tail = b"\x01" + tail[-keep:]  # (holds no whole marker: none is counted twice)
                else:  # spaces around at most a marker: they change nothing (one kept after text)
                    tail = text + (b" " if text and tail[-1:].strip(SPACES) == b"" else b"")
            carry = tail + held
    valid += len(utf8.decode(b"", final=True).encode())
    if carry.replace(b"\r", b""):
        count(carry.replace(b"\r", b"") + b"\n")
    bad = size - valid
    packed = [kind for magic, kind in COMPRESSED.items() if head.startswith(magic)]
    if packed and max(nul, bad) > MAX_NON_UTF8 * size:  # (not text: the magic bytes are no accident)
        raise DataError(f"{flag}: '{path}' is {packed[0][0]}-compressed, not text; decompress it "
                        f"({packed[0][1]}) and point {flag} at the text")
    if nul > MAX_NON_UTF8 * size:
        raise DataError(f"{flag}: '{path}' is not UTF-8 text ({nul:,} of {size:,} bytes are NUL: UTF-16?); "
                        "convert it, e.g. iconv -f utf-16 -t utf-8")
    if bad > MAX_NON_UTF8 * size:
        raise DataError(f"{flag}: '{path}' is not UTF-8 text ({bad:,} of {size:,} bytes are not UTF-8); "
                        "convert it, e.g. iconv -f latin1 -t utf-8")
    if not has_text:
        raise DataError(f"{flag}: '{path}' has no usable text (only whitespace"
                        f"{' and ' + EOT + ' separators' if markers else ''}); check the file")
    if marker_lines:
        return "lines", bad, None
    inline = markers and markers * INLINE_SHARE >= blank
    both = f"{markers:,} {EOT} inside lines and {blank:,} blank lines" if markers and blank else None
    why = both and (f"{both}: documents split at the markers" if inline else
                    f"{both}: documents split at the blank lines, the markers kept as text")
    return ("inline" if inline else "blank"), bad, why


def _txt_documents(path: str, stamp: str, layout: str):
    """Documents of a .txt file, split as _scan_txt's `layout` says. `stamp`: size and mtime, for
    the cache key. Every BOM (U+FEFF) is dropped; line endings are read as \\n (universal newlines).
    Each part of the text is split once: a document (or a line) of any length streams through."""
    separator, keep, lines = SEPARATORS[layout], len(EOT) - 1, layout != "inline"
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        doc: list[str] = []  # the document being read, in parts
        line, mid = "", False  # the end of the last chunk, not yet split; mid: it goes on a line whose
        # start is already in `doc`, behind a "\x01" that keeps the rest from reading as a line's start

        def split(text: str) -> tuple[list[str], str]:  # the documents `text` ends, and its last part
            parts = separator.split(text)
            if mid and text:
                parts[0] = parts[0][1:]
            return parts[:-1], parts[-1]

        while chunk := f.read(READ_CHUNK):
            buf = line + chunk.replace(BOM, "")
            if not lines:  # markers inside lines: all split now, but the last characters of what
                done, last = split(buf)  # follows the last one, where a marker may begin
                line = last[max(0, len(last) - keep):]
                last = last[:len(last) - len(line)]
            else:  # whole lines (a separator is one)
                cut, moved = buf.rfind("\n") + 1, False
                rest = buf[cut:]
                if len(rest) > READ_CHUNK:  # a long line
                    text = rest.strip(SPACES.decode())
                    if len(text) > len(EOT):  # no separator, whatever follows: into the document it goes
                        cut, moved = len(buf), True
                    else:  # spaces around at most a marker: they change nothing (one kept after text)
                        end = " " if text and not rest[-1:].strip(SPACES.decode()) else ""
                        buf = buf[:cut] + text + end
                done, last = split(buf[:cut])
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


def _field_option(flag: str) -> str:
    """The option that names the text field of `flag`'s files: --val_data's has its own."""
    return "--val_text_field" if flag == "--val_data" else "--text_field"


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
            try:
                record = json.loads(line)
            except UnicodeDecodeError:
                return f"line {n} is not UTF-8; convert the file to UTF-8"
            except ValueError:
                return f"line {n} is not valid JSON; fix or remove it"
            if not isinstance(record, dict) or field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                return (f"line {n} has no '{field}' field (it has: {keys or 'nothing'}); every line needs "
                        f"one, or pass {_field_option(flag)} NAME")
            if not isinstance(record[field], str):
                return (f"line {n}: '{field}' is {type(record[field]).__name__}, not text; fix the line or "
                        f"pass {_field_option(flag)} NAME")
    return None if records else f"has no records (only blank lines); remove it or point {flag} at text"


def _json_array_problem(path: str, flag: str) -> str | None:
    """That a .json file is an empty array, where it is one (`datasets` says "corresponds to no
    data"); None otherwise. Read whole: only after `datasets` failed on it."""
    try:
        with open(path, "rb") as f:
            empty = json.load(f) == []
    except ValueError:
        return None
    return f"has no records (an empty array); remove it or point {flag} at text" if empty else None


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


def _load_file(path: str, flag: str, field: str, cache_dir: str, log):
    """One local file as a `datasets.Dataset` with a "text" column, cached by `datasets` in cache_dir."""
    import datasets  # imported on first use: ~1 s, and a cache hit of prepare() never needs it

    if not sys.stderr.isatty():  # no progress bars in logs (the tokenization bar follows the same rule)
        datasets.disable_progress_bars()
    kind = KINDS[Path(path).suffix.lower()]
    if kind == "text":
        layout, bad, why = _scan_txt(path, flag)
        if why:
            log(f"data: {path}: {why}")
        if bad:
            log(f"data: warning: {path}: {bad:,} bytes that are not UTF-8 replaced by U+FFFD")
        st = os.stat(path)
        return datasets.Dataset.from_generator(
            _txt_documents, features=datasets.Features({"text": datasets.Value("string")}),
            cache_dir=cache_dir,
            gen_kwargs={"path": path, "stamp": f"{st.st_size}:{st.st_mtime_ns}", "layout": layout})
    jsonl = Path(path).suffix.lower() == ".jsonl"  # (_json_problem reads lines: a .json array has none)
    library_log = logging.getLogger("datasets")
    level = library_log.level
    library_log.setLevel(logging.CRITICAL)  # it logs a failed read before raising: ours is the one line
    try:
        ds = datasets.load_dataset(kind, data_files=path, split="train", cache_dir=cache_dir)
    except Exception as e:
        cause = _os_error(e)
        if cause and (cause.errno in CACHE_FULL or _not_writable(cause, cache_dir)):
            raise  # the cache it writes, not the file: _cache_writes says so
        if kind != "json":
            problem = _table_problem(path, kind, flag)
        else:
            problem = _json_problem(path, field, flag) if jsonl else (
                _json_array_problem(path, flag) or _json_object_problem(path, field, flag))
        raise DataError(f"{flag}: {path}: {problem or 'cannot read it (' + first_line(e) + ')'}") from None
    finally:
        library_log.setLevel(level)
    if problem := _column_problem(ds, field, option=_field_option(flag)):
        if jsonl:  # the line at fault, where it is one
            problem = _json_problem(path, field, flag) or problem
        elif kind == "json":  # records inside an object: no --text_field reads them
            problem = _json_object_problem(path, field, flag) or problem
        raise DataError(f"{flag}: {path}: {problem}")
    feature = ds.features[field]
    ds = ds.select_columns([field])
    if field != "text":
        ds = ds.rename_column(field, "text")
    return ds.cast_column("text", datasets.Value("string")) if feature.dtype != "string" else ds


def _column_problem(ds, field: str, utf8: bool = True, option: str = "--text_field") -> str | None:
    """Why column `field` of a loaded dataset is not text a run can read (missing, not strings,
    null rows, with utf8: bytes that are not UTF-8, which pyarrow keeps as a .jsonl has them), or
    None. `option` is the one that names the field."""
    if field not in ds.column_names:
        return f"has no column '{field}' (it has: {', '.join(ds.column_names)}); pass {option} NAME"
    feature = ds.features[field]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
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
               log=print):
    """Local files as one `datasets.Dataset` with a "text" column: one row per document, file order."""
    import datasets

    parts = [_load_file(f, flag, text_field, cache_dir, log) for f in files]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def load_hub(name: str, split: str, text_field: str = "text"):
    """A split of a hub dataset through `datasets.load_dataset`; fails fast when the hub is out of reach."""
    import datasets

    fix = "pass --data FILE (and --val_data FILE) to train on local text"
    if not datasets.config.HF_HUB_OFFLINE:
        from huggingface_hub import HfApi
        try:  # one request, no retries: `datasets` would retry for ~25 s before giving up
            HfApi().dataset_info(name, timeout=10)
        except Exception as e:
            raise DataError(f"cannot get {name!r} from the Hugging Face Hub ({first_line(e)}); {fix}, or "
                            "set HF_HUB_OFFLINE=1 to use a copy in the datasets cache") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        if datasets.config.HF_HUB_OFFLINE:
            raise DataError(f"cannot load {name!r}: offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set) "
                            f"and not in the datasets cache, or that cache failed ({first_line(e)}); {fix}") \
                from None
        raise DataError(f"cannot load split {split!r} of {name!r} from the Hugging Face Hub "
                        f"({first_line(e)}); {fix}") from None
    if problem := _column_problem(ds, text_field, utf8=False):  # (the hub's arrow files are UTF-8)
        raise DataError(f"{name!r} [{split}] {problem}")
    ds = ds.select_columns([text_field])
    return ds.rename_column(text_field, "text") if text_field != "text" else ds


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

    def __init__(self, label: str, source, load, keep: str = "all", every: int = 0):
        self.label, self.source, self.load, self.keep, self.every = label, source, load, keep, every

    @property
    def signature(self) -> dict:
        source = self.source() if callable(self.source) else self.source
        held_out = {"counting": HELD_OUT_RULES} if self.keep != "all" else {}
        return {"source": source, "keep": self.keep, "every": self.every, **held_out}

    def documents(self):
        ds = self.load()
        if self.keep == "all":
            return ds
        import pyarrow.compute as pc
        kept = []  # the rows that are documents once _document drops U+FEFF and strips whitespace
        for chunk in ds.data.column("text").chunks:  # (a chunk at a time: not the corpus twice)
            text = pc.utf8_trim_whitespace(pc.replace_substring(chunk, BOM, ""))
            kept.append(pc.greater(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False))
        rows = np.flatnonzero(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
        held = np.arange(len(rows)) % self.every == self.every - 1
        if self.keep == "val" and not held.any():
            n = len(rows)
            fix = f" or raise --val_fraction to {fraction_for(n):.3g} or more" if n > 1 else ""
            raise DataError(f"--data: holding out 1 in {self.every} of its {_n(n, 'document')} leaves "
                            f"none for validation; pass --val_data{fix}")
        return ds.select(rows[held if self.keep == "val" else ~held])


def _local_split(spec: str, flag: str, text_field: str, cache_dir: Path, log, skip=()) -> Split:
    files = resolve_files(spec, flag, skip)
    stats = [os.stat(f) for f in files]
    stamps = [[os.path.abspath(f), st.st_size, st.st_mtime_ns] for f, st in zip(files, stats, strict=True)]
    source = {"files": stamps, "text_field": text_field, "documents": DOCUMENT_RULES}
    size = _size(sum(s.st_size for s in stats))
    label = f"{flag} {spec} ({len(files)} file{'s' * (len(files) > 1)}, {size})"
    load = cache(lambda: load_files(files, flag, text_field, str(cache_dir / "datasets"), log))
    return Split(label, source, load)


def _hub_split(name: str, split: str, text_field: str) -> Split:
    load = cache(lambda: load_hub(name, split, text_field))

    def source():
        ds = load()
        files = [f["filename"] for f in ds.cache_files]
        return {"hub": name, "split": split, "text_field": text_field, "rows": len(ds), "files": files,
                "documents": DOCUMENT_RULES}

    return Split(f"{name} [{split}] (Hugging Face Hub)", source, load)


def held_out_every(val_fraction: float) -> int:
    """Without a validation source, 1 in this many documents of --data is held out (at least 1 in 2:
    an older checkpoint's --val_fraction may be over the 0.5 allowed now)."""
    return max(2, round(1 / val_fraction))


def warn_overlap(train: Split, val: Split, log) -> None:
    """A warning when --val_data names a file that --data names too (the same file: by a symlink
    or a hard link too)."""
    def files(split):
        return {_identity(f[0]): os.path.realpath(f[0]) for f in split.source["files"]}
    train_files, val_files = files(train), files(val)
    shared = sorted(val_files[k] for k in val_files.keys() & train_files.keys())
    if shared:
        log(f"warning: --val_data and --data share {_n(len(shared), 'file')} ({shared[0]}"
            f"{', ...' * (len(shared) > 1)}): the validation loss is not held out; give --val_data other "
            "text, or leave it out to hold out 1 in round(1 / --val_fraction) documents of --data")


def resolve_sources(train_args: config.TrainArgs, log=print, need_train: bool = True) -> tuple[Split, Split]:
    """The training and validation splits that train_args asks for (nothing is read yet).
    need_train=False (evaluating): with a --val_data, the training split is None, its files not
    even looked for (a checkpoint is scored where its training text is not)."""
    cache_dir = Path(train_args.cache_dir)

    ours = (cache_dir, train_args.out_dir)  # left out of folders and globs

    def local(spec, flag):  # (a --val_data's own --val_text_field; the hub's splits share their columns)
        field = train_args.val_text_field if flag == "--val_data" else ""
        return _local_split(spec, flag, field or train_args.text_field, cache_dir, log, ours)

    if train_args.val_data and not need_train:
        val = local(train_args.val_data, "--val_data")
        log(f"data: validation: {val.label}")
        return None, val
    train = (local(train_args.data, "--data") if train_args.data
             else _hub_split(train_args.hf_dataset, "train", train_args.text_field))
    if train_args.val_data:
        val = local(train_args.val_data, "--val_data")
        if train_args.data:
            warn_overlap(train, val, log)
    elif not train_args.data:
        val = _hub_split(train_args.hf_dataset, "validation", train_args.text_field)
    else:
        every = held_out_every(train_args.val_fraction)
        val = Split(f"1 in {every} documents of --data, held out (no --val_data; --val_fraction "
                    f"{train_args.val_fraction}, evenly spread)", train.source, train.load, "val", every)
        train = Split(train.label, train.source, train.load, "train", every)
    log(f"data: train: {train.label}; validation: {val.label}")
    return train, val


# ---------------------------------------------------------------------------------------------
# prepare(): a training run's data (prepare_eval: a checkpoint's evaluation)


def _texts(ds, batch_size: int, cap_bytes: int = 0, used: dict | None = None):
    """Batches of stripped, non-empty documents of `ds`, a long one as its pieces (_in_pieces), to
    train the BPE on; with cap_bytes, stop once that many bytes are given (the document that crosses
    the cap included, a long one up to its piece that does). `used` gets the bytes given and whether
    the cap was reached."""
    total = 0
    for batch in ds.iter(batch_size=batch_size):
        texts = [s for s in map(_document, batch["text"]) if s]
        if cap_bytes:
            for i, t in enumerate(texts):
                size = len(t.encode())
                if total + size >= cap_bytes:
                    if len(t) > PIECE_CHARS:  # a long document: its first pieces, up to the cap
                        t, size = _head(t, cap_bytes - total)
                    total += size
                    if used is not None:
                        used.update(bytes=total, capped=True)
                    yield from _in_pieces([*texts[:i], t])
                    return
                total += size
        else:
            total += sum(len(t.encode()) for t in texts)
        yield from _in_pieces(texts)
    if used is not None:
        used.update(bytes=total, capped=False)


def _head(text: str, limit: int) -> tuple[str, int]:
    """The first pieces (tokenizer.pieces) of a long document that hold `limit` bytes or more, and
    their bytes: the cap on the BPE's text holds inside a document too."""
    head, size = [], 0
    for part in pieces(text, PIECE_CHARS):
        head.append(part)
        size += len(part.encode())
        if size >= limit:
            break
    return "".join(head), size


def _in_pieces(texts: list[str], per_batch: int = 4):
    """`texts` in order, as lists to train on: runs of short documents together, a long document
    as its pieces (tokenizer.pieces), a few at a time, so that the BPE trainer's memory stays
    bounded. The trainer counts words, and pieces hold the same words: the tokenizer is the same."""
    run = []
    for text in texts:
        if len(text) <= PIECE_CHARS:
            run.append(text)
            continue
        if run:
            yield run
            run = []
        parts = pieces(text, PIECE_CHARS)
        for i in range(0, len(parts), per_batch):
            yield parts[i:i + per_batch]
    if run:
        yield run


def get_tokenizer(train_args: config.TrainArgs, model_args: config.ModelArgs, train: Split,
                  log=print) -> Tokenizer:
    """--tokenizer if given, else the cached BPE for this training text and vocabulary, else train it."""
    if train_args.tokenizer:
        tok = Tokenizer.load(train_args.tokenizer)
        log(f"data: tokenizer: {train_args.tokenizer} ({tok.vocab_size} tokens)")
        check_tokenizer(tok, model_args, f"--tokenizer {train_args.tokenizer}")
        return tok
    mb = train_args.tokenizer_train_mb
    vocab = model_args.vocab_size
    cap = max(1, int(mb * 1e6)) if mb else 0  # a tiny cap is 1 byte, not all
    key = _key({"source": train.signature, "vocab_size": vocab, "cap_bytes": cap, "format": TOKENIZER_FORMAT,
                "special": list(SPECIAL_TOKENS.values())})
    path = Path(train_args.cache_dir) / f"tokenizer-{key}" / "tokenizer.json"
    with _building(path.parent, Path(train_args.cache_dir), log):  # another run may be training it
        tok = _cached_tokenizer(path, log)
        if tok is None:
            t0, used = time.time(), {}
            log(f"data: tokenizer: cache miss, training a {vocab}-token byte-level BPE on "
                + (f"at most {train_args.tokenizer_train_mb:g} MB (--tokenizer_train_mb) of " if cap else "")
                + "the training text")
            try:
                tok = Tokenizer.train(_texts(train.documents(), BATCH_DOCS, cap, used), vocab)
            except DataError as e:
                if used.get("bytes") == 0:
                    raise DataError(f"{train.label} has no usable text; check the files") from None
                if used.get("capped"):  # more text was there: the cap is the fix too
                    raise DataError(f"{e}, or raise --tokenizer_train_mb (the first {mb:g} MB were read)") \
                        from None
                raise
            tok.save(path, CACHE_FIX)
            what = "the start of the training text, capped" if used["capped"] else "all the training text"
            log(f"data: tokenizer: trained on {_size(used['bytes'])} ({what}) in {time.time() - t0:.1f} s "
                f"-> {path}")
    check_tokenizer(tok, model_args)
    return tok


def _cached_tokenizer(path: Path, log) -> Tokenizer | None:
    if path.is_file():
        try:
            tok = Tokenizer.load(path)
            log(f"data: tokenizer: cache hit {path} ({tok.vocab_size} tokens)")
            return tok
        except DataError as e:
            log(f"data: tokenizer: not reusing {path}: {e}")
    return None


def get_tokens(name: str, split: Split, tok: Tokenizer, cache_dir, threads: int = 1, log=print) -> TokenData:
    """The split's token shard: from the cache when source and tokenizer match, else tokenized now."""
    key = _key({"source": split.signature, "tokenizer": tok.hash, "format": FORMAT})
    folder = Path(cache_dir) / "tokens" / f"{name}-{key}"
    with _building(folder, Path(cache_dir), log):
        if folder.exists():
            try:
                shard = TokenData(folder, tok.hash)
                if shard.meta.get("key") != key:
                    raise DataError(f"{folder} holds other text (key {shard.meta.get('key')}, not {key})")
                log(f"data: {name}: cache hit {folder}: {_n(shard.n_docs, 'document')}, "
                    f"{_n(shard.n_tokens, 'token')}, {_n(shard.n_bytes, 'byte')}")
                return shard
            except DataError as e:
                why = str(e).split("; ")[0]  # (its advice, "run again to rebuild it", is what follows)
                log(f"data: {name}: not reusing the cache: {why}; rebuilding it")
        t0 = time.time()
        ds = split.documents()
        batches = (b["text"] for b in ds.iter(batch_size=BATCH_DOCS * threads))
        shard = write_tokens(folder, batches, tok, threads=threads, total=len(ds), what=split.label,
                            desc=f"tokenizing {name}", meta={"key": key, "split": name, "source": split.label,
                                                             "signature": split.signature})
    dt = time.time() - t0
    log(f"data: {name}: cache miss, tokenized {_n(shard.n_docs, 'document')} -> "
        f"{_n(shard.n_tokens, 'token')} ({shard.n_bytes / shard.n_tokens:.2f} bytes/token) in {dt:.1f} s "
        f"({shard.n_bytes / 1e6 / dt:.1f} MB/s, {threads} thread{'s' * (threads > 1)}) -> {folder}")
    _log_superseded(name, shard.meta, folder, Path(cache_dir), log)
    return shard


def _log_superseded(name: str, meta: dict, folder: Path, cache_dir: Path, log) -> None:
    """After a cache miss, one line naming the other shards of this split in cache_dir/tokens/ made
    from the same source (the same files by path, or the same hub split, read the same way) by the
    same tokenizer, but under other rules or from an earlier version of the files. They are left
    there: a run started before the change, or an older checkout, may use them (a shard's lock is
    held while it is built or checked, not while a run trains on it). Those whose meta.json cannot
    be read, and those another process holds the lock of (building or checking them), are left out;
    an OSError skips a folder."""
    def origin(m: dict) -> tuple:  # (what a new version of the files or of our rules leaves alone)
        sig, source = m["signature"], m["signature"]["source"]
        files = None if "hub" in source else [f[0] for f in source["files"]]
        return (m["split"], m["tokenizer_hash"], {**sig, "source": None, "counting": None},
                {**source, "files": files, "documents": None, "rows": None})

    ours, found = origin(meta), []
    try:
        paths = sorted(folder.parent.iterdir())
    except OSError:
        return
    for path in paths:
        try:
            if path.name == folder.name or origin(json.loads((path / "meta.json").read_bytes())) != ours:
                continue
            if not storage.held(_lock_path(path, cache_dir)):
                found.append((path, sum(e.stat().st_size for e in os.scandir(path) if e.is_file())))
        except (OSError, ValueError, LookupError, TypeError, AttributeError):
            continue
    if found:
        them, more = "it" if len(found) == 1 else "them", f" (and {len(found) - 3} more)" * (len(found) > 3)
        log(f"data: {name}: {folder.parent} also holds {_n(len(found), 'older cache')} of this source and "
            f"tokenizer ({_size(sum(size for _, size in found))}), made by other rules of this project or "
            f"from an earlier version of the files; delete {them} once no run still training on {them} and "
            f"no older checkout of this project uses {them}: "
            f"rm -r {' '.join(shlex.quote(str(p)) for p, _ in found[:3])}{more}")


@contextmanager
def _cache_writes(cache_dir):
    """An OSError while reading sources or building caches (a full disk under --cache_dir above all;
    `datasets` wraps it in its own errors) becomes one DataError line naming the fix."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        cause = _os_error(e)
        if cause is None:
            raise
        if cause.errno in CACHE_FULL:
            reason, fix = storage.REASONS[cause.errno], storage.advice(cause, CACHE_FIX)
            raise DataError(f"cannot write the cache under --cache_dir {cache_dir}: {reason} "
                            f"({cause.strerror}); {fix}") from None
        if _not_writable(cause, cache_dir):
            raise DataError(f"cannot write the cache under --cache_dir {cache_dir}: the folder is not "
                            f"writable ({cause.strerror}); pick a writable --cache_dir") from None
        where = cause.filename or f"--cache_dir {cache_dir}"
        raise DataError(f"{where}: {cause.strerror or first_line(cause)}; check the path, its permissions "
                        "and --cache_dir") from None


def _not_writable(cause: OSError, cache_dir) -> bool:
    """Whether an OSError is a write refused in cache_dir: a read-only disk (nothing is written
    elsewhere), or no permission for a file in it or for a folder on the way to it (a source file
    not readable is another matter)."""
    if cause.errno == errno.EROFS:
        return True
    if cause.errno != errno.EACCES:
        return False
    if cause.filename is None:
        return True
    path, cache = Path(os.fsdecode(cause.filename)).resolve(), Path(cache_dir).resolve()
    return path.is_relative_to(cache) or cache.is_relative_to(path)


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind an exception (`datasets` and pyarrow wrap it in their own), or None."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def _lock_path(folder: Path, cache_dir: Path) -> Path:
    """The lock file of a cache folder: cache_dir/.locks/<its path under cache_dir, - for />.lock."""
    return cache_dir / ".locks" / f"{'-'.join(folder.relative_to(cache_dir).parts)}.lock"


@contextmanager
def _building(folder: Path, cache_dir: Path, log):
    """One process at a time builds (or checks) a cache folder: two runs sharing --cache_dir would
    otherwise delete each other's files, or both train a tokenizer. The lock is in cache_dir/.locks/."""
    path = _lock_path(folder, cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        held = storage.lock(path)
    except storage.Busy as e:
        log(f"data: {folder} is being built by another process ({e.holder}); waiting for it")
        held = storage.lock(path, wait=True)
    except OSError as e:  # a read-only cache (a shared, finished one): nobody builds in it, so no lock;
        # a cache miss fails at its first write instead (a lock file of another user's that this one
        # cannot open, in a folder it can write, is no such thing: refused, as builds would race)
        read_only = e.errno == errno.EROFS or (e.errno == errno.EACCES and not os.access(cache_dir, os.W_OK))
        if e.errno in (errno.ENOTDIR, errno.EEXIST):  # (--cache_dir names a file)
            raise DataError(f"--cache_dir {cache_dir}: a file is where a folder should be ({e.filename}); "
                            f"{CACHE_FIX}") from None
        if not read_only:
            raise
        held = None
    try:
        yield
    finally:
        if held is not None:
            held.close()


def prepare(train_args: config.TrainArgs, model_args: config.ModelArgs,
            log=print) -> tuple[Tokenizer, TokenData, TokenData]:
    """Sources -> tokenizer -> token shards for a run; everything made is cached under --cache_dir.

    Raises DataError (one line) on bad input or a full disk: the entry point prints it and exits
    with status 1. Under DDP, let rank 0 call it first (the others wait at a barrier, then get
    cache hits); separate runs sharing --cache_dir wait for each other's builds (a lock per folder).
    """
    threads, log = train_args.num_proc or os.cpu_count() or 1, _printing(log)
    with errors.signals_kept(), _cache_writes(train_args.cache_dir):
        train_split, val_split = resolve_sources(train_args, log)
        tok = get_tokenizer(train_args, model_args, train_split, log)
        train = get_tokens("train", train_split, tok, train_args.cache_dir, threads, log)
        T = model_args.max_seq_len
        if train.n_tokens < T + 1:
            raise DataError(f"{train_split.label}: {train.n_tokens} tokens, fewer than one training window "
                            f"of --max_seq_len + 1 = {T + 1}; add text or lower --max_seq_len")
        val = get_tokens("val", val_split, tok, train_args.cache_dir, threads, log)
    _log_coverage(val, T, train_args.eval_windows, log)
    return tok, train, val


def prepare_eval(train_args: config.TrainArgs, model_args: config.ModelArgs, tok: Tokenizer,
                 log=print) -> TokenData:
    """The validation shard alone, for a given tokenizer (evaluating a checkpoint): no BPE training
    and no training shard, but the same sources, cache and windows as prepare()."""
    check_tokenizer(tok, model_args)
    log = _printing(log)
    with errors.signals_kept(), _cache_writes(train_args.cache_dir):
        _, val_split = resolve_sources(train_args, log, need_train=False)
        val = get_tokens("val", val_split, tok, train_args.cache_dir,
                         train_args.num_proc or os.cpu_count() or 1, log)
    _log_coverage(val, model_args.max_seq_len, train_args.eval_windows, log)
    return val


def _printing(log):
    """`log`, whose own failure (standard output closed, as by `| head`, or on a full disk) is a
    DataError naming it: _cache_writes would put that OSError down to --cache_dir."""
    def checked(msg: str):
        try:
            log(msg)
        except OSError as e:
            raise DataError(f"cannot print the log ({e.strerror or e}): standard output is closed or its "
                            "disk is full; send it to a file with room, or to a terminal") from None
    return checked


def _log_coverage(val: TokenData, T: int, max_windows: int, log) -> None:
    windows = n_val_windows(val.tokens, T, max_windows)
    covered, targets = min(windows * T, val.n_tokens - 1), val.n_tokens - 1
    log(f"data: validation: {covered:,} of {targets:,} targets in {_n(windows, 'window')} of {T} tokens"
        + (" (all)" if covered == targets else f" (the first {windows} windows: --eval_windows)"))


# ---------------------------------------------------------------------------------------------
# Batches


def get_batch(tokens, batch_size: int, seq_len: int, *, seed: int, step: int, micro: int):
    """A training micro-batch (x, y), int64 tensors of shape (batch_size, seq_len), y = x shifted by one.

    Windows of seq_len + 1 tokens start at random offsets drawn by numpy's default_rng seeded with
    (seed, step, micro): a pure function of those three, so resuming at step k sees exactly the
    batches an uninterrupted run would have. With grad_accum micro-batches per step split over W
    DDP ranks, rank r takes micro = r, r + W, r + 2W, ...: one process and W processes see the same
    global batch, and no two ranks ever draw the same stream.
    """
    tokens = getattr(tokens, "tokens", tokens)
    n = len(tokens)
    if n < seq_len + 1:
        raise DataError(f"the training split has {n} tokens, fewer than one window of {seq_len + 1}; add "
                        "text or lower --max_seq_len")
    rng = np.random.default_rng([seed, step, micro])
    starts = rng.integers(0, n - seq_len, size=batch_size)  # (B,)
    rows = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)  # (B, T + 1)
    return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())


def n_val_windows(tokens, seq_len: int, max_windows: int = 0) -> int:
    """Number of validation windows: ceil((len(tokens) - 1) / seq_len), capped at max_windows if > 0."""
    n = max(0, math.ceil((len(getattr(tokens, "tokens", tokens)) - 1) / seq_len))
    return min(n, max_windows) if max_windows > 0 else n


def rank_windows(n_windows: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous (start, stop) range of validation windows that DDP rank `rank` evaluates."""
    return rank * n_windows // world_size, (rank + 1) * n_windows // world_size


def val_windows(tokens, seq_len: int, max_windows: int = 0, start: int = 0, stop: int | None = None,
                pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation windows start..stop as two int64 tensors (n, seq_len): fixed, ordered and
    non-overlapping, independent of world size.

    Window i has x = tokens[i*T : i*T + T] and y = tokens[i*T + 1 : i*T + T + 1] (T = seq_len);
    the last window is padded (x with pad_id, y with -1 = ignore), so every token after the first
    is a target exactly once. max_windows > 0 keeps the first max_windows windows: a fixed prefix.
    start/stop select a range of windows (see rank_windows).
    """
    tokens = getattr(tokens, "tokens", tokens)
    total = n_val_windows(tokens, seq_len, max_windows)
    stop = total if stop is None else min(stop, total)
    first = np.arange(start, max(start, stop))[:, None] * seq_len  # (n, 1) first token of each window
    idx = first + np.arange(seq_len + 1)  # (n, T + 1)
    real = idx < len(tokens)
    rows = np.asarray(tokens[np.minimum(idx, len(tokens) - 1).ravel()], dtype=np.int64).reshape(idx.shape)
    x = np.where(real[:, 1:], rows[:, :-1], pad_id)
    y = np.where(real[:, 1:], rows[:, 1:], -1)
    return torch.from_numpy(x), torch.from_numpy(y)


def count_bytes(y, token_bytes: np.ndarray) -> int:
    """UTF-8 bytes that the real targets (y >= 0) of a batch decode to."""
    y = y.detach().cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
    return int(token_bytes[y[y >= 0]].sum())


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Summed cross-entropy (nats) over the targets / (ln 2 x the UTF-8 bytes those targets decode to)."""
    return total_nats / (math.log(2) * n_bytes)


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    prog = "data.py"
    _, (model_args, train_args) = config.parse_args(
        [config.ModelArgs, config.TrainArgs], argv, prog=prog,
        description="Prepare a run's tokenizer and token shards (train.py does this itself).")
    if not train_args.tokenizer and (problem := too_small(model_args.vocab_size)):  # before reading text
        print(f"{prog}: error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        prepare(train_args, model_args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; the caches already complete are kept, the others rebuilt next time",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
