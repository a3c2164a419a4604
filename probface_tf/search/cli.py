"""``probface-gallery``: enrol identities into a gallery file and search it 1:N.

    probface-gallery enrol GALLERY --model M DIR_OR_LIST [--reenrol] [--config CFG] [--batch_size 64]
    probface-gallery enrol GALLERY FEATURES.npz          # precomputed: arrays labels [n], mu [n, D], sigma_sq [n]
    probface-gallery search GALLERY --model M PROBES... [--top 5] [--fpir 0.01] [--method exact|flat|hnsw] [--ef_search E] [--json]
    probface-gallery calibrate GALLERY RESULTS.json [--score fastmls]   # thresholds of a 1:N evaluation run
    probface-gallery remove GALLERY LABEL...
    probface-gallery info GALLERY [--json]

DIR_OR_LIST: a folder of identity sub-folders of aligned face crops, or ``identity,image_path`` rows (a header
naming ``template_id``/``image_path`` columns is read as in ``evaluate.py --templates``). Every image of an
identity is embedded and the identity's images are fused (PFE). PROBES: image files (each one probe) or a
``.npz`` of ``mu``/``sigma_sq`` rows. A search prints each probe's best identities and, when the gallery holds
thresholds for ``--fpir``, the open-set decision (identified / unknown / uncertain).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np

from probface_tf.cli_support import fail_cleanly
from probface_tf.eval.template_protocol import read_template_folder, read_template_list
from probface_tf.search.decision import decide
from probface_tf.search.gallery import METHODS, Gallery, GalleryError

PROGRAM = "probface-gallery"


def _open(path: str) -> Gallery:
    return Gallery.load(path)  # names the file when it is missing or damaged


def _embedder(args):
    from probface_tf.search.embedder import ModelEmbedder  # TensorFlow only for the commands that embed

    if not args.model:
        raise GalleryError("--model is required to embed images")
    return ModelEmbedder.from_path(args.model, args.config, args.batch_size, photos=args.photos)


def _identities(source: str) -> "OrderedDict[str, list[str]]":
    rows = read_template_folder(source) if os.path.isdir(source) else read_template_list(source)
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for identity, path, _ in rows:
        groups.setdefault(identity, []).append(path)
    return groups


def _features(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("mu", "sigma_sq") if k not in data]
        if missing:
            raise GalleryError(f"{path}: missing array(s) {missing} (need mu [n, D] and sigma_sq [n])")
        labels = data["labels"] if "labels" in data else np.array([])
        return data["mu"], data["sigma_sq"], labels


ENROL_CHUNK_IMAGES = 1024  # images embedded per extraction call (one input pipeline each)


def _embedded_groups(embedder, groups):
    """Yield (label, mu, sigma_sq) per identity, embedding whole identities in chunks of about
    ``ENROL_CHUNK_IMAGES`` images, with a progress bar on a terminal."""
    from tqdm import tqdm

    labels = list(groups)
    bar = tqdm(total=sum(len(p) for p in groups.values()), desc="enrolling", unit="img",
               disable=not sys.stderr.isatty())
    start = 0
    while start < len(labels):
        stop, size = start, 0
        while stop < len(labels) and (size == 0 or size + len(groups[labels[stop]]) <= ENROL_CHUNK_IMAGES):
            size += len(groups[labels[stop]])
            stop += 1
        mu, sigma_sq = embedder.embed_paths([p for label in labels[start:stop] for p in groups[label]])
        offset = 0
        for label in labels[start:stop]:
            n = len(groups[label])
            yield label, mu[offset:offset + n], sigma_sq[offset:offset + n]
            offset += n
        bar.update(size)
        start = stop
    bar.close()


def enrol(args, echo) -> None:
    gallery = Gallery.load(args.gallery) if os.path.exists(args.gallery) else None
    if args.source.endswith(".npz"):
        mu, sigma_sq, labels = _features(args.source)
        if len(labels) != len(mu):
            raise GalleryError(f"{args.source}: needs one label per mu row ({len(mu)}), got {len(labels)}")
        groups: OrderedDict[str, list[int]] = OrderedDict()
        for i, label in enumerate(labels):
            groups.setdefault(str(label), []).append(i)
        sigma_sq = sigma_sq.reshape(len(mu), -1).mean(axis=1)
        items = ((label, mu[rows], sigma_sq[rows]) for label, rows in groups.items())
        model_id = gallery.model_id if gallery is not None else ""
    else:
        embedder = _embedder(args)
        model_id = embedder.model_id
        if gallery is not None:
            gallery.check_model(model_id)
        items = _embedded_groups(embedder, _identities(args.source))
    added = replaced = 0
    for label, images_mu, images_s in items:  # every identity checked before the file is written
        if gallery is None:
            gallery = Gallery(np.shape(images_mu)[1], model_id)
        if label in gallery and args.reenrol:
            gallery.reenrol(label, images_mu, images_s, model_id)
            replaced += 1
        else:
            gallery.add(label, images_mu, images_s, model_id)
            added += 1
    gallery.save(args.gallery)
    echo(f"{args.gallery}: {added} identities enrolled, {replaced} re-enrolled, {len(gallery)} in the gallery")


def _probes(args, gallery) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    if len(args.probes) == 1 and args.probes[0].endswith(".npz"):
        mu, sigma_sq, labels = _features(args.probes[0])
        names = [str(x) for x in labels] if len(labels) == len(mu) else [f"{args.probes[0]}[{i}]"
                                                                         for i in range(len(mu))]
        return names, mu, sigma_sq.reshape(len(mu), -1).mean(axis=1), ""
    embedder = _embedder(args)
    gallery.check_model(embedder.model_id)
    mu, sigma_sq = embedder.embed_paths(args.probes)
    return list(args.probes), mu, sigma_sq, embedder.model_id


def search(args, echo) -> None:
    gallery = _open(args.gallery)
    names, mu, sigma_sq, model_id = _probes(args, gallery)
    scores, rows = gallery.search(mu, sigma_sq, args.top, args.score, args.method, model_id, args.ef_search)
    thresholds = gallery.thresholds.get(args.score, {}).get(f"{args.fpir:g}")
    decisions = decide(scores[:, 0], sigma_sq, thresholds) if thresholds else [None] * len(names)
    results = [{"probe": name, "sigma_sq": float(s), "decision": d,
                "matches": [{"label": gallery.labels[r], "score": float(v)} for r, v in zip(row, score)]}
               for name, s, d, row, score in zip(names, sigma_sq, decisions, rows, scores)]
    if args.json:
        echo(json.dumps({"gallery": args.gallery, "score": args.score, "fpir": args.fpir, "results": results},
                        indent=2))
        return
    if not thresholds:
        echo(f"(no {args.score} threshold at FPIR {args.fpir:g} in the gallery: run probface-gallery calibrate)")
    for item in results:
        best = ", ".join(f"{m['label']} {m['score']:.4f}" for m in item["matches"])
        echo(f"{item['probe']}\t{item['decision'] or '-'}\tsigma_sq={item['sigma_sq']:.4g}\t{best}")


def calibrate(args, echo) -> None:
    gallery = _open(args.gallery)
    with open(args.results, encoding="utf-8") as f:
        results = json.load(f)
    found = results.get("thresholds", {}).get(args.score)
    if not found:
        raise GalleryError(f"{args.results}: no 'thresholds' for score {args.score!r} (write it with "
                           f"evaluate.py --gallery_protocol)")
    gallery.thresholds[args.score] = found
    gallery.save(args.gallery)
    echo(f"{args.gallery}: {args.score} thresholds at FPIR {', '.join(found)} stored")


def remove(args, echo) -> None:
    gallery = _open(args.gallery)
    for label in args.labels:
        gallery.row(label)  # all named identities must exist before any is removed
    for label in args.labels:
        gallery.remove(label)
    gallery.save(args.gallery)
    echo(f"{args.gallery}: removed {len(args.labels)}, {len(gallery)} left")


def info(args, echo) -> None:
    gallery = _open(args.gallery)
    summary = {"identities": len(gallery), "dim": gallery.dim, "model_id": gallery.model_id,
               "images": int(gallery.counts.sum()), "thresholds": gallery.thresholds,
               "sigma_sq_range": [float(gallery.sigma_sq.min()), float(gallery.sigma_sq.max())] if len(gallery)
               else None}
    echo(json.dumps(summary, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    model_args = argparse.ArgumentParser(add_help=False)
    model_args.add_argument("--model", help="model path (as evaluate.py --model)")
    model_args.add_argument("--config", default=None, help="config file of the model's preprocessing")
    model_args.add_argument("--batch_size", type=int, default=64)
    model_args.add_argument("--photos", action="store_true",
                            help="images are photos: detect (MTCNN) and align the largest face of each first")
    p = sub.add_parser("enrol", parents=[model_args], help="enrol identities")
    p.add_argument("gallery")
    p.add_argument("source", help="folder of identity sub-folders, identity,image list, or features .npz")
    p.add_argument("--reenrol", action="store_true", help="replace identities already enrolled")
    p = sub.add_parser("search", parents=[model_args], help="search probes")
    p.add_argument("gallery")
    p.add_argument("probes", nargs="+")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--fpir", type=float, default=0.01)
    p.add_argument("--score", choices=("fastmls", "cosine"), default="fastmls")
    p.add_argument("--method", choices=METHODS, default="exact")
    p.add_argument("--ef_search", type=int, default=None,
                   help="hnsw only: candidates per probe (default 256; larger is slower and closer to exact)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("calibrate", help="store the thresholds of a 1:N evaluation run")
    p.add_argument("gallery")
    p.add_argument("results", help="results.json of evaluate.py --gallery_protocol")
    p.add_argument("--score", choices=("fastmls", "cosine"), default="fastmls")
    p = sub.add_parser("remove", help="remove identities")
    p.add_argument("gallery")
    p.add_argument("labels", nargs="+")
    p = sub.add_parser("info", help="summarise a gallery")
    p.add_argument("gallery")
    p.add_argument("--json", action="store_true")
    return parser


COMMANDS = {"enrol": enrol, "search": search, "calibrate": calibrate, "remove": remove, "info": info}


def run(argv=None) -> None:
    args = _parser().parse_args(argv)
    with fail_cleanly(PROGRAM):
        COMMANDS[args.command](args, lambda text: print(text, flush=True))


if __name__ == "__main__":
    run()
