"""Running independent work units (shadow models, batches of a defended file) in this process or on Ray."""
from .engine import LocalEngine, RayEngine, create_engine

__all__ = ["LocalEngine", "RayEngine", "create_engine"]
