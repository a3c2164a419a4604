"""Learning rate by global step, as the original ``get_updated_learning_rate``.

Three strategies, chosen by the config key ``learning_rate_strategy`` (the original's name and values):

* ``'step'``: ``learning_rate_schedule = {first_step: lr, ...}``; the largest key <= step wins.
* ``'cosine'``: ``{'initial': lr0, 'interval': k, 'end_step': T}``; the step is floored to a multiple of ``k``
  and ``lr = lr0 * (cos(pi * step / T) + 1) / 2``. A step past ``T`` is an error (the original asserts).
* ``'linear'``: ``{'initial': lr0, 'start': s, 'end_step': T}``; ``lr0`` until ``s``, then a straight line to 0
  at ``T``: ``lr0 * (T - step) / (T - s)``. A step past ``T`` is an error.
"""
from __future__ import annotations

import math

from probface_tf.config import STRATEGY_KEYS

STRATEGIES = ("step", *STRATEGY_KEYS)


def learning_rate_at(step: int, schedule: dict, strategy: str = "step") -> float:
    """The learning rate at global ``step`` under ``strategy`` (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"learning_rate_strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if strategy == "step":
        return _piecewise(step, schedule)
    missing = [k for k in STRATEGY_KEYS[strategy] if k not in schedule]
    if missing:
        raise ValueError(f"learning_rate_schedule for strategy '{strategy}' needs keys {list(STRATEGY_KEYS[strategy])}, "
                         f"missing {missing}: {schedule!r}")
    end = schedule["end_step"]
    if step > end:
        raise ValueError(f"global step {step} is past learning_rate_schedule['end_step'] = {end} "
                         f"(strategy '{strategy}')")
    initial = float(schedule["initial"])
    if strategy == "cosine":
        interval = schedule["interval"]
        floored = math.floor(float(step) / interval) * interval
        return initial * 0.5 * (math.cos(math.pi * floored / end) + 1)
    start = schedule["start"]
    if not start < end:
        raise ValueError(f"learning_rate_schedule: 'start' ({start}) must be below 'end_step' ({end})")
    return initial if step < start else initial * (end - step) / (end - start)


def learning_rate_for(step: int, cfg) -> float:
    """``learning_rate_at`` with the config's ``learning_rate_schedule`` and ``learning_rate_strategy``."""
    return learning_rate_at(step, cfg["learning_rate_schedule"], cfg.get("learning_rate_strategy", "step"))


def _piecewise(step: int, schedule: dict) -> float:
    """Value of the largest schedule key <= ``step`` (keys may be floats, e.g. ``num_epochs/4*2000``)."""
    eligible = [k for k in schedule if k <= step]
    if not eligible:
        raise ValueError(f"learning_rate_schedule has no entry at or before step {step}: {schedule!r}")
    return float(schedule[max(eligible)])
