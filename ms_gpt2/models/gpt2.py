"""The tutorial's model: GPT-2 with a shifted cross-entropy that ignores padding.

``GPT2ForSummarization`` is a ``GPT2LMHeadModel`` (Hugging Face's, running on MindSpore through
mindnlp), so checkpoints are ordinary GPT-2 checkpoints (config.json + model.safetensors) that any
GPT-2 loader reads, and ``generate`` (beam search, KV cache) comes with it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ms_gpt2.infra import runtime
from ms_gpt2.infra.errors import CheckpointError, UserError
from ms_gpt2.data.tokenization import vocab_id_range

runtime.ensure()

import numpy as np  # noqa: E402
import torch  # noqa: E402  (mindtorch)
import torch.nn.functional as F  # noqa: E402
from mindnlp.transformers import GPT2Config, GPT2LMHeadModel, GenerationConfig, NoRepeatNGramLogitsProcessor  # noqa: E402

log = logging.getLogger(__name__)

#: The least a loss sum is divided by, on both engines (here, and the compiled step's ``_floored``):
#: a (weighted) token mean is Σ w·ce / max(Σ w, floor), so a batch that scores nothing has loss 0
#: and one whose weights sum below 1 (e.g. only article tokens at weight 0.1) keeps its exact mean.
LOSS_COUNT_FLOOR = 1e-6


class GPT2ForSummarization(GPT2LMHeadModel):
    """GPT-2 LM whose loss is next-token cross-entropy over every non-[PAD] label.

    Labels are the input ids themselves; logits at position t are scored against the token at
    t + 1 (the shift), and positions whose label is ``config.pad_token_id`` do not count, which
    is how both padding and (optionally) the article are left out of the loss.
    """

    def forward(self, input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None,
                loss_weights=None, **kwargs):
        """``num_items_in_batch`` (the Trainer's, under gradient accumulation): the (weighted) number
        of scored tokens in the whole accumulated batch; the loss is then this micro-batch's share of
        the token mean over all of it (sum / num_items_in_batch), so the micro-batches' gradients add
        up to the full batch's. Without it, the mean over this batch's scored tokens.
        ``loss_weights`` (B, T) float, by label position (``data.article_loss_weight``): the loss
        is then the weighted mean Σ w·ce / Σ w (every division floored at :data:`LOSS_COUNT_FLOOR`)."""
        kwargs["return_dict"] = True
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if labels is not None:
            total, count = token_loss_sum(outputs.logits, labels, self.config.pad_token_id, loss_weights)
            denominator = count if num_items_in_batch is None else num_items_in_batch
            if torch.is_tensor(denominator):
                denominator = denominator.to(total.dtype).clamp(min=LOSS_COUNT_FLOOR)
            else:
                denominator = max(float(denominator), LOSS_COUNT_FLOOR)
            # item assignment: a ModelOutput ignores setattr on a field that was None
            outputs["loss"] = total / denominator
        return outputs


IGNORE_INDEX = -100  # Hugging Face's label value that no loss scores


def ignored_label_id(model) -> int:
    """The label value whose targets the training loss leaves out, for every engine and count.

    :class:`GPT2ForSummarization`'s labels are the padded input ids, so ``[PAD]`` (its config's
    ``pad_token_id``) is not scored. Every other model is Hugging Face's own (``GPT2LMHeadModel``
    for packed pretraining): its loss ignores only ``-100``, which packed blocks never hold, so every
    target is scored, end-of-text included, whether or not the tokenizer has a pad token (stock
    GPT-2 BPE has none, and aligning the model with it leaves ``pad_token_id`` None)."""
    if isinstance(model, GPT2ForSummarization):
        pad = model.config.pad_token_id
        if pad is None:
            raise CheckpointError("the summarization model has no pad_token_id: load it with its BERT vocabulary "
                                  "(load_model(..., tokenizer=...) sets [PAD])")
        return int(pad)
    return IGNORE_INDEX


def scored_count(labels, pad_id: int, weights=None):
    """:func:`loss_token_count` for host arrays (NumPy, or anything with ``asnumpy``): an int, or
    with ``weights`` their float sum over the scored targets."""
    def host(x):
        return x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x)

    scored = host(labels)[..., 1:] != pad_id
    if weights is None:
        return int(scored.sum())
    return float((host(weights)[..., 1:].astype(np.float64) * scored).sum())


def loss_token_count(labels, pad_id: int, weights=None):
    """How many targets the loss scores in ``labels`` (B, T): positions 1.. that are not [PAD];
    with ``weights`` (B, T, by label position), the sum of their weights (float)."""
    scored = labels[..., 1:] != pad_id
    if weights is None:
        return scored.sum()
    return (weights[..., 1:].float() * scored.float()).sum()


def token_loss_sum(logits, labels, pad_id: int, weights=None):
    """(sum of next-token cross-entropies over the scored targets, their count), as float32 / int.

    Logits at position t are scored against the label at t + 1; labels equal to ``pad_id`` (the
    padding, and the article under ``summary_only_loss``) are not scored. A batch's mean loss is
    sum / count; over several micro-batches or devices, add the sums and the counts first.
    With ``weights`` (B, T, float, by label position): (Σ w·ce, Σ w) over the scored targets.
    """
    shifted = logits[..., :-1, :]                                # (B, T-1, V) predictions for t+1
    targets = labels[..., 1:].to(torch.long)                     # (B, T-1)
    if weights is None:
        total = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]).float(), targets.reshape(-1),
                                ignore_index=pad_id, reduction="sum")
        return total, loss_token_count(labels, pad_id)
    per_token = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]).float(), targets.reshape(-1),
                                ignore_index=pad_id, reduction="none")
    scored = (targets != pad_id).reshape(-1)
    # zero the ignored entries before weighting: a weight of 0 does not cancel a NaN there (the full
    # suite once got a NaN loss here, order-dependent, never in a fresh process: presumably pooled
    # memory the CPU kernel leaves unset at ignored entries)
    per_token = torch.where(scored, per_token, torch.zeros_like(per_token))
    w = weights[..., 1:].float().reshape(-1) * scored.float()
    return (per_token * w).sum(), w.sum()


def build_config(tokenizer, n_positions=1024, n_embd=768, n_layer=12, n_head=12, dropout=0.1) -> GPT2Config:
    """GPT-2 geometry around a BERT vocabulary; [CLS] starts, [SEP] ends, [PAD] pads.

    (The tutorial sets ``eos_token_id = config.sep_token_id``, an attribute GPT2Config does not
    have, so generation never stopped at [SEP]; the ids are taken from the tokenizer here.)
    """
    return GPT2Config(
        vocab_size=vocab_id_range(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def generation_config_for(tokenizer, num_beams=5, no_repeat_ngram_size=2, max_new_tokens=50) -> GenerationConfig:
    return GenerationConfig(
        num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id, do_sample=False,
    )


#: ``generation.no_repeat_ngram_scope``: the generated tokens only, or the whole sequence (prompt included)
NGRAM_SCOPES = ("summary", "sequence")


class NoRepeatNGramInContinuation(NoRepeatNGramLogitsProcessor):
    """Hugging Face's no-repeat-n-gram ban, applied to the tokens after the prompt only."""

    def __init__(self, ngram_size: int, prompt_length: int):
        super().__init__(ngram_size)
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        return super().__call__(input_ids[:, self.prompt_length:], scores)


def check_length(model, prompt_length: int, max_new_tokens: int = 0, option: str = "--max-new-tokens") -> None:
    """The one check that a prompt plus ``max_new_tokens`` fits the model's ``n_positions``
    (generation and summaries alike); ``option`` names the setting to lower in the message."""
    limit = model.config.n_positions
    if prompt_length > limit:
        raise UserError(f"the prompt is {prompt_length} tokens, longer than the model's n_positions={limit}")
    if prompt_length + max_new_tokens > limit:
        raise UserError(f"prompt ({prompt_length} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                        f"model's n_positions={limit}; lower {option} to {limit - prompt_length} or less")


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_checkpoint_dir(path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face GPT-2 checkpoint directory)")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise CheckpointError(f"{path}: no weights ({' or '.join(WEIGHT_FILES[:2])})")
    return path


def load_model(path, cls=GPT2ForSummarization, tokenizer=None):
    """A GPT-2 from a local checkpoint directory (never a hub), checked against the vocabulary.

    ``tokenizer``: every id it can produce must have an embedding row.
    """
    path = check_checkpoint_dir(path)
    try:
        model = cls.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # corrupt weights / config: say which directory
        raise CheckpointError(f"{path}: cannot load GPT-2 checkpoint: {err}") from err
    vocab_size = vocab_id_range(tokenizer) if tokenizer is not None else None
    if vocab_size is not None and vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {vocab_size} tokens but the model's vocab_size is "
                              f"{model.config.vocab_size}; use the vocabulary the model was trained with")
    if tokenizer is not None and model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        # most checkpoints' config.json (OpenAI's gpt2, uer's) name no pad token: take the vocabulary's
        model.config.pad_token_id = int(tokenizer.pad_token_id)
    return model
