"""The tutorial's tokenizer: a BERT WordPiece vocabulary (bert-base-chinese layout) for GPT-2.

Chinese GPT-2s reuse bert-base-chinese's vocabulary: ``[PAD]`` is id 0 and an example reads
``[CLS] article [SEP] summary [SEP]``. Users bring that vocabulary as a directory
(``vocab.txt`` + optional ``tokenizer_config.json``) or a bare ``vocab.txt``. Without one, a
WordPiece vocabulary with the same special tokens is trained on the corpus with the
``tokenizers`` library and saved beside the model, so a checkpoint never travels without the
vocabulary its ids mean.
"""
from __future__ import annotations

import logging
import os
import re
import types
from pathlib import Path
from typing import Iterable

from ms_gpt2 import runtime
from ms_gpt2.data import starts_with_bom
from ms_gpt2.errors import UserError

runtime.ensure()

from mindnlp.transformers import BertTokenizer  # noqa: E402

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class TokenizerError(UserError, ValueError):
    """The vocabulary cannot serve this model (missing file, wrong layout, wrong size)."""


def check_special_tokens(tokenizer, source) -> None:
    # The file's own entries: BertTokenizer quietly appends any special token the file lacks as an
    # "added token", which would give a model ids that no bert-base-chinese checkpoint shares.
    vocab = tokenizer.vocab
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise TokenizerError(f"{source}: vocabulary lacks {', '.join(missing)}; expected a BERT "
                             f"(bert-base-chinese layout) vocab.txt with {', '.join(SPECIAL_TOKENS)}")
    if vocab["[PAD]"] != 0:
        raise TokenizerError(f"{source}: [PAD] has id {vocab['[PAD]']}, expected 0 (bert-base-chinese layout)")


def _as_gpt2_vocabulary(tokenizer):
    """[CLS] begins and [SEP] ends a GPT-2 sequence here; say so on the tokenizer.

    BertTokenizer has no bos/eos tokens, and the Trainer copies the tokenizer's special ids onto
    the model's config and generation config before training, so without this it would erase
    ``eos_token_id`` ([SEP]) and generation would never stop.
    """
    tokenizer.bos_token = tokenizer.cls_token
    tokenizer.eos_token = tokenizer.sep_token
    return tokenizer


def vocab_id_range(tokenizer) -> int:
    """How many embedding rows the tokenizer's ids need: its largest id + 1.

    Not ``len(tokenizer)``: a vocab.txt with repeated lines gives each line's token that line's
    id (the last repeat wins), so ids run past the count of distinct tokens.
    """
    return max(tokenizer.get_vocab().values()) + 1


_warned_repeats: set[str] = set()


def _vocab_lines(vocab_file: Path) -> list[str]:
    with open(vocab_file, encoding="utf-8") as handle:  # as BertTokenizer's load_vocab reads it
        return [line.rstrip("\n") for line in handle.readlines()]


def _check_repeats(tokenizer, vocab_file: Path) -> None:
    """Warn (once per file) about repeated lines, and keep their ids when the vocabulary is saved.

    BertTokenizer maps a repeated token to its last line's id and leaves the earlier ids unused;
    its ``save_vocabulary`` then writes the tokens without the gaps, shifting every later id, so a
    checkpoint saved with it would not mean what the model learned. Saving copies the lines as read.
    """
    lines = _vocab_lines(vocab_file)
    seen: dict[str, list[int]] = {}
    for number, token in enumerate(lines, start=1):
        seen.setdefault(token, []).append(number)
    repeats = {token: numbers for token, numbers in seen.items() if len(numbers) > 1}
    if not repeats:
        return
    key = str(vocab_file.resolve())
    if key not in _warned_repeats:
        _warned_repeats.add(key)
        shown = "; ".join(f"{token!r} at lines {', '.join(map(str, numbers))}"
                          for token, numbers in list(repeats.items())[:5])
        more = f"; and {len(repeats) - 5} more" if len(repeats) > 5 else ""
        log.warning("%s: %d token(s) appear on more than one line (%s%s); each keeps its last line's id, "
                    "so ids run to %d for %d distinct tokens and the model is sized %d", vocab_file,
                    len(repeats), shown, more, vocab_id_range(tokenizer) - 1, len(seen), vocab_id_range(tokenizer))

    def save_vocabulary(self, save_directory, filename_prefix=None):
        name = (filename_prefix + "-" if filename_prefix else "") + "vocab.txt"
        target = Path(save_directory, name) if os.path.isdir(save_directory) else Path(save_directory)
        target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return (str(target),)

    tokenizer.save_vocabulary = types.MethodType(save_vocabulary, tokenizer)


def load_tokenizer(path) -> BertTokenizer:
    """A BertTokenizer from a directory holding vocab.txt, or from a vocab.txt file itself."""
    path = Path(path)
    if path.is_dir():
        if not (path / "vocab.txt").is_file():
            raise TokenizerError(f"{path}: no vocab.txt in this directory (a BERT-style vocabulary is needed)")
        tokenizer = BertTokenizer.from_pretrained(str(path), local_files_only=True)
        vocab_file = path / "vocab.txt"
    elif path.is_file():
        tokenizer = BertTokenizer(vocab_file=str(path))
        vocab_file = path
    else:
        raise TokenizerError(f"{path}: no such tokenizer directory or vocab file")
    if starts_with_bom(vocab_file):  # BertTokenizer would read its first token as "\ufeff[PAD]"
        raise TokenizerError(f"{vocab_file}: vocab.txt starts with a UTF-8 byte-order mark; save it as UTF-8 "
                             f"without BOM (its first line must be exactly [PAD])")
    check_special_tokens(tokenizer, path)
    _check_repeats(tokenizer, vocab_file)
    return _as_gpt2_vocabulary(tokenizer)


def first_difference(a, b) -> tuple[int, str | None, str | None] | None:
    """The first id that the two tokenizers map to different tokens: (id, token in a, token in b)."""
    ids_a = {i: t for t, i in a.get_vocab().items()}
    ids_b = {i: t for t, i in b.get_vocab().items()}
    for i in sorted(ids_a.keys() | ids_b.keys()):
        if ids_a.get(i) != ids_b.get(i):
            return i, ids_a.get(i), ids_b.get(i)
    return None


def check_same_vocabulary(given, given_path, expected, expected_path) -> None:
    """Refuse a tokenizer whose ids mean other tokens than those a checkpoint was trained with."""
    diff = first_difference(given, expected)
    if diff is not None:
        i, mine, theirs = diff
        raise TokenizerError(f"tokenizer {given_path} does not match the vocabulary of {expected_path}: id {i} is "
                             f"{mine!r} in the first but {theirs!r} in the second; give the checkpoint's own "
                             f"vocabulary (or none: it is used by default)")


def build_tokenizer(texts: Iterable[str], out_dir, vocab_size: int = 8000,
                    min_frequency: int = 1) -> BertTokenizer:
    """Train a WordPiece vocabulary on ``texts`` and save it (vocab.txt + config) in ``out_dir``."""
    from tokenizers import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                     lowercase=True)
    trainer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(out_dir))  # writes vocab.txt, [PAD] first
    tokenizer = _as_gpt2_vocabulary(BertTokenizer(vocab_file=str(out_dir / "vocab.txt")))
    tokenizer.save_pretrained(str(out_dir))
    check_special_tokens(tokenizer, out_dir / "vocab.txt")
    log.info("built a %d-token WordPiece vocabulary in %s", len(tokenizer), out_dir)
    return tokenizer


_SPACE_NEXT_TO_NON_ASCII = re.compile(r"\s+(?=[^\x00-\x7f])|(?<=[^\x00-\x7f])\s+")


def decode(tokenizer, ids) -> str:
    """Token ids -> text, without the spaces WordPiece decoding puts between Chinese characters.

    Spaces between ASCII words ("GPT 2 model") are kept; only those touching a non-ASCII
    character go.
    """
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return _SPACE_NEXT_TO_NON_ASCII.sub("", text).strip()
