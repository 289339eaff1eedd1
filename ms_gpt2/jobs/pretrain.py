"""Causal-LM pretraining on raw text: documents -> tokens -> full blocks -> the MindNLP Trainer.

The pipeline keeps the tutorial's shape: ``TextFileDataset`` -> ``map`` (tokenize) -> pack ->
``shuffle`` -> ``batch``. Documents come from :mod:`ms_gpt2.data.corpus` (one per line, or one JSON
field with ``pretrain.text_field``), checked line by line first so a bad line is named (or skipped)
before any training starts.

**Packing.** Every document is tokenized and followed by a separator (``[SEP]`` for BERT
vocabularies, the end-of-text token for GPT-2 BPE); the documents are concatenated in file order and
cut into blocks of exactly ``data.max_seq_len`` tokens. No ``[PAD]``, no attention mask, no compute
spent on padding; ``labels`` are the ``input_ids`` (the model shifts them). The final partial block
of the training stream is dropped and the log says how many tokens that was. Packing happens once
per run (the block count fixes the number of steps); each epoch then shuffles all the blocks (a
permutation keyed on the data seed and the epoch) and a MindSpore pipeline batches them.

**Held-out documents.** The last ``pretrain.eval_fraction`` of the documents (by document, from
the end of the file: deterministic) are never trained on; they are packed the same way (their
final partial block kept, evaluated as a shorter sequence) and the token-weighted validation loss
and perplexity are written to ``eval.json`` after training, and logged as ``eval_loss`` and
``eval_perplexity`` at each evaluation during training (``training.eval_strategy``).

Output directory: as for ``ms-gpt2 train`` (``checkpoint-N/``, ``model/`` in Hugging Face layout
with the tokenizer and run config, ``loss_log.jsonl``, ``loss_curve.png``, ``train_config.yaml``)
plus ``eval.json``. ``ms-gpt2 train --init-from OUTPUT_DIR/model`` fine-tunes from it.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ms_gpt2.infra import runtime

runtime.ensure()

import mindspore.dataset as msds  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)
from mindnlp.transformers import GPT2Config, GPT2LMHeadModel, GenerationConfig  # noqa: E402

from ms_gpt2.data import tokenization  # noqa: E402
from ms_gpt2.data.tokenization import is_bert_vocabulary, training_vocabulary  # noqa: E402
from ms_gpt2.data.corpus import CorpusSource, parse_document  # noqa: E402
from ms_gpt2.data.nlpcc import DataError  # noqa: E402
from ms_gpt2.infra.errors import UserError  # noqa: E402
from ms_gpt2.models.gpt2 import build_config, generation_config_for, load_model  # noqa: E402
from ms_gpt2.engine import distributed  # noqa: E402
from ms_gpt2.infra.rundir import atomic_write_text  # noqa: E402
from ms_gpt2.jobs.fit import HeldOutEvaluation, fit  # noqa: E402
from ms_gpt2.jobs.run import data_seed, rank0_first, run_job, workdir_for  # noqa: E402

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"


# --------------------------------------------------------------------------------------------------
# Tokens and blocks
# --------------------------------------------------------------------------------------------------

def separator_id(tokenizer) -> int:
    """What ends each document: [SEP] for BERT vocabularies, the end-of-text token for BPE."""
    sep = tokenizer.sep_token_id if is_bert_vocabulary(tokenizer) else tokenizer.eos_token_id
    if sep is None:
        raise tokenization.TokenizerError("the tokenizer has no end-of-text (BPE) or [SEP] (BERT) token "
                                          "to separate documents with")
    return int(sep)


def encode_document(tokenizer, text: str, sep: int) -> np.ndarray:
    """The document's token ids followed by the separator (no [CLS], no truncation)."""
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))  # no over-length warning
    return np.asarray([*ids, sep], dtype=np.int32)


def document_pipeline(lines, tokenizer, sep: int, text_field: str | None = None):
    """TextFileDataset -> map(tokenize): one row of ids (document + separator) per document."""
    def tokenize(line):
        return encode_document(tokenizer, parse_document(str(line.item()), text_field=text_field), sep)

    return lines.map(tokenize, input_columns=["text"], output_columns=["ids"])


def document_ids(pipeline) -> Iterable[np.ndarray]:
    for (ids,) in pipeline.create_tuple_iterator(num_epochs=1, output_numpy=True):
        yield ids


@dataclass
class Packed:
    """A token stream cut into full blocks; ``tail`` is what did not fill a last block."""

    blocks: np.ndarray  # (n_blocks, block_size) int32
    tail: np.ndarray    # (< block_size,) int32
    documents: int
    tokens: int         # every token of the stream: blocks + tail


def pack(documents: Iterable[np.ndarray], block_size: int) -> Packed:
    """Concatenate token arrays in order and cut them into ``block_size`` blocks, nothing lost or repeated."""
    if block_size < 2:
        raise UserError(f"data.max_seq_len={block_size}: a block needs at least 2 tokens")
    arrays = [np.asarray(a, dtype=np.int32).reshape(-1) for a in documents]
    stream = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    n_blocks = len(stream) // block_size
    return Packed(stream[: n_blocks * block_size].reshape(n_blocks, block_size), stream[n_blocks * block_size:],
                  len(arrays), len(stream))


def block_order(n_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s order of the blocks: a permutation of all of them, a function of (seed, epoch).

    A global shuffle (a ``shuffle(buffer)`` over blocks in file order would draw each batch from a
    window of the file once the corpus has more blocks than the buffer), the same on every
    data-parallel rank and again on a resumed run."""
    return np.random.default_rng([seed % 2**63, epoch, 0x626C6B]).permutation(n_blocks)


def block_pipeline(blocks: np.ndarray, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0):
    """Blocks -> [epoch's global shuffle, :func:`block_order`] -> (input_ids, labels = input_ids) -> batch."""
    if shuffle:
        blocks = blocks[block_order(len(blocks), seed, epoch)]
    ds = msds.NumpySlicesDataset({"input_ids": blocks}, shuffle=False)
    ds = ds.map(lambda ids: (ids, ids.copy()), input_columns=["input_ids"], output_columns=["input_ids", "labels"])
    return ds.batch(batch_size)


def heldout_loss(model, packed: Packed, batch_size: int = 8) -> dict:
    """Token-weighted mean next-token loss over every held-out token (the tail as a shorter sequence)."""
    sequences = [packed.blocks[i:i + batch_size] for i in range(0, len(packed.blocks), batch_size)]
    if len(packed.tail) >= 2:
        sequences.append(packed.tail[None, :])
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in sequences:
            ids = torch.tensor(batch.astype(np.int64)).to(model.device)
            n = batch.shape[0] * (batch.shape[1] - 1)  # predicted positions
            total += model(input_ids=ids, labels=ids).loss.item() * n  # float() would round to 5 decimals
            tokens += n
    model.train(was_training)
    if tokens == 0:
        raise UserError("the held-out documents hold fewer than 2 tokens; raise pretrain.eval_fraction")
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "tokens": tokens, "documents": packed.documents}


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------

@dataclass
class PretrainResult:
    output_dir: Path
    model_dir: Path
    global_step: int
    train_loss: float
    loss_curve: Path | None
    train_documents: int
    eval_documents: int
    train_blocks: int
    dropped_tokens: int
    eval: dict | None


def _fresh_model_config(tokenizer, m: dict) -> GPT2Config:
    if is_bert_vocabulary(tokenizer):
        return build_config(tokenizer, m["n_positions"], m["n_embd"], m["n_layer"], m["n_head"], m["dropout"])
    eos = separator_id(tokenizer)
    return GPT2Config(vocab_size=len(tokenizer), n_positions=m["n_positions"], n_embd=m["n_embd"],
                      n_layer=m["n_layer"], n_head=m["n_head"], resid_pdrop=m["dropout"], embd_pdrop=m["dropout"],
                      attn_pdrop=m["dropout"], bos_token_id=eos, eos_token_id=eos,
                      pad_token_id=tokenizer.pad_token_id)  # stock GPT-2: None (packed blocks have no padding)


def _generation_config(tokenizer, gen: dict) -> GenerationConfig:
    if is_bert_vocabulary(tokenizer):
        return generation_config_for(tokenizer, gen["num_beams"], gen["no_repeat_ngram_size"], gen["max_new_tokens"])
    eos = separator_id(tokenizer)
    return GenerationConfig(num_beams=gen["num_beams"], no_repeat_ngram_size=gen["no_repeat_ngram_size"],
                            max_new_tokens=gen["max_new_tokens"], eos_token_id=eos, bos_token_id=eos,
                            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)


def _pack_split(source: CorpusSource, split: str, tokenizer, block_size: int) -> Packed:
    sep = separator_id(tokenizer)
    return pack(document_ids(document_pipeline(source.lines(split), tokenizer, sep, source.report.text_field)),
                block_size)


def pretrain(config: dict, data_path, output_dir, resume=None, overwrite: bool = False) -> PretrainResult:
    """Causal-LM training on a raw-text corpus as configured; returns where everything was written."""
    return run_job(_pretrain, config, data_path, output_dir, resume, overwrite, outputs=[EVAL_FILE])


def _pretrain(config: dict, data_path, output_dir: Path, resume_from: str | None, seed: int) -> PretrainResult:
    mcfg, dcfg, pcfg = config["model"], config["data"], config["pretrain"]
    block_size = int(dcfg["max_seq_len"])

    workdir = workdir_for(output_dir)
    source = CorpusSource.open(data_path, workdir, pcfg["text_field"], pcfg["eval_fraction"], dcfg["skip_bad_lines"])
    tokenizer = rank0_first(lambda: training_vocabulary(config, output_dir, resume_from, source.train_texts,
                                                        bert_only=None, heldout=source.eval_texts))

    if resume_from or mcfg["init_from"]:
        model = load_model(resume_from or mcfg["init_from"], GPT2LMHeadModel, tokenizer=tokenizer)
    else:
        runtime.seed_everything(seed)  # the initial weights follow --seed
        model = GPT2LMHeadModel(_fresh_model_config(tokenizer, mcfg))
    if block_size > model.config.n_positions:
        raise UserError(f"data.max_seq_len={block_size} exceeds the model's n_positions={model.config.n_positions}")
    generation_config = _generation_config(tokenizer, config["generation"])
    model.generation_config = generation_config

    packed = _pack_split(source, "train", tokenizer, block_size)
    log.info("packed %d documents (%d tokens) into %d blocks of %d tokens; dropped the final partial block "
             "of %d tokens", packed.documents, packed.tokens, len(packed.blocks), block_size, len(packed.tail))
    if len(packed.blocks) == 0:
        raise DataError(source.report.path, None, f"the training documents hold {packed.tokens} tokens, fewer than "
                                                  f"one block of data.max_seq_len={block_size}")

    order_seed = data_seed(config)  # training.data_seed, else --seed (which the initial weights follow)

    def pipeline(batch_size, epoch):  # every block once per epoch, in an order keyed on (data seed, epoch)
        return block_pipeline(packed.blocks, batch_size, shuffle=dcfg["shuffle"], seed=order_seed, epoch=epoch)

    held_out = _pack_split(source, "eval", tokenizer, block_size) if source.n_eval else None
    evaluation = HeldOutEvaluation(lambda m, batch_size: heldout_loss(m, held_out, batch_size),
                                   ("loss", "perplexity")) if held_out else None
    fitted = fit(config, model, tokenizer, pipeline, len(packed.blocks), output_dir, resume_from, generation_config,
                 held_out=evaluation, no_held_out=f"pretrain.eval_fraction={pcfg['eval_fraction']} holds out no "
                                                  f"document of this corpus to evaluate on; raise it")
    log.info("pretrained %d steps, final model in %s", fitted.global_step, fitted.model_dir)

    scores = None
    if held_out and distributed.world()[0] == 0:
        batch_size = int(config["training"]["per_device_train_batch_size"])
        scores = heldout_loss(fitted.trainer.model, held_out, batch_size)
        atomic_write_text(output_dir / EVAL_FILE, json.dumps(scores, indent=2))
        log.info("held-out loss %.4f, perplexity %.2f over %d tokens of %d documents", scores["loss"],
                 scores["perplexity"], scores["tokens"], scores["documents"])
    if workdir != output_dir / "work":
        shutil.rmtree(workdir, ignore_errors=True)
    return PretrainResult(output_dir, fitted.model_dir, fitted.global_step, fitted.train_loss, fitted.loss_curve,
                          source.n_train, source.n_eval, len(packed.blocks), len(packed.tail), scores)
