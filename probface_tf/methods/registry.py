"""The method registry: every uncertainty method and every stage-1 margin head is one module of this package
that calls :func:`register_method` with a :class:`Method`; training, conversion and evaluation look methods up
by name (the config's ``head_type`` or ``margin_loss``) and never name one themselves.

A method module is found by its presence: the first lookup imports every module of ``probface_tf.methods``.
Adding a method is therefore one new file here plus a recipe under ``configs/`` (see docs/architecture.md).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import Callable

from probface_tf.models.spec import ModelSpec

HEAD_STAGE = "probface"  # an uncertainty head trained on a frozen backbone (config key head_type)
BACKBONE_STAGE = "backbone"  # a margin head trained with the backbone (config key margin_loss)
STAGE_KEYS = {HEAD_STAGE: "head_type", BACKBONE_STAGE: "margin_loss"}


class MethodError(ValueError):
    """An unknown method name, a method of the wrong stage or a second registration; the message names it."""


@dataclass(frozen=True)
class Method:
    """What the trainer, the converter and the evaluator need to know about one method.

    ``stage`` 'probface' (an uncertainty head on a frozen backbone):
      * ``build_model(spec: ModelSpec, backbone: keras.Model | None) -> keras.Model``: images -> outputs; the
        head is the layer ``UncertaintyModule``;
      * ``loss(cfg, labels, mu, head_output, regu) -> (total, watch)``: one step's objective (``head_output``
        = the head layer's output, ``regu`` = its weight decay); ``watch`` holds the logged scalars, ``'a'`` the
        total. None: the method has nothing to train;
      * ``prepare(model, cfg) -> str | None``: runs once the backbone is restored, before any step; the text is
        logged.
    ``stage`` 'backbone' (a margin softmax of stage 1):
      * ``build_head(num_classes, s, m) -> keras.layers.Layer``: logits from (embeddings, labels[, scale]);
      * ``scale_head``: the head takes a per-image scale from a ``ScaleHead`` (ScaleFace).
    Both: ``uncertainty(outputs) -> [N, 1]`` reads the uncertainty (larger = riskier) from the evaluated model's
    outputs, None when the method gives none (a plain margin head); ``summary`` is one line for listings.
    """

    name: str
    stage: str
    summary: str
    build_model: Callable | None = None
    loss: Callable | None = None
    prepare: Callable | None = None
    build_head: Callable | None = None
    scale_head: bool = False
    uncertainty: Callable | None = None

    @property
    def trains(self) -> bool:
        return self.stage == BACKBONE_STAGE or self.loss is not None


_REGISTRY: dict[str, Method] = {}
_discovered = False


def register_method(method: Method) -> Method:
    """Add ``method`` under its name (a name can be registered once)."""
    if method.stage not in STAGE_KEYS:
        raise MethodError(f"method {method.name!r}: stage must be one of {sorted(STAGE_KEYS)}, got {method.stage!r}")
    if method.name in _REGISTRY:
        raise MethodError(f"method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def _discover() -> None:
    """Import every module of this package once: each registers its methods at import time."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = __name__.rsplit(".", 1)[0]
    for module in pkgutil.iter_modules([os.path.dirname(__file__)]):
        importlib.import_module(f"{package}.{module.name}")


def method_names(stage: str | None = None) -> list[str]:
    """Registered names, sorted; only those of ``stage`` when given."""
    _discover()
    return sorted(n for n, m in _REGISTRY.items() if stage is None or m.stage == stage)


def get_method(name: str, stage: str | None = None) -> Method:
    """The method registered as ``name``; with ``stage``, it must belong to that stage."""
    _discover()
    method = _REGISTRY.get(name)
    if method is None or (stage is not None and method.stage != stage):
        key = STAGE_KEYS.get(stage, "method")
        raise MethodError(f"{key} must be one of {method_names(stage)}, got {name!r}")
    return method


def model_from_config(cfg, freeze_backbone: bool = True):
    """The model of the recipe's ``head_type`` with its architecture keys (see :class:`ModelSpec`)."""
    method = get_method(cfg.get("head_type", "probface"), HEAD_STAGE)
    return method.build_model(ModelSpec.from_config(cfg, freeze_backbone), None)


def build_model(name: str, backbone=None, **keys):
    """The model of method ``name`` from keyword architecture options (:class:`ModelSpec` fields)."""
    return get_method(name, HEAD_STAGE).build_model(ModelSpec.of(**keys), backbone)
