"""Opt-in training techniques for faster convergence (the default training is the original's)."""

from .ema import ModelEMA
from .queries import TrainingQueries
from .schedule import build_lr_scheduler
from .wrapper import TrainingModel, build_training_model

__all__ = ["ModelEMA", "TrainingModel", "TrainingQueries", "build_lr_scheduler",
           "build_training_model"]
