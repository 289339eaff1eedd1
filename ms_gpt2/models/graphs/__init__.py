"""The compiled model graphs: the one place for each model's forward + loss as a MindSpore Cell.

A graph here takes its weights as a dict of MindSpore Parameters keyed by Hugging Face name and
returns its loss as (sum, count) pairs, so that a training step can add gradients of the sums over
micro-batches or processes before dividing once. Each module also lists the Hugging Face names it
needs (``hf_parameter_names``), refuses, with ``NotImplementedError`` naming the setting, any
configuration whose arithmetic it does not implement, and gives the engine a
:class:`~ms_gpt2.models.graphs.base.ModelGraph` (:func:`graph_for`).

- :mod:`ms_gpt2.models.graphs.gpt2`: GPT-2's causal-LM / summarization loss (token weights included).
- :mod:`ms_gpt2.models.graphs.bert`: ``BertForPreTraining`` (MLM + NSP).
"""
from __future__ import annotations


def graph_for(model, precision, recompute: bool = False, dropout_source: str = "host"):
    """The :class:`~ms_gpt2.models.graphs.base.ModelGraph` of ``model`` (a Hugging Face model on
    mindtorch); ``NotImplementedError`` names what no graph here computes."""
    from ms_gpt2.models.graphs.bert import BertGraph
    from ms_gpt2.models.graphs.gpt2 import GPT2Graph

    kind = type(model).__name__
    config_kind = getattr(model.config, "model_type", None)
    if config_kind == "gpt2":
        return GPT2Graph(model, precision, recompute, dropout_source)
    if config_kind == "bert" and any(cls.__name__ == "BertForPreTraining" for cls in type(model).__mro__):
        return BertGraph(model, precision, recompute, dropout_source)
    raise NotImplementedError(f"a {kind} (model_type {config_kind!r}): the compiled engine has graphs for GPT-2 "
                              "language models and BertForPreTraining")
