"""Momentum SGD in the TF1 form the original trains with.

TF1 ``MomentumOptimizer``: ``acc = m*acc + g; w -= lr*acc``. Keras SGD: ``v = m*v - lr*g; w += v``. They agree
while the learning rate is constant and differ after it changes (TF1 rescales the whole accumulated velocity
by the new rate), so the original's LR drop at step 6000 needs this form to be reproduced exactly.
"""
from __future__ import annotations

import keras

from probface_tf.models.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class TF1Momentum(keras.optimizers.Optimizer):
    def __init__(self, learning_rate=0.01, momentum: float = 0.9, name: str = "TF1Momentum", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.accumulators = [self.add_variable_from_reference(v, "accumulator") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        lr = keras.ops.cast(learning_rate, variable.dtype)
        grad = keras.ops.cast(gradient, variable.dtype)
        acc = self.accumulators[self._get_variable_index(variable)]
        self.assign(acc, self.momentum * acc + grad)
        self.assign_sub(variable, lr * acc)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


def make_optimizer(cfg, learning_rate: float):
    """The configured optimizer; mixed_float16 wraps it in Keras' dynamic loss scaling."""
    if cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate)
    elif cfg.momentum_form == "tf1":
        opt = TF1Momentum(learning_rate, cfg.momentum)
    else:
        opt = keras.optimizers.SGD(learning_rate, momentum=cfg.momentum)
    if cfg.mixed_precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
