"""The compiled training engine: one MindSpore graph per training step, under the MindNLP Trainer.

* :mod:`ms_gpt2.engine.step` - the step, for any model's loss graph: backward, the
  :class:`~ms_gpt2.engine.step.Reduce` hook (data-parallel seam), the mean, global-norm clipping,
  AdamW with PyTorch semantics, fp16's loss scaling, gradient accumulation. It knows no model.
* :mod:`ms_gpt2.engine.compiled` - :class:`~ms_gpt2.engine.compiled.CompiledEngine`: copies a
  Hugging Face model's weights in, runs steps, gives weights and AdamW state back (views of the
  graph's buffers on CPU, copies on a device).
* :mod:`ms_gpt2.engine.trainer` - the Trainer integration: the compiled step replaces the eager
  ``training_step`` and optimizer update, everything else (callbacks, logging, LR schedule,
  checkpoints, ``--resume``) stays the Trainer's.
* :mod:`ms_gpt2.engine.distributed` - data parallel over msrun, on both engines.
* :mod:`ms_gpt2.engine.options` - which ``TrainingArguments`` each engine honours.

The models it trains come as loss graphs from the layer below (:mod:`ms_gpt2.models.graphs`:
GPT-2's and BERT's graphs, :class:`~ms_gpt2.models.graphs.base.ModelGraph`, mixed precision in
``precision``, keyed dropout masks in ``dropout``); the engine knows none of them by name.

``engine: compiled`` (the default) or ``engine: eager`` (the tutorial's exact path) in a config,
``--engine`` on ``ms-gpt2 train`` and ``ms-gpt2 pretrain``.
"""
ENGINES = ("compiled", "eager")
DEFAULT_ENGINE = "compiled"
