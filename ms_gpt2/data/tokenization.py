"""The tutorial's tokenizer: a BERT WordPiece vocabulary (bert-base-chinese layout) for GPT-2.

Chinese GPT-2s reuse bert-base-chinese's vocabulary: ``[PAD]`` is id 0 and an example reads
``[CLS] article [SEP] summary [SEP]``. Users bring that vocabulary as a directory
(``vocab.txt`` + optional ``tokenizer_config.json``) or a bare ``vocab.txt``. Without one, a
WordPiece vocabulary with the same special tokens is trained on the corpus with the
``tokenizers`` library and saved beside the model, so a checkpoint never travels without the
vocabulary its ids mean.

Every answer to "which vocabulary?" is here: :func:`load_wordpiece` (a BERT ``vocab.txt``),
:func:`load_vocabulary` (whatever a model directory carries: GPT-2 BPE or BERT WordPiece),
:func:`is_bert_vocabulary`, and :func:`training_vocabulary` (the one a training job's model learns).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import types
from pathlib import Path
from typing import Iterable

from ms_gpt2.infra import runtime
from ms_gpt2.data.nlpcc import starts_with_bom
from ms_gpt2.infra.errors import CheckpointError, UserError
from ms_gpt2.infra.rundir import recover_dir

runtime.ensure()

from mindnlp.transformers import BertTokenizer, GPT2Tokenizer  # noqa: E402

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


def is_bert_vocabulary(tokenizer) -> bool:
    return tokenizer.__class__.__name__.startswith("BertTokenizer")


def load_wordpiece(path) -> BertTokenizer:
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


def load_vocabulary(path, bert_only: bool = False):
    """The tokenizer saved in a checkpoint directory (GPT-2 BPE or BERT WordPiece), or a bare BERT
    ``vocab.txt``. ``bert_only``: a BERT vocabulary is required (a BPE directory is refused by
    :func:`load_wordpiece`, naming the path)."""
    path = recover_dir(path)
    if bert_only or path.is_file():
        return load_wordpiece(path)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        try:
            return GPT2Tokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read the GPT-2 BPE tokenizer (vocab.json/merges.txt): {err}") from err
    if (path / "vocab.txt").is_file():
        return load_wordpiece(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    raise CheckpointError(f"{path}: no tokenizer files; expected vocab.json + merges.txt (GPT-2 BPE) "
                          f"or vocab.txt (BERT WordPiece)")


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


def _checkpoint_vocabulary(init_from, purpose: str | None):
    """The vocabulary a model.init_from checkpoint was trained with, or None if it carries none.
    ``purpose``: why a BERT vocabulary is required (BPE refused), or None when either kind serves."""
    init_from = Path(init_from)
    if not init_from.is_dir():  # else the message would be about its missing vocabulary
        raise UserError(f"model.init_from {init_from}: no such model directory")
    if not any((init_from / name).is_file() for name in ("vocab.txt", "vocab.json")):
        return None
    tokenizer = load_vocabulary(init_from)
    if purpose and not is_bert_vocabulary(tokenizer):
        raise TokenizerError(
            f"model.init_from {init_from}: its vocabulary is GPT-2 byte-level BPE (vocab.json); {purpose} "
            f"needs a BERT WordPiece vocab.txt ([PAD]/[CLS]/[SEP]), so start from a BERT-vocabulary GPT-2")
    return tokenizer


def training_vocabulary(config: dict, output_dir: Path, resume_from: str | None, texts,
                        bert_only: str | None = "summarization training", heldout=None):
    """The vocabulary whose ids the model will learn, for every training job.

    The resumed checkpoint's; else with ``model.init_from`` that checkpoint's own (a given
    ``tokenizer.path`` must match it token for token); else ``tokenizer.path``; else a WordPiece
    vocabulary built from ``texts()`` into ``OUTPUT_DIR/tokenizer`` -- on every fresh start, from
    this data, never one an earlier run (maybe on another corpus) left there, its [UNK] rate on
    ``texts()`` and on ``heldout()`` (the held-out texts, if any) logged. ``bert_only``: why a
    BERT vocabulary is required, or None when GPT-2 BPE serves too. Under data parallel, call it
    through :func:`ms_gpt2.jobs.run.rank0_first`: the other ranks load what rank 0 built."""
    bert = bool(bert_only)
    if resume_from:  # the checkpoint carries the vocabulary its ids mean
        return load_vocabulary(resume_from, bert)
    path, init_from = config["tokenizer"]["path"], config["model"]["init_from"]
    if init_from:
        own = _checkpoint_vocabulary(init_from, bert_only)
        if not path:
            if own is None:
                raise TokenizerError(
                    f"model.init_from {init_from}: no vocab.txt there; give the vocabulary this checkpoint was "
                    f"trained with (--tokenizer / tokenizer.path)")
            return own
        given = load_vocabulary(path, bert)
        if own is not None:
            check_same_vocabulary(given, path, own, init_from)
        return given
    if path:
        return load_vocabulary(path, bert)
    built = Path(output_dir) / "tokenizer"
    if runtime.ensure().rank != 0:  # data parallel: the vocabulary rank 0 just built (see rank0_first)
        return load_vocabulary(built)
    shutil.rmtree(built, ignore_errors=True)
    tokenizer = build_tokenizer(texts(), built, config["tokenizer"]["vocab_size"],
                                config["tokenizer"].get("min_frequency", 1))
    if heldout is not None:
        log_unk_rate(built / "vocab.txt", heldout(), "the held-out split")
    return tokenizer


def _wordpiece_trainer():
    """The ``tokenizers`` WordPiece model with BertTokenizer's normalisation (clean text, split CJK
    characters, lowercase, strip accents) and pre-tokenisation (whitespace and punctuation)."""
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)


_EVERY_CHARACTER = 2**31 - 1  # limit_alphabet: no limit (the library's default keeps only 1,000 characters)


def build_tokenizer(texts: Iterable[str], out_dir, vocab_size: int = 8000,
                    min_frequency: int = 1) -> BertTokenizer:
    """Train a WordPiece vocabulary on ``texts`` and save it (vocab.txt + config) in ``out_dir``.

    Every character of the (normalised) text gets a token, and so does its ``##`` form wherever
    the character follows another inside a word: WordPiece turns a whole word into ``[UNK]`` when
    one of its characters has no token, so none of the training text is ``[UNK]``. When those
    alone exceed ``vocab_size`` they are all kept (with a warning); otherwise the rest of the
    vocabulary is multi-character pieces seen at least ``min_frequency`` times, most frequent first.

    The same texts give the same ``vocab.txt`` bytes in every process. The ``tokenizers`` trainer
    numbers the ``##`` characters in the order of a hash map seeded per process (``PYTHONHASHSEED``
    does not reach it), and breaks ties between equally frequent merges by those numbers, so it
    picks and orders pieces differently in each process. A first pass therefore only collects the
    characters and ``##`` characters; the second is given the ``##`` characters, sorted, as
    leading tokens, which fixes their numbers and so every tie. The file holds, in order: the
    special tokens (``[PAD]`` id 0), the characters by code point, the ``##`` characters by code
    point, then the pieces in the order the trainer merged them.
    """
    texts = texts if isinstance(texts, (list, tuple)) else list(texts)  # read twice
    options = dict(min_frequency=min_frequency, limit_alphabet=_EVERY_CHARACTER, show_progress=False)
    survey = _wordpiece_trainer()
    survey.train_from_iterator(texts, vocab_size=0, special_tokens=list(SPECIAL_TOKENS), **options)
    found = set(survey.get_vocab()) - set(SPECIAL_TOKENS)
    continuations = sorted(t for t in found if t.startswith("##"))
    characters = sorted(found - set(continuations))
    fixed = list(SPECIAL_TOKENS) + characters + continuations
    if len(fixed) > vocab_size:
        log.warning("the text has %d distinct characters (and %d of them follow another inside a word, which needs "
                    "a ##-token too): the vocabulary keeps all of them, %d tokens with the %d special ones, more "
                    "than tokenizer.vocab_size %d, and no multi-character pieces", len(characters),
                    len(continuations), len(fixed), len(SPECIAL_TOKENS), vocab_size)
    trainer = _wordpiece_trainer()
    trainer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *continuations],
                                **options)
    by_id = sorted(trainer.get_vocab().items(), key=lambda item: item[1])
    pieces = [token for token, _ in by_id if token not in fixed]
    assert set(fixed) <= {token for token, _ in by_id}, "the trainer dropped a character"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = out_dir / "vocab.txt"
    vocab_file.write_text("".join(token + "\n" for token in fixed + pieces), encoding="utf-8")
    tokenizer = _as_gpt2_vocabulary(BertTokenizer(vocab_file=str(vocab_file)))
    tokenizer.save_pretrained(str(out_dir))
    check_special_tokens(tokenizer, vocab_file)
    log.info("built a %d-token WordPiece vocabulary in %s: %d characters, %d ##-characters, %d pieces",
             len(tokenizer), out_dir, len(characters), len(continuations), len(pieces))
    log_unk_rate(vocab_file, texts, "the text it was built from")
    return tokenizer


def unk_rate(vocab_file, texts: Iterable[str]) -> tuple[int, int]:
    """(``[UNK]`` tokens, all tokens) when ``texts`` are tokenized with ``vocab_file``.

    Counted with the ``tokenizers`` WordPiece tokenizer set up as BertTokenizer is (same
    normalisation, same greedy longest-match, a word of more than 100 characters is one ``[UNK]``),
    which is much faster on a whole corpus."""
    from tokenizers import BertWordPieceTokenizer

    counter = BertWordPieceTokenizer(str(vocab_file), clean_text=True, handle_chinese_chars=True,
                                     strip_accents=None, lowercase=True)
    unk_id = counter.token_to_id("[UNK]")
    unknown = total = 0
    batch: list[str] = []

    def count(batch):
        nonlocal unknown, total
        for encoding in counter.encode_batch(batch, add_special_tokens=False):
            total += len(encoding.ids)
            unknown += encoding.ids.count(unk_id)

    for text in texts:
        batch.append(text)
        if len(batch) == 1024:
            count(batch)
            batch = []
    count(batch)
    return unknown, total


def log_unk_rate(vocab_file, texts: Iterable[str], what: str) -> None:
    """One INFO line: the share of ``[UNK]`` tokens when ``texts`` are tokenized with ``vocab_file``
    (none when there is no text)."""
    unknown, total = unk_rate(vocab_file, texts)
    if total == 0:
        return
    log.info("[UNK] rate of %s on %s: %.4f%% (%d of %d tokens)", vocab_file, what,
             100.0 * unknown / max(total, 1), unknown, total)


_SPACE_NEXT_TO_NON_ASCII = re.compile(r"\s+(?=[^\x00-\x7f])|(?<=[^\x00-\x7f])\s+")


def decode(tokenizer, ids) -> str:
    """Token ids -> text, without the spaces WordPiece decoding puts between Chinese characters.

    Spaces between ASCII words ("GPT 2 model") are kept; only those touching a non-ASCII
    character go.
    """
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return _SPACE_NEXT_TO_NON_ASCII.sub("", text).strip()
