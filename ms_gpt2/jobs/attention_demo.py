"""``ms-gpt2 attention-demo``: the tutorial's attention derivation, step by step, on real tensors."""
from __future__ import annotations

import numpy as np

from ms_gpt2.infra import runtime

runtime.ensure()

from mindnlp.transformers import GPT2Config, GPT2Model  # noqa: E402

from ms_gpt2.models.attention_check import max_abs_difference  # noqa: E402


def run(batch: int = 1, seq_len: int = 10, n_embd: int = 768, n_head: int = 12,
        print_fn=print) -> float:
    """Print each step's shape for one GPT-2 attention layer; return max |library - ours|."""
    config = GPT2Config(vocab_size=1000, n_positions=max(seq_len, 16), n_embd=n_embd, n_layer=1,
                        n_head=n_head)
    model = GPT2Model(config).eval()
    rng = np.random.default_rng(runtime.ensure().seed or 0)
    input_ids = rng.integers(0, config.vocab_size, size=(batch, seq_len))

    print_fn(f"GPT-2 masked multi-head self-attention: batch={batch}, seq_len={seq_len}, "
             f"n_embd={n_embd}, n_head={n_head}, head_dim={n_embd // n_head}")
    print_fn(f"{'step':<28} shape")

    def trace(step, tensor):
        print_fn(f"{step:<28} {tuple(tensor.shape)}")

    diff = max_abs_difference(model, input_ids, trace=trace)
    print_fn(f"max |library GPT2Attention - hand-derived| = {diff:.3e}")
    return diff
