"""Datasets: loaders for the published files, splits for the AEPPT experiments."""
from .registry import DATASETS, Dataset, DatasetNotFound, data_dirs, describe, load_dataset
from .splits import Splits, make_splits

__all__ = ["DATASETS", "Dataset", "DatasetNotFound", "data_dirs", "describe", "load_dataset", "Splits", "make_splits"]
