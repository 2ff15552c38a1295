"""sources.py: a mutation audit's tests (what tests/test_data.py left unpinned).

Which files a folder or a glob names, how .txt layouts are chosen and logged, which bytes refuse a
.txt file, where `datasets` caches local files and when it reads them again, text columns of other
Arrow types, the hints for tables and JSON objects, the hub path (a local folder in the hub's
layout, and stubs for the online probe: the tests have no network), the splits resolve_sources
gives, their log lines and signatures (the cache keys), that each is read once, and the held-out
slice's error.
"""

import json
import os
import re
import shlex
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sources
from config import TrainArgs
from errors import DataError

EOT = "<|endoftext|>"


def docs(n, start=0):
    return [f"Story {i}: a cat met a dog by the sea." for i in range(start, start + n)]


def official(texts):
    return "".join(t + "\n" + EOT + "\n" for t in texts)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
    return path


def load(files, tmp_path, log=None, **kw):
    """Local files as a list of their documents (stripped), as data.py tokenizes them."""
    ds = sources.load_files([str(f) for f in files], "--data", cache_dir=str(tmp_path / "cache"),
                            log=log or (lambda line: None), **kw)
    return [sources.document(t) for t in ds["text"]]


def hub_folder(path, splits):
    """A local folder in the hub's layout (data/<split>-0.parquet): load_dataset reads it offline."""
    (path / "data").mkdir(parents=True)
    for split, table in splits.items():
        pq.write_table(pa.table(table), path / "data" / f"{split}-0.parquet")
    return path


# ---------------------------------------------------------------------------------------------
# Log-line formatting


def test_plural_and_in_bytes():
    """Catches "0 file" (a count of none is plural) and sizes in KiB for KB (1024 for 1000)."""
    assert [sources.plural(n, "file") for n in (0, 1, 2, 1234)] == [
        "0 files", "1 file", "2 files", "1,234 files"]
    assert [sources.in_bytes(n) for n in (999, 1500, 2_500_000, 3e9, 5e12)] == [
        "999 B", "1.5 KB", "2.5 MB", "3.0 GB", "5000.0 GB"]


def test_in_bytes_makes_a_thousand_bytes_a_kilobyte():
    """Catches <= for < at a unit's limit: 1000 bytes read "1000 B", not "1.0 KB"."""
    assert [sources.in_bytes(n) for n in (1000, 1_000_000)] == ["1.0 KB", "1.0 MB"]


def test_a_lone_carriage_return_is_a_newline_in_a_document():
    """Catches \\r read as \\n only where a \\r\\n is there too: a .jsonl or .parquet row of old Mac
    text (lone \\r only) kept its \\r, and so gave other tokens than the same text from a .txt."""
    assert sources.document("\ufeff one\rtwo\r\rthree\r ") == "one\ntwo\n\nthree"
    assert sources.document("a\r\nb\rc\n") == "a\nb\nc"


# ---------------------------------------------------------------------------------------------
# Files: folders and globs


def test_a_folder_and_a_glob_read_upper_case_suffixes(tmp_path):
    """Catches a suffix compared as written: a folder or a glob left out A.TXT and B.JSONL (refused
    as "holds no .txt ... file"), which a file named alone reads."""
    folder = tmp_path / "corpus"
    write(folder / "A.TXT", official(docs(2)))
    write(folder / "sub" / "B.JSONL", "".join(json.dumps({"text": d}) + "\n" for d in docs(2, start=2)))
    want = [str(folder / "A.TXT"), str(folder / "sub" / "B.JSONL")]
    assert sources.resolve_files(str(folder), "--data") == want
    assert sources.resolve_files(str(folder / "**"), "--data") == want
    assert load(want, tmp_path) == docs(4)


def test_a_state_json_of_records_is_text_where_no_arrow_file_is_beside_it(tmp_path):
    """Catches every state.json and dataset_info.json left out: only a `save_to_disk` folder's (an
    .arrow file beside them) are not text; a corpus may name its records file state.json."""
    folder = tmp_path / "corpus"
    write(folder / "state.json", json.dumps([{"text": d} for d in docs(3)]))
    assert sources.resolve_files(str(folder), "--data") == [str(folder / "state.json")]
    write(folder / "saved" / "data-00000-of-00001.arrow", b"x")
    write(folder / "saved" / "state.json", "{}")
    assert sources.resolve_files(str(folder), "--data") == [
        str(folder / "saved" / "data-00000-of-00001.arrow"), str(folder / "state.json")]


def test_a_folder_named_like_a_text_file_is_walked_not_read(tmp_path):
    """Catches a folder named more.txt taken for a file by a folder's walk (and a glob's): it was
    listed as a file to read, beside the stories inside it."""
    folder = tmp_path / "corpus"
    write(folder / "a.txt", official(docs(2)))
    write(folder / "more.txt" / "b.txt", official(docs(2, start=2)))
    want = [str(folder / "a.txt"), str(folder / "more.txt" / "b.txt")]
    assert sources.resolve_files(str(folder), "--data") == want
    assert sources.resolve_files(str(tmp_path / "corp*"), "--data") == want
    assert load(want, tmp_path) == docs(4)


def test_a_folder_reached_through_a_link_leaves_out_the_cache_inside_it(tmp_path):
    """Catches the files compared with --cache_dir by their path as given, not resolved: --data
    through a link to the folder that holds --cache_dir read the cache's .json files."""
    folder = tmp_path / "corpus"
    write(folder / "a.txt", official(docs(2)))
    write(folder / "cache" / "tokens" / "t" / "meta.json", "{}")
    (tmp_path / "link").symlink_to(folder)
    assert sources.resolve_files(str(tmp_path / "link"), "--data", skip=[folder / "cache"]) == [
        str(tmp_path / "link" / "a.txt")]


def test_a_folder_gives_the_files_of_folders_linked_inside_it_each_once(tmp_path):
    """Bug caught: a folder left out its linked sub-folders (Path.rglob does not enter them) while a
    glob over it read them: `--data corpus` 1 file, `--data 'corpus/*'` 11. A link up (a loop) is
    walked once, a broken link and hidden files are left out."""
    write(tmp_path / "more" / "b.txt", official(docs(2)))
    folder = tmp_path / "corpus"
    write(folder / "a.txt", official(docs(2)))
    write(folder / ".hidden.txt", official(docs(1)))
    write(folder / "README.md", "not data")
    (folder / "linked").symlink_to(tmp_path / "more")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder)
    (folder / "broken.txt").symlink_to(tmp_path / "gone.txt")
    want = [str(folder / "a.txt"), str(folder / "linked" / "b.txt")]
    assert sources.resolve_files(str(folder), "--data") == want
    assert sources.resolve_files(str(folder / "*"), "--data") == want
    # a folder reached by several links: at its first path in sorted order, whatever the listing's order
    # (Bug caught: the file system's order picked it, another spelling, cache key, than the glob's)
    many = tmp_path / "many"
    many.mkdir()
    for name in "hbgadcfe":
        (many / name).symlink_to(tmp_path / "more")
    assert sources.resolve_files(str(many), "--data") == sources.resolve_files(str(many / "*"), "--data") == [
        str(many / "a" / "b.txt")]


def test_a_link_in_a_loop_of_links_is_passed_over_in_a_folder_and_named_as_one(tmp_path):
    """Bug caught: a folder holding a link in a loop of links (x.txt -> x.txt, a -> b -> a) stopped
    the walk with an OSError ("Too many levels of symbolic links"; train.py: "check the path, its
    permissions and --cache_dir"), where a glob over it passed the link over; and --data naming such
    a link said it was "a link to 'b', which does not exist", though b does."""
    folder = tmp_path / "corpus"
    want = [str(write(folder / "a.txt", official(docs(2))))]
    (folder / "x.txt").symlink_to(folder / "x.txt")
    (folder / "l1.txt").symlink_to(folder / "l2.txt")
    (folder / "l2.txt").symlink_to(folder / "l1.txt")
    assert sources.resolve_files(str(folder), "--data") == want
    assert sources.resolve_files(str(folder / "*"), "--data") == want
    with pytest.raises(DataError, match=r"^--data: '.*l1\.txt' is a link that leads back to itself \(a loop, "
                                        r"through '.*l2\.txt'\); fix the link or the path$"):
        sources.resolve_files(str(folder / "l1.txt"), "--data")


def test_a_text_field_typed_for_plain_text_keeps_its_shards_key(tmp_path):
    """Bug caught: --text_field foo beside a .txt --data (which has no fields) keyed new shards and a new
    tokenizer: the whole text tokenized again, to the same tokens. Records still key by their field."""
    write(tmp_path / "a.txt", official(docs(2)))
    write(tmp_path / "a.jsonl", "".join(json.dumps({"foo": d}) + "\n" for d in docs(2)))
    def key(name, field):
        return sources._local_split(str(tmp_path / name), "--data", field, tmp_path / "cache", print).source
    assert key("a.txt", "foo") == key("a.txt", "text")
    assert key("a.jsonl", "foo") != key("a.jsonl", "text")
    write(tmp_path / "mixed" / "a.txt", official(docs(2)))  # records beside plain text: the field counts
    write(tmp_path / "mixed" / "b.jsonl", json.dumps({"foo": "x"}) + "\n")
    assert key("mixed", "foo") != key("mixed", "text")


def test_without_inode_numbers_a_link_beside_its_file_is_read_once(tmp_path, monkeypatch):
    """Catches a file told by its path as given where the file system has no inode numbers (st_ino
    0): a symlink beside its target was a second file, and its text read twice."""
    folder = tmp_path / "corpus"
    write(folder / "a.txt", official(docs(2)))
    (folder / "b.txt").symlink_to(folder / "a.txt")
    real_stat = os.stat

    def no_inode(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        return os.stat_result((st.st_mode, 0, *st[2:10]))
    monkeypatch.setattr(os, "stat", no_inode)
    assert sources.resolve_files(str(folder), "--data") == [str(folder / "a.txt")]


def test_a_folder_whose_text_is_all_hidden_says_so(tmp_path):
    """Bug caught: a folder whose only text is in a hidden folder or file (.data/train.txt, .t.txt)
    was said to hold "no .txt, .jsonl, .json, .parquet or .arrow file", though it does: the hidden
    one, which a folder leaves out, is named."""
    write(tmp_path / "a" / ".data" / "train.txt", official(docs(2)))
    write(tmp_path / "b" / ".t.txt", official(docs(2)))
    for name, hidden in (("a", ".data/train.txt"), ("b", ".t.txt")):
        with pytest.raises(DataError, match=rf"^--data: folder '.*{name}' holds no .*\.arrow file but in "
                                            rf"hidden folders or files, which a folder leaves out \(.*{name}/"
                                            rf"{re.escape(hidden)}\); check the path, or name the hidden "
                                            r"one$"):
            sources.resolve_files(str(tmp_path / name), "--data")
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"folder '.*c' holds no .*\.arrow file; check the path$"):
        sources.resolve_files(str(tmp_path / "c"), "--data")


def test_a_glob_of_a_character_class_names_its_files(tmp_path):
    """Catches a glob with only [...] in it taken for a path: part[12].txt was "no such file"."""
    folder = tmp_path / "corpus"
    for n in (1, 2, 3):
        write(folder / f"part{n}.txt", official(docs(1, start=n)))
    assert sources.resolve_files(str(folder / "part[12].txt"), "--data") == [
        str(folder / "part1.txt"), str(folder / "part2.txt")]


def test_a_glob_through_a_folder_named_with_brackets_reads_the_folder_as_typed(tmp_path, monkeypatch):
    """Bug caught: a glob through a folder whose name holds [...] (run[1]/*.txt, as a run id or a
    date makes them) read the folder's name as a character class (run1), and matched nothing. A
    folder that exists is read as typed; a glob's part that names none is still a glob, and a path
    with no glob left in it that names nothing is no such file."""
    folder = tmp_path / "run[1]"
    want = [write(folder / "a.txt", official(docs(1))), write(folder / "sub" / "b.txt", official(docs(1)))]
    write(tmp_path / "run1" / "c.txt", official(docs(1)))  # (what the class would name)
    assert sources.resolve_files(str(folder / "*.txt"), "--data") == [str(want[0])]
    assert sources.resolve_files(str(folder / "**" / "*.txt"), "--data") == list(map(str, want))
    assert sources.resolve_files(str(folder / "s?b" / "*"), "--data") == [str(want[1])]
    assert sources.resolve_files(str(folder / "a.txt"), "--data") == [str(want[0])]  # (a path: as ever)
    assert sources.resolve_files(str(tmp_path / "run[12]" / "*.txt"), "--data") == [
        str(tmp_path / "run1" / "c.txt")]  # (no such folder: a class)
    monkeypatch.chdir(tmp_path)  # (a relative spelling)
    assert sources.resolve_files("run[1]/*.txt", "--data") == ["run[1]/a.txt"]
    with pytest.raises(DataError, match=r"^--data: no such file '.*run\[1\]/b\.txt'; check the path$"):
        sources.resolve_files(str(folder / "b.txt"), "--data")


def test_a_datasetdict_folder_given_as_val_data_names_its_validation_split(tmp_path):
    """Bug caught: --val_data naming a DatasetDict's folder was told to "point --val_data at one
    split's folder (dd/train), --val_data at another": the training split, and the option twice.
    Its validation split is named (or, without one, a split it has), and --data for the other."""
    import datasets
    part = datasets.Dataset.from_dict({"text": docs(3)})
    datasets.DatasetDict({"train": part, "validation": part}).save_to_disk(str(tmp_path / "dd"))
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(tmp_path / "tt"))
    with pytest.raises(DataError, match=r"^--val_data: '.*dd' is a DatasetDict saved by save_to_disk; point "
                                        r"--val_data at one split's folder \(.*dd/validation\), --data at "
                                        r"another$"):
        sources.resolve_files(str(tmp_path / "dd"), "--val_data")
    with pytest.raises(DataError, match=r"point --val_data at one split's folder \(.*tt/test\)"):
        sources.resolve_files(str(tmp_path / "tt"), "--val_data")
    with pytest.raises(DataError, match=r"point --data at one split's folder \(.*dd/train\), --val_data at "
                                        r"another$"):
        sources.resolve_files(str(tmp_path / "dd"), "--data")


def test_a_compressed_file_named_alone_is_told_to_be_decompressed(tmp_path):
    """Bug caught: --data a.txt.gz (or .bz2, .xz, .zst, .zip) was told "is not .txt, .jsonl, .json,
    .parquet or .arrow; convert it or leave it out": it is text already, compressed; the fix is the
    command that decompresses it. A file of another kind is still told to be converted."""
    for name, kind, tool in (("a.txt.gz", "gzip", "gunzip"), ("a.jsonl.bz2", "bzip2", "bunzip2"),
                             ("a.txt.xz", "xz", "unxz"), ("a.txt.ZST", "zstd", "unzstd"),
                             ("my corpus.zip", "zip", "unzip")):
        path = write(tmp_path / name, b"packed")
        with pytest.raises(DataError) as e:
            sources.resolve_files(str(path), "--data")
        assert str(e.value) == (f"--data: '{path}' is {kind}-compressed; decompress it ({tool} "
                                f"{shlex.quote(str(path))}) and point --data at what it holds")
    with pytest.raises(DataError, match=r"x.csv' is not .txt, .jsonl, .json, .parquet or .arrow; convert it"):
        sources.resolve_files(str(write(tmp_path / "x.csv", "a,b\n")), "--data")


def test_a_folder_or_glob_of_compressed_files_alone_names_them_and_the_command(tmp_path):
    """Bug caught: --data corpus, a folder that holds only stories.txt.gz (or a glob of such files),
    said "holds no .txt, .jsonl, .json, .parquet or .arrow file; check the path" (or "no files match"
    of a glob whose folder holds them): the path was right, the files compressed. The line now names
    them and the command that decompresses them, as for one named alone."""
    gz = write(tmp_path / "corpus" / "stories.txt.gz", b"packed")
    write(tmp_path / "corpus" / "sub" / "b.txt.bz2", b"packed")
    tail = (f"only compressed ones ({gz} and 1 more); decompress them (gunzip {gz}, ...) and point "
            "--data at what they hold")
    for spec, said in ((tmp_path / "corpus", f"folder '{tmp_path / 'corpus'}' holds"),
                       (tmp_path / "corpus" / "**", f"'{tmp_path / 'corpus' / '**'}' matches"),
                       (tmp_path / "corp*", f"'{tmp_path / 'corp*'}' matches")):
        with pytest.raises(DataError) as e:
            sources.resolve_files(str(spec), "--data")
        assert str(e.value) == f"--data: {said} no .txt, .jsonl, .json, .parquet or .arrow file, {tail}"
    with pytest.raises(DataError) as e:
        sources.resolve_files(str(tmp_path / "corpus" / "*.gz"), "--val_data")
    assert str(e.value).endswith(f"only compressed ones ({gz}); decompress it (gunzip {gz}) and point "
                                 "--val_data at what it holds")
    write(tmp_path / "corpus" / "a.txt", "Once upon a time.\n")  # (beside text: left out, as other kinds)
    assert sources.resolve_files(str(tmp_path / "corpus"), "--data") == [str(tmp_path / "corpus" / "a.txt")]


# ---------------------------------------------------------------------------------------------
# .txt files: the layout chosen, bytes that are not UTF-8


def test_the_log_says_which_separator_a_txt_file_with_both_follows(tmp_path):
    """Catches the layout's reason not logged: a file with markers inside lines and blank lines is
    split at one of them, and the log says which (a file with one signal says nothing)."""
    inline = write(tmp_path / "inline.txt", "a 1.\n\na 2." + EOT + "b 1.\n\nb 2.\n")
    blank = write(tmp_path / "blank.txt", "".join(f"p{i}.\n\n" for i in range(150)) + "it says " + EOT + "\n")
    plain = write(tmp_path / "plain.txt", "one.\n\ntwo.\n")
    logs = []
    assert load([inline], tmp_path, logs.append) == ["a 1.\n\na 2.", "b 1.\n\nb 2."]
    assert len(load([blank, plain], tmp_path, logs.append)) == 153
    assert logs == [f"data: {inline}: 1 {EOT} inside lines and 2 blank lines: documents split at the markers",
                    f"data: {blank}: 1 {EOT} inside lines and 150 blank lines: documents split at the blank "
                    "lines, the markers kept as text"]


def test_a_txt_file_read_as_one_document_against_its_look_says_so(tmp_path):
    """Bug caught: a .txt of one story per line (no blank line, no marker: 5,511 TinyStories lines)
    was read as one document, and one of blank-line documents that ended in an <|endoftext|> line
    too, without a word (with --val_data, training went on with every story boundary lost)."""
    lines = write(tmp_path / "per-line.txt", "".join(f"story {i}.\n" for i in range(1000)))
    stray = write(tmp_path / "stray.txt", "".join(f"p{i}.\n\n" for i in range(101)) + EOT + "\n")
    short = write(tmp_path / "short.txt", "".join(f"line {i}.\n" for i in range(999)))  # (a poem, say)
    stories = write(tmp_path / "stories.txt", official(["".join(f"p{i}.\n\n" for i in range(50))] * 2))
    logs = []
    assert len(load([lines], tmp_path, logs.append)) == len(load([stray], tmp_path, logs.append)) == 1
    assert len(load([short], tmp_path, logs.append)) == 1 and len(load([stories], tmp_path, logs.append)) == 2
    assert logs == [f"data: {lines}: 1,000 lines, none blank and no {EOT}: read as one document; if each "
                    f"line is a document, put a blank line after each (sed G) or end each with {EOT}",
                    f"data: {stray}: 1 {EOT} line and 101 blank lines: documents split at the marker lines "
                    "alone, the blank lines kept inside them"]


def test_a_txt_file_with_exactly_one_percent_of_bytes_not_utf8_is_repaired(tmp_path):
    """Catches >= for > at MAX_NON_UTF8: 1 bad byte in 100 is repaired and counted, 2 are refused."""
    logs = []
    path = write(tmp_path / "t.txt", b"a" * 98 + b"\n\xff")
    assert load([path], tmp_path, logs.append) == ["a" * 98 + "\n\ufffd"]
    assert logs == [f"data: warning: {path}: 1 byte not UTF-8, replaced by U+FFFD"]  # (it said "1 bytes")
    write(path, b"a" * 97 + b"\n\xff\xff")
    with pytest.raises(DataError, match=r"is not UTF-8 text \(2 of 100 bytes are not UTF-8\)"):
        load([path], tmp_path)


def test_a_txt_file_with_exactly_one_percent_nul_bytes_is_read(tmp_path):
    """Catches >= for > at the NUL check: 1 NUL in 100 bytes is text (a stray one, kept), 2 are
    refused as UTF-16."""
    path = write(tmp_path / "t.txt", b"a" * 98 + b"\n\x00")
    assert load([path], tmp_path) == ["a" * 98 + "\n\x00"]
    write(path, b"a" * 97 + b"\n\x00\x00")
    with pytest.raises(DataError, match=r"is not text \(2 of 100 bytes are NUL: a binary file\?\)"):
        load([path], tmp_path)


def test_nul_bytes_are_put_down_to_utf16_only_where_utf16_is_likely(tmp_path):
    """Bug caught: a program (82% NUL) or a file with a few NULs was "UTF-16? convert it with iconv". UTF-16
    has its byte-order mark, or a NUL in about every other byte of Latin text."""
    path = tmp_path / "t.txt"
    for body, says in [("once upon a time.\n".encode("utf-16"), "UTF-16?"),  # a mark
                       (("一二三\n" * 10).encode("utf-16"), "UTF-16?"),  # a mark, NULs on both parities
                       ("once upon a time.\n".encode("utf-16-le"), "UTF-16?"),  # none: half NUL
                       ("Жили-были дед и баба.\n".encode("utf-16-le"), "UTF-16?"),  # 12% NUL, at odd offsets
                       ("從前有隻貓。\n".encode("utf-16-be"), "UTF-16?"),  # (at even ones)
                       (b"\x7fELF" + b"\x00" * 80 + b"\x01\x02" * 8, "a binary file?"),
                       (b"text\n" * 20 + b"\x00" * 10, "a binary file?")]:
        write(path, body)
        with pytest.raises(DataError, match=re.escape(says)):
            load([path], tmp_path)


def test_a_short_txt_file_with_one_nul_is_not_put_down_to_utf16(tmp_path):
    """Bug caught: a 4-byte .txt file, a\\0b\\n, was "UTF-16? convert it with iconv": one NUL falls on one
    parity in any file, which tells nothing of UTF-16 in UTF-8 text; two (a\\0b\\0: "ab" in UTF-16LE)
    still do, and so does one beside bytes that are not UTF-8
    (test_nul_bytes_are_put_down_to_utf16_only_where_utf16_is_likely: a line of CJK text)."""
    path = write(tmp_path / "t.txt", b"a\0b\n")
    with pytest.raises(DataError, match=r"is not text \(1 of 4 bytes are NUL: a binary file\?\); point"):
        load([path], tmp_path)
    write(path, b"a\0b\0")
    with pytest.raises(DataError, match=r"is not UTF-8 text \(2 of 4 bytes are NUL: UTF-16\?\)"):
        load([path], tmp_path)


@pytest.mark.parametrize("codec", ["utf-32", "utf-32-le", "utf-32-be"])
def test_a_utf32_file_is_named_as_utf32_not_utf16_or_binary(tmp_path, codec):
    """Bug caught: a UTF-32 .txt file was "UTF-16? convert it, e.g. iconv -f utf-16" (its byte-order mark,
    FF FE 00 00, starts with UTF-16's; that command gives text full of NULs) or, without a mark, "a
    binary file?" (3 of 4 bytes NUL)."""
    path = write(tmp_path / "t.txt", official(docs(3)).encode(codec))
    says = "NUL: UTF-32?); convert it, e.g. iconv -f utf-32 -t utf-8"
    with pytest.raises(DataError, match=re.escape(says)):
        load([path], tmp_path)


def test_a_stored_zip_is_named_as_a_zip_by_its_nul_bytes(tmp_path):
    """Catches the archive test judged by bytes that are not UTF-8 alone: a zip that stores its text
    uncompressed (zip -0) has few of them but many NULs, and was told "UTF-16? convert it"."""
    import zipfile
    path = tmp_path / "t.txt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("t.txt", official(docs(20)))
    with pytest.raises(DataError, match=r"t.txt' is zip-compressed, not text; decompress it \(unzip\)"):
        load([path], tmp_path)


def test_a_marker_line_behind_a_bom_makes_a_marker_inside_a_line_text(tmp_path):
    """Catches the scan keeping the BOMs that the split drops: two files joined, whose only marker
    line is behind the second's BOM, were taken for markers-inside-lines text and split at the
    marker a story quotes."""
    text = "\ufeffThe sign said <|endoftext|> in red.\n" + "\ufeff<|endoftext|>\nNext.\n"
    path = write(tmp_path / "t.txt", text)
    assert load([path], tmp_path) == ["The sign said <|endoftext|> in red.", "Next."]


def test_a_last_marker_line_without_a_newline_separates(tmp_path):
    """Catches the last line left out when it lacks a newline: a file whose only marker line ends it
    was split at the marker a story quotes (the scan), or kept that line as text (the split)."""
    path = write(tmp_path / "t.txt", "The sign said <|endoftext|> in red.\n<|endoftext|>")
    assert load([path], tmp_path) == ["The sign said <|endoftext|> in red."]


def test_a_txt_file_of_unicode_spaces_alone_has_no_usable_text(tmp_path, monkeypatch):
    """Catches the scan taking bytes that are Unicode whitespace for text (a bug, fixed): a .txt file
    of no-break and ideographic spaces passed it, no document came out of it, and `datasets` failed
    with a traceback ('Instruction "train" corresponds to no data!'), on a long line too."""
    path = write(tmp_path / "s.txt", "\u3000\n\n\xa0 \n" + EOT + "\n\u2028\n")
    with pytest.raises(DataError, match=r"s.txt' has no usable text \(only whitespace and <\|endoftext\|> "
                                        r"separators\); check the file$"):
        load([path], tmp_path)
    monkeypatch.setattr(sources, "READ_CHUNK", 4)  # (a line longer than a read: a character cut by it)
    write(path, "\xa0 " * 9 + "\u3000" * 9 + "\n")
    with pytest.raises(DataError, match=r"s.txt' has no usable text \(only whitespace\); check the file$"):
        load([path], tmp_path)


def test_a_txt_file_of_whitespace_and_a_stray_byte_names_the_byte(tmp_path):
    """A file of blank lines and one byte that is not UTF-8 (under the 1% refused as another encoding)
    has no text to train on, and was said to hold "only whitespace": the byte is named too."""
    path = tmp_path / "s.txt"
    path.write_bytes(b"\n" * 300 + b"\xff\n")
    with pytest.raises(DataError, match=r"s.txt' has no usable text \(only whitespace, 1 byte not UTF-8\); "
                                        r"check the file$"):
        load([path], tmp_path)


# ---------------------------------------------------------------------------------------------
# The `datasets` cache of local files


def test_local_files_are_cached_in_the_cache_dir_and_read_again_once_changed(tmp_path):
    """Catches a .txt file's mtime left out of its generator's arguments (a file edited to the same
    size gave the documents `datasets` had cached from it before), and files cached outside
    cache_dir: by our generator (.txt) or by `datasets`' own loaders (.jsonl)."""
    txt, jsonl, cache = tmp_path / "t.txt", tmp_path / "t.jsonl", tmp_path / "cache"
    write(jsonl, "".join(json.dumps({"text": d}) + "\n" for d in docs(2)))
    write(txt, official(docs(2)))
    assert load([txt], tmp_path) == docs(2)
    by_txt = set(cache.iterdir())
    assert by_txt and load([jsonl], tmp_path) == docs(2) and set(cache.iterdir()) > by_txt
    st = os.stat(txt)
    write(txt, official(docs(2, start=5)))  # the same size: "Story 5", "Story 6"
    os.utime(txt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # (a coarse clock: a second on)
    assert os.stat(txt).st_size == st.st_size and load([txt], tmp_path) == docs(2, start=5)


def test_a_txt_file_edited_within_a_clock_tick_is_read_again(tmp_path):
    """Catches a .txt file's size left out of its generator's arguments: text edited under the same
    modification time (a coarse clock, a copy that keeps times) gave the documents cached before."""
    txt = write(tmp_path / "t.txt", official(docs(2)))
    assert load([txt], tmp_path) == docs(2)
    st = os.stat(txt)
    write(txt, official(docs(3)))
    os.utime(txt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load([txt], tmp_path) == docs(3)


def test_a_txt_file_named_alike_in_another_folder_is_not_given_the_cached_documents(tmp_path, monkeypatch):
    """Bug caught: the .txt generator's cache was keyed by the path as typed, so `--data d.txt` typed in
    folder b, of the same size and time as a/d.txt read before from a shared --cache_dir (files unpacked
    from one archive), gave a/d.txt's documents, while the shards' key (the absolute path) was b's."""
    a = write(tmp_path / "a" / "d.txt", official(docs(2)))
    b = write(tmp_path / "b" / "d.txt", official(docs(2, start=5)))
    st = os.stat(a)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(b).st_size == st.st_size
    monkeypatch.chdir(a.parent)
    assert load(["d.txt"], tmp_path) == docs(2)
    monkeypatch.chdir(b.parent)
    assert load(["d.txt"], tmp_path) == docs(2, start=5)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_a_records_file_edited_within_a_clock_tick_is_read_again(tmp_path, suffix):
    """Bug caught: `datasets` keys its cache of a .jsonl, .json or .parquet file by path and mtime
    alone, so records rewritten to another size under the old time (`cp -p`, `rsync -t`) gave the old
    documents, while the shards' key (which holds the size) said the file had changed: new shards of
    the old text, with no word of it."""
    path = tmp_path / f"t{suffix}"

    def save(texts):
        if suffix == ".parquet":
            pq.write_table(pa.table({"text": texts}), path)
        else:
            records = [{"text": t} for t in texts]
            write(path, "".join(json.dumps(r) + "\n" for r in records) if suffix == ".jsonl"
                  else json.dumps(records))
    save(docs(2))
    assert load([path], tmp_path) == docs(2)
    st = os.stat(path)
    save(docs(3, start=5))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size != st.st_size and load([path], tmp_path) == docs(3, start=5)


def test_a_failed_read_gives_the_datasets_logger_its_level_back(tmp_path):
    """Catches the `datasets` logger left at CRITICAL after a file it failed to read (its warnings
    unheard for the rest of the run). The level is set here: an earlier failed read in the same
    process would otherwise leave CRITICAL before as after."""
    import logging

    import datasets  # noqa: F401  (it sets its logger's level on import)
    library_log = logging.getLogger("datasets")
    before = library_log.level
    library_log.setLevel(logging.INFO)
    try:
        with pytest.raises(DataError, match=r"a.json: is not valid JSON"):
            load([write(tmp_path / "a.json", '[\n  {"text": "a story"},\n  oops\n]\n')], tmp_path)
        assert library_log.level == logging.INFO
    finally:
        library_log.setLevel(before)


# ---------------------------------------------------------------------------------------------
# Tables: Arrow types, empty and odd files


def test_a_large_string_column_is_text_and_joins_other_files(tmp_path):
    """Catches large_string refused as "not text", or kept as it is (a folder of a .txt and such a
    .parquet then failed in concatenate_datasets: "features can't be aligned")."""
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"story": pa.array(docs(2), pa.large_string())}), path)
    txt = write(tmp_path / "t.txt", official(docs(2, start=2)))
    assert load([txt, path], tmp_path, text_field="story") == docs(2, start=2) + docs(2)


def test_a_string_view_column_is_text(tmp_path):
    """Bug caught: a parquet file whose text column is string_view (as Arrow's newer writers, polars'
    among them, can store it) was refused: "column 'text' holds Value('string_view'), not text; pass
    --text_field NAME", though it is the text and no other option reads it."""
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"text": pa.array(docs(2), pa.string_view())}), path)
    txt = write(tmp_path / "t.txt", official(docs(2, start=2)))
    assert load([path, txt], tmp_path) == docs(2) + docs(2, start=2)


def test_an_empty_arrow_file_in_the_file_format_has_no_rows(tmp_path):
    """Catches the Arrow file format not tried after the stream format: an empty .arrow file was
    "not an Arrow file, or a damaged one"."""
    path = tmp_path / "e.arrow"
    table = pa.table({"text": pa.array([], pa.string())})
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    assert sources._table_problem(str(path), "arrow", "--data") == \
        "has no rows; remove it or point --data at text"


def test_a_json_object_with_an_empty_list_before_its_records(tmp_path):
    """Catches empty lists taken for the records' list: {"tags": [], "data": [...]} failed on
    tags[0] (IndexError) rather than naming the jq command for "data"."""
    path = write(tmp_path / "o.json", json.dumps({"tags": [], "data": [{"text": d} for d in docs(3)]}))
    with pytest.raises(DataError, match=r"one JSON object with the records in its 'data' list.*"
                                        r"jq -c '\.data\[\]'"):
        load([path], tmp_path)


@pytest.mark.parametrize("line, what", [('"a text"', "str"), ('["text"]', "list"), ("5", "int")])
def test_a_jsonl_line_that_is_no_record_is_named(tmp_path, line, what):
    """Catches a line that is no JSON object looked into as one: "a text" holds 'text' (a
    TypeError followed), and 5 has no `in`; the line is named, with what it is."""
    path = write(tmp_path / "t.jsonl", '{"text": "a story."}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"t.jsonl: line 2 has no 'text' field \(it has: {what}\)"):
        load([path], tmp_path)


@pytest.mark.parametrize("name, field, inner, said", [
    ("n.jsonl", "text", "text", "line 1 has no 'text' field (it has: id, meta)"),
    ("n.jsonl", "meta.story", "story", "line 1 has no 'meta.story' field (it has: id, meta)"),
    ("n.jsonl", "meta", "story", "line 1: 'meta' is dict, not text"),
    ("n.json", "meta", "story", "row 0: 'meta' is dict, not text"),
    ("n.json", "text", "text", "row 0 has no 'text' field (it has: id, meta)"),
    ("n.json", "meta.story", "story", "row 0 has no 'meta.story' field (it has: id, meta)"),
])
def test_text_inside_a_nested_object_is_told_how_to_lift_it_out(tmp_path, name, field, inner, said):
    """Bug caught: a record with its text inside an object ({"meta": {"story": ...}}) was told "pass
    --text_field NAME", which no name can satisfy (meta.story and meta were refused the same way):
    the line says nested fields are not read and gives the jq command that lifts the text out.
    Bug caught: a .json array whose records all lack the field (their text in 'meta.text') was still
    told "has no column 'text' ...; pass --text_field NAME" (its rows were read only for a column
    it had)."""
    records = [{"id": i, "meta": {"lang": "en", inner: d}} for i, d in enumerate(docs(2))]
    text = json.dumps(records) if name == "n.json" else "".join(json.dumps(r) + "\n" for r in records)
    path = write(tmp_path / name, text)
    lift = f"{'.[] | ' * (name == 'n.json')}{{text: .meta.{inner}}}"
    with pytest.raises(DataError) as e:
        load([path], tmp_path, text_field=field)
    assert str(e.value) == (f"--data: {path}: {said}; its text is inside 'meta.{inner}', and nested fields "
                            f"are not read; lift it out (jq -c '{lift}' {path} > {tmp_path / 'n-text.jsonl'}"
                            ") and point --data at that" + " without --text_field" * (field != "text"))


@pytest.mark.parametrize("name, text, what", [
    ("n.json", "hello world", r"is not valid JSON \(Expecting value: line 1 column 1 \(char 0\)\); fix the "
                              r"file"),
    ("i.json", '[{"text": "a"}, {"text": 5}]', r"row 1: 'text' is int, not text; fix the row or pass "
                                               r"--text_field NAME"),
    ("m.json", '[{"text": "a"}, {"txt": "b"}]', r"row 1 has no 'text' field \(it has: txt\); every record "
                                                r"needs one, or pass --text_field NAME"),
    ("z.jsonl", '{"text": "a"}\n{"text": null}\n', r"line 2: 'text' is null, not text"),
    ("u.json", '[{"text": "a"}]'.encode("utf-16"), r"is not UTF-8; convert the file to UTF-8$"),
    ("u.jsonl", '{"text": "a"}\n'.encode("utf-16"), r"line 1 is not UTF-8; convert the file to UTF-8$"),
    ("b.jsonl", '\ufeff{"text": "a"}\n\ufeff{"text": "b"}\n{"story": "c"}\n',
     r"line 2 starts with a byte-order mark \(U\+FEFF: files joined\?\), which pyarrow reads only at the "
     r"start of the file; remove it$"),
])
def test_a_json_file_that_is_no_array_of_text_records_names_its_fault(tmp_path, name, text, what):
    """Bug caught: a .json that is no JSON was "cannot read it (DatasetGenerationError: An error
    occurred while generating the dataset)"; one record whose text is a number, "column 'text' holds
    Json(decode=True), not text; pass --text_field NAME" (the field is right: the row is wrong); one
    record without the field, "'text' is empty (null)"; a JSON Lines null, "is NoneType"; UTF-16
    JSON (json.loads reads it, `datasets` does not), "cannot read it (...)", and in JSON Lines
    "line 2 is not UTF-8"; a BOM inside JSON Lines (two files joined), which pyarrow refuses, "line 3
    has no 'text' field" (json.loads read past it)."""
    path = write(tmp_path / name, text)
    with pytest.raises(DataError, match=rf"^--data: .*{re.escape(name)}: {what}"):
        load([path], tmp_path)


def test_a_jsonl_file_datasets_cannot_read_names_pyarrows_reason(tmp_path):
    """Bug caught: a .jsonl line that is JSON to Python but not to pyarrow (a key twice; a lone
    surrogate escape, which _json_problem now names) was "cannot read it (DatasetGenerationError: An
    error occurred while generating the dataset)", which names neither the fault nor the row;
    pyarrow's error behind it does."""
    path = write(tmp_path / "s.jsonl", '{"text": "a story."}\n{"text": "one", "text": "two"}\n')
    with pytest.raises(DataError, match=r"^--data: .*s.jsonl: cannot read it \(ArrowInvalid: JSON parse "
                                        r"error: Column\(/text\) was specified twice in row 1\)$"):
        load([path], tmp_path)


def test_a_lone_surrogate_in_a_json_array_is_refused_with_its_row_as_in_json_lines(tmp_path):
    """Bug caught: a .json array whose record held a lone surrogate escape ("\\ud83d" without its pair)
    was read with that half character silently dropped ("cut  here"), while the same record in a .jsonl
    is refused naming its line. A pair, an escaped backslash before "ud83d" and JSON Lines in a .json
    are text."""
    records = [{"text": "a story."}, {"text": "cut \ud83d here"}]
    path = write(tmp_path / "s.json", json.dumps(records))
    assert "\\ud83d" in path.read_text()  # (json.dumps escapes it, as a file cut inside an emoji holds it)
    with pytest.raises(DataError, match=r"^--data: .*s.json: row 1 holds a lone surrogate \(an escape such "
                                        r"as \\ud83d without its pair: .*\); fix or remove the row$"):
        load([path], tmp_path)
    ok = [{"text": "a \U0001F600 smile"}, {"text": "a path: C:\\ud83d"}]
    assert load([write(tmp_path / "ok.json", json.dumps(ok))], tmp_path) == [r["text"] for r in ok]
    lines = write(tmp_path / "l.json", "".join(json.dumps(r) + "\n" for r in ok))
    assert load([lines], tmp_path) == [r["text"] for r in ok]


def test_a_validation_table_without_a_text_column_names_val_text_field(tmp_path):
    """Catches a --val_data table's column hint naming --text_field, which does not name the field
    of --val_data's files once --val_text_field is given."""
    for name, table, what in (("a", pa.table({"story": docs(2)}), r"has no column 'text' \(it has: story\)"),
                              ("b", pa.table({"text": [1, 2]}), r"column 'text' holds .*int64.*, not text")):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path)
        with pytest.raises(DataError, match=rf"^--val_data: .*{name}.parquet: {what}; pass "
                                            r"--val_text_field NAME$"):
            sources.load_files([str(path)], "--val_data", cache_dir=str(tmp_path / "cache"), log=print)


def test_a_json_object_hint_picks_the_list_whose_records_hold_the_field(tmp_path):
    """Catches the first list of records taken, whatever it holds: {"authors": [...], "stories":
    [{"text": ...}]} was told to convert its authors."""
    path = write(tmp_path / "o.json", json.dumps({"authors": [{"name": "Ann", "bio": "A long one."}],
                                                 "stories": [{"text": d} for d in docs(3)]}))
    with pytest.raises(DataError, match=r"the records in its 'stories' list, .*\(jq -c '\.stories\[\]' "):
        load([path], tmp_path)


def test_a_json_object_hint_quotes_a_key_that_is_no_jq_identifier(tmp_path):
    """Catches a key with letters outside ASCII written as .key (jq's identifiers are ASCII: the
    command failed); it is quoted, as a key with a space is."""
    path = write(tmp_path / "o.json", json.dumps({"données": [{"text": d} for d in docs(3)]}))
    with pytest.raises(DataError, match=r"in its 'données' list.*jq -c '\.\[\"donn\\u00e9es\"\]\[\]'"):
        load([path], tmp_path)


def test_a_validation_json_object_hint_names_no_text_field_option_it_does_not_read(tmp_path):
    """Catches "(or no --text_field)" in a --val_data hint: --text_field does not name the field of
    --val_data's records once --val_text_field does, so leaving it out does not read "text"."""
    path = write(tmp_path / "o.json", json.dumps({"data": [{"text": d} for d in docs(3)]}))
    with pytest.raises(DataError, match=r"^--val_data: .*o.json: is one JSON object .*\.jsonl\) and point "
                                        r"--val_data at that with --val_text_field text$"):
        sources.load_files([str(path)], "--val_data", "data", str(tmp_path / "cache"), log=print)


@pytest.mark.parametrize("name", ["d.txt", "d.parquet"])
@pytest.mark.parametrize("size", [1000, 0])
def test_a_damaged_datasets_cache_is_named_with_the_folder_to_delete(tmp_path, name, size):
    """Bug caught: an .arrow file of `datasets`' cache cut short (a full disk or a copy that stopped)
    stopped the run with "--cache_dir c: OSError: Expected to be able to read ... bytes ...; check the
    path, its permissions and --cache_dir" (a traceback where it was cut to nothing, and, for a
    parquet source, "d.parquet: cannot read it": the source blamed). It names the cache file and the
    folder to delete, which is made again from the text."""
    path = tmp_path / name
    texts = [f"{d}{' and on' * 200}" for d in docs(40)]  # (stories long enough for a cut to fall inside)
    if name.endswith(".txt"):
        write(path, official(texts))
    else:
        pq.write_table(pa.table({"text": texts}), path)
    assert load([path], tmp_path) == texts
    cache = tmp_path / "cache"
    [arrow] = cache.rglob("*.arrow")
    os.truncate(arrow, size)
    with pytest.raises(DataError) as e:
        load([path], tmp_path)
    folder = re.escape(str(cache))
    assert re.fullmatch(rf"the datasets cache in {folder} is damaged \({re.escape(str(arrow))}: "
                        rf"\w+: .+\); delete that folder \(rm -r {folder}: it is made again "
                        r"from the text\) and run again", str(e.value)), str(e.value)
    shutil.rmtree(cache)
    assert load([path], tmp_path) == texts


@pytest.mark.parametrize("damage", ["cut short", "gone"])
def test_a_damaged_datasets_cache_of_a_folder_is_named_without_the_folders_advice(tmp_path, damage):
    """Bug caught: a damaged cache of one file of a --data folder took the folder's advice for a file
    that is no text ("...; or, if that file is no training text, name the text alone"), though the
    file at fault is the cache's; and a cache .arrow file gone (deleted by hand) was "[Errno 2] Failed
    to open local file" (a .txt's traceback; a parquet's "d.parquet: cannot read it": the source blamed)."""
    folder = tmp_path / "corpus"
    texts = [f"{d}{' and on' * 200}" for d in docs(40)]
    write(folder / "a.txt", official(texts))
    pq.write_table(pa.table({"text": texts}), folder / "b.parquet")
    split = sources._local_split(str(folder), "--data", "text", tmp_path / "cache", print)
    assert len(split.load()) == 80
    cache = tmp_path / "cache" / "datasets"
    for arrow in sorted(cache.rglob("*.arrow"), key=lambda p: "parquet" not in str(p)):  # (parquet's first)
        if damage == "gone":
            arrow.unlink()
        else:
            os.truncate(arrow, 1000)
        split = sources._local_split(str(folder), "--data", "text", tmp_path / "cache", print)
        with pytest.raises(DataError) as e:
            split.load()
        named = re.escape(str(cache))
        assert re.fullmatch(rf"the datasets cache in {named} is damaged \({re.escape(str(arrow))}: .+\); "
                            rf"delete that folder \(rm -r {named}: it is made again from the text\) and "
                            "run again", str(e.value)), str(e.value)
        shutil.rmtree(cache)
        assert len(split.load()) == 80


def test_a_files_other_columns_are_left_out(tmp_path):
    """Catches a file's columns beside its text field kept: a .jsonl's ids joined the split (null in
    the rows of the .txt file read with it), a column data.py never reads."""
    txt = write(tmp_path / "a.txt", official(docs(2)))
    jsonl = write(tmp_path / "b.jsonl", "".join(json.dumps({"id": i, "story": d}) + "\n"
                                                for i, d in enumerate(docs(2, start=2))))
    ds = sources.load_files([str(txt), str(jsonl)], "--data", "story", str(tmp_path / "cache"), log=print)
    assert ds.column_names == ["text"] and [sources.document(t) for t in ds["text"]] == docs(4)


# ---------------------------------------------------------------------------------------------
# The hub


def test_a_hub_split_reads_its_text_field_as_text(tmp_path):
    """Catches a hub split's --text_field neither checked nor renamed to "text" (data.py reads "text")."""
    hub = hub_folder(tmp_path / "hub", {"train": {"id": [1, 2], "story": docs(2)}})
    ds = sources.load_hub(str(hub), "train", "story")
    assert ds.column_names == ["text"] and ds["text"] == docs(2)
    with pytest.raises(DataError, match=r"\[train\] has no column 'text' \(it has: id, story\); "
                                        r"pass --text_field"):
        sources.load_hub(str(hub), "train")


class Hub:
    """huggingface_hub.HfApi as load_hub's probe uses it: records the call, fails where told to."""
    calls, error = [], None

    def dataset_info(self, name, **kw):
        Hub.calls.append((name, kw))
        if Hub.error:
            raise Hub.error


@pytest.fixture
def online(monkeypatch):
    """load_hub as on a machine with network: the probe is a stub that records its calls."""
    import datasets
    import huggingface_hub
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    monkeypatch.setattr(Hub, "calls", [])
    return Hub


def test_the_hub_is_probed_once_with_a_timeout_and_a_failure_names_the_fix(online, monkeypatch):
    """Catches the probe without its timeout (or skipped online), and a failed probe or load online
    told as the offline failure (HF_HUB_OFFLINE is not set: that line's cause is wrong)."""
    import datasets
    monkeypatch.setattr(online, "error", ConnectionError("Name or service not known"))
    with pytest.raises(DataError, match=r"^cannot get 'a/b' from the Hugging Face Hub \(ConnectionError: "
                                        r"Name or service not known\); pass --data FILE \(and --val_data "
                                        r"FILE\) to train on local text, or set HF_HUB_OFFLINE=1 to use a "
                                        r"copy in the datasets cache$"):
        sources.load_hub("a/b", "train")
    assert online.calls == [("a/b", {"timeout": 10})]

    def fail(name, split):
        raise FileNotFoundError(f"no split {split}")
    monkeypatch.setattr(online, "error", None)
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=r"^cannot load split 'valid' of 'a/b' from the Hugging Face Hub "
                                        r"\(FileNotFoundError: no split valid\); pass --data FILE"):
        sources.load_hub("a/b", "valid")


def test_offline_the_hub_is_not_probed(tmp_path, monkeypatch):
    """Catches the probe made offline too (HF_HUB_OFFLINE=1 is there to use the datasets cache)."""
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # (a call fails)
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(2)}})
    assert sources.load_hub(str(hub), "train")["text"] == docs(2)


def test_online_a_local_hf_dataset_folder_is_read_without_the_probe(tmp_path, online, monkeypatch):
    """Bug caught: --hf_dataset FOLDER worked only with HF_HUB_OFFLINE=1: online, the hub was probed
    first, which refused the folder's path ("HFValidationError: Repo id must be in the form ...") or,
    a relative one that looks like a repo id, failed without network ("cannot get 'hub' from the
    Hugging Face Hub"), though `datasets` reads a local folder that exists without the hub."""
    monkeypatch.setattr(online, "error", ConnectionError("Name or service not known"))
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(2)}})
    monkeypatch.chdir(tmp_path)
    for name in (str(hub), "hub"):
        assert sources.load_hub(name, "train")["text"] == docs(2)
    assert online.calls == []
    with pytest.raises(DataError, match=r"^cannot get 'a/b' from the Hugging Face Hub"):
        sources.load_hub("a/b", "train")  # (no such folder: the hub is probed)
    assert online.calls == [("a/b", {"timeout": 10})]


@pytest.mark.parametrize("offline", [True, False])
def test_a_local_hf_dataset_folder_that_fails_is_named_not_the_hub(tmp_path, request, offline):
    """Bug caught: an --hf_dataset local folder without a validation split, or one save_to_disk wrote
    (which `datasets` refuses: "use load_from_disk"), was told "offline ... and not in the datasets
    cache, or that cache failed", or online "cannot load split ... from the Hugging Face Hub": the
    folder is at fault, and a save_to_disk folder is one --data reads."""
    import datasets
    hub_probe = None if offline else request.getfixturevalue("online")  # (a stub: no network)
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(2)}})
    with pytest.raises(DataError, match=rf"^--hf_dataset {re.escape(str(hub))}: cannot load split "
                                        r"'validation' of this local folder \(ValueError: Unknown .*\); "
                                        r"pass --data FILE \(and --val_data FILE\) to train on local text$"):
        sources.load_hub(str(hub), "validation")
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": docs(2)}).save_to_disk(str(saved))
    for split, flag in (("train", "--data"), ("validation", "--val_data")):
        with pytest.raises(DataError, match=rf"^--hf_dataset {re.escape(str(saved))}: cannot load split "
                                            rf"'{split}' of this local folder \(.*\); pass {flag} "
                                            rf"{re.escape(str(saved))} instead, which reads it$"):
            sources.load_hub(str(saved), split)
    assert hub_probe is None or hub_probe.calls == []


def test_a_local_hf_dataset_folder_of_txt_files_is_refused_naming_data(tmp_path):
    """Bug caught: --hf_dataset FOLDER (offline) holding train.txt in the official layout was read by
    `datasets` one line per document: 43 stories gave 180 documents, each paragraph apart and the
    <|endoftext|> lines tokenized as text. It is refused with the --data (or --val_data) that splits
    it into stories (test_a_local_hf_dataset_refusal_names_no_other_splits_text: the folder's other
    text); a folder of JSON Lines, as one of parquet, still reads a row per document."""
    hub = write(tmp_path / "hub" / "train.txt", official([d + "\n\nThe end." for d in docs(3)])).parent
    for split, flag, named in (("train", "--data", hub / "train.txt"),
                               ("validation", "--val_data", "FILE (it has no validation text)")):
        with pytest.raises(DataError) as e:
            sources.load_hub(str(hub), split)
        assert str(e.value) == (f"--hf_dataset {hub}: a local folder of .txt files, which `datasets` reads "
                                f"one line per document (a story's paragraphs apart, its {EOT} lines as "
                                f"text); pass {flag} {named} instead, which splits it into stories")
    records = tmp_path / "records"
    write(records / "train.jsonl", "".join(json.dumps({"text": d + "\n\nThe end."}) + "\n" for d in docs(3)))
    assert sources.load_hub(str(records), "train")["text"] == [d + "\n\nThe end." for d in docs(3)]


def test_a_local_hf_dataset_refusal_of_compressed_txt_files_says_to_decompress_them(tmp_path):
    """Bug caught: --hf_dataset FOLDER in the hub's layout of data/train.txt.gz (`datasets` reads it as
    .txt, a line per document) was refused with "pass --data FOLDER/data/train.txt.gz instead", which
    --data refuses in turn ("is gzip-compressed; decompress it"). The refusal now says to decompress
    it first and names the file that gives."""
    import gzip
    hub = tmp_path / "hub"
    for split in ("train", "validation"):
        write(hub / "data" / f"{split}.txt.gz", gzip.compress(official(docs(2)).encode()))
    packed = hub / "data" / "train.txt.gz"
    with pytest.raises(DataError) as e:
        sources.load_hub(str(hub), "train")
    assert str(e.value).split("; ", 1)[1] == (f"decompress it (gunzip {packed}) and pass --data "
                                              f"{hub / 'data' / 'train.txt'} instead, which splits it into "
                                              "stories")
    write(hub / "data" / "train-2.txt.gz", gzip.compress(official(docs(2)).encode()))
    with pytest.raises(DataError) as e:  # (several: a command to paste, not "gunzip a.txt.gz, ...")
        sources.load_hub(str(hub), "train")
    assert f"decompress them (gunzip {hub / 'data' / 'train-2.txt.gz'} {packed}) and pass" in str(e.value) \
        or f"decompress them (gunzip {packed} {hub / 'data' / 'train-2.txt.gz'}) and pass" in str(e.value)


def test_a_local_hf_dataset_refusal_names_no_other_splits_text(tmp_path):
    """Bug caught: the --data or --val_data that the refusal of a local --hf_dataset folder of .txt files
    named was the whole folder wherever the split had no single file: --data FOLDER of train-1.txt,
    train-2.txt and valid.txt (training on the validation text), --val_data FOLDER of a.txt alone (or of
    train.txt alone: scoring the training text). The folder is named only where all its text is the
    split's; other splits' text is named as such, and a split of no file asks for one."""
    def said(files, split):
        folder = tmp_path / f"hub{len(list(tmp_path.iterdir()))}"
        for name in files:
            write(folder / name, official(docs(2)))
        with pytest.raises(DataError) as e:
            sources.load_hub(str(folder), split)
        return str(e.value).split("; ", 1)[1], folder
    for files, split, flag, named in (
            (["train.txt"], "validation", "--val_data", "FILE (it has no validation text)"),
            (["a.txt", "b.txt"], "validation", "--val_data", "FILE (it has no validation text)"),
            (["a.txt", "b.txt"], "train", "--data", "{folder}"),
            (["train-1.txt", "train-2.txt", "valid.txt"], "train", "--data",
             "with a folder or glob of its train files alone ({folder}/train-1.txt, ...)")):
        advice, folder = said(files, split)
        named = named.format(folder=folder)
        assert advice == f"pass {flag} {named} instead, which splits it into stories", advice


def test_a_hub_split_is_loaded_once_and_keyed_by_its_files(tmp_path, monkeypatch):
    """Catches a hub split loaded again for each signature and documents() call (each a load through
    `datasets`), and its signature without the files the split was read from (a new revision of the
    same size hit the old shards)."""
    calls, real = [], sources.load_hub
    monkeypatch.setattr(sources, "load_hub", lambda *a: calls.append(a) or real(*a))
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(4)}, "validation": {"text": docs(2)}})
    train, _ = sources.resolve_sources(targs(tmp_path, hf_dataset=str(hub)), log=lambda line: None)
    files = train.signature["source"]["files"]
    assert train.signature["source"]["files"] == files and train.documents()["text"] == docs(4)
    assert calls == [(str(hub), "train", "text", sources.TRAIN_LOCALLY)]
    assert files == [f["filename"] for f in train.documents().cache_files] and all(map(os.path.isfile, files))


# ---------------------------------------------------------------------------------------------
# resolve_sources: the splits a run asks for, and their signatures


def targs(tmp_path, **kw):
    return TrainArgs(cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "out"), **kw)


def test_hub_splits_are_train_and_validation_keyed_by_split(tmp_path):
    """Catches the hub's validation split misnamed, and a hub split's signature without its split
    name (the two splits' shards were told apart by their files alone)."""
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(4)}, "validation": {"text": docs(2, start=4)}})
    logs = []
    train, val = sources.resolve_sources(targs(tmp_path, hf_dataset=str(hub)), logs.append)
    assert logs == [f"data: train: {hub} [train] (a local folder); validation: {hub} [validation] "
                    "(a local folder)"]
    assert train.documents()["text"] == docs(4) and val.documents()["text"] == docs(2, start=4)
    signatures = [s.signature["source"] for s in (train, val)]
    assert [s["split"] for s in signatures] == ["train", "validation"]
    assert [s["rows"] for s in signatures] == [4, 2]
    assert {k: v for k, v in signatures[0].items() if k not in ("split", "rows", "files")} == {
        k: v for k, v in signatures[1].items() if k not in ("split", "rows", "files")}


def test_a_local_hf_dataset_folder_is_keyed_by_its_absolute_path_and_logged_as_a_folder(tmp_path,
                                                                                        monkeypatch):
    """Bug caught: a local --hf_dataset folder was logged "hub [train] (Hugging Face Hub)", and keyed
    the caches by the name as typed: `hub` and its absolute path (as a run now saves it: a resume)
    tokenized the same text twice. A hub name keys them as it is."""
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(4)}, "validation": {"text": docs(2)}})
    monkeypatch.chdir(tmp_path)
    logs, splits = [], {}
    for name in ("hub", str(hub)):
        splits[name] = sources.resolve_sources(targs(tmp_path, hf_dataset=name), logs.append)
    assert logs[0] == ("data: train: hub [train] (a local folder); validation: hub [validation] "
                       "(a local folder)")
    assert [s.signature for s in splits["hub"]] == [s.signature for s in splits[str(hub)]]
    assert splits["hub"][0].signature["source"]["hub"] == str(hub)
    assert sources.saved_hf_dataset("roneneldan/TinyStories") == "roneneldan/TinyStories"


def test_a_folder_of_training_and_validation_files_is_warned_of(tmp_path):
    """Bug caught: --data on a TinyStories download (TinyStories-train.txt beside
    TinyStories-valid.txt) or on a folder in the hub's layout (data/train-*.parquet beside
    data/validation-*.parquet) trained on the validation text without a word; a --val_data folder
    holding training files beside its validation ones validated on the training text."""
    ts = tmp_path / "ts"
    write(ts / "TinyStories-train.txt", official(docs(4)))
    write(ts / "TinyStories-valid.txt", official(docs(2, start=4)))
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(4)}, "validation": {"text": docs(2, start=4)}})
    for folder, held, train in ((ts, "TinyStories-valid.txt", "TinyStories-train.txt"),
                                (hub, "data/validation-0.parquet", "data/train-0.parquet")):
        logs = []
        sources.resolve_sources(targs(tmp_path, data=str(folder)), logs.append)
        assert logs[1:] == [f"data: warning: --data {folder} holds files named as a validation or test split "
                            f"({folder / held}) beside training ones ({folder / train}), and the run trains "
                            "on both; point --data at the training files alone (a folder or quoted glob of "
                            "them), --val_data at the others"]
    other = write(tmp_path / "corpus" / "stories.txt", official(docs(4, start=9)))
    logs = []
    sources.resolve_sources(targs(tmp_path, data=str(other), val_data=str(ts)), logs.append)
    assert logs[1:] == [f"data: warning: --val_data {ts} holds files named as a training split "
                        f"({ts / 'TinyStories-train.txt'}) beside validation or test ones "
                        f"({ts / 'TinyStories-valid.txt'}), and the run validates on both; point --val_data "
                        "at the validation files alone"]
    _, val = sources.resolve_sources(targs(tmp_path, val_data=str(ts)), logs.append, need_train=False)
    assert logs[-1] == logs[1]


def test_files_named_as_one_split_get_no_split_warning(tmp_path):
    """A folder whose names name one split (or none: a word inside a word is no split's name) gets no
    split warning."""
    write(tmp_path / "a" / "train-0.txt", official(docs(2)))
    write(tmp_path / "a" / "train-1.txt", official(docs(2, start=2)))
    write(tmp_path / "a" / "retrained-evaluated.txt", official(docs(2, start=4)))
    logs = []
    sources.resolve_sources(targs(tmp_path, data=str(tmp_path / "a"), val_fraction=0.5), logs.append)
    assert not [line for line in logs if "warning" in line]
    assert sources.split_named([str(tmp_path / "x" / "test.txt")]) == ([], [])  # (one file: no split)


def hub_download(path):
    """A whole hub download of roneneldan/TinyStories in small: each split as .txt files (V1 and V2)
    and as data/*.parquet, the stories in a .tar.gz too, a README."""
    write(path / "TinyStories-train.txt", official(docs(4)))
    write(path / "TinyStories-valid.txt", official(docs(2, start=4)))
    write(path / "TinyStoriesV2-GPT4-train.txt", official(docs(3, start=1)))
    write(path / "TinyStoriesV2-GPT4-valid.txt", official(docs(2, start=4)))
    write(path / "TinyStories_all_data.tar.gz", b"\x1f\x8b")
    write(path / "README.md", "---\nlicense: cdla-sharing-1.0\n---\n")
    return hub_folder(path, {"train": {"text": docs(4)}, "validation": {"text": docs(2, start=4)}})


def test_a_folder_holding_a_split_in_several_formats_is_refused(tmp_path):
    """Bug caught: --data on a whole hub download (TinyStories-train.txt beside
    data/train-*.parquet: the same stories twice, TinyStoriesV2-GPT4-train.txt a third time) trained
    on every copy, with a warning about its validation files alone; a --val_data folder holding its
    split as .txt and .parquet validated on both."""
    snap = hub_download(tmp_path / "TinyStories")
    fix = f"a file ({snap / 'TinyStories-train.txt'}) or a quoted glob of one format's files"
    for spec in (str(snap), f"{snap}/**"):
        with pytest.raises(DataError) as e:
            sources.resolve_files(spec, "--data")
        assert str(e.value) == (
            f"--data: '{spec}' holds the training split in 2 formats ({snap / 'TinyStories-train.txt'}, ...; "
            f"{snap / 'data' / 'train-0.parquet'}), as a dataset's download holds the same text in each, and "
            f"the run would train on every copy; point --data at one copy: {fix}")
        with pytest.raises(DataError):
            sources.resolve_sources(targs(tmp_path, data=spec), log=lambda line: None)
    valid = tmp_path / "valid"
    write(valid / "valid.txt", official(docs(2, start=4)))
    pq.write_table(pa.table({"text": docs(2, start=4)}), valid / "validation.parquet")
    with pytest.raises(DataError) as e:
        train = str(snap / "TinyStories-train.txt")
        sources.resolve_sources(targs(tmp_path, data=train, val_data=str(valid)), log=lambda line: None)
    assert str(e.value).startswith(f"--val_data: '{valid}' holds the validation or test split in 2 formats")
    assert "the run would validate on every copy; point --val_data at one copy: a file" in str(e.value)


def test_one_format_of_a_download_or_formats_named_as_no_split_are_read(tmp_path):
    """A glob of one format's files of a download, a split in one format beside another split in
    another, and a folder whose formats name no split, are read (the split warning apart)."""
    snap = hub_download(tmp_path / "TinyStories")
    assert len(sources.resolve_files(f"{snap}/*.txt", "--data")) == 4
    assert len(sources.resolve_files(f"{snap}/data", "--data")) == 2
    write(tmp_path / "mixed" / "train.txt", official(docs(2)))
    pq.write_table(pa.table({"text": docs(2, start=4)}), tmp_path / "mixed" / "valid.parquet")
    write(tmp_path / "mixed" / "extra.jsonl", json.dumps({"text": "x"}) + "\n")
    write(tmp_path / "mixed" / "empty-train.jsonl", "")  # (left out by with_text: no copy)
    assert len(sources.resolve_files(str(tmp_path / "mixed"), "--data")) == 4


def test_a_data_folder_whose_validation_file_val_data_names_gets_the_split_warning_too(tmp_path):
    """Bug caught: --data ts/ (TinyStories-train.txt beside TinyStories-valid.txt) with --val_data
    ts/TinyStories-valid.txt got the overlap warning alone, whose fix (other --val_data, or none)
    keeps training on the validation file; the split warning, which names the fix (--data at the
    training files alone), was left out."""
    ts = tmp_path / "ts"
    write(ts / "TinyStories-train.txt", official(docs(4)))
    valid = write(ts / "TinyStories-valid.txt", official(docs(2, start=4)))
    logs = []
    sources.resolve_sources(targs(tmp_path, data=str(ts), val_data=str(valid)), logs.append)
    warnings = [line for line in logs if "warning" in line]
    assert len(warnings) == 2 and warnings[0].startswith("warning: --val_data and --data share 1 file")
    assert warnings[1].startswith(f"data: warning: --data {ts} holds files named as a validation or test")


def test_a_local_hf_dataset_folder_is_never_called_the_hub_in_a_warning_or_refusal(tmp_path):
    """Bug caught: with --hf_dataset a local folder, --val_fraction warned "the hub's validation split
    is the validation text", and --val_text_field without --val_data was refused saying "the hub's
    validation split ... use --text_field": the folder's split, read without the hub."""
    from errors import ConfigError
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(4)}, "validation": {"text": docs(2)}})
    assert sources.local_hf_dataset(str(hub)) and not sources.local_hf_dataset("roneneldan/TinyStories")
    assert sources.source_warnings(targs(tmp_path, hf_dataset=str(hub)), {"val_fraction"}) == [
        f"--val_fraction has no effect: the validation split of the local folder {hub} is the validation "
        "text (it holds out part of --data only when no --val_data is given)"]
    assert "the hub's validation split" in sources.source_warnings(targs(tmp_path), {"val_fraction"})[0]
    with pytest.raises(ConfigError) as e:
        targs(tmp_path, hf_dataset=str(hub), val_text_field="story")
    assert "hub" not in str(e.value).replace(str(hub), "FOLDER")
    assert "(--hf_dataset's validation split and a held-out slice use --text_field)" in str(e.value)


def test_a_local_hub_folder_draws_no_progress_bars_into_a_log(tmp_path, capfd):
    """Bug caught: --hf_dataset FOLDER (the hub's layout) with its log sent to a file printed
    `datasets`' "Generating train split: 0 examples [00:00, ...]" bars into it, where local files
    (and the tokenization bar) print none unless standard error is a terminal."""
    import datasets
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(4)}, "validation": {"text": docs(2, start=4)}})
    was = datasets.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    try:
        assert sources.load_hub(str(hub), "train")["text"] == docs(4)
    finally:
        (datasets.enable_progress_bars if was else datasets.disable_progress_bars)()
    assert "Generating" not in capfd.readouterr().err


def test_hub_training_text_with_a_validation_file_reads_nothing_yet(tmp_path, monkeypatch):
    """Catches warn_overlap asked of a hub training split (it has no files: it had to be loaded,
    and its source is a function), and the --val_data file then read through the hub."""
    monkeypatch.setattr(sources, "load_hub", lambda *a: pytest.fail("the hub was read"))
    val = write(tmp_path / "v.txt", official(docs(2)))
    train, split = sources.resolve_sources(targs(tmp_path, val_data=str(val)), log=lambda line: None)
    assert callable(train.source) and train.label == "roneneldan/TinyStories [train] (Hugging Face Hub)"
    assert split.source["files"][0][0] == str(val)


def test_evaluating_without_a_validation_file_holds_out_the_same_slice(tmp_path):
    """Catches need_train=False taken to mean a --val_data is there: evaluating a run that held out
    1 in k of --data (no --val_data) failed on a --val_data of ''."""
    data = write(tmp_path / "d.txt", official(docs(6)))
    args = targs(tmp_path, data=str(data), val_fraction=0.5)
    _, held = sources.resolve_sources(args, log=lambda line: None)
    _, alone = sources.resolve_sources(args, log=lambda line: None, need_train=False)
    assert alone.signature == held.signature and (alone.keep, alone.every) == ("val", 2)
    assert alone.documents()["text"] == [d + "\n" for d in docs(6)[1::2]]


def test_evaluating_on_the_hubs_validation_split_names_no_training_split(tmp_path):
    """Bug caught: --eval_only of a run that trained on the hub (no --data, no --val_data) logged
    "data: train: roneneldan/TinyStories [train] (Hugging Face Hub); validation: ..." though the
    evaluation never reads the training split."""
    logs = []
    train, val = sources.resolve_sources(targs(tmp_path), logs.append, need_train=False)
    assert train is None and val.label == "roneneldan/TinyStories [validation] (Hugging Face Hub)"
    assert logs == ["data: validation: roneneldan/TinyStories [validation] (Hugging Face Hub)"]


def test_a_text_field_that_names_the_validation_records_field_is_not_said_to_do_nothing(tmp_path):
    """Bug caught: --data t.txt --val_data v.jsonl --text_field story warned "--text_field has no
    effect: --data t.txt is plain text", though it names the field v.jsonl's records are read by (no
    --val_text_field): taking the warning at its word and dropping it broke the run."""
    plain = ["--text_field has no effect: --data t.txt is plain text (it names the text field of .jsonl, "
             ".json, .parquet and .arrow records)"]
    for val_data, val_field, expected in [("v.jsonl", "", []), ("v.txt", "", plain), ("", "", plain),
                                          ("v.jsonl", "story", plain), ("corpus", "", [])]:
        args = targs(tmp_path, data="t.txt", val_data=val_data, text_field="story", val_text_field=val_field)
        assert sources.source_warnings(args, {"text_field"}) == expected, (val_data, val_field)


def test_a_local_signature_holds_each_files_absolute_path_size_and_mtime(tmp_path, monkeypatch):
    """Catches a file's modification time left out of the cache key (text edited to the same size
    hit the old shards), and a relative path kept (another folder's file of the same name, size and
    time hit them)."""
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "d.txt", official(docs(4)))
    args = targs(tmp_path, data="d.txt", val_data="d.txt")
    train, _ = sources.resolve_sources(args, log=lambda line: None)
    st = os.stat(path)
    source = {"files": [[str(path), st.st_size, st.st_mtime_ns]], "text_field": "text",
              "documents": sources.DOCUMENT_RULES}
    assert train.signature == {"source": source, "keep": "all", "every": 0}
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert sources.resolve_sources(args, log=lambda line: None)[0].signature != train.signature


def test_both_sides_of_a_held_out_slice_are_keyed_by_their_slice_and_counting(tmp_path):
    """Catches the counting rules (HELD_OUT_RULES) or the 1 in k left out of the training side's key:
    its shards were reused across a change of either."""
    path = write(tmp_path / "d.txt", official(docs(4)))
    args = targs(tmp_path, data=str(path), val_fraction=0.25)
    train, val = sources.resolve_sources(args, log=lambda line: None)
    for split, keep in ((train, "train"), (val, "val")):
        assert {k: v for k, v in split.signature.items() if k != "source"} == {
            "keep": keep, "every": 4, "counting": sources.HELD_OUT_RULES}


def test_holding_out_from_one_document_names_no_val_fraction():
    """Catches the fix "raise --val_fraction to 1" for a single document (1 in 1 would leave no
    training text: --val_data is the only way); two documents name 0.5."""
    import datasets
    for n, fix in ((1, "pass --val_data$"), (2, r"pass --val_data or raise --val_fraction to 0.5 or more$")):
        ds = datasets.Dataset.from_dict({"text": docs(n)})
        with pytest.raises(DataError, match=rf"holding out 1 in 3 of its {sources.plural(n, 'document')} "
                                            rf"leaves none for validation; {fix}"):
            sources.Split("x", {}, lambda ds=ds: ds, "val", 3).documents()


def test_a_hub_split_with_a_text_field_is_keyed_by_it_and_the_document_rules(tmp_path):
    """Catches the hub's validation split read by "text" rather than --text_field, and a hub split's
    signature without its text field or the document rules (a change of either reused its shards)."""
    hub = hub_folder(tmp_path / "hub", {"train": {"story": docs(4)},
                                        "validation": {"story": docs(2, start=4)}})
    train, val = sources.resolve_sources(targs(tmp_path, hf_dataset=str(hub), text_field="story"),
                                         log=lambda line: None)
    assert val.documents()["text"] == docs(2, start=4)
    for split, name, rows in ((train, "train", 4), (val, "validation", 2)):
        assert {k: v for k, v in split.signature["source"].items() if k != "files"} == {
            "hub": str(hub), "split": name, "text_field": "story", "rows": rows,
            "documents": sources.DOCUMENT_RULES}


def test_the_log_names_each_split_with_its_file_count_and_size(tmp_path):
    """Catches "1 files" in a split's log line, its size taken from the first file alone, and the
    validation split left out of the log when evaluating (need_train=False)."""
    folder = tmp_path / "corpus"
    a, b = write(folder / "a.txt", "a" * 599 + "\n"), write(folder / "b.txt", "b" * 699 + "\n")
    val = write(tmp_path / "v.txt", "v" * 99 + "\n")
    logs = []
    sources.resolve_sources(targs(tmp_path, data=str(a), val_fraction=0.5), logs.append)
    sources.resolve_sources(targs(tmp_path, data=str(folder), val_data=str(val)), logs.append)
    sources.resolve_sources(targs(tmp_path, data=str(b), val_data=str(val)), logs.append, need_train=False)
    assert logs == [f"data: train: --data {a} (1 file, 600 B); validation: 1 in 2 documents of --data, held "
                    "out (no --val_data; --val_fraction 0.5, evenly spread)",
                    f"data: train: --data {folder} (2 files, 1.3 KB); validation: --val_data {val} (1 file, "
                    "100 B)",
                    f"data: validation: --val_data {val} (1 file, 100 B)"]


def test_both_sides_of_a_held_out_slice_read_the_files_once(tmp_path, monkeypatch):
    """Catches a local split's load not kept (the training side, the held-out side and each call
    read, scanned and logged the files again), and `datasets`' files of it written among the
    run's caches rather than in --cache_dir/datasets."""
    calls, real = [], sources.load_files
    monkeypatch.setattr(sources, "load_files", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    path = write(tmp_path / "d.txt", official(docs(4)))
    train, val = sources.resolve_sources(targs(tmp_path, data=str(path), val_fraction=0.5),
                                         log=lambda line: None)
    assert calls == []  # (nothing read yet)
    assert val.documents()["text"] == [d + "\n" for d in docs(4)[1::2]]
    assert train.documents()["text"] == [d + "\n" for d in docs(4)[0::2]]
    val.documents()
    assert calls == [[str(path)]] and os.listdir(tmp_path / "cache") == ["datasets"]


def test_evaluating_reads_the_validation_file_by_its_own_text_field(tmp_path):
    """Catches need_train=False resolving --val_data as --data: its --val_text_field was not read,
    and the split's key was not the one training gave it (its shards were not found)."""
    train = write(tmp_path / "t.txt", official(docs(4)))
    val = write(tmp_path / "v.jsonl", "".join(json.dumps({"story": d}) + "\n" for d in docs(2, start=4)))
    args = targs(tmp_path, data=str(train), val_data=str(val), val_text_field="story")
    _, held = sources.resolve_sources(args, log=lambda line: None)
    none, alone = sources.resolve_sources(args, log=lambda line: None, need_train=False)
    assert none is None and alone.signature == held.signature and alone.label == held.label
    assert alone.documents()["text"] == docs(2, start=4)


def test_evaluating_on_the_runs_own_training_text_says_it_is_not_held_out(tmp_path):
    """Bug caught: --eval_only --val_data on a file of the run's --data (its folder named, or the file
    itself) scored the text the run trained on as validation text without a word, where training on
    the same pair warns; a --data that is gone is passed over."""
    corpus = tmp_path / "corpus"
    story = write(corpus / "a.txt", official(docs(4)))
    for data in (str(corpus), str(story)):
        logs = []
        none, val = sources.resolve_sources(targs(tmp_path, data=data, val_data=str(story)), logs.append,
                                            need_train=False)
        assert none is None and val.label.startswith(f"--val_data {story}")
        assert logs[1].startswith(f"warning: --val_data and --data share 1 file ({story}): the validation "
                                  "loss is not held out"), data
    logs = []
    sources.resolve_sources(targs(tmp_path, data=str(tmp_path / "gone"), val_data=str(story)), logs.append,
                            need_train=False)
    assert logs == [f"data: validation: {val.label}"]


def test_evaluating_beside_a_training_text_that_cannot_be_listed_says_nothing_of_it(tmp_path, monkeypatch):
    """Catches the overlap check of --eval_only (which reads --data's files only to warn) ending in a
    traceback where --data cannot be listed (a folder without read permission: PermissionError)."""
    story = write(tmp_path / "v.txt", official(docs(2)))
    real = sources.resolve_files

    def unreadable(spec, flag, skip=(), log=None):
        if flag == "--data":
            raise PermissionError(13, "Permission denied", spec)
        return real(spec, flag, skip, log)
    monkeypatch.setattr(sources, "resolve_files", unreadable)
    logs = []
    none, val = sources.resolve_sources(targs(tmp_path, data=str(tmp_path / "locked"), val_data=str(story)),
                                        logs.append, need_train=False)
    assert none is None and logs == [f"data: validation: {val.label}"]


def test_a_folder_whose_stray_file_fails_also_says_to_name_the_text_alone(tmp_path):
    """Catches a folder's unreadable file (--data . in a project: a tokenizer.json) advised only to
    be converted into records to train on: it says too that the folder reads every such file, and
    how many; a file named alone is not told so."""
    folder = tmp_path / "project"
    write(folder / "stories.txt", official(docs(3)))
    tokens = {"added_tokens": [{"id": 0, "content": "x"}]}
    bad = write(folder / "cache" / "tokenizer.json", json.dumps(tokens))
    val = str(folder / "stories.txt")
    train, _ = sources.resolve_sources(targs(tmp_path, data=str(folder), val_data=val), log=lambda line: None)
    with pytest.raises(DataError) as e:
        train.load()
    assert "jq -c '.added_tokens[]'" in str(e.value) and str(e.value).endswith(
        f"; or, if that file is no training text, name the text alone (--data {folder} reads every "
        f"{sources.FORMATS} file in it: 2)")
    spec = f"{folder}/**"
    glob, _ = sources.resolve_sources(targs(tmp_path, data=spec, val_data=val), log=lambda line: None)
    with pytest.raises(DataError) as e:
        glob.load()
    assert str(e.value).endswith(f"(--data '{spec}' reads every {sources.FORMATS} file it matches: 2)")
    alone, _ = sources.resolve_sources(targs(tmp_path, data=str(bad), val_data=val), log=lambda line: None)
    with pytest.raises(DataError) as e:
        alone.load()
    assert "name the text alone" not in str(e.value)


def test_a_val_data_folder_whose_stray_file_fails_says_validation_text(tmp_path):
    """Bug caught: a --val_data folder whose stray file could not be read was told "or, if that file is
    no training text, name the text alone (--val_data ...)": it is the validation text."""
    folder = tmp_path / "valid"
    write(folder / "stories.txt", official(docs(3)))
    write(folder / "notes.json", json.dumps({"added_tokens": [{"id": 0, "content": "x"}]}))
    _, val = sources.resolve_sources(targs(tmp_path, data=str(folder / "stories.txt"), val_data=str(folder)),
                                     log=lambda line: None)
    with pytest.raises(DataError) as e:
        val.load()
    assert str(e.value).startswith("--val_data: ") and str(e.value).endswith(
        f"; or, if that file is no validation text, name the text alone (--val_data {folder} reads every "
        f"{sources.FORMATS} file in it: 2)")


def test_a_quoted_tilde_in_data_is_the_home_folder(tmp_path, monkeypatch):
    """Bug caught: --data '~/x.txt' (quoted, or a quoted glob '~/corpus/*.txt': the shell leaves the
    ~) said "no such file '~/x.txt'"; now ~ is the home folder, in the path the run saves too
    (runplan.absolute: a resume from elsewhere reads the same file), and a folder named ~ in the
    working directory is still read as typed."""
    import runplan
    home = tmp_path / "home"
    story = write(home / "corpus" / "x.txt", official(docs(2)))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert sources.resolve_files("~/corpus/x.txt", "--data") == [str(story)]
    assert sources.resolve_files("~/corpus/*.txt", "--val_data") == [str(story)]
    assert sources.resolve_files("~/corpus", "--data") == [str(story)]
    assert runplan.absolute("~/corpus/x.txt") == str(story)
    split = sources._local_split("~/corpus", "--data", "text", tmp_path / "cache", print)
    assert split.label.startswith(f"--data {home / 'corpus'} (1 file")
    write(tmp_path / "~" / "corpus" / "x.txt", official(docs(1)))  # (a folder so named: as typed)
    assert sources.resolve_files("~/corpus/x.txt", "--data") == ["~/corpus/x.txt"]


def test_a_missing_file_in_a_folder_named_with_a_space_is_no_list(tmp_path, monkeypatch):
    """Bug caught: --data 'my corpus/x.txt', a file missing from the folder 'my corpus', was called a
    list of sources ("but my and corpus/x.txt each exist: --data takes one file, folder or glob, not a
    list") where a folder 'my' and a file 'corpus/x.txt' happened to be there."""
    for name in ("my corpus/a.txt", "corpus/x.txt", "my/b.txt", "my, corpus/a.txt"):
        write(tmp_path / name, official(docs(1)))
    monkeypatch.chdir(tmp_path)
    for spec in ("my corpus/x.txt", "my, corpus/x.txt", str(tmp_path / "my corpus" / "x.txt")):
        with pytest.raises(DataError, match=rf"^--data: no such file '{re.escape(spec)}'; check the path$"):
            sources.resolve_files(spec, "--data")
    with pytest.raises(DataError, match="each exist: --data takes one file"):  # (a list still is one)
        sources.resolve_files("my/b.txt corpus/x.txt", "--data")


def test_a_list_of_sources_in_data_says_it_takes_one(tmp_path, monkeypatch):
    """Bug caught: --data 'a.txt,b.txt' or 'a.txt b.txt' (or two globs) said "no such file", where each
    part is there on its own; now the line says --data takes one file, folder or glob. A part that is
    not there keeps the plain "no such file"."""
    for name in ("a.txt", "b.txt", "c/d.txt"):
        write(tmp_path / name, official(docs(1)))
    monkeypatch.chdir(tmp_path)
    tail = ("each exist: --data takes one file, folder or glob, not a list; put the files in one folder and "
            "pass that, or a quoted glob that matches them (--data 'corpus/*.txt')")
    for spec, head in [("a.txt,b.txt", "no such file 'a.txt,b.txt', but a.txt and b.txt "),
                       ("a.txt b.txt", "no such file 'a.txt b.txt', but a.txt and b.txt "),
                       ("a.txt, b.txt,c", "no such file 'a.txt, b.txt,c', but a.txt, b.txt and 1 more "),
                       ("*.txt,c/*.txt", "no files match '*.txt,c/*.txt', but *.txt and c/*.txt ")]:
        with pytest.raises(DataError) as e:
            sources.resolve_files(spec, "--data")
        assert str(e.value) == f"--data: {head}{tail}", spec
    with pytest.raises(DataError, match=r"^--val_data: no such file 'a.txt,nope.txt'; check the path$"):
        sources.resolve_files("a.txt,nope.txt", "--val_data")


def test_a_folder_of_text_with_a_stale_run_lock_names_the_lock_to_delete(tmp_path):
    """Bug caught: a folder of text holding a tokenizer.json or train.json of the user's, beside a run.lock
    that a run stopped early there left (an older version left it whenever it failed early; today a run
    killed does), was refused as "a run folder of this project's (tokenizer.json, run.lock: ...); point
    --data at the text instead": the text it named, with no way out. The fix names the run.lock to delete;
    a run folder of no text, or one whose run.lock a live process holds (review: advised deleting a
    live run's lock), is told no such thing."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in (("a.txt", "Once.\n"), ("b.txt", "Twice.\n"), ("tokenizer.json", "{}"),
                       ("run.lock", "pid 1 on old since 2026-11-01\n")):
        (corpus / name).write_text(text)
    with pytest.raises(DataError) as e:
        sources.resolve_files(str(corpus), "--data")
    assert str(e.value) == (
        f"--data: '{corpus}' is a run folder of this project's (tokenizer.json, run.lock: files train.py "
        "wrote, not text); point --data at the text instead, or, if a.txt and 1 more and tokenizer.json are "
        f"yours, delete {corpus / 'run.lock'}, left by a run that stopped there (or by an older version)")
    held = sources.storage.lock(corpus / "run.lock")  # a live train.py's: no advice to delete its lock
    try:
        with pytest.raises(DataError, match=r"point --data at the text instead$"):
            sources.resolve_files(str(corpus), "--data")
    finally:
        held.close()
    for name in ("a.txt", "b.txt"):
        (corpus / name).unlink()
    with pytest.raises(DataError, match=r"point --data at the text instead$"):  # (a run's: no text in it)
        sources.resolve_files(str(corpus), "--data")


def test_a_local_hf_dataset_folder_edited_under_its_old_time_is_read_again(tmp_path):
    """Bug caught: --hf_dataset FOLDER whose data/train-0.parquet was replaced by other text of another
    size under the old modification time (as `cp -p`, `rsync -t` or `tar x` leave it) read the old
    rows from `datasets`' cache, which keys a local file by its time alone: training on text no longer
    there, without a word. A folder's split is keyed by each file's path, size and time, as --data's."""
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(4)}, "validation": {"text": docs(2)}})
    assert sources.load_hub(str(hub), "train")["text"] == docs(4)
    path = hub / "data" / "train-0.parquet"
    st = path.stat()
    pq.write_table(pa.table({"text": docs(5, start=10)}), path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size != st.st_size
    assert sources.load_hub(str(hub), "train")["text"] == docs(5, start=10)


def test_a_local_hf_dataset_folder_with_an_empty_file_names_that_file(tmp_path, capfd):
    """Bug caught: --hf_dataset FOLDER whose data/validation-0.parquet has no rows stopped the train
    split with "cannot load split 'train' of this local folder (DatasetGenerationError: An error occurred
    while generating the dataset)" after a second line `datasets` logged ("Failed to read file ...
    BatchSize must be greater than 0"): neither named the empty file as the fault, and the training
    split was read from every split's files."""
    none = pa.array([], pa.string())
    hub = hub_folder(tmp_path / "hub", {"train": {"text": docs(4)}, "validation": {"text": none}})
    empty = hub / "data" / "validation-0.parquet"
    assert sources.load_hub(str(hub), "train")["text"] == docs(4)  # (its own files alone)
    with pytest.raises(DataError) as e:
        sources.load_hub(str(hub), "validation")
    assert str(e.value) == f"--hf_dataset {hub}: {empty} has no rows; remove it or point --hf_dataset at text"
    assert capfd.readouterr().err == ""


def test_an_hf_dataset_path_that_is_no_folder_is_told_so_not_sent_to_the_hub(tmp_path, online):
    """Bug caught: --hf_dataset /data/stories or ./stories (a folder path mistyped, or not there yet)
    was asked of the hub, and told "cannot get '/data/stories' from the Hugging Face Hub
    (HFValidationError: Repo id must be in the form 'repo_name' ...); ... or set HF_HUB_OFFLINE=1",
    a fix that cannot help. A quoted '~/hub' (--hf_dataset=~/hub) was not the home folder, as in the
    other path options."""
    for name in (str(tmp_path / "nope"), "./nope", "../nope", "~/nope-g-test"):
        with pytest.raises(DataError) as e:
            sources.load_hub(name, "train")
        assert str(e.value) == (f"--hf_dataset {name}: no such folder (a hub dataset is named as "
                                "OWNER/NAME); pass --data FILE (and --val_data FILE) to train on local text")
    (tmp_path / "x.parquet").write_bytes(b"")  # (a file: --data reads it)
    with pytest.raises(DataError, match=r"x.parquet: a file, not a folder \(a hub dataset is named as "):
        sources.load_hub(str(tmp_path / "x.parquet"), "train")
    assert online.calls == []
    home = os.path.expanduser("~")
    assert TrainArgs(hf_dataset="~/hub").hf_dataset == os.path.join(home, "hub")
    assert TrainArgs(hf_dataset="user/stories").hf_dataset == "user/stories"


def test_a_local_hf_dataset_folder_keeps_its_readme_configs_reading_settings(tmp_path):
    """Bug caught: --hf_dataset FOLDER whose README.md config reads its files with settings of its
    own (a parquet `filters`, a CSV `sep`, a JSON `field`) was read without them once each split was
    read from its own files: every row of data/train-0.parquet, the other language's too, trained on
    without a word (and a resume of a run that had read the filtered rows read the others)."""
    train = {"text": ["en one", "fr un", "en two"], "lang": ["en", "fr", "en"]}
    hub = hub_folder(tmp_path / "hub", {"train": train, "validation": {"text": ["en v", "fr v"],
                                                                       "lang": ["en", "fr"]}})
    (hub / "README.md").write_text("---\nconfigs:\n- config_name: default\n  filters:\n  - [lang, '==', en]\n"
                                   "  data_files:\n  - split: train\n    path: data/train-*\n"
                                   "  - split: validation\n    path: data/validation-*\n---\n")
    assert sources.load_hub(str(hub), "train")["text"] == ["en one", "en two"]
    assert sources.load_hub(str(hub), "validation")["text"] == ["en v"]


def test_a_hub_datasets_warnings_are_still_said(online, monkeypatch):
    """Bug caught: `datasets`' logger, silenced around a local folder's load (its failed read is
    said in our one line), was silenced for a hub name too: offline, "Using the latest cached version
    of the dataset since ... couldn't be found on the Hugging Face Hub", the one word that a run reads
    a cached copy (of a folder of that name an older version read, stale or not), was no longer said."""
    import logging

    import datasets
    said, library_log = [], logging.getLogger("datasets")

    def load_dataset(name, split):  # (whether its handler's stream is capfd's depends on its import)
        said.append(logging.getLogger("datasets.load").isEnabledFor(logging.WARNING))
        return datasets.Dataset.from_dict({"text": docs(2)})
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    before = library_log.level
    library_log.setLevel(logging.WARNING)
    try:
        assert sources.load_hub("a/b", "train")["text"] == docs(2)
        assert said == [True] and library_log.level == logging.WARNING
    finally:
        library_log.setLevel(before)


# --- what a mutation probe of sources.py found untested --------------------------------------

def test_a_file_whose_name_names_both_a_training_and_a_held_out_split_is_in_neither(tmp_path):
    """split_named sorts files by the split their names name; a name that holds words of both
    (train-vs-valid.txt, a training file in a folder named valid/) names no one split and is left out
    of both, so that it neither counts as a training copy (_one_copy) nor makes the split warning.
    Mutation caught: such a file put in the training split (any word of either kind counting)."""
    files = [str(tmp_path / n) for n in ("train-vs-valid.txt", "valid.txt", "valid/train.txt", "notes.txt")]
    assert sources.split_named(files) == ([], [str(tmp_path / "valid.txt")])


def test_the_default_relative_cache_and_out_dir_are_left_out_of_data_dot(tmp_path, monkeypatch):
    """The run's --cache_dir and --out_dir are relative by default (cache, checkpoints): `--data .` in
    the folder that holds them leaves their files out, as it does absolute ones.
    Mutation caught: the skipped folders compared unresolved: a file's resolved path is never below
    the relative "cache", and `--data .` read the cache's and the runs' .json files as text."""
    write(tmp_path / "a.txt", official(docs(2)))
    write(tmp_path / "cache" / "tokens" / "t" / "meta.json", "{}")
    write(tmp_path / "checkpoints" / "r" / "train.json", "{}")
    monkeypatch.chdir(tmp_path)
    assert sources.resolve_files(".", "--data", skip=("cache", "checkpoints")) == ["a.txt"]
    assert sources.resolve_files("*", "--data", skip=("cache", "checkpoints")) == ["a.txt"]
