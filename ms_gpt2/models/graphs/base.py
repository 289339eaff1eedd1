"""What the training engine knows of a model: :class:`ModelGraph`.

The engine (:mod:`ms_gpt2.engine.compiled`, :mod:`ms_gpt2.engine.step`) knows no model. A model
family gives it, through one ``ModelGraph``:

* ``names``: its trainable weights by Hugging Face name (the engine copies them in from the model
  and out again, and carries AdamW's state by these names in ``torch.optim.AdamW``'s layout);
* :meth:`loss_net`: a ``mindspore.nn.Cell`` over those weights, ``(*inputs, drop) -> (loss_sum, count)``,
  whose gradients of ``loss_sum`` can be added over micro-batches and processes before the one
  division by the added ``count`` (the step's mean);
* :meth:`inputs` and :meth:`drop`: one micro-batch (a dict of NumPy arrays, the Trainer's batch)
  as the graph's inputs, and its dropout argument (keep-masks or the key the graph draws them
  from), a function of (seed, step, micro-batch) only;
* :meth:`shard`: under data parallel, this rank's part of a global micro-batch, weighted so that
  the (loss_sum, count) pairs summed over ranks are the global batch's (one process at N× batch);
* ``dropout``: whether the graph drops anything (the log says so).

MindFormers' ``TrainOneStepCell`` wraps any network the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

from mindspore import nn


class ModelGraph:
    names: list[str]
    dropout: float = 0.0

    def loss_net(self, weights: dict) -> nn.Cell:
        """The loss graph over ``weights`` (Hugging Face name -> ``mindspore.Parameter``)."""
        raise NotImplementedError

    def inputs(self, batch: dict) -> tuple:
        """One micro-batch as the loss graph's inputs (MindSpore tensors), without ``drop``."""
        raise NotImplementedError

    def shard(self, batch: dict, per_device: int, rank: int, size: int) -> dict:
        """Rows ``[rank * per_device, (rank + 1) * per_device)`` of the global micro-batch ``batch``
        (NumPy arrays), as this rank's batch; a rank past the end of a short last batch gets a
        placeholder row that adds nothing (every rank must join the all-reduce)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the log: the model and what its graph does (dropout, recompute)."""
        return type(self).__name__

    def drop(self, batch: dict, seed: int, step: int, micro: int) -> tuple:
        """The loss graph's last input for micro-batch ``micro`` of optimizer step ``step``: () without dropout."""
        raise NotImplementedError


@dataclass
class Shard:
    """This rank's rows of a global batch and what they weigh."""

    inputs: dict
    local_tokens: float   # scored tokens (their summed loss weights when the batch has loss_weights)
    global_tokens: float

    @property
    def weight(self) -> float:
        return self.local_tokens / self.global_tokens if self.global_tokens else 0.0


def shard_batch(inputs: dict, per_device: int, pad_token_id: int, rank: int, size: int) -> Shard:
    """Rows ``[rank*per_device, (rank+1)*per_device)`` of the global batch ``inputs``.

    A rank whose rows are all past the end of a short last batch gets row 0 as a placeholder with
    ``local_tokens = 0``: it runs the step (every rank must join the all-reduce) and adds nothing.
    """
    from ms_gpt2.models.gpt2 import scored_count

    total = scored_count(inputs["labels"], pad_token_id, inputs.get("loss_weights"))
    rows = len(inputs["labels"])
    start, stop = rank * per_device, min((rank + 1) * per_device, rows)
    if start >= rows:
        return Shard({k: v[:1] for k, v in inputs.items()}, 0, total)
    local = {k: v[start:stop] for k, v in inputs.items()}
    return Shard(local, scored_count(local["labels"], pad_token_id, local.get("loss_weights")), total)
