"""The eager engine's random streams: every draw moves the generator on, a restored state resumes
the stream, and each data-parallel rank draws its own dropout masks (rank 0 the one-process ones)."""
import numpy as np
import pytest

from ms_gpt2.engine import distributed


def _dropout_masks(n=3, shape=(4, 16)):
    import torch
    import torch.nn.functional as F

    return [F.dropout(torch.ones(*shape), 0.5, True).numpy() != 0 for _ in range(n)]


def test_each_draw_moves_the_generator_on_and_a_seed_repeats_the_stream():
    """mindtorch's CPU Generator kernel returned the same (seed, offset) on every draw, so a seeded
    run's dropout drew one mask per shape for the whole run (and rand the same numbers)."""
    import torch

    torch.manual_seed(5)
    first = _dropout_masks()
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    a, b = torch.rand(8).numpy(), torch.rand(8).numpy()
    assert not np.array_equal(a, b)
    torch.manual_seed(5)
    again = _dropout_masks()
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)


def test_a_restored_rng_state_resumes_the_stream_where_it_was_saved():
    import torch

    torch.manual_seed(11)
    _dropout_masks(2)
    state = torch.get_rng_state()
    want = _dropout_masks(2)
    torch.manual_seed(999)
    torch.set_rng_state(state)
    for x, y in zip(want, _dropout_masks(2)):
        np.testing.assert_array_equal(x, y)


def _masks_on(rank, monkeypatch, restore=None):
    """Rank ``rank`` of 2 seeds 7 (as every rank's Trainer does) or restores ``restore``, takes its
    own stream, and draws."""
    import torch

    monkeypatch.setattr(distributed, "world", lambda: (rank, 2))
    torch.manual_seed(7)
    if restore is not None:
        torch.set_rng_state(restore)
    distributed.rank_random_stream()
    return _dropout_masks()


def test_eager_data_parallel_ranks_draw_their_own_masks_and_rank_0_the_one_process_ones(monkeypatch):
    import torch

    torch.manual_seed(7)
    one_process = _dropout_masks()
    rank0, rank1 = _masks_on(0, monkeypatch), _masks_on(1, monkeypatch)
    for x, y in zip(one_process, rank0):
        np.testing.assert_array_equal(x, y)
    assert all(not np.array_equal(x, y) for x, y in zip(rank0, rank1))

    # --resume: every rank restores rank 0's saved state, then takes its own stream again, at the
    # saved offset: rank 1 goes on with what its uninterrupted stream would draw
    torch.manual_seed(7)
    _dropout_masks(1)
    saved = torch.get_rng_state()
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    torch.manual_seed(7)
    distributed.rank_random_stream()
    _dropout_masks(1)
    rank1_uninterrupted = _dropout_masks()
    resumed = _masks_on(1, monkeypatch, restore=saved)
    for x, y in zip(rank1_uninterrupted, resumed):
        np.testing.assert_array_equal(x, y)


def test_the_eager_data_parallel_trainer_takes_its_rank_stream_after_seeding_and_restoring(monkeypatch):
    import torch

    calls = []

    class Base:
        def __init__(self):
            torch.manual_seed(7)  # what the Trainer's __init__ does (set_seed)

        def _load_rng_state(self, checkpoint):
            calls.append(checkpoint)
            torch.manual_seed(7)

    class Trainer(distributed.DataParallelMixin, Base):
        pass

    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    torch.manual_seed(7)
    rank0 = _dropout_masks()
    trainer = Trainer()
    assert all(not np.array_equal(x, y) for x, y in zip(rank0, _dropout_masks()))
    trainer._load_rng_state("checkpoint-2")
    assert calls == ["checkpoint-2"]
    assert all(not np.array_equal(x, y) for x, y in zip(rank0, _dropout_masks()))


@pytest.mark.parametrize("offset", [0, 36])
def test_set_generator_offset(offset):
    import torch

    from ms_gpt2.infra.compat import set_generator_offset

    torch.manual_seed(3)
    set_generator_offset(torch.default_generator, offset)
    assert [int(v.item()) for v in torch.default_generator._step(0)] == [3, offset]
