"""Several uncertainty methods judged side by side on the same .bin sets, in one run.

Each dataset is read and decoded once and every model is fed from the same preprocessed batches (models that
preprocess alike share them). Each model then gets exactly what a single-model run gives it (its text on
stdout, ``<out>/<folder>/`` with results.json, results.md, figures, scores), and the run adds the comparison:
one row per method x dataset with the numbers uncertainty users compare, copied from each model's own result
dict (nothing is recomputed), in ``<out>/results.md``, ``<out>/results.json`` ("comparison") and on stdout,
plus one figure per dataset overlaying every method's reject curves.
"""
from __future__ import annotations

import math
import os
import re

from probface_tf.eval import report
from probface_tf.eval.runner import evaluate_bin_models, report_results


class ComparisonError(ValueError):
    """Methods cannot be labelled or compared; the message names the flag or label."""


# ---------------------------------------------------------------------------------------------- labels


def default_label(model_path: str) -> str:
    """The model's file or folder name; an export version directory (``base/1``) is named after its base."""
    path = os.path.normpath(model_path)
    base = os.path.basename(path) or "model"
    if base.isdigit():
        base = os.path.basename(os.path.dirname(path)) + "/" + base
    return base


def method_labels(model_paths, methods=()) -> list[str]:
    """One label per model: ``methods`` (same count, unique) or names derived from the paths, made unique
    by a ``-2``, ``-3`` ... suffix."""
    model_paths, methods = list(model_paths), list(methods or ())
    if methods:
        if len(methods) != len(model_paths):
            raise ComparisonError(f"--method given {len(methods)} time(s) for {len(model_paths)} --model(s); give "
                                  f"one --method per --model, in the same order, or none")
        repeated = sorted({m for m in methods if methods.count(m) > 1})
        if repeated or not all(m.strip() for m in methods):
            raise ComparisonError(f"--method labels must be unique and non-empty, got {methods}")
        return methods
    return _unique([default_label(p) for p in model_paths])


def _unique(names: list[str]) -> list[str]:
    out = []
    for name in names:
        candidate, k = name, 2
        while candidate in out:
            candidate, k = "%s-%d" % (name, k), k + 1
        out.append(candidate)
    return out


def folder_names(labels) -> list[str]:
    """A file-system-safe, unique sub-folder name per label."""
    return _unique([re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("._") or "method" for label in labels])


# ---------------------------------------------------------------------------------------------- the table


def _at(rows, key, value):
    """The row whose ``key`` is ``value`` (the tables stop early on tiny sets: None then)."""
    return next((row for row in rows if math.isclose(row[key], value, abs_tol=1e-9)), None)


def _risk_acc(factor):
    def get(result):
        row = _at(result.get("risk", []), "risk_factor", factor)
        return row and row["cosine"]["accuracy"]
    return get


def _reject(metric, factor):
    def get(result):
        row = _at(result.get("reject_fnmr", {}).get("rows", []), "reject_factor", factor)
        return row and row[metric]
    return get


def _area(name):
    return lambda result: result.get("reject_fnmr", {}).get(name)


def _own_score(result):
    """The method's own score (FastMLS or D-dim MLS): Gaussian methods only."""
    kind = result["sigma"]
    return result["verification"][kind]["accuracy"] if kind in ("fastmls", "mls") else None


def _tar(combo, far, rejected):
    def get(result):
        rv = result.get("reject_verification")
        if not rv or combo not in rv["curves"]:
            return None
        curves = rv["curves"][combo]
        key = next((k for k in curves if math.isclose(float(k), far)), None)
        index = next((i for i, p in enumerate(rv["rejected_portions"]) if math.isclose(p, rejected)), None)
        return None if key is None or index is None else curves[key][index]
    return get


# (json key, column title, value from one dataset result of evaluate_features)
COLUMNS = (
    ("acc_cosine", "Acc cos", lambda r: r["verification"]["cosine"]["accuracy"]),
    ("acc_mls", "Acc MLS", _own_score),
    ("acc_reject10", "Acc rej10", _risk_acc(0.1)),
    ("acc_reject20", "Acc rej20", _risk_acc(0.2)),
    ("acc_reject30", "Acc rej30", _risk_acc(0.3)),
    ("eer", "EER", _reject("eer", 0.0)),
    ("fnmr_fmr1e-3", "FNMR@FMR1e-3", _reject("fmr1000", 0.0)),
    ("eer_reject20", "EER rej20", _reject("eer", 0.2)),
    ("fnmr_fmr1e-3_reject20", "FNMR@FMR1e-3 rej20", _reject("fmr1000", 0.2)),
    ("AUERC", "AUERC", _area("AUERC")),
    ("AUERC30", "AUERC30", _area("AUERC30")),
    ("AUC", "AUC", _area("AUC")),
    ("AUC30", "AUC30", _area("AUC30")),
    ("tar_far1e-2_reject20", "TAR@FAR1e-2 rej20 (cos+max)", _tar("cosine+max", 1e-2, 0.2)),
)


def comparison_rows(results_by_method: dict) -> list[dict]:
    """``{label: [dataset result, ...]}`` -> one dict per method x dataset (dataset-major, methods in order)."""
    datasets = report.ordered_names(next(iter(results_by_method.values())))
    rows = []
    for name in datasets:
        for label, results in results_by_method.items():
            result = next(r for r in results if r["name"] == name)
            row = {"method": label, "dataset": name}
            for key, _, get in COLUMNS:
                value = get(result)
                row[key] = None if value is None else float(value)
            rows.append(row)
    return rows


def _cell(value) -> str:
    return "-" if value is None or not math.isfinite(value) else "%.4f" % value


def comparison_markdown(rows: list[dict]) -> str:
    header = ["Method", "Dataset"] + [title for _, title, _ in COLUMNS]
    body = [[row["method"], report.DATASET_TITLES.get(row["dataset"], row["dataset"])]
            + [_cell(row[key]) for key, _, _ in COLUMNS] for row in rows]
    return report.markdown_table(header, body)


def accuracy_summary(results_by_method: dict) -> tuple[list[str], list[list[str]]]:
    """The original README table (accuracy %, Avg) with every method's rows."""
    header, rows = None, []
    for label, results in results_by_method.items():
        header, method_rows = report.summary_rows(results, label)
        rows += method_rows
    return header, rows


# ---------------------------------------------------------------------------------------------- figures


def comparison_figures(results_by_method: dict, out_dir: str) -> dict:
    """Per dataset: FNMR@FMR1e-3 (fixed threshold) and risk-controlled cosine accuracy versus rejected
    fraction, one line per method with an uncertainty. Returns {caption: file relative to ``out_dir``}."""
    from probface_tf.eval.plots import plot_method_comparison

    files = {}
    for name in report.ordered_names(next(iter(results_by_method.values()))):
        fnmr, accuracy = {}, {}
        for label, results in results_by_method.items():
            result = next(r for r in results if r["name"] == name)
            if result["sigma"] == "none":
                continue
            table = result["reject_fnmr"]
            fnmr[label] = (table["reject_factors"], table["fmr1000_fixed_threshold"])
            accuracy[label] = ([r["risk_factor"] for r in result["risk"]],
                               [r["cosine"]["accuracy"] for r in result["risk"]])
        if not fnmr:
            continue
        path = plot_method_comparison(
            [("FNMR @ FMR=1e-3 (fixed threshold)", fnmr), ("cosine 10-fold accuracy (risk-controlled)", accuracy)],
            os.path.join(out_dir, "%s_compare_reject.png" % name), "%s: methods compared" % name)
        files["%s reject curves of every method" % name] = os.path.relpath(path, out_dir)
    return files


# ---------------------------------------------------------------------------------------------- the run


def evaluate_methods(models, paths, out_dir: str, batch_size: int = 128, fusion: str = "max",
                     save_scores: bool = False, plots: bool = True, echo=print, sigma_dims: str = "full") -> dict:
    """Evaluate every model (``LoadedModel`` with a unique ``label``) on every .bin; write each model's outputs
    into ``out_dir/<folder>/`` and the comparison into ``out_dir``. Returns {label: [dataset results]}."""
    labels = [model.name for model in models]
    if len(set(labels)) != len(labels):
        raise ComparisonError(f"method labels must be unique, got {labels}")
    folders = folder_names(labels)
    per_model = [[] for _ in models]
    for path in paths:  # dataset-major: one decode of each .bin serves every model
        for k, evaluated in enumerate(evaluate_bin_models(models, path, batch_size, fusion, sigma_dims=sigma_dims)):
            per_model[k].append(evaluated)
    results_by_method = {}
    for model, folder, evaluated in zip(models, folders, per_model):
        echo("=== method %s: %s (%s, uncertainty: %s) ===" % (model.name, model.path, model.kind,
                                                               model.uncertainty if model.has_sigma else "none"))
        results_by_method[model.name] = report_results(model, evaluated, os.path.join(out_dir, folder), fusion,
                                                       save_scores, plots, echo)
    rows = comparison_rows(results_by_method)
    figures = comparison_figures(results_by_method, out_dir) if plots else {}
    summary = accuracy_summary(results_by_method)
    methods = [{"label": m.name, "folder": f, "model": m.path, "model_kind": m.kind, "has_sigma": m.has_sigma,
                "uncertainty": m.uncertainty if m.has_sigma else "none", "image_size": list(m.image_size),
                "preprocessing": vars(m.preprocessing)} for m, f in zip(models, folders)]
    payload = {"methods": methods, "fusion": fusion, "datasets": report.ordered_names(results_by_method[labels[0]]),
               "comparison": {"columns": [{"key": k, "title": t} for k, t, _ in COLUMNS], "rows": rows},
               "summary": dict(zip(("header", "rows"), summary)), "figures": figures}
    report.write_json(os.path.join(out_dir, "results.json"), payload)
    _write_markdown(os.path.join(out_dir, "results.md"), methods, rows, summary, figures, fusion)
    echo("=== comparison of %d methods ===" % len(models))
    echo(comparison_markdown(rows))
    echo("wrote %s, results.md and one sub-folder per method" % os.path.join(out_dir, "results.json"))
    echo("\n" + report.markdown_table(*summary))
    return results_by_method


def _write_markdown(path, methods, rows, summary, figures, fusion) -> None:
    lines = ["# Uncertainty methods compared", "",
             "Accuracies are the original 10-fold protocol; `rejN` = after rejecting the N %% pairs of highest "
             "fused uncertainty (risk-controlled table, fusion `%s`); EER and FNMR@FMR1e-3 are "
             "face-uncertainty-pytorch's (cosine, max fusion, thresholds fixed at no rejection); AUERC/AUC over "
             "reject 0-0.99 (AUERC30/AUC30: 0-0.29); TAR@FAR1e-2 rej20 is the cosine + max reject-verification "
             "curve at 20 %% rejected. `-`: not defined for the method (no Gaussian sigma_sq or no uncertainty)."
             % fusion, "",
             comparison_markdown(rows), "", "## Accuracy (%)", "", report.markdown_table(*summary), "",
             "## Methods", ""]
    lines += ["* **%s**: `%s` (%s, uncertainty: %s), details in [%s/results.md](%s/results.md)" % (
        m["label"], m["model"], m["model_kind"], m["uncertainty"], m["folder"], m["folder"]) for m in methods]
    lines.append("")
    for caption, file in figures.items():
        lines += ["![%s](%s)" % (caption, file), ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip() + "\n")
