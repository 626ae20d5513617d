"""Registered architectures built from ``nsm`` units: ``create_model``, ``list_models``."""

from .network import Network
from .registry import create_model, list_models, model_summary

__all__ = ["Network", "create_model", "list_models", "model_summary"]
