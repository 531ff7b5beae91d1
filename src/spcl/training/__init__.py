"""Training (docs/method.md#hybrid-memory, #initialisation, #dsbn, #pseudo-labels, #training-loop): one
trainer for UDA and USL, and the baselines, with exact resume.

Modules: ``trainer`` (the loop), ``labels`` (the target labels of each epoch), ``hooks`` (what
runs around the training: checkpoint, evaluate, log, signals), ``checkpoint`` (the file format
and the encoder a checkpoint describes) and ``run_folder`` (one run per output folder).
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
from spcl.training.hooks import (
    Checkpointing,
    ConsoleLog,
    EpochLog,
    Evaluation,
    Hook,
    MetricsLog,
    SignalHandling,
    StepLosses,
    TrainingInterrupted,
    default_hooks,
)
from spcl.training.labels import GroundTruthLabels, SelfPacedLabels, TargetLabels
from spcl.training.run_folder import RunFolder, RunFolderError
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
    "RunFolder",
    "RunFolderError",
    "SelfPacedLabels",
    "SignalHandling",
    "StepLosses",
    "TargetLabels",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_model",
    "config_of",
    "default_hooks",
    "describe_model",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]
