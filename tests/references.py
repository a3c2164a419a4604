"""Independent references and fixtures shared by the tests: the original 10-fold protocol as plain loops, a tiny
ProbFace model whose sigma_sq varies across images, and PNG encoding."""
import io

import keras
import numpy as np
from PIL import Image

TINY = dict(image_size=(32, 32), backbone_filters=[8, 8, 16, 16], backbone_blocks=[1, 1, 1, 1], embedding_size=16)


def ten_fold_loop(scores, labels) -> tuple[float, float]:
    """The original 10-fold protocol written as loops: contiguous folds (the first n mod 10 one larger), candidate
    thresholds = the positive-pair scores of the other nine folds, the mean of all candidates reaching the best
    accuracy. Returns (mean fold accuracy, mean threshold), both averaged in float32 as the original."""
    n, accs, thrs, start = len(scores), np.zeros(10, np.float32), np.zeros(10, np.float32), 0
    for k in range(10):
        size = n // 10 + (1 if k < n % 10 else 0)
        test = np.arange(start, start + size)
        train = np.setdiff1d(np.arange(n), test)
        start += size
        cands = np.sort(scores[train][labels[train]])
        acc = np.array([np.mean((scores[train] >= t) == labels[train]) for t in cands])
        thrs[k] = np.mean(cands[acc == acc.max()])
        accs[k] = np.mean((scores[test] >= thrs[k]) == labels[test])
    return float(np.mean(accs)), float(np.mean(thrs))


def tiny_probface(seed: int = 0, **kwargs) -> keras.Model:
    """A tiny ProbFace model with non-trivial head statistics, so sigma_sq varies across images and a wrong
    variable or output would show."""
    from probface_tf.models.probface import build_probface

    keras.utils.set_random_seed(seed)
    model = build_probface(**{**TINY, **kwargs})
    head = model.get_layer("UncertaintyModule")
    rng = np.random.default_rng(seed)
    for bn in (head.fc1_bn, head.fc_log_sigma_sq_bn):
        bn.moving_mean.assign(rng.normal(0, 0.5, bn.moving_mean.shape).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, bn.moving_variance.shape).astype("float32"))
    head.scale_and_shift.alpha.assign(0.8)
    return model


def png_bytes(array, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()
