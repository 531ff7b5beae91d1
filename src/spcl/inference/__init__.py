"""Using a trained model: evaluating a checkpoint on any dataset (``spcl eval``).

Sits above training: it opens checkpoints (``spcl.training.load_model``) and hands the encoder
they describe to the library below (``spcl.evaluation``).
"""

from __future__ import annotations

from spcl.inference.evaluate import evaluate_checkpoint

__all__ = ["evaluate_checkpoint"]
