"""BLUFR open-set identification on LFW, as the original ProbFace's ``eval_lfw_openset.py`` reports it.

Configuration files (``scipy.io.loadmat``, read unchanged): ``id_lfw.mat`` (``id_lfw``: identity of each image of
the LFW image list), ``lfw_gallery_index.mat`` / ``lfw_genuine_probe_index.mat`` / ``lfw_impostor_probe_index.mat``
(``gallery_index_t``, ``genuine_probe_index_t``, ``impostor_probe_index_t`` for trials t = 1..10, 1-based rows of
the image list) and ``imagelist_lfw.mat`` (``imagelist_lfw``: relative image paths, Windows separators).

Per trial, every probe image is scored against every gallery image (cosine of the L2-normalised mu, and
FastMLS); the rank-1 detection and identification rate at FAR f is the fraction of genuine probes whose best
gallery image has their identity and scores at least the threshold that at most f of the impostor probes'
best scores reach. Rates are averaged over the trials. (The original appends sigma_sq to mu before normalising
the rows for its MLS scores; here FastMLS uses mu and sigma_sq as the model gives them.)
"""
from __future__ import annotations

import os

import numpy as np

from probface_tf.eval import identification as ident
from probface_tf.eval.identification_protocol import ProtocolError
from probface_tf.search.topk import block_scores

FARS = (0.01, 0.001, 0.0001)
FILES = {"id": ("id_lfw.mat", "id_lfw"), "gallery": ("lfw_gallery_index.mat", "gallery_index"),
         "genuine": ("lfw_genuine_probe_index.mat", "genuine_probe_index"),
         "impostor": ("lfw_impostor_probe_index.mat", "impostor_probe_index")}


def _loadmat(path: str) -> dict:
    from scipy.io import loadmat

    if not os.path.isfile(path):
        raise ProtocolError(f"BLUFR configuration file {path}: no such file")
    return loadmat(path)


def read_blufr(config_dir: str) -> dict:
    """``{'labels': [n] int, 'gallery' / 'genuine' / 'impostor': [trials] of 0-based index arrays}``."""
    out = {}
    labels = _loadmat(os.path.join(config_dir, FILES["id"][0]))
    if FILES["id"][1] not in labels:
        raise ProtocolError(f"{FILES['id'][0]}: no {FILES['id'][1]!r} array")
    out["labels"] = np.asarray(labels[FILES["id"][1]]).ravel().astype(np.int64)
    for kind in ("gallery", "genuine", "impostor"):
        name, prefix = FILES[kind]
        data = _loadmat(os.path.join(config_dir, name))
        trials = sorted((int(k.rsplit("_", 1)[1]), k) for k in data if k.startswith(prefix + "_"))
        if not trials:
            raise ProtocolError(f"{name}: no {prefix}_1, {prefix}_2, ... arrays")
        out[kind] = [np.asarray(data[k]).ravel().astype(np.int64) - 1 for _, k in trials]
        bad = [k for (_, k), rows in zip(trials, out[kind]) if rows.min() < 0 or rows.max() >= out["labels"].size]
        if bad:
            raise ProtocolError(f"{name}: {bad[0]} indexes beyond the {out['labels'].size} images of id_lfw")
    if not len(out["gallery"]) == len(out["genuine"]) == len(out["impostor"]):
        raise ProtocolError(f"{config_dir}: the gallery / genuine / impostor files hold different trial counts")
    return out


def read_image_list(config_dir: str, image_root: str) -> list[str]:
    data = _loadmat(os.path.join(config_dir, "imagelist_lfw.mat"))
    names = [str(np.ravel(x)[0]).replace("\\", "/") for x in np.ravel(data["imagelist_lfw"])]
    return [os.path.join(image_root, n) for n in names]


def _identity_scores(image_scores: np.ndarray, gallery_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best image score of each gallery identity: [probes, identities] and the identities."""
    identities, column = np.unique(gallery_labels, return_inverse=True)
    out = np.full((image_scores.shape[0], identities.size), -np.inf)
    for j in range(identities.size):
        out[:, j] = image_scores[:, column == j].max(axis=1)
    return out, identities


def evaluate_blufr(config: dict, mu, sigma_sq, fars=FARS, trials: int | None = None) -> dict:
    """Mean rank-1 DIR at each FAR over the trials, for cosine and FastMLS."""
    labels = config["labels"]
    if len(mu) != labels.size:
        raise ProtocolError(f"BLUFR: {len(mu)} embeddings for the {labels.size} images of id_lfw")
    mu = np.asarray(mu, np.float64)
    mu = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    s = np.asarray(sigma_sq, np.float64).reshape(len(mu), -1).mean(axis=1)
    count = len(config["gallery"]) if trials is None else min(trials, len(config["gallery"]))
    rates = {score: [] for score in ("cosine", "fastmls")}
    for t in range(count):
        g, probes = config["gallery"][t], np.concatenate([config["genuine"][t], config["impostor"][t]])
        for score in rates:
            scores, identities = _identity_scores(block_scores(score, mu[probes], s[probes], mu[g], s[g]),
                                                  labels[g])
            mate = ident.mate_columns(labels[probes], identities)
            mate[len(config["genuine"][t]):] = -1  # impostor probes by the protocol's definition
            rates[score].append([ident.tpir_at_fpir(scores, mate, [f])[f"tpir@fpir={f:g}"] for f in fars])
    return {score: {f"dir@far={f:g}": float(np.mean(np.array(v)[:, i])) for i, f in enumerate(fars)}
            for score, v in rates.items()} | {"trials": count}
