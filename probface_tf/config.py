"""Config files: Python modules whose public top-level names are the recipe's keys.

The keys keep the original ProbFace names (``image_size``, ``loss_weights``, ``restore_model`` ...) so its recipes
read the same. Every key is declared in ``SCHEMA`` with its accepted types and default; an unknown key or a
value of the wrong type is an error naming the key and the file, never a silent default. Keys the original's
recipes set but nothing reads are accepted and reported as ignored.

A recipe builds on another by importing it (``from resface64_msarcface import *``, the recipe's own folder and
the shipped ``configs/`` are importable while it loads) and assigning the keys it changes. A key computed from
other keys is written as a function of the final config, ``def learning_rate_schedule(c): return {0: c.lr}``:
it is evaluated after inheritance and ``--set`` overrides, so ``--set lr=0.05`` moves the schedule with it. A
``--set`` on a key that a recipe reads in a plain assignment (``batch_format = {'size': batch_size}``) would not
reach that assignment and is refused, naming the key to set as well.
"""
from __future__ import annotations

import ast
import logging
import os
import types
from typing import Any

from probface_tf import recipe_files
from probface_tf.config_schema import SCHEMA

_log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key."""


def _original_defaults(cfg: dict) -> None:
    """Fill keys whose default depends on other keys, as the original recipes derive them."""
    h, w = cfg["image_size"]
    if cfg.get("preprocess_train") is None:
        cfg["preprocess_train"] = [["resize", (h, w)], ["random_flip"], ["standardize", "mean_scale"]]
    if cfg.get("preprocess_test") is None:
        cfg["preprocess_test"] = [["resize", (h, w)], ["standardize", "mean_scale"]]
    if cfg.get("batch_format") is None:
        cfg["batch_format"] = {"size": cfg["batch_size"], "num_classes": cfg["batch_size"] // 4}
    if cfg.get("learning_rate_schedule") is None and cfg.get("learning_rate_strategy", "step") == "step":
        cfg["learning_rate_schedule"] = {0: cfg["lr"]}
    if cfg.get("loss_weights") is None:  # network.py's defaults when the key is absent
        cfg["loss_weights"] = {"mls_loss": 5.0, "discriminate_loss": 1e-4, "output_constraint_loss": 1e-3}


class Config(types.SimpleNamespace):
    """Attribute access like the original (``config.image_size``) plus ``cfg['key']`` and ``cfg.get``."""

    def __getitem__(self, key):
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def explicit(self) -> dict:
        """Only the keys the recipe (or an override) set; derived defaults such as ``learning_rate_schedule``
        from ``lr`` are left out, so a recipe built on top of this one derives them again from its own values."""
        return {k: v for k, v in self.to_dict().items() if k in getattr(self, "_explicit", ())}

    def replace(self, **changes) -> "Config":
        d = self.to_dict()
        for key, value in changes.items():
            _check_key(key, value, "<replace>")
            d[key] = value
        cfg = Config(**d)
        cfg._explicit = frozenset(getattr(self, "_explicit", ())) | set(changes)
        return cfg


def _check_key(key: str, value: Any, source: str) -> None:
    spec = SCHEMA.get(key)
    if spec is None:
        raise ConfigError(f"{source}: unknown config key '{key}'. Known keys: {', '.join(sorted(SCHEMA))}")
    if value is None and spec.default is None:
        return
    if isinstance(value, bool) and bool not in spec.types:
        raise ConfigError(f"{source}: key '{key}' must be {_type_names(spec.types)}, got bool {value!r}")
    if not isinstance(value, spec.types):
        raise ConfigError(
            f"{source}: key '{key}' must be {_type_names(spec.types)}, got {type(value).__name__} {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{source}: key '{key}' must be one of {list(spec.choices)}, got {value!r}")


def _type_names(types_: tuple) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types_)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_entries(cfg: dict, source: str) -> None:
    """Types inside the dict-valued keys: a string weight or step would otherwise fail deep inside TF."""
    for name, value in cfg["loss_weights"].items():
        if not _is_number(value) or value < 0:
            raise ConfigError(f"{source}: key 'loss_weights' entry {name!r} must be a non-negative number, "
                              f"got {type(value).__name__} {value!r}")
    if cfg["learning_rate_strategy"] != "step":
        _check_strategy_schedule(cfg, source)
    for step, lr in (cfg["learning_rate_schedule"] if cfg["learning_rate_strategy"] == "step" else {}).items():
        if not _is_number(step):
            raise ConfigError(f"{source}: key 'learning_rate_schedule' has a non-numeric step {step!r} "
                              f"({type(step).__name__}); steps are numbers")
        if not _is_number(lr) or lr < 0:
            raise ConfigError(f"{source}: key 'learning_rate_schedule' entry {step!r} must map to a non-negative "
                              f"number, got {type(lr).__name__} {lr!r}")
    for name, value in cfg["batch_format"].items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{source}: key 'batch_format' entry {name!r} must be a positive int, "
                              f"got {type(value).__name__} {value!r}")


# The parameters of the original's other LR strategies (see probface_tf.train.schedule for the formulas).
STRATEGY_KEYS = {"cosine": ("initial", "interval", "end_step"), "linear": ("initial", "start", "end_step")}


def _check_strategy_schedule(cfg: dict, source: str) -> None:
    strategy, schedule = cfg["learning_rate_strategy"], cfg.get("learning_rate_schedule")
    need = STRATEGY_KEYS[strategy]
    if not isinstance(schedule, dict) or set(schedule) != set(need) or not all(map(_is_number, schedule.values())):
        raise ConfigError(f"{source}: key 'learning_rate_schedule' with learning_rate_strategy '{strategy}' must be "
                          f"{{{', '.join(repr(k) + ': number' for k in need)}}}, got {schedule!r}")


def _validate_values(cfg: dict, source: str) -> None:
    for key in ("epoch_size", "num_epochs", "batch_size"):
        if cfg[key] <= 0:  # zero steps would still export (and publish) the untrained model
            raise ConfigError(f"{source}: key '{key}' must be a positive int, got {cfg[key]!r}")
    _check_entries(cfg, source)
    size = cfg["image_size"]
    if len(size) != 2 or any((not isinstance(s, int)) or s <= 0 or s % 16 for s in size):
        raise ConfigError(f"{source}: key 'image_size' must be [height, width], positive multiples of 16, got {size!r}")
    fmt = cfg["batch_format"]
    if not {"size", "num_classes"} <= set(fmt):
        raise ConfigError(f"{source}: key 'batch_format' needs 'size' and 'num_classes', got {fmt!r}")
    if fmt["num_classes"] <= 0 or fmt["size"] % fmt["num_classes"]:
        raise ConfigError(f"{source}: key 'batch_format': size {fmt['size']} is not a multiple of "
                          f"num_classes {fmt['num_classes']}")
    unknown = set(cfg["loss_weights"]) - {"mls_loss", "output_constraint_loss", "discriminate_loss"}
    if unknown:
        raise ConfigError(f"{source}: key 'loss_weights' has unknown entries {sorted(unknown)}")
    if cfg["output_constraint_type"] not in ("L1", "L2", ""):
        # The original silently drops the term for any other value; a typo should not do that here.
        raise ConfigError(f"{source}: key 'output_constraint_type' must be 'L1', 'L2' or '', "
                          f"got {cfg['output_constraint_type']!r}")
    if cfg["uncertainty_module_output_size"] not in (1, cfg["embedding_size"]):
        raise ConfigError(f"{source}: key 'uncertainty_module_output_size' must be 1 or embedding_size "
                          f"({cfg['embedding_size']}), got {cfg['uncertainty_module_output_size']}")
    if cfg["learning_rate_strategy"] == "step" and (not cfg["learning_rate_schedule"]
                                                    or min(cfg["learning_rate_schedule"]) > 0):
        raise ConfigError(f"{source}: key 'learning_rate_schedule' must have an entry for step 0, "
                          f"got {cfg['learning_rate_schedule']!r}")


def from_dict(values: dict, source: str = "<dict>") -> Config:
    """Validate ``values`` against the schema, fill defaults and return a Config."""
    cfg = {}
    for key, value in values.items():
        _check_key(key, value, source)
        cfg[key] = value
    for key, spec in SCHEMA.items():
        cfg.setdefault(key, spec.default)
    cfg["image_size"] = list(cfg["image_size"])
    _original_defaults(cfg)
    _validate_values(cfg, source)
    config = Config(**cfg)
    config._explicit = frozenset(values)
    return config


def _recipe_values(path: str) -> tuple[dict, dict]:
    """The recipe's plain key values and its derived keys (``def key(c)`` functions named after a key)."""
    try:
        module = recipe_files.execute(path)
    except Exception as exc:  # the config is user code: report where it broke
        raise ConfigError(f"{path}: config file failed to execute: {type(exc).__name__}: {exc}") from exc
    values, derived = {}, {}
    for key, value in vars(module).items():
        if key.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if isinstance(value, types.FunctionType):
            if key in SCHEMA:
                derived[key] = value
            continue  # a helper such as latest_run
        if not callable(value):
            values[key] = value
    return values, derived


def _derive(values: dict, derived: dict, source: str) -> None:
    """Evaluate the derived keys, in the order the recipe defines them, on the config as it stands."""
    current = {key: spec.default for key, spec in SCHEMA.items()}
    current.update(values)
    for key, function in derived.items():
        try:
            value = function(Config(**current))
        except Exception as exc:
            raise ConfigError(f"{source}: key '{key}' (def {key}(c)) failed: {type(exc).__name__}: {exc}") from exc
        values[key] = current[key] = value


# Keys nothing reads but the one key derived from them: a --set of one acts only through it.
ONLY_THROUGH = {"lr": "learning_rate_schedule", "batch_size": "batch_format"}


def _refuse_unreachable(path: str, applied: dict) -> None:
    """A ``--set`` on a key that the recipe reads in a plain assignment would leave that assignment's value
    computed from the old one, and one on ``lr`` / ``batch_size`` where the recipe writes the schedule / batch
    format without them would change nothing (the run's config.py would claim otherwise): refuse, naming what
    to set."""
    reads = recipe_files.assignment_reads(path)
    for key, value in applied.items():
        target = ONLY_THROUGH.get(key)
        if target in reads and key not in reads[target] and target not in applied:
            raise ConfigError(f"--set {key}={value!r}: {path} sets {target} without reading '{key}', so the "
                              f"override would change nothing; set {target} instead (--set {target}=...)")
        stale = sorted(name for name, names in reads.items()
                       if key in names and name in SCHEMA and name not in applied)
        if stale:
            raise ConfigError(
                f"--set {key}={value!r}: {path} computes {', '.join(stale)} from '{key}' when it loads, so the "
                f"override would not reach {'it' if len(stale) == 1 else 'them'}; set {', '.join(stale)} as well "
                f"(--set {stale[0]}=...), or write {stale[0]} in the recipe as a function of the config "
                f"(def {stale[0]}(c): ...)")


def _warn_ignored(values: dict, source: str) -> None:
    ignored = sorted(k for k, v in values.items() if k in SCHEMA and SCHEMA[k].ignored and v != SCHEMA[k].default)
    if ignored:
        _log.warning("%s: %s %s no effect here (accepted for the original recipes)", source, ", ".join(ignored),
                     "has" if len(ignored) == 1 else "have")


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a Python literal value (strings may be bare)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare string such as a path
    return key, value


def load_config(path: str, overrides: list[str] | tuple = ()) -> Config:
    """Load a config file, apply ``key=value`` overrides, evaluate derived keys, validate, and fill defaults."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    values, derived = _recipe_values(path)
    applied = {}
    for text in overrides:
        key, value = parse_override(text)
        if key not in SCHEMA:
            raise ConfigError(f"--set {text!r}: unknown config key '{key}'")
        if isinstance(SCHEMA[key].default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        applied[key] = value
        derived.pop(key, None)
    _refuse_unreachable(path, applied)
    values.update(applied)
    _derive(values, derived, path)
    _warn_ignored(values, path)
    cfg = from_dict(values, source=path)
    cfg._overrides = applied  # written into the run's copy of the config (probface_tf.train.logs.copy_config)
    return cfg


def overrides_text(cfg) -> str:
    """The ``--set`` overrides of a loaded config as Python assignments (empty when there are none)."""
    applied = getattr(cfg, "_overrides", None) or {}
    if not applied:
        return ""
    return "\n# --set overrides of this run\n" + "".join(f"{k} = {v!r}\n" for k, v in applied.items())
