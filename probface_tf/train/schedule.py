"""Piecewise-constant learning rate by global step, as the original ``get_updated_learning_rate``."""
from __future__ import annotations


def learning_rate_at(step: int, schedule: dict) -> float:
    """Value of the largest schedule key <= ``step`` (keys may be floats, e.g. ``num_epochs/4*2000``)."""
    eligible = [k for k in schedule if k <= step]
    if not eligible:
        raise ValueError(f"learning_rate_schedule has no entry at or before step {step}: {schedule!r}")
    return float(schedule[max(eligible)])
