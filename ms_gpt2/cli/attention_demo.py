"""``ms-gpt2 attention-demo``: the hand-derived masked attention, shape by shape (ms_gpt2.jobs.attention_demo)."""
from __future__ import annotations

from ms_gpt2.cli.common import POSITIVE
from ms_gpt2.infra.errors import UserError


def register(subparsers, common) -> None:
    p = subparsers.add_parser("attention-demo", parents=[common],
                              help="walk through the hand-derived masked attention, shape by shape")
    p.add_argument("--batch", type=POSITIVE, default=1)
    p.add_argument("--seq-len", type=POSITIVE, default=10)
    p.add_argument("--n-embd", type=POSITIVE, default=768)
    p.add_argument("--n-head", type=POSITIVE, default=12)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ms_gpt2.jobs import attention_demo as walkthrough

    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    diff = walkthrough.run(args.batch, args.seq_len, args.n_embd, args.n_head)
    return 0 if diff < 1e-5 else 1
