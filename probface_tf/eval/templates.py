"""Template verification (IJB-style 1:1): image files -> features -> templates -> template-pair scores -> TAR@FAR.

Each model's templates are compared three ways, side by side:

* ``pfe_fastmls`` (``pfe_mls`` for a D-dim sigma_sq): PFE fusion (``probface_tf.fusion``), FastMLS (D-dim MLS)
  between the fused Gaussians;
* ``pfe_cosine``: PFE fusion, cosine of the fused means;
* ``mean_cosine``: mean pooling of mu, cosine (the baseline; the only one for a model without a Gaussian
  sigma_sq, e.g. PCNet/IDQ/MC dropout/ScaleFace, whose uncertainty is no variance to weight by).

TAR@FAR (FAR 1e-4 ... 1e-1) is ``probface_tf.eval.metrics.tar_at_far``, the function behind the
reject-verification curves. Images are decoded once for all models (``probface_tf.eval.extraction``).
"""
from __future__ import annotations

import os
import time

import numpy as np

from probface_tf import fusion, scoring
from probface_tf.eval import report
from probface_tf.eval.metrics import tar_at_far
from probface_tf.eval.risk import FARS

SCORE_TITLES = {"pfe_fastmls": "PFE fusion + FastMLS", "pfe_mls": "PFE fusion + MLS",
                "pfe_cosine": "PFE fusion + cosine", "mean_cosine": "mean pooling + cosine"}
PAIR_CHUNK = 1 << 16  # template pairs scored at a time: IJB-C has 15.7M pairs, [P, D] gathers must stay small


def _pair_scores(score, pair_index: np.ndarray) -> np.ndarray:
    """``score(rows_1, rows_2)`` over the pairs (template row indices [P, 2]) in chunks."""
    return np.concatenate([score(chunk[:, 0], chunk[:, 1])
                           for chunk in np.array_split(pair_index, max(1, -(-len(pair_index) // PAIR_CHUNK)))])


def template_scores(mu, sigma_sq, gaussian: bool, protocol) -> dict:
    """Per template pair, for every applicable fusion + score: {name: scores [P]}."""
    rows_mu = np.asarray(mu)[protocol.row_image]
    scores = {}
    if gaussian and sigma_sq is not None:
        ids, fused_mu, fused_s = fusion.fuse_templates(rows_mu, np.asarray(sigma_sq)[protocol.row_image],
                                                       protocol.row_template)
        pairs = np.searchsorted(ids, protocol.pair_templates)  # every pair id is defined (load_protocol)
        kind = scoring.uncertainty_kind(fused_s)
        scores["pfe_" + kind] = _pair_scores(
            lambda a, b: scoring.probabilistic_scores(fused_mu[a], fused_s[a], fused_mu[b], fused_s[b]), pairs)
        scores["pfe_cosine"] = _pair_scores(lambda a, b: scoring.cosine_scores(fused_mu[a], fused_mu[b]), pairs)
    ids, mean_mu = fusion.mean_templates(rows_mu, protocol.row_template)
    pairs = np.searchsorted(ids, protocol.pair_templates)
    scores["mean_cosine"] = _pair_scores(lambda a, b: scoring.cosine_scores(mean_mu[a], mean_mu[b]), pairs)
    return scores


def tar_table(scores: dict, labels, fars=FARS) -> dict:
    """{name: {'tar': [...], 'far': [...] (achieved), 'threshold': [...]}} at each requested FAR."""
    table = {}
    for name, values in scores.items():
        tars, real_fars, thresholds = tar_at_far(values, labels, fars)
        table[name] = {"tar": [float(t) for t in tars], "far": [float(f) for f in real_fars],
                       "threshold": [float(t) for t in thresholds]}
    return table


def evaluate_templates(models, protocol, batch_size: int = 128, fars=FARS) -> list[tuple[dict, dict]]:
    """Every model over the protocol: per model (result dict, arrays for the .npz files)."""
    from probface_tf.eval.extraction import extract_files

    start = time.perf_counter()
    extracted = extract_files(models, protocol.images, batch_size, f"--templates {protocol.templates_source}")
    extraction = time.perf_counter() - start
    out = []
    for model, (mu, sigma_sq, forward) in zip(models, extracted):
        start = time.perf_counter()
        gaussian = model.has_sigma and model.gaussian
        scores = template_scores(mu, sigma_sq, gaussian, protocol)
        result = {"method": model.name, "model": model.path, "model_kind": model.kind,
                  "sigma": scoring.uncertainty_kind(sigma_sq) if gaussian else
                  ("uncertainty" if model.has_sigma else "none"),
                  "fars": [float(f) for f in fars], "tar_at_far": tar_table(scores, protocol.labels, fars),
                  "seconds": {"extract": extraction, "forward": forward, "scores": time.perf_counter() - start}}
        features = {"images": np.asarray(protocol.images), "mu": mu, "row_image": protocol.row_image,
                    "row_template": protocol.row_template}
        if sigma_sq is not None:
            features[model.uncertainty] = sigma_sq
        out.append((result, {"features": features, "scores": {"pair_templates": protocol.pair_templates,
                                                              "issame": protocol.labels, **scores}}))
    return out


# ---------------------------------------------------------------------------------------------- output


def header_line(protocol) -> str:
    s = protocol.summary()
    return ("--- templates %s: %d templates of %d images, %d pairs (%d genuine, %d impostor) ---"
            % (s["name"], s["templates"], s["images"], s["pairs"], s["genuine"], s["impostor"]))


def result_text(result: dict) -> str:
    lines = ["method %s (%s)" % (result["method"], result["model"])]
    if result["sigma"] != "fastmls" and result["sigma"] != "mls":
        lines.append("no Gaussian sigma_sq (%s): mean pooling only" % result["sigma"])
    for name, row in result["tar_at_far"].items():
        lines.append("TAR@FAR %s: %s" % (SCORE_TITLES[name], " ".join(
            "FAR=%g %.6f" % (far, tar) for far, tar in zip(result["fars"], row["tar"]))))
    return "\n".join(lines)


def results_markdown(protocol, results: list[dict]) -> str:
    fars = results[0]["fars"]
    header = ["Method", "Templates"] + ["TAR@FAR=%g" % f for f in fars]
    rows = [[r["method"], SCORE_TITLES[name]] + ["%.4f" % t for t in row["tar"]]
            for r in results for name, row in r["tar_at_far"].items()]
    return report.markdown_table(header, rows)


def run_templates(models, protocol, out_dir: str, folders, batch_size: int = 128, save_scores: bool = False,
                  echo=print) -> list[dict]:
    """Evaluate, echo, and write ``results.json`` / ``results.md`` (and with ``save_scores``
    ``template_features.npz`` and ``template_scores.npz``, in ``<folder>/`` when there are several models)."""
    evaluated = evaluate_templates(models, protocol, batch_size)
    results = [result for result, _ in evaluated]
    echo(header_line(protocol))
    for result in results:
        echo(result_text(result))
    table = results_markdown(protocol, results)
    echo("\n" + table)
    os.makedirs(out_dir, exist_ok=True)
    if save_scores:
        for folder, (_, arrays) in zip(folders, evaluated):
            target = out_dir if len(models) == 1 else os.path.join(out_dir, folder)
            for kind in ("features", "scores"):
                report.write_scores(os.path.join(target, "template_%s.npz" % kind), arrays[kind])
    report.write_json(os.path.join(out_dir, "results.json"),
                      {"templates": protocol.summary(), "fars": results[0]["fars"], "methods": results})
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write("# Template verification: %s\n\n%s\n\nTemplates from `%s`, pairs from `%s`. PFE fusion: "
                "precision-weighted mean (1/sigma_sq), combined variance 1/sum(1/sigma_sq); TAR at the k-th "
                "highest impostor score, k = round(FAR x impostors).\n\n%s\n"
                % (protocol.name, header_line(protocol).strip("- "), protocol.templates_source,
                   protocol.pairs_source, table))
    echo("wrote %s and results.md" % os.path.join(out_dir, "results.json"))
    return results
