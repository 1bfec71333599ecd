# Copyright 2026 The interpretable-ddpm authors. Apache-2.0.
"""Evaluation of interpretable-DDPM pipelines: the metrics, the stages of `evaluate.py` and the realism check.

`python evaluate.py ...` runs the full evaluation; `python -m evaluation.realism ...` the quick realism check
(C2ST accuracy, precision/recall, KID against held-out real faces).
"""
