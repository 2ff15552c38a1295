"""Export a checkpoint to a Hugging Face folder, or import one back.

    python scripts/export_hf.py checkpoints/<run> hf_export/<run>        # its last.pt -> HF folder
    python scripts/export_hf.py checkpoints/<run>/best.pt hf_export/<run>    # the best validation loss
    python scripts/export_hf.py --import hf_export/<run> checkpoints/<name>    # -> checkpoints/<name>/last.pt

The folder holds config.json (model_type llama4_text, or llama4 when the model has the vision
stub), model.safetensors, generation_config.json (generate samples at sample.py's default temperature,
top_k and top_p, stops at <|endoftext|> and, as sample.py, never draws the other special tokens)
and, when the run has one, the tokenizer (tokenizer.json plus tokenizer_config.json for
PreTrainedTokenizerFast). `transformers.Llama4ForCausalLM` (or
`Llama4ForConditionalGeneration`) loads it with no missing or unexpected keys. The run folder's
tokenizer.json must be the one the checkpoint was trained with (its sha256 is in the checkpoint):
another is refused, and nothing is exported; the export records the sha256 in config.json
(tokenizer_sha256), which --import and `sample.py --hf` check. An export (or one of its
generation_config.json and tokenizer_config.json alone), another tokenizer.json or a checkpoint
already at the destination is replaced only with --force (a run's last.pt holds its optimizer
state); an export is replaced whole (the shards and index of a re-save by transformers too), the
folder's other files left (a tokenizer_config.json without a tokenizer.json among them; one beside
a tokenizer.json that --force removes goes with it). An export into a
run folder or a folder of runs (an --out_dir), or an --import into an HF folder or a folder of
runs, is refused even with --force (each would mix two kinds of folder). --import also takes Llama 4
folders this project did not write (special-token ids come from their config, else their
tokenizer.json; weights in one file or in shards; a tokenizer without this project's special tokens,
which sample.py and train.py refuse, is a warning); a run folder or checkpoint given to --import is
said to want no --import. An --import holds the run folder's run.lock while it writes (a train.py
started there meanwhile is refused, as is an import into a live train.py's folder), and removes
one it made. An export is written into a hidden .tmp-export-* folder in the
destination, then renamed into place with Ctrl-C and SIGTERM put off: an interrupt or a full disk
leaves the folder as it was (none, where there was none) or the whole new export, never a mix.
Ctrl-C while torch imports is one line (errors is imported first, as in the other scripts that
import torch); a warning stderr cannot take (2>/dev/full, 2>&-) is dropped; a standard output that
cannot take the closing line (> FILE on a full disk) is an error, exit 1, that says the export (or
the checkpoint) is whole.
The conversion itself is checkpoint.export_hf / checkpoint.import_hf; this is its command line.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import errors  # noqa: E402, F401  first: a Ctrl-C while torch imports is one line, no traceback

# isort: split

import checkpoint  # noqa: E402
import config  # noqa: E402
import storage  # noqa: E402
from errors import UserError, quiet_stderr, run_script, sigterm_interrupts  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


def main(argv=None):
    restore_stderr = quiet_stderr()  # a warning stderr cannot take (2>/dev/full, 2>&-) is dropped, not
    try:  # the export, and never lands in stdout
        export_or_import(argv)
    finally:
        restore_stderr()


def export_or_import(argv=None):
    p = config.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="checkpoint file or run folder (its last.pt; name <run>/best.pt for the "
                                  "best validation loss), or, with --import, an HF folder")
    p.add_argument("dest", help="output HF folder (or, with --import, the checkpoint file to write, or a "
                                "run folder for its last.pt)")
    p.add_argument("--import", dest="do_import", action="store_true", help="HF folder -> checkpoint")
    p.add_argument("--force", action="store_true", help="replace an export or a checkpoint already at dest "
                                                          "(refused without it)")
    args = p.parse_args(argv)
    for name in ("source", "dest"):  # ("" was the current folder: an export or last.pt landed there)
        if not getattr(args, name):
            p.error(f"{name} is empty; name a path (. for the current folder)")
        setattr(args, name, storage.expand_home(getattr(args, name)))  # (a quoted ~: the home folder)
    restore_sigterm = sigterm_interrupts()  # a kill is a Ctrl-C: the hidden folder is cleaned up
    try:
        if args.do_import:
            dest = checkpoint.import_hf(args.source, args.dest, args.force)
            theirs, beside = Path(args.source) / "tokenizer.json", dest.parent / "tokenizer.json"
            if not theirs.exists():  # (one already beside it is another run's, or an older import's)
                what = (f"the {beside} already there is not checked against its weights" if beside.exists()
                        else "sample.py, train.py --eval_only and --init_from need the model's "
                        f"tokenizer.json beside it, in {dest.parent}")
                print(f"export_hf.py: warning: {theirs} is missing: the checkpoint got no tokenizer; {what}",
                      file=sys.stderr)
            else:  # (said now, not when sample.py or train.py refuse it)
                foreign_tokenizer(beside)
            say(f"imported {args.source} -> {dest}", f"the checkpoint {dest} is whole")
        else:
            ckpt_path = checkpoint.find_checkpoint(args.source)
            tok = ckpt_path.parent / "tokenizer.json"
            checkpoint.check_export_folder(args.dest, tok if tok.exists() else None,  # (before the checkpoint
                                           args.force, ckpt_path.parent.resolve().name)  # is read: it may
            # be large; the run's name for the advice)
            model, ckpt = checkpoint.load_model(ckpt_path)
            if tok.exists():  # the one the checkpoint was trained with, or nothing is exported
                fix = checkpoint.TOKENIZER_FIX + "; nothing was exported"
                checkpoint.check_tokenizer(Tokenizer.load(tok, fix, exact=False), tok, ckpt, ckpt_path,
                                           fix=fix)
            checkpoint.export_hf(model, args.dest, tok if tok.exists() else None, args.force)
            if not tok.exists():
                print(f"export_hf.py: warning: {tok} is missing: the folder got no tokenizer, and "
                      "sample.py --hf needs one", file=sys.stderr)
            say(f"exported {ckpt_path} -> {args.dest}", f"the export in {args.dest} is whole")
    except UserError as e:
        print(f"export_hf.py: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # (it said "the files already written are complete", of a folder without
        # config.json, or a checkpoint without its tokenizer.json, and the next run refused them)
        held = ("may hold part of this import" if args.do_import else
                "holds what it held before, or the whole export if the interrupt came as it was put in place")
        print(f"export_hf.py: interrupted; {args.dest} {held}: run the command again, with --force if it "
              "refuses", file=sys.stderr)
        sys.exit(130)
    finally:
        restore_sigterm()


def say(line: str, done: str) -> None:
    """The closing line, to standard output; where that fails (> FILE on a full disk), run_script's
    one-line error (exit 1) says `done` too: the work is whole, only this line was lost."""
    try:
        print(line, flush=True)  # (flushed here: at exit, run_script's flush would not know what was done)
    except OSError as e:
        e.done = done
        raise


def foreign_tokenizer(path: Path) -> None:
    """Warn when an import's tokenizer is not one this project reads (an HF folder's own, without
    <|endoftext|> and the other special tokens): its weights are imported all the same."""
    try:
        Tokenizer.load(path, exact=False, fix="the weights are imported, but sample.py, train.py --eval_only "
                       "and --init_from take only this project's tokenizers")
    except UserError as e:
        print(f"export_hf.py: warning: {e}", file=sys.stderr)


if __name__ == "__main__":
    run_script(main, "export_hf.py")
