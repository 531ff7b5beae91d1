"""Training (SPEC sections 3-7): one trainer for UDA and USL, and the baselines, with exact resume.

Modules: ``trainer`` (the loop), ``labels`` (the target labels of each epoch), ``hooks`` (what
runs after each epoch: evaluate, checkpoint, log) and ``checkpoint`` (the file format and the
encoder a checkpoint describes).
"""

from spcl.training.checkpoint import (
    CheckpointError,
    build_model,
    config_of,
    describe_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from spcl.training.hooks import Checkpointing, ConsoleLog, EpochLog, Evaluation, Hook, MetricsLog, StepLosses, default_hooks
from spcl.training.labels import GroundTruthLabels, SelfPacedLabels, TargetLabels
from spcl.training.trainer import Trainer, TrainingDiverged

__all__ = [
    "CheckpointError",
    "Checkpointing",
    "ConsoleLog",
    "EpochLog",
    "Evaluation",
    "GroundTruthLabels",
    "Hook",
    "MetricsLog",
    "SelfPacedLabels",
    "StepLosses",
    "TargetLabels",
    "Trainer",
    "TrainingDiverged",
    "build_model",
    "config_of",
    "default_hooks",
    "describe_model",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]
