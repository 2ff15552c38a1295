"""Data: documents in (from sources.py), token shards out (through the tokenizer of tokenizer.py),
then batches.

    prepare(train_args, model_args)  sources -> tokenizer -> token shards: a training run's data
    prepare_eval(..., tokenizer)     the validation shard alone, for evaluating a checkpoint
    TokenData                        one tokenized split: tokens.bin (read through np.memmap) + meta.json
    get_batch                        random training windows, a pure function of (seed, step, micro)
    val_windows, n_val_windows       fixed, ordered windows that cover the validation split once
    rank_windows                     the part of them a DDP rank evaluates
    count_bytes, bits_per_byte       exact bits-per-byte bookkeeping

Sources (TinyStories from the Hugging Face Hub, or local .txt, .jsonl, .json, .parquet and .arrow
files), how their text splits into documents and the held-out validation slice live in sources.py:
sources.resolve_sources gives the two splits that prepare tokenizes.

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
  the 1.9 GB TinyStories shard). A shard that fails is rebuilt, with a log line. So is a cached
  tokenizer that is not the one trained there (a tokenizer.json copied over it): its size, special ids
  and hash are checked against the folder's key and its meta.json.
- One process at a time builds or checks a cache folder or trains a tokenizer (an flock in
  --cache_dir/.locks/): runs sharing --cache_dir wait for each other's builds instead of deleting
  each other's files or training the same tokenizer twice.
- Nothing under --cache_dir is deleted (a run started before the change, or an older checkout of
  the project, may still read a shard) but the temporary files killed builds left in shard folders
  (up to a shard's size each), under each folder's lock, so never one a live build is writing:
  a cache miss names, in one log line with their size and an `rm -r` command, the older shards of
  the same files (or hub split) and tokenizer that other document rules, another shard format or an
  earlier version of the files left behind (1.9 GB each on TinyStories), but for those another
  process holds the lock of. Shards of another tokenizer are never named: another run may use them.
  A tokenizer trained names, in one such line, the other tokenizers cached there (each training text,
  --vocab_size or --tokenizer_train_mb makes one, a few MB each), for the user to delete those unused.
- A full disk under --cache_dir (or a file past `ulimit -f`; while writing a shard, the tokenizer,
  or `datasets`' own cache, which wraps the OSError in its errors) is one DataError/StorageError
  line naming --cache_dir; so is a --cache_dir that cannot be written (read-only, or not ours) on
  a cache miss. A log line that cannot be printed (standard output closed, as by `| head`, or on
  a full disk) is one line naming standard output, not the cache.
- A document longer than 2^20 characters (PIECE_CHARS, about 1 MB) is tokenized (and the BPE
  trained on it) in pieces cut where the byte-level pre-tokenizer starts a word anyway
  (tokenizer.pieces): the same ids, bounded memory. `datasets` still holds
  such a document as one row, so reading it costs its size in memory a few times over.
- Parallel tokenization uses num_proc Python threads over the Rust encoder (which releases the
  GIL) instead of processes: no pickling or start-up cost, so it pays off even for small files, and
  the output is identical to a serial loop. Batches are streamed, so memory does not grow with the
  corpus. The threads are at most one per CPU core (tokenizer_threads): the work is CPU-bound, and
  each thread's share of a batch (BATCH_DOCS documents) is held in memory.
- Bits per byte count the separator as 0 bytes, while its prediction loss still counts: the figure
  is slightly conservative (higher) compared with counting only text tokens.
- The BPE is trained on at most --tokenizer_train_mb MB from the start of the training split
  (whole documents, but of one over PIECE_CHARS only its pieces up to the cap); the full
  TinyStories training split is ~1.9 GB.

`python data.py --preset tiny --data FILE` prepares a run's tokenizer and shards without training.
"""

import errno
import hashlib
import json
import math
import os
import shlex
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import errors  # first: a Ctrl-C during the slow imports below is one line, not a traceback

# isort: split
import numpy as np
import torch
from tqdm import tqdm

import config
import sources
import storage
from config import SPECIAL_TOKENS
from errors import DataError, UserError, first_line
from sources import in_bytes, plural  # (log-line formatting; the rest is used as sources.X)
from tokenizer import PIECE_CHARS, Tokenizer, check_tokenizer, pieces, too_small

FORMAT = 2  # version of the shard layout and meta.json; caches of another version are rebuilt
META_FIELDS = ("tokenizer_hash", "vocab_size", "dtype", "n_tokens", "n_docs", "n_bytes", "sha256", "mtime_ns")
META_TYPES = {"tokenizer_hash": str, "dtype": str, "sha256": str}  # (the others: whole numbers)
DTYPES = ("uint16", "uint32")  # what write_tokens writes
REBUILD = "run again to rebuild it"  # the advice for a shard that fails its checks
TOKENIZER_FORMAT = 3  # version of the tokenizer training rules; cached tokenizers of another are retrained
# (2: long runs reach the trainer in pieces; a text without them trains the same tokenizer as 1;
# 3: a document over PIECE_CHARS that crosses --tokenizer_train_mb gives only its pieces up to it)
CACHE_FIX = "pick another --cache_dir"  # where a write under --cache_dir fails
BATCH_DOCS = 1024  # documents per thread per tokenization batch


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
            raise DataError(f"{self.path} has no meta.json: the tokenization did not finish", REBUILD)
        try:
            meta = json.loads(meta_path.read_bytes())
        except ValueError:
            raise DataError(f"{meta_path} is not valid JSON", "delete it and run again") from None
        if not isinstance(meta, dict):
            raise DataError(f"{meta_path} is not a table of the shard's figures", REBUILD)
        if meta.get("format") != FORMAT:
            raise DataError(f"{self.path} was written in format {meta.get('format')}, not {FORMAT}", REBUILD)
        missing = [k for k in META_FIELDS if k not in meta]
        if missing:  # (a hand edit, or a damaged file that is still JSON)
            raise DataError(f"{meta_path} lacks {', '.join(missing)}", REBUILD)
        if wrong := _wrong_type(meta):  # (a flipped bit, a hand edit: a TypeError or ValueError below)
            raise DataError(f"{meta_path}: {wrong}", REBUILD)
        if tokenizer_hash is not None and meta["tokenizer_hash"] != tokenizer_hash:
            raise DataError(f"{self.path} was written by tokenizer {meta['tokenizer_hash'][:12]}, not by "
                            f"this run's {tokenizer_hash[:12]}", "delete it or let prepare() rebuild it")
        dtype = np.dtype(meta["dtype"])
        if not bin_path.is_file():
            raise DataError(f"{bin_path} is missing (meta.json promises {meta['n_tokens']:,} tokens)",
                            REBUILD)
        st = bin_path.stat()
        if st.st_size != meta["n_tokens"] * dtype.itemsize:
            raise DataError(f"{bin_path} holds {st.st_size:,} bytes, not the {meta['n_tokens']:,} tokens "
                            "meta.json promises", REBUILD)
        if st.st_mtime_ns != meta["mtime_ns"] and _sha256(bin_path) != meta["sha256"]:
            raise DataError(f"{bin_path} changed since it was written (its sha256 is not the one meta.json "
                            "recorded)", REBUILD)
        self.meta = meta
        self.tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(meta["n_tokens"],))
        top = _max_id(self.tokens)
        if top >= meta["vocab_size"]:
            raise DataError(f"{bin_path} holds token id {top}, outside the tokenizer's {meta['vocab_size']} "
                            "tokens", REBUILD)

    n_tokens = property(lambda self: self.meta["n_tokens"])
    n_bytes = property(lambda self: self.meta["n_bytes"])
    n_docs = property(lambda self: self.meta["n_docs"])

    def __len__(self):
        return self.n_tokens

    def __repr__(self):
        return f"TokenData({str(self.path)!r}, {self.n_tokens:,} tokens, {self.n_docs:,} documents)"


def _wrong_type(meta: dict) -> str | None:
    """What is wrong with the type of a field of meta.json, or None: text, a whole number (not a
    bool), a dtype that write_tokens writes."""
    for k in META_FIELDS:
        kind = META_TYPES.get(k, int)
        if not isinstance(meta[k], kind) or isinstance(meta[k], bool):
            return f"{k} is {meta[k]!r}, not {'text' if kind is str else 'a whole number'}"
    if meta["dtype"] not in DTYPES:
        return f"dtype is {meta['dtype']!r}, not {' or '.join(DTYPES)}"
    return None


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
                texts = [s for s in map(sources.document, batch) if s]
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

    try:
        storage.atomic_write(folder / "tokens.bin", write, CACHE_FIX)
    except BaseException:  # (a Ctrl-C, text with no document: no empty folder for the next run to explain)
        with suppress(OSError):
            folder.rmdir()  # (only where it is empty)
        raise
    meta = {**(meta or {}), "format": FORMAT, "tokenizer_hash": tokenizer.hash,
            "vocab_size": tokenizer.vocab_size, "dtype": dtype.name, "n_tokens": counts["tokens"],
            "n_docs": counts["docs"], "n_bytes": counts["bytes"], "max_id": counts["max_id"],
            "sha256": sha.hexdigest(), "mtime_ns": (folder / "tokens.bin").stat().st_mtime_ns,
            "layout": "[eos] doc [eos] doc ..."}
    storage.save_json(folder / "meta.json", meta, CACHE_FIX)
    return TokenData(folder, tokenizer.hash)


# ---------------------------------------------------------------------------------------------
# prepare(): a training run's data (prepare_eval: a checkpoint's evaluation)


def _texts(ds, batch_size: int, cap_bytes: int = 0, used: dict | None = None):
    """Batches of stripped, non-empty documents of `ds`, a long one as its pieces (_in_pieces), to
    train the BPE on; with cap_bytes, stop once that many bytes are given (the document that crosses
    the cap included, a long one up to its piece that does). `used` gets the bytes given and whether
    the cap was reached."""
    total = 0
    for batch in ds.iter(batch_size=batch_size):
        texts = [s for s in map(sources.document, batch["text"]) if s]
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


def get_tokenizer(train_args: config.TrainArgs, model_args: config.ModelArgs, train: sources.Split,
                  log=print, val: sources.Split | None = None) -> Tokenizer:
    """--tokenizer if given, else the cached BPE for this training text and vocabulary, else train it.
    Before training one, `val`'s documents are loaded: what is wrong with them (a file of whitespace, a
    held-out slice of none) is said before the BPE pass, not after (a new tokenizer's val shard is
    a cache miss: they are loaded anyway)."""
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
    with _building(path.parent, Path(train_args.cache_dir), log) as no_room:  # another run may train it
        tok = _cached_tokenizer(path, vocab, log)
        if tok is None:
            if no_room:
                raise no_room
            if val is not None:
                val.documents()
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
            # the record first (_cached_tokenizer checks it: a tokenizer.json copied over this one is not
            # taken for it), so that a tokenizer.json in the cache always has it (a full disk refusing it
            # left one without, which later hits never wrote)
            storage.make_folder(path.parent, CACHE_FIX)
            storage.save_json(path.parent / "meta.json", {"tokenizer_hash": tok.hash}, CACHE_FIX)
            tok.save(path, CACHE_FIX)
            what = "the start of the training text, capped" if used["capped"] else "all the training text"
            log(f"data: tokenizer: trained on {in_bytes(used['bytes'])} ({what}) in {time.time() - t0:.1f} s "
                f"-> {path}")
            _log_other_tokenizers(path.parent, Path(train_args.cache_dir), log)
    check_tokenizer(tok, model_args)
    return tok


def _log_other_tokenizers(folder: Path, cache_dir: Path, log) -> None:
    """After a tokenizer is trained into `folder`, one line naming the other tokenizer folders in
    cache_dir (each new training text, --vocab_size or --tokenizer_train_mb makes one, a few MB each),
    oldest first, with their size: said as a tokenizer is trained, not at every hit. They are left
    there: a run may use them (another --vocab_size is no older one). Those another process holds the
    lock of (training or checking them now) are left out; an OSError skips a folder."""
    found = []
    try:
        paths = [p for p in cache_dir.glob("tokenizer-*") if p.name != folder.name]
    except OSError:
        return
    for path in paths:
        with suppress(OSError):
            if path.is_dir() and not storage.held(_lock_path(path, cache_dir)):
                size = sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
                found.append((path.stat().st_mtime_ns, path, size))
    if found:
        found.sort()
        n, more = len(found), f" (and {len(found) - 3} more)" * (len(found) > 3)
        kept, them, delete = ("it is", "it", "delete it if no run does") if n == 1 else \
            ("they are", "them", "delete those no run uses")
        total = in_bytes(sum(size for *_, size in found))
        named = " ".join(shlex.quote(str(p)) for _, p, _ in found[:3])
        log(f"data: tokenizer: {cache_dir} also holds {plural(n, 'other cached tokenizer')} ({total}), "
            f"trained on other text, with other settings or by an older version of this project; {kept} kept "
            f"for the runs that use {them}: {delete} (a run folder keeps its own tokenizer.json, and a "
            f"deleted one is trained again when a run wants it): rm -r {named}{more}")


def _cached_tokenizer(path: Path, vocab_size: int, log) -> Tokenizer | None:
    """The tokenizer cached at `path`, or None to train it again: a file that cannot be read, or one that
    is not the one trained there (a tokenizer.json copied over it by hand), with a log line saying why."""
    if path.is_file():
        try:
            tok = Tokenizer.load(path)
            if why := _not_trained_here(tok, path.parent / "meta.json", vocab_size):
                raise DataError(f"{path} is not the tokenizer trained there ({why}; pass a tokenizer of your "
                                "own with --tokenizer FILE)")
            log(f"data: tokenizer: cache hit {path} ({tok.vocab_size} tokens)")
            return tok
        except DataError as e:  # (its advice, e.fix, is for a --tokenizer typed: "leave --tokenizer empty")
            log(f"data: tokenizer: not reusing the cache: {e.problem}; training it again")
    return None


def _not_trained_here(tok: Tokenizer, record: Path, vocab_size: int) -> str | None:
    """How a cached tokenizer differs from the one trained in its folder, or None: the vocabulary asked
    for (in the folder's key), the special tokens at the ids training gives them, and the hash that
    `record` (meta.json, written beside it) holds. A cache trained before there was a record has none
    (and a damaged record counts as none): the first two checks alone."""
    trained = {name: i for i, name in enumerate(SPECIAL_TOKENS)}  # (Tokenizer.train puts them first)
    if tok.vocab_size != vocab_size:
        return f"{tok.vocab_size} tokens, not the {vocab_size} it was trained with"
    if tok.special_ids() != trained:
        return f"its special tokens are not at ids 0 to {len(trained) - 1}, where training puts them"
    try:
        recorded = json.loads(record.read_bytes()).get("tokenizer_hash") if record.is_file() else None
    except (ValueError, AttributeError):  # (damaged, or JSON of another shape: as if there were none)
        recorded = None
    if isinstance(recorded, str) and recorded != tok.hash:
        return f"sha256 {tok.hash[:12]}, not the {recorded[:12]} it was trained with"
    return None


def tokenizer_threads(num_proc: int) -> int:
    """--num_proc as the tokenizer's threads: 0 is one per CPU core, and more than the cores is the cores
    (the encoding is CPU-bound, so more threads only add memory: each holds BATCH_DOCS documents, and
    --num_proc 100000 read 100 million documents into memory at once, on as many threads); where the cores
    are not known, --num_proc as given (0: one thread)."""
    cores = os.cpu_count() or num_proc or 1
    return min(num_proc, cores) or cores


def get_tokens(name: str, split: sources.Split, tok: Tokenizer, cache_dir, threads: int = 1,
               log=print) -> TokenData:
    """The split's token shard: from the cache when source and tokenizer match, else tokenized now."""
    key = _key({"source": split.signature, "tokenizer": tok.hash, "format": FORMAT})
    folder = Path(cache_dir) / "tokens" / f"{name}-{key}"
    with _building(folder, Path(cache_dir), log) as no_room:
        if folder.exists():
            try:
                shard = TokenData(folder, tok.hash)
                if shard.meta.get("key") != key:
                    raise DataError(f"{folder} holds other text (key {shard.meta.get('key')}, not {key})")
                log(f"data: {name}: cache hit {folder}: {plural(shard.n_docs, 'document')}, "
                    f"{plural(shard.n_tokens, 'token')}, {plural(shard.n_bytes, 'byte')}")
                return shard
            except DataError as e:
                log(f"data: {name}: not reusing the cache: {e.problem}; rebuilding it")  # (not e.fix)
        if no_room:
            raise no_room
        t0 = time.time()
        ds = split.documents()
        batches = (b["text"] for b in ds.iter(batch_size=BATCH_DOCS * threads))
        shard = write_tokens(folder, batches, tok, threads=threads, total=len(ds), what=split.label,
                            desc=f"tokenizing {name}", meta={"key": key, "split": name, "source": split.label,
                                                             "signature": split.signature})
    dt = time.time() - t0
    log(f"data: {name}: cache miss, tokenized {plural(shard.n_docs, 'document')} -> "
        f"{plural(shard.n_tokens, 'token')} ({shard.n_bytes / shard.n_tokens:.2f} bytes/token) in {dt:.1f} s "
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
        total = in_bytes(sum(size for _, size in found))
        log(f"data: {name}: {folder.parent} also holds {plural(len(found), 'older cache')} of this source "
            f"and tokenizer ({total}), made by other rules of this project or from an earlier version of the "
            f"files; delete {them} once no run still training on {them} and no older checkout of this "
            f"project uses {them}: rm -r {' '.join(shlex.quote(str(p)) for p, _ in found[:3])}{more}")


@contextmanager
def _cache_writes(cache_dir):
    """An OSError while reading sources or building caches (a full disk under --cache_dir above all;
    `datasets` wraps it in its own errors) becomes one DataError line naming the fix."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        cause = storage.os_error_in(e)
        if cause is None:
            raise
        if cause.errno in storage.NO_ROOM:
            reason, fix = storage.REASONS[cause.errno], storage.advice(cause, CACHE_FIX)
            raise DataError(f"cannot write the cache under --cache_dir {cache_dir}: {reason} "
                            f"({cause.strerror}); {fix}") from None
        if storage.refused_in(cause, cache_dir):
            raise DataError(f"cannot write the cache under --cache_dir {cache_dir}: the folder is not "
                            f"writable ({cause.strerror}); pick a writable --cache_dir") from None
        where = cause.filename or f"--cache_dir {cache_dir}"
        raise DataError(f"{where}: {cause.strerror or first_line(cause)}; check the path, its permissions "
                        "and --cache_dir") from None


def _lock_path(folder: Path, cache_dir: Path) -> Path:
    """The lock file of a cache folder: cache_dir/.locks/<its path under cache_dir, - for />.lock (by
    these files, left in place, sources.project_folder knows a cache that another run's --data holds)."""
    return cache_dir / ".locks" / f"{'-'.join(folder.relative_to(cache_dir).parts)}.lock"


def _sweep_temporaries(cache_dir: Path, log) -> None:
    """Delete the temporary files (.tmp-*) that killed builds left in the shard folders of the cache
    (a shard's is up to its size: 1.9 GB on TinyStories), whichever shards this run builds: each
    folder's under its lock (_building), which every build holds while it writes there, so a folder
    another process builds or checks now (another run sharing --cache_dir, another rank) is left
    alone; a folder left empty goes, as write_tokens removes one it leaves so. A lock file with no
    room for its line is held empty (storage.lock's full_ok: a full disk is where the room is wanted
    most); an OSError (a read-only cache, another user's lock, no room for .locks/) skips a folder.
    One log line says what went."""
    removed, size = 0, 0
    try:
        folders = sorted(cache_dir.glob("tokens/*"))
    except OSError:
        return
    for folder in folders:
        try:
            if not any(folder.glob(".tmp-*")):  # (most folders: no lock taken)
                continue
            path = _lock_path(folder, cache_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            held = storage.lock(path, full_ok=True)
        except (storage.Busy, OSError):
            continue
        try:  # (listed again under the lock: a build that ended meanwhile renamed its own)
            for stale in folder.glob(".tmp-*"):
                with suppress(OSError):
                    n = stale.stat().st_size
                    stale.unlink()
                    removed, size = removed + 1, size + n
            with suppress(OSError):
                folder.rmdir()  # (only where it is empty)
        finally:
            held.close()
    if removed:
        log(f"data: removed {plural(removed, 'temporary file')} ({in_bytes(size)}) that killed builds left "
            f"in {cache_dir / 'tokens'}")


@contextmanager
def _building(folder: Path, cache_dir: Path, log):
    """One process at a time builds (or checks) a cache folder: two runs sharing --cache_dir would
    otherwise delete each other's files, or both train a tokenizer. The lock is in cache_dir/.locks/.
    Yields the OSError that kept it from being taken on a full disk (no room for .locks/ or its
    file), else None: a hit is read without it, and the caller raises that error at a miss (built
    without the lock, it could race a build that another run began once room was freed). A lock file
    made with no room for its line is held all the same (storage.lock's full_ok)."""
    path, no_room = _lock_path(folder, cache_dir), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        held = storage.lock(path, full_ok=True)
    except storage.Busy as e:
        log(f"data: {folder} is being built by another process ({e.holder}); waiting for it")
        held = storage.lock(path, wait=True, full_ok=True)
    except OSError as e:  # a read-only cache (a shared, finished one): nobody builds in it, so no lock;
        # a cache miss fails at its first write instead (a lock file of another user's that this one
        # cannot open, in a folder it can write, is no such thing: refused, as builds would race)
        read_only = e.errno == errno.EROFS or (e.errno == errno.EACCES and not os.access(cache_dir, os.W_OK))
        if e.errno in (errno.ENOTDIR, errno.EEXIST):  # (--cache_dir names a file, or one is above it)
            where = Path(e.filename or path.parent)
            blocker = next((p for p in [where, *where.parents] if p.exists() and not p.is_dir()), where)
            raise DataError(f"--cache_dir {cache_dir}: a file is where a folder should be ({blocker}); "
                            f"{CACHE_FIX}") from None
        if e.errno in storage.NO_ROOM:
            no_room = e
        elif not read_only:
            raise
        held = None
    try:
        yield no_room
    finally:
        if held is not None:
            held.close()


def prepare(train_args: config.TrainArgs, model_args: config.ModelArgs,
            log=print) -> tuple[Tokenizer, TokenData, TokenData]:
    """Sources -> tokenizer -> token shards for a run; everything made is cached under --cache_dir.

    Raises DataError (one line) on bad input or a full disk: the entry point prints it and exits
    with status 1. Under DDP, let rank 0 call it first (the others wait for it, runtime.rank0_first,
    then get cache hits); separate runs sharing --cache_dir wait for each other's builds (a lock per
    folder).
    """
    threads, log = tokenizer_threads(train_args.num_proc), _printing(log)
    with errors.signals_kept(), _cache_writes(train_args.cache_dir):
        train_split, val_split = sources.resolve_sources(train_args, log)
        _sweep_temporaries(Path(train_args.cache_dir), log)
        tok = get_tokenizer(train_args, model_args, train_split, log, val_split)
        # the validation text first: what is wrong with it (a bad file, a held-out slice of none) is
        # said before the long pass over --data (all of TinyStories: minutes), not after
        val = get_tokens("val", val_split, tok, train_args.cache_dir, threads, log)
        train = get_tokens("train", train_split, tok, train_args.cache_dir, threads, log)
        T = model_args.max_seq_len
        if train.n_tokens < T + 1:
            raise DataError(f"{train_split.label}: {train.n_tokens:,} tokens, fewer than one training window "
                            f"of --max_seq_len + 1 = {T + 1:,}; add text or lower --max_seq_len")
    _log_coverage(val, T, train_args.eval_windows, log)
    return tok, train, val


def prepare_eval(train_args: config.TrainArgs, model_args: config.ModelArgs, tok: Tokenizer,
                 log=print) -> TokenData:
    """The validation shard alone, for a given tokenizer (evaluating a checkpoint): no BPE training
    and no training shard, but the same sources, cache and windows as prepare()."""
    check_tokenizer(tok, model_args)
    log = _printing(log)
    with errors.signals_kept(), _cache_writes(train_args.cache_dir):
        _, val_split = sources.resolve_sources(train_args, log, need_train=False)
        _sweep_temporaries(Path(train_args.cache_dir), log)
        val = get_tokens("val", val_split, tok, train_args.cache_dir, tokenizer_threads(train_args.num_proc),
                         log)
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
    log(f"data: validation: {covered:,} of {targets:,} targets in {plural(windows, 'window')} of {T} tokens"
        + (" (all)" if covered == targets else
           f" (the first {'window' if windows == 1 else f'{windows} windows'}: --eval_windows)"))


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
        raise DataError(f"the training split has {n:,} tokens, fewer than one window of {seq_len + 1:,}; add "
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
    """UTF-8 bytes that the real targets (y >= 0) of a batch stand for (a token holding part of a
    character counts the bytes it holds)."""
    y = y.detach().cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
    return int(token_bytes[y[y >= 0]].sum())


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Summed cross-entropy (nats) over the targets / (ln 2 x the UTF-8 bytes those targets decode to)."""
    return total_nats / (math.log(2) * n_bytes)


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    prog = "data.py"
    parsed = config.parse_args([config.ModelArgs, config.TrainArgs], argv, prog=prog,
                               description="Prepare a run's tokenizer and token shards (train.py does this "
                               "itself).")
    _, (model_args, train_args) = parsed
    if not train_args.tokenizer and (problem := too_small(model_args.vocab_size)):  # before reading text
        print(f"{prog}: error: {problem}", file=sys.stderr)
        sys.exit(2)
    for line in sources.source_warnings(train_args, parsed.given):  # (as train.py gives them)
        print(f"warning: {line}")
    restore_sigterm = errors.sigterm_interrupts()  # (a scheduler's stop: a Ctrl-C's line, not a silent 143)
    try:
        prepare(train_args, model_args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; the caches already complete are kept, the others rebuilt next time",
              file=sys.stderr)
        sys.exit(130)
    finally:
        restore_sigterm()


if __name__ == "__main__":
    main()
