"""LR strategies against the original's formulas written out by hand."""
import math

import pytest

from probface_tf.train.schedule import learning_rate_at, learning_rate_for


def test_step_strategy_is_the_piecewise_table():
    table = {0: 0.1, 100: 0.01, 250.0: 0.001}
    assert [learning_rate_at(s, table) for s in (0, 99, 100, 249, 250, 10**6)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_cosine_floors_the_step_to_the_interval():
    sched = {"initial": 0.2, "interval": 10, "end_step": 100}
    # step 37 -> 30: 0.2 * 0.5 * (cos(0.3 pi) + 1)
    assert learning_rate_at(37, sched, "cosine") == pytest.approx(0.1 * (math.cos(0.3 * math.pi) + 1), abs=1e-15)
    assert learning_rate_at(0, sched, "cosine") == pytest.approx(0.2)
    assert learning_rate_at(9, sched, "cosine") == pytest.approx(0.2)
    assert learning_rate_at(100, sched, "cosine") == pytest.approx(0.0, abs=1e-15)
    assert learning_rate_at(50, sched, "cosine") == pytest.approx(0.1)


def test_linear_holds_then_decays_to_zero():
    sched = {"initial": 0.4, "start": 20, "end_step": 60}
    assert learning_rate_at(19, sched, "linear") == 0.4
    assert learning_rate_at(20, sched, "linear") == pytest.approx(0.4)
    assert learning_rate_at(50, sched, "linear") == pytest.approx(0.4 * 10 / 40)
    assert learning_rate_at(60, sched, "linear") == 0.0


def test_bad_schedules_name_the_problem():
    with pytest.raises(ValueError, match="past learning_rate_schedule\\['end_step'\\]"):
        learning_rate_at(101, {"initial": 1, "interval": 1, "end_step": 100}, "cosine")
    with pytest.raises(ValueError, match="missing \\['start'\\]"):
        learning_rate_at(1, {"initial": 1, "end_step": 100}, "linear")
    with pytest.raises(ValueError, match="one of"):
        learning_rate_at(1, {0: 1}, "exp")


def test_config_reader_defaults_to_step():
    assert learning_rate_for(5, {"learning_rate_schedule": {0: 0.3, 5: 0.03}}) == 0.03
    cfg = {"learning_rate_schedule": {"initial": 1.0, "interval": 1, "end_step": 4}, "learning_rate_strategy": "cosine"}
    assert learning_rate_for(2, cfg) == pytest.approx(0.5)
