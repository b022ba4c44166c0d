"""Serving a defended model over HTTP (`mia-fast serve`); needs the ``serve`` extra (FastAPI, uvicorn)."""
from .app import Metrics, Service, create_app
from .batcher import MicroBatcher, Overloaded

__all__ = ["Service", "create_app", "Metrics", "MicroBatcher", "Overloaded"]
