"""Losses: the Hungarian matcher, the original set criterion and the training-technique losses."""

from .build import build_criterion, build_model
from .matcher import HungarianMatcher
from .set_criterion import SetCriterion
from .techniques import TrainingCriterion

__all__ = ["HungarianMatcher", "SetCriterion", "TrainingCriterion", "build_criterion", "build_model"]
