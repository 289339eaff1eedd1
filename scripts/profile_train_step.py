#!/usr/bin/env python
"""Where one GPT-2-small training step's time goes on ms_gpt2 (mindtorch on MindSpore).

Splits a step (the bench's workload: batch 4 x 256, AdamW, clipping) into forward+backward,
gradient clipping and the optimizer update, then lists the functions that took the most time
under cProfile. Used for docs/performance.md:

    .venv/bin/python scripts/profile_train_step.py [--steps 2] [--batch 4] [--length 256]
"""
import argparse
import cProfile
import io
import pstats
import time

from ms_gpt2.infra import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    runtime.setup(args.device, seed=0)

    import torch
    from mindtorch import autograd

    from ms_gpt2.bench import gpt2 as bench, workloads

    spec = dict(bench.FULL, train_batch=args.batch, train_len=args.length)
    model = workloads.build_model(spec, runtime.ensure().torch_device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = workloads.tokens(spec, (args.batch, args.length)).to(runtime.ensure().torch_device)
    grad_fn = autograd.value_and_grad(lambda b: model(input_ids=b, labels=b).loss, params)

    def phases():
        t0 = time.perf_counter()
        loss = grad_fn(batch)
        float(loss)  # wait for the asynchronous kernels
        t1 = time.perf_counter()
        float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        t2 = time.perf_counter()
        optimizer.step()
        float(params[0].sum())
        t3 = time.perf_counter()
        for p in params:
            p.grad = None
        return t1 - t0, t2 - t1, t3 - t2

    phases()  # warm-up
    profiler = cProfile.Profile()
    totals = [0.0, 0.0, 0.0]
    profiler.enable()
    for _ in range(args.steps):
        totals = [a + b for a, b in zip(totals, phases())]
    profiler.disable()
    step = sum(totals) / args.steps
    print(f"step {step:.2f}s = forward+backward {totals[0] / args.steps:.2f}s + clip {totals[1] / args.steps:.2f}s "
          f"+ AdamW {totals[2] / args.steps:.2f}s  ({args.batch * args.length / step:.1f} tokens/s)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print(out.getvalue())


if __name__ == "__main__":
    main()
