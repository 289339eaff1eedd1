#!/usr/bin/env python
"""Peak memory of compiled training without and with recomputation (training.gradient_checkpointing),
each in a fresh process, at a chosen shape (``ms-gpt2 bench --recompute-memory`` runs GPT-2 small):

    .venv/bin/python scripts/recompute_memory.py --n-layer 4 --n-embd 256 --batch 4 --length 256
"""
import argparse
import json

from ms_gpt2.bench import gpt2 as bench
from ms_gpt2.infra import runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("n-layer", 4), ("n-embd", 256), ("n-head", 4), ("batch", 4), ("length", 256),
                          ("vocab", 21128), ("steps", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    runtime.setup(args.device, seed=0)
    spec = dict(bench.FULL, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, train_batch=args.batch,
                train_len=args.length, n_positions=max(args.length, 64), vocab_size=args.vocab,
                train_steps=args.steps)
    result = bench.recompute_memory(spec)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
