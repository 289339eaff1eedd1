#!/usr/bin/env python
"""Where one GPT-2-small training step's time goes on ms_gpt2.

``--engine compiled`` (the default, what ``ms-gpt2 train`` runs): the bench's workload (batch 4 x 256,
dropout 0.1, AdamW with weight decay 0.01, clipping 1.0) on :class:`~ms_gpt2.engine.compiled.CompiledEngine`,
split into the host's share (the batch converted, the dropout keep-masks drawn), the forward graph
alone, forward + backward as a graph of its own, and the whole compiled step; the update (the
gradients' mean, norm, clipping and AdamW) is the step less the other two. Each part is timed
``--steps`` times after a warm-up (its own compilation) and the median printed.

``--engine eager`` (the tutorial's mindtorch path): forward+backward, gradient clipping and the
optimizer update, then the functions that took the most time under cProfile.

Used for docs/performance.md:

    .venv/bin/python scripts/profile_train_step.py [--engine compiled] [--steps 3] [--batch 4] [--length 256]
"""
import argparse
import cProfile
import io
import pstats
import time

from ms_gpt2.infra import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("compiled", "eager"), default="compiled")
    parser.add_argument("--steps", type=_positive, default=3)
    parser.add_argument("--batch", type=_positive, default=4)
    parser.add_argument("--length", type=_positive, default=256)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    from ms_gpt2.bench.gpt2 import FULL

    if args.length > FULL["n_positions"]:
        parser.error(f"--length {args.length} is longer than GPT-2 small's {FULL['n_positions']} positions")
    runtime.setup(args.device, seed=0)
    if args.engine == "compiled":
        compiled(args)
        return

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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def compiled(args) -> None:
    import statistics

    import mindspore

    from ms_gpt2.bench import gpt2 as bench, workloads
    from ms_gpt2.engine.compiled import CompiledEngine
    from ms_gpt2.infra import compat

    spec = dict(bench.FULL, train_batch=args.batch, train_len=args.length)
    model = workloads.build_model(spec, runtime.ensure().torch_device)
    model.train()
    engine = CompiledEngine(model, {n: 0.01 for n, _ in model.named_parameters()}, max_grad_norm=1.0, seed=0)
    engine.release_model(model)  # as the Trainer does: one copy of the weights
    batch = {"input_ids": workloads.tokens(spec, (args.batch, args.length)).numpy()}
    net, grad_fn = engine.step.net, engine.step.grad_fn

    @mindspore.jit
    def forward(*inputs):
        return net(*inputs)[0]

    @mindspore.jit
    def forward_backward(*inputs):   # every gradient an output, so that none is pruned
        (loss_sum, _), grads = grad_fn(*inputs)
        return loss_sum, grads

    def host(step):
        return engine.graph_inputs(batch, step)

    def timed(fn):
        times = []
        for step in range(args.steps + 1):   # the first: compilation
            inputs = host(step)
            start = time.perf_counter()
            fn(inputs, step)
            compat.synchronize()   # the graph has run (asnumpy() of its outputs would add time of its own)
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])

    parts = {
        "host (batch, keep-masks)": timed(lambda inputs, step: host(step)),
        "forward": timed(lambda inputs, step: forward(*inputs)),
        "forward+backward": timed(lambda inputs, step: forward_backward(*inputs)),
        "whole step": timed(lambda inputs, step: engine.train_step(batch, 1e-4, step)),
    }
    host_s, fwd, fwd_bwd, whole = parts.values()
    update = whole - host_s - fwd_bwd
    print(f"compiled step, batch {args.batch} x {args.length}, median of {args.steps}:")
    for name, seconds in parts.items():
        print(f"  {name:26s} {seconds:6.2f}s")
    print(f"  {'backward (f+b - forward)':26s} {fwd_bwd - fwd:6.2f}s  ({(fwd_bwd - fwd) / fwd:.2f}x the forward)")
    print(f"  {'update (step - host - f+b)':26s} {update:6.2f}s  ({update / whole:.0%} of the step)")
    print(f"  {args.batch * args.length / whole:.1f} tokens/s")


if __name__ == "__main__":
    main()
