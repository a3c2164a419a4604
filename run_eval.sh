#!/usr/bin/env bash
# Evaluate a model on every known insightface .bin present in a folder and end with one summary table
# (Method | LFW | CFP-FF | CALFW | AgeDB30 | CPLFW | CFP-FP | Vgg2FP | Avg), like the original README's.
#
#   ./run_eval.sh MODEL BIN_DIR [extra evaluate.py flags, e.g. --config CFG --fusion sum --save-scores]
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 MODEL BIN_DIR [evaluate.py flags ...]" >&2
  exit 2
fi
model="$1"
bin_dir="$2"
shift 2
if [ ! -d "$bin_dir" ]; then
  echo "$0: error: BIN_DIR $bin_dir is not a directory" >&2
  exit 2
fi
targets=()
for name in lfw cfp_ff cfp_fp agedb_30 calfw cplfw vgg2_fp; do
  if [ -f "$bin_dir/$name.bin" ]; then
    targets+=("$name")
  fi
done
if [ "${#targets[@]}" -eq 0 ]; then
  echo "$0: error: no known .bin (lfw cfp_ff cfp_fp agedb_30 calfw cplfw vgg2_fp) in $bin_dir" >&2
  exit 2
fi
echo "evaluating ${targets[*]} from $bin_dir"
exec python "$(dirname "$0")/evaluate.py" --model "$model" --bin_dir "$bin_dir" --targets "$(IFS=,; echo "${targets[*]}")" "$@"
