"""Training loops: target classifiers and membership-inference models."""
from .substitute import train_substitute
from .target import accuracy, predict_proba, train_model, train_target

__all__ = ["train_substitute", "train_target", "train_model", "predict_proba", "accuracy"]
