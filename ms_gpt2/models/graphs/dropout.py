"""Dropout keep-masks for the compiled step: a pure function of (seed, step, micro-batch, rank, site).

A training step needs fresh keep-masks at every dropout site (Hugging Face GPT-2's three: the
embeddings, the attention weights and each residual branch), and four properties must hold:

1. a seeded run repeats exactly;
2. a run killed and resumed at step s draws the masks the uninterrupted run drew at step s;
3. recomputation (``gradient_checkpointing``) replays the masks of the first forward pass;
4. data-parallel ranks draw different masks.

All four follow if a mask is a pure function of (seed, global step, micro-batch, rank, site)
and of nothing else (no generator state carried between steps). Two sources compute such masks:

* ``"device"``: drawn inside the graph by a counter-based hash. MindSpore's keyed random ops
  (``DropoutExt``/``DropoutGenMaskExt``/``UniformExt`` take seed and offset tensors) have Ascend
  kernels only; on CPU they fail kernel selection (measured with 2.7.0), and the stateful ones
  (``ops.Dropout``, ``ops.uniform``) carry hidden state that a resume cannot restore. So the graph
  hashes each element's index with a per-(step, micro-batch, rank, site) key using int32
  multiply/xor/shift ops, which every backend has (:func:`keep_mask`): murmur3's 32-bit finaliser,
  ``keep = (h mod 2^24) >= round(p * 2^24)``. Nothing crosses from the host but one int32 key per
  step (and, once per batch shape, the constant hashed indices). :func:`keep_mask_numpy` is the same function in NumPy (tests check they agree bit for bit).
* ``"host"``: drawn on the host with NumPy's PCG64 keyed on (seed, step, micro-batch) and passed
  in as inputs (``ms_gpt2`` before in-graph masks). On CPU the host *is* the device, and NumPy
  draws about ten times faster than MindSpore's CPU integer kernels hash (3.1 M elements: 6 ms vs
  68 ms on the 2-core development machine), so the CPU keeps it by default.

``"auto"`` (the default) is ``"host"`` on CPU and ``"device"`` elsewhere; the data-parallel rank enters
both through the seed (``seed + rank * 2**40``, :mod:`ms_gpt2.engine.distributed`).
"""
from __future__ import annotations

import functools

import numpy as np
from mindspore import Tensor, ops

SOURCES = ("auto", "host", "device")
_BITS = 24                           # keep decisions compare 24 random bits with round(p * 2^24)
_LOW = (1 << _BITS) - 1
_C1, _C2 = 0x85EBCA6B, 0xC2B2AE35    # murmur3 fmix32 multipliers
_GOLDEN = 0x9E3779B9


def _as_int32(value: int) -> np.int32:
    return np.uint32(value & 0xFFFFFFFF).view(np.int32)


_M1, _M2 = Tensor(_as_int32(_C1)), Tensor(_as_int32(_C2))


def resolve_source(source: str, device: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"dropout mask source must be one of {', '.join(SOURCES)}, not {source!r}")
    if source == "auto":
        return "host" if device == "cpu" else "device"
    return source


# -- the hash, in the graph ------------------------------------------------------------------------
def _shr(h, bits: int):
    """Logical right shift of int32 (arithmetic shift, then the sign bits masked off)."""
    return ops.bitwise_and(ops.bitwise_right_shift(h, bits), (1 << (32 - bits)) - 1)


def fmix32(h):
    """murmur3's finaliser on int32 tensors (two's-complement wrap-around = uint32 arithmetic)."""
    h = ops.bitwise_xor(h, _shr(h, 16))
    h = ops.mul(h, _M1)
    h = ops.bitwise_xor(h, _shr(h, 13))
    h = ops.mul(h, _M2)
    return ops.bitwise_xor(h, _shr(h, 16))


@functools.lru_cache(maxsize=8)
def index_hash(shape: tuple) -> Tensor:
    """fmix32(1, 2, 3, ...) over ``shape``, int32: one constant per shape (computed once, cached, and
    kept on the device), shared by every site of that shape; each site mixes in its own key."""
    n = int(np.prod(shape))
    return Tensor(_fmix_np(np.arange(1, n + 1, dtype=np.uint32)).view(np.int32).reshape(shape))


def site_constant(site: int) -> Tensor:
    """What tells site ``site`` (0: embeddings, 1 + 3*layer + j: the layer's j-th site) apart (host side)."""
    return Tensor(_as_int32(fmix_int((site + 1) * _GOLDEN)))


def site_key(key, constant):
    """The key of one dropout site in one step: the step key mixed with the site's constant."""
    return fmix32(ops.bitwise_xor(key, constant))


def keep_mask(hashed_index, key, threshold: int):
    """bool keep-mask: ``fmix32(index_hash ^ key) mod 2^24 >= threshold`` (threshold = round(p * 2^24))."""
    h = fmix32(ops.bitwise_xor(hashed_index, key))
    return ops.ge(ops.bitwise_and(h, _LOW), threshold)


def apply_keep(x, mask, scale):
    """Inverted dropout with a given keep-mask: x * mask / (1 - p) (``scale`` = 1 / (1 - p))."""
    return ops.mul(ops.mul(x, ops.cast(mask, x.dtype)), scale)


def threshold(p: float) -> int:
    return int(round(float(p) * (1 << _BITS)))


# -- the same, in NumPy (host-side key derivation; the reference the tests compare with) ------------
def fmix_int(h: int) -> int:
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * _C1) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _C2) & 0xFFFFFFFF
    return h ^ (h >> 16)


def _fmix_np(h: np.ndarray) -> np.ndarray:
    h = h.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(_C1)
    h ^= h >> np.uint32(13)
    h *= np.uint32(_C2)
    return h ^ (h >> np.uint32(16))


def step_key(seed: int, step: int, micro: int = 0) -> int:
    """The int32 key of one micro-batch of one optimizer step: every 32-bit word of (seed, step,
    micro) mixed in turn. The data-parallel rank is part of the seed."""
    h = 0x6D735F67
    for word in (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, step & 0xFFFFFFFF, step >> 32, micro):
        h = fmix_int(h ^ fmix_int(word + _GOLDEN))
    return int(_as_int32(h))


def keep_mask_numpy(shape: tuple, key: int, site: int, p: float) -> np.ndarray:
    """:func:`keep_mask` of site ``site`` under step key ``key``, computed in NumPy."""
    n = int(np.prod(shape))
    k = np.uint32(fmix_int((key & 0xFFFFFFFF) ^ fmix_int((site + 1) * _GOLDEN)))
    h = _fmix_np(_fmix_np(np.arange(1, n + 1, dtype=np.uint32)) ^ k)
    return ((h & np.uint32(_LOW)) >= np.uint32(threshold(p))).reshape(shape)


# -- host masks ------------------------------------------------------------------------------------
def host_masks(shapes, p: float, seed: int, step: int, micro: int = 0) -> tuple:
    """Keep-masks for ``shapes`` from NumPy's PCG64 keyed on (seed, step, micro): the ``"host"``
    source (micro-batch 0's key is the one a step without accumulation uses)."""
    rng = np.random.default_rng([seed % 2**63, step, 0x6D735F67] + ([micro] if micro else []))
    return tuple(Tensor(rng.random(shape, dtype=np.float32) >= np.float32(p)) for shape in shapes)
