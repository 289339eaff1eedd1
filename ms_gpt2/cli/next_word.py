"""``ms-gpt2 next-word``: the most likely next token of a text and the top-k candidates (ms_gpt2.jobs.generate)."""
from __future__ import annotations

from ms_gpt2.cli.common import POSITIVE, text


def register(subparsers, common) -> None:
    p = subparsers.add_parser("next-word", parents=[common],
                              help="the most likely next token and the top-k candidates")
    p.add_argument("--model", required=True, help="local GPT-2 checkpoint directory (Hugging Face layout)")
    p.add_argument("--text", required=True, type=text)
    p.add_argument("--top-k", type=POSITIVE, default=10, help="how many candidates to list (default 10)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ms_gpt2.models.checkpoints import load_pretrained
    from ms_gpt2.jobs.generate import next_word

    model, tokenizer = load_pretrained(args.model)
    result = next_word(model, tokenizer, args.text, args.top_k)
    print(result.text)
    for token, prob in result.candidates:
        print(f"  {prob:8.4f}  {token!r}")
    return 0
