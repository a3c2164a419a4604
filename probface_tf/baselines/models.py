"""Alias kept for callers of the former baseline builder: ``build_baseline(name, **spec)``."""
from probface_tf.methods import build_model as build_baseline  # noqa: F401
