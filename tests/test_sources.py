"""sources.py: a mutation audit's tests (what tests/test_data.py left unpinned).

Which files a folder or a glob names, how .txt layouts are logged, where `datasets` caches local
files and when it reads them again, text columns of other Arrow types, the hub path (a local folder
in the hub's layout, and stubs for the online probe: the tests have no network), the splits
resolve_sources gives, their signatures (the cache keys) and the held-out slice's error.
"""

import json
import os

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


def test_a_txt_file_with_exactly_one_percent_of_bytes_not_utf8_is_repaired(tmp_path):
    """Catches >= for > at MAX_NON_UTF8: 1 bad byte in 100 is repaired and counted, 2 are refused."""
    logs = []
    path = write(tmp_path / "t.txt", b"a" * 98 + b"\n\xff")
    assert load([path], tmp_path, logs.append) == ["a" * 98 + "\n\ufffd"]
    assert logs == [f"data: warning: {path}: 1 byte not UTF-8, replaced by U+FFFD"]  # (it said "1 bytes")
    write(path, b"a" * 97 + b"\n\xff\xff")
    with pytest.raises(DataError, match=r"is not UTF-8 text \(2 of 100 bytes are not UTF-8\)"):
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


# ---------------------------------------------------------------------------------------------
# Tables: Arrow types, empty and odd files


def test_a_large_string_column_is_text_and_joins_other_files(tmp_path):
    """Catches large_string refused as "not text", or kept as it is (a folder of a .txt and such a
    .parquet then failed in concatenate_datasets: "features can't be aligned")."""
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"story": pa.array(docs(2), pa.large_string())}), path)
    txt = write(tmp_path / "t.txt", official(docs(2, start=2)))
    assert load([txt, path], tmp_path, text_field="story") == docs(2, start=2) + docs(2)


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
    assert logs == [f"data: train: {hub} [train] (Hugging Face Hub); validation: {hub} [validation] "
                    "(Hugging Face Hub)"]
    assert train.documents()["text"] == docs(4) and val.documents()["text"] == docs(2, start=4)
    signatures = [s.signature["source"] for s in (train, val)]
    assert [s["split"] for s in signatures] == ["train", "validation"]
    assert [s["rows"] for s in signatures] == [4, 2]
    assert {k: v for k, v in signatures[0].items() if k not in ("split", "rows", "files")} == {
        k: v for k, v in signatures[1].items() if k not in ("split", "rows", "files")}


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


def test_holding_out_from_one_document_names_no_val_fraction(tmp_path):
    """Catches the fix "raise --val_fraction to 1" for a single document (1 in 1 would leave no
    training text: --val_data is the only way); two documents name 0.5."""
    import datasets
    for n, fix in ((1, "pass --val_data$"), (2, r"pass --val_data or raise --val_fraction to 0.5 or more$")):
        ds = datasets.Dataset.from_dict({"text": docs(n)})
        with pytest.raises(DataError, match=rf"holding out 1 in 3 of its {sources.plural(n, 'document')} "
                                            rf"leaves none for validation; {fix}"):
            sources.Split("x", {}, lambda ds=ds: ds, "val", 3).documents()
