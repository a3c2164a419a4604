"""The architecture keys of a recipe as one value: what every model builder takes instead of a long list."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Backbone and uncertainty-head architecture (the recipe's key names, ``head_input`` =
    ``uncertainty_module_input``). Builders read only the fields their method uses."""

    embedding_network: str = "resface64_relu"
    image_size: tuple = (96, 96)
    embedding_size: int = 256
    head_input: str = "conv_final"
    output_size: int = 1  # uncertainty_module_output_size: 1 = scalar sigma^2, D = per-dimension
    weight_decay: float = 5e-4
    keep_prob: float = 1.0
    backbone_filters: tuple | None = None
    backbone_blocks: tuple | None = None
    freeze_backbone: bool = True
    fc1_size: int = 256
    mc_dropout_rate: float = 0.5
    mc_samples: int = 100
    seed: int | None = None

    @classmethod
    def from_config(cls, cfg, freeze_backbone: bool = True) -> "ModelSpec":
        return cls(embedding_network=cfg.embedding_network, image_size=tuple(cfg.image_size),
                   embedding_size=cfg.embedding_size, head_input=cfg.uncertainty_module_input,
                   output_size=cfg.uncertainty_module_output_size, weight_decay=cfg.weight_decay,
                   keep_prob=cfg.keep_prob, backbone_filters=cfg.backbone_filters,
                   backbone_blocks=cfg.backbone_blocks, freeze_backbone=freeze_backbone,
                   mc_dropout_rate=cfg.mc_dropout_rate, mc_samples=cfg.mc_samples, seed=cfg.base_random_seed)

    @classmethod
    def of(cls, **keys) -> "ModelSpec":
        """A spec from keyword arguments; an unknown key is an error naming it and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keys) - known)
        if unknown:
            raise TypeError(f"unknown model option(s) {unknown}; known: {sorted(known)}")
        return cls(**keys)
