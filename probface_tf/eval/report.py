"""Writers for evaluation results: the original text lines, ``results.json``, ``results.md`` and the summary
table of the original README (Method | LFW | CFP-FF | CALFW | AgeDB30 | CPLFW | CFP-FP | Vgg2FP | Avg).

A dataset result is the plain dict built by ``probface_tf.eval.runner.evaluate_features``.
"""
from __future__ import annotations

import json
import math

import numpy as np

from probface_tf.atomic import atomic_open

PERCENTILES = [0, 10, 30, 50, 70, 90, 100]
# README column order and titles for the known .bin names; other names follow in the order evaluated.
DATASET_TITLES = {"lfw": "LFW", "cfp_ff": "CFP-FF", "calfw": "CALFW", "agedb_30": "AgeDB30", "cplfw": "CPLFW",
                  "cfp_fp": "CFP-FP", "vgg2_fp": "Vgg2FP"}
SCORE_TITLES = {"cosine": "Cosine", "fastmls": "FastMLS", "mls": "MLS", "attention_only": "Attention-only"}


# ------------------------------------------------------------------ original text


def percentile_line(percentiles) -> str:
    """The original ``'sigma_sq ' + str(np.percentile(...)) + ' percentile [...]'`` (float64 array print)."""
    # NumPy's default print options spelled out, so a caller's np.set_printoptions cannot change the line.
    text = np.array2string(np.asarray(percentiles, dtype=np.float64), max_line_width=75, precision=8,
                           suppress_small=False, separator=" ", floatmode="maxprec", sign="-", legacy=False)
    return "sigma_sq " + text + " percentile " + str(PERCENTILES)


def score_line(title: str, result: dict) -> str:
    return "%s score acc %f threshold %f" % (title, result["accuracy"], result["threshold"])


def risk_line(row: dict) -> str:
    return ("risk_factor {} risk_threshold {} keep_idxes {} / {} ".format(
        row["risk_factor"], row["risk_threshold"], row["kept"], row["total"])
        + "Cosine score acc %f threshold %f" % (row["cosine"]["accuracy"], row["cosine"]["threshold"]))


def reject_line(row: dict) -> str:
    return ("reject_factor {:.4f} risk_threshold {:.6f} keep_idxes {} / {} ".format(
        row["reject_factor"], row["risk_threshold"], row["kept"], row["total"])
        + "Cosine score eer %f fmr100 %f fmr1000 %f" % (row["eer"], row["fmr100"], row["fmr1000"]))


def reject_summary_lines(table: dict) -> list[str]:
    return ["reject_factor mean --------------------------------------------- "
            + "Cosine score fmr1000 %f" % table["fmr1000_mean"],
            "AUERC: %1.4f" % table["AUERC"], "AUERC30: %1.4f" % table["AUERC30"],
            "AUC: %1.4f" % table["AUC"], "AUC30: %1.4f" % table["AUC30"]]


def dataset_text(result: dict) -> str:
    """The block printed for one dataset: the original verification and risk lines, then the
    face-uncertainty-pytorch reject lines and one TAR-AUC line per reject-verification curve."""
    lines = ["--- %s ---" % result["name"]]
    verification = result["verification"]
    if result["sigma"] == "none":
        lines.append(score_line("Cosine", verification["cosine"]))
        lines.append("no sigma_sq output: plain embedding model, cosine score only "
                     "(MLS, risk-controlled and reject tables skipped)")
        return "\n".join(lines)
    lines.append(percentile_line(result["sigma_sq_percentiles"]))
    lines.append(score_line("Cosine", verification["cosine"]))
    if result["sigma"] in verification:  # a non-Gaussian 'uncertainty' (the baselines) has no MLS score
        lines.append(score_line("MLS", verification[result["sigma"]]))
        lines.append(score_line("Attention-only", verification["attention_only"]))
    lines.extend(risk_line(row) for row in result["risk"])
    reject = result["reject_fnmr"]
    lines.extend(reject_line(row) for row in reject["rows"])
    lines.extend(reject_summary_lines(reject))
    if reject.get("stopped_at") is not None:
        lines.append("reject table stopped at reject_factor %.2f: the kept pairs lack genuine or impostor pairs"
                     % reject["stopped_at"])
    rv = result["reject_verification"]
    for combo, aucs in rv["tar_auc"].items():
        lines.append("reject_verification %s TAR-AUC over rejected 0-%g: %s" % (
            combo, rv["rejected_portions"][-1], " ".join("FAR=%g %.4f" % (float(f), a) for f, a in aucs.items())))
    return "\n".join(lines)


# ------------------------------------------------------------------ summary table


def ordered_names(results: list[dict]) -> list[str]:
    names = [r["name"] for r in results]
    known = [n for n in DATASET_TITLES if n in names]
    return known + [n for n in names if n not in DATASET_TITLES]


def summary_rows(results: list[dict], method: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows (accuracy in %, 2 decimals, and the average) for each score evaluated everywhere."""
    names = ordered_names(results)
    by_name = {r["name"]: r for r in results}
    header = ["Method"] + [DATASET_TITLES.get(n, n) for n in names] + ["Avg"]
    scores = [s for s in ("cosine", "fastmls", "mls")
              if all(s in by_name[n]["verification"] for n in names)]
    rows = []
    for score in scores:
        values = [100 * by_name[n]["verification"][score]["accuracy"] for n in names]
        rows.append(["%s (%s)" % (method, SCORE_TITLES[score])] + ["%.2f" % v for v in values]
                    + ["%.2f" % (sum(values) / len(values))])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(results: list[dict], method: str) -> str:
    return markdown_table(*summary_rows(results, method))


# ------------------------------------------------------------------ files


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: str, payload: dict) -> None:
    with atomic_open(path) as f:
        json.dump(_jsonable(payload), f, indent=1)


def _risk_markdown(result: dict) -> list[str]:
    scores = [s for s in ("cosine", result["sigma"]) if s in result["risk"][0]]
    header = ["risk factor", "risk threshold", "kept"] + ["%s acc" % SCORE_TITLES[s] for s in scores]
    rows = [["%g" % r["risk_factor"], "%.6f" % r["risk_threshold"], "%d / %d" % (r["kept"], r["total"])]
            + ["%.6f" % r[s]["accuracy"] for s in scores] for r in result["risk"]]
    return [markdown_table(header, rows)]


def _reject_markdown(result: dict) -> list[str]:
    table = result["reject_fnmr"]
    header = ["reject", "risk threshold", "kept", "EER", "FNMR@FMR1e-2", "FNMR@FMR1e-3"]
    rows = [["%.2f" % r["reject_factor"], "%.6f" % r["risk_threshold"], "%d / %d" % (r["kept"], r["total"]),
             "%.6f" % r["eer"], "%.6f" % r["fmr100"], "%.6f" % r["fmr1000"]] for r in table["rows"]]
    areas = "AUERC %.4f, AUERC30 %.4f, AUC %.4f, AUC30 %.4f, mean FNMR@FMR1e-3 %.6f" % (
        table["AUERC"], table["AUERC30"], table["AUC"], table["AUC30"], table["fmr1000_mean"])
    return [markdown_table(header, rows), "", areas]


def _curves_markdown(result: dict) -> list[str]:
    rv = result["reject_verification"]
    out = []
    for combo, curves in rv["curves"].items():
        header = ["rejected"] + ["TAR@FAR=%g" % float(f) for f in curves]
        rows = [["%.2f" % p] + ["%.4f" % curves[f][i] for f in curves] for i, p in enumerate(rv["rejected_portions"])]
        out += ["*%s*" % combo, "", markdown_table(header, rows), ""]
    return out


def dataset_markdown(result: dict, figures: dict | None = None) -> str:
    v = result["verification"]
    lines = ["## %s" % result["name"], "",
             "%d pairs; sigma: %s; pair uncertainty fusion: %s" % (result["pairs"], result["sigma"],
                                                                   result.get("fusion", "-")), ""]
    header = ["score", "10-fold accuracy", "threshold"]
    rows = [[SCORE_TITLES[k], "%.6f" % r["accuracy"], "%.6f" % r["threshold"]] for k, r in v.items()]
    lines += [markdown_table(header, rows), ""]
    if result["sigma"] == "none":
        lines += ["Plain embedding model (no sigma_sq output): cosine only.", ""]
        return "\n".join(lines)
    lines += ["sigma_sq percentiles %s: %s" % (PERCENTILES, ", ".join("%.6g" % p for p in
                                                                        result["sigma_sq_percentiles"])), ""]
    lines += ["### Risk-controlled accuracy", ""] + _risk_markdown(result) + [""]
    lines += ["### Error versus reject (cosine, fixed thresholds)", ""] + _reject_markdown(result) + [""]
    lines += ["### Reject verification (TAR@FAR vs rejected portion)", ""] + _curves_markdown(result)
    for title, path in (figures or {}).items():
        lines += ["![%s](%s)" % (title, path), ""]
    return "\n".join(lines)


def write_markdown(path: str, results: list[dict], method: str, figures: dict | None = None) -> None:
    parts = ["# Verification results: %s" % method, "", summary_table(results, method), ""]
    for result in results:
        parts.append(dataset_markdown(result, (figures or {}).get(result["name"])))
    with atomic_open(path) as f:
        f.write("\n".join(parts).rstrip() + "\n")


def write_scores(path: str, arrays: dict) -> None:
    """``scores.npz``: per pair ``issame``, ``cosine``, ``fastmls`` or ``mls``, ``sigma_sq_1``, ``sigma_sq_2``."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
