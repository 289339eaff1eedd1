"""The benchmark workloads, written once against the torch API and run on both sides.

ms_gpt2 runs them in-process, where ``torch`` is mindtorch (MindSpore); the PyTorch reference runs
this very file in another interpreter (``python workloads.py '<json spec>'``, printing JSON),
where ``torch`` is real PyTorch. Same models, same inputs, same timing code: the only difference
is the framework underneath. The file therefore imports nothing from ms_gpt2 but its sibling
``peak.py`` (standard library only), found by file path when run by the reference.

The one API difference is the backward pass: mindtorch computes gradients functionally
(``mindtorch.autograd.value_and_grad``, as mindnlp's Trainer does) and ``loss.backward()`` is a
no-op there, so :func:`make_train_step` picks the right form.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

try:
    from ms_gpt2.bench.peak import peak_rss_mb
except ImportError:  # run by file path in the reference interpreter, which has no ms_gpt2
    from peak import peak_rss_mb  # this file's sibling

IS_MINDTORCH = "mindtorch" in getattr(torch, "__file__", "") or hasattr(torch, "_apis")


def build_model(spec: dict, device: str):
    torch.manual_seed(spec["seed"])
    if IS_MINDTORCH:  # mindtorch's weight init also draws from MindSpore's global seed
        import mindspore

        mindspore.set_seed(spec["seed"])
    config = GPT2Config(vocab_size=spec["vocab_size"], n_positions=spec["n_positions"], n_embd=spec["n_embd"],
                        n_layer=spec["n_layer"], n_head=spec["n_head"])
    # Each side keeps transformers' default attention (sdpa on both): the reference is what a
    # user would get out of the box, not a handicapped configuration.
    return GPT2LMHeadModel(config).to(device)


def tokens(spec: dict, shape) -> "torch.Tensor":
    rng = np.random.default_rng(spec["seed"])
    return torch.tensor(rng.integers(5, spec["vocab_size"], size=shape).astype(np.int64))


def make_train_step(model, optimizer, max_grad_norm: float):
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_of(batch):
        return model(input_ids=batch, labels=batch).loss

    if IS_MINDTORCH:
        from mindtorch import autograd

        grad_fn = autograd.value_and_grad(loss_of, params)

        def step(batch):
            loss = grad_fn(batch)
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            for p in params:
                p.grad = None
            return loss
    else:
        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            return loss
    return step


def _sync(value):
    """Force the (possibly asynchronous) computation to finish before the clock stops."""
    if hasattr(value, "sequences"):
        value = value.sequences
    if isinstance(value, tuple):
        value = value[0]
    return float(value.float().sum().item()) if hasattr(value, "float") else value


def timed(fn, *args):
    """(seconds, result) of ``fn(*args)``, the clock stopped only once the result is computed."""
    start = time.perf_counter()
    result = fn(*args)
    _sync(result)
    return time.perf_counter() - start, result



def train(spec: dict, device: str) -> dict:
    model = build_model(spec, device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = make_train_step(model, optimizer, 1.0)
    batch = tokens(spec, (spec["train_batch"], spec["train_len"])).to(device)
    for _ in range(spec["warmup_steps"]):
        timed(step, batch)
    times = [timed(step, batch)[0] for _ in range(spec["train_steps"])]
    median = statistics.median(times)
    return {"tokens_per_s": spec["train_batch"] * spec["train_len"] / median, "step_s": median, "steps": times,
            "peak_rss_mb": peak_rss_mb(),
            "params": sum(p.numel() for p in model.parameters()), "attention": model.config._attn_implementation}


def train_command(spec: dict, device: str) -> dict:
    """The reference side of ``ms-gpt2 train``'s memory row (:mod:`ms_gpt2.bench.train_command`): the
    same job as a PyTorch user runs it, ``GPT2LMHeadModel`` trained by the ``transformers`` Trainer
    with the command's ``TrainingArguments`` on the command's own examples (token ids read from
    ``spec["examples"]``), saving as the command saves (``spec["save"]``: the Trainer's checkpoint
    when training stops, then the final model, as the command's ``model/``).
    Meant for a fresh process: the peak is the process's whole life. Real PyTorch only."""
    from transformers import Trainer, TrainingArguments

    with open(spec["examples"], encoding="utf-8") as handle:
        data = json.load(handle)
    rows = [{key: torch.tensor(data[key][i], dtype=torch.long) for key in ("input_ids", "attention_mask", "labels")}
            for i in range(len(data["input_ids"]))]
    del data
    m = spec["model"]
    torch.manual_seed(spec["seed"])
    config = GPT2Config(vocab_size=m["vocab_size"], n_positions=m["n_positions"], n_embd=m["n_embd"],
                        n_layer=m["n_layer"], n_head=m["n_head"], resid_pdrop=m["dropout"], embd_pdrop=m["dropout"],
                        attn_pdrop=m["dropout"], bos_token_id=m["bos_token_id"], eos_token_id=m["eos_token_id"],
                        pad_token_id=m["pad_token_id"])
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(output_dir=spec["output_dir"], seed=spec["seed"], report_to=[],
                             remove_unused_columns=False, dataloader_num_workers=0, use_cpu=device == "cpu",
                             **spec.get("save", {"save_strategy": "no"}), **spec["training"])
    start = time.perf_counter()
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    out = trainer.train()
    trainer.save_model(spec["output_dir"] + "/model")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"peak_rss_mb": peak_rss_mb(), "seconds": time.perf_counter() - start, "global_step": out.global_step,
            "losses": losses, "params": sum(p.numel() for p in model.parameters()),
            "attention": model.config._attn_implementation, "framework": f"torch {torch.__version__}"}


def _generate(model, prompt, **kwargs):
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              pad_token_id=0, eos_token_id=None, use_cache=True, **kwargs)


def decode(spec: dict, device: str) -> dict:
    model = build_model(spec, device).eval()
    prompt = tokens(spec, (1, spec["decode_prompt"])).to(device)
    n = spec["decode_new"]
    _generate(model, prompt, max_new_tokens=4, min_new_tokens=4)  # warm-up
    seconds, _ = timed(lambda: _generate(model, prompt, max_new_tokens=n, min_new_tokens=n))
    return {"tokens_per_s": n / seconds, "seconds": seconds, "new_tokens": n}


def summarize(spec: dict, device: str) -> dict:
    model = build_model(spec, device).eval()
    article = tokens(spec, (1, spec["article_len"])).to(device)
    n = spec["summary_new"]
    _generate(model, article[:, :16], max_new_tokens=2, num_beams=spec["beams"])  # warm-up
    seconds, out = timed(lambda: _generate(model, article, max_new_tokens=n, min_new_tokens=n,
                                           num_beams=spec["beams"], no_repeat_ngram_size=2))
    return {"seconds": seconds, "new_tokens": [int(t) for t in out[0, article.shape[1]:].cpu().numpy()]}


def run(spec: dict, device: str = "cpu", parts=None) -> dict:
    """The workloads named in ``parts`` (``ms-gpt2 bench --only``; default all three), in the order
    train, decode, summarize; the framework's name and version always."""
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads()) if not IS_MINDTORCH else None
    out = {name: workload(spec, device) for name, workload in (("train", train), ("decode", decode),
                                                                ("summarize", summarize))
           if parts is None or name in parts}
    return dict(out, framework=f"{'mindtorch' if IS_MINDTORCH else 'torch'} {torch.__version__}")


if __name__ == "__main__":  # the reference side: python workloads.py '<spec json>'
    spec = json.loads(sys.argv[1])
    device = spec.get("reference_device", "cpu")
    if device == "npu":
        import torch_npu  # noqa: F401  (PyTorch's Ascend backend, for a like-for-like reference)
    if spec.get("only") == "train":  # one workload's peak memory in a fresh process (ms-gpt2 bench --memory)
        print(json.dumps({"train": train(spec, device), "framework": f"torch {torch.__version__}"}))
    elif spec.get("only") == "train_command":  # the reference of ms-gpt2 train's peak memory (bench --memory)
        result = train_command(spec, device)
        with open(spec["result_path"], "w", encoding="utf-8") as handle:
            json.dump(result, handle)
        print(json.dumps(result))
    else:  # all three workloads, or those of ``ms-gpt2 bench --only`` ("train,decode")
        print(json.dumps(run(spec, device, spec["only"].split(",") if spec.get("only") else None)))
