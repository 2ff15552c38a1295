"""Benchmark of data.py: BPE training + tokenization speed, and memory against corpus size.

    python scripts/bench_data.py [--data FILE] [--out FILE] [--repeat 10] [--vocab_size 4096]

Measures, on a .txt --data (../shared/data/tinystories/train-lower.txt by default; vocabulary 4096
by default, the tiny preset's; 1 in 100 documents held out for validation as prepare() does without
--val_data):
1. end to end: prepare() from a cold cache (read the text through `datasets`, train the BPE,
   tokenize both splits into shards) in a fresh subprocess: MB of text per second;
2. tokenization alone, in this process and on the same documents: a single-threaded loop
   (tokenizer.encode per document), the batched encoder on one thread, and the parallel path
   prepare() uses (num_proc threads); the speed-up of the parallel path over the loop;
3. memory: what prepare() adds to the subprocess of 1. (its peak above the figure after its imports,
   `datasets`, torch and the project's modules: some 320 MB of RSS that the text does not change) on
   the file and on the same text repeated `--repeat` times (a temporary file). The anonymous memory
   added, the process's own (sampled every 20 ms), must grow less than 1.5x, since tokenization
   streams (for a file of more documents than one round of tokenization batches: a smaller one,
   bench.py --quick's, or the default file on 6 or more CPUs, is held whole: its ratio is shown,
   not checked, and the JSON's added_anon_ratio_ok is null). The RSS added is shown beside
   it: it also counts pages of the memory-mapped files (the `datasets` arrow copy, the shards),
   which grow with the text and which the kernel can drop.
Prints a table and writes the numbers as JSON.
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import config  # noqa: E402
import storage  # noqa: E402
from errors import run_script  # noqa: E402
from tokenizer import too_small  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinystories" / "train-lower.txt"
BAD_TEXT = 3  # the prepare() subprocess's exit status for a one-line error about the text
RESULT_KEYS = ("end_to_end", "tokenization")  # in its JSON: an existing --out without them is refused


def rss_mb(field="VmRSS") -> float:
    """Resident memory from /proc/self/status: VmRSS (all), or RssAnon (not backed by a file)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(path: str, cache_dir: str, vocab_size: str) -> None:
    """Run prepare() on `path` with a cold cache; print one JSON line of timings and memory (or,
    for bad text, one error line)."""
    import datasets  # noqa: F401  (imported here so that the baseline includes every library)

    import config
    import data
    import errors

    baseline = rss_mb()
    # ru_maxrss counts file-backed pages too (the mapped arrow and token files, which the kernel
    # can drop at will); a sampler also tracks the peak of anonymous memory, the process's own.
    anon, done = [rss_mb("RssAnon")], threading.Event()

    def sample():
        while not done.wait(0.02):
            anon.append(rss_mb("RssAnon"))

    threading.Thread(target=sample, daemon=True).start()
    model = dataclasses.replace(config.preset("tiny", config.ModelArgs), vocab_size=int(vocab_size))
    args = config.TrainArgs(data=path, cache_dir=cache_dir)
    t0 = time.perf_counter()
    try:
        tok, train, val = data.prepare(args, model, log=lambda line: print(line, file=sys.stderr))
    except errors.UserError as e:
        print(e, file=sys.stderr)
        sys.exit(BAD_TEXT)
    seconds = time.perf_counter() - t0
    done.set()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({"seconds": seconds, "mb": os.path.getsize(path) / 1e6, "peak_rss_mb": peak,
                      "baseline_rss_mb": baseline, "peak_anon_mb": max(anon), "baseline_anon_mb": anon[0],
                      "tokens": train.n_tokens + val.n_tokens,
                      "docs": train.n_docs + val.n_docs, "threads": data.tokenizer_threads(args.num_proc)}))


def added_mb(r: dict, kind: str) -> float:
    """MB that prepare() added to the child's peak `kind` memory ("rss" or "anon") over the figure after
    its imports (at least 1: a ratio of noise around zero is no measurement)."""
    return max(r[f"peak_{kind}_mb"] - r[f"baseline_{kind}_mb"], 1.0)


def run_child(path, cache_dir, vocab_size) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", str(path), str(cache_dir), str(vocab_size)],
                         capture_output=True, text=True, env=env)
    if out.returncode == BAD_TEXT:  # bad text: the child's last line says what (a crash keeps its traceback)
        line = out.stderr.strip().splitlines()[-1]
        if "--val_" in line:  # advice about options this script does not have
            line = (f"--data {path}: too few documents; bench_data.py holds out 1 in 100 for validation, as "
                    "train.py does by default: pass a --data file of 100 documents or more")
        sys.exit(f"bench_data.py: error: {line}")
    if out.returncode != 0:
        if out.stderr:  # (a crash's traceback, then the one line last, on a line of its own: a killed
            print(out.stderr.rstrip("\n"), file=sys.stderr)  # child's progress bar ends in no newline)
        how = f"exit {out.returncode}"
        if out.returncode < 0:  # (the OOM killer's SIGKILL, in a memory benchmark, leaves no traceback)
            oom = " (SIGKILL: out of memory?)" if out.returncode == -9 else ""
            how = f"killed by signal {-out.returncode}{oom}"
        sys.exit(f"bench_data.py: error: the prepare() subprocess failed ({how}, "
                 f"{'its output is above' if out.stderr else 'with no output'})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(n, fn):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def tokenization_speeds(path, tokenizer_path) -> dict:
    """Single-threaded loop vs batched vs parallel, on the documents of `path`, same process."""
    import data
    import sources
    import tokenizer

    tok = data.Tokenizer.load(tokenizer_path)
    # prepare()'s documents: split as its reader splits them (markers, else blank lines), a byte that
    # is not UTF-8 replaced as there (the 1% it lets through)
    layout, _, _ = sources._scan_txt(str(path), "--data")
    read = sources._txt_documents(str(path), "", layout)
    docs = [s for s in (sources.document(d["text"]) for d in read) if s]
    mb = sum(len(d.encode()) for d in docs) / 1e6
    threads = os.cpu_count() or 1

    def loop():
        with tokenizer._rust_threads_off():
            return [tok.encode(d) for d in docs]

    def batched(n):
        size = data.BATCH_DOCS * n
        return [ids for i in range(0, len(docs), size) for ids in tok.encode_docs(docs[i:i + size], n)]

    t_loop, ref = best_of(2, loop)
    t_one, one = best_of(2, lambda: batched(1))
    t_par, par = best_of(2, lambda: batched(threads))
    assert one == ref and par == ref, "the parallel path must give the loop's tokens"
    return {"mb": mb, "docs": len(docs), "threads": threads, "loop_s": t_loop, "batched_1_thread_s": t_one,
            "parallel_s": t_par, "loop_mb_s": mb / t_loop, "batched_1_thread_mb_s": mb / t_one,
            "parallel_mb_s": mb / t_par, "speedup_parallel_vs_loop": t_loop / t_par,
            "speedup_parallel_vs_batched_1_thread": t_one / t_par}


def parser():
    p = config.Parser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), type=storage.expand_home,
                   help="a .txt file, read as train.py reads one (default "
                        "../shared/data/tinystories/train-lower.txt)")
    p.add_argument("--out", default=None, type=storage.expand_home,
                   help="a .json file, new or an earlier result of this benchmark (default, for a run with "
                        "every other option at its default: img/bench_data.json; other runs write only "
                        "where --out says)")
    p.add_argument("--repeat", type=config.at_least_1, default=10,
                   help="copies of the text in the memory test")
    p.add_argument("--vocab_size", type=config.at_least_1, default=4096,
                   help="BPE vocabulary to train (default: the tiny preset's)")
    p.add_argument("--child", nargs=3, metavar=("FILE", "CACHE_DIR", "VOCAB_SIZE"), help=argparse.SUPPRESS)
    return p


def measure(opts) -> tuple[dict, dict, dict]:
    """prepare() on --data and on it repeated (each in a child), then the tokenizer's speeds."""
    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
        tmp = Path(tmp)
        print(f"prepare() on {opts.data} ...", file=sys.stderr)
        small = run_child(opts.data, tmp / "cache1", opts.vocab_size)
        big_path = tmp / f"x{opts.repeat}.txt"
        text = Path(opts.data).read_bytes()
        with open(big_path, "wb") as f:
            for _ in range(opts.repeat):
                f.write(text)
        print(f"prepare() on the same text x{opts.repeat} ({big_path.stat().st_size / 1e6:.1f} MB) ...",
              file=sys.stderr)
        big = run_child(big_path, tmp / "cache10", opts.vocab_size)
        print("tokenization: loop vs batched vs parallel ...", file=sys.stderr)
        tokenizer_path = next((tmp / "cache1").glob("tokenizer-*/tokenizer.json"))
        speed = tokenization_speeds(opts.data, tokenizer_path)
    return small, big, speed


def print_table(rows: list[tuple[str, str, str]]) -> None:
    """A markdown table of (measurement, input, result) rows."""
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    header = ("measurement", "input", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def main(argv=None):
    p = parser()
    opts = p.parse_args(argv)
    if opts.child:
        return child(*opts.child)
    if problem := storage.not_a_result("--out", opts.out, "bench_data.json", RESULT_KEYS):
        p.error(problem)  # (before the work: a device or a checkpoint there became the JSON, a folder failed)
    if problem := too_small(opts.vocab_size):  # (the prepare() subprocess would say so, as exit 1)
        p.error(problem)
    if not opts.data:  # (an unset variable: rather than "no such file ''", exit 1)
        p.error("--data is empty (an unset variable?); pass a text file, such as train-lower.txt, or leave "
                "--data out for its default")
    if os.path.isdir(opts.data):
        p.error(f"--data {opts.data} is a folder; pass a text file, such as train-lower.txt")
    if kind := storage.special_kind(opts.data):  # (it said "no such file '/dev/null'")
        p.error(f"--data {opts.data} is {kind}, not a file; pass a text file, such as train-lower.txt")
    if not os.path.isfile(opts.data):
        sys.exit(f"bench_data.py: error: no such file '{opts.data}'; pass --data FILE (../shared holds "
                 "train-lower.txt)")
    if Path(opts.data).suffix.lower() != ".txt":  # (a .jsonl: its copies, named .txt, were read as text and
        # refused, naming a temporary file; its speeds were of its JSON lines as text)
        p.error(f"--data {opts.data}: bench_data.py measures a .txt file (it splits the text and repeats it "
                "as prepare() reads a .txt); pass one, such as train-lower.txt")
    out = storage.results_file(p, opts, ROOT / "img" / "bench_data.json")  # (after the errors: one line)

    load = os.getloadavg()[0]  # the CPU may be shared: a busy core halves the parallel speed-up
    small, big, speed = measure(opts)

    ratio = added_mb(big, "anon") / added_mb(small, "anon")  # (the imports left out of both sides)
    rss_ratio = added_mb(big, "rss") / added_mb(small, "rss")
    name = os.path.basename(opts.data)
    from data import BATCH_DOCS  # (after the subprocesses: this process's memory is not measured)
    one_batch = BATCH_DOCS * small["threads"]  # documents in one round of tokenization batches
    checked = small["docs"] > one_batch  # (a text of one round is held whole: its memory grows with it)
    ok = ratio < 1.5 if checked else None  # (None in the JSON: not checked)
    verdict = ("ok" if ratio < 1.5 else "FAIL") if checked else \
        f"not checked: {name} is one round of tokenization batches ({one_batch:,} documents), held whole"

    def mem(r, kind):
        return (f"{added_mb(r, kind):.0f} MB (peak {r[f'peak_{kind}_mb']:.0f} MB, after imports "
                f"{r[f'baseline_{kind}_mb']:.0f} MB)")

    result = {
        "data": os.path.basename(opts.data), "vocab_size": opts.vocab_size, "cpus": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(), "end_to_end": small, "end_to_end_repeated": big,
        "tokenization": speed, "added_anon_ratio": ratio, "added_anon_ratio_ok": ok,
        "added_rss_ratio": rss_ratio,
    }
    rows = [
        ("end to end: prepare(), cold cache", f"{name}, {small['mb']:.1f} MB",
         f"{small['mb'] / small['seconds']:.2f} MB/s ({small['seconds']:.1f} s, {small['tokens']:,} tokens)"),
        ("end to end: prepare(), cold cache", f"x{opts.repeat}, {big['mb']:.1f} MB",
         f"{big['mb'] / big['seconds']:.2f} MB/s ({big['seconds']:.1f} s)"),
        ("tokenize: single-threaded loop", f"{name}, {speed['docs']:,} docs",
         f"{speed['loop_mb_s']:.2f} MB/s ({speed['loop_s']:.2f} s)"),
        ("tokenize: batched, 1 thread", "same", f"{speed['batched_1_thread_mb_s']:.2f} MB/s "
                                                f"({speed['batched_1_thread_s']:.2f} s)"),
        (f"tokenize: parallel path, {speed['threads']} threads", "same",
         f"{speed['parallel_mb_s']:.2f} MB/s ({speed['parallel_s']:.2f} s)"),
        ("speed-up: parallel vs loop", "", f"{speed['speedup_parallel_vs_loop']:.2f}x"),
        ("speed-up: parallel vs batched 1 thread", "",
         f"{speed['speedup_parallel_vs_batched_1_thread']:.2f}x"),
        ("anonymous memory prepare() adds", name, mem(small, "anon")),
        ("anonymous memory prepare() adds", f"x{opts.repeat}", mem(big, "anon")),
        ("RSS prepare() adds (mapped files too)", name, mem(small, "rss")),
        ("RSS prepare() adds (mapped files too)", f"x{opts.repeat}", mem(big, "rss")),
        (f"anonymous memory added, x{opts.repeat} / x1 (must be < 1.5)", "",
         f"{ratio:.2f} {verdict}"),
        (f"RSS added, x{opts.repeat} / x1", "", f"{rss_ratio:.2f}"),
    ]
    print_table(rows)
    print("memory added: prepare()'s peak above the figure after its imports; RSS also counts pages of its "
          "memory-mapped files (the arrow copy, the shards), which grow with the text")
    print(f"{os.cpu_count()} CPUs, load average {load:.2f} at the start (other processes share the CPUs)")
    if out is not None:
        storage.save_json(out, result, "pick another --out", sort_keys=False)
        print(f"wrote {out}")
    if ok is False:
        sys.exit(1)


if __name__ == "__main__":
    run_script(main, "bench_data.py")
