"""Heads of the face-uncertainty-pytorch baselines, as serializable Keras layers on the backbone's conv_final.

* :class:`ProbabilityHead` (``head_fc2_prob``): ``Dense(fc1) -> BN -> ReLU -> Dense(1) -> sigmoid`` gives ``p``
  in (0, 1). ``p`` is an *uncertainty* probability: the original losses turn it into the confidence
  ``c = 1 - p`` first ("change uncertainty to confidence prob"), so for risk tables ``p = 1 - c`` is already
  the uncertainty (larger = riskier). PCNet and IDQ share this head and differ only in the loss.
* :class:`MCDropoutHead`: dropout kept active at test time before a copy of the backbone's bottleneck
  (``Dense -> BN -> l2-normalise``), ``T`` stochastic passes; ``mu`` is the re-normalised mean direction and
  the uncertainty the spread of ``cos(sample, mu)``. Only this tail is repeated: the backbone runs once per
  image up to the flatten, so T passes cost T small matmuls instead of T backbone forwards.

Both layers are named ``UncertaintyModule`` by default, so the training loop, restore filters and checkpoints
that look for the head by that name treat them like the ProbFace head.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from probface_tf.baselines.losses import mc_dropout_uncertainty
from probface_tf.models.layers import PACKAGE, SlimBatchNorm
from probface_tf.models.resface import BN_DECAY, BN_EPSILON
from probface_tf.models.uncertainty import SCOPE

# torch.nn.BatchNorm1d defaults (momentum 0.1 = Keras decay 0.9); its running variance, like SlimBatchNorm's,
# is updated with the unbiased batch variance.
TORCH_BN_DECAY = 0.9
TORCH_BN_EPSILON = 1e-5


class BaselineHeadError(ValueError):
    """A baseline head got an invalid option or input shape; the message names it."""


def _flat_size(features_shape, layer: str) -> int:
    size = 1
    for d in features_shape[1:]:
        if d is None:
            raise BaselineHeadError(f"{layer} needs fully known feature dimensions, got {tuple(features_shape)}")
        size *= int(d)
    return size


def _flatten(features) -> tf.Tensor:
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
        flat = _flat_size(features_shape, "ProbabilityHead")
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
        x = tf.nn.relu(self.fc1_bn(self.fc1(_flatten(features)), training=training))
        return tf.sigmoid(self.fc2(x))

    def compute_output_shape(self, features_shape):
        return (features_shape[0], 1)

    def tf1_variable_map(self, scope: str = SCOPE) -> dict:
        """No original TF1 counterpart: nothing to convert (the backbone still restores by original names)."""
        return {}

    def get_config(self):
        return {**super().get_config(), "fc1_size": self.fc1_size, "weight_decay": self.weight_decay}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MCDropoutHead(keras.layers.Layer):
    """Monte-Carlo dropout on the backbone's bottleneck: features -> ``(mu [N, D], uncertainty [N, 1])``.

    ``features`` is conv_final; its first ``flat_size`` columns (default: all) are the flattened last stage
    that feeds the bottleneck (fusion backbones append pooled stages after it). Each of ``samples`` passes
    applies inverted dropout of ``rate`` (always, whatever ``training`` says), then the bottleneck copy; the
    passes draw independent masks from stateless seeds taken from the layer's seed generator. ``rate = 0``
    gives the deterministic embedding and uncertainty 0.
    """

    def __init__(self, embedding_size: int, rate: float = 0.5, samples: int = 100, flat_size: int | None = None,
                 seed: int | None = None, name: str = SCOPE, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise BaselineHeadError(f"MCDropoutHead rate must be in [0, 1), got {rate}")
        if int(samples) < 2:
            raise BaselineHeadError(f"MCDropoutHead samples must be >= 2 (a spread needs two passes), got {samples}")
        if int(embedding_size) < 1:
            raise BaselineHeadError(f"MCDropoutHead embedding_size must be >= 1, got {embedding_size}")
        self.embedding_size, self.rate, self.samples = int(embedding_size), float(rate), int(samples)
        self.flat_size = None if flat_size is None else int(flat_size)
        self.seed = seed
        # Names of the backbone layers they copy (Resface/Bottleneck and its BatchNorm).
        self.bottleneck = keras.layers.Dense(self.embedding_size, use_bias=False, name="Bottleneck", dtype="float32")
        self.bottleneck_bn = keras.layers.BatchNormalization(momentum=BN_DECAY, epsilon=BN_EPSILON,
                                                             name="Bottleneck.BatchNorm", dtype="float32")
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")

    def build(self, features_shape):
        width = _flat_size(features_shape, "MCDropoutHead")
        flat = self.flat_size or width
        if flat > width:
            raise BaselineHeadError(f"MCDropoutHead flat_size {flat} exceeds the feature width {width}")
        self.bottleneck.build((None, flat))
        self.bottleneck_bn.build((None, self.embedding_size))

    def _flat(self, features) -> tf.Tensor:
        x = _flatten(features)
        return x if self.flat_size is None else x[:, :self.flat_size]

    def _embed(self, x) -> tf.Tensor:
        return tf.math.l2_normalize(self.bottleneck_bn(self.bottleneck(x), training=False), axis=1)

    def sample(self, features, samples: int | None = None) -> tf.Tensor:
        """``samples`` (default ``self.samples``) dropout embeddings, L2-normalised: [T, N, D]."""
        x = self._flat(features)
        count = self.samples if samples is None else int(samples)
        if self.rate == 0.0:
            return tf.tile(self._embed(x)[None], [count, 1, 1])
        base = keras.random.randint((2,), 0, 2 ** 30, dtype="int32", seed=self.seed_generator)

        def one_pass(t):
            seed = base + tf.stack([tf.constant(0, tf.int32), t])
            return self._embed(tf.nn.experimental.stateless_dropout(x, self.rate, seed=seed))

        return tf.map_fn(one_pass, tf.range(count, dtype=tf.int32), fn_output_signature=tf.float32)

    def call(self, features, training=None):
        if self.rate == 0.0:  # one deterministic pass: every sample would be the same
            mu = self._embed(self._flat(features))
            return mu, tf.zeros([tf.shape(mu)[0], 1], tf.float32)
        return mc_dropout_uncertainty(self.sample(features))

    def compute_output_shape(self, features_shape):
        return (features_shape[0], self.embedding_size), (features_shape[0], 1)

    def copy_bottleneck(self, backbone: keras.Model) -> None:
        """Take the bottleneck weights (and BN statistics) of a ResFace backbone."""
        pairs = ((self.bottleneck, backbone.get_layer("Bottleneck")),
                 (self.bottleneck_bn, backbone.get_layer("Bottleneck.BatchNorm")))
        for ours, theirs in pairs:
            for dst, src in zip(ours.weights, theirs.weights):
                if tuple(dst.shape) != tuple(src.shape):
                    raise BaselineHeadError(f"MCDropoutHead: backbone {theirs.name}/{src.name} has shape "
                                            f"{tuple(src.shape)}, the head expects {tuple(dst.shape)}")
                dst.assign(src)

    def tf1_variable_map(self, scope: str = SCOPE) -> dict:
        """No variables of its own in the original: its weights are copies of the backbone's bottleneck."""
        return {}

    def get_config(self):
        return {**super().get_config(), "embedding_size": self.embedding_size, "rate": self.rate,
                "samples": self.samples, "flat_size": self.flat_size, "seed": self.seed}
