"""Margin-softmax heads for stage 1 (backbone training), the ScaleFace scale head and the UniformFace term.

A head holds the class centres ``W`` [D, num_classes]; logits use cosines between L2-normalised embeddings and
L2-normalised centre columns, with a margin on the target class:

* ``ArcFace``: ``s * cos(theta + m)`` on the target (insightface form: where ``theta + m > pi`` the target logit
  becomes ``cos(theta) - sin(pi - m) * m``, i.e. below ``cos(theta) > cos(pi - m)``, keeping it monotonic);
* ``CosFace``: ``s * (cos(theta) - m)`` on the target;
* ``ScaleFace``: the ArcFace margin with a per-sample scale ``s(x)`` predicted by :class:`ScaleHead` from backbone
  features; the softmax loss trains the scale, and a low scale marks an uncertain face
  (``uncertainty_from_scale``).

Stage-1 loss: ``softmax_cross_entropy(labels, head(embeddings, labels[, scale]))`` plus, optionally,
``weight * uniform_loss(head.normalized_centers())`` (UniformFace). Heads compute in float32 under any policy.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from probface_tf.models.layers import PACKAGE, flat_size

BACKBONE_FILE = "backbone.keras"  # a stage-1 run directory: the backbone alone
SCALE_HEAD_FILE = "scale_head.keras"  # and, for ScaleFace, the scale head (features -> scale)
SINE_EPSILON = 1e-12  # floor of 1 - cos^2 under the sqrt: keeps the gradient finite at cos = +-1
DISTANCE_EPSILON = 1e-12  # floor of squared centre distances under the sqrt (finite gradient for equal centres)
SCALE_ACTIVATIONS = ("sigm_mul", "exp", "softplus")


class HeadInputError(ValueError):
    """A head received an input of the wrong shape or an invalid option; the message names it."""


def _labels_vector(labels) -> tf.Tensor:
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating or labels.dtype == tf.bool:
        raise HeadInputError(f"labels must be integer class ids, got dtype {labels.dtype.name}")
    if labels.shape.rank == 2 and labels.shape[1] == 1:
        labels = tf.reshape(labels, [-1])
    if labels.shape.rank is not None and labels.shape.rank != 1:
        raise HeadInputError(f"labels must have shape [N] or [N, 1], got shape {tuple(labels.shape)}")
    return tf.cast(labels, tf.int32)


# ---------------------------------------------------------------------------------------------------------------
# margins on a cosine matrix (pure functions; labels of -1 get no margin, as insightface's partial-FC convention)


def _target_cosine(cos: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    one_hot = tf.one_hot(labels, tf.shape(cos)[1], dtype=cos.dtype)
    return one_hot, tf.reduce_sum(cos * one_hot, axis=1, keepdims=True)


def arcface_margin(cos, labels, m: float = 0.5, easy_margin: bool = False) -> tf.Tensor:
    """The cosine matrix with the target entries replaced by ``cos(theta + m)`` (insightface fallbacks)."""
    one_hot, target = _target_cosine(cos, labels)
    sine = tf.sqrt(tf.maximum(1.0 - tf.square(target), SINE_EPSILON))
    shifted = target * math.cos(m) - sine * math.sin(m)  # cos(theta + m)
    if easy_margin:
        shifted = tf.where(target > 0.0, shifted, target)
    else:
        shifted = tf.where(target > math.cos(math.pi - m), shifted, target - math.sin(math.pi - m) * m)
    return cos + one_hot * (shifted - target)


def cosface_margin(cos, labels, m: float = 0.35) -> tf.Tensor:
    """The cosine matrix with ``m`` subtracted from the target entries."""
    one_hot, _ = _target_cosine(cos, labels)
    return cos - m * one_hot


def softmax_cross_entropy(labels, logits) -> tf.Tensor:
    """Mean sparse softmax cross-entropy in float32."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=_labels_vector(labels), logits=tf.cast(logits, tf.float32)))


SCALE_FLOOR = 1e-30  # a sigmoid of a logit below about -88 is 0 in float32: keep 1 / s(x) finite


def uncertainty_from_scale(scale) -> tf.Tensor:
    """ScaleFace's uncertainty, larger = riskier: ``1 / s(x)`` (so pair fusion by max works as for sigma^2).
    The scale is floored at ``SCALE_FLOOR``: an image whose scale underflows is maximally uncertain, not inf."""
    return 1.0 / tf.maximum(tf.cast(scale, tf.float32), SCALE_FLOOR)


# ---------------------------------------------------------------------------------------------------------------
# layers


class _CosineClassifier(keras.layers.Layer):
    """Holds the class centres [D, num_classes] and computes the clipped cosine matrix [N, num_classes]."""

    def __init__(self, num_classes: int, **kwargs):
        kwargs.setdefault("dtype", "float32")  # margins and softmax stay in float32 under mixed precision
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise HeadInputError(f"{type(self).__name__}: num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes

    def build(self, embeddings_shape):
        dim = embeddings_shape[-1]
        if len(embeddings_shape) != 2 or dim is None:
            raise HeadInputError(f"{type(self).__name__} needs embeddings of shape [N, D] with known D, "
                                 f"got {tuple(embeddings_shape)}")
        # Small normal init, as insightface's partial-FC centres.
        self.centers = self.add_weight(shape=(int(dim), self.num_classes), name="centers",
                                       initializer=keras.initializers.RandomNormal(stddev=0.01))

    def normalized_centers(self) -> tf.Tensor:
        """Unit class centres as rows, [num_classes, D] (the input of :func:`uniform_loss`)."""
        return tf.transpose(tf.math.l2_normalize(tf.cast(self.centers, tf.float32), axis=0))

    def cosine(self, embeddings) -> tf.Tensor:
        embeddings = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
        centers = tf.math.l2_normalize(tf.cast(self.centers, tf.float32), axis=0)
        return tf.clip_by_value(tf.matmul(embeddings, centers), -1.0, 1.0)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ArcFace(_CosineClassifier):
    """Additive angular margin: logits ``s * cos(theta_y + m)`` on the target, ``s * cos(theta_j)`` elsewhere."""

    def __init__(self, num_classes: int, s: float = 64.0, m: float = 0.5, easy_margin: bool = False, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.s, self.m, self.easy_margin = float(s), float(m), bool(easy_margin)

    def call(self, embeddings, labels):
        return self.s * arcface_margin(self.cosine(embeddings), _labels_vector(labels), self.m, self.easy_margin)

    def get_config(self):
        return {**super().get_config(), "s": self.s, "m": self.m, "easy_margin": self.easy_margin}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CosFace(_CosineClassifier):
    """Additive cosine margin: logits ``s * (cos(theta_y) - m)`` on the target (m = 0: normalised softmax)."""

    def __init__(self, num_classes: int, s: float = 64.0, m: float = 0.35, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.s, self.m = float(s), float(m)

    def call(self, embeddings, labels):
        return self.s * cosface_margin(self.cosine(embeddings), _labels_vector(labels), self.m)

    def get_config(self):
        return {**super().get_config(), "s": self.s, "m": self.m}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaleFace(_CosineClassifier):
    """ArcFace margin with a per-sample scale: ``logits = scale(x) * margin_cos``; ``scale`` is [N, 1] or [N]."""

    def __init__(self, num_classes: int, m: float = 0.5, easy_margin: bool = False, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.m, self.easy_margin = float(m), bool(easy_margin)

    def call(self, embeddings, labels, scale):
        scale = tf.reshape(tf.cast(scale, tf.float32), [-1, 1])
        return scale * arcface_margin(self.cosine(embeddings), _labels_vector(labels), self.m, self.easy_margin)

    def get_config(self):
        return {**super().get_config(), "m": self.m, "easy_margin": self.easy_margin}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaleHead(keras.layers.Layer):
    """ScaleFace's scale predictor on (flattened) backbone features -> positive scale [N, 1].

    ``Dense(hidden_units, no bias) -> BatchNorm (no centre/scale) -> ReLU -> Dense(1, no bias) -> activation``,
    He-normal weights; ``hidden_units=0`` drops the hidden layer. Activations: ``'sigm_mul'`` =
    ``coefficient * sigmoid`` (the ScaleFace recipe, coefficient 64), ``'exp'``, ``'softplus'``.
    """

    def __init__(self, hidden_units: int = 512, activation: str = "sigm_mul", coefficient: float = 64.0,
                 batch_norm: bool = True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if activation not in SCALE_ACTIVATIONS:
            raise HeadInputError(f"ScaleHead activation must be one of {list(SCALE_ACTIVATIONS)}, got {activation!r}")
        if hidden_units < 0:
            raise HeadInputError(f"ScaleHead hidden_units must be >= 0, got {hidden_units}")
        self.hidden_units, self.activation = int(hidden_units), activation
        self.coefficient, self.batch_norm = float(coefficient), bool(batch_norm)
        init = keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")
        self.hidden = keras.layers.Dense(self.hidden_units, use_bias=False, kernel_initializer=init, name="fc1",
                                         dtype="float32") if self.hidden_units else None
        self.norm = keras.layers.BatchNormalization(center=False, scale=False, momentum=0.9, epsilon=1e-5,
                                                    name="bn1", dtype="float32") if self.hidden_units and batch_norm else None
        self.out = keras.layers.Dense(1, use_bias=False, kernel_initializer=init, name="fc_scale", dtype="float32")

    def build(self, features_shape):
        flat = flat_size(features_shape, "ScaleHead", HeadInputError)
        width = flat
        if self.hidden is not None:
            self.hidden.build((None, flat))
            width = self.hidden_units
            if self.norm is not None:
                self.norm.build((None, width))
        self.out.build((None, width))

    def call(self, features, training=None):
        x = tf.cast(features, tf.float32)
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        if self.hidden is not None:
            x = self.hidden(x)
            if self.norm is not None:
                x = self.norm(x, training=training)
            x = tf.nn.relu(x)
        x = self.out(x)
        if self.activation == "sigm_mul":
            return self.coefficient * tf.sigmoid(x)
        return tf.exp(x) if self.activation == "exp" else tf.nn.softplus(x)

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "activation": self.activation,
                "coefficient": self.coefficient, "batch_norm": self.batch_norm}


# ---------------------------------------------------------------------------------------------------------------
# UniformFace


def uniform_loss(centers, labels=None) -> tf.Tensor:
    """UniformFace (Duan et al., CVPR 2019): ``mean over pairs i != j of 1 / (||c_i - c_j|| + 1)``.

    ``centers``: [num_classes, D], one class per row (e.g. ``head.normalized_centers()``). With ``labels``, only
    the centres of the classes present in the batch take part (cheap for many classes). Fewer than 2 centres: 0.
    """
    centers = tf.cast(tf.convert_to_tensor(centers), tf.float32)
    if centers.shape.rank is not None and centers.shape.rank != 2:
        raise HeadInputError(f"centers must have shape [num_classes, D], got shape {tuple(centers.shape)}")
    if labels is not None:
        centers = tf.gather(centers, tf.unique(_labels_vector(labels)).y)
    sq_norm = tf.reduce_sum(tf.square(centers), axis=1, keepdims=True)
    sq_dist = tf.maximum(sq_norm + tf.transpose(sq_norm) - 2.0 * tf.matmul(centers, centers, transpose_b=True), 0.0)
    potential = 1.0 / (tf.sqrt(tf.maximum(sq_dist, DISTANCE_EPSILON)) + 1.0)
    count = tf.shape(centers)[0]
    off_diagonal = tf.logical_not(tf.eye(count, dtype=tf.bool))
    total = tf.reduce_sum(tf.where(off_diagonal, potential, tf.zeros_like(potential)))
    return tf.math.divide_no_nan(total, tf.cast(count * (count - 1), tf.float32))
