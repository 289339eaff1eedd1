"""Data-parallel training: N processes launched by ``msrun``, one model, gradients summed every step.

mindnlp 0.5.1 cannot do this for us (its ``DistributedDataParallel`` is empty, its process group's
``allreduce`` has no NPU kernel, and the Trainer's ``value_and_grad`` step reduces nothing), so it
is built from MindSpore's own pieces: ``msrun`` starts the workers, ``mindspore.communication.init()``
joins them (HCCL on Ascend, MCCL on CPU; see :func:`ms_gpt2.infra.runtime.setup`), ``ops.AllReduce`` (sum,
which every backend has) reduces.

How a step stays equal to one process's step on the whole global batch:

* **Data.** Every rank builds the *same* shuffled pipeline with *global* batches of
  ``per_device_batch * N`` rows (same seed), and rank r keeps rows ``[r*B, (r+1)*B)`` of each
  (:func:`shard_batch`). So the global batch is exactly the batch a 1-process run with batch ``B*N``
  sees, no example is seen twice per epoch, and every rank agrees on the number of steps. A last,
  short global batch may leave a rank nothing: it then runs a placeholder row that counts for 0.
* **Gradients.** Our loss is a mean over scored (non-``[PAD]``) tokens and ranks hold different
  numbers of them (their summed ``loss_weights`` when examples carry them: then "tokens" below
  means that weight), so per-rank means must not be averaged. Each rank's gradient of its local mean is
  weighted by ``local_tokens / global_tokens`` and the weighted gradients (and losses) are summed
  over ranks (:func:`reduce_gradients`), before the Trainer clips: the sum is the gradient of the
  global token mean. The compiled engine reduces (loss sum, count, grads) instead
  (:class:`AllReduceSum`, usable inside ``mindspore.jit``).
* **Weights.** Rank 0's initial weights are copied to every rank (:func:`broadcast_parameters`);
  equal weights + equal reduced gradients + the same optimizer keep them equal.

Only rank 0 writes files (:func:`is_main`); the callers gate on it.
"""
from __future__ import annotations

import os

from ms_gpt2.models.graphs import base
from ms_gpt2.models.graphs.base import Shard

#: What msrun sets in a worker's environment (``MS_SCHED`` for its scheduler process).
MSRUN_ROLES = ("MS_WORKER", "MS_SCHED")
#: Test hook: a rank that raises at the start of training, to check a failing worker ends the job.
FAIL_RANK_ENV = "MS_GPT2_TEST_FAIL_RANK"


def launched_by_msrun() -> bool:
    return os.environ.get("MS_ROLE") in MSRUN_ROLES


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless it joined an msrun group."""
    from ms_gpt2.infra import runtime

    current = runtime.ensure()
    return current.rank, current.world_size


def is_main() -> bool:
    return world()[0] == 0


def _all_reduce():
    from mindspore import ops

    global _ALL_REDUCE
    if _ALL_REDUCE is None:
        _ALL_REDUCE = ops.AllReduce(ops.ReduceOp.SUM)
    return _ALL_REDUCE


_ALL_REDUCE = None


def all_reduce_sum(tensor):
    """Sum a tensor (mindspore or mindtorch) over all ranks; identity for one process."""
    return _all_reduce()(tensor) if world()[1] > 1 else tensor


def barrier() -> None:
    """Wait until every rank gets here (an all-reduce of one number)."""
    if world()[1] > 1:
        import mindspore

        all_reduce_sum(mindspore.Tensor([1.0], mindspore.float32)).asnumpy()


def maybe_fail_for_test() -> None:
    rank, size = world()
    if size > 1 and os.environ.get(FAIL_RANK_ENV) == str(rank):
        raise RuntimeError(f"rank {rank} failed on purpose ({FAIL_RANK_ENV}={rank})")


# --------------------------------------------------------------------------------------------------
# Weights and gradients (eager engine: mindtorch tensors)
# --------------------------------------------------------------------------------------------------

def _flat(tensors):
    import torch  # mindtorch

    return torch.cat([t.reshape(-1).float() for t in tensors])


def _unflat(flat, like):
    out, start = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[start:start + n].reshape(t.shape).to(t.dtype))
        start += n
    return out


def broadcast_parameters(params) -> None:
    """Copy rank 0's values of ``params`` (mindtorch tensors) to every rank, in place and exactly.

    A sum in which every rank but 0 contributes zeros: exact, and sum is the one reduction every
    backend has."""
    import torch

    params = list(params)
    if world()[1] == 1 or not params:
        return
    flat = _flat([p.detach() for p in params])
    if not is_main():
        flat = torch.zeros_like(flat)
    flat = torch.tensor(all_reduce_sum(flat), device=params[0].device)
    with torch.no_grad():
        for p, value in zip(params, _unflat(flat, params)):
            p.copy_(value)


def reduce_gradients(grads, loss, weight: float):
    """``sum over ranks of weight * (grads, loss)`` as one all-reduce; returns (grads, loss).

    ``weight`` is this rank's ``local scored tokens / global scored tokens``, so the sums are the
    gradient and the value of the global token mean."""
    import torch

    grads = list(grads)
    flat = torch.cat([_flat(grads), loss.detach().reshape(1).float()]) * weight
    flat = torch.tensor(all_reduce_sum(flat), device=loss.device)
    return _unflat(flat[:-1], grads), flat[-1].to(loss.dtype)


def shard_batch(inputs: dict, per_device: int, pad_token_id: int, rank: int | None = None,
                size: int | None = None) -> Shard:
    """This process's rows of the global batch ``inputs`` (:func:`ms_gpt2.models.graphs.base.shard_batch`;
    ``rank``/``size`` default to this process's place in the msrun group)."""
    if rank is None or size is None:
        rank, size = world()
    return base.shard_batch(inputs, per_device, pad_token_id, rank, size)


RANK_STREAM_STRIDE = 2**40  # rank r's random streams are seeded seed + r * this (rank 0: the one-process stream)


def rank_random_stream() -> None:
    """Give this rank its own torch (mindtorch) random stream, so eager dropout draws different masks
    on different ranks: the default generator is re-seeded ``seed + rank * 2**40`` at its current
    offset. Rank 0 (and a single process) keeps the stream it has. Call it after every (re)seeding
    and after a checkpoint's RNG state is restored: only rank 0's state is saved, and every rank
    restores that one."""
    import torch

    from ms_gpt2.infra.compat import set_generator_offset

    rank = world()[0]
    if rank == 0:
        return
    generator = torch.default_generator
    seed, offset = (int(x.item()) for x in generator._step(0))  # pylint: disable=protected-access
    generator.manual_seed((seed + rank * RANK_STREAM_STRIDE) % 2**63)
    set_generator_offset(generator, offset)


class DataParallelMixin:
    """For a Hugging Face ``Trainer`` subclass fed global batches: each rank trains on its shard and
    the gradients are summed over ranks inside ``training_step``, before the Trainer clips them.

    The Trainer itself still believes it is alone (HF/accelerate must not start torch.distributed,
    which mindtorch cannot do), so it logs the reduced loss and clips the reduced gradients the same
    way on every rank; only rank 0 saves checkpoints. Each rank draws its own dropout masks
    (:func:`rank_random_stream`, after the Trainer seeds and after ``--resume`` restores the RNG)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # the Trainer seeds every RNG with args.seed here
        rank_random_stream()

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)  # rank 0's saved state, on every rank
        rank_random_stream()

    def training_step(self, model, inputs, num_items_in_batch=None):
        import torch

        from ms_gpt2.models.gpt2 import ignored_label_id

        shard = shard_batch(inputs, self.args.per_device_train_batch_size, ignored_label_id(model))
        params = [p for p in model.parameters() if p.requires_grad]
        earlier = [p.grad for p in params]
        for p in params:  # the Trainer's value_and_grad adds into .grad: collect this step's alone
            p.grad = None
        # The model's loss is this shard's own token mean (num_items_in_batch = its own token count,
        # so the Trainer does not divide by the accumulation steps either); the weighting below
        # turns it into the global one: local tokens / all scored tokens of the (accumulated) global
        # batch, which is num_items_in_batch (PipelineTrainer counts it on the global batches).
        # (counts are token-weight sums at an article_loss_weight between 0 and 1: floats, never int()ed)
        local = shard.local_tokens if shard.local_tokens > 0 else 1
        loss = super().training_step(model, shard.inputs, torch.tensor(float(local)))
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        total = float(num_items_in_batch) if num_items_in_batch is not None else shard.global_tokens
        reduced, loss = reduce_gradients(grads, loss, shard.local_tokens / total if total else 0.0)
        for p, before, grad in zip(params, earlier, reduced):
            p.grad = grad if before is None else before + grad
        return loss

    def _save_checkpoint(self, model, trial):
        if is_main():
            return super()._save_checkpoint(model, trial)
        return None


class CompiledDataParallelMixin:
    """Put before :class:`~ms_gpt2.engine.trainer.CompiledTrainerMixin`: each rank runs the compiled
    step on its shard of the global batch, and the step's reduce hook (:class:`AllReduceSum`) sums
    the gradients, the loss sum and the token count over ranks before the mean, the clipping and
    AdamW, so every rank applies the same update, equal to one process's on the global batch."""

    @property
    def engine_reduce(self):
        return _all_reduce_cell()()

    def _build_engine(self):
        # Dropout keep-masks are keyed on (seed, step): give each rank its own stream, or every
        # rank would drop the same positions of its rows (rank 0 keeps the one-process stream).
        engine = super()._build_engine()
        engine.seed += world()[0] * 2**40
        return engine

    def training_step(self, model, inputs, num_items_in_batch=None):
        import numpy as np

        # the model's graph knows how its loss splits over rows (GPT-2: tokens; BERT: two means)
        rank, size = world()
        batch = {k: v.cpu().numpy() if hasattr(v, "cpu") else np.asarray(v) for k, v in inputs.items()}
        local = self._ensure_engine().graph.shard(batch, self.args.per_device_train_batch_size, rank, size)
        return super().training_step(model, local, None)

    def _save_checkpoint(self, model, trial):
        if is_main():
            return super()._save_checkpoint(model, trial)
        return None


# --------------------------------------------------------------------------------------------------
# Compiled engine: the reduce hook, graph-mode safe
# --------------------------------------------------------------------------------------------------

def _all_reduce_cell():
    from mindspore import nn, ops

    class AllReduceSum(nn.Cell):
        """``(loss_sum, count, grads) -> the same, summed over ranks``: the compiled step's reduce
        hook (``TrainStep(..., reduce=AllReduceSum())``). Works inside ``mindspore.jit`` (checked
        on CPU/MCCL by tests/test_distributed.py)."""

        def __init__(self):
            super().__init__()
            self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)
            self.hyper_map = ops.HyperMap()

        def construct(self, loss_sum, count, grads):
            return self.all_reduce(loss_sum), self.all_reduce(count), self.hyper_map(self.all_reduce, grads)

    return AllReduceSum


def __getattr__(name):  # AllReduceSum needs mindspore.nn; build it on first use only
    if name == "AllReduceSum":
        return _all_reduce_cell()
    raise AttributeError(name)
