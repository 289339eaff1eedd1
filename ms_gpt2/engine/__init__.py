"""The compiled training engine: one MindSpore graph per training step, under the MindNLP Trainer.

* :mod:`ms_gpt2.engine.step` - the graph: GPT-2 forward (the hand-derived attention), the
  shifted cross-entropy as (loss sum, token count), backward, the :class:`~ms_gpt2.engine.step.Reduce`
  hook (data-parallel seam), global-norm clipping, AdamW with PyTorch semantics.
* :mod:`ms_gpt2.engine.compiled` - :class:`~ms_gpt2.engine.compiled.CompiledEngine`: copies a
  Hugging Face GPT-2 in, runs steps, copies weights and AdamW state out.
* :mod:`ms_gpt2.engine.trainer` - the Trainer integration: the compiled step replaces the eager
  ``training_step`` and optimizer update, everything else (callbacks, logging, LR schedule,
  checkpoints, ``--resume``) stays the Trainer's.

``engine: compiled`` (the default) or ``engine: eager`` (the tutorial's exact path) in a config,
``--engine`` on ``ms-gpt2 train``.
"""
ENGINES = ("compiled", "eager")
DEFAULT_ENGINE = "compiled"
