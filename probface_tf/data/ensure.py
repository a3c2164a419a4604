"""Generate a recipe's synthetic dataset on first use (configs with a ``synthetic`` spec)."""
from __future__ import annotations

import os

SPEC_KEYS = {"root", "num_identities", "images_per_identity", "seed", "image_size", "severity", "bin_pairs",
             "split", "image_format", "workers"}


def ensure_synthetic(cfg):
    """Run ``synthesize`` with the config's ``synthetic`` dict (a no-op when the same dataset exists).

    Returns the manifest, or None for configs without a ``synthetic`` spec.
    """
    spec = cfg.get("synthetic")
    if not spec:
        return None
    unknown = set(spec) - SPEC_KEYS
    if unknown or "root" not in spec:
        raise ValueError(f"config key 'synthetic' needs 'root' and accepts {sorted(SPEC_KEYS)}; "
                         f"unknown entries: {sorted(unknown)}")
    from probface_tf.data.synthetic import synthesize

    args = {k: v for k, v in spec.items() if k != "root"}
    return synthesize(os.path.expanduser(spec["root"]), **args)
