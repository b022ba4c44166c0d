"""Training loops."""
from .substitute import train_substitute

__all__ = ["train_substitute"]
