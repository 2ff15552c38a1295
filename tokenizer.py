"""The tokenizer: a byte-level BPE (Hugging Face `tokenizers`) with the special tokens at ids 0..7.

    too_small(vocab_size)                why a BPE of that size cannot be trained, before any text is read
    identity(fields)                     the tokenizer's hash, from its JSON fields
    Tokenizer.train(texts, vocab_size)   deterministic for given text
    Tokenizer.load(path) / .save(path)   tokenizer.json, which transformers' fast tokenizer loads
    encode / decode                      prompts and stories
    decode_cut                           a prompt cut from the left, without a cut character's rest
    encode_docs                          documents for the token shards, in threads
    pieces(text)                         a long document in pieces that encode to the whole's ids
    check_tokenizer(tok, model_args)     the model's vocabulary and special ids are the tokenizer's

How this departs from the obvious version:
- No normaliser and no prefix space, so decode(encode(s)) == s for any string of Unicode scalar
  values, and `token_bytes` (UTF-8 bytes per token) makes bits per byte exact.
- `hash` is the sha256 of the canonical JSON (less the post-processor, which encoding never runs):
  checkpoints and token caches record it, so a run never silently continues or trains with
  another tokenizer.
- A tokenizer.json that does not give back the text it encodes (a normaliser, a prefix space, a
  byte without a token) is refused for training and evaluation, naming the file; sampling and the
  export load it with exact=False, for the runs that earlier versions trained with one.
- encode_docs reads special-token strings as plain text (only separators the data code puts
  there are special in a shard) and runs the Rust encoder in Python threads, which release the GIL.
- `pieces` cuts a document longer than PIECE_CHARS before a space between two non-space
  characters, where the byte-level pre-tokenizer starts a new word anyway: data.py encodes (and
  trains on) long documents piece by piece, the ids are the whole document's, and memory stays
  bounded (a 50 MB document with no separator would cost gigabytes whole). encode and encode_docs
  take a text whole.
- The BPE trainer (not the encoder) gets runs of over LONG_RUN spaces or non-spaces cut into
  pieces: its time is quadratic in a word's length, and no word of prose is that long.
"""

import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

import storage
from config import SPECIAL_TOKENS, ModelArgs
from errors import ConfigError, DataError, first_line

EOT = SPECIAL_TOKENS["eos_id"]  # "<|endoftext|>": the document separator
MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # the special tokens and one token per byte
NOT_EXACT = ("the tokenizer does not give back the text it encodes (a normaliser, a prefix space, special "
             "tokens not marked special, an added token that decodes to other text or takes the spaces "
             "beside it, or a byte it has no token for)")

TRAIN_ONE = "leave --tokenizer empty to train one with this project"  # (advice for a tokenizer refused)
PIECE_CHARS = 1 << 20  # longer documents are encoded in pieces of about this many characters
LONG_RUN = 256  # the BPE trainer sees runs of spaces or of non-spaces in pieces of this many characters


def _byte_of_stand_in() -> dict[str, int]:
    """The byte each printable stand-in of the byte-level alphabet stands for (GPT-2's table, which
    tokenizers' ByteLevel keeps): printable Latin-1 bytes stand for themselves, the others, in order,
    are chr(256), chr(257), ..."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in kept]
    return {chr(b): b for b in kept} | {chr(256 + n): b for n, b in enumerate(moved)}


BYTE_OF = _byte_of_stand_in()


def too_small(vocab_size: int) -> str | None:
    """Why a BPE of `vocab_size` tokens cannot be trained, or None. train.py and data.py refuse it
    as a bad setting, before reading any text."""
    if vocab_size < MIN_VOCAB:
        return (f"--vocab_size {vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB} "
                f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes)")
    return None


def _missing_special(tok: tokenizers.Tokenizer) -> str | None:
    """The first of this project's special tokens the tokenizer lacks, or None."""
    return next((t for t in SPECIAL_TOKENS.values() if tok.token_to_id(t) is None), None)


@contextmanager
def _rust_threads_off():
    """Switch off the `tokenizers` thread pool (it reads TOKENIZERS_PARALLELISM at every call)."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _sha256(fields: dict) -> str:
    """The sha256 of a tokenizer's JSON fields, canonical (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def identity(fields: dict) -> str:
    """A tokenizer's hash from its JSON fields. encode never runs a post-processor
    (add_special_tokens=False), and transformers' save_pretrained adds one that adds nothing: it is
    no part of the tokenizer's identity."""
    return _sha256({**fields, "post_processor": None})


def _json_but_not_a_tokenizer(text: str) -> bool:
    """Whether a file tokenizers cannot read is JSON of another kind (no "model" in it), rather than
    no JSON at all or a damaged tokenizer."""
    try:
        spec = json.loads(text)
    except ValueError:
        return False
    return not (isinstance(spec, dict) and "model" in spec)


class Tokenizer:
    """A byte-level BPE: a thin wrapper over `tokenizers.Tokenizer` with SPECIAL_TOKENS at ids 0..7.

    No normaliser and no prefix space, so decode(encode(s)) == s for any string of Unicode scalar
    values (emoji and scripts never seen in training included: every byte is in the vocabulary).
    Pre-tokenization is the GPT-2 byte-level split (Llama 4's tiktoken-style regex differs mostly on
    digits and non-Latin scripts, which TinyStories hardly has).
    `encode` reads special-token strings as special tokens (as transformers does by default); the
    shards, sample.py's prompts and the export's tokenizer read them as text (encode_docs;
    split_special_tokens). `decode` keeps them as their text. `token_bytes[i]` is the number of
    UTF-8 bytes token i stands for, 0 for the special tokens (so bits per byte count the separator
    as zero bytes: a conservative figure).
    """

    def __init__(self, tok: tokenizers.Tokenizer, exact: bool = True):
        self.tok = tok
        if missing := _missing_special(tok):
            raise DataError(f"the tokenizer has no {missing} token", TRAIN_ONE)
        fields = json.loads(tok.to_str())
        self.hash = identity(fields)
        # Checkpoints saved before may record the hash with the post-processor (None when it has none).
        self.legacy_hash = _sha256(fields) if fields.get("post_processor") is not None else None
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = tok.token_to_id(EOT)
        self.token_bytes = self._count_token_bytes()
        self._plain = None  # a copy that reads special-token strings as text, for the shards
        if exact and not self.gives_back_text():
            raise DataError(NOT_EXACT, TRAIN_ONE)

    def _count_token_bytes(self) -> np.ndarray:
        """UTF-8 bytes per token. A BPE token's characters are stand-ins, one per byte. An added token
        is text read as it is: its UTF-8 bytes, or 0 for a special one, which encode_docs never gives.
        This project's special tokens count 0 even when not marked special; gives_back_text then
        fails."""
        alphabet = set(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins, one per byte
        special = set(self.special_ids().values())
        added = self.tok.get_added_tokens_decoder()
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self.tok.get_vocab(with_added_tokens=True).items():
            if i in special:
                continue
            if i in added:
                out[i] = 0 if added[i].special else len(added[i].content.encode())
                continue
            if not set(token) <= alphabet:
                raise DataError(f"the tokenizer is not a byte-level BPE (token {token!r})", TRAIN_ONE)
            out[i] = len(token)
        return out

    PROBE = "Once, Tom said: \"<|endoftext|> is text\".\n\tÉté ☀ 42  "

    def gives_back_text(self) -> bool:
        """Whether the tokenizer gives back the text it encodes, as training needs (`exact`): the
        shards must hold the text as it is, and bits per byte count its bytes. It does not when it
        - changes text: a normaliser that lower-cases, a prefix space;
        - reads a special-token string in the text as a special token (one not marked special);
        - lacks a token for some byte (a BPE trained without the byte alphabet): the encoder
          silently drops every character it never saw;
        - has an added token that decodes to other text (an added "café": its "é" decodes as the
          byte 0xE9) or takes the spaces beside it (lstrip, rstrip: "a foo b" read as "afoob")."""
        if any(self.tok.token_to_id(c) is None for c in BYTE_OF):
            return False
        added = [t.content for t in self.tok.get_added_tokens_decoder().values() if not t.special]
        # (an added token is read as its text, and must decode to it, spaces beside it kept)
        texts = [self.PROBE, *(f" {text} " for text in added)]
        return all(self.decode(ids) == text and int(self.token_bytes[ids].sum()) == len(text.encode())
                   for text, ids in zip(texts, self.encode_docs(texts), strict=True))

    @classmethod
    def train(cls, texts, vocab_size: int) -> "Tokenizer":
        """Train on an iterable of strings (or of lists of strings). Deterministic for given text."""
        if problem := too_small(vocab_size):
            raise DataError(problem)
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(_short_runs(texts), trainer)
        got = tok.get_vocab_size()
        if got < vocab_size:
            raise DataError(f"--vocab_size {vocab_size}: the training text can only fill {got} tokens "
                            f"(no pair of tokens is left to merge); pass --vocab_size {got} or less, or "
                            "train on more text")
        return cls(tok)

    @classmethod
    def load(cls, path, fix: str = "pass a tokenizer.json written by this project, or leave --tokenizer "
             "empty to train one", exact: bool = True, missing: str = "leave it empty to train one"
             ) -> "Tokenizer":
        """From a tokenizer.json, with errors that name --tokenizer. `fix` is the advice for a file
        that cannot be read, and `missing` the other way out for a path that is no file (a
        checkpoint's tokenizer cannot be trained anew). `exact` refuses a tokenizer that does not give
        back its text, as training and evaluation must; sampling and the export pass exact=False, so
        that a run an earlier version trained with such a tokenizer can still be sampled. A ~ the
        shell left (a quoted --tokenizer '~/tok.json') is the home folder."""
        path = storage.expand_home(os.fspath(path))
        if os.path.isdir(path):  # a run folder: its tokenizer is the file inside
            inside = Path(path) / "tokenizer.json"
            which = f" ({inside})" if inside.is_file() else ""
            raise DataError(f"--tokenizer: '{path}' is a folder; pass the tokenizer.json file itself{which}, "
                            f"or {missing}")
        if not os.path.isfile(path):
            raise DataError(f"--tokenizer: no such file '{path}'; check the path, or {missing}")
        text = None
        try:
            # read here, not by from_file: the Rust side takes only UTF-8 paths (a run folder made
            # outside train.py may have another name)
            text = Path(path).read_bytes().decode("utf-8")
            tok = tokenizers.Tokenizer.from_str(text)
        except Exception as e:
            why = first_line(e)
            # the Rust parser's message would mislead there: `expected , or }` on {"a": 1}
            if text is not None and _json_but_not_a_tokenizer(text):
                why = 'JSON, but not a tokenizer: it has no "model"'
            raise DataError(f"cannot read the tokenizer '{path}' ({why})", fix) from None
        # checked before Tokenizer() does, to name the file and give the caller's advice (an HF folder's
        # tokenizer, imported with its weights, cannot be trained anew: TRAIN_ONE would not help)
        if lacks := _missing_special(tok):
            raise DataError(f"{path} has no {lacks} token (not a tokenizer this project writes)", fix)
        loaded = cls(tok, exact=False)
        if exact and not loaded.gives_back_text():
            raise DataError(f"{path}: {NOT_EXACT}, which training and evaluation refuse (earlier versions of "
                            "this project took it; sample.py still reads their runs)", TRAIN_ONE)
        return loaded

    def save(self, path, fix: str | None = None) -> None:
        storage.make_folder(Path(path).parent, fix)  # (a file in the way: one line, not a traceback)
        storage.atomic_write(path, self.tok.to_str(pretty=True).encode(), fix)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode_cut(self, ids) -> str:
        """decode(ids) for ids cut from the left (a prompt too long for the context), without what
        is left of a character whose first bytes were cut off: decode gives each such byte as U+FFFD."""
        text = self.decode(ids)
        first = "".join(self.tok.id_to_token(int(i)) for i in ids[:3])[:3]  # (3 bytes at most are left)
        cut = next((n for n, c in enumerate(first) if not 0x80 <= BYTE_OF.get(c, 0) < 0xC0), len(first))
        return text[cut:] if text.startswith("\ufffd" * cut) else text

    def special_ids(self) -> dict:
        """ModelArgs field name -> token id, e.g. {"eos_id": 0, "pad_id": 1, ...}."""
        return {name: self.tok.token_to_id(text) for name, text in SPECIAL_TOKENS.items()}

    def encode_docs(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """Encode documents for the shards: special-token strings in them stay plain text.

        With threads > 1 the list is cut into `threads` parts encoded at the same time (the Rust
        encoder releases the GIL); the Rust thread pool is off meanwhile, so exactly `threads`
        threads work. The result does not depend on `threads`.
        """
        if self._plain is None:
            self._plain = tokenizers.Tokenizer.from_str(self.tok.to_str())
            self._plain.encode_special_tokens = True

        def encode(part):
            return [e.ids for e in self._plain.encode_batch_fast(part, add_special_tokens=False)]

        with _rust_threads_off():
            if threads <= 1 or len(texts) < 2:
                return encode(texts)
            step = math.ceil(len(texts) / threads)
            parts = [texts[i:i + step] for i in range(0, len(texts), step)]
            with ThreadPoolExecutor(len(parts)) as pool:
                return [ids for out in pool.map(encode, parts) for ids in out]


# ---------------------------------------------------------------------------------------------
# Long texts: the encoder takes them in pieces, the BPE trainer in short runs


def pieces(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """`text` cut into pieces of at most `limit` characters, each cut just before a space that
    stands between two non-space characters. The byte-level pre-tokenizer (GPT-2's pattern) always
    starts a word there, the space going with the word after it, and BPE never merges across
    words: encoding the pieces one by one gives exactly the ids of the whole text. A stretch of
    limit / 2 characters without such a space (not text) is cut at the limit."""
    out, start = [], 0
    while len(text) - start > limit:
        end = cut = start + limit
        i = text.rfind(" ", start + 1, end)
        while i > start + limit // 2:
            if not text[i - 1].isspace() and not text[i + 1].isspace():
                cut = i
                break
            i = text.rfind(" ", start + 1, i)
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


_LONG = re.compile(rf"\S{{{LONG_RUN}}}(?=\S)|\s{{{LONG_RUN}}}(?=\s)")  # LONG_RUN, where the run goes on


def _short_runs(texts):
    """The trainer's texts (strings or lists of strings) as lists of strings in which no run of
    more than LONG_RUN characters is all spaces or all non-spaces: such a run is cut after every
    LONG_RUN characters. The BPE trainer's time grows with the square of a word's length (a 400 KB
    word took a minute, 3 MB over ten). Prose has no such runs and trains the same tokenizer; a
    cut in a long URL or a line of code may split a word there, which changes the merges learned
    a little. The pre-tokenizer is not changed: encoding still takes whole words."""
    for item in texts:
        out = []
        for text in [item] if isinstance(item, str) else item:
            ends = [m.end() for m in _LONG.finditer(text)]
            out += [text[a:b] for a, b in zip([0, *ends], [*ends, len(text)], strict=True)]
        yield out


# ---------------------------------------------------------------------------------------------
# The model's settings against the tokenizer


def check_tokenizer(tok: Tokenizer, model_args: ModelArgs, where: str = "the tokenizer", model: str = "",
                    fix: str = "") -> None:
    """The model's vocabulary size and special-token ids must be the tokenizer's. A mismatch with
    the command line's settings is a ConfigError (exit status 2) that names the settings to pass.
    `model` names the model when its settings are a checkpoint's instead: a mismatch is then a
    DataError, the file's fault, and `fix` replaces the advice, as a resumed run or sample.py cannot
    take other settings."""
    error = DataError if model else ConfigError
    if tok.vocab_size != model_args.vocab_size:
        has = f"{model} has {model_args.vocab_size}" if model else f"--vocab_size is {model_args.vocab_size}"
        raise error(f"{where} has {tok.vocab_size} tokens but {has}; "
                    f"{fix or f'pass --vocab_size {tok.vocab_size}'}")
    # every id that differs, in one line: a tokenizer with them all elsewhere was 8 runs, one id each
    wrong = [(name, i) for name, i in tok.special_ids().items() if getattr(model_args, name) != i]
    if wrong:
        (name, i), more = wrong[0], len(wrong) - 1
        value = getattr(model_args, name)
        has = f"{model} has {value} there" if model else f"--{name} is {value}"
        others = f" (and {more} other special token{'s' * (more > 1)} at other ids)" if more else ""
        raise error(f"{where} has {SPECIAL_TOKENS[name]} at id {i} but {has}{others}; "
                    f"{fix or 'pass ' + ' '.join(f'--{n} {j}' for n, j in wrong)}")
