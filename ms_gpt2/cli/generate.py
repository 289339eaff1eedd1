"""``ms-gpt2 generate``: continue a prompt by greedy decoding, beam search or sampling (ms_gpt2.jobs.generate)."""
from __future__ import annotations

import sys

from ms_gpt2.cli.common import NON_NEGATIVE, POSITIVE, number, text


def register(subparsers, common) -> None:
    p = subparsers.add_parser("generate", parents=[common],
                              help="continue a prompt: greedy, beam search or sampling")
    p.add_argument("--model", required=True, help="local GPT-2 checkpoint directory (Hugging Face layout)")
    p.add_argument("--prompt", required=True, type=text)
    p.add_argument("--max-new-tokens", type=POSITIVE, default=50)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy/beam (uses --seed)")
    p.add_argument("--temperature", type=number(float, 0, low_open=True, what="above 0"), default=1.0)
    p.add_argument("--top-k", type=NON_NEGATIVE, default=0, help="sample from the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=number(float, 0, 1, low_open=True, what="in (0, 1]"), default=1.0,
                   help="nucleus sampling threshold")
    p.add_argument("--num-beams", type=POSITIVE, default=1, help="beam search width (1: greedy)")
    p.add_argument("--repetition-penalty", type=number(float, 0, low_open=True, what="above 0"), default=1.0)
    p.add_argument("--no-repeat-ngram-size", type=NON_NEGATIVE, default=0)
    p.add_argument("--no-stream", action="store_true", help="print once at the end instead of as tokens arrive")
    p.add_argument("--library-decode", action="store_true",
                   help="greedy through Hugging Face generate instead of the compiled decoder (same tokens, slower)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ms_gpt2.models.checkpoints import load_pretrained
    from ms_gpt2.jobs.generate import generate

    model, tokenizer = load_pretrained(args.model)
    result = generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams,
                      repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                      seed=args.seed, stream=None if args.no_stream else sys.stdout, echo_prompt=True,
                      compiled=not args.library_decode)
    if args.no_stream:
        print(args.prompt + result.text)
    return 0
