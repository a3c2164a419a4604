"""1:N search speed: exact FastMLS top-10 (faiss flat + bound re-ranking) versus faiss cosine top-10, and HNSW.

Gallery of ``--n`` random unit vectors (D = 256) with sigma_sq spread uniformly in [0.2, 0.6], ``--probes``
probes, all in one run:

* ``faiss_cosine_seconds``: ``faiss.IndexFlatIP`` top-10 by cosine, the baseline;
* ``fastmls_flat_seconds``: ``BandedIndex('flat')`` top-10 by FastMLS; ``exact`` is true when its ids and order
  equal the brute-force FastMLS top-10 (``exact_topk``, float64, timed as ``brute_force_seconds``);
* ``hnsw_*``: ``BandedIndex('hnsw')``: build time, search time, speed-up over the flat FastMLS search and
  recall@10 against the exact FastMLS top-10.

Peak RSS is read from ``resource.getrusage`` (``gallery_bytes`` is the float32 mu + sigma_sq of the gallery).
Goals: flat FastMLS <= 1.3x faiss cosine and exact; HNSW >= 10x faster than exact with recall@10 >= 0.99.

    python benchmarks/search.py [--n 1000000] [--probes 1000] [--dim 256] [--threads 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import faiss
import numpy as np

from probface_tf.search.index import BandedIndex
from probface_tf.search.topk import exact_topk

K = 10


def _unit(rng, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(n: int, probes: int, dim: int, threads: int, seed: int = 0) -> dict:
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(seed)
    gallery, gallery_s = _unit(rng, n, dim), rng.uniform(0.2, 0.6, n).astype(np.float32)
    query, query_s = _unit(rng, probes, dim), rng.uniform(0.2, 0.6, probes).astype(np.float32)
    # a few probes are noisy copies of gallery rows, so that some top-1 cosines are high as in real searches
    query[: probes // 2] = gallery[: probes // 2] + 0.05 * _unit(rng, probes // 2, dim)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    gallery_bytes = gallery.nbytes + gallery_s.nbytes
    rss_data = _peak_rss_bytes()

    cosine = faiss.IndexFlatIP(dim)
    cosine.add(gallery)
    _, cosine_seconds = _timed(lambda: cosine.search(query, K))
    del cosine
    flat, flat_build = _timed(lambda: BandedIndex(gallery, gallery_s, "flat"))
    (flat_s, flat_ids), flat_seconds = _timed(lambda: flat.search(query, query_s, K))
    _, cosine_again = _timed(lambda: flat.search(query, query_s, K, score="cosine"))
    del flat
    rss_flat = _peak_rss_bytes()
    (_, brute_ids), brute_seconds = _timed(lambda: exact_topk(query, query_s, gallery, gallery_s, K))
    hnsw, hnsw_build = _timed(lambda: BandedIndex(gallery, gallery_s, "hnsw"))
    (_, hnsw_ids), hnsw_seconds = _timed(lambda: hnsw.search(query, query_s, K))
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(hnsw_ids, brute_ids)])
    return {
        "n": n, "probes": probes, "dim": dim, "threads": threads, "k": K,
        "faiss_cosine_seconds": cosine_seconds,
        "fastmls_flat_seconds": flat_seconds,
        "fastmls_flat_build_seconds": flat_build,
        "banded_cosine_seconds": cosine_again,
        "ratio_fastmls_vs_faiss_cosine": flat_seconds / cosine_seconds,
        "exact": bool(np.array_equal(flat_ids, brute_ids)),
        "brute_force_seconds": brute_seconds,
        "hnsw_build_seconds": hnsw_build,
        "hnsw_seconds": hnsw_seconds,
        "hnsw_speedup_vs_exact": flat_seconds / hnsw_seconds,
        "hnsw_recall_at_10": float(recall),
        "gallery_bytes": gallery_bytes,
        "peak_rss_bytes_before_index": rss_data,
        "peak_rss_bytes_flat_search": rss_flat,
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    result = run(args.n, args.probes, args.dim, args.threads)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
