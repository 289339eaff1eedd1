"""BERT models from the ``model:`` keys or from a local checkpoint (mindnlp's, Hugging Face's on MindSpore):
what BERT pretraining and fine-tuning build and load."""
from __future__ import annotations

from pathlib import Path

from ms_gpt2.infra import runtime

runtime.ensure()

from mindnlp.transformers import BertConfig, BertForPreTraining  # noqa: E402

from ms_gpt2.data import tokenization  # noqa: E402
from ms_gpt2.infra.errors import CheckpointError  # noqa: E402


def bert_config(tokenizer, m: dict) -> BertConfig:
    """BERT geometry from the ``model:`` keys; the FFN is 4x the width, as in BERT and GPT-2."""
    return BertConfig(vocab_size=tokenization.vocab_id_range(tokenizer), hidden_size=m["n_embd"],
                      num_hidden_layers=m["n_layer"], num_attention_heads=m["n_head"], intermediate_size=4 * m["n_embd"],
                      max_position_embeddings=m["n_positions"], hidden_dropout_prob=m["dropout"],
                      attention_probs_dropout_prob=m["dropout"], type_vocab_size=2,
                      pad_token_id=tokenizer.pad_token_id)


def load_bert(path, vocab_size: int | None = None) -> BertForPreTraining:
    """A BertForPreTraining from a local Hugging Face directory, checked against the vocabulary."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face BERT checkpoint directory)")
    try:
        model = BertForPreTraining.from_pretrained(str(path), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot load a BertForPreTraining checkpoint: {err}") from err
    if vocab_size is not None and vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer needs {vocab_size} ids but the model's vocab_size is "
                              f"{model.config.vocab_size}; use the vocabulary the model was trained with")
    return model
