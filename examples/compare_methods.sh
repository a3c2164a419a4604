#!/usr/bin/env bash
# Compare ProbFace with the uncertainty baselines of the field on the CPU demo's held-out identities.
#
#   python train.py configs/demo.py        # once (~5 min): stage-1 backbone + ProbFace head, log/demo/LATEST
#   examples/compare_methods.sh [OUT]       # 4.5-6.5 min on 2 CPU cores; OUT defaults to log/compare
#
# Trains, on the latest demo run's frozen backbone, the PCNet and IDQ heads (from the feature cache) and the MC
# dropout model (nothing to train; T = 30 passes, see configs/mc_dropout_demo.py), then the ScaleFace stage 1 on
# the same data and architecture (~3-4 min, like the demo's stage 1). Then:
#   1. ONE evaluate.py call over data/demo_synth/synth_val.bin with the five methods -> OUT/results.md
#      (comparison table: accuracy, reject gains, EER / FNMR@FMR1e-3, AUERC ...; each method in OUT/<method>/);
#   2. template verification on the held-out identities -> OUT/templates/results.md: each identity's 10 images,
#      sorted by their known degradation severity, are dealt round-robin into 3 templates (4 + 3 + 3 images), so
#      each template mixes clean and degraded images; genuine pairs = templates of one identity, impostor pairs =
#      every pair of templates of different identities. PFE fusion vs mean pooling, TAR@FAR.
set -euo pipefail

cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}  # TensorFlow's start-up chatter, in every python below
OUT=${1:-log/compare}
PYTHON=${PYTHON:-python}
DATA=data/demo_synth

# The demo run every baseline builds on (the configs resolve the same pointer, log/demo/LATEST).
DEMO_RUN=$("$PYTHON" - <<'PY'
import sys
from probface_tf.demo import DemoRunMissing, latest_run
try:
    print(latest_run("./log/", "demo"))
except DemoRunMissing as exc:
    sys.exit(f"compare_methods.sh: {exc}")
PY
)
echo "demo run: $DEMO_RUN"

# Train one config; prints the run directory it created (the newest new folder under log/<name>/).
train() {
    local config=$1 name=$2 before after
    before=$(ls -1 "log/$name" 2>/dev/null | sort || true)
    local start=$SECONDS
    "$PYTHON" train.py "$config" >&2 || exit  # errexit is off inside $(...): stop on a failed run explicitly
    after=$(comm -13 <(echo "$before") <(ls -1 "log/$name" | sort) | tail -n 1)
    if [[ -z "$after" ]]; then
        echo "compare_methods.sh: $config created no run under log/$name" >&2
        exit 1
    fi
    echo "$config: $((SECONDS - start)) s -> log/$name/$after" >&2
    echo "log/$name/$after"
}

PCNET=$(train configs/pcnet_demo.py pcnet_demo)
IDQ=$(train configs/idq_demo.py idq_demo)
MC=$(train configs/mc_dropout_demo.py mc_dropout_demo)
SCALEFACE=$(train configs/scaleface_demo.py scaleface_demo)

MODELS=(
    --model "$DEMO_RUN/head/saved_model" --method ProbFace
    --model "$PCNET/model.keras" --method PCNet
    --model "$IDQ/model.keras" --method IDQ
    --model "$MC/model.keras" --method "MC dropout"
    --model "$SCALEFACE" --method ScaleFace
)

start=$SECONDS
"$PYTHON" evaluate.py "${MODELS[@]}" --bin "$DATA/synth_val.bin" --out "$OUT" --save-scores
echo "evaluate.py (.bin comparison): $((SECONDS - start)) s -> $OUT/results.md" >&2

# Template protocol from the held-out identities and their known severities (deterministic: no randomness).
mkdir -p "$OUT/templates"
"$PYTHON" - "$DATA" "$OUT/templates" <<'PY'
import csv
import itertools
import os
import sys
from collections import defaultdict

data, out = sys.argv[1:3]
TEMPLATES_PER_ID, CLEAN, DEGRADED = 3, 0.1, 0.4  # severity bands used only for the summary line
images = defaultdict(list)
with open(os.path.join(data, "severity.csv"), newline="") as f:
    for row in csv.DictReader(f):
        if row["split"] != "train":
            images[row["identity"]].append((float(row["severity"]), row["path"]))
rows, templates = [], defaultdict(list)
for identity in sorted(images):
    # Dealing the severity-sorted images round-robin gives every template a spread of severities.
    for k, (severity, path) in enumerate(sorted(images[identity])):
        tid = f"{identity}_{k % TEMPLATES_PER_ID}"
        rows.append((tid, path))
        templates[tid].append(severity)
ids = sorted(templates)
pairs = [(a, b, int(a.split("_")[0] == b.split("_")[0])) for a, b in itertools.combinations(ids, 2)]
with open(os.path.join(out, "demo_heldout.csv"), "w", newline="") as f:
    csv.writer(f).writerows([("template_id", "image_path")] + rows)
with open(os.path.join(out, "demo_heldout_pairs.csv"), "w", newline="") as f:
    csv.writer(f).writerows([("template_id_1", "template_id_2", "label")] + pairs)
mixed = sum(min(s) < CLEAN and max(s) >= DEGRADED for s in templates.values())
print(f"templates: {len(ids)} of {len(rows)} images ({mixed} with both a clean (severity < {CLEAN}) and a "
      f"degraded (>= {DEGRADED}) image); pairs: {sum(p[2] for p in pairs)} genuine, "
      f"{sum(1 - p[2] for p in pairs)} impostor")
PY

start=$SECONDS
"$PYTHON" evaluate.py "${MODELS[@]}" --templates "$OUT/templates/demo_heldout.csv" \
    --template_pairs "$OUT/templates/demo_heldout_pairs.csv" --image_root "$DATA" --out "$OUT/templates"
echo "evaluate.py (templates): $((SECONDS - start)) s -> $OUT/templates/results.md" >&2
echo "done: $OUT/results.md and $OUT/templates/results.md ($((SECONDS / 60)) min)"
