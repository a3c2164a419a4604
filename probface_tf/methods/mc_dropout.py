"""MC dropout (face-uncertainty-pytorch): dropout kept active at test time before a copy of the backbone's
bottleneck (``Dense -> BN -> l2-normalise``), ``T`` stochastic passes; ``mu`` is the re-normalised mean
direction and the uncertainty the spread of ``cos(sample, mu)``. Only this tail is repeated: the backbone runs
once per image up to the flatten, so T passes cost T small matmuls instead of T backbone forwards.

Nothing is trained: once the backbone is restored, its bottleneck is copied into the head (``prepare``).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from probface_tf.losses import LossInputError
from probface_tf.methods.registry import HEAD_STAGE, Method, register_method
from probface_tf.models.layers import PACKAGE, flat_size
from probface_tf.models.probability_head import BaselineHeadError, baseline_model, flatten
from probface_tf.models.probface import attach_backbone
from probface_tf.models.resface import BN_DECAY, BN_EPSILON
from probface_tf.models.spec import ModelSpec
from probface_tf.models.uncertainty import SCOPE


def mc_dropout_uncertainty(samples) -> tuple[tf.Tensor, tf.Tensor]:
    """``(mu, uncertainty)`` from T dropout passes ``samples`` [T, N, D].

    Each sample is L2-normalised; ``mu`` [N, D] is their mean direction (re-normalised); ``uncertainty`` [N, 1] is
    the standard deviation over T (population, ddof 0) of the cosine between each sample and ``mu``.
    """
    samples = tf.convert_to_tensor(samples)
    if samples.shape.rank is not None and samples.shape.rank != 3:
        raise LossInputError(f"samples must have shape [T, N, D], got shape {tuple(samples.shape)}")
    samples = tf.math.l2_normalize(tf.cast(samples, tf.float32), axis=2)
    mu = tf.math.l2_normalize(tf.reduce_mean(samples, axis=0), axis=1)
    cos = tf.reduce_sum(samples * mu[None], axis=2)  # [T, N]
    return mu, tf.math.reduce_std(cos, axis=0)[:, None]


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
        width = flat_size(features_shape, "MCDropoutHead", BaselineHeadError)
        flat = self.flat_size or width
        if flat > width:
            raise BaselineHeadError(f"MCDropoutHead flat_size {flat} exceeds the feature width {width}")
        self.bottleneck.build((None, flat))
        self.bottleneck_bn.build((None, self.embedding_size))

    def _flat(self, features) -> tf.Tensor:
        x = flatten(features)
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


def mc_dropout_model(spec: ModelSpec, backbone: keras.Model | None = None) -> keras.Model:
    """Backbone + :class:`MCDropoutHead` on conv_final (never trained: call :func:`copy_bottleneck` once the
    backbone is restored)."""
    images, backbone, end_points = attach_backbone(spec, backbone, error=BaselineHeadError)
    # The bottleneck reads the flattened last stage, the first columns of conv_final.
    flat = int(backbone.get_layer("Logits.Flatten").output.shape[-1])
    head = MCDropoutHead(int(backbone.output["mu"].shape[-1]), spec.mc_dropout_rate, spec.mc_samples,
                         flat_size=flat, seed=spec.seed)
    head.trainable = False
    mu, uncertainty = head(end_points["conv_final"])
    return baseline_model(images, mu, uncertainty, "MCDropout")


def copy_bottleneck(model: keras.Model) -> None:
    """Copy the (restored) backbone's bottleneck into the model's MC-dropout head (no-op for other heads)."""
    head = model.get_layer(SCOPE)
    if isinstance(head, MCDropoutHead):
        head.copy_bottleneck(model.get_layer("Resface"))


def prepare(model: keras.Model, cfg) -> list[str]:
    copy_bottleneck(model)
    notes = [] if cfg.restore_model else ["warning: no restore_model: MC dropout runs on a randomly initialised "
                                          "backbone"]
    return notes + [f"MC dropout: rate {cfg.mc_dropout_rate}, {cfg.mc_samples} passes over the bottleneck; "
                    f"nothing to train"]


register_method(Method(
    name="mc_dropout", stage=HEAD_STAGE, summary="MC dropout: spread of T dropout passes over the bottleneck",
    build_model=mc_dropout_model, prepare=prepare, uncertainty=lambda outputs: outputs["uncertainty"]))
