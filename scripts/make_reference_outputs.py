#!/usr/bin/env python
"""Build tiny random GPT-2 checkpoints and record Hugging Face *PyTorch* outputs for them.

ms_gpt2's tests load the same checkpoints on MindSpore and must reproduce these numbers: logits
within 1e-4, greedy and beam-search token ids exactly. Real PyTorch is not a project dependency
(mindtorch replaces it), so this runs in a separate interpreter that has it:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==4.56.2 "tokenizers<0.23" "safetensors<0.8" "numpy<2"
    /tmp/refvenv/bin/python scripts/make_reference_outputs.py    # rewrites tests/fixtures/

Two configurations, covering both tokenizer families users bring:
  gpt2-bpe-tiny   GPT-2 byte-level BPE (vocab.json + merges.txt), weights in model.safetensors
  gpt2-bert-tiny  BERT WordPiece vocab.txt (the Chinese GPT-2 layout), weights in pytorch_model.bin
Weights are drawn with a large init std so logits are peaked: near-ties would make argmax
comparisons depend on last-bit rounding rather than on the implementation being right.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import ByteLevelBPETokenizer
from transformers import BertTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
DEMO = ROOT / "data" / "demo" / "nlpcc_demo.jsonl"

ENGLISH = """What is the fastest car in the world? Many people ask this question when they read about
sports cars. The fastest car in the world is a question of speed, engineering and money. A car that is
fast on a straight road may be slow in the city. The world of cars is full of records, and every year a
new car claims to be the fastest. Engineers measure speed in kilometres per hour, and drivers test the
car on long tracks. In the end the fastest car is the one that holds the record today.""".replace("\n", " ")

PROMPTS = {
    "gpt2-bpe-tiny": ["What is the fastest car in the", "The world of cars is"],
    "gpt2-bert-tiny": ["青禾市轨道交通5号线", "南屿省气象台昨日发布"],
}
GREEDY_NEW, BEAM_NEW, BEAMS = 12, 10, 4


def bpe_tokenizer(out: Path) -> GPT2Tokenizer:
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator([ENGLISH] * 4, vocab_size=400, min_frequency=1,
                                special_tokens=["<|endoftext|>"], show_progress=False)
    trainer.save_model(str(out))  # vocab.json + merges.txt, GPT-2's format
    return GPT2Tokenizer(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"),
                         unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def bert_tokenizer(out: Path) -> BertTokenizer:
    chars = set()
    for line in DEMO.read_text(encoding="utf-8").splitlines()[:12]:
        record = json.loads(line)
        chars.update(record["article"] + record["summarization"])
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(c for c in chars if not c.isspace())
    (out / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return BertTokenizer(vocab_file=str(out / "vocab.txt"))


def prompt_ids(tokenizer, text: str) -> list[int]:
    """How ms_gpt2 encodes a prompt: BERT vocab -> [CLS] + tokens (no [SEP]); BPE -> tokens."""
    if isinstance(tokenizer, BertTokenizer):
        return [tokenizer.cls_token_id] + tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
    return tokenizer(text)["input_ids"]


def build(name: str, seed: int) -> dict[str, np.ndarray]:
    out = FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    tokenizer = bpe_tokenizer(out) if "bpe" in name else bert_tokenizer(out)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        initializer_range=0.4, bos_token_id=tokenizer.bos_token_id or tokenizer.cls_token_id,
                        eos_token_id=tokenizer.eos_token_id or tokenizer.sep_token_id,
                        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(str(out), safe_serialization="bpe" in name)  # bert: pytorch_model.bin
    tokenizer.save_pretrained(str(out))

    record = {}
    for i, text in enumerate(PROMPTS[name]):
        ids = torch.tensor([prompt_ids(tokenizer, text)])
        key = f"{name}/{i}"
        with torch.no_grad():
            record[f"{key}/prompt_ids"] = ids[0].numpy()
            record[f"{key}/logits"] = model(ids).logits[0].numpy().astype(np.float32)
            common = dict(attention_mask=torch.ones_like(ids), pad_token_id=config.pad_token_id,
                          eos_token_id=None, do_sample=False)  # eos None: always generate the full length
            record[f"{key}/greedy"] = model.generate(ids, max_new_tokens=GREEDY_NEW, num_beams=1, **common)[0].numpy()
            record[f"{key}/beam"] = model.generate(ids, max_new_tokens=BEAM_NEW, num_beams=BEAMS,
                                                   **common)[0].numpy()
    return record


def main() -> int:
    record = {}
    for seed, name in enumerate(PROMPTS):
        record.update(build(name, seed))
    record["meta/versions"] = np.array([f"torch {torch.__version__}", f"transformers {transformers.__version__}"])
    np.savez_compressed(FIXTURES / "reference_outputs.npz", **record)
    print(f"wrote {FIXTURES / 'reference_outputs.npz'} ({len(record)} arrays) with torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
