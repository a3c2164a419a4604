"""The probability head of the face-uncertainty-pytorch baselines (PCNet, IDQ) and what they share.

:class:`ProbabilityHead` (``head_fc2_prob``): ``Dense(fc1) -> BN -> ReLU -> Dense(1) -> sigmoid`` gives ``p``
in (0, 1). ``p`` is an *uncertainty* probability: the original losses turn it into the confidence ``c = 1 - p``
first ("change uncertainty to confidence prob"), so for risk tables ``p = 1 - c`` is already the uncertainty
(larger = riskier). PCNet and IDQ share this head and differ only in the loss; both losses average over positive
pairs (same label, i != j, ordered) and treat ``mu`` as a constant (:func:`cosine_and_pair_confidence`).

A baseline model has outputs ``{'mu', 'uncertainty'}`` (:func:`baseline_model`). Its head layer is named
``UncertaintyModule`` like ProbFace's: restore filters, checkpoints and converted models find every method's
head under that one scope.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from probface_tf.losses import LossInputError, masked_mean, pair_masks
from probface_tf.models.layers import PACKAGE, SlimBatchNorm, flat_size
from probface_tf.models.probface import attach_backbone
from probface_tf.models.spec import ModelSpec
from probface_tf.models.uncertainty import SCOPE

# torch.nn.BatchNorm1d defaults (momentum 0.1 = Keras decay 0.9); its running variance, like SlimBatchNorm's,
# is updated with the unbiased batch variance.
TORCH_BN_DECAY = 0.9
TORCH_BN_EPSILON = 1e-5


class BaselineHeadError(ValueError):
    """A baseline head got an invalid option or input shape; the message names it."""


def flatten(features) -> tf.Tensor:
    x = tf.cast(features, tf.float32)
    return tf.reshape(x, [tf.shape(x)[0], -1])


def torch_linear_initializers(fan_in: int) -> tuple:
    """torch.nn.Linear's default init: kernel and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (kaiming_uniform with a = sqrt(5) reduces to that bound for the kernel)."""
    bound = 1.0 / math.sqrt(fan_in)
    return (keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            keras.initializers.RandomUniform(-bound, bound))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProbabilityHead(keras.layers.Layer):
    """face-uncertainty-pytorch's ``head_fc2_prob``: flattened features -> ``p`` [N, 1] in (0, 1).

    ``weight_decay`` reproduces ``SGD(weight_decay=wd)``, which decays every parameter (kernels, biases and
    the BN scale and offset): ``wd/2 * sum(w^2)`` over them appears in ``layer.losses``.
    """

    def __init__(self, fc1_size: int = 256, weight_decay: float = 5e-4, name: str = SCOPE, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        if int(fc1_size) < 1:
            raise BaselineHeadError(f"ProbabilityHead fc1_size must be >= 1, got {fc1_size}")
        if weight_decay < 0:
            raise BaselineHeadError(f"ProbabilityHead weight_decay must be >= 0, got {weight_decay}")
        self.fc1_size, self.weight_decay = int(fc1_size), float(weight_decay)
        self.fc1 = keras.layers.Dense(self.fc1_size, name="fc1", dtype="float32")
        self.fc1_bn = SlimBatchNorm(TORCH_BN_DECAY, TORCH_BN_EPSILON, name="fc1_BatchNorm", dtype="float32")
        self.fc2 = keras.layers.Dense(1, name="fc2", dtype="float32")

    def build(self, features_shape):
        flat = flat_size(features_shape, "ProbabilityHead", BaselineHeadError)
        for dense, fan_in in ((self.fc1, flat), (self.fc2, self.fc1_size)):
            dense.kernel_initializer, dense.bias_initializer = torch_linear_initializers(fan_in)
        self.fc1.build((None, flat))
        self.fc1_bn.build((None, self.fc1_size))
        self.fc2.build((None, self.fc1_size))
        if self.weight_decay > 0:
            decay = keras.regularizers.L2(self.weight_decay / 2.0)
            for variable in self.trainable_weights:
                variable.regularizer = decay

    def call(self, features, training=None):
        x = tf.nn.relu(self.fc1_bn(self.fc1(flatten(features)), training=training))
        return tf.sigmoid(self.fc2(x))

    def compute_output_shape(self, features_shape):
        return (features_shape[0], 1)

    def tf1_variable_map(self, scope: str = SCOPE) -> dict:
        """No original TF1 counterpart: nothing to convert (the backbone still restores by original names)."""
        return {}

    def get_config(self):
        return {**super().get_config(), "fc1_size": self.fc1_size, "weight_decay": self.weight_decay}


BASELINE_OUTPUTS = ("mu", "uncertainty")


def baseline_model(images, mu, uncertainty, name: str) -> keras.Model:
    """``images -> {'mu', 'uncertainty'}`` (uncertainty [N, 1], larger = riskier), both float32."""
    outputs = {"mu": keras.layers.Identity(name="mu_out", dtype="float32")(mu),
               "uncertainty": keras.layers.Identity(name="uncertainty", dtype="float32")(uncertainty)}
    return keras.Model(images, outputs, name=name)


def _float32(x, name: str, rank: int, what: str) -> tf.Tensor:
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    if x.shape.rank is not None and x.shape.rank != rank:
        raise LossInputError(f"{name} must have shape {what}, got shape {tuple(x.shape)}")
    return x


def cosine_and_pair_confidence(mu, p) -> tuple[tf.Tensor, tf.Tensor]:
    """``(cos_ij, c_ij)``: cosines of the L2-normalised rows of ``mu`` (a constant: gradients stop there) and the
    pair confidence ``min(c_i, c_j)``, ``c = 1 - mean_k p``. Float32 whatever the inputs."""
    mu = tf.stop_gradient(tf.math.l2_normalize(_float32(mu, "mu", 2, "[N, D]"), axis=1))
    p = _float32(p, "p", 2, "[N, K]")
    if mu.shape[0] is not None and p.shape[0] is not None and mu.shape[0] != p.shape[0]:
        raise LossInputError(f"mu (shape {tuple(mu.shape)}) and p (shape {tuple(p.shape)}) disagree on the batch size")
    confidence = 1.0 - tf.reduce_mean(p, axis=1, keepdims=True)
    return tf.matmul(mu, mu, transpose_b=True), tf.minimum(confidence, tf.transpose(confidence))


def positive_mean(values, labels) -> tf.Tensor:
    """Mean of ``values`` [N, N] over the positive pairs of ``labels`` (0 when there are none)."""
    positive, _ = pair_masks(labels)
    return masked_mean(values, positive)


def confidence_watch(labels, mu, p) -> dict:
    """face-uncertainty-pytorch's watch list as scalars: confidence c = 1 - p (mean, extremes) and the mean
    cosine of the positive pairs."""
    confidence = 1.0 - tf.reduce_mean(tf.cast(p, tf.float32), axis=1)
    unit = tf.math.l2_normalize(tf.cast(mu, tf.float32), axis=1)
    return {"pconf": tf.reduce_mean(confidence), "pconf_max": tf.reduce_max(confidence),
            "pconf_min": tf.reduce_min(confidence),
            "cos": positive_mean(tf.matmul(unit, unit, transpose_b=True), labels)}


def probability_model(spec: ModelSpec, backbone: keras.Model | None, name: str) -> keras.Model:
    """Backbone + :class:`ProbabilityHead` on ``spec.head_input``: ``mu`` is the backbone's embedding and
    ``uncertainty`` the head's ``p``. The backbone is frozen as in the original head training."""
    images, _, end_points = attach_backbone(spec, backbone, error=BaselineHeadError)
    head = ProbabilityHead(spec.fc1_size, spec.weight_decay)
    return baseline_model(images, end_points["mu"], head(end_points[spec.head_input]), name)
