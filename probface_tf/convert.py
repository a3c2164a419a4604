"""Original TF1 checkpoints -> Keras ProbFace models, by the original variable names.

``probface-convert RUN_DIR_OR_CKPT --out model.keras`` reads a ResFace64 base model or a full ProbFace model
(``UncertaintyModule/...`` variables). The architecture (widths, depths, fusion, input size, embedding size,
sigma size, the end point feeding the head) is read off the checkpoint's variable shapes, so no config is
needed; a config, when given, is checked against it and settles what the shapes cannot tell (whether a
backbone-only or stage-output-head checkpoint belongs to a fusion network).
"""
from __future__ import annotations

import os
import re
import sys

import numpy as np

from probface_tf.atomic import save_model
from probface_tf.cli_support import fail_cleanly
from probface_tf.models.resface import BackboneSpec, STAGE_NAMES, conv_final_size, tf1_variable_map
from probface_tf.models.probface import backbone_of, build_probface, head_of


class CheckpointError(ValueError):
    """A checkpoint cannot be found, read, or mapped onto the model; the message lists what is wrong."""


_STEP = re.compile(r"-(\d+)\.index$")


def find_checkpoint(path: str) -> str:
    """Resolve a checkpoint prefix from a prefix, an ``.index`` file, or a run directory.

    In a directory the ``checkpoint`` state file wins; otherwise the ``*.index`` with the largest step (the
    original ``model-....ckpt-N`` files and our ``ckpt-N`` both match).
    """
    import tensorflow as tf

    if path.endswith(".index"):
        path = path[: -len(".index")]
    if os.path.isfile(path + ".index"):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint not found: {path} (no such directory and no {path}.index)")
    latest = tf.train.latest_checkpoint(path)
    if latest:
        latest = _inside(path, latest)
        if os.path.isfile(latest + ".index"):
            return latest
    indexes = [f for f in os.listdir(path) if f.endswith(".index")]
    if not indexes:
        raise CheckpointError(f"no TF1 checkpoint (*.index) in directory {path}")
    best = max(indexes, key=lambda f: int(_STEP.search(f).group(1)) if _STEP.search(f) else -1)
    return os.path.join(path, best[: -len(".index")])


def _inside(folder: str, prefix: str) -> str:
    """The ``checkpoint`` state file's prefix, read inside ``folder``: a copied run directory keeps the absolute
    path of the run it was copied from, and must not silently convert that other run's weights."""
    if os.path.dirname(os.path.abspath(prefix)) == os.path.abspath(folder):
        return prefix
    local = os.path.join(folder, os.path.basename(prefix))
    if os.path.isfile(local + ".index"):
        return local
    raise CheckpointError(f"{os.path.join(folder, 'checkpoint')} points outside its folder, to {prefix}, and "
                          f"{folder} has no {os.path.basename(prefix)}.index; give the checkpoint prefix explicitly")


def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as exc:  # corrupt or not a checkpoint
        raise CheckpointError(f"cannot read checkpoint {prefix}: {exc}") from None
    try:
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    except (tf.errors.OpError, ValueError, IndexError) as exc:  # a truncated .data file fails here, not at open
        lines = str(getattr(exc, "message", exc)).strip().splitlines() or [""]
        raise CheckpointError(f"cannot read the tensors of checkpoint {prefix} (truncated or corrupt .data "
                              f"file?): {lines[0]}") from None


def infer_architecture(values: dict[str, np.ndarray]) -> dict:
    """Backbone widths/depths, fusion, image size, embedding and sigma sizes from variable shapes."""
    try:
        filters = tuple(int(values[f"Resface/{s}/{s}_pre/weights"].shape[-1]) for s in STAGE_NAMES)
        bottleneck = values["Resface/Bottleneck/weights"]
    except KeyError as exc:
        raise CheckpointError(f"not a ResFace checkpoint: missing variable {exc.args[0]}") from None
    blocks = []
    for k in range(1, 5):
        pattern = re.compile(rf"^Resface/Conv{k}/Conv_{k}/Conv_{k}_(\d+)/Conv/weights$")
        blocks.append(max([int(m.group(1)) for n in values if (m := pattern.match(n))], default=0))
    cells = bottleneck.shape[0] // filters[-1]
    side = int(round(np.sqrt(cells)))
    if side * side * filters[-1] != bottleneck.shape[0]:
        raise CheckpointError(f"Bottleneck input {bottleneck.shape[0]} is not a square map of {filters[-1]} "
                              "channels; pass image_size explicitly")
    arch = {"backbone_filters": list(filters), "backbone_blocks": blocks, "image_size": [16 * side, 16 * side],
            "embedding_size": int(bottleneck.shape[1]), "fusion": None, "uncertainty_module_input": None,
            "head_inputs": [], "uncertainty_module_output_size": None}
    _check_head_complete(values)
    fc1 = values.get("UncertaintyModule/fc1/weights")
    if fc1 is not None:
        sizes = _end_point_sizes(filters, 16 * side)
        arch["head_inputs"] = [(name, fusion) for name, fusion, size in sizes if size == fc1.shape[0]]
        if not arch["head_inputs"]:
            known = ", ".join(f"{n}{' (fusion)' if f else ''} {size}" for n, f, size in sizes)
            raise CheckpointError(f"UncertaintyModule/fc1/weights takes {fc1.shape[0]} features, which matches no "
                                  f"end point of this backbone ({known})")
        arch["uncertainty_module_input"], arch["fusion"] = arch["head_inputs"][0]
        arch["uncertainty_module_output_size"] = int(values["UncertaintyModule/fc_log_sigma_sq/weights"].shape[1])
    return arch


# The head variables every ProbFace UncertaintyModule has whatever its size (the batch-norm betas follow).
_HEAD_CORE = ("UncertaintyModule/fc1/weights", "UncertaintyModule/fc_log_sigma_sq/weights")


def _check_head_complete(values) -> None:
    """A checkpoint has the whole head or none of it: a partial head is named, not taken for a base model."""
    head = [n for n in values if n.startswith("UncertaintyModule/")]
    missing = [n for n in _HEAD_CORE if n not in values]
    if head and missing:
        raise CheckpointError(f"checkpoint has {len(head)} UncertaintyModule variable(s) but is missing "
                              f"{', '.join(missing)}: an incomplete head cannot be converted")


def _end_point_sizes(filters, side: int) -> list[tuple[str, bool | None, int]]:
    """(end point, fusion, flattened width) the head may be attached to; fusion None = either backbone.

    The plain conv_final comes first: Conv4 flattened has the same width, and the two give the same features.
    Only a conv_final head tells fusion apart: the stage outputs and the bottleneck exist in both backbones.
    """
    flat = (side // 16) ** 2 * filters[-1]
    sizes = [("conv_final", False, flat), ("conv_final", True, flat + sum(filters))]
    return sizes + [(f"Conv{k}", None, (side >> k) ** 2 * filters[k - 1]) for k in range(1, 5)]


def _scoped(names, restore_scopes, exclude_restore_scopes):
    """The original filters: keep names containing a restore scope, drop names containing an excluded one."""
    keep = [n for n in names if not restore_scopes or any(s in n for s in restore_scopes)]
    return [n for n in keep if not any(s in n for s in (exclude_restore_scopes or ()))]


def assign_checkpoint(model, values: dict[str, np.ndarray], allow_missing_head: bool = False,
                      restore_scopes=None, exclude_restore_scopes=None, source: str = "checkpoint") -> list[str]:
    """Assign checkpoint arrays to the model's variables by original name; returns the names assigned.

    Every model variable must be found with the right shape, except head variables when
    ``allow_missing_head`` (a backbone-only base model: the head stays freshly initialised) and variables
    filtered out by ``restore_scopes``/``exclude_restore_scopes``. Checkpoint variables outside the Resface and
    UncertaintyModule scopes (optimizer slots, global_step, centers...) are ignored; unknown ones inside them
    are reported.
    """
    targets = {**tf1_variable_map(backbone_of(model)), **head_of(model).tf1_variable_map()}
    wanted = _scoped(list(targets), restore_scopes, exclude_restore_scopes)
    # A missing head is allowed only whole (a base model): a partly restored head would mix trained and fresh
    # variables silently.
    head_absent = not any(n in values for n in wanted if n.startswith("UncertaintyModule/"))
    missing = [n for n in wanted if n not in values
               and not (allow_missing_head and head_absent and n.startswith("UncertaintyModule/"))]
    ours = [n for n in values if n.startswith(("Resface/", "UncertaintyModule/")) and "Momentum" not in n]
    unexpected = [n for n in _scoped(ours, restore_scopes, exclude_restore_scopes) if n not in targets]
    mismatched = [f"{n}: checkpoint {tuple(values[n].shape)} vs model {tuple(targets[n].shape)}"
                  for n in wanted if n in values and tuple(values[n].shape) != tuple(targets[n].shape)]
    non_finite = [f"{n}: {int(np.sum(~np.isfinite(values[n])))} NaN/inf value(s)" for n in wanted
                  if n in values and np.issubdtype(values[n].dtype, np.floating) and not np.isfinite(values[n]).all()]
    problems = []
    for title, items in (("missing from the checkpoint", missing), ("unexpected in the checkpoint", unexpected),
                         ("shape mismatch", mismatched), ("not finite", non_finite)):
        if items:
            shown = "\n  ".join(items[:20]) + (f"\n  ... and {len(items) - 20} more" if len(items) > 20 else "")
            problems.append(f"{len(items)} variable(s) {title}:\n  {shown}")
    if problems:
        raise CheckpointError(f"{source} does not match the model:\n" + "\n".join(problems))
    assigned = [n for n in wanted if n in values]
    for name in assigned:
        targets[name].assign(values[name].astype(np.float32))
    return assigned


def load_tf1_checkpoint(path: str, cfg=None, allow_missing_head: bool = False, restore_scopes=None,
                        exclude_restore_scopes=None, freeze_backbone: bool = True):
    """Build the Keras ProbFace model an original checkpoint describes and load its weights.

    ``cfg`` (a Config) is optional; when given, its architecture keys must agree with the checkpoint.
    A backbone-only checkpoint needs ``allow_missing_head=True`` (or the original exclusion
    ``exclude_restore_scopes=['UncertaintyModule']``); its head then takes ``cfg``'s sigma size (default 1).
    """
    prefix = find_checkpoint(path)
    values = read_checkpoint(prefix)
    arch = infer_architecture(values)
    out_size = arch["uncertainty_module_output_size"]
    if out_size is None:
        if not (allow_missing_head or any("UncertaintyModule" in s for s in exclude_restore_scopes or ())):
            raise CheckpointError(f"{prefix} has no UncertaintyModule variables (a backbone-only base model); "
                                  "convert with --allow_missing_head to start a fresh head")
        allow_missing_head = True
        out_size = cfg.uncertainty_module_output_size if cfg is not None else 1
    head_input, fusion = _choose_head_input(arch, cfg)
    spec = BackboneSpec(tuple(arch["backbone_filters"]), tuple(arch["backbone_blocks"]), fusion)
    if cfg is not None:
        _check_against_config(arch, out_size, spec, head_input, cfg, prefix)
    model = build_probface(image_size=arch["image_size"], embedding_size=arch["embedding_size"],
                           uncertainty_module_output_size=out_size, uncertainty_module_input=head_input,
                           weight_decay=cfg.weight_decay if cfg is not None else 5e-4,
                           backbone_filters=spec.filters, backbone_blocks=spec.blocks,
                           embedding_network="resface64_relu_m" if spec.fusion else "resface64_relu",
                           freeze_backbone=freeze_backbone)
    assign_checkpoint(model, values, allow_missing_head, restore_scopes, exclude_restore_scopes, source=prefix)
    return model


def _choose_head_input(arch, cfg) -> tuple[str, bool]:
    """(end point feeding the head, fusion backbone?) from the checkpoint, settled by the config where the
    checkpoint cannot tell (no head, or a head on a stage output: fusion adds no variables)."""
    from probface_tf.models.resface import backbone_spec

    candidates = arch["head_inputs"]
    if cfg is None:
        head_input, fusion = candidates[0] if candidates else ("conv_final", None)
        return head_input, bool(fusion)
    want = backbone_spec(cfg.embedding_network, cfg.backbone_filters, cfg.backbone_blocks)
    agree = [c for c in candidates if c[0] == cfg.uncertainty_module_input and c[1] in (None, want.fusion)]
    # With no agreeing candidate the checkpoint's own reading is kept and the config check reports the clash.
    head_input, fusion = (agree or candidates or [(cfg.uncertainty_module_input, None)])[0]
    return head_input, want.fusion if fusion is None else fusion


def _check_against_config(arch, out_size, spec, head_input, cfg, prefix):
    from probface_tf.models.resface import backbone_spec

    want = backbone_spec(cfg.embedding_network, cfg.backbone_filters, cfg.backbone_blocks)
    pairs = [("embedding_size", cfg.embedding_size, arch["embedding_size"]),
             ("uncertainty_module_output_size", cfg.uncertainty_module_output_size, out_size),
             ("uncertainty_module_input", cfg.uncertainty_module_input, head_input),
             ("backbone filters", list(want.filters), list(spec.filters)),
             ("backbone blocks", list(want.blocks), list(spec.blocks)),
             ("fusion (_m backbone)", want.fusion, spec.fusion),
             ("conv_final size", conv_final_size(want, cfg.image_size), conv_final_size(spec, arch["image_size"]))]
    bad = [f"{k}: config {a} vs checkpoint {b}" for k, a, b in pairs if a != b]
    if bad:
        raise CheckpointError(f"{prefix} does not match the config:\n  " + "\n  ".join(bad))


def convert(checkpoint: str, out: str, config: str | None = None, allow_missing_head: bool = False) -> None:
    """Convert ``checkpoint`` (run dir, prefix or .index) into the .keras file ``out``, written atomically."""
    from probface_tf.config import load_config

    if not out.endswith(".keras"):
        raise CheckpointError(f"--out must end with .keras, got {out}")
    if os.path.isdir(out):
        raise CheckpointError(f"--out {out} is a folder; give a .keras file path")
    cfg = load_config(config) if config else None
    model = load_tf1_checkpoint(checkpoint, cfg, allow_missing_head=allow_missing_head)
    save_model(model, out)


def run(argv=None) -> int:
    """Console script ``probface-convert``."""
    import argparse

    parser = argparse.ArgumentParser(prog="probface-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="original run directory, checkpoint prefix, or .index file")
    parser.add_argument("--out", required=True, help="output .keras file")
    parser.add_argument("--config", help="config file to check the checkpoint against (optional)")
    parser.add_argument("--allow_missing_head", action="store_true",
                        help="a backbone-only checkpoint: keep a freshly initialised UncertaintyModule")
    args = parser.parse_args(argv)
    try:
        with fail_cleanly("probface-convert"):
            convert(args.checkpoint, args.out, args.config, args.allow_missing_head)
    except SystemExit as exc:
        return int(exc.code)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
