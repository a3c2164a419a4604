"""Small serializable layers shared by the models."""
from __future__ import annotations

import keras
import tensorflow as tf

PACKAGE = "probface_tf"


def flat_size(features_shape, layer: str, error=ValueError) -> int:
    """Width of the flattened features of a layer's input shape; ``error`` names ``layer`` when a dimension is
    unknown."""
    size = 1
    for d in features_shape[1:]:
        if d is None:
            raise error(f"{layer} needs fully known feature dimensions, got {tuple(features_shape)}")
        size *= int(d)
    return size


@keras.saving.register_keras_serializable(package=PACKAGE)
class L2Normalize(keras.layers.Layer):
    """x / sqrt(max(sum(x^2), 1e-12)) along the last axis, as ``tf.nn.l2_normalize``."""

    def __init__(self, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, x):
        return tf.math.l2_normalize(tf.cast(x, self.compute_dtype), axis=-1, epsilon=self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SlimBatchNorm(keras.layers.Layer):
    """Batch normalization with the TF1 ``slim.batch_norm`` (fused) semantics.

    Differences from ``keras.layers.BatchNormalization`` that change numbers: the moving variance is updated
    with the Bessel-corrected batch variance n/(n-1) (TF's fused kernel), and ``center``/``scale`` may both be
    off, leaving only the moving statistics (the original ``fc_log_sigma_sq`` normalizer).
    """

    def __init__(self, decay: float = 0.995, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.decay, self.epsilon, self.center, self.scale = decay, epsilon, center, scale

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if self.scale:
            self.gamma = self.add_weight(shape=(dim,), initializer="ones", name="gamma")
        if self.center:
            self.beta = self.add_weight(shape=(dim,), initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=(dim,), initializer="zeros", name="moving_mean", trainable=False)
        self.moving_variance = self.add_weight(shape=(dim,), initializer="ones", name="moving_variance",
                                               trainable=False)

    def call(self, x, training=None):
        x = tf.cast(x, tf.float32)
        if training:
            mean, variance = tf.nn.moments(x, axes=list(range(len(x.shape) - 1)))
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            unbiased = variance * n / tf.maximum(n - 1.0, 1.0)
            self.moving_mean.assign(self.decay * self.moving_mean + (1.0 - self.decay) * mean)
            self.moving_variance.assign(self.decay * self.moving_variance + (1.0 - self.decay) * unbiased)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        gamma = self.gamma if self.scale else None
        beta = self.beta if self.center else None
        return tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "decay": self.decay, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaleAndShift(keras.layers.Layer):
    """``alpha * x + gamma`` with two scalars shared by all dimensions (original ``scale_and_shift`` scope).

    The original names the multiplier ``alpha`` and the shift ``gamma``; the names are kept.
    """

    def __init__(self, alpha_init: float = 0.1, gamma_init: float = -1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha_init, self.gamma_init = alpha_init, gamma_init

    def build(self, input_shape):
        self.alpha = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.alpha_init),
                                     name="alpha")
        self.gamma = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.gamma_init),
                                     name="gamma")

    def call(self, x):
        return self.alpha * tf.cast(x, tf.float32) + self.gamma

    def get_config(self):
        return {**super().get_config(), "alpha_init": self.alpha_init, "gamma_init": self.gamma_init}
