"""data.py and sources.py: sources, the BPE tokenizer, token shards and their cache, batches, bits per
byte, bad input.

Every output goes under tmp_path (cache_dir, and with it the `datasets` cache of local files). The
hub is only tested offline (conftest sets HF_HUB_OFFLINE=1): its failure must be fast and one line.
"""

import errno
import gzip
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, debug_args, shared_file, small_filesystem

import data
import errors
import sources
import storage
import tokenizer
from config import SPECIAL_TOKENS, ModelArgs, TrainArgs
from data import TokenData
from errors import ConfigError, DataError, UserError
from tokenizer import Tokenizer

EOT = "<|endoftext|>"
NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max"]
THINGS = ["red ball", "big box", "shiny stone", "little boat", "blue kite", "funny hat", "green frog"]


def stories(n, start=0):
    """n short stories, different from each other, each with two paragraphs."""
    out = []
    for i, (name, thing) in enumerate(itertools.islice(itertools.product(NAMES, THINGS), start, start + n)):
        out.append(f"Once upon a time, {name} found a {thing} in the park. {name} was very happy.\n\n"
                   f"{name} played with the {thing} all day, and story {start + i} ended well.")
    return out


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def official(docs):
    """The official TinyStories .txt layout: stories separated by a line holding <|endoftext|>."""
    return "".join(d + "\n" + EOT + "\n" for d in docs)


def write_jsonl(path, records):
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def targs(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("num_proc", 2)
    return TrainArgs(**kw)


def margs(vocab=300, seq_len=32, **kw):
    return debug_args(vocab_size=vocab, max_seq_len=seq_len, **kw)


def run(tmp_path, vocab=300, seq_len=32, **kw):
    logs = []
    tok, train, val = data.prepare(targs(tmp_path, **kw), margs(vocab, seq_len), log=logs.append)
    return tok, train, val, logs


def stream(docs):
    return "".join(EOT + d.strip() for d in docs)


@pytest.fixture
def corpus(tmp_path):
    """Training stories in the official layout, validation stories separated by blank lines."""
    train_docs, val_docs = stories(30), [s.replace("\n\n", " ") for s in stories(5, start=30)]
    train = write(tmp_path / "src" / "train.txt", official(train_docs))
    val = write(tmp_path / "src" / "val.txt", "\n\n".join(val_docs) + "\n")
    return train, val, train_docs, val_docs


def small_tokenizer(vocab=300):
    return Tokenizer.train(stories(30), vocab)


# ---------------------------------------------------------------------------------------------
# Formats


def test_txt_official_layout_and_blank_line_documents(tmp_path, corpus):
    train_path, val_path, train_docs, val_docs = corpus
    tok, train, val, logs = run(tmp_path, data=str(train_path), val_data=str(val_path))
    # [eos] doc1 [eos] doc2 ...: the documents, in order, each preceded by the separator
    assert tok.decode(train.tokens) == stream(train_docs)
    assert tok.decode(val.tokens) == stream(val_docs)
    assert train.tokens[0] == tok.eos_id and val.tokens[0] == tok.eos_id
    assert (train.n_docs, val.n_docs) == (30, 5)
    assert train.n_bytes == sum(len(d.encode()) for d in train_docs)
    assert train.tokens.dtype == np.uint16 and not train.tokens.flags.writeable
    assert train.meta["n_tokens"] == len(train.tokens) == train.n_tokens
    assert any("train: cache miss, tokenized 30 documents" in line for line in logs)


@pytest.mark.parametrize("text, docs", [
    # a stray marker inside a line of a blank-line file is text (it merged 146 documents into two)
    ("".join(f"story {i}.\n\n" for i in range(150)) + "it says <|endoftext|> aloud.\n",
     [f"story {i}." for i in range(150)] + ["it says <|endoftext|> aloud."]),
    # ... but markers in a file of many paragraphs per document separate its documents
    ("\n\n".join(f"p{i}." for i in range(10)) + "<|endoftext|>" + "\n\n".join(f"q{i}." for i in range(10)),
     ["\n\n".join(f"p{i}." for i in range(10)), "\n\n".join(f"q{i}." for i in range(10))]),
    # line endings as a reader reads them: a lone \r (old Macs) too
    ("".join(f"story {i}.\r\r" for i in range(150)) + "it says <|endoftext|> aloud.\r",
     [f"story {i}." for i in range(150)] + ["it says <|endoftext|> aloud."]),
    ("a says <|endoftext|> x\r<|endoftext|>\rb\r", ["a says <|endoftext|> x", "b"]),
    # files laid out with markers inside lines: one story per line, GPT-2's, paragraphs (as before)
    ("one.<|endoftext|>\ntwo.<|endoftext|>\nthree.<|endoftext|>\n", ["one.", "two.", "three."]),
    ("one.<|endoftext|>two.<|endoftext|>three.", ["one.", "two.", "three."]),
    ("a 1.\n\na 2.<|endoftext|>\nb 1.\n\nb 2.<|endoftext|>\n", ["a 1.\n\na 2.", "b 1.\n\nb 2."]),
    ("a story <|endoftext|> goes on.\n<|endoftext|>\nnext one.\n", ["a story <|endoftext|> goes on.",
                                                                     "next one."]),
    ("  <|endoftext|>  \r\nfirst.\r\n<|endoftext|>\r\nsecond.\r\n", ["first.", "second."]),  # CRLF, spaces
    # a line of spaces or tabs is a blank line (datasets' paragraphs took only "\n\n")
    ("first one.\n \nsecond one.\n\t\nthird.\n\n\n\nfourth.\n", ["first one.", "second one.", "third.",
                                                                     "fourth."]),
    ("\ufeffwith a bom.\n\nnext.\n", ["with a bom.", "next."]),  # a BOM is not text
    ("\ufeff<|endoftext|>\nwith a bom.\n<|endoftext|>\nnext.\n", ["with a bom.", "next."]),
    # two files that start with a BOM, joined: the second BOM is no text either (it hid a marker line)
    ("\ufeffone.\n<|endoftext|>\n" * 2, ["one.", "one."]),
    ("\ufeff<|endoftext|>\none.\n" * 2, ["one.", "one."]),
    ("\ufeffone.\n\n" * 2, ["one.", "one."]),
])
def test_txt_documents_split_where_a_reader_sees_them(tmp_path, text, docs):
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    got = sources.load_files([str(path)], "--data", cache_dir=str(tmp_path / "cache"), log=lambda line: None)
    assert [d.strip() for d in got["text"]] == docs


def test_txt_documents_do_not_depend_on_where_reads_end(tmp_path, monkeypatch):
    """The scan and the split read the file in chunks (a MiB): a marker line, a marker, a \\r\\n,
    a BOM or a long line across a chunk's end reads as it would whole (here chunks of 1 to 29)."""
    texts = ["\ufeff<|endoftext|>\r\nfirst one.\r\n<|endoftext|>  \r\nsecond, " + "long " * 9 + "\r\n",
             "".join(f"story {i}.\n\n" for i in range(150)) + "it says <|endoftext|> aloud.",
             "one " * 12 + "<|endoftext|>two" + " x" * 20 + "<|endoftext|>three",
             "a\n\n" + " " * 40 + "\n\nb" + "c" * 40 + "\n<|endoftext|>x\n\n" * 3,
             "\ufeff<|endoftext|>\r\nfirst.\r\n" * 3 + "\ufeffx" * 9]
    for n, text in enumerate(texts):
        path = tmp_path / f"t{n}.txt"
        path.write_bytes(text.encode())
        layout, _, _ = sources._scan_txt(str(path), "--data")
        whole = [d["text"].strip() for d in sources._txt_documents(str(path), "", layout)]
        for size in range(1, 30):
            monkeypatch.setattr(sources, "READ_CHUNK", size)
            assert sources._scan_txt(str(path), "--data")[0] == layout, (n, size)
            assert [d["text"].strip() for d in sources._txt_documents(str(path), "", layout)] == whole, \
                (n, size)
        monkeypatch.undo()
        assert len(whole) == [2, 151, 3, 4, 3][n], (n, whole)


def test_a_marker_line_ending_in_a_bom_cut_by_a_read_still_separates(tmp_path, monkeypatch):
    """Bug caught: a marker line longer than a read whose BOM (two files joined) the read cut was
    taken for a line of text by the scan (the BOM's first bytes, not yet dropped, after the marker):
    the file was split at the marker its story quotes, not at its marker line (chunks of 1, 2, 3, 5,
    6 and 10 here; at the real read size, a marker line over a MiB long, spaces before its marker)."""
    path = write(tmp_path / "t.txt", f"a{EOT}b\n{EOT}\ufeff\nc\n")
    for size in range(1, 30):
        monkeypatch.setattr(sources, "READ_CHUNK", size)
        assert sources._scan_txt(str(path), "--data")[0] == "lines", size
        got = [d["text"].strip() for d in sources._txt_documents(str(path), "", "lines")]
        assert got == [f"a{EOT}b", "c"], size


def test_a_long_line_of_spaces_reads_as_a_short_one(tmp_path, monkeypatch):
    """Bug caught: a line longer than a read (a MiB) holding spaces and tabs around at most a marker
    was kept as its text and one space, to tell whether it separates documents; where it did not,
    that stood in the document for the line (a line of 3 MB of spaces read as an empty one, "\tHi "
    as "Hi "), and the rest of a long line of text after a read's worth of spaces lost them too. And
    the scan took a long line's last bytes, the end of a marker or what may start one, for text."""
    texts = [(f"{EOT}\na\n" + " " * 40 + "\nb\n{EOT}\n\t  Hi  \t\n{EOT}\n", "lines"),  # text lines
             ("a\n\n  x" + " \t" * 20 + "y\n\nb " + " " * 30 + "\n \n", "blank"),
             (f"{EOT}\nlong words here" + " " * 40 + "and more\n" + " " * 30 + f"{EOT}  \n{EOT}\nz", "lines"),
             ("a\n" + "\t" * 30 + "b" + "\t" * 30 + "\n\nc\n", "blank")]
    for n, (text, layout) in enumerate(texts):
        path = tmp_path / f"t{n}.txt"
        path.write_bytes(text.encode())
        want = [d for d in sources.SEPARATORS[layout].split(text) if d.strip()]
        assert [d["text"].strip() for d in sources._txt_documents(str(path), "", layout)] == [
            d.strip() for d in want], n  # (read whole; document() strips what surrounds a document)
        for size in (1, 2, 3, 5, 8, 13):
            monkeypatch.setattr(sources, "READ_CHUNK", size)
            assert sources._scan_txt(str(path), "--data")[0] == layout, (n, size)
            got = [d["text"] for d in sources._txt_documents(str(path), "", layout)]
            assert [d.strip() for d in got] == [d.strip() for d in want], (n, size)
        monkeypatch.undo()
    path = write(tmp_path / "markers.txt", f"{EOT}\n\t{EOT}" + f"  {EOT}" * 3)  # (no text: refused)
    text = write(tmp_path / "text.txt", f"{EOT}\n\t{EOT}  {EOT}é{EOT}\n")  # (a character of text: read)
    for size in range(1, 14):
        monkeypatch.setattr(sources, "READ_CHUNK", size)
        with pytest.raises(DataError, match="has no usable text"):
            sources._scan_txt(str(path), "--data")
        assert sources._scan_txt(str(text), "--data")[0] == "lines", size


def test_a_line_of_spaces_over_a_mib_is_kept_in_its_document(tmp_path):
    """The same at the real read size: 3 MB of spaces and tabs inside a document are in it."""
    pad = " \t" * (3 << 19)
    text = f"{EOT}\nstory one\n{pad}\n{pad}x{pad}\nmore\n{EOT}\nnext\n"
    path = write(tmp_path / "t.txt", text)
    assert [d["text"].strip() for d in sources._txt_documents(str(path), "", "lines")] == [
        f"story one\n{pad}\n{pad}x{pad}\nmore", "next"]


# The documents these texts read as, by DOCUMENT_RULES (a sha256 of the layouts and texts): 5 is what
# its first version (70c05ca) read. A change of how text splits into documents fails here until
# DOCUMENT_RULES is raised and its digest recorded: a cache keyed by the old number is not reused.
DOCUMENT_DIGESTS = {5: "62e4e5b345fd7685", 6: "bf42552d7c8b6ec8"}


def test_document_rules_name_how_text_reads(tmp_path):
    """Bug caught: a long line's spaces kept (a line over a MiB of spaces, then text) changed the documents
    a .txt file reads as under the same DOCUMENT_RULES, 5, so a token cache an earlier version built (1 MB
    of the line's spaces lost, 56,161 tokens) was a cache hit for this one, which reads 1,103,462: the
    run trained on other text than a fresh cache gives, without a word."""
    pad = " " * (sources.READ_CHUNK + 5)
    texts = [f"{EOT}\nstory one\n{pad}and then{pad}\nmore\n{EOT}\nnext\n",
             f"{EOT}\na\n" + " " * 40 + f"\nb\n{EOT}\n\t  Hi  \t\n{EOT}\n",
             "a\r\n\r\nb\ufeff c\n\n\n d \n", f"x {EOT} y {EOT} z\n"]
    read = []
    for n, text in enumerate(texts):
        path = tmp_path / f"t{n}.txt"
        path.write_bytes(text.encode())
        layout = sources._scan_txt(str(path), "--data")[0]
        read.append([layout, [d["text"] for d in sources._txt_documents(str(path), "", layout)]])
    digest = hashlib.sha256(json.dumps(read).encode()).hexdigest()[:16]
    assert DOCUMENT_DIGESTS.get(sources.DOCUMENT_RULES) == digest, (
        f"documents read otherwise than DOCUMENT_RULES {sources.DOCUMENT_RULES} did ({digest}): raise it")


def test_new_document_rules_read_a_txt_file_again(tmp_path, monkeypatch):
    """Bug caught: the `datasets` cache of a .txt file's documents was keyed by its path, size, time and
    layout alone (datasets fingerprints our generator by name, not code), so documents an earlier
    version split by its rules came back from that cache after DOCUMENT_RULES was raised: the token
    cache was rebuilt, from the old documents (56,161 tokens where the new rules read 1,103,462)."""
    path = write(tmp_path / "t.txt", f"{EOT}\none\n{EOT}\ntwo\n")
    cache = str(tmp_path / "cache")

    def texts():
        return [sources.document(r["text"]) for r in sources._load_txt(str(path), "--data", cache, print)]

    with monkeypatch.context() as m:  # an earlier version: other rules, under the number before
        m.setattr(sources, "DOCUMENT_RULES", sources.DOCUMENT_RULES - 1)
        m.setitem(sources.SEPARATORS, "lines", re.compile("(?!)"))  # (splits nothing)
        assert len(texts()) == 1
    assert texts() == ["one", "two"]


def test_markers_inside_lines_split_up_to_exactly_100_times_as_many_blank_lines(tmp_path):
    # catches `>` for `>=` in _scan_txt's test: only blank lines *over* 100 times the markers make them text
    for blanks, layout in [(100, "inline"), (101, "blank")]:
        text = "".join(f"p{i}.\n\n" for i in range(blanks)) + "x <|endoftext|> y\n"
        path = write(tmp_path / f"{blanks}.txt", text)
        assert sources._scan_txt(str(path), "--data")[0] == layout, blanks


def test_empty_rows_are_no_documents_in_a_shard(tmp_path):
    # catches blank rows of a .jsonl tokenized as documents: a separator each, counted in n_docs
    docs = stories(10)
    rows = [{"text": r} for d in docs for r in (d, "  ", "")]
    val = write(tmp_path / "val.txt", official(docs[:2]))
    tok, train, _, _ = run(tmp_path, data=str(write_jsonl(tmp_path / "gaps.jsonl", rows)), val_data=str(val))
    assert tok.decode(train.tokens) == stream(docs) and train.n_docs == 10


def test_jsonl_and_parquet_with_a_text_field(tmp_path):
    docs = stories(20)
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": i, "story": d} for i, d in enumerate(docs)])
    val = tmp_path / "val.parquet"
    pq.write_table(pa.table({"story": docs[:3], "n": [1, 2, 3]}), val)
    tok, tr, va, _ = run(tmp_path, data=str(train), val_data=str(val), text_field="story")
    assert tok.decode(tr.tokens) == stream(docs)
    assert tok.decode(va.tokens) == stream(docs[:3])


def test_a_validation_file_with_its_own_text_field(tmp_path):
    """One --text_field served --data and --val_data: a validation .jsonl keeping its text under
    another name than the training file's could not be used. --val_text_field names its own; the
    hints say which option fits which file, and a run without it keys its caches as before."""
    docs = stories(20)
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": d} for d in docs])
    val = write_jsonl(tmp_path / "val.jsonl", [{"id": i, "story": d} for i, d in enumerate(docs[:3])])
    tok, tr, va, _ = run(tmp_path, data=str(train), val_data=str(val), val_text_field="story")
    assert tok.decode(tr.tokens) == stream(docs) and tok.decode(va.tokens) == stream(docs[:3])
    with pytest.raises(DataError, match=r"^--val_data: .*val.jsonl: line 1 has no 'text' field .* pass "
                                        r"--val_text_field NAME$"):
        run(tmp_path, data=str(train), val_data=str(val))
    with pytest.raises(DataError, match=r"^--data: .*train.jsonl: line 1 has no 'story' field .* pass "
                                        r"--text_field NAME$"):
        run(tmp_path, data=str(train), val_data=str(val), text_field="story")
    splits = [sources.resolve_sources(targs(tmp_path, data=str(train), val_data=str(val), **kw), log=print)
              for kw in ({}, {"val_text_field": "story"}, {"text_field": "story"})]
    assert [split.signature["source"]["text_field"] for split in splits[0]] == ["text", "text"]
    assert [split.signature["source"]["text_field"] for split in splits[1]] == ["text", "story"]
    assert [split.signature["source"]["text_field"] for split in splits[2]] == ["story", "story"]


def test_a_validation_json_object_hint_names_val_text_field(tmp_path):
    """The jq hint for a .json object of records named --text_field for --val_data's file too, and
    "(or no --text_field)", which reads --text_field's field there, not "text"."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"body": d} for d in stories(8)])
    val = write(tmp_path / "val.json", json.dumps({"data": [{"story": d} for d in stories(3, start=8)]}))
    with pytest.raises(DataError, match=r"^--val_data: .* at that with --val_text_field story$"):
        run(tmp_path, data=str(train), val_data=str(val), text_field="body")


def test_line_ends_read_as_newlines_in_every_format(tmp_path):
    """\\r\\n and a lone \\r were read as \\n in a .txt file only: the same stories in a .jsonl or
    a .parquet kept their \\r, and so trained and scored on other tokens and bytes."""
    docs = stories(10)
    windows = [d.replace("\n\n", "\r\n\r") for d in docs]  # (a CRLF, then a lone CR)
    write_jsonl(tmp_path / "w.jsonl", [{"text": d} for d in windows])
    pq.write_table(pa.table({"text": windows}), tmp_path / "w.parquet")
    write(tmp_path / "w.txt", official(windows))
    shards = [run(tmp_path, data=str(tmp_path / f"w.{kind}"), val_data=str(tmp_path / "w.txt"))[:2]
              for kind in ("jsonl", "parquet", "txt")]
    for tok, train in shards:
        assert tok.decode(train.tokens) == stream(docs)
        assert train.n_bytes == sum(len(d.encode()) for d in docs)


def test_a_bom_is_no_text_in_any_format(tmp_path, monkeypatch):
    """Files that each start with a BOM, joined, hold U+FEFF inside the text: it was tokenized, in a
    .txt (where it also hid the marker line behind it) as at a document's start in a .jsonl or a
    .parquet. And caches that the rules before made (BOMs kept) are not reused."""
    docs = stories(10)
    write(tmp_path / "w.txt", "\ufeff" + official(docs[:5]) + "\ufeff" + EOT + "\n" + official(docs[5:]))
    write_jsonl(tmp_path / "w.jsonl", [{"text": "\ufeff" + d} for d in docs])
    pq.write_table(pa.table({"text": [" \ufeff" + d for d in docs]}), tmp_path / "w.parquet")
    for kind in ("txt", "jsonl", "parquet"):
        tok, train, val, _ = run(tmp_path, data=str(tmp_path / f"w.{kind}"), val_data=str(tmp_path / "w.txt"))
        assert tok.decode(train.tokens) == tok.decode(val.tokens) == stream(docs), kind
        assert train.n_bytes == sum(len(d.encode()) for d in docs)
    kw = dict(data=str(tmp_path / "w.jsonl"), val_data=str(tmp_path / "w.txt"))
    kept = lambda text: text.replace("\r\n", "\n").replace("\r", "\n").strip()  # noqa: E731 (rules 4's)
    with monkeypatch.context() as m:
        m.setattr(sources, "DOCUMENT_RULES", 4)
        m.setattr(sources, "document", kept)
        tok, train, _, _ = run(tmp_path / "old", **kw)
        assert "\ufeff" in tok.decode(train.tokens)
    tok, train, _, logs = run(tmp_path / "old", **kw)
    assert not any("train: cache hit" in line for line in logs)
    assert tok.decode(train.tokens) == stream(docs)


def test_arrow_files_and_a_save_to_disk_folder(tmp_path):
    """.arrow files (Arrow IPC, stream or file format) are read like .parquet; a `save_to_disk`
    folder was refused by its own dataset_info.json (no column 'text'), and a DatasetDict's folder
    (every split in one) is refused, naming a split's folder."""
    import datasets
    docs = stories(20)
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "saved"))
    table = pa.table({"text": docs[:3]})
    with pa.OSFile(str(tmp_path / "val.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    tok, tr, va, _ = run(tmp_path, data=str(tmp_path / "saved"), val_data=str(tmp_path / "val.arrow"))
    assert tok.decode(tr.tokens) == stream(docs) and tok.decode(va.tokens) == stream(docs[:3])
    write(tmp_path / "bad.arrow", "not arrow")
    with pytest.raises(DataError, match=r"bad.arrow: is not an Arrow file, or a damaged one"):
        run(tmp_path, data=str(tmp_path / "bad.arrow"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs}),
                          "validation": datasets.Dataset.from_dict({"text": docs[:3]})}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"--data: '.*dd' is a DatasetDict saved by save_to_disk; point "
                                        r"--data at one split's folder \(.*dd/train\)"):
        run(tmp_path, data=str(tmp_path / "dd"))
    tok, tr, va, _ = run(tmp_path, data=str(tmp_path / "dd" / "train"),
                         val_data=str(tmp_path / "dd" / "validation"))
    assert tok.decode(va.tokens) == stream(docs[:3])


def test_folder_and_glob_read_files_in_sorted_order(tmp_path):
    a, b, c = stories(4), stories(4, start=4), stories(4, start=8)
    folder = tmp_path / "corpus"
    write(folder / "a.txt", official(a))
    write_jsonl(folder / "b.jsonl", [{"text": d} for d in b])
    write(folder / "sub" / "c.txt", official(c))
    write(folder / "notes.md", "not read")
    tok, train, _, _ = run(tmp_path, data=str(folder), val_data=str(folder / "a.txt"))
    assert tok.decode(train.tokens) == stream(a + b + c)
    tok, train, _, _ = run(tmp_path, data=str(folder / "**" / "*.txt"), val_data=str(folder / "a.txt"))
    assert tok.decode(train.tokens) == stream(a + c)
    tok, train, _, _ = run(tmp_path, data=str(folder / "*"), val_data=str(folder / "a.txt"))
    assert tok.decode(train.tokens) == stream(a + b + c)  # notes.md left out, as the folder leaves it
    write(folder / "tiny[1].txt", official(b))  # a file whose name looks like a glob is that file
    tok, train, _, _ = run(tmp_path, data=str(folder / "tiny[1].txt"), val_data=str(folder / "a.txt"))
    assert tok.decode(train.tokens) == stream(b)


def test_a_file_reached_by_two_paths_is_read_once(tmp_path):
    """A symlink beside its target, or a glob through a linked folder (here a loop: ** followed it
    40 deep), named the same file again: its text was trained on twice, and the held-out slice
    had copies of its validation stories in the training split."""
    a = stories(4)
    folder = tmp_path / "corpus"
    write(folder / "sub" / "a.txt", official(a))
    (folder / "latest.txt").symlink_to(folder / "sub" / "a.txt")
    (folder / "sub" / "loop").symlink_to(folder / "sub")
    assert sources.resolve_files(str(folder), "--data") == [str(folder / "latest.txt")]
    assert sources.resolve_files(str(folder / "**" / "*.txt"), "--data") == [str(folder / "latest.txt")]
    tok, train, _, _ = run(tmp_path, data=str(folder), val_data=str(folder / "sub" / "a.txt"))
    assert tok.decode(train.tokens) == stream(a)


def test_a_file_under_two_names_by_a_hard_link_is_read_once_and_warned_of(tmp_path):
    """A hard link is the same file under another name, as a symlink is: a folder holding both
    names read its text twice, and --val_data on the link got no warning that it was --data."""
    a = stories(4)
    folder = tmp_path / "corpus"
    write(folder / "a.txt", official(a))
    os.link(folder / "a.txt", folder / "b.txt")
    assert sources.resolve_files(str(folder), "--data") == [str(folder / "a.txt")]
    tok, train, _, logs = run(tmp_path, data=str(folder), val_data=str(folder / "b.txt"))
    assert tok.decode(train.tokens) == stream(a)
    assert any("--val_data and --data share 1 file" in line for line in logs)


def test_files_without_inode_numbers_are_told_apart_by_path(tmp_path, monkeypatch):
    """Where os.stat gives st_ino 0 (FAT, some Windows network shares), (st_dev, st_ino) is the
    same for every file: a folder of two files gave one, and --val_data on another file of the
    same disk was warned of as --data's."""
    folder = tmp_path / "corpus"
    write(folder / "a.txt", official(stories(2)))
    write(folder / "b.txt", official(stories(2, start=2)))
    real_stat = os.stat

    def no_inode(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        return os.stat_result((st.st_mode, 0, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                               st.st_atime, st.st_mtime, st.st_ctime))
    monkeypatch.setattr(os, "stat", no_inode)
    assert sources.resolve_files(str(folder), "--data") == [str(folder / "a.txt"), str(folder / "b.txt")]
    logs = []
    train, val = (sources.Split(f, {"files": [[str(folder / f)]]}, None) for f in ("a.txt", "b.txt"))
    sources.warn_overlap(train, val, logs.append)
    assert logs == []


def test_a_folder_leaves_out_the_runs_own_files_and_hidden_folders(tmp_path):
    """--data on a folder that holds --cache_dir and --out_dir (as `--data .` does): their .json
    files are ours, not text, and hidden folders are left out too; a .json array of records is
    read; a glob that matches a folder takes the folder's files."""
    a, b = stories(4), stories(4, start=4)
    folder = tmp_path / "corpus"
    write(folder / "a.txt", official(a))
    write(folder / "b.json", json.dumps([{"text": d} for d in b]))
    write(folder / ".hidden" / "x.txt", official(stories(2, start=9)))
    write(folder / "ckpt" / "r" / "train.json", json.dumps({"lr": 0.1}))
    kw = dict(data=str(folder), val_data=str(folder / "a.txt"), cache_dir=str(folder / "cache"),
              out_dir=str(folder / "ckpt"))
    for _ in range(2):  # the second run finds the first one's cache in the folder
        tok, train, _, _ = run(tmp_path, **kw)
        assert tok.decode(train.tokens) == stream(a + b)
    for glob in ("corp*", "corpus/**"):  # (** matches each file and the folders above it: once each)
        tok, train, _, _ = run(tmp_path, **{**kw, "data": str(tmp_path / glob)})
        assert tok.decode(train.tokens) == stream(a + b)


def test_held_out_validation_is_deterministic_and_logged(tmp_path):
    docs = stories(40)
    path = write(tmp_path / "all.txt", official(docs))
    tok, train, val, logs = run(tmp_path, data=str(path), val_fraction=0.1)
    held = [d for i, d in enumerate(docs) if i % 10 == 9]  # 1 in 10, evenly spread
    assert tok.decode(val.tokens) == stream(held)
    assert tok.decode(train.tokens) == stream([d for d in docs if d not in held])
    assert any("1 in 10 documents of --data, held out" in line for line in logs)
    # rows with no text (a .jsonl's "") are no documents: 1 in 2 of the stories is held out, not the
    # empty rows (every second row here), which left validation nothing
    rows = [{"text": r} for d in docs[:10] for r in (d, "  ")]
    tok, train, val, _ = run(tmp_path, data=str(write_jsonl(tmp_path / "gaps.jsonl", rows)), val_fraction=0.5)
    assert tok.decode(val.tokens) == stream(docs[1:10:2]) and tok.decode(train.tokens) == stream(docs[0:10:2])



def test_a_folder_inside_a_hidden_folder_is_read_and_relative_skip_folders_are_skipped(tmp_path, monkeypatch):
    # catches hidden folders judged above the folder named (~/.data/corpus gave no file), and --cache_dir
    # compared unresolved (`--data . --cache_dir cache` read the cache's .json files)
    folder = tmp_path / ".data" / "corpus"
    write(folder / "a.txt", official(stories(2)))
    write(folder / "cache" / "tokens" / "t" / "meta.json", "{}")
    assert sources.resolve_files(str(folder), "--data", skip=[folder / "cache"]) == [str(folder / "a.txt")]
    monkeypatch.chdir(folder)
    assert sources.resolve_files(".", "--data", skip=["cache"]) == ["a.txt"]


def test_another_token_cache_or_run_folder_in_a_data_folder_is_left_out_and_named(tmp_path, monkeypatch):
    """Bug caught: `cd corpus && train.py --data .` made corpus/cache; a later `--data corpus` with
    another --cache_dir (scripts/compare.py's cache/, say) read that cache's tokenizer.json as
    training text and stopped ("is one JSON object ...; convert it to JSON Lines"); so did a run folder
    of another --out_dir (its train.json, metrics.jsonl). Both are known by the files only they hold
    (the cache's lock files, the run's run.lock beside its settings), left out, and named in a line.
    Bug caught too: one named as the source itself (--data checkpoints/r1) was refused as a folder
    whose files were all left out ("holds no file outside ... (checkpoints/r1: a run folder)").
    Bug caught too: the line said "corpus/runs/r1: a run folder" without the files that made it one
    (a run.lock a run left beside text of the user's, say), as the refusal of it named as the source
    did; and a run.lock alone (a run killed while preparing its data), a run to --resume and --ckpt,
    was no run folder to --data ("holds no .txt ... file; check the path")."""
    import storage
    corpus = tmp_path / "corpus"
    write(corpus / "a.txt", official(stories(40)))
    monkeypatch.chdir(corpus)
    run(tmp_path, data=".", val_fraction=0.1, cache_dir="cache")  # corpus/cache, its own: left out
    folder = storage.RunFolder(corpus / "runs" / "r1")  # a run of another --out_dir, as train.py leaves it
    storage.save_json(folder.path / "train.json", {"lr": 0.001})
    write(folder.path / "metrics.jsonl", '{"kind": "train", "step": 1}\n')
    folder.release()
    monkeypatch.chdir(tmp_path)
    _, _, _, logs = run(tmp_path, data="corpus", val_fraction=0.1, cache_dir="other")
    assert "data: --data corpus: left out 2 folders that this project wrote (corpus/cache: a token cache, " \
           "corpus/runs/r1: a run folder (train.json, metrics.jsonl, run.lock))" in logs
    assert any(line.startswith("data: train: --data corpus (1 file, ") for line in logs)
    r1 = "train.json, metrics.jsonl, run.lock"  # (the files that made it a run folder)
    ours = rf"corpus/cache: a token cache, corpus/runs/r1: a run folder \({r1}\)"  # (ours alone: refused)
    with pytest.raises(DataError, match=r"^--data: 'corpus/\*\*/\*\.json' holds no .* file outside this "
                                        rf"project's token caches and run folders \({ours}\), which"):
        sources.resolve_files("corpus/**/*.json", "--data")
    # named itself (a folder, or a glob's folder as typed): refused, naming it as ours
    # (and a run folder's files, which told it: a run.lock a run left in a folder of text, say)
    write(corpus / "runs" / "killed" / "run.lock", "")  # (a run killed while preparing its data)
    for spec, folder, files in (("corpus/cache", "corpus/cache", None),
                                ("corpus/runs/r1", "corpus/runs/r1", f"{r1}: "),
                                ("corpus/runs/r1/*.json", "corpus/runs/r1", f"{r1}: "),
                                ("corpus/runs/killed", "corpus/runs/killed", "run.lock: ")):
        what = "a token cache" if files is None else "a run folder"
        files = files or ""
        with pytest.raises(DataError, match=rf"^--val_data: '{re.escape(folder)}' is {what} of this "
                                            rf"project's \({files}files train.py wrote, not text\); point "
                                            r"--val_data at the text instead$"):
            sources.resolve_files(spec, "--val_data")
    # a folder of the user's is never taken for ours by names alone: a cache/ of text, a .locks/ of
    # other locks, a run.lock beside text alone
    mine = [write(tmp_path / "mine" / "cache" / "s.txt", "Once.\n"),
            write(tmp_path / "mine" / "r" / "t.txt", "Two.\n")]
    write(tmp_path / "mine" / "cache" / ".locks" / "x.lock", "")
    write(tmp_path / "mine" / "r" / "run.lock", "")
    assert sources.resolve_files("mine", "--data") == [str(p.relative_to(tmp_path)) for p in mine]


def test_held_out_every_rounds_and_keeps_training_text():
    # catches 1 in int(1 / f) (0.15 is 1 in 7, not 6) and a 1-in-1 slice that leaves no training text
    fractions = (0.01, 0.15, 1 / 3, 0.5, 0.9, 1.0)
    assert [sources.held_out_every(f) for f in fractions] == [100, 7, 3, 2, 2, 2]


def test_held_out_shards_of_another_val_fraction_are_not_reused(tmp_path):
    # catches a held-out slice's cache key without its 1 in k: --val_fraction 0.5 got the 0.1 run's shards
    docs = stories(20)
    path = write(tmp_path / "all.txt", official(docs))
    run(tmp_path, data=str(path), val_fraction=0.1)
    tok, train, val, _ = run(tmp_path, data=str(path), val_fraction=0.5)
    assert tok.decode(val.tokens) == stream(docs[1::2]) and tok.decode(train.tokens) == stream(docs[0::2])


def test_a_held_out_slice_counts_the_documents_tokenization_keeps(tmp_path, monkeypatch):
    """Which rows a held-out slice counted was judged before U+FEFF was dropped: a row of a
    byte-order mark alone (and whitespace) counted, then tokenized to nothing, and the 1 in k held
    out moved past it. Now a row counts where document() leaves text; caches of the old count rebuild."""
    import datasets
    odd = ["\ufeff", " \ufeff\r\n", "\r", "\u2028\x1c", "\xa0\ufeff\t", "\ufeffa", "b\ufeff", " c "]
    rows = [r for i, d in enumerate(stories(12)) for r in (d, odd[i % len(odd)])]
    ds = datasets.Dataset.from_dict({"text": rows})
    docs = [r for r in rows if sources.document(r)]
    assert sources.Split("x", {}, lambda: ds, "val", 3).documents()["text"] == docs[2::3]
    assert sources.Split("x", {}, lambda: ds, "train", 3).documents()["text"] == [
        d for i, d in enumerate(docs) if i % 3 != 2]
    # text without such rows is split as before (rows whose text is more than whitespace, counted)
    blocks = shared_file("valid-lower.txt").read_text().split("\n\n")
    ds = datasets.Dataset.from_dict({"text": [r for b in blocks for r in (b, " \n")]})
    before = [r for r in ds["text"] if r.strip()][6::7]
    assert sources.Split("x", {}, lambda: ds, "val", 7).documents()["text"] == before
    # end to end, from a .jsonl and a .parquet holding such rows
    docs = stories(10)
    write_jsonl(tmp_path / "b.jsonl", [{"text": r} for d in docs for r in (d, "\ufeff")])
    pq.write_table(pa.table({"text": [r for d in docs for r in (" \ufeff\n", d)]}), tmp_path / "b.parquet")
    for kind in ("jsonl", "parquet"):
        tok, train, val, _ = run(tmp_path, data=str(tmp_path / f"b.{kind}"), val_fraction=0.5)
        assert tok.decode(val.tokens) == stream(docs[1::2]), kind
        assert tok.decode(train.tokens) == stream(docs[0::2]), kind
    with monkeypatch.context() as m:  # a cache made under the old count is not reused
        m.setattr(sources, "HELD_OUT_RULES", 1)
        run(tmp_path / "old", data=str(tmp_path / "b.jsonl"), val_fraction=0.5)
    *_, logs = run(tmp_path / "old", data=str(tmp_path / "b.jsonl"), val_fraction=0.5)
    assert not any("cache hit" in line for line in logs)


def test_validation_files_inside_the_training_data_get_a_warning(tmp_path):
    """--val_data naming a file of --data (here through a symlink and a folder) is allowed but
    scores the model on its training text: one warning line says so; separate files get none."""
    (tmp_path / "corpus").mkdir()
    a = write(tmp_path / "corpus" / "a.txt", official(stories(4)))
    write(tmp_path / "corpus" / "b.txt", official(stories(4)))
    (tmp_path / "link.txt").symlink_to(a)
    other = write(tmp_path / "other.txt", official(stories(4, start=8)))  # (other text: a copy is warned of)
    for val, warned in [(tmp_path / "link.txt", True), (other, False)]:
        logs = []
        sources.resolve_sources(TrainArgs(data=str(tmp_path / "corpus"), val_data=str(val)), logs.append)
        lines = [line for line in logs if line.startswith("warning")]
        assert lines == ([f"warning: --val_data and --data share 1 file ({a}): the validation loss is not "
                          "held out; give --val_data other text, or leave it out to hold out 1 in "
                          "round(1 / --val_fraction) documents of --data"] if warned else [])


def test_shared_train_sample(tmp_path):
    path = shared_file("train-sample.txt")
    text = path.read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split(EOT) if d.strip()]
    assert len(docs) == 115
    t0 = time.time()
    tok, train, val, logs = run(tmp_path, vocab=2048, seq_len=256, data=str(path))
    elapsed = time.time() - t0
    assert train.n_docs + val.n_docs == 115 and val.n_docs == 1  # 1 in 100 held out
    assert tok.decode(val.tokens) == stream([docs[99]])
    assert tok.decode(train.tokens) == stream(docs[:99] + docs[100:])
    assert train.n_bytes + val.n_bytes == sum(len(d.encode()) for d in docs)
    assert int(tok.token_bytes[train.tokens].sum()) == train.n_bytes
    assert elapsed < 15, f"prepare() on a 78 KB file took {elapsed:.1f} s"
    # the tiny preset's 4096 tokens are more than these 78 KB can fill: a clear one-line error
    with pytest.raises(DataError, match=r"--vocab_size 4096: the training text can only fill \d+ tokens"):
        run(tmp_path, vocab=4096, data=str(path))


# ---------------------------------------------------------------------------------------------
# The tokenizer


ROUND_TRIP = [
    "", " ", "  two  spaces  ", "Once upon a time", "\r\n\t\x00\x07", "naïve café", "🙂👍🏽👨‍👩‍👧",
    "日本語のテキスト", "Ελληνικά", "العربية", "हिन्दी", "한국어", "e\u0301 combining", "\U0001F600" * 5,
    EOT + "special tokens as text" + "<|image|><|patch|>", "<|endof", "\ufffd replacement char",
]


def test_round_trip_on_any_utf8_string():
    tok = small_tokenizer()
    for s in ROUND_TRIP:
        assert tok.decode(tok.encode(s)) == s, s
        assert tok.decode(itertools.chain.from_iterable(tok.encode_docs([s]))) == s, s
    rng = np.random.default_rng(0)
    for _ in range(50):  # random code points from the whole Unicode range, surrogates excepted
        cps = rng.integers(1, 0x10FFFF, size=20)
        s = "".join(chr(c) for c in cps if not 0xD800 <= c < 0xE000)
        assert tok.decode(tok.encode(s)) == s


def test_special_tokens_ids_and_token_bytes():
    tok = small_tokenizer()
    assert tok.special_ids() == {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    defaults = ModelArgs()
    assert all(getattr(defaults, name) == i for name, i in tok.special_ids().items())
    assert tok.eos_id == 0 and tok.vocab_size == 300
    assert tok.token_bytes.shape == (300,) and (tok.token_bytes[:8] == 0).all()
    assert (tok.token_bytes[8:] >= 1).all()
    s = "Once upon a time 🙂 ü"
    assert tok.token_bytes[tok.encode(s)].sum() == len(s.encode())
    # encode() reads special-token strings as special tokens; the shards keep them as text
    assert tok.encode(EOT) == [0]
    assert 0 not in tok.encode_docs([EOT])[0]


def test_training_is_deterministic_and_saved_atomically(tmp_path):
    a, b = small_tokenizer(), small_tokenizer()
    assert a.hash == b.hash
    a.save(tmp_path / "tok" / "tokenizer.json")
    assert [p.name for p in (tmp_path / "tok").iterdir()] == ["tokenizer.json"]
    c = Tokenizer.load(tmp_path / "tok" / "tokenizer.json")
    assert c.hash == a.hash and c.encode("Tom was happy") == a.encode("Tom was happy")


def test_a_post_processor_is_no_part_of_the_tokenizer_hash():
    # catches the hash taken over the post-processor too (encoding never runs it: transformers adds one)
    tok = small_tokenizer()
    again = tokenizer.tokenizers.Tokenizer.from_str(tok.tok.to_str())
    again.post_processor = tokenizer.tokenizers.processors.ByteLevel(trim_offsets=False)
    copy = Tokenizer(again)
    assert copy.hash == tok.hash and copy.legacy_hash not in (None, tok.hash)


def test_the_trainer_sees_long_runs_in_pieces_and_real_text_whole():
    """The BPE trainer is quadratic in a word's length (3 MB of one word ran for over ten minutes):
    runs of LONG_RUN spaces or non-spaces reach it in pieces, so no token is longer; text without
    such runs trains the very tokenizer the unwrapped trainer does."""
    n = tokenizer.LONG_RUN
    texts = ["ab" * 4000 + " cd" + " " * (3 * n) + "ef", ["x" * n, "y" * (n + 1), "Once upon a time"],
             "a" + " " * n + "b" + "c" * (n - 1)]
    got = list(tokenizer._short_runs(texts))
    assert ["".join(p) for p in got] == [texts[0], "".join(texts[1]), texts[2]]
    assert got[2] == [texts[2]]  # runs of LONG_RUN exactly are left whole (a cut would move a space)
    too_long = re.compile(rf"\S{{{n + 1}}}|\s{{{n + 1}}}")
    assert not any(too_long.search(piece) for pieces in got for piece in pieces)
    assert got[1] == ["x" * n, "y" * n, "y", "Once upon a time"]
    long = Tokenizer.train([official(stories(30)), "ab" * 4000], 400)
    assert max(len(long.decode([i])) for i in range(long.vocab_size)) <= n  # "abab...": 8,000 before

    docs = shared_file("train-sample.txt").read_text().split(EOT)
    plain = tokenizer.tokenizers.Tokenizer(tokenizer.models.BPE())
    plain.pre_tokenizer = tokenizer.pre_tokenizers.ByteLevel(add_prefix_space=False)
    plain.decoder = tokenizer.decoders.ByteLevel()
    plain.train_from_iterator(docs, tokenizer.trainers.BpeTrainer(
        vocab_size=600, special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=tokenizer.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    assert Tokenizer.train(docs, 600).hash == Tokenizer(plain).hash


def test_the_tokenizer_cap_holds_inside_a_long_document(monkeypatch):
    """--tokenizer_train_mb bounds the BPE's text even where one document is longer: a 200 MB file
    without separators was all trained on for a 5 MB cap (and logged as capped). A long document
    gives its first pieces up to the cap; shorter ones stay whole."""
    import datasets
    monkeypatch.setattr(data, "PIECE_CHARS", 1000)
    long = " ".join(f"word{i}" for i in range(20000))  # ~190 KB: one document of ~190 pieces
    ds = datasets.Dataset.from_dict({"text": ["a short story.", long, "never read."]})
    used = {}
    got = [t for part in data._texts(ds, 2, 10_000, used) for t in part]
    assert got[0] == "a short story." and long.startswith("".join(got[1:]))
    assert 10_000 <= used["bytes"] < 11_000 and used["capped"]
    assert used["bytes"] == sum(len(t.encode()) for t in got)
    used = {}
    first = tokenizer.pieces(long, 1000)[0]  # a cap inside the first piece: that piece
    assert [t for part in data._texts(ds, 2, 100, used) for t in part] == ["a short story.", first]
    assert used == {"bytes": 14 + len(first), "capped": True}
    monkeypatch.undo()  # short documents: whole, as before
    assert [t for part in data._texts(ds, 2, 20, used) for t in part] == ["a short story.", long]


def test_the_tokenizer_cap_stops_at_a_document_that_reaches_it_exactly():
    # catches `>` for `>=`: a document that brings the bytes read to the cap exactly ends the reading
    import datasets
    ds = datasets.Dataset.from_dict({"text": ["abcd", "efgh", "ijkl"]})
    used = {}
    assert [t for part in data._texts(ds, 2, 8, used) for t in part] == ["abcd", "efgh"]
    assert used == {"bytes": 8, "capped": True}


def test_the_tokenizer_cache_is_keyed_by_the_cap_and_a_tiny_cap_still_caps(tmp_path, corpus):
    # catches a tokenizer cache key without --tokenizer_train_mb, and a cap under 1 byte read as no cap
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path), vocab=270)
    run(tmp_path, **kw)
    *_, logs = run(tmp_path, tokenizer_train_mb=1e-7, **kw)
    assert not any("tokenizer: cache hit" in line for line in logs)
    assert any("(the start of the training text, capped)" in line for line in logs)


def test_tokenizer_json_loads_in_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast
    tok = small_tokenizer()
    tok.save(tmp_path / "tokenizer.json")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for s in ["Once upon a time, Lily 🙂", "naïve\r\n日本語"]:
        assert hf.encode(s, add_special_tokens=False) == tok.encode(s)
        assert hf.decode(tok.encode(s), clean_up_tokenization_spaces=False) == s


def test_parallel_tokenization_equals_serial(tmp_path):
    tok = small_tokenizer()
    docs = stories(42)
    batches = [docs[i:i + 5] for i in range(0, len(docs), 5)]
    one = write_tokens_arr(tmp_path / "one", batches, tok, threads=1)
    three = write_tokens_arr(tmp_path / "three", batches, tok, threads=3)
    loop = np.concatenate([[tok.eos_id] + tok.encode(d) for d in docs])
    assert np.array_equal(one, three) and np.array_equal(one, loop)


def write_tokens_arr(folder, batches, tok, threads):
    return np.asarray(data.write_tokens(folder, batches, tok, threads=threads).tokens)


def test_shards_are_uint32_past_65536_tokens(tmp_path):
    tok = small_tokenizer()
    tok.vocab_size = 70000  # as a 70k-token tokenizer would say; its ids here are all < 300
    shard = data.write_tokens(tmp_path / "s", [stories(3)], tok)
    assert shard.tokens.dtype == np.uint32 and shard.meta["dtype"] == "uint32"
    assert tok.decode(shard.tokens) == stream(stories(3))
    assert TokenData(shard.path).n_tokens == shard.n_tokens


# ---------------------------------------------------------------------------------------------
# The cache


def test_cache_reuse_and_invalidation(tmp_path, corpus):
    train_path, val_path, train_docs, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, train, val, logs = run(tmp_path, **kw)
    stamp = (train.path / "tokens.bin").stat().st_mtime_ns
    tok2, train2, val2, logs2 = run(tmp_path, **kw)
    assert sum("cache hit" in line for line in logs2) == 3  # tokenizer, train and validation shards
    assert tok2.hash == tok.hash and train2.path == train.path
    assert (train2.path / "tokens.bin").stat().st_mtime_ns == stamp
    # the training text changes: a new tokenizer, new shards, the old ones untouched
    more = train_docs + stories(3, start=35)
    write(train_path, official(more))
    tok3, train3, val3, logs3 = run(tmp_path, **kw)
    assert not any("cache hit" in line for line in logs3)
    assert tok3.hash != tok.hash and train3.path != train.path and val3.path != val.path
    assert tok3.decode(train3.tokens) == stream(more)
    assert TokenData(train.path, tok.hash).n_docs == 30
    # another vocabulary: another tokenizer, so other shards for the same text
    tok4, train4, _, _ = run(tmp_path, vocab=320, **kw)
    assert tok4.vocab_size == 320 and train4.path != train3.path


def older_caches(logs):
    return [line for line in logs if "older cache" in line]


def folder_size(path):
    return sum(p.stat().st_size for p in path.iterdir())


def test_a_cache_miss_names_the_older_caches_of_its_source_and_keeps_them(tmp_path, corpus, monkeypatch):
    """New document rules, or a changed file, leave the old shards of the same files behind (1.9 GB
    each on TinyStories, kept for ever): the miss names them, their size and how to delete them,
    and deletes nothing (an older checkout of the project may use them); a hit says nothing."""
    train_path, val_path, _, val_docs = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    _, train, val, logs = run(tmp_path, **kw)
    assert not older_caches(logs)
    monkeypatch.setattr(sources, "DOCUMENT_RULES", sources.DOCUMENT_RULES + 1)
    _, train2, val2, logs = run(tmp_path, **kw)
    assert train2.path != train.path and train2.meta["tokenizer_hash"] == train.meta["tokenizer_hash"]
    assert older_caches(logs) == [
        f"data: {name}: {old.parent} also holds 1 older cache of this source and tokenizer "
        f"({sources.in_bytes(folder_size(old))}), made by other rules of this project or from an earlier "
        f"version of the files; delete it once no run still training on it and no older checkout of this "
        f"project uses it: rm -r {old}"
        for name, old in (("val", val.path), ("train", train.path))]  # (validation first: data.prepare)
    assert train.path.is_dir() and val.path.is_dir() and TokenData(train.path).n_docs == 30
    _, _, _, logs = run(tmp_path, **kw)  # a cache hit: nothing to say
    assert any("train: cache hit" in line for line in logs) and not older_caches(logs)
    write(val_path, "\n\n".join(val_docs[:3]) + "\n")  # the validation file changes: both its shards are old
    _, _, val3, logs = run(tmp_path, **kw)
    [line] = older_caches(logs)
    size = sources.in_bytes(folder_size(val.path) + folder_size(val2.path))
    assert line.startswith(f"data: val: {val.path.parent} also holds 2 older caches of this source and "
                           f"tokenizer ({size}), made by") and "delete them once" in line
    assert line.split("rm -r ")[1].split() == sorted([str(val.path), str(val2.path)])
    assert val.path.is_dir() and val2.path.is_dir() and val3.n_docs == 3


def other_tokenizers(logs):
    return [line for line in logs if "other cached tokenizer" in line]


def test_a_new_tokenizer_names_the_other_cached_tokenizers_and_keeps_them(tmp_path, corpus):
    """Each new tokenizer (another --vocab_size, other text) is trained into a new folder under
    --cache_dir: the miss that makes one names the others there once, with their size, and deletes
    nothing; a hit says nothing, nor does the first tokenizer, and one another process holds (being
    trained or checked now) is not named.
    Bug caught: the old tokenizer folders piled up in the cache and nothing ever said so."""
    import storage
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    cache = tmp_path / "cache"
    _, _, _, logs = run(tmp_path, **kw)
    assert not other_tokenizers(logs)  # the first: no other
    [first] = cache.glob("tokenizer-*")
    _, _, _, logs = run(tmp_path, vocab=320, **kw)
    [second] = set(cache.glob("tokenizer-*")) - {first}
    size = sources.in_bytes(folder_size(first))
    assert other_tokenizers(logs) == [
        f"data: tokenizer: {cache} also holds 1 other cached tokenizer ({size}), trained on other text, with"
        " other settings or by an older version of this project; it is kept for the runs that use it: delete"
        " it if no run does (a run folder keeps its own tokenizer.json, and a deleted one is trained again"
        f" when a run wants it): rm -r {first}"]
    _, _, _, logs = run(tmp_path, vocab=320, **kw)  # a cache hit: said once, not at every run
    assert any("tokenizer: cache hit" in line for line in logs) and not other_tokenizers(logs)
    busy = shutil.copytree(first, cache / "tokenizer-busy")
    held = storage.lock(cache / ".locks" / "tokenizer-busy.lock")  # another run trains it now
    try:
        _, _, _, logs = run(tmp_path, vocab=340, **kw)
    finally:
        held.close()
    [line] = other_tokenizers(logs)
    size = sources.in_bytes(folder_size(first) + folder_size(second))
    assert line.startswith(f"data: tokenizer: {cache} also holds 2 other cached tokenizers ({size}),")
    assert "they are kept for the runs that use them: delete those no run uses" in line and "busy" not in line
    assert sorted(line.split("rm -r ")[1].split()) == sorted([str(first), str(second)])
    assert first.is_dir() and second.is_dir() and busy.is_dir()


def test_older_caches_of_another_tokenizer_in_use_or_unreadable_are_not_named(tmp_path, corpus, monkeypatch):
    """A shard of another tokenizer (another vocabulary, which another run may use), one whose build
    lock another process holds, and one whose meta.json cannot be read are never named, and
    do not fail the run; a long list names three and counts the rest."""
    import storage
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    _, train, _, _ = run(tmp_path, **kw)
    _, other, _, logs = run(tmp_path, vocab=320, **kw)
    assert other.path != train.path and not older_caches(logs)
    tokens = train.path.parent
    for i, text in enumerate(["{", "[]", '{"signature": 1}', '{"split": "train"}']):
        shutil.copytree(train.path, tokens / f"train-broken{i}")
        (tokens / f"train-broken{i}" / "meta.json").write_text(text)
    (tokens / "train-empty").mkdir()
    write(tokens / "stray.txt", "not a shard")
    for i in range(3):  # older shards of the same file
        shutil.copytree(train.path, tokens / f"train-copy{i}")
    busy = shutil.copytree(train.path, tokens / "train-busy")
    held = storage.lock(tmp_path / "cache" / ".locks" / f"tokens-{busy.name}.lock")  # another run checks it
    monkeypatch.setattr(sources, "DOCUMENT_RULES", sources.DOCUMENT_RULES + 1)
    try:
        _, train2, _, logs = run(tmp_path, **kw)
    finally:
        held.close()
    [_, line] = older_caches(logs)  # (val, train)
    assert line.startswith(f"data: train: {tokens} also holds 4 older caches of this source and tokenizer "
                           f"({sources.in_bytes(4 * folder_size(train.path))})") \
        and line.endswith(" (and 1 more)")
    named = line.split("rm -r ")[1].split()[:3]
    assert named == sorted(str(p) for p in [train.path, *tokens.glob("train-copy*")])[:3]
    assert not any(w in line for w in ("broken", "empty", "busy", "stray", other.path.name))
    assert all(p.exists() for p in [train.path, other.path, busy, *tokens.glob("train-*")])


def test_a_killed_builds_temporaries_are_swept_but_not_a_live_builders(tmp_path, corpus):
    """The temporary shard a killed build left (`.tmp-*-tokens.bin`, up to 1.9 GB on TinyStories) in a
    shard folder of the cache is deleted by the next run on that --cache_dir, whichever shards it builds
    (a folder left holding nothing goes too), under the folder's lock: one whose lock another process
    holds (another run sharing --cache_dir, building that shard now) keeps its temporary.

    Bug caught: a killed build's temporary stayed in the cache until that same shard was built again
    (never, for a shard of files since changed), wasting its size on disk."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    _, train, _, _ = run(tmp_path, **kw)
    tokens, locks = train.path.parent, tmp_path / "cache" / ".locks"
    killed = write(tokens / "train-killed" / ".tmp-abc123-tokens.bin", b"\x00" * 5000)  # its only file
    beside = write(train.path / ".tmp-def456-meta.json", b"{")  # beside a complete shard
    live = write(tokens / "train-live" / ".tmp-ghi789-tokens.bin", b"\x00" * 3000)
    holder = subprocess.Popen(  # another train.py, building train-live now: it holds the folder's lock
        [sys.executable, "-c", "import sys, storage; held = storage.lock(sys.argv[1]); "
         "print('held', flush=True); sys.stdin.read()", str(locks / "tokens-train-live.lock")],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        _, train2, _, logs = run(tmp_path, **kw)  # cache hits: no shard of those folders is built
    finally:
        holder.communicate("")
    assert train2.path == train.path and any("train: cache hit" in line for line in logs)
    assert not killed.exists() and not killed.parent.exists() and not beside.exists()
    assert live.exists(), "the temporary of a build still running was deleted"
    [line] = [line for line in logs if "temporary file" in line]
    assert line == (f"data: removed 2 temporary files ({sources.in_bytes(5001)}) that killed builds left "
                    f"in {tokens}")
    _, _, _, logs = run(tmp_path, **kw)  # the builder gone (its lock dropped): its temporary goes now
    assert not live.exists() and not live.parent.exists()
    assert any("removed 1 temporary file " in line for line in logs)


def test_a_killed_builds_temporaries_are_swept_on_a_full_disk(tmp_path, corpus, monkeypatch):
    """On a disk with no room for a lock file's line, the temporaries killed builds left go all the
    same (the folder's lock held empty, as a build's is: storage.lock's full_ok): that is where their
    size (1.9 GB on TinyStories) is wanted back most; the lock file the build left, or none.
    Bug caught: the sweep took the lock needing room for its line, so on a full disk it skipped every
    folder and the temporaries that filled the disk stayed."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    _, train, _, _ = run(tmp_path, **kw)
    tokens, locks = train.path.parent, tmp_path / "cache" / ".locks"
    killed = write(tokens / "train-killed" / ".tmp-abc123-tokens.bin", b"\x00" * 5000)  # no lock file
    left = write(tokens / "val-killed" / ".tmp-def456-tokens.bin", b"\x00" * 3000)
    write(locks / "tokens-val-killed.lock", b"pid 1 on host since 2026-12-05 10:00:00\n")  # its build's
    real_write = os.write

    def full(fd, data):  # no room for a lock file's "pid N on HOST" line
        if data.startswith(b"pid "):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full)
    _, _, _, logs = run(tmp_path, **kw)
    assert not killed.exists() and not left.exists() and not killed.parent.exists()
    assert any("removed 2 temporary files" in line for line in logs), logs


def test_older_caches_of_a_hub_split_are_found_by_its_name(tmp_path):
    """A hub split's shards are the same source whatever files and rows the `datasets` cache holds
    (a new revision of the dataset): the name, the split and the text field say which."""
    tokens = tmp_path / "tokens"
    (tmp_path / ".locks").mkdir()

    def shard(key, **changes):
        source = {"hub": "roneneldan/TinyStories", "split": "train", "text_field": "text", "rows": 10,
                  "files": [f"/hf/{key}.arrow"], "documents": 5, **changes}
        meta = {"key": key, "split": "train", "tokenizer_hash": "t", "format": 2,
                "signature": {"source": source, "keep": "all", "every": 0}}
        write(tokens / f"train-{key}" / "tokens.bin", b"x" * 1000)
        write(tokens / f"train-{key}" / "meta.json", json.dumps(meta))
        return meta

    new = shard("new", rows=11, documents=6)
    shard("old")
    shard("otherfield", text_field="story")
    shard("othersplit", split="validation")
    shard("otherhub", hub="someone/Stories")
    logs = []
    data._log_superseded("train", json.loads(json.dumps(new)), tokens / "train-new", tmp_path, logs.append)
    [line] = logs
    assert f"({sources.in_bytes(folder_size(tokens / 'train-old'))})" in line
    assert line.endswith(f"rm -r {tokens / 'train-old'}")


def test_runs_sharing_a_cache_train_a_tokenizer_once(tmp_path, corpus):
    """A run that needs the tokenizer another run (on the same --cache_dir) is training waits for
    it and reads it from the cache, rather than training it too."""
    import shutil
    import threading

    import storage
    kw = dict(data=str(tmp_path / "src" / "train.txt"), val_data=str(tmp_path / "src" / "val.txt"))
    run(tmp_path / "elsewhere", **kw)
    trained = next((tmp_path / "elsewhere" / "cache").glob("tokenizer-*"))
    (tmp_path / "cache" / ".locks").mkdir(parents=True)
    held = storage.lock(tmp_path / "cache" / ".locks" / f"{trained.name}.lock")  # the other run, training
    logs = []
    thread = threading.Thread(target=lambda: data.prepare(targs(tmp_path, **kw), margs(), log=logs.append))
    thread.start()
    deadline = time.time() + 60
    while not any("waiting for it" in line for line in logs) and time.time() < deadline:
        time.sleep(0.01)
    shutil.copytree(trained, tmp_path / "cache" / trained.name)  # what the other run leaves
    held.close()
    thread.join()
    tokenizer_lines = [line for line in logs if "tokenizer" in line]
    assert f"{trained.name} is being built by another process" in tokenizer_lines[0]
    assert "cache hit" in tokenizer_lines[1] and not any("training" in line for line in logs)


def test_prepare_eval_builds_the_same_validation_shard_alone(tmp_path, corpus):
    train_path, val_path, _, _ = corpus
    tok, _, val, _ = run(tmp_path, data=str(train_path), val_data=str(val_path))
    other = tmp_path / "other"
    logs = []
    args = targs(other, data=str(train_path), val_data=str(val_path))
    alone = data.prepare_eval(args, margs(), tok, log=logs.append)
    assert np.array_equal(alone.tokens, val.tokens) and alone.path.name == val.path.name
    assert not list((other / "cache" / "tokens").glob("train-*"))  # no training shard was built
    assert not list((other / "cache").glob("tokenizer-*"))  # and no tokenizer trained
    with pytest.raises(ConfigError, match="pass --vocab_size 300"):
        data.prepare_eval(args, margs(vocab=512), tok)
    gone = targs(other, data=str(tmp_path / "moved-away.txt"), val_data=str(val_path))  # not looked for
    assert np.array_equal(data.prepare_eval(gone, margs(), tok).tokens, val.tokens)


def test_cache_written_by_another_tokenizer_is_refused_and_rebuilt(tmp_path, corpus):
    train_path, val_path, train_docs, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, train, _, _ = run(tmp_path, **kw)
    other = Tokenizer.train(stories(10), 280)
    with pytest.raises(DataError, match="was written by tokenizer .*, not by this run's"):
        TokenData(train.path, other.hash)
    # plant a shard by another tokenizer where this run's shard belongs: prepare() must not trust it
    data.write_tokens(train.path, [["some other text"]], other, meta=dict(train.meta))
    _, again, _, logs = run(tmp_path, **kw)
    assert any("train: not reusing the cache" in line and "tokenizer" in line for line in logs)
    assert again.meta["tokenizer_hash"] == tok.hash and tok.decode(again.tokens) == stream(train_docs)


def test_a_ctrl_c_python_drops_still_stops_the_preparation(tmp_path, corpus, monkeypatch):
    """Python drops a KeyboardInterrupt raised inside a garbage collector's callback, where a
    Ctrl-C as tokenizing begins can land (the run then went on to train, and exited 0). What the
    handler raised is recorded, and raised again at the next batch: no shard is written. Nothing
    is kept once the preparation ends, and a handler that raises nothing makes nothing up."""
    import signal
    train_path, val_path, _, _ = corpus
    real = Tokenizer.encode_docs

    def ctrl_c_lost(self, texts, threads=1):  # what that callback does with the handler's exception
        try:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        except KeyboardInterrupt:
            pass
        return real(self, texts, threads)

    monkeypatch.setattr(Tokenizer, "encode_docs", ctrl_c_lost)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, data=str(train_path), val_data=str(val_path))
    assert not list((tmp_path / "cache" / "tokens").glob("*/meta.json"))  # (lost in the tokenizer's check)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # and the handler is Python's again
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):  # one not lost leaves the block, and no record behind
        with errors.signals_kept():
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    errors.raise_lost_signal()
    data.write_tokens(tmp_path / "later", [["a story."]], small_tokenizer())  # no interrupt left over
    flagged = []
    old = signal.signal(signal.SIGTERM, lambda *a: flagged.append(1))  # a handler that raises nothing
    try:
        with errors.signals_kept():
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert flagged == [1]


def test_an_interrupt_lost_in_a_gc_callback_is_raised_again_without_a_report(capfd, monkeypatch):
    """A Ctrl-C (or train.py's SIGTERM) landing in a weakref callback (as right after the tokenizer is
    trained) was raised again, but Python's "Exception ignored in ..." traceback came first."""
    import gc
    import signal
    import weakref

    class Thing:
        pass
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's, not pytest's
    with pytest.raises(KeyboardInterrupt):
        with errors.signals_kept():
            thing = Thing()
            ref = weakref.ref(thing, lambda r: signal.getsignal(signal.SIGINT)(signal.SIGINT, None))
            del thing
            gc.collect()
    assert ref() is None and "Exception ignored" not in capfd.readouterr().err


def test_an_interrupt_lost_before_an_error_wins_over_it(capfd, monkeypatch):
    """A Ctrl-C lost in a weakref callback as the Hub download began, which then failed: the run
    ended with the download's error (exit 1), as if nobody had asked it to stop."""
    import gc
    import signal
    import weakref

    class Thing:
        pass
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    with pytest.raises(KeyboardInterrupt) as e:
        with errors.signals_kept():
            thing = Thing()
            ref = weakref.ref(thing, lambda r: signal.getsignal(signal.SIGINT)(signal.SIGINT, None))
            del thing
            gc.collect()
            raise DataError("cannot get 'roneneldan/TinyStories' from the Hugging Face Hub")
    assert ref() is None and e.value.__suppress_context__
    assert "Exception ignored" not in capfd.readouterr().err
    with pytest.raises(DataError):  # an error with no interrupt lost before it is itself
        with errors.signals_kept():
            raise DataError("bad text")


def test_interrupted_tokenization_leaves_nothing_and_is_rebuilt(tmp_path, corpus, monkeypatch):
    train_path, val_path, train_docs, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, train, _, _ = run(tmp_path, **kw)
    folder = train.path
    # 1. an interruption while writing: no shard, no meta.json, no temporary file left
    calls = []
    real = Tokenizer.encode_docs

    def flaky(self, texts, threads=1):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, texts, threads)

    monkeypatch.setattr(Tokenizer, "encode_docs", flaky)
    with pytest.raises(KeyboardInterrupt):
        data.write_tokens(folder, [train_docs[:10], train_docs[10:20], train_docs[20:]], tok)
    monkeypatch.undo()
    # (Bug caught: an empty folder was left, which the next run reported "not reusing: no meta.json")
    assert not folder.exists()
    _, train, _, logs = run(tmp_path, **kw)
    assert not any("not reusing" in line for line in logs) and train.n_docs == 30
    # 2. a killed run (no cleanup): a truncated shard beside a meta.json that promises more
    with open(folder / "tokens.bin", "r+b") as f:
        f.truncate(100)
    write(folder / ".tmp-123-tokens.bin", b"\x00" * 10)
    with pytest.raises(DataError, match="not the .* tokens meta.json promises"):
        TokenData(folder)
    _, train, _, logs = run(tmp_path, **kw)
    assert any("not reusing the cache" in line for line in logs)
    assert tok.decode(train.tokens) == stream(train_docs)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "tokens.bin"]
    # 3. a meta.json that is JSON but not the shard's figures (a field gone, or not a table): rebuilt
    for damaged in [{k: v for k, v in train.meta.items() if k != "mtime_ns"}, ["a list"]]:
        (folder / "meta.json").write_text(json.dumps(damaged))
        with pytest.raises(DataError, match="lacks mtime_ns; run again|not a table of the shard's figures"):
            TokenData(folder)
        _, train, _, logs = run(tmp_path, **kw)
        assert any("not reusing the cache" in line for line in logs) and tok.decode(train.tokens) == stream(
            train_docs)


def test_an_altered_shard_is_never_a_cache_hit(tmp_path, corpus):
    train_path, val_path, train_docs, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, train, _, _ = run(tmp_path, **kw)
    bin_path = train.path / "tokens.bin"
    good = np.fromfile(bin_path, dtype=train.tokens.dtype)
    assert train.meta["max_id"] == good.max() and len(train.meta["sha256"]) == 64
    # 1. overwritten in place with other valid ids of the same size
    with open(bin_path, "r+b") as f:
        f.write(good[::-1].tobytes())
    _, again, _, logs = run(tmp_path, **kw)
    assert any("not reusing the cache" in line and "changed since it was written" in line for line in logs)
    assert tok.decode(again.tokens) == stream(train_docs)
    # 2. an id outside the vocabulary, the modification time put back as it was
    st = bin_path.stat()
    with open(bin_path, "r+b") as f:
        f.seek(10)
        f.write(np.array([999], dtype=again.tokens.dtype).tobytes())
    os.utime(bin_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match="holds token id 999, outside the tokenizer's 300 tokens"):
        TokenData(again.path, tok.hash)
    _, third, _, logs = run(tmp_path, **kw)
    assert any("not reusing the cache" in line and "token id 999" in line for line in logs)
    assert tok.decode(third.tokens) == stream(train_docs)


def test_a_token_id_equal_to_the_vocabulary_size_is_refused(tmp_path):
    # catches `>` for `>=` in TokenData's id check: id vocab_size is already outside the vocabulary
    tok = small_tokenizer()
    shard = data.write_tokens(tmp_path / "s", [stories(3)], tok)
    bin_path = shard.path / "tokens.bin"
    st = bin_path.stat()
    for top in (tok.vocab_size - 1, tok.vocab_size):
        with open(bin_path, "r+b") as f:
            f.seek(2)
            f.write(np.array([top], dtype=np.uint16).tobytes())
        os.utime(bin_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # (no sha256 check: only the id check)
        if top < tok.vocab_size:
            assert TokenData(shard.path, tok.hash).n_tokens == shard.n_tokens
    with pytest.raises(DataError, match=f"holds token id {tok.vocab_size}, outside the tokenizer's"):
        TokenData(shard.path, tok.hash)


def test_a_full_cache_disk_is_one_line_naming_cache_dir(tmp_path, corpus, full_disk, monkeypatch):
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    with pytest.raises(UserError, match=r"the disk is full .*; free some space or pick another --cache_dir") \
            as e:
        run(tmp_path, **kw)  # writing the tokenizer or a shard
    assert "\n" not in str(e.value) and no_partial_files(tmp_path / "cache")
    import datasets  # and `datasets` writing its own cache, which wraps the OSError in its errors

    def full(*args, **kw):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            raise datasets.exceptions.DatasetGenerationError("An error occurred while generating") from e
    monkeypatch.setattr(datasets.Dataset, "from_generator", full)
    with pytest.raises(DataError, match=r"cannot write the cache under --cache_dir .*: the disk is full"):
        run(tmp_path / "other", **kw)
    # the same for a .jsonl file, whose reader's errors are otherwise put down to the file
    jsonl = write_jsonl(tmp_path / "t.jsonl", [{"text": d} for d in stories(10)])
    monkeypatch.setattr(datasets, "load_dataset", full)
    with pytest.raises(DataError, match=r"cannot write the cache under --cache_dir .*: the disk is full"):
        run(tmp_path / "third", data=str(jsonl), val_data=str(val_path))


def test_a_cache_write_past_ulimit_f_names_the_limit_not_the_path_or_the_file(tmp_path, corpus, monkeypatch):
    """`ulimit -f` reached while `datasets` writes its cache (EFBIG, wrapped in its errors): the
    limit and --cache_dir, not "check the path, its permissions", nor a .jsonl "cannot read it"."""
    import datasets
    train_path, val_path, _, _ = corpus

    def too_big(*args, **kw):
        try:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        except OSError as e:
            raise datasets.exceptions.DatasetGenerationError("An error occurred while generating") from e
    expected = (r"cannot write the cache under --cache_dir .*: the file is over this process's "
                r"\(ulimit -f\) or the file system's size limit \(File too large\); raise the limit "
                r"\(ulimit -f unlimited\) or pick another --cache_dir$")
    monkeypatch.setattr(datasets.Dataset, "from_generator", too_big)
    with pytest.raises(DataError, match=expected):
        run(tmp_path, data=str(train_path), val_data=str(val_path))
    jsonl = write_jsonl(tmp_path / "t.jsonl", [{"text": d} for d in stories(10)])
    monkeypatch.setattr(datasets, "load_dataset", too_big)
    with pytest.raises(DataError, match=expected):
        run(tmp_path / "other", data=str(jsonl), val_data=str(val_path))


@pytest.mark.parametrize("error", [BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)),
                                   OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))])
def test_a_log_that_cannot_be_printed_is_not_put_down_to_the_cache(tmp_path, corpus, error):
    """`train.py | head` or stdout on a full disk: the log's own failure names standard output (it
    was "--cache_dir cache: Broken pipe; check the path, its permissions and --cache_dir", or a
    full cache disk, which freeing space under --cache_dir would not fix)."""
    train_path, val_path, _, _ = corpus

    def log(msg):
        raise error
    args = targs(tmp_path, data=str(train_path), val_data=str(val_path))
    for call in (lambda: data.prepare(args, margs(), log=log),
                 lambda: data.prepare_eval(args, margs(), small_tokenizer(), log=log)):
        with pytest.raises(DataError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f"cannot print the log ({error.strerror}): standard output") and "\n" not in msg
        assert "cache_dir" not in msg


def test_a_cache_dir_that_is_a_file_is_named_as_such(tmp_path, corpus):
    """--cache_dir naming a file (or holding a file where .locks goes): it was "FILE/.locks: Not a
    directory; check the path, its permissions and --cache_dir".
    Bug caught: the file named was always the .locks folder's path, FILE/.locks where --cache_dir is
    the file, FILE/sub/.locks where a folder above it is: the file in the way is named."""
    train_path, val_path, _, _ = corpus
    text = train_path.read_text()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".locks").write_text("not a folder")
    for cache, blocker in ((train_path, train_path), (train_path / "sub", train_path),
                           (tmp_path / "c", tmp_path / "c" / ".locks")):
        args = targs(tmp_path, data=str(train_path), val_data=str(val_path), cache_dir=str(cache))
        with pytest.raises(DataError, match=rf"^--cache_dir {re.escape(str(cache))}: a file is where a "
                           rf"folder should be \({re.escape(str(blocker))}\); pick another --cache_dir$"):
            data.prepare(args, margs(), log=lambda msg: None)
    assert train_path.read_text() == text  # (nothing written over it)


def test_a_pipe_or_a_broken_link_as_a_source_is_named_as_such(tmp_path):
    """`cat x | train.py --data /dev/stdin`, a FIFO, a link to nothing: not "no such file"."""
    fifo, link = tmp_path / "fifo.txt", tmp_path / "link.txt"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "gone.txt")
    with pytest.raises(DataError, match=r"^--data: '.*fifo.txt' is not a regular file \(a pipe or a "
                       r"device\), and the text is read more than once; save it to a .txt file and point "
                       r"--data at that$"):
        run(tmp_path, data=str(fifo))  # (and returns at once: a FIFO with no writer is never opened)
    with pytest.raises(DataError, match=r"^--val_data: '.*link.txt' is a link to '.*gone.txt', which does "
                       r"not exist; fix the link or the path$"):
        sources.resolve_files(str(link), "--val_data")
    # Bug caught: a file named with a trailing / (tab completion after a folder) was "no such file"
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"^--data: '.*a.txt' is a file, not a folder; drop the trailing /$"):
        sources.resolve_files(f"{tmp_path / 'a.txt'}/", "--data")


def test_a_finished_cache_on_a_read_only_disk_is_used(tmp_path, corpus, monkeypatch):
    """A complete cache on a read-only file system (a shared one) is a hit: the build lock it
    cannot create is not needed, since nobody can build there (it refused the hit)."""
    import storage
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, train, _, _ = run(tmp_path, **kw)

    def read_only(path, wait=False, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    monkeypatch.setattr(storage, "lock", read_only)
    again, train_again, _, logs = run(tmp_path, **kw)
    assert again.hash == tok.hash and train_again.meta == train.meta
    assert any("train: cache hit" in line for line in logs)


def test_a_finished_cache_on_a_full_disk_without_its_lock_files_is_used(tmp_path, corpus, monkeypatch,
                                                                         request):
    """A complete cache on a full disk whose .locks/ files are gone (`cp -r cache/*` skips hidden
    folders) is a hit: a lock file the disk has no room to write its line in is held empty, and
    where there is no room for .locks/ itself (ext4: a folder takes a block) the hit is read without
    a lock. A miss there is the one-line full-disk error, and one with no lock builds nothing.
    Bug caught (a disk-full probe): both stopped with "cannot write the cache under --cache_dir ...:
    the disk is full", which a read-only cache, or the lock files in place, did not."""
    train_path, val_path, _, _ = corpus
    kw, cache = dict(data=str(train_path), val_data=str(val_path)), tmp_path / "cache"
    tok, train, val, _ = run(tmp_path, **kw)
    real_write, real_mkdir = os.write, os.mkdir

    def write(fd, data):  # no room for a lock file's "pid N on HOST" line
        if data.startswith(b"pid "):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def mkdir(path, *args, **kw):  # no room for the .locks folder
        if os.path.basename(path) == ".locks":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_mkdir(path, *args, **kw)
    monkeypatch.setattr(os, "write", write)
    for no_folder in (False, True):
        shutil.rmtree(cache / ".locks")
        monkeypatch.setattr(os, "mkdir", mkdir if no_folder else real_mkdir)
        again, train_again, val_again, logs = run(tmp_path, **kw)
        assert again.hash == tok.hash and (train_again.meta, val_again.meta) == (train.meta, val.meta)
        assert sum("cache hit" in line for line in logs) == 3, logs
        assert (cache / ".locks").exists() != no_folder
    full = (r"^cannot write the cache under --cache_dir .*: the disk is full \(.*\); free some space or pick "
            r"another --cache_dir$")
    before = sorted(cache.iterdir())
    with pytest.raises(DataError, match=full):  # a miss (another vocabulary) with no lock: not built
        run(tmp_path, vocab=320, **kw)
    assert sorted(cache.iterdir()) == before
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    request.getfixturevalue("full_disk")  # a miss under a lock with no line: its first write fails
    locked = r"^cannot write .*: the disk is full .*; free some space or pick another --cache_dir$"
    with pytest.raises(UserError, match=locked) as e:
        run(tmp_path, vocab=320, **kw)
    assert "\n" not in str(e.value)


def test_another_users_lock_in_a_writable_cache_is_not_skipped(tmp_path, corpus, monkeypatch):
    """Only a read-only cache goes without the build lock: a lock file this user cannot open in a
    cache it can write (another user's) stays an error, since two builds would race."""
    import storage
    train_path, val_path, _, _ = corpus

    def not_mine(path, wait=False, **kw):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    monkeypatch.setattr(storage, "lock", not_mine)
    with pytest.raises(DataError, match="Permission denied"):
        run(tmp_path, data=str(train_path), val_data=str(val_path))
    # a cache not this user's to write goes without (root, as here, writes it all the same)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    run(tmp_path / "other", data=str(train_path), val_data=str(val_path))


def test_a_real_full_cache_disk(tmp_path):
    text = str(shared_file("train-sample.txt"))  # 78 KB of text: more than the disk holds
    with small_filesystem(tmp_path / "small", "64k") as disk:
        with pytest.raises(UserError, match=r"the disk is full .*pick another --cache_dir") as e:
            data.prepare(targs(disk, data=text, val_data=text), margs(), log=lambda m: None)
        assert "\n" not in str(e.value)


def test_a_real_full_cache_disk_holding_a_finished_cache_without_its_lock_files(tmp_path):
    """The disk-full probe's case on a real tmpfs, filled: a finished cache whose .locks/ folder is
    gone is a hit, and a miss there the one-line full-disk error."""
    text = str(shared_file("train-sample.txt"))
    with small_filesystem(tmp_path / "small", "2m") as disk:
        args = targs(disk, data=text, val_data=text)
        tok, train, _ = data.prepare(args, margs(), log=lambda m: None)
        shutil.rmtree(disk / "cache" / ".locks")
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"x" * 512)
        os.close(fd)
        logs = []
        again, train_again, _ = data.prepare(args, margs(), log=logs.append)
        assert again.hash == tok.hash and train_again.meta == train.meta
        assert sum("cache hit" in line for line in logs) == 3, logs
        with pytest.raises(UserError, match=r"the disk is full .*pick another --cache_dir") as e:
            data.prepare(args, margs(vocab=320), log=lambda m: None)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_a_cache_dir_that_cannot_be_written_is_one_line_naming_it(tmp_path, corpus, monkeypatch, code, kind):
    """A cache miss in a --cache_dir this process cannot write (a read-only disk; a folder chmod'ed
    away from this user, which root, as here, writes all the same: so mkdir is refused in it) said
    "<path>: Read-only file system; check the path, ...", or, from `datasets` reading a .jsonl into
    it, that the .jsonl could not be read."""
    train_path, val_path, train_docs, _ = corpus
    if kind == "jsonl":
        train_path = write_jsonl(tmp_path / "src" / "train.jsonl", [{"text": d} for d in train_docs])
    cache = tmp_path / "cache"
    real_mkdir = os.mkdir

    def refused(path, *args, **kw):
        if str(path).startswith(str(cache)):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kw)
    monkeypatch.setattr(os, "mkdir", refused)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # (what a user other than root is told)
    with pytest.raises(DataError, match=rf"cannot write the cache under --cache_dir {cache}: the folder "
                       rf"is not writable \({os.strerror(code)}\); pick a writable --cache_dir$") as e:
        run(tmp_path, data=str(train_path), val_data=str(val_path))
    assert "\n" not in str(e.value) and not cache.exists()


def test_a_real_read_only_cache_dir(tmp_path):
    text = str(shared_file("train-sample.txt"))
    with small_filesystem(tmp_path / "ro", "64k") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(DataError, match=r"the folder is not writable \(Read-only file system\); pick a "
                           r"writable --cache_dir") as e:
            data.prepare(targs(disk, data=text, val_data=text), margs(), log=lambda m: None)
        assert "\n" not in str(e.value)


def long_document():
    """One long document of many paragraphs, with the whitespace and punctuation text has."""
    parts = [f"{s}  It cost {i} coins, didn't it?\t(Yes!)" for i, s in enumerate(stories(42))]
    return "\n\n".join(parts) + "\n  \n" + "The end ... " * 20


def test_long_documents_are_encoded_in_bounded_pieces_with_the_same_ids(tmp_path, monkeypatch):
    doc = long_document()
    parts = tokenizer.pieces(doc, 300)
    assert "".join(parts) == doc and len(parts) > 20 and max(map(len, parts)) <= 300
    tok = small_tokenizer()
    whole = tok.encode_docs([doc])[0]
    assert [t for p in parts for t in tok.encode_docs([p])[0]] == whole
    # through data.py: no encoder call and no tokenizer training batch ever holds more than the limit
    seen = []
    real_encode, real_train = Tokenizer.encode_docs, tokenizer.tokenizers.Tokenizer.train_from_iterator

    def encode(self, texts, threads=1):
        seen.append(max(map(len, texts), default=0))
        return real_encode(self, texts, threads)

    def train_from(self, batches, trainer):
        batches = list(batches)
        seen.append(max(len(t) for b in batches for t in b))
        return real_train(self, batches, trainer)
    monkeypatch.setattr(data, "PIECE_CHARS", 300)
    monkeypatch.setattr(Tokenizer, "encode_docs", encode)
    monkeypatch.setattr(tokenizer.tokenizers.Tokenizer, "train_from_iterator", train_from)
    path = write(tmp_path / "long.txt", official([doc, "A short one."]))
    tok2, train, _, _ = run(tmp_path, data=str(path), val_data=str(path))
    assert max(seen) <= 300
    monkeypatch.undo()
    tok3, whole_train, _, _ = run(tmp_path / "whole", data=str(path), val_data=str(path))
    assert tok2.hash == tok3.hash  # the same tokenizer ...
    assert np.array_equal(train.tokens, whole_train.tokens)  # ... and the same shard as without pieces
    assert tok2.decode(train.tokens) == stream([doc, "A short one."])


# ---------------------------------------------------------------------------------------------
# Batches


def test_batches_are_a_pure_function_of_seed_step_and_micro():
    tokens = np.arange(5000, dtype=np.uint16)
    B, T = 4, 16
    x, y = data.get_batch(tokens, B, T, seed=1, step=0, micro=0)
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x - x[:, :1], torch.arange(T).expand(B, T))  # contiguous windows of the stream

    def run_steps(steps, grad_accum=4, world=1, rank=0):
        return [data.get_batch(tokens, B, T, seed=1337, step=s, micro=m)
                for s in steps for m in range(rank, grad_accum, world)]

    full = run_steps(range(10))
    resumed = run_steps(range(6, 10))  # a fresh process resuming at step 6
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[24:], resumed,
                                                                                     strict=True))
    # two DDP ranks take micro-batches r, r+W, ...: together the single process's global batch
    r0, r1 = run_steps(range(3), world=2, rank=0), run_steps(range(3), world=2, rank=1)
    merged = [b for pair in zip(r0, r1, strict=True) for b in pair]
    single = run_steps(range(3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(merged, single, strict=True))
    assert not any(torch.equal(a[0], b[0]) for a in r0 for b in r1)  # ranks never draw the same stream
    other = data.get_batch(tokens, B, T, seed=2, step=0, micro=0)[0]
    assert not torch.equal(other, x)


def test_get_batch_on_a_memmap_shard(tmp_path):
    tok = small_tokenizer()
    shard = data.write_tokens(tmp_path / "s", [stories(10)], tok)
    x, y = data.get_batch(shard, 3, 32, seed=0, step=5, micro=1)
    start = x[0, 0].item()
    assert x.shape == (3, 32) and int(x.max()) < tok.vocab_size and start >= 0
    with pytest.raises(DataError, match="fewer than one window"):
        data.get_batch(shard.tokens[:20], 3, 32, seed=0, step=0, micro=0)


def test_batch_windows_reach_the_last_token_and_never_pass_it():
    # catches an off-by-one in get_batch's starts: the last window never drawn, or one past the end
    T = 16
    tokens = np.arange(T + 3, dtype=np.uint16)
    x, y = data.get_batch(tokens, 200, T, seed=0, step=0, micro=0)
    assert set(x[:, 0].tolist()) == {0, 1, 2} and int(y.max()) == T + 2  # starts 0 .. n - T - 1
    x, y = data.get_batch(tokens[:T + 1], 2, T, seed=0, step=0, micro=0)  # one window exactly
    assert torch.equal(y[0], torch.arange(1, T + 1))
    with pytest.raises(DataError, match="fewer than one window"):  # (T tokens: no window, not a numpy error)
        data.get_batch(tokens[:T], 2, T, seed=0, step=0, micro=0)


def test_a_split_shorter_than_a_window_counts_its_tokens_with_thousands_separators():
    """Bug caught: "the training split has 1500 tokens, fewer than one window of 2001", where the logs
    (and prepare's TokenData) write 1,500."""
    with pytest.raises(DataError, match=r"^the training split has 1,500 tokens, fewer than one window of "
                                        r"2,001; add text or lower --max_seq_len$"):
        data.get_batch(np.zeros(1500, dtype=np.uint16), 2, 2000, seed=0, step=0, micro=0)


def test_no_two_seed_step_micro_triples_draw_the_same_batch():
    # catches a seed that mixes its parts (seed + step): seed 1 at step 1 drew seed 2's step 0
    tokens = np.arange(50000, dtype=np.uint16)
    firsts = {tuple(data.get_batch(tokens, 4, 8, seed=s, step=t, micro=m)[0][:, 0].tolist())
              for s, t, m in itertools.product(range(3), repeat=3)}
    assert len(firsts) == 27


@pytest.mark.parametrize("n", [101, 102, 103, 111])
def test_validation_windows_cover_every_token_once(n):
    tokens = (np.arange(n) * 7 % 300).astype(np.uint16)
    T = 10
    windows = data.n_val_windows(tokens, T)
    assert windows == math.ceil((n - 1) / T)

    def targets(windows):
        x, y = windows
        assert x.shape == y.shape and x.shape[1] == T
        keep = y >= 0
        return x[keep].numpy(), y[keep].numpy()

    x, y = targets(data.val_windows(tokens, T))
    assert np.array_equal(y, tokens[1:]) and np.array_equal(x, tokens[:-1])  # each target exactly once
    # independent of world size: ranks' ranges of windows join into the same ordered set
    for world in [2, 3]:
        parts = [targets(data.val_windows(tokens, T, start=a, stop=b))
                 for a, b in (data.rank_windows(windows, r, world) for r in range(world))]
        assert np.array_equal(np.concatenate([p[1] for p in parts]), tokens[1:])
    # a cap keeps a fixed prefix: the first 5 windows, the targets tokens[1:51]
    assert data.n_val_windows(tokens, T, max_windows=5) == 5
    _, y = targets(data.val_windows(tokens, T, max_windows=5))
    assert np.array_equal(y, tokens[1:51])


def test_the_last_validation_window_is_padded_with_pad_id():
    # catches x kept real past the last target: the padding after it must be pad_id (and y -1)
    tokens = np.arange(100, 113, dtype=np.uint16)  # 13 tokens: windows of 5 at 0, 5 and 10
    x, y = data.val_windows(tokens, 5, pad_id=7)
    assert x[2].tolist() == [110, 111, 7, 7, 7] and y[2].tolist() == [111, 112, -1, -1, -1]


def test_the_coverage_log_counts_targets_not_the_padding():
    # catches the last window's padding counted as covered targets: "15 of 12 ... (the first 3 windows)"
    from types import SimpleNamespace
    val, logs = SimpleNamespace(tokens=np.arange(13, dtype=np.uint16), n_tokens=13), []  # 12 targets
    data._log_coverage(val, 5, 0, logs.append)
    data._log_coverage(val, 5, 2, logs.append)
    assert logs == ["data: validation: 12 of 12 targets in 3 windows of 5 tokens (all)",
                    "data: validation: 10 of 12 targets in 2 windows of 5 tokens (the first 2 windows: "
                    "--eval_windows)"]


def test_bits_per_byte_bookkeeping_against_a_hand_count(tmp_path):
    # "héllo wörld": h é(2) l l o, space, w ö(2) r l d = 6 + 1 + 6 = 13 bytes; "🙂 ok": 4 + 1 + 2 = 7
    docs = ["héllo wörld", "🙂 ok"]
    assert sum(len(d.encode()) for d in docs) == 20
    train = write(tmp_path / "train.txt", official(stories(30)))
    val = write(tmp_path / "val.txt", "\n\n".join(docs) + "\n")
    tok, _, val_data, _ = run(tmp_path, data=str(train), val_data=str(val), seq_len=4)
    assert val_data.n_bytes == 20
    _, y = data.val_windows(val_data.tokens, 4)
    assert sum(data.count_bytes(y[i:i + 2], tok.token_bytes) for i in range(0, len(y), 2)) == 20
    # one batch by hand: bytes of "é" (2) + "l" (1) + padding (-1: none) + separator (0)
    y = torch.tensor([[*tok.encode("é"), *tok.encode("l"), -1, tok.eos_id]])
    assert data.count_bytes(y, tok.token_bytes) == 3
    assert data.count_bytes(y.numpy(), tok.token_bytes) == 3
    assert data.bits_per_byte(20 * math.log(2) * 1.5, 20) == pytest.approx(1.5)
    assert data.bits_per_byte(math.log(2), 1) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, a DataError, nothing half-written


def no_partial_files(cache):
    """No temporary file, and every shard folder holds a shard that opens (complete, checked)."""
    if not cache.exists():
        return True
    if any(p.name.startswith(".tmp-") for p in cache.rglob("*")):
        return False
    for folder in cache.glob("tokens/*"):
        if any(folder.iterdir()):
            TokenData(folder)
    return True


LATIN1 = ("café crème brûlée à la mode. " * 50).encode("latin-1")  # 1450 bytes, 250 not UTF-8
BAD = {  # case: (files written in the test, prepare() settings, the expected message)
    "missing path": ({}, dict(data="{tmp}/nope.txt"), r"--data: no such file '.*nope.txt'; check the path"),
    "empty glob": ({}, dict(data="{tmp}/*.jsonl"),
                   r"--data: no files match '.*\*.jsonl'; check the path or glob"),
    "empty file": ({"e.txt": ""}, dict(data="{tmp}/e.txt"), r"--data: '.*e.txt' is empty"),
    "unknown format": ({"x.csv": "a,b"}, dict(data="{tmp}/x.csv"),
                       r"'.*x.csv' is not .txt, .jsonl, .json, .parquet or .arrow"),
    "capped vocabulary": ({"c.txt": official(stories(40))},
                          dict(data="{tmp}/c.txt", val_data="{tmp}/c.txt", tokenizer_train_mb=0.001,
                               vocab=600),
                          r"can only fill \d+ tokens .*, or raise --tokenizer_train_mb "
                          r"\(the first 0.001 MB were read\)"),
    "bad json array": ({"a.json": '[\n  {"text": "a story"},\n  oops\n]\n'}, dict(data="{tmp}/a.json"),
                       r"a.json: is not valid JSON \(Expecting value: line 3 column 3"),  # (not "line 1")
    "glob of other files": ({"x.csv": "a,b", "y.md": "c"}, dict(data="{tmp}/*"),
                            r"'.*\*' matches no .txt, .jsonl, .json, .parquet or .arrow file "
                            r"\(only .*x.csv and 1 more\)"),
    "no usable text": ({"s.txt": f"\n{EOT}\n   \n\n{EOT}\n"}, dict(data="{tmp}/s.txt"),
                       r"'.*s.txt' has no usable text \(only whitespace and <\|endoftext\|> separators\)"),
    "no usable jsonl text": ({"j.jsonl": '{"text": ""}\n{"text": "  "}\n'}, dict(data="{tmp}/j.jsonl"),
                             r"--data .*j.jsonl .* has no usable text"),
    "not utf-8": ({"l.txt": LATIN1}, dict(data="{tmp}/l.txt"),
                  r"'.*l.txt' is not UTF-8 text \(250 of 1,450 bytes are not UTF-8\); convert it"),
    "gzip": ({"g.txt": gzip.compress(official(stories(40)).encode())}, dict(data="{tmp}/g.txt"),
             r"'.*g.txt' is gzip-compressed, not text; decompress it \(gunzip\) and point --data at"),
    "utf-16": ({"u.txt": "once upon a time there was a cat.\n".encode("utf-16")}, dict(data="{tmp}/u.txt"),
               r"'.*u.txt' is not UTF-8 text \(34 of 70 bytes are NUL: UTF-16\?\); convert it, e\.g\. iconv "
               r"-f utf-16"),
    "jsonl line without the field": (
        {"t.jsonl": '{"text": "a story"}\n{"text": "another"}\n\n{"title": "oops", "id": 3}\n'},
        dict(data="{tmp}/t.jsonl"),
        r"--data: .*t.jsonl: line 4 has no 'text' field \(it has: title, id\); every line needs one"),
    "jsonl line not json": ({"b.jsonl": '{"text": "a story"}\n{"text": \n'}, dict(data="{tmp}/b.jsonl"),
                            r"b.jsonl: line 2 is not valid JSON"),
    # Bug caught: a lone surrogate escape was "cannot read it (ArrowInvalid: JSON parse error: The surrogate
    # pair in string is invalid. in row 1)", its line and fix unsaid (a .json array's row: test_sources)
    "jsonl lone surrogate": ({"s.jsonl": '{"text": "a story"}\n{"text": "cut \\ud83d"}\n'},
                             dict(data="{tmp}/s.jsonl"),
                             r"^--data: .*s.jsonl: line 2 holds a lone surrogate \(an escape such as \\ud83d "
                             r"without its pair: .*\); fix or remove the line$"),
    "jsonl of blank lines": ({"w.jsonl": "\n  \n\n"}, dict(data="{tmp}/w.jsonl"),
                             r"--data: .*w.jsonl: has no records \(only blank lines\); remove it or point "
                             r"--data at text"),  # (was: cannot read it (Instruction "train" ...))
    "jsonl of a BOM and blank lines": ({"b.jsonl": "\ufeff\n\n"}, dict(data="{tmp}/b.jsonl"),
                                       r"b.jsonl: has no records \(only blank lines\)"),  # (not "line 1 is
    # not valid JSON")
    "jsonl with lone CR line ends": ({"r.jsonl": '{"text": "a"}\r{"text": "b"}\r{"title": 1}\r'},
                                     dict(data="{tmp}/r.jsonl"), r"r.jsonl: line 3 has no 'text' field"),
    "json empty array": ({"e.json": "[]\n"}, dict(data="{tmp}/e.json"),
                         r"--data: .*e.json: has no records \(an empty array\); remove it or point --data"),
    "jsonl text not a string": ({"n.jsonl": '{"text": "a"}\n{"text": 5}\n'}, dict(data="{tmp}/n.jsonl"),
                                r"n.jsonl: line 2: 'text' is int, not text"),
    "vocabulary the corpus cannot fill": (
        {"v.txt": "a b a b a b\n"}, dict(data="{tmp}/v.txt", val_data="{tmp}/v.txt"),
        r"--vocab_size 300: the training text can only fill \d+ tokens .*; pass --vocab_size \d+ or less"),
    "vocabulary too small": (
        {"v.txt": "a b\n"}, dict(data="{tmp}/v.txt", val_data="{tmp}/v.txt", vocab=200),
        r"--vocab_size 200 is too small: a byte-level BPE needs at least 264"),
    "nothing to hold out": (
        {"f.txt": official(stories(5))}, dict(data="{tmp}/f.txt"),
        r"holding out 1 in 100 of its 5 documents leaves none for validation; pass --val_data"),
    "shorter than a window": (
        {"w.txt": official(stories(2))},
        dict(data="{tmp}/w.txt", val_data="{tmp}/w.txt", vocab=270, seq_len=256),
        r"fewer than one training window of --max_seq_len \+ 1 = 257"),
    "missing tokenizer": ({"t.txt": "text\n"}, dict(data="{tmp}/t.txt", tokenizer="{tmp}/none.json"),
                          r"--tokenizer: no such file"),
    "tokenizer folder": ({"run/tokenizer.json": "{}", "t.txt": "text\n"},
                         dict(data="{tmp}/t.txt", tokenizer="{tmp}/run"),
                         r"--tokenizer: '.*run' is a folder; pass the tokenizer.json file itself "
                         r"\(.*run/tokenizer.json\)"),
    "one document of 3 to hold out": ({"f.txt": official(stories(3))}, dict(data="{tmp}/f.txt"),
                                      r"pass --val_data or raise --val_fraction to 0.334 or more"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_one_line_error(tmp_path, case, capfd):
    import datasets  # noqa: F401  (it sets its logger's level on import)
    level = logging.getLogger("datasets").level
    files, kw, pattern = BAD[case]
    src = tmp_path / "src"
    src.mkdir()
    for name, content in files.items():
        write(src / name, content)
    kw = {k: v.format(tmp=src) if isinstance(v, str) else v for k, v in kw.items()}
    model = {k: kw.pop(k) for k in ["vocab", "seq_len"] if k in kw}
    with pytest.raises(DataError, match=pattern) as e:
        run(tmp_path, **model, **kw)
    assert "\n" not in str(e.value)
    assert "Failed to" not in capfd.readouterr().err  # `datasets` logged its own line before ours
    assert logging.getLogger("datasets").level == level  # and is heard again after
    assert no_partial_files(tmp_path / "cache")


@pytest.mark.parametrize("shape, field, key, expr, then", [
    ({"version": 1, "data": "records"}, "text", "data", ".data[]", ""),
    ({"data": "records"}, "data", "data", ".data[]", " with --text_field text (or no --text_field)"),
    ({"my rows": "records"}, "text", "my rows", '.["my rows"][]', ""),
    ({"text": "texts"}, "text", "text", '.text[] | {"text": .}', ""),
    ({"text": "texts"}, "data", "text", '.text[] | {"data": .}', ""),
    ({"data": "stories"}, "data", "data", ".data[]", " with --text_field story"),
    ({"data": "named"}, "data", "data", ".data[]", " with --text_field story"),  # not the id before it
])
def test_a_json_object_holding_the_records_gets_a_command_that_works(tmp_path, shape, field, key, expr, then):
    """A .json object holding its records ({"data": [...]}, as many datasets ship) got "has no column
    'text' (it has: data); pass --text_field NAME", and --text_field data then failed too. With
    --text_field data (the list's name) the converted lines need another: the hint names it."""
    docs = stories(20)
    rows = {"records": [{"text": d} for d in docs], "texts": docs,
            "stories": [{"id": 1, "story": d} for d in docs],
            "named": [{"id": f"s{i}", "story": d} for i, d in enumerate(docs)]}
    path = write(tmp_path / "src" / "o.json", json.dumps({k: rows.get(v, v) for k, v in shape.items()}))
    what = "texts" if shape[key] == "texts" else "records"
    with pytest.raises(DataError, match=rf"--data: {path}: is one JSON object with the {what} in its "
                       rf"'{key}' list, not an array of records; convert it to JSON Lines \(jq -c "
                       rf"{re.escape(shlex.quote(expr))} {path} > {path.with_suffix('.jsonl')}\) and point "
                       rf"--data at that{re.escape(then)}$") as e:
        run(tmp_path, data=str(path), text_field=field)
    if shutil.which("jq") is None:
        pytest.skip("no jq here to run the command the error gives")
    subprocess.run(re.search(r"\((jq .*)\) and point", str(e.value))[1], shell=True, check=True)
    jsonl = str(path.with_suffix(".jsonl"))
    after = then.split()[2] if then else field  # (the --text_field the hint names, or the one typed)
    tok, train, _, _ = run(tmp_path, data=jsonl, val_data=jsonl, text_field=after)
    assert tok.decode(train.tokens) == stream(docs)


def test_parquet_without_the_text_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"story": ["a", "b"]}), path)
    with pytest.raises(DataError, match=r"p.parquet: has no column 'text' \(it has: story\); pass"):
        run(tmp_path, data=str(path))
    pq.write_table(pa.table({"text": ["a", None]}), path)
    with pytest.raises(DataError, match=r"row 1: 'text' is empty \(null\)"):
        run(tmp_path, data=str(path))
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match=r"p.parquet: has no rows; remove it or point --data at text"):
        run(tmp_path, data=str(path))
    path.write_text("not parquet")
    with pytest.raises(DataError, match=r"p.parquet: is not a parquet file, or a damaged one \(ArrowInvalid"):
        run(tmp_path, data=str(path))


def test_jsonl_bytes_that_are_not_utf8_and_null_hub_rows_are_one_line(tmp_path):
    """pyarrow keeps a .jsonl's bytes as they are: one that is not UTF-8 failed later, in
    tokenizing, with a traceback. A hub split (here a local folder in the hub's layout) with a null
    row did too."""
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"text": "a story."}\n{"text": "bad \xff byte"}\n{"text": "third."}\n')
    with pytest.raises(DataError, match=r"b.jsonl: line 2 is not UTF-8; convert the file to UTF-8"):
        run(tmp_path, data=str(path))
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a story.", None, "another."]}), hub / "data" / "train-0.parquet")
    with pytest.raises(DataError, match=r"\[train\] row 1: 'text' is empty \(null\); fill or drop the row"):
        run(tmp_path, hf_dataset=str(hub), val_fraction=0.5)


def test_a_few_bytes_that_are_not_utf8_are_replaced_and_counted(tmp_path):
    good = official(stories(30)).encode()
    path = write(tmp_path / "t.txt", good[:100] + b"\xff\xfe" + good[100:200] + b"\xe9" + good[200:])
    tok, train, _, logs = run(tmp_path, data=str(path), val_data=str(path))
    assert any(f"{path}: 3 bytes not UTF-8, replaced by U+FFFD" in line for line in logs)
    assert tok.decode(train.tokens).count("\ufffd") == 3


@pytest.mark.parametrize("edit", ["lowercase", "prefix space", "specials not special", "a byte missing"])
def test_a_tokenizer_that_changes_the_text_is_refused(tmp_path, edit):
    """A --tokenizer from elsewhere that lower-cases, adds a prefix space, reads "<|endoftext|>"
    in the text as the separator (its specials not marked special), or has no token for a byte
    would put other text in the shards, and other bytes under bits/byte: refused at load.
    Bug caught: one without a token for NUL (a BPE trained without the byte alphabet: the
    encoder dropped every character it never saw, silently) was taken for training."""
    spec = json.loads(small_tokenizer().tok.to_str())
    if edit == "lowercase":
        spec["normalizer"] = {"type": "Lowercase"}
    elif edit == "prefix space":
        spec["pre_tokenizer"]["add_prefix_space"] = True
    elif edit == "a byte missing":
        nul = next(c for c, b in tokenizer.BYTE_OF.items() if b == 0)
        vocab = spec["model"]["vocab"]
        vocab[max(vocab, key=vocab.get)] = vocab.pop(nul)  # (the ids stay 0..V-1)
    else:
        for token in spec["added_tokens"]:
            token["special"] = False
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(spec))
    if edit == "a byte missing":  # (NUL is no byte of the probe text: it was lost unseen)
        lossy = Tokenizer.load(path, exact=False)
        assert lossy.decode(lossy.encode_docs(["a\x00b"])[0]) == "ab"
    with pytest.raises(DataError, match="the tokenizer does not give back the text it encodes"):
        Tokenizer.load(path)


def test_tokenizer_that_disagrees_with_the_model(tmp_path, corpus):
    train_path, val_path, _, _ = corpus
    tok = small_tokenizer(300)
    tok.save(tmp_path / "tok.json")
    kw = dict(data=str(train_path), val_data=str(val_path), tokenizer=str(tmp_path / "tok.json"))
    with pytest.raises(ConfigError, match=r"has 300 tokens but --vocab_size is 400; pass --vocab_size 300"):
        run(tmp_path, vocab=400, **kw)
    _, train, _, _ = run(tmp_path, vocab=300, **kw)
    assert train.meta["tokenizer_hash"] == tok.hash
    with pytest.raises(ConfigError, match=r"<\|pad\|> at id 1 but --pad_id is 9; pass --pad_id 1"):
        tokenizer.check_tokenizer(tok, margs(300, pad_id=9))


def test_a_tokenizer_with_every_special_token_elsewhere_names_every_id_at_once():
    """Bug caught: a --tokenizer with its special tokens at 1..8 (an <unk> at 0) was refused one id a
    run: "pass --eos_id 1", then "1 is also --pad_id's id", and so on through 8 options."""
    from types import SimpleNamespace

    import config
    ids = {name: i + 1 for i, name in enumerate(SPECIAL_TOKENS)}
    shifted = SimpleNamespace(vocab_size=300, special_ids=lambda: ids)
    wanted = " ".join(f"--{name} {i}" for name, i in ids.items())
    with pytest.raises(ConfigError) as e:
        tokenizer.check_tokenizer(shifted, margs(300), "--tokenizer t.json")
    assert str(e.value) == ("--tokenizer t.json has <|endoftext|> at id 1 but --eos_id is 0 (and 7 other "
                            f"special tokens at other ids); pass {wanted}")
    argv = ["--preset", "debug", "--vocab_size", "300", *wanted.split()]
    _, (model_args, _) = config.parse_args([ModelArgs, TrainArgs], argv)
    tokenizer.check_tokenizer(shifted, model_args)  # (what it says to pass is taken)


def test_hub_offline_fails_fast_naming_data(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    t0 = time.time()
    with pytest.raises(DataError, match=r"offline .* that cache failed \(\w+: .+\); pass --data FILE") as e:
        run(tmp_path, hf_dataset="roneneldan/TinyStories")  # the cause named, whatever it was
    assert time.time() - t0 < 10 and "\n" not in str(e.value)


def test_command_line_error_is_one_line_and_exit_1(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cache = tmp_path / "cache"
    p = subprocess.run([sys.executable, str(ROOT / "data.py"), "--preset", "tiny", "--data", "missing.txt",
                        "--cache_dir", str(cache)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr == "data.py: error: --data: no such file 'missing.txt'; check the path\n"
    assert not cache.exists()
    # a vocabulary no BPE can have is a bad setting, refused before the text is looked at (as train.py does)
    p = subprocess.run([sys.executable, str(ROOT / "data.py"), "--preset", "tiny", "--data", "missing.txt",
                        "--vocab_size", "263", "--cache_dir", str(cache)], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("data.py: error: --vocab_size 263 is too small")


def test_the_val_fraction_suggested_holds_out_a_document():
    """The error's suggestion, as printed (3 significant digits), must work when typed back: 1 / n
    rounded to the nearest did not for about half of all n (1,811 documents: 0.000552 -> 1 in 1812)."""
    for n in range(2, 100_000):
        typed = float(f"{sources.fraction_for(n):.3g}")
        assert 1 <= round(1 / typed) <= n, n
    assert sources.fraction_for(10_000) == pytest.approx(1e-4)  # not 0.000101 from a float's last digit


# --- tokenizer.py: a second mutation audit ------------------------------------------------------

def test_too_small_refuses_below_the_bytes_and_specials_only():
    """Catches too_small refusing the smallest vocabulary a byte-level BPE can have (264), or taking 263."""
    assert tokenizer.MIN_VOCAB == 264 and tokenizer.too_small(264) is None
    assert tokenizer.too_small(263) == ("--vocab_size 263 is too small: a byte-level BPE needs at least 264 "
                                        "(8 special tokens + 256 bytes)")
    with pytest.raises(DataError, match="--vocab_size 100 is too small"):
        Tokenizer.train(["Once upon a time"], 100)
    tok = Tokenizer.train(["Once upon a time"], 264)  # every byte and special token, no merge
    assert tok.vocab_size == 264 and tok.decode(tok.encode("Once")) == "Once"


def test_a_vocabulary_the_text_cannot_fill_is_refused_naming_what_it_can():
    """Catches Tokenizer.train returning a smaller vocabulary than asked (the model's then disagrees)."""
    with pytest.raises(DataError, match=r"--vocab_size 400: the training text can only fill \d+ tokens") as e:
        Tokenizer.train(["ab ab ab"], 400)
    got = int(re.search(r"fill (\d+)", str(e.value)).group(1))
    assert 264 < got < 400 and f"pass --vocab_size {got} or less" in str(e.value)
    assert Tokenizer.train(["ab ab ab"], got).vocab_size == got


def test_a_tokenizer_without_a_special_token_is_refused_naming_it():
    """Catches a tokenizer.json lacking one of the special tokens taken (its ids then another's)."""
    spec = json.loads(small_tokenizer().tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<|pad|>"]
    del spec["model"]["vocab"]["<|pad|>"]
    with pytest.raises(DataError, match=r"^the tokenizer has no <\|pad\|> token; leave --tokenizer empty"):
        Tokenizer(tokenizer.tokenizers.Tokenizer.from_str(json.dumps(spec)))


def test_decode_keeps_special_tokens_as_text_and_hashes_differ_by_vocabulary():
    """Catches decode dropping the special tokens (a sample's separator lost), or a hash that does not
    tell two tokenizers apart."""
    tok = small_tokenizer()
    assert tok.decode([0, *tok.encode("Tom")]) == EOT + "Tom"
    assert tok.hash != small_tokenizer(280).hash and tok.legacy_hash is None
    assert re.fullmatch(r"[0-9a-f]{64}", tok.hash)


def test_loading_refuses_a_folder_a_missing_file_and_unreadable_json(tmp_path):
    """Catches Tokenizer.load's errors losing the path or the fix they name (a folder's tokenizer.json,
    `fix` for an unreadable file)."""
    (tmp_path / "run").mkdir()
    small_tokenizer().save(tmp_path / "run" / "tokenizer.json")
    with pytest.raises(DataError, match=rf"'{tmp_path / 'run'}' is a folder; pass the tokenizer.json file "
                                        rf"itself \({tmp_path / 'run' / 'tokenizer.json'}\)"):
        Tokenizer.load(tmp_path / "run")
    with pytest.raises(DataError, match=r"--tokenizer: no such file '.*nope.json'; check the path"):
        Tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"^cannot read the tokenizer '.*bad.json' \(\w+: .+\); use another$"):
        Tokenizer.load(tmp_path / "bad.json", fix="use another")
    # Bug caught: `expected , or } at line 1 column 5`
    for other in ('{"a": 1}', "[1, 2]", '"text"', '"model"', '["model"]'):
        (tmp_path / "other.json").write_text(other)
        with pytest.raises(DataError, match=r"^cannot read the tokenizer '.*other.json' \(JSON, but not a "
                                            r'tokenizer: it has no "model"\); use another$'):
            Tokenizer.load(tmp_path / "other.json", fix="use another")
    (tmp_path / "utf16.json").write_bytes(b"\xff\xfe{\x00")  # (not UTF-8: no JSON verdict to make)
    with pytest.raises(DataError, match=r"^cannot read the tokenizer '.*utf16.json' \(UnicodeDecodeError"):
        Tokenizer.load(tmp_path / "utf16.json", fix="use another")
    (tmp_path / "damaged.json").write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(DataError, match=r"\(\w+: Missing vocab/merges.*\); use another$"):
        Tokenizer.load(tmp_path / "damaged.json", fix="use another")


def test_a_tokenizer_that_changes_text_loads_when_not_exact(tmp_path):
    """Catches exact=False ignored by load (sample.py could not read runs an earlier version trained)."""
    spec = json.loads(small_tokenizer().tok.to_str())
    spec["normalizer"] = {"type": "Lowercase"}
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(spec))
    assert Tokenizer.load(path, exact=False).vocab_size == 300


# --- data.py: a second mutation audit (caches, tokenizer training, windows) --------------------

def test_a_shard_of_another_format_is_refused_and_a_new_one_is_built_beside_it(tmp_path, corpus, monkeypatch):
    """Catches TokenData not checking meta.json's format, and shard cache keys without it: a new
    format rebuilt the shard an older checkout of the project reads in place, instead of beside it."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    _, train, _, _ = run(tmp_path, **kw)
    meta = json.loads((train.path / "meta.json").read_text())
    (train.path / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(DataError, match=rf"was written in format 1, not {data.FORMAT}; run again to rebuild"):
        TokenData(train.path)
    _, again, _, logs = run(tmp_path, **kw)
    assert any("train: not reusing the cache" in line and "format 1" in line for line in logs)
    assert again.path == train.path and again.meta["format"] == data.FORMAT
    monkeypatch.setattr(data, "FORMAT", data.FORMAT + 1)
    _, newer, _, logs = run(tmp_path, **kw)
    assert newer.path != train.path and newer.meta["format"] == data.FORMAT
    assert not any("not reusing" in line for line in logs)
    monkeypatch.undo()
    assert TokenData(train.path).meta["format"] == data.FORMAT  # the older shard, untouched


def test_a_cache_hit_does_not_hash_the_shard(tmp_path, monkeypatch):
    """Catches TokenData hashing tokens.bin on every open (~2 s per GB), not only when its size or
    modification time is not the one meta.json recorded."""
    tok = small_tokenizer()
    shard = data.write_tokens(tmp_path / "s", [stories(3)], tok)
    hashed = []
    monkeypatch.setattr(data, "_sha256", lambda path: hashed.append(path) or "0" * 64)
    assert TokenData(shard.path, tok.hash).n_tokens == shard.n_tokens and hashed == []
    os.utime(shard.path / "tokens.bin")  # touched: hashed, and a sha256 not the one recorded is refused
    with pytest.raises(DataError, match="changed since it was written"):
        TokenData(shard.path, tok.hash)
    assert hashed == [shard.path / "tokens.bin"]


def test_a_shard_longer_than_meta_json_promises_is_refused(tmp_path):
    """Catches TokenData's size check passing a tokens.bin longer than meta.json says (tokens
    appended with the modification time put back, so no sha256 check). Bug caught: its counts
    (thousands of bytes and tokens) were printed without the thousands separator the logs use."""
    tok = small_tokenizer()
    shard = data.write_tokens(tmp_path / "s", [stories(30)], tok)
    assert shard.n_tokens >= 1000
    bin_path = shard.path / "tokens.bin"
    st = bin_path.stat()
    with open(bin_path, "ab") as f:
        f.write(np.array([5, 6], dtype=np.uint16).tobytes())
    os.utime(bin_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match=rf"holds {st.st_size + 4:,} bytes, not the {shard.n_tokens:,} "
                                        "tokens"):
        TokenData(shard.path, tok.hash)


def test_a_shard_whose_tokens_bin_is_gone_is_said_to_be_missing(tmp_path):
    """Bug caught: a token cache whose tokens.bin was deleted was logged as "tokens.bin holds 0 bytes,
    not the N tokens meta.json promises" (it is rebuilt all the same): it is missing, not empty; and its
    count (thousands) was printed without the thousands separator the logs use."""
    tok = small_tokenizer()
    shard = data.write_tokens(tmp_path / "s", [stories(30)], tok)
    assert shard.n_tokens >= 1000
    (shard.path / "tokens.bin").unlink()
    with pytest.raises(DataError) as e:
        TokenData(shard.path, tok.hash)
    assert e.value.problem == (f"{shard.path / 'tokens.bin'} is missing (meta.json promises "
                               f"{shard.n_tokens:,} tokens)") and e.value.fix == data.REBUILD


def test_shards_are_uint16_up_to_65536_tokens_exactly(tmp_path):
    """Catches the uint16/uint32 boundary off by one: a 65,536-token vocabulary's ids (0 .. 65,535)
    fit uint16 (half the disk and memory of uint32); one of 65,537 does not."""
    tok = small_tokenizer()
    for vocab, dtype in [(1 << 16, np.uint16), ((1 << 16) + 1, np.uint32)]:
        tok.vocab_size = vocab
        shard = data.write_tokens(tmp_path / str(vocab), [stories(2)], tok)
        assert shard.tokens.dtype == dtype and shard.meta["dtype"] == np.dtype(dtype).name


def test_meta_json_records_the_largest_id_of_every_batch(tmp_path):
    """Catches meta.json's max_id taken from the last batch written, not the largest of all."""
    tok = small_tokenizer()
    shard = data.write_tokens(tmp_path / "s", [stories(5), ["a"]], tok)
    assert shard.meta["max_id"] == int(np.max(shard.tokens)) > max(tok.encode("a"))


def test_a_shard_of_no_documents_is_refused_naming_the_text(tmp_path):
    """Catches write_tokens's empty check skipped: a shard of no tokens was written and trusted
    (get_batch, the windows and the bytes/token log then fail far from the cause)."""
    with pytest.raises(DataError, match=r"^--data x.txt has no usable text \(only whitespace or "
                       r"separators\); check the files$"):
        data.write_tokens(tmp_path / "s", [["  ", "\ufeff", ""], ["\n"]], small_tokenizer(),
                          what="--data x.txt")
    assert not (tmp_path / "s").exists()  # nothing a later open would trust, nor an empty folder


def test_the_tokenizer_cap_counts_the_documents_before_a_long_one(monkeypatch):
    """Catches the head of a long document that crosses --tokenizer_train_mb read up to the whole
    cap, not up to what the documents before it left of it (nearly twice the cap)."""
    import datasets
    monkeypatch.setattr(data, "PIECE_CHARS", 1000)
    short = [" ".join(f"s{i}w{j}" for j in range(150)) for i in range(8)]  # ~7 KB, each under 1000
    long = " ".join(f"word{i}" for i in range(20000))
    ds = datasets.Dataset.from_dict({"text": [*short, long]})
    used = {}
    got = [t for part in data._texts(ds, 4, 10_000, used) for t in part]
    assert got[:8] == short and long.startswith("".join(got[8:])) and len(got) > 8
    assert 10_000 <= used["bytes"] < 11_000 and used["capped"]


def test_the_bytes_a_tokenizer_trains_on_are_counted_with_or_without_a_cap():
    """Catches the bytes read not counted without a cap (--tokenizer_train_mb 0 logged "trained on
    0 B"), all the text read logged as capped, and the cap counted in characters, not bytes."""
    import datasets
    docs = ["héllo", "  ", "wörld 🙂"]
    ds = datasets.Dataset.from_dict({"text": docs})
    for cap in (0, 1000):
        used = {}
        assert [t for part in data._texts(ds, 2, cap, used) for t in part] == ["héllo", "wörld 🙂"]
        assert used == {"bytes": 6 + 11, "capped": False}, cap
    # the cap is in bytes, not characters: "éé" is 4 bytes, so two of them reach a cap of 8
    ds = datasets.Dataset.from_dict({"text": ["éé", "éé", "x"]})
    used = {}
    assert [t for part in data._texts(ds, 2, 8, used) for t in part] == ["éé", "éé"]
    assert used == {"bytes": 8, "capped": True}


def test_a_long_document_keeps_its_place_among_short_ones(tmp_path, monkeypatch):
    """Catches the short documents before a long one written after it (a long one is encoded in
    pieces, apart from the batch of short ones): the stream keeps the text's order."""
    monkeypatch.setattr(data, "PIECE_CHARS", 300)
    tok = small_tokenizer()
    docs = ["A short one.", long_document(), "Another short one."]
    shard = data.write_tokens(tmp_path / "s", [docs], tok)
    assert tok.decode(shard.tokens) == stream(docs) and shard.n_docs == 3


def test_a_vocabulary_all_the_text_cannot_fill_names_no_cap(tmp_path):
    """Catches the --tokenizer_train_mb hint added when the cap was not reached: all the text was
    read, so raising it cannot help."""
    v = write(tmp_path / "v.txt", "a b a b a b\n")
    for mb in (100.0, 0):
        with pytest.raises(DataError, match=r"can only fill \d+ tokens .*; pass --vocab_size \d+ or less, or "
                           r"train on more text$") as e:
            run(tmp_path, data=str(v), val_data=str(v), tokenizer_train_mb=mb)
        assert "tokenizer_train_mb" not in str(e.value)


def test_the_largest_id_is_found_past_the_first_chunk():
    """Catches _max_id reading only its first chunk of 64M tokens: an id outside the vocabulary
    further on in a large shard (TinyStories' holds ~470M) went unseen."""
    tokens = np.zeros((1 << 26) + 10, dtype=np.uint16)
    tokens[-1] = 7
    assert data._max_id(tokens) == 7 and data._max_id(tokens[:0]) == 0


def test_a_trained_or_cached_tokenizer_is_checked_against_the_model(tmp_path, corpus):
    """Catches prepare() not checking the BPE it trains, or finds in the cache, against the model's
    special-token ids (a --pad_id that is another token's id)."""
    train_path, val_path, _, _ = corpus
    args = targs(tmp_path, data=str(train_path), val_data=str(val_path))
    for _ in range(2):  # trained, then a cache hit
        with pytest.raises(ConfigError, match=r"<\|pad\|> at id 1 but --pad_id is 9; pass --pad_id 1"):
            data.prepare(args, margs(pad_id=9), log=lambda msg: None)
    assert list((tmp_path / "cache").glob("tokenizer-*/tokenizer.json"))


def test_a_damaged_cached_tokenizer_is_trained_again(tmp_path, corpus):
    """Catches a cached tokenizer.json that cannot be read (a damaged file) failing every later run
    instead of being trained again, with a log line naming it. Bug caught: that line ended with
    --tokenizer's advice ("pass a tokenizer.json ..., or leave --tokenizer empty to train one"), to
    a run that typed no --tokenizer and trains one anyway."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, *_ = run(tmp_path, **kw)
    [path] = (tmp_path / "cache").glob("tokenizer-*/tokenizer.json")
    path.write_text("{not json")
    again, *_, logs = run(tmp_path, **kw)
    [line] = [line for line in logs if "not reusing" in line]
    assert line.startswith(f"data: tokenizer: not reusing the cache: cannot read the tokenizer '{path}' (")
    assert line.endswith("); training it again") and "--tokenizer" not in line
    assert again.hash == tok.hash == Tokenizer.load(path).hash


def test_a_tokenizer_copied_over_the_cached_one_is_trained_again(tmp_path, corpus):
    """A tokenizer.json copied by hand over the cached one is not what the cache trained: the cache says
    so in one log line (with --tokenizer, the way to train with a tokenizer of one's own) and trains
    it again, and the shards are those of the tokenizer trained. Bug caught: one of another size
    stopped the run with "the tokenizer has 320 tokens but --vocab_size is 300; pass --vocab_size
    320", advice for a setting the user never changed; one of the same size trained on other text
    was taken silently, as if the cache had trained it on this text."""
    train_path, val_path, train_docs, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, *_ = run(tmp_path, **kw)
    [path] = (tmp_path / "cache").glob("tokenizer-*/tokenizer.json")
    bigger, other = Tokenizer.train(stories(30), 320), Tokenizer.train([s.upper() for s in stories(30)], 300)
    assert other.vocab_size == tok.vocab_size and other.hash != tok.hash
    for copied, why in [(bigger, "320 tokens, not the 300 it was trained with"),
                        (other, f"sha256 {other.hash[:12]}, not the {tok.hash[:12]} it was trained with")]:
        copied.save(path)
        again, train, _, logs = run(tmp_path, **kw)
        [line] = [line for line in logs if "not reusing" in line]
        assert line == (f"data: tokenizer: not reusing the cache: {path} is not the tokenizer trained there "
                        f"({why}; pass a tokenizer of your own with --tokenizer FILE); training it again")
        assert again.hash == tok.hash == Tokenizer.load(path).hash
        assert again.decode(train.tokens) == stream(train_docs)
    (path.parent / "meta.json").unlink()  # a cache trained before the record: still a cache hit
    *_, logs = run(tmp_path, **kw)
    assert f"data: tokenizer: cache hit {path} (300 tokens)" in logs


def test_an_empty_file_in_a_folder_is_left_out_with_a_warning(tmp_path, corpus):
    """Bug caught: one empty .txt in a --data folder stopped the run ("'e.txt' is empty; remove it"),
    where the folder's other files hold the text. It is left out with one warning line naming it, and
    out of the cache key (the same shard as without it; text written into it later is a new one);
    a folder of empty files alone, or an empty file named alone, is still an error."""
    train_path, val_path, train_docs, _ = corpus
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(train_path, folder / "a.txt")
    _, alone, _, _ = run(tmp_path, data=str(folder), val_data=str(val_path))
    write(folder / "e.txt", "")
    tok, train, _, logs = run(tmp_path, data=str(folder), val_data=str(val_path))
    assert [line for line in logs if "warning" in line] == [
        f"data: warning: --data: '{folder / 'e.txt'}' is empty; left out of {folder}"]
    assert train.path == alone.path and tok.decode(train.tokens) == stream(train_docs)
    write(folder / "e.txt", "One more story.\n")
    _, more, _, _ = run(tmp_path, data=str(folder), val_data=str(val_path))
    assert more.path != train.path and more.n_docs == train.n_docs + 1
    (folder / "a.txt").write_text("")
    (folder / "e.txt").write_text("")
    with pytest.raises(DataError, match=rf"^--data: every file of '{re.escape(str(folder))}' is empty \("):
        run(tmp_path, data=str(folder), val_data=str(val_path))
    with pytest.raises(DataError, match=r"^--data: '.*e.txt' is empty; remove it or point --data at text$"):
        run(tmp_path, data=str(folder / "e.txt"), val_data=str(val_path))


def test_a_file_of_whitespace_in_a_folder_or_glob_is_left_out_with_a_warning(tmp_path, corpus):
    """Bug caught: an empty file in a --data folder was left out with a warning, but one holding only
    "\\n" stopped the run ("'w.txt' has no usable text"). Now it is left out of a folder or glob
    alike, with one warning line naming it; a folder or glob of such files alone, or one named alone,
    is still an error."""
    train_path, val_path, train_docs, _ = corpus
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(train_path, folder / "a.txt")
    write(folder / "w.txt", "\n")
    for spec, cache in ((folder, "c1"), (folder / "*.txt", "c2")):  # (a cache hit reads no text: no warning)
        tok, train, _, logs = run(tmp_path, data=str(spec), val_data=str(val_path),
                                  cache_dir=str(tmp_path / cache))
        assert [line for line in logs if "warning" in line] == [
            f"data: warning: --data: '{folder / 'w.txt'}' has no usable text (only whitespace); left out of "
            f"{spec}"]
        assert tok.decode(train.tokens) == stream(train_docs)
    write(folder / "a.txt", f" \n{EOT}\n")
    with pytest.raises(DataError, match=rf"^--data: '{re.escape(str(folder))}' has no usable text \(every "
                                        r"file holds only whitespace or nothing: .*a.txt, \.\.\.\); point "
                                        "--data at text$"):
        run(tmp_path, data=str(folder), val_data=str(val_path))
    with pytest.raises(DataError, match=r"^--data: '.*w.txt' has no usable text \(only whitespace\); check "
                                        "the file$"):
        run(tmp_path, data=str(folder / "w.txt"), val_data=str(val_path))


def empty_arrow(path):
    table = pa.table({"text": pa.array([], pa.string())})
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)


@pytest.mark.parametrize("name, make, told", [
    ("b.jsonl", lambda p: write(p, "\n  \n"), "has no records (only blank lines)"),
    ("e.json", lambda p: write(p, "[]\n"), "has no records (an empty array)"),
    ("w.json", lambda p: write(p, " \n\n"), "has no records (only blank lines)"),
    ("p.parquet", lambda p: pq.write_table(pa.table({"text": pa.array([], pa.string())}), p), "has no rows"),
    ("a.arrow", empty_arrow, "has no rows"),
])
def test_a_file_of_no_records_in_a_folder_or_glob_is_left_out_with_a_warning(tmp_path, corpus, name, make,
                                                                             told):
    """Bug caught: a .jsonl of blank lines, a .json of [] or a .parquet or .arrow of no rows in a --data
    folder or glob stopped the run ("b.jsonl: has no records ...; or, if that file is no training
    text, name the text alone"), where a .txt of whitespace there was left out with a warning. Now
    it is left out alike; named alone, or a folder of such files alone, it is still an error."""
    train_path, val_path, train_docs, _ = corpus
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(train_path, folder / "a.txt")
    make(folder / name)
    for spec, cache in ((folder, "c1"), (folder / "*", "c2")):
        tok, train, _, logs = run(tmp_path, data=str(spec), val_data=str(val_path),
                                  cache_dir=str(tmp_path / cache))
        assert [line for line in logs if "warning" in line] == [
            f"data: warning: --data: '{folder / name}' {told}; left out of {spec}"]
        assert tok.decode(train.tokens) == stream(train_docs)
    with pytest.raises(DataError, match=rf"^--data: .*{re.escape(name)}: {re.escape(told)}; remove it or "
                                        "point --data at text$"):
        run(tmp_path, data=str(folder / name), val_data=str(val_path))
    (folder / "a.txt").unlink()
    write(folder / "w.txt", "\n")
    with pytest.raises(DataError, match=rf"^--data: '{re.escape(str(folder))}' has no usable text \(every "
                                        r"file holds only whitespace, no records or nothing: .*, \.\.\.\); "
                                        "point --data at text$"):
        run(tmp_path, data=str(folder), val_data=str(val_path), cache_dir=str(tmp_path / "c3"))


def test_a_cache_not_reused_is_named_whole_without_the_advice(tmp_path, corpus):
    """Bug caught: the log line of a shard not reused kept its message up to the first "; ", taken for
    the start of the advice: under a --cache_dir named `a; b` it said "not reusing the cache: .../a;
    rebuilding it". The advice is now kept apart where the error is made (DataError.fix), and the
    tokenizer cache's line, which cut its message at the last "; ", takes the problem alone too."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path), cache_dir=str(tmp_path / "a; b"))
    _, train, _, _ = run(tmp_path, **kw)
    (train.path / "meta.json").unlink()
    _, _, _, logs = run(tmp_path, **kw)
    [line] = [line for line in logs if "not reusing" in line]
    assert line == (f"data: train: not reusing the cache: {train.path} has no meta.json: the tokenization "
                    "did not finish; rebuilding it")
    [path] = (tmp_path / "a; b").glob("tokenizer-*/tokenizer.json")
    path.write_text("{not json")
    with pytest.raises(DataError) as e:
        Tokenizer.load(path)
    problem, fix = e.value.problem, e.value.fix
    assert fix.startswith("pass a tokenizer.json") and str(e.value) == f"{problem}; {fix}"
    *_, logs = run(tmp_path, **kw)
    assert f"data: tokenizer: not reusing the cache: {problem}; training it again" in logs


def test_the_tokenizer_cache_is_keyed_by_its_rules_and_special_tokens(tmp_path, corpus, monkeypatch):
    """Catches the tokenizer cache key without TOKENIZER_FORMAT (a BPE trained by older rules
    reused) or without the special tokens."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    run(tmp_path, **kw)
    monkeypatch.setattr(data, "TOKENIZER_FORMAT", data.TOKENIZER_FORMAT + 1)
    *_, logs = run(tmp_path, **kw)
    assert any("tokenizer: cache miss" in line for line in logs)
    renamed = {k: v.replace("|>", "-v2|>") for k, v in SPECIAL_TOKENS.items()}
    monkeypatch.setattr(data, "SPECIAL_TOKENS", renamed)
    *_, logs = run(tmp_path, **kw)
    assert any("tokenizer: cache miss" in line for line in logs)
    assert len(list((tmp_path / "cache").glob("tokenizer-*"))) == 3


def test_a_shard_folder_holding_other_text_is_not_a_cache_hit(tmp_path, corpus):
    """Catches get_tokens trusting a shard by its tokenizer alone: the validation shard, copied where
    the training shard belongs (the same tokenizer, other text), was trained on."""
    train_path, val_path, train_docs, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, train, val, _ = run(tmp_path, **kw)
    shutil.rmtree(train.path)
    shutil.copytree(val.path, train.path)
    _, again, _, logs = run(tmp_path, **kw)
    assert any(f"holds other text (key {val.meta['key']}, not {train.meta['key']}); rebuilding" in line
               for line in logs)
    assert again.n_docs == 30 and tok.decode(again.tokens) == stream(train_docs)


def test_a_training_split_of_exactly_one_window_is_enough(tmp_path, corpus):
    """Catches prepare()'s window check off by one: a split of --max_seq_len tokens (no window of
    --max_seq_len + 1) passed, and get_batch failed at the first step. Bug caught: its counts (2,493
    tokens) were printed without the thousands separator the logs use."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    _, train, _, _ = run(tmp_path, **kw)
    n = train.n_tokens
    assert run(tmp_path, seq_len=n - 1, **kw)[1].n_tokens == n  # one window exactly
    with pytest.raises(DataError, match=rf": {n:,} tokens, fewer than one training window of --max_seq_len "
                       rf"\+ 1 = {n + 1:,}; add text or lower --max_seq_len$"):
        run(tmp_path, seq_len=n, **kw)


def test_the_coverage_log_of_one_window_says_the_first_window():
    """Bug caught: `--eval_windows 1` logged "1 window of 64 tokens (the first 1 windows: --eval_windows)"."""
    from types import SimpleNamespace
    logs, val = [], SimpleNamespace(tokens=np.zeros(200, dtype=np.uint16), n_tokens=200)
    data._log_coverage(val, 64, 1, logs.append)
    assert logs == ["data: validation: 64 of 199 targets in 1 window of 64 tokens (the first window: "
                    "--eval_windows)"]


def test_the_coverage_log_of_a_run_counts_eval_windows(tmp_path, corpus):
    """Catches prepare() or prepare_eval() logging the coverage of every window whatever
    --eval_windows (the run evaluates only the first ones), and prepare() tokenizing on one thread
    whatever --num_proc."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path), eval_windows=2)
    tok, _, val, logs = run(tmp_path, **kw)
    line = (f"data: validation: 64 of {val.n_tokens - 1:,} targets in 2 windows of 32 tokens (the first 2 "
            "windows: --eval_windows)")
    assert line in logs and val.n_tokens - 1 > 64
    assert sum(", 2 threads) -> " in x for x in logs) == 2  # (targs: --num_proc 2) train and val
    logs = []
    data.prepare_eval(targs(tmp_path, **kw), margs(), tok, log=logs.append)
    assert line in logs


def test_num_proc_above_the_cpu_cores_tokenizes_on_the_cores(tmp_path, corpus, monkeypatch):
    """Bug caught: --num_proc 100000 started up to 100000 threads and read BATCH_DOCS x 100000 documents
    into memory per batch; now the threads are at most the CPU cores (0: one per core, as before), each
    batch BATCH_DOCS per thread, and the log line says how many threads tokenized."""
    monkeypatch.setattr(data.os, "cpu_count", lambda: 3)
    assert [data.tokenizer_threads(n) for n in (0, 1, 2, 3, 100000)] == [3, 1, 2, 3, 3]
    calls, real = [], Tokenizer.encode_docs
    monkeypatch.setattr(Tokenizer, "encode_docs", lambda self, texts, threads=1: calls.append(
        (len(texts), threads)) or real(self, texts, threads))
    monkeypatch.setattr(data, "BATCH_DOCS", 2)
    train_path, val_path, _, _ = corpus
    _, train, _, logs = run(tmp_path, data=str(train_path), val_data=str(val_path), num_proc=100000)
    shards = [(docs, threads) for docs, threads in calls if threads > 1]  # (not the tokenizer's checks)
    assert train.n_docs == 30 and {threads for _, threads in shards} == {3}
    assert max(docs for docs, _ in shards) == 2 * 3  # (BATCH_DOCS x the threads: 30 documents at once before)
    assert sum(", 3 threads) -> " in x for x in logs) == 2  # train and val


def test_num_proc_is_kept_where_the_cpu_cores_are_not_known(monkeypatch):
    """Bug caught: where os.cpu_count() is None (the cores not known), --num_proc 4 tokenized on one
    thread (capped at the 1 that stood for the unknown count); 0 is still one thread there."""
    monkeypatch.setattr(data.os, "cpu_count", lambda: None)
    assert [data.tokenizer_threads(n) for n in (0, 1, 4)] == [1, 1, 4]


def test_validation_windows_stop_at_the_cap_and_the_end():
    """Catches val_windows not capping `stop` at the windows there are (or --eval_windows): a range
    past them gave windows beyond the cap, or padding-only windows past the end."""
    tokens = np.arange(101, dtype=np.uint16)  # 10 windows of 10
    _, y = data.val_windows(tokens, 10, max_windows=5, start=3, stop=8)
    assert y.tolist() == [list(range(31, 41)), list(range(41, 51))]
    _, y = data.val_windows(tokens, 10, start=8, stop=20)
    assert y.tolist() == [list(range(81, 91)), list(range(91, 101))]


def test_a_ctrl_c_in_data_py_exits_130_saying_what_is_kept(monkeypatch, capsys):
    """Catches data.py's Ctrl-C exit status not a SIGINT's (130), or without its one line: a script
    took it for bad data."""
    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(data, "prepare", interrupted)
    with pytest.raises(SystemExit) as e:
        data.main(["--preset", "tiny", "--data", "x.txt"])
    assert e.value.code == 130 and capsys.readouterr().err == (
        "\ndata.py: interrupted; the caches already complete are kept, the others rebuilt next time\n")


def test_the_validation_text_is_read_before_the_tokenizer_is_trained(tmp_path):
    """Bug caught: a bad --val_data (not UTF-8, a damaged parquet, no text field) or a held-out slice of
    no document was said only after the whole of --data was tokenized (minutes on TinyStories); then
    (a file of whitespace, a held-out slice of none) only after the tokenizer was trained on it."""
    path = write(tmp_path / "all.txt", official(stories(20)))
    bad = tmp_path / "val.txt"
    bad.write_bytes(b"\xff\xfe\x00\x80" * 400)
    blank = write(tmp_path / "blank.txt", "\n \n\n")
    for how, problem in [(dict(val_data=str(bad)), "is not UTF-8"),
                         (dict(val_data=str(blank)), r"has no usable text \(only whitespace\)"),
                         (dict(val_fraction=0.01), "leaves none for validation")]:
        with pytest.raises(DataError, match=problem):
            run(tmp_path, data=str(path), **how)
        assert not list((tmp_path / "cache" / "tokens").glob("train-*")), how
        assert not list((tmp_path / "cache").glob("tokenizer-*/tokenizer.json")), how


def test_a_sigterm_in_data_py_is_a_ctrl_c(monkeypatch, capsys):
    """Bug caught: SIGTERM (a scheduler's stop) ended data.py silently with status 143, where Ctrl-C says
    what is kept; the handler is put back after."""
    import signal

    def untaken(signum, frame):  # (what the test process does with one data.py does not take)
        raise RuntimeError("SIGTERM not taken")
    before = signal.signal(signal.SIGTERM, untaken)
    try:
        monkeypatch.setattr(data, "prepare", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(SystemExit) as e:
            data.main(["--preset", "tiny", "--data", "x.txt"])
        assert signal.getsignal(signal.SIGTERM) is untaken
    finally:
        signal.signal(signal.SIGTERM, before)
    assert e.value.code == 130 and "data.py: interrupted; the caches already" in capsys.readouterr().err


def test_data_py_warns_of_source_settings_as_train_py_does(monkeypatch, capsys):
    """Bug caught: data.py (which prepares with train.py's options) said nothing of a --val_fraction
    beside --val_data or a text field named for plain text, where train.py warns."""
    monkeypatch.setattr(data, "prepare", lambda *a, **k: None)
    data.main(["--preset", "tiny", "--data", "x.txt", "--val_data", "v.txt", "--val_fraction", "0.1",
               "--text_field", "story"])
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in out] == ["--text_field has no effect",
                                                            "--val_fraction has no effect"]
    assert all(line.startswith("warning: ") for line in out)


def test_batch_starts_are_the_documented_seed_step_micro_stream():
    """Catches the seed sequence reordered (seed, micro, step): every batch changed, so a run resumed
    from a checkpoint of an earlier version of this file no longer saw the batches it would have."""
    tokens = np.arange(10_000, dtype=np.uint16)
    for seed, step, micro in [(1337, 5, 2), (0, 1, 0)]:
        starts = np.random.default_rng([seed, step, micro]).integers(0, 10_000 - 16, size=4)
        x, _ = data.get_batch(tokens, 4, 16, seed=seed, step=step, micro=micro)
        assert x[:, 0].tolist() == starts.tolist()


def test_an_eval_windows_cap_above_the_windows_there_are_keeps_them_all():
    """Catches n_val_windows returning --eval_windows itself when the split has fewer windows:
    padding-only windows past the end were evaluated, and the log counted them."""
    tokens = np.arange(101, dtype=np.uint16)  # 10 windows of 10
    assert data.n_val_windows(tokens, 10, max_windows=50) == 10
    x, y = data.val_windows(tokens, 10, max_windows=50)
    assert x.shape == (10, 10) and (y >= 0).all()


def test_a_tokenizer_saved_under_a_file_is_one_line_naming_the_fix(tmp_path):
    """Tokenizer.save made its folder with a bare mkdir: a file in the way was a traceback
    (NotADirectoryError), not the one line with the caller's fix that every other write gives."""
    tok = Tokenizer.train(["hello world " * 50], tokenizer.MIN_VOCAB + 2)
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.raises(errors.StorageError, match=r"cannot create the folder .*blocked/run.*; pick another"):
        tok.save(tmp_path / "blocked" / "run" / "tokenizer.json", "pick another --out_dir")
    assert (tmp_path / "blocked").read_text() == "a file, not a folder"


# --- tokenizer.py: a third mutation audit -------------------------------------------------------

def test_encoding_switches_the_rust_thread_pool_off_and_puts_the_setting_back(monkeypatch):
    """Catches encode_docs leaving the `tokenizers` thread pool on while it encodes (a pool per
    thread: threads x cores), or not putting back the TOKENIZERS_PARALLELISM the user had set."""
    tok, seen = small_tokenizer(), []
    tok.encode_docs(["warm"])  # makes tok._plain, the copy encode_docs encodes with

    class Spy:  # the Rust tokenizer's type cannot be patched: its copy is wrapped
        def __init__(self, plain):
            self.plain = plain

        def encode_batch_fast(self, texts, add_special_tokens):
            seen.append(os.environ.get("TOKENIZERS_PARALLELISM"))
            return self.plain.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
    tok._plain = Spy(tok._plain)
    docs = stories(6)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    assert tok.encode_docs(docs, threads=2) == [tok.encode(d) for d in docs]
    assert seen == ["false", "false"] and os.environ["TOKENIZERS_PARALLELISM"] == "true"
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    tok.encode_docs(docs)
    assert seen[2:] == ["false"] and "TOKENIZERS_PARALLELISM" not in os.environ


def test_the_tokenizer_hash_is_the_sha256_of_its_canonical_json():
    """Catches the hash taken over the JSON in another form (keys in their given order, with spaces):
    the same tokenizer got another hash, and every checkpoint and token cache made before was refused."""
    fields = {"b": [1, 2], "a": {"y": "\u00e9", "x": None}, "post_processor": {"type": "ByteLevel"}}
    canonical = '{"a":{"x":null,"y":"\\u00e9"},"b":[1,2],"post_processor":null}'
    assert tokenizer.identity(fields) == hashlib.sha256(canonical.encode()).hexdigest()
    assert tokenizer.identity(dict(reversed(fields.items()))) == tokenizer.identity(fields)


def test_a_tokenizer_json_that_changes_text_is_refused_naming_the_file(tmp_path):
    """Catches Tokenizer.load refusing a tokenizer that does not give back its text without naming
    the file (the --tokenizer to replace) or saying that sample.py still reads such runs."""
    spec = json.loads(small_tokenizer().tok.to_str())
    spec["normalizer"] = {"type": "Lowercase"}
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: the tokenizer does not give back the "
                                        r"text it encodes .*sample.py still reads their runs"):
        Tokenizer.load(path)


def test_a_tokenizer_in_a_folder_named_in_other_bytes_than_utf8_loads(tmp_path):
    """Catches Tokenizer.load reading the file on the Rust side (from_file), which takes UTF-8 paths
    only: a run folder made outside train.py (`mkdir $'caf\\xe9'`) could not be sampled or resumed."""
    tok = small_tokenizer()
    path = tmp_path / os.fsdecode(b"caf\xe9") / "tokenizer.json"
    tok.save(path)
    assert Tokenizer.load(path).hash == tok.hash


def test_a_vocabulary_one_token_larger_than_the_text_can_fill_is_refused():
    """Catches Tokenizer.train's check off by one: a tokenizer one token short of --vocab_size taken
    (the model's embedding then has a row no token ever reaches, and check_tokenizer fails later)."""
    with pytest.raises(DataError, match=r"fill (\d+) tokens") as e:
        Tokenizer.train(["ab ab ab"], 400)
    got = int(re.search(r"fill (\d+)", str(e.value)).group(1))
    with pytest.raises(DataError, match=rf"^--vocab_size {got + 1}: the training text can only fill {got} "):
        Tokenizer.train(["ab ab ab"], got + 1)


def test_encode_docs_uses_exactly_the_threads_asked_for_and_takes_an_empty_list(monkeypatch):
    """Catches encode_docs cutting the list into more parts than `threads` (more threads than asked
    for: 5 documents in parts of 5 // 2 made 3), and failing on an empty list with threads > 1."""
    tok, pools = small_tokenizer(), []
    real = tokenizer.ThreadPoolExecutor
    monkeypatch.setattr(tokenizer, "ThreadPoolExecutor", lambda n: pools.append(n) or real(n))
    docs = stories(5)
    assert tok.encode_docs(docs, threads=2) == [tok.encode(d) for d in docs] and pools == [2]
    assert tok.encode_docs([], threads=4) == []
    assert tok.encode_docs(docs[:1], threads=4) == [tok.encode(docs[0])]


def test_a_tokenizer_that_is_not_a_byte_level_bpe_is_refused_even_when_not_exact():
    """Catches _count_token_bytes counting a token of any other kind of tokenizer (here a word-level
    one) by its characters, not its bytes: bits/byte of a run sampled or exported with it were wrong."""
    vocab = {**{t: i for i, t in enumerate(SPECIAL_TOKENS.values())}, "\u65e5\u672c": len(SPECIAL_TOKENS)}
    words = tokenizer.tokenizers.Tokenizer(tokenizer.models.WordLevel(vocab, unk_token=EOT))
    with pytest.raises(DataError, match=r"^the tokenizer is not a byte-level BPE \(token '\u65e5\u672c'\)"):
        Tokenizer(words, exact=False)


@pytest.mark.parametrize("word", ["\u65e5\u672c", "caf\u00e9"])
def test_an_added_token_counts_the_utf8_bytes_of_its_text(tmp_path, word):
    """An added token (not special) of a --tokenizer from elsewhere is read from the text as it is,
    not from byte stand-ins: its bytes are its text's UTF-8 bytes. "日本" decodes to itself (taken);
    an added "café" decodes as "caf" and the byte 0xE9 (its "é" is a stand-in there): refused.
    Bug caught: token_bytes counted an added token's characters ("café" 4 bytes, not 5), "日本" was
    refused as "not a byte-level BPE" even for sampling, and the added "café" was taken for training."""
    raw = tokenizer.tokenizers.Tokenizer.from_str(small_tokenizer().tok.to_str())
    raw.add_tokens([word])
    path = tmp_path / "tok.json"
    path.write_text(raw.to_str())
    text = f"un {word} x"
    loose = Tokenizer.load(path, exact=False)
    ids = loose.encode_docs([text])[0]
    assert raw.token_to_id(word) in ids and int(loose.token_bytes[ids].sum()) == len(text.encode())
    if word == "caf\u00e9":
        with pytest.raises(DataError, match="an added token that decodes to other text"):
            Tokenizer.load(path)
    else:
        assert Tokenizer.load(path).decode(ids) == text


@pytest.mark.parametrize("strip", ["lstrip", "rstrip"])
def test_an_added_token_that_takes_the_spaces_beside_it_is_refused_for_training(tmp_path, strip):
    """An added token (not special) with lstrip or rstrip takes the space beside it from the text:
    "un foo x" went into the shards as "unfoo x" (or "un foox"), with bits/byte over fewer bytes.
    Bug caught: it was taken for training (the added token was probed alone, no space beside it)."""
    raw = tokenizer.tokenizers.Tokenizer.from_str(small_tokenizer().tok.to_str())
    raw.add_tokens([tokenizer.tokenizers.AddedToken("foo", **{strip: True})])
    path = tmp_path / "tok.json"
    path.write_text(raw.to_str())
    loose = Tokenizer.load(path, exact=False)
    assert loose.decode(loose.encode_docs(["un foo x"])[0]) != "un foo x"  # (what training would lose)
    with pytest.raises(DataError, match="an added token that decodes to other text or takes the spaces"):
        Tokenizer.load(path)


def test_a_long_stretch_without_a_cut_between_words_is_cut_at_the_limit():
    """Catches pieces cutting at a space far back in its window (here after 1 character, not 10):
    the stretch of limit / 2 characters without a space between words is cut at the limit."""
    text = "a b" + "c" * 20
    assert tokenizer.pieces(text, 10) == ["a bccccccc", "cccccccccc", "ccc"]
    assert tokenizer.pieces("ab cdefg hij", 10) == ["ab cdefg", " hij"]  # a space past half: cut there


def test_a_checkpoints_special_id_that_disagrees_names_its_model_and_the_fix_given():
    """Catches check_tokenizer's special-id error naming a flag (--pad_id) where the settings are a
    checkpoint's model's, which a resume or sample.py cannot change, rather than that model and `fix`."""
    with pytest.raises(DataError, match=r"^tok.json has <\|pad\|> at id 1 but the model of w.pt has 9 there; "
                                        r"put back the run's tokenizer.json$"):
        tokenizer.check_tokenizer(small_tokenizer(), margs(300, pad_id=9), "tok.json",
                                  model="the model of w.pt", fix="put back the run's tokenizer.json")


def test_a_meta_json_without_a_format_is_refused(tmp_path):
    """Catches TokenData taking a meta.json without a format (one written before formats were
    numbered, or a hand edit) for one of the current format, so a shard of other rules was trusted."""
    tok = small_tokenizer()
    shard = data.write_tokens(tmp_path / "s", [stories(3)], tok)
    meta = json.loads((shard.path / "meta.json").read_text())
    del meta["format"]
    (shard.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"was written in format None, not {data.FORMAT}; run again"):
        TokenData(shard.path, tok.hash)


def test_the_head_of_a_long_document_stops_at_the_piece_that_reaches_the_cap_exactly(monkeypatch):
    """Catches _head's `>=` as `>`: a piece that brings the bytes to the cap exactly was followed by
    one more, so the BPE read past --tokenizer_train_mb."""
    monkeypatch.setattr(data, "PIECE_CHARS", 1000)
    long = " ".join(f"word{i}" for i in range(2000))
    parts = tokenizer.pieces(long, 1000)
    limit = len(parts[0].encode()) + len(parts[1].encode())
    assert data._head(long, limit) == (parts[0] + parts[1], limit)
    assert data._head(long, limit + 1)[0] == "".join(parts[:3])


def test_count_bytes_counts_a_target_of_id_0():
    """Catches count_bytes keeping only targets > 0: a tokenizer whose id 0 is text lost its bytes
    (only -1 is ignored)."""
    token_bytes = np.array([3, 4, 0])
    assert data.count_bytes(np.array([[0, 1, -1, 2]]), token_bytes) == 7
    assert data.count_bytes(torch.tensor([0, 0]), token_bytes) == 6


def test_a_shard_touched_but_unchanged_still_opens(tmp_path):
    """Catches meta.json recording a sha256 that is not tokens.bin's: a shard whose modification time
    changed (copied without -p, restored from a backup) but not its bytes was refused and rebuilt."""
    tok = small_tokenizer()
    shard = data.write_tokens(tmp_path / "s", [stories(3)], tok)
    bin_path = shard.path / "tokens.bin"
    assert shard.meta["sha256"] == hashlib.sha256(bin_path.read_bytes()).hexdigest()
    os.utime(bin_path, ns=(shard.meta["mtime_ns"] + 10**9,) * 2)
    assert np.array_equal(TokenData(shard.path, tok.hash).tokens, shard.tokens)


def test_older_caches_of_other_files_are_not_named(tmp_path, corpus):
    """Catches _log_superseded's origin ignoring the files' paths: a shard of other files (another
    dataset, same tokenizer) was named as an older cache to `rm -r`."""
    train_path, val_path, _, _ = corpus
    tok_path = tmp_path / "tok" / "tokenizer.json"
    small_tokenizer().save(tok_path)
    other = write(tmp_path / "src" / "other.txt", official(stories(20, start=10)))
    kw = dict(val_data=str(val_path), tokenizer=str(tok_path))
    _, first, _, logs = run(tmp_path, data=str(train_path), **kw)
    _, second, _, logs = run(tmp_path, data=str(other), **kw)
    assert second.path != first.path and any("train: cache miss" in line for line in logs)
    assert not older_caches(logs)


def test_data_py_exits_with_the_errors_own_code(tmp_path, monkeypatch, capsys):
    """Catches main() exiting 1 for every UserError: a bad setting found while preparing (a
    ConfigError) must exit 2, as argparse does."""
    def bad_setting(*args, **kwargs):
        raise errors.ConfigError("--val_fraction 2 is not a fraction")
    monkeypatch.setattr(data, "prepare", bad_setting)
    with pytest.raises(SystemExit) as e:
        data.main(["--preset", "tiny", "--data", "x.txt", "--cache_dir", str(tmp_path / "cache")])
    assert e.value.code == 2
    assert capsys.readouterr().err == "data.py: error: --val_fraction 2 is not a fraction\n"


def test_data_py_leaves_the_vocabulary_of_a_given_tokenizer_to_prepare(tmp_path, monkeypatch):
    """Catches main()'s too-small --vocab_size check applied with --tokenizer too: the given
    tokenizer's vocabulary is what counts, and prepare() checks the model against it, naming the fix."""
    called = []
    monkeypatch.setattr(data, "prepare", lambda train_args, model_args: called.append(model_args.vocab_size))
    data.main(["--preset", "tiny", "--data", "x.txt", "--tokenizer", "t.json", "--vocab_size", "263",
               "--cache_dir", str(tmp_path / "cache")])
    assert called == [263]


@pytest.mark.parametrize("field, value", [("dtype", "uint1v"), ("dtype", "float64"), ("n_tokens", "52106"),
                                          ("vocab_size", "300"), ("mtime_ns", None), ("tokenizer_hash", 7),
                                          ("sha256", 5), ("n_bytes", 1.5)])
def test_a_meta_json_with_a_field_of_the_wrong_type_is_rebuilt(tmp_path, corpus, field, value):
    """A meta.json that is still JSON but holds a field of the wrong type (a flipped bit in "uint16",
    a number turned into a string by a hand edit) is a one-line DataError that prepare() rebuilds.

    Bug caught: TokenData formatted or compared the field as it was (`{meta['n_tokens']:,}` of a string,
    np.dtype("uint1v")), so data.py and train.py stopped with a ValueError or TypeError traceback, at
    every run: the shard was never rebuilt."""
    train_path, val_path, train_docs, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, train, _, _ = run(tmp_path, **kw)
    folder = train.path
    (folder / "meta.json").write_text(json.dumps({**train.meta, field: value}))
    where = re.escape(str(folder / "meta.json"))
    with pytest.raises(DataError, match=rf"^{where}: {field} is .*; run again to rebuild it$"):
        TokenData(folder, tok.hash)
    _, train, _, logs = run(tmp_path, **kw)
    assert any("not reusing the cache" in line for line in logs)
    assert tok.decode(train.tokens) == stream(train_docs)


def test_val_data_that_is_a_copy_of_a_data_file_is_warned_of(tmp_path):
    """--val_data on another file holding the same bytes as a file of --data (a copy of the training
    text, made to try things out, or the same download in two places) scores the text the run trains
    on, as the same file under another name does: the same warning. A file of the same size with
    other text is no copy.

    Bug caught: warn_overlap compared files by identity (device and inode) alone, so a copy got no
    warning and its validation loss, not held out, read as one."""
    a, b = stories(4), stories(4, start=4)
    write(tmp_path / "train.txt", official(a))
    write(tmp_path / "copy.txt", official(a))
    write(tmp_path / "other.txt", official(b))
    split = lambda name: sources.Split(name, {"files": [[str(tmp_path / name)]]}, None)  # noqa: E731
    logs = []
    sources.warn_overlap(split("train.txt"), split("copy.txt"), logs.append)
    assert len(logs) == 1 and logs[0].startswith(
        f"warning: --val_data and --data share 1 file ({tmp_path / 'copy.txt'}, a copy of "
        f"{tmp_path / 'train.txt'}): the validation loss is not held out")
    same_size = tmp_path / "same-size.txt"  # other text, the training file's size
    text = (tmp_path / "train.txt").read_bytes()
    same_size.write_bytes(text[:-2] + b"!\n")
    logs = []
    sources.warn_overlap(split("train.txt"), split("same-size.txt"), logs.append)
    sources.warn_overlap(split("train.txt"), split("other.txt"), logs.append)
    assert logs == []


def test_a_val_data_file_that_cannot_be_read_is_no_copy(tmp_path, monkeypatch):
    """The copy check reads files that a run with a warm cache never reads (text of another user,
    stat-able but not readable): where it cannot read one, that file is no copy, and the check goes
    on (the same file under another name is still warned of); it never stops the run.

    Bug caught: filecmp.cmp's PermissionError came out of warn_overlap, so a run on a shared cache
    whose --val_data and --data files had the same size stopped, where it had trained before."""
    a = official(stories(4))
    write(tmp_path / "train.txt", a)
    write(tmp_path / "copy.txt", a)
    os.link(tmp_path / "train.txt", tmp_path / "link.txt")

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "copy.txt"))
    monkeypatch.setattr(sources.filecmp, "cmp", unreadable)
    split = lambda *names: sources.Split("x", {"files": [[str(tmp_path / n)] for n in names]}, None)  # noqa: E731
    logs = []
    sources.warn_overlap(split("train.txt"), split("copy.txt", "link.txt"), logs.append)
    assert len(logs) == 1 and logs[0].startswith(
        f"warning: --val_data and --data share 1 file ({tmp_path / 'link.txt'}): ")


def test_tokenizers_of_two_vocabularies_are_cached_side_by_side(tmp_path, corpus):
    """A run with another --vocab_size trains its own tokenizer beside the first, and each is a cache
    hit from then on. Mutation caught: a tokenizer cache key without the vocabulary size (the second
    size trained over the first in the same folder, so that runs alternating between the two
    retrained the BPE every time)."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok300, *_ = run(tmp_path, **kw)
    tok320, *_ = run(tmp_path, vocab=320, **kw)
    assert len(list((tmp_path / "cache").glob("tokenizer-*/tokenizer.json"))) == 2
    for vocab, tok in [(300, tok300), (320, tok320)]:
        again, *_, logs = run(tmp_path, vocab=vocab, **kw)
        assert sum("cache hit" in line for line in logs) == 3 and again.hash == tok.hash


def test_a_cached_tokenizer_with_its_special_tokens_elsewhere_is_trained_again(tmp_path, corpus, monkeypatch):
    """A tokenizer.json of the same size copied over a cached one from before meta.json recorded its
    hash, with its special tokens at other ids than training puts them, is trained again, with a log
    line saying why. Mutation caught: the special-id check of the cached tokenizer left out (the run
    stopped with "pass --eos_id 7 --pad_id 6 ...", settings the user never changed)."""
    train_path, val_path, _, _ = corpus
    kw = dict(data=str(train_path), val_data=str(val_path))
    tok, *_ = run(tmp_path, **kw)
    [path] = (tmp_path / "cache").glob("tokenizer-*/tokenizer.json")
    with monkeypatch.context() as m:  # Tokenizer.train puts SPECIAL_TOKENS first, in their order
        m.setattr(tokenizer, "SPECIAL_TOKENS", dict(reversed(SPECIAL_TOKENS.items())))
        other = Tokenizer.train(stories(30), 300)
    assert other.vocab_size == 300 and other.special_ids()["eos_id"] == len(SPECIAL_TOKENS) - 1
    other.save(path)
    (path.parent / "meta.json").unlink()
    again, *_, logs = run(tmp_path, **kw)
    [line] = [line for line in logs if "not reusing" in line]
    assert "its special tokens are not at ids 0 to 7, where training puts them" in line
    assert again.hash == tok.hash == Tokenizer.load(path).hash


def test_a_tokenizer_whose_record_a_full_disk_refused_is_not_left_without_it(tmp_path, corpus, monkeypatch):
    """A full disk refusing the cached tokenizer's meta.json (its hash, the check that no other
    tokenizer.json was copied over it) fails the run in the one full-disk line and leaves no
    tokenizer.json without its record: the next run trains it again and writes both.
    Bug caught (the disk-full probe): tokenizer.json was written first, so it stayed without its
    meta.json, and every later run took it as a hit and never wrote the record."""
    train_path, val_path, _, _ = corpus
    kw, real_save_json = dict(data=str(train_path), val_data=str(val_path)), storage.save_json

    def no_room(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save_json(path, obj, fix=None, **options):  # no room for the tokenizer's record
        if os.path.basename(os.path.dirname(path)).startswith("tokenizer-"):
            return storage.atomic_write(path, no_room, fix)
        return real_save_json(path, obj, fix, **options)
    with monkeypatch.context() as m:
        m.setattr(storage, "save_json", save_json)
        with pytest.raises(UserError, match=r"^cannot write .*meta.json.*: the disk is full"):
            run(tmp_path, **kw)
    assert not list((tmp_path / "cache").glob("tokenizer-*/tokenizer.json"))
    tok, *_, logs = run(tmp_path, **kw)
    [folder] = (tmp_path / "cache").glob("tokenizer-*")
    assert json.loads((folder / "meta.json").read_text()) == {"tokenizer_hash": tok.hash}
    assert Tokenizer.load(folder / "tokenizer.json").hash == tok.hash


def test_a_shard_shorter_than_meta_json_promises_is_refused(tmp_path):
    """TokenData's size check refuses a tokens.bin shorter than meta.json says, even with its
    modification time put back (so no sha256 check). Mutation caught: the size check passing a
    shorter file (np.memmap then raised a ValueError, a traceback, instead of a shard rebuilt)."""
    tok = small_tokenizer()
    shard = data.write_tokens(tmp_path / "s", [stories(30)], tok)
    bin_path = shard.path / "tokens.bin"
    st = bin_path.stat()
    os.truncate(bin_path, st.st_size - 2)
    os.utime(bin_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match=rf"holds {st.st_size - 2:,} bytes, not the {shard.n_tokens:,} "
                                        "tokens"):
        TokenData(shard.path, tok.hash)


def test_decode_cut_drops_the_three_bytes_left_of_a_cut_four_byte_character():
    """A prompt cut after the first byte of a 4-byte character (an emoji) keeps its 3 other bytes, 3
    tokens in a tokenizer that never saw it: decode_cut drops them all.
    Mutation caught: decode_cut looking at the first 2 tokens only (one U+FFFD was left)."""
    tok = small_tokenizer()
    text = "\U0001f642\U0001f642 ok"
    ids = tok.encode_docs([text])[0]
    assert tok.token_bytes[ids[:8]].tolist() == [1] * 8  # one token per byte of the emoji
    for k in range(1, 4):
        assert tok.decode(ids[k:]).startswith("\ufffd" * (4 - k))
        assert tok.decode_cut(ids[k:]) == text[1:]
    assert tok.decode_cut(ids) == text
