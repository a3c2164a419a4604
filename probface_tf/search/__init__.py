"""Uncertainty-aware 1:N search: galleries of fused (mu, sigma_sq), exact and faiss-backed FastMLS top-k,
open-set decisions."""
from probface_tf.search.bound import fastmls_upper_bound
from probface_tf.search.decision import calibrate, decide, threshold_at_fpir
from probface_tf.search.gallery import Gallery, GalleryError
from probface_tf.search.index import BandedIndex
from probface_tf.search.pruned import PrunedScan
from probface_tf.search.topk import SearchError, exact_topk

__all__ = ["Gallery", "GalleryError", "BandedIndex", "PrunedScan", "SearchError", "exact_topk", "fastmls_upper_bound",
           "calibrate", "decide", "threshold_at_fpir"]
