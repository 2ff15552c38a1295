"""scripts/bench_data.py's own figures and its exits, with the prepare() subprocess and the tokenizer
faked (tests/test_bench.py runs it for real): what it hands the child and gets back, the documents it
tokenizes, the 1.5 memory limit, a missing --data file; and scripts/bench.py's handling of a failed
part. Each runs in well under a second."""

import json
import os
from types import SimpleNamespace

import pytest

from scripts import bench, bench_data


def fake_child(monkeypatch, small: float = 30.0, big: float = 33.0, docs: int = 10 ** 6) -> list:
    """run_child and tokenization_speeds faked: prepare() adds `small` MB to the memory its imports
    take (300 MB of RSS, 200 MB of it anonymous) on the file of `docs` documents, `big` on its copies;
    returns the (path, size in bytes, cache folder, vocab_size) each child was given, and a
    ("speed", ...) tuple for each tokenization_speeds call."""
    given = []

    def run_child(path, cache_dir, vocab_size):
        given.append((str(path), os.path.getsize(path), cache_dir.name, vocab_size))
        (cache_dir / "tokenizer-x").mkdir(parents=True)
        (cache_dir / "tokenizer-x" / "tokenizer.json").write_text("{}")
        added = small if not given[1:] else big
        return {"seconds": 1.0, "mb": 1.0, "tokens": 10, "docs": docs, "threads": 2,
                "peak_rss_mb": 300.0 + added, "baseline_rss_mb": 300.0, "peak_anon_mb": 200.0 + added,
                "baseline_anon_mb": 200.0}
    speed = {k: 1.0 for k in ("mb", "loop_s", "batched_1_thread_s", "parallel_s", "loop_mb_s",
                              "batched_1_thread_mb_s", "parallel_mb_s", "speedup_parallel_vs_loop",
                              "speedup_parallel_vs_batched_1_thread")}
    monkeypatch.setattr(bench_data, "run_child", run_child)
    monkeypatch.setattr(bench_data, "tokenization_speeds", lambda path, tokenizer_path: given.append(
        ("speed", str(path), tokenizer_path.parent.parent.name)) or {**speed, "docs": 2, "threads": 2})
    return given


def test_the_copies_are_the_file_repeated_and_speeds_are_timed_on_the_file(tmp_path, monkeypatch):
    """Catches the memory test's text holding one copy fewer than --repeat, and the tokenizer timed on
    the repeated text (not the file) or with another tokenizer than the file's."""
    text = tmp_path / "t.txt"
    text.write_text("One story.<|endoftext|>Another one.")
    given = fake_child(monkeypatch)
    result = bench_data.main(["--data", str(text), "--repeat", "3", "--vocab_size", "300",
                              "--out", str(tmp_path / "b.json")])
    size = text.stat().st_size
    assert given[0] == (str(text), size, "cache1", 300) and given[1][1:] == (3 * size, "cache10", 300)
    assert given[2] == ("speed", str(text), "cache1") and result is None
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["vocab_size"] == 300 and saved["added_anon_ratio"] == pytest.approx(1.1)
    assert saved["added_anon_ratio_ok"] is True and saved["added_rss_ratio"] == pytest.approx(1.1)


@pytest.mark.parametrize("big, ok", [(149.0, True), (150.0, False)])
def test_a_memory_ratio_of_1_5_fails(tmp_path, monkeypatch, capsys, big, ok):
    """Catches the limit taken as "1.5 or less" (the docstring: must stay under 1.5), in the exit
    status, the JSON's added_anon_ratio_ok or the table. Bug caught: the ratio was of the peaks,
    each holding the memory the imports take (here 200 MB anonymous, 300 MB RSS), which the text does
    not change: 100 MB added on the file and 150 MB on its copies read as 1.2 (450 / 400 of RSS),
    not 1.5."""
    text = tmp_path / "t.txt"
    text.write_text("One story.")
    fake_child(monkeypatch, 100.0, big)
    argv = ["--data", str(text), "--repeat", "2", "--out", str(tmp_path / "b.json")]
    if ok:
        bench_data.main(argv)
    else:
        with pytest.raises(SystemExit) as e:
            bench_data.main(argv)
        assert e.value.code == 1
    assert json.loads((tmp_path / "b.json").read_text())["added_anon_ratio_ok"] is ok
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("| anonymous memory added, x2 / x1 (must be < 1.5)"))
    assert row.split("|")[3].strip() == f"{big / 100:.2f} {'ok' if ok else 'FAIL'}"
    assert "memory added: prepare()'s peak above the figure after its imports" in "\n".join(out)


def test_the_memory_ratio_of_a_text_held_whole_is_shown_not_checked(tmp_path, monkeypatch, capsys):
    """Bug caught: bench.py --quick (train-sample.txt, 115 documents, repeated twice) failed on its
    memory ratio: a text of one round of tokenization batches is held whole, so the memory it adds
    grows with it (11 MB, 19 MB: 1.7); the limit holds for a text that streams."""
    text = tmp_path / "t.txt"
    text.write_text("One story.")
    fake_child(monkeypatch, 10.0, 20.0, docs=115)
    bench_data.main(["--data", str(text), "--repeat", "2", "--out", str(tmp_path / "b.json")])
    assert json.loads((tmp_path / "b.json").read_text())["added_anon_ratio_ok"] is None  # (not checked)
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("| anonymous memory added"))
    assert "2.00 not checked: t.txt is one round of tokenization batches (2,048 documents), held whole" in row


def test_a_missing_data_file_is_one_line_before_the_work(tmp_path, monkeypatch):
    """Catches a --data file that does not exist handed to the work (a FileNotFoundError traceback from
    the prepare() subprocess) instead of one line naming it, with nothing written."""
    monkeypatch.setattr(bench_data, "run_child", lambda *a: pytest.fail("the work started"))
    with pytest.raises(SystemExit) as e:
        bench_data.main(["--data", str(tmp_path / "nosuch.txt"), "--out", str(tmp_path / "out" / "b.json")])
    assert str(e.value.code).startswith(f"bench_data.py: error: no such file '{tmp_path / 'nosuch.txt'}'")
    assert not (tmp_path / "out").exists()


def test_tokenization_speeds_count_the_documents_and_their_utf8_bytes(tmp_path, monkeypatch):
    """Catches empty documents (a separator at the end, blank lines) counted and timed, and the MB/s
    taken of characters, not of UTF-8 bytes."""
    import data
    tok = SimpleNamespace(encode=lambda d: [len(d)], encode_docs=lambda docs, n: [[len(d)] for d in docs])
    monkeypatch.setattr(data, "Tokenizer", SimpleNamespace(load=lambda path: tok))
    monkeypatch.setattr(bench_data, "best_of", lambda n, fn: (0.5, fn()))
    text = tmp_path / "t.txt"
    text.write_text("Café au lait.\n<|endoftext|>\n\n<|endoftext|>\nTwo.\n<|endoftext|>\n", encoding="utf-8")
    speed = bench_data.tokenization_speeds(text, "tokenizer.json")
    mb = len("Café au lait.Two.".encode()) / 1e6
    assert (speed["docs"], speed["mb"], speed["loop_mb_s"]) == (2, mb, mb / 0.5)


def test_tokenization_speeds_time_the_documents_prepare_reads(tmp_path, monkeypatch):
    """Bug caught: the tokenizer was timed on the text split at <|endoftext|> only, read as strict
    UTF-8: a file of blank-line documents (valid-lower.txt's layout) was timed as one document (the
    parallel path's speed-up of nothing), and one byte that is not UTF-8, which prepare() lets
    through, was a UnicodeDecodeError traceback after the prepare() runs."""
    import data
    tok = SimpleNamespace(encode=lambda d: [len(d)], encode_docs=lambda docs, n: [[len(d)] for d in docs])
    monkeypatch.setattr(data, "Tokenizer", SimpleNamespace(load=lambda path: tok))
    monkeypatch.setattr(bench_data, "best_of", lambda n, fn: (0.5, fn()))
    text = tmp_path / "t.txt"
    text.write_bytes(b"One story." * 20 + b"\n\nTwo, caf\xe9.\n\n\nThree.\n")  # (1 byte in 1%: read)
    speed = bench_data.tokenization_speeds(text, "tokenizer.json")
    read = "One story." * 20 + "Two, caf\ufffd.Three."  # (the bad byte replaced, as prepare() reads it)
    assert (speed["docs"], speed["mb"]) == (3, len(read.encode()) / 1e6)


def test_the_child_reports_the_tokens_and_documents_of_both_splits(tmp_path, monkeypatch, capsys):
    """Catches the child's token (or document) count leaving out the validation split, or its MB not
    the file's size in 10^6 bytes."""
    import data
    splits = (None, SimpleNamespace(n_tokens=900, n_docs=99), SimpleNamespace(n_tokens=10, n_docs=1))
    monkeypatch.setattr(data, "prepare", lambda args, model, log: splits)
    text = tmp_path / "t.txt"
    text.write_bytes(b"x" * 2000)
    bench_data.child(str(text), str(tmp_path / "cache"), "300")
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (got["tokens"], got["docs"], got["mb"]) == (910, 100, 0.002)


def test_a_part_that_fails_with_status_1_stops_bench(tmp_path, monkeypatch):
    """Catches bench.py taking a part's exit status 1 (a one-line error, such as bench_data.py's memory
    limit) as success and gathering a stale or missing JSON."""
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd: bench.subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(SystemExit) as e:
        bench.run_part("data", tmp_path)
    assert str(e.value.code) == ("bench.py: error: scripts/bench_data.py failed (exit 1, its output is "
                                 "above); bench.json and bench.md are left as they were")


def test_the_decoding_table_compares_the_compiled_step_too():
    """Catches bench.md's decoding table leaving out the compiled decode step's ratios to the
    uncached loop and to transformers (the columns the README quotes)."""
    sm = {"config": {"new_tokens": 8, "prompt": 4, "preset": "debug", "repeats": 1,
                     "variants": ["cached", "compiled", "uncached", "hf"]},
          "results": {"batch1": {"tokens_per_s": {"cached": 100.0, "compiled": 300.0, "uncached": 20.0,
                                                  "hf": 10.0},
                                 "cached_over_uncached": 5.0, "cached_over_hf": 10.0,
                                 "compiled_over_uncached": 15.0, "compiled_over_hf": 30.0}}}
    lines = bench.sample_table(sm)
    assert lines[2] == ("| batch | cached tok/s | compiled tok/s | uncached tok/s | transformers tok/s | "
                        "cached / uncached | cached / transformers | compiled / uncached | "
                        "compiled / transformers |")
    assert lines[4] == "| 1 | 100 | 300 | 20 | 10 | 5.0 | 10.0 | 15.0 | 30.0 |"


@pytest.mark.parametrize("argv", [["--vocab_size", "100"], ["--data", "."], ["--data", "nosuch.txt"],
                                  ["--data", "/dev/null"]])
def test_a_bad_option_is_the_only_line_printed(tmp_path, monkeypatch, capsys, argv):
    """Catches (a bug, fixed) the line that the results are not written to img/bench_data.json printed
    before the error of a bad --vocab_size or --data: two lines for one mistake, the first beside
    the point (memory_model.py had the same, fixed before)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_data, "run_child", lambda *a: pytest.fail("the work started"))
    with pytest.raises(SystemExit) as e:
        bench_data.main(argv)
    captured = capsys.readouterr()
    said = captured.err + (e.value.code if isinstance(e.value.code, str) else "")  # (sys.exit("..."))
    assert captured.out == "" and len(said.splitlines()) == 1 and "error:" in said


def test_a_device_as_data_is_named_as_one(tmp_path, monkeypatch, capsys):
    """Bug caught: `bench_data.py --data /dev/null` said "no such file '/dev/null'" of a path that is
    there (a device, not a text file)."""
    monkeypatch.setattr(bench_data, "run_child", lambda *a: pytest.fail("the work started"))
    with pytest.raises(SystemExit) as e:
        bench_data.main(["--data", "/dev/null", "--out", str(tmp_path / "b.json")])
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(
        "error: --data /dev/null is a character device, not a file; pass a text file, such as "
        "train-lower.txt")


def test_an_empty_data_is_a_bad_setting(tmp_path, monkeypatch, capsys):
    """Bug caught: `bench_data.py --data ''` (an unset variable) said "no such file ''", exit 1, where
    the other scripts say an empty value is empty, exit 2 (a bad setting)."""
    monkeypatch.setattr(bench_data, "run_child", lambda *a: pytest.fail("the work started"))
    with pytest.raises(SystemExit) as e:
        bench_data.main(["--data", "", "--out", str(tmp_path / "b.json")])
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(
        ": error: --data is empty (an unset variable?); pass a text file, such as "
        "train-lower.txt, or leave --data out for its default")
