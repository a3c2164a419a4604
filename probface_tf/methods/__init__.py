"""Uncertainty methods and stage-1 margin heads, one module each, looked up by name (see ``registry``)."""
from probface_tf.methods.registry import BACKBONE_STAGE, HEAD_STAGE, Method, MethodError, build_model, \
    get_method, method_names, model_from_config, register_method

__all__ = ["BACKBONE_STAGE", "HEAD_STAGE", "Method", "MethodError", "build_model", "get_method", "method_names",
           "model_from_config", "register_method"]
