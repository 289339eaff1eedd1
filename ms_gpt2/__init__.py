"""ms_gpt2: train and run GPT-2 on MindSpore through MindNLP 0.5 (Ascend first, GPU/CPU fallback).

Importing the package is cheap and has no side effects on the device; modules that need mindnlp
fix the device first through :mod:`ms_gpt2.infra.runtime`.
"""
__version__ = "0.1.0"
