"""1:N identification protocols (gallery + mixed probes) and their evaluation with one model.

A protocol lists image files, the gallery rows ``(identity, image)`` (an identity's images are fused into one
template, PFE) and the probe rows ``(probe template, image)`` with each probe template's identity (fused the same
way; a probe whose identity is not in the gallery is non-mated). Three readers build one:

* ``read_folder_protocol(dir)``: ``dir/gallery.csv`` and ``dir/probes.csv``, ``identity,image_path`` rows (image
  paths relative to the file; each probe row is its own probe template), as ``probface-data`` writes for the demo;
* ``probface_tf.eval.ijbc_1n.read_ijbc_1n``: insightface's IJB-C 1:N meta files;
* ``probface_tf.eval.blufr``: the BLUFR open-set LFW configuration (its own evaluation, per image).

``run_identification`` embeds the images, scores every probe against every gallery identity by cosine and by
FastMLS, and writes ``results.json`` (metrics, the open-set thresholds to store in a gallery), ``results.md`` and
``det.png``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from probface_tf.eval import identification as ident
from probface_tf.eval.extraction import extract_files
from probface_tf.atomic import atomic_open
from probface_tf.eval.report import markdown_table, write_json
from probface_tf.eval.template_protocol import read_template_list
from probface_tf.fusion import fuse_templates
from probface_tf.search.decision import calibrate
from probface_tf.search.topk import block_scores

GALLERY_FILE, PROBES_FILE = "gallery.csv", "probes.csv"
RISK_REJECT_FRACTION = 0.1  # stored risk threshold: the riskiest 10 % of the run's probes are 'uncertain'


class ProtocolError(ValueError):
    """A 1:N protocol is malformed or inconsistent; the message names the file."""


@dataclass
class IdentificationProtocol:
    name: str
    images: list  # unique image files
    gallery_image: np.ndarray  # int [R]
    gallery_identity: np.ndarray  # str [R]
    probe_image: np.ndarray  # int [Q]
    probe_template: np.ndarray  # str [Q]
    probe_identity: dict  # probe template -> identity

    def summary(self) -> dict:
        probes = np.unique(self.probe_template)
        enrolled = set(self.gallery_identity.tolist())
        mated = sum(self.probe_identity[p] in enrolled for p in probes)
        return {"name": self.name, "images": len(self.images), "gallery_identities": len(enrolled),
                "probes": int(probes.size), "mated_probes": int(mated), "nonmated_probes": int(probes.size - mated)}


def index_images(paths) -> tuple[list, np.ndarray]:
    """(unique paths in first-seen order, index of each input path)."""
    unique: dict[str, int] = {}
    index = np.array([unique.setdefault(p, len(unique)) for p in paths], np.int64)
    return list(unique), index


def read_folder_protocol(folder: str) -> IdentificationProtocol:
    paths = [os.path.join(folder, f) for f in (GALLERY_FILE, PROBES_FILE)]
    for path in paths:
        if not os.path.isfile(path):
            raise ProtocolError(f"--gallery_protocol {folder}: missing {os.path.basename(path)} "
                                f"(identity,image_path rows)")
    gallery, probes = (read_template_list(p) for p in paths)
    images, index = index_images([r[1] for r in gallery] + [r[1] for r in probes])
    names = [f"{identity}#{n}" for n, (identity, _, _) in enumerate(probes)]
    return IdentificationProtocol(
        os.path.basename(os.path.normpath(folder)), images, index[:len(gallery)],
        np.array([r[0] for r in gallery]), index[len(gallery):], np.array(names),
        {name: r[0] for name, r in zip(names, probes)})


def _templates(mu, sigma_sq, image, template):
    ids, fused_mu, fused_s = fuse_templates(mu[image], sigma_sq[image].reshape(len(image), -1).mean(1, keepdims=True),
                                            template)
    return ids, fused_mu, fused_s[:, 0]


def score_protocol(protocol: IdentificationProtocol, mu, sigma_sq) -> dict:
    """Gallery and probe templates (PFE fusion), the [probes, identities] cosine and FastMLS matrices, mates."""
    if len(mu) != len(protocol.images):
        raise ProtocolError(f"{protocol.name}: {len(mu)} embeddings for {len(protocol.images)} images")
    g_ids, g_mu, g_s = _templates(mu, sigma_sq, protocol.gallery_image, protocol.gallery_identity)
    p_ids, p_mu, p_s = _templates(mu, sigma_sq, protocol.probe_image, protocol.probe_template)
    mate = ident.mate_columns([protocol.probe_identity[p] for p in p_ids], g_ids)
    return {"gallery": g_ids, "probes": p_ids, "mate": mate, "probe_sigma_sq": p_s,
            "cosine": block_scores("cosine", p_mu, p_s, g_mu, g_s),
            "fastmls": block_scores("fastmls", p_mu, p_s, g_mu, g_s)}


def identification_results(scored: dict, fpirs=ident.FPIRS, reject_fraction: float = RISK_REJECT_FRACTION) -> dict:
    rows = ident.evaluate_identification(scored["cosine"], scored["fastmls"], scored["mate"],
                                         scored["probe_sigma_sq"])
    nonmated = scored["mate"] < 0
    thresholds = {}
    if nonmated.any():
        for score in ("cosine", "fastmls"):
            best = scored[score].max(axis=1)[nonmated]
            thresholds[score] = {f"{f:g}": calibrate(best, f, scored["probe_sigma_sq"], reject_fraction, score)
                                 for f in fpirs}
    return {"rows": rows, "thresholds": thresholds}


def results_markdown(name: str, rows: dict) -> str:
    keys = ["rank1", "rank5", "rank10", "tpir@fpir=0.01", "tpir@fpir=0.1"]
    table = [[method] + [f"{100 * r[k]:.2f}" if k in r else "-" for k in keys] for method, r in rows.items()]
    return f"## {name}\n\n" + markdown_table(["ranking", "rank-1 %", "rank-5 %", "rank-10 %", "TPIR@FPIR=0.01 %",
                                              "TPIR@FPIR=0.1 %"], table) + "\n"


def plot_det(scored: dict, path: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for score in ("cosine", "fastmls"):
        fpir, fnir = ident.det_curve(scored[score], scored["mate"])
        if fpir is None:
            plt.close(fig)
            return None
        ax.plot(np.maximum(fpir, 1e-4), fnir, label=score)
    ax.set_xscale("log")
    ax.set_xlabel("FPIR")
    ax.set_ylabel("FNIR")
    ax.set_title("open-set identification (DET)")
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return path


def run_identification(model, protocol: IdentificationProtocol, out: str, batch_size: int = 128,
                       echo=print, plots: bool = True) -> dict:
    if not model.has_sigma or not model.gaussian:
        raise ProtocolError(f"model {model.name} has no sigma_sq output: FastMLS 1:N needs one")
    mu, sigma_sq, seconds = extract_files([model], protocol.images, batch_size, source=protocol.name)[0]
    scored = score_protocol(protocol, mu, sigma_sq)
    result = identification_results(scored)
    result.update({"protocol": protocol.summary(), "model": model.name, "forward_seconds": seconds})
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "results.json"), result)
    text = results_markdown(protocol.name, result["rows"])
    if plots and plot_det(scored, os.path.join(out, "det.png")):
        text += "\n![DET](det.png)\n"
    with atomic_open(os.path.join(out, "results.md")) as f:
        f.write(text)
    echo(text)
    return result
