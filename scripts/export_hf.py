"""Export a checkpoint to a Hugging Face folder, or import one back.

    python scripts/export_hf.py checkpoints/<run> hf_export/<run>        # checkpoint -> HF folder
    python scripts/export_hf.py --import hf_export/<run> checkpoints/<name>    # -> checkpoints/<name>/last.pt

The folder holds config.json (model_type llama4_text, or llama4 when the model has the vision
stub), model.safetensors and, when the run has one, the tokenizer (tokenizer.json plus
tokenizer_config.json for PreTrainedTokenizerFast). `transformers.Llama4ForCausalLM` (or
`Llama4ForConditionalGeneration`) loads it with no missing or unexpected keys. The run folder's
tokenizer.json must be the one the checkpoint was trained with (its sha256 is in the checkpoint):
another is refused, and nothing is exported; the export records the sha256 in config.json
(tokenizer_sha256), which --import and `sample.py --hf` check. An export, another tokenizer.json
or a checkpoint already at the destination is replaced only with --force (a run's last.pt holds
its optimizer state). --import also takes Llama 4 folders this project did not write (special-token
ids come from their config; weights in one file or in shards). With --force an export over
another is written into a hidden .tmp-export-* folder in it first, then its files are renamed over
the old ones with Ctrl-C and SIGTERM put off until they are all in place: an interrupt leaves the
whole old export or the whole new one (a kill -9 may leave the hidden folder: delete it).
The conversion itself is checkpoint.export_hf / checkpoint.import_hf; this is its command line.
"""

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import checkpoint  # noqa: E402
import config  # noqa: E402
import storage  # noqa: E402
from errors import UserError, run_script  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

FILES = ("tokenizer.json", "tokenizer_config.json", "model.safetensors", "config.json")  # config.json last


@contextlib.contextmanager
def signals_put_off():
    """SIGINT and SIGTERM noted, not acted on, until the block ends, then raised again (Ctrl-C's
    KeyboardInterrupt, SIGTERM's exit). Not pthread_sigmask: it holds back the main thread's
    signals only, and one of torch's worker threads would take a Ctrl-C instead."""
    caught = []
    kept = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT,
                                                                                       signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in kept.items():
            signal.signal(s, handler)
        for s in caught:
            signal.raise_signal(s)


def export(model, dest, tok, force: bool) -> None:
    """checkpoint.export_hf; with --force, into a hidden folder in dest, then its files renamed over
    the old export's with signals put off: never new weights beside the old config.json."""
    if not force:  # nothing to replace (an export already there is refused)
        checkpoint.export_hf(model, dest, tok)
        return
    out = storage.make_folder(dest, "export it elsewhere")
    try:
        stage = Path(tempfile.mkdtemp(dir=out, prefix=".tmp-export-"))
    except OSError as e:
        raise storage.write_error(out / "model.safetensors", e, "export it elsewhere") from None
    try:
        checkpoint.export_hf(model, stage, tok)
        old = any((out / name).exists() for name in ("config.json", "model.safetensors"))
        with signals_put_off():
            for name in FILES:
                if (stage / name).exists():
                    os.replace(stage / name, out / name)
                elif old:  # the replaced export's tokenizer, when this one has none
                    (out / name).unlink(missing_ok=True)
            folder = os.open(out, os.O_RDONLY)  # the renames made durable, as storage.atomic_write's
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def main(argv=None):
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="checkpoint file or run folder (or, with --import, an HF folder)")
    p.add_argument("dest", help="output HF folder (or, with --import, the checkpoint file to write, or a "
                                "run folder for its last.pt)")
    p.add_argument("--import", dest="do_import", action="store_true", help="HF folder -> checkpoint")
    p.add_argument("--force", action="store_true", help="replace an export or a checkpoint already at dest "
                                                          "(refused without it)")
    args = p.parse_args(argv)
    try:
        if args.do_import:
            dest = checkpoint.import_hf(args.source, args.dest, args.force)
            print(f"imported {args.source} -> {dest}")
        else:
            ckpt_path = checkpoint.find_checkpoint(args.source)
            model, ckpt = checkpoint.load_model(ckpt_path)
            tok = ckpt_path.parent / "tokenizer.json"
            if tok.exists():  # the one the checkpoint was trained with, or nothing is exported
                checkpoint.check_tokenizer(Tokenizer.load(tok, exact=False), tok, ckpt, ckpt_path,
                                           fix=checkpoint.TOKENIZER_FIX + "; nothing was exported")
            export(model, args.dest, tok if tok.exists() else None, args.force)
            if not tok.exists():
                print(f"export_hf.py: warning: {tok} is missing: the folder got no tokenizer, and "
                      "sample.py --hf needs one", file=sys.stderr)
            print(f"exported {ckpt_path} -> {args.dest}")
    except UserError as e:
        print(f"export_hf.py: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # (it said "the files already written are complete", of a folder without
        # config.json, or a checkpoint without its tokenizer.json, and the next run refused them)
        what = "import" if args.do_import else "export"
        print(f"export_hf.py: interrupted; {args.dest} may hold part of this {what}: run the command again, "
              "with --force if it refuses", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_script(main, "export_hf.py")
