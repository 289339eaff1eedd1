"""The compiled model graphs: the one place for each model's forward + loss as a MindSpore Cell.

A graph here takes its weights as a dict of MindSpore Parameters keyed by Hugging Face name and
returns its loss as (sum, count) pairs, so that a training step can add gradients of the sums over
micro-batches or processes before dividing once. Each module also lists the Hugging Face names it
needs (``hf_parameter_names``) and refuses, with ``NotImplementedError`` naming the setting, any
configuration whose arithmetic it does not implement.

- :mod:`ms_gpt2.engine.graphs.bert`: ``BertForPreTraining`` (MLM + NSP).

GPT-2's graph (``ms_gpt2.engine.step.GPT2Loss``) is to move here too.
"""
