"""The training loop as plain functions: optimizer and schedule builders, one epoch, evaluation."""

from .callbacks import Callback, EarlyStopping
from .loop import Predictions, evaluate_loader, train_one_epoch
from .optim import LRSchedule, build_optimizer

__all__ = ["Callback", "EarlyStopping", "LRSchedule", "Predictions", "build_optimizer", "evaluate_loader", "train_one_epoch"]
