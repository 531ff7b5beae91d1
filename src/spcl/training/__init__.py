"""Training (SPEC sections 3-7): one trainer for UDA and USL, and the baselines, with exact resume."""

from spcl.training.checkpoint import evaluate_checkpoint, load_checkpoint, load_model, save_checkpoint
from spcl.training.trainer import EpochLog, Trainer, TrainingDiverged, evaluate_model, resolve_device

__all__ = [
    "EpochLog",
    "Trainer",
    "TrainingDiverged",
    "evaluate_checkpoint",
    "evaluate_model",
    "load_checkpoint",
    "load_model",
    "resolve_device",
    "save_checkpoint",
]
