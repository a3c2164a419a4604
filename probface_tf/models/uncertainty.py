"""The ProbFace uncertainty head (original ``models/uncertainty_module.py``, scope ``UncertaintyModule``).

flatten -> fc1 (256, no bias) -> BN -> ReLU -> fc_log_sigma_sq (output_size, no bias) -> BN without centre and
scale -> scale_and_shift (shared scalars alpha, gamma) -> log(1e-6 + exp(.)) = log_sigma_sq.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from probface_tf.models.layers import PACKAGE, ScaleAndShift, SlimBatchNorm, flat_size

SCOPE = "UncertaintyModule"
SIGMA_SQ_EPSILON = 1e-6


def initial_shift(output_size: int) -> float:
    """The original's initial ``gamma`` (the shift): -1 for a 1-d sigma, -7 for a D-dim one."""
    return -1.0 if output_size == 1 else -7.0


@keras.saving.register_keras_serializable(package=PACKAGE)
class UncertaintyModule(keras.layers.Layer):
    """Maps backbone features to log sigma^2 of shape [N, output_size]; always computes in float32.

    ``weight_decay`` is applied as the original slim ``l2_regularizer`` (wd * sum(w^2) / 2) on the two weight
    matrices only; the sum appears in ``layer.losses`` (the original ``regu``).
    """

    def __init__(self, output_size: int = 1, fc1_size: int = 256, weight_decay: float = 5e-4,
                 bn_decay: float = 0.995, bn_epsilon: float = 1e-3, name: str = SCOPE, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        if output_size < 1:
            raise ValueError(f"UncertaintyModule output_size must be >= 1, got {output_size}")
        self.output_size, self.fc1_size, self.weight_decay = int(output_size), int(fc1_size), float(weight_decay)
        self.bn_decay, self.bn_epsilon = bn_decay, bn_epsilon
        reg = keras.regularizers.L2(weight_decay / 2.0) if weight_decay > 0 else None
        self.fc1 = keras.layers.Dense(fc1_size, use_bias=False, kernel_initializer="glorot_uniform",
                                      kernel_regularizer=reg, name="fc1", dtype="float32")
        self.fc1_bn = SlimBatchNorm(bn_decay, bn_epsilon, name="fc1_BatchNorm", dtype="float32")
        self.fc_log_sigma_sq = keras.layers.Dense(output_size, use_bias=False, kernel_initializer="glorot_uniform",
                                                  kernel_regularizer=reg, name="fc_log_sigma_sq", dtype="float32")
        self.fc_log_sigma_sq_bn = SlimBatchNorm(bn_decay, bn_epsilon, center=False, scale=False,
                                                name="fc_log_sigma_sq_BatchNorm", dtype="float32")
        self.scale_and_shift = ScaleAndShift(0.1, initial_shift(output_size), name="scale_and_shift",
                                             dtype="float32")

    def build(self, input_shape):
        flat = flat_size(input_shape, "UncertaintyModule")
        self.fc1.build((None, flat))
        self.fc1_bn.build((None, self.fc1_size))
        self.fc_log_sigma_sq.build((None, self.fc1_size))
        self.fc_log_sigma_sq_bn.build((None, self.output_size))
        self.scale_and_shift.build((None, self.output_size))

    def call(self, features, training=None):
        x = tf.reshape(tf.cast(features, tf.float32), [tf.shape(features)[0], -1])
        x = tf.nn.relu(self.fc1_bn(self.fc1(x), training=training))
        x = self.fc_log_sigma_sq_bn(self.fc_log_sigma_sq(x), training=training)
        z = self.scale_and_shift(x)
        # The epsilon keeps sigma^2 >= 1e-6 however negative z gets.
        return tf.math.log(SIGMA_SQ_EPSILON + tf.exp(z))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size)

    def tf1_variable_map(self, scope: str = SCOPE) -> dict[str, tf.Variable]:
        """{original TF1 variable name: Keras variable} for the 10 head variables."""
        out = {f"{scope}/fc1/weights": self.fc1.kernel,
               f"{scope}/fc_log_sigma_sq/weights": self.fc_log_sigma_sq.kernel,
               f"{scope}/scale_and_shift/alpha": self.scale_and_shift.alpha,
               f"{scope}/scale_and_shift/gamma": self.scale_and_shift.gamma}
        for tf1_layer, bn in (("fc1", self.fc1_bn), ("fc_log_sigma_sq", self.fc_log_sigma_sq_bn)):
            for var in bn.weights:
                out[f"{scope}/{tf1_layer}/BatchNorm/{var.name}"] = var
        return out

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "fc1_size": self.fc1_size,
                "weight_decay": self.weight_decay, "bn_decay": self.bn_decay, "bn_epsilon": self.bn_epsilon}
