"""The original ProbFace TF1 graph, rebuilt with plain ``tf.compat.v1`` ops in its own ``tf.Graph``.

tf-slim does not run on current TensorFlow, so the original ``slim.conv2d`` / ``slim.fully_connected`` /
``slim.batch_norm`` calls are expressed with ``variable_scope`` + ``get_variable`` + ``tf.nn`` ops and
``fused_batch_norm``, creating the same variables under the same names. The graph serves as an independent
reference: parity tests of the Keras model and losses, real TF1 checkpoints for the converter, and the
baseline of the speed benchmarks. It is not used by training or inference, and imports nothing from the
model code it checks: its architecture table below is written from the original's model files (ORIGINAL_SPEC
section 2), not shared with ``probface_tf.models``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
BN_DECAY, BN_EPS = 0.995, 1e-3


@dataclass(frozen=True)
class Architecture:
    """Widths and depths of the four ResFace stages; ``fusion`` appends every stage's global average."""
    filters: tuple = (64, 128, 256, 512)
    blocks: tuple = (3, 8, 16, 3)
    fusion: bool = False


# The original's models/*.py backbones by file name (resface64s2_relu_v3 is missing from its repository).
ARCHITECTURES = {
    "resface64_relu": Architecture(),
    "resface64_relu_m": Architecture(fusion=True),
    "resface64s2_relu": Architecture(filters=(32, 64, 128, 256)),
    "resface64s2_relu_m": Architecture(filters=(32, 64, 128, 256), fusion=True),
}


def architecture(spec) -> Architecture:
    """A name from ``ARCHITECTURES`` or any object with ``filters``, ``blocks`` and ``fusion``."""
    if isinstance(spec, str):
        if spec not in ARCHITECTURES:
            raise ValueError(f"unknown reference architecture {spec!r}; known: {sorted(ARCHITECTURES)}")
        return ARCHITECTURES[spec]
    return Architecture(tuple(spec.filters), tuple(spec.blocks), bool(spec.fusion))


def _batch_norm(x, training, center=True, scale=True):
    """slim.batch_norm(fused) with updates_collections=None: in-place moving-average update when training."""
    dim = int(x.shape[-1])
    with v1.variable_scope("BatchNorm"):
        beta = v1.get_variable("beta", [dim], initializer=v1.zeros_initializer()) if center else None
        gamma = v1.get_variable("gamma", [dim], initializer=v1.ones_initializer()) if scale else None
        mean = v1.get_variable("moving_mean", [dim], initializer=v1.zeros_initializer())
        var = v1.get_variable("moving_variance", [dim], initializer=v1.ones_initializer())
    offset = beta if beta is not None else tf.zeros([dim])
    mult = gamma if gamma is not None else tf.ones([dim])
    rank2 = len(x.shape) == 2
    x4 = tf.reshape(x, [-1, 1, 1, dim]) if rank2 else x

    def train_branch():
        y, batch_mean, batch_var = v1.nn.fused_batch_norm(x4, mult, offset, epsilon=BN_EPS, is_training=True)
        # The fused kernel's batch_var is the Bessel-corrected variance, which feeds the moving average.
        upd_m = v1.assign(mean, BN_DECAY * mean + (1 - BN_DECAY) * batch_mean)
        upd_v = v1.assign(var, BN_DECAY * var + (1 - BN_DECAY) * batch_var)
        with tf.control_dependencies([upd_m, upd_v]):
            return tf.identity(y)

    def infer_branch():
        y, _, _ = v1.nn.fused_batch_norm(x4, mult, offset, mean=mean, variance=var, epsilon=BN_EPS,
                                         is_training=False)
        return y

    if isinstance(training, bool):
        y = train_branch() if training else infer_branch()
    else:
        y = tf.cond(training, train_branch, infer_branch)
    return tf.reshape(y, [-1, dim]) if rank2 else y


def _conv(x, filters, scope, stride=1, init=None):
    with v1.variable_scope(scope):
        w = v1.get_variable("weights", [3, 3, int(x.shape[-1]), filters],
                            initializer=init or v1.glorot_uniform_initializer())
        y = tf.nn.conv2d(x, w, strides=[1, stride, stride, 1], padding="SAME")
        return tf.nn.relu(_batch_norm(y, False))


def _fc(x, size, scope, training, activation=None, weight_decay=0.0, center=True, scale=True):
    with v1.variable_scope(scope):
        w = v1.get_variable("weights", [int(x.shape[-1]), size], initializer=v1.glorot_uniform_initializer())
        if weight_decay > 0:  # slim.l2_regularizer: wd * sum(w^2) / 2
            v1.add_to_collection(v1.GraphKeys.REGULARIZATION_LOSSES, weight_decay * tf.nn.l2_loss(w))
        y = _batch_norm(tf.matmul(x, w), training, center, scale)
        return activation(y) if activation else y


def resface_graph(images, spec: Architecture, embedding_size=256):
    """Original ``inference``: returns (mu, conv_final, end_points); BN always uses moving statistics."""
    trunc = v1.truncated_normal_initializer(stddev=0.01)
    end_points = {}
    with v1.variable_scope("Resface"):
        net = images
        for k, (filters, blocks) in enumerate(zip(spec.filters, spec.blocks), start=1):
            with v1.variable_scope(f"Conv{k}"):
                net = _conv(net, filters, f"Conv{k}_pre", stride=2)
                with v1.variable_scope(f"Conv_{k}"):
                    for b in range(1, blocks + 1):
                        with v1.variable_scope(f"Conv_{k}_{b}"):
                            y = _conv(net, filters, "Conv", init=trunc)
                            y = _conv(y, filters, "Conv_1", init=trunc)
                            net = net + y
            end_points[f"Conv{k}"] = net
        h, w, c = (int(d) for d in net.shape[1:])
        flat = tf.reshape(net, [-1, h * w * c])
        conv_final = flat
        if spec.fusion:
            pooled = [tf.reduce_mean(end_points[f"Conv{k}"], axis=[1, 2]) for k in range(1, 5)]
            conv_final = tf.concat([flat] + pooled, axis=1)
        mu = _fc(flat, embedding_size, "Bottleneck", False)
        mu = tf.nn.l2_normalize(mu, axis=1)
    return mu, conv_final, end_points


def uncertainty_graph(features, output_size, training, weight_decay):
    """Original ``UncertaintyModule``: returns log_sigma_sq."""
    with v1.variable_scope("UncertaintyModule"):
        net = tf.reshape(features, [-1, int(np.prod(features.shape[1:]))])
        net = _fc(net, 256, "fc1", training, tf.nn.relu, weight_decay)
        net = _fc(net, output_size, "fc_log_sigma_sq", training, None, weight_decay, center=False, scale=False)
        with v1.variable_scope("scale_and_shift"):
            alpha = v1.get_variable("alpha", (), initializer=v1.constant_initializer(0.1))
            gamma = v1.get_variable("gamma", (), initializer=v1.constant_initializer(
                -1.0 if output_size == 1 else -7.0))
        z = alpha * net + gamma
        return tf.math.log(1e-6 + tf.exp(z))


def _masked_minimum(data, mask):
    top = tf.reduce_max(data, axis=1, keepdims=True)
    return tf.reduce_min((data - top) * mask, axis=1, keepdims=True) + top


def _masked_maximum(data, mask):
    bottom = tf.reduce_min(data, axis=1, keepdims=True)
    return tf.reduce_max((data - bottom) * mask, axis=1, keepdims=True) + bottom


def contrib_triplet_semihard(labels, dist, margin):
    """tf.contrib's semi-hard triplet loss on a given distance matrix, with its tile-based masking."""
    n = tf.size(labels)
    labels = tf.reshape(labels, [-1, 1])
    adjacency = tf.equal(labels, tf.transpose(labels))
    adjacency_not = tf.logical_not(adjacency)
    dist_tile = tf.tile(dist, [n, 1])
    mask = tf.logical_and(tf.tile(adjacency_not, [n, 1]), dist_tile > tf.reshape(tf.transpose(dist), [-1, 1]))
    mask_final = tf.transpose(tf.reshape(tf.reduce_any(mask, axis=1), [n, n]))
    outside = tf.transpose(tf.reshape(_masked_minimum(dist_tile, tf.cast(mask, tf.float32)), [n, n]))
    inside = tf.tile(_masked_maximum(dist, tf.cast(adjacency_not, tf.float32)), [1, n])
    semi_hard = tf.where(mask_final, outside, inside)
    loss_mat = margin + dist - semi_hard
    mask_pos = tf.cast(adjacency, tf.float32) - tf.eye(n)
    return tf.reduce_sum(tf.maximum(loss_mat * mask_pos, 0.0)) / tf.reduce_sum(mask_pos)


def mls_losses(labels, mu, sigma_sq, output_size, margin=3.0):
    """Original ``mutual_likelihood_score_loss`` (triplet_semihard): (mls, atte, att_pos, att_neg)."""
    mu_sg = tf.stop_gradient(mu)
    if output_size == 1:
        fuse = sigma_sq + tf.transpose(sigma_sq)
        cos = tf.matmul(mu_sg, mu_sg, transpose_b=True)
        att = 2 * (1 - cos) / (1e-10 + fuse)
        loss_mat = att + tf.math.log(fuse)
    else:
        fuse = sigma_sq[:, None, :] + sigma_sq[None, :, :]
        sq = tf.square(mu_sg[:, None, :] - mu_sg[None, :, :])
        loss_mat = tf.reduce_mean(sq / (1e-10 + fuse) + tf.math.log(fuse), axis=2)
        att = tf.reduce_mean(sq / (1e-10 + fuse), axis=2)
    n = tf.shape(mu)[0]
    same = tf.equal(labels[:, None], labels[None, :])
    off_diag = tf.logical_not(tf.eye(n, dtype=tf.bool))
    pos, neg = tf.logical_and(off_diag, same), tf.logical_and(off_diag, tf.logical_not(same))
    mls = tf.reduce_mean(tf.boolean_mask(loss_mat, pos))
    att_pos = tf.reduce_mean(tf.boolean_mask(att, pos))
    att_neg = tf.reduce_mean(tf.boolean_mask(att, neg))
    return mls, contrib_triplet_semihard(labels, att, margin), att_pos, att_neg


class TF1ProbFace:
    """The original graph in a private ``tf.Graph`` + ``Session``: inference, one training step, checkpoints."""

    def __init__(self, spec: Architecture | str = "resface64_relu", image_size=(96, 96), embedding_size=256,
                 output_size=1, weight_decay=5e-4, loss_weights=None, output_constraint="L2", with_head=True,
                 with_train_op=False, batch_size=None, features_input=False, head_input="conv_final", seed=0):
        """``head_input``: the end point feeding the head (``conv_final`` or ``Conv1``..``Conv4``, as the
        original ``uncertainty_module_input``). ``seed``: graph seed of the variable initializers, so the
        reference weights (and the parity margins measured on them) are the same in every run."""
        self.spec = architecture(spec)
        self.output_size = output_size
        self.graph = tf.Graph()
        with self.graph.as_default():
            if seed is not None:
                v1.set_random_seed(seed)
            h, w = image_size
            self.images = v1.placeholder(tf.float32, [batch_size, h, w, 3], name="images")
            self.labels = v1.placeholder(tf.int32, [batch_size], name="labels")
            self.learning_rate = v1.placeholder(tf.float32, [], name="learning_rate")
            self.phase_train = v1.placeholder_with_default(False, [], name="phase_train")
            mu, conv_final, self.end_points = resface_graph(self.images, self.spec, embedding_size)
            self.conv_final = conv_final
            self.mu = tf.identity(mu, name="mu")
            if with_head:
                if head_input != "conv_final" and head_input not in self.end_points:
                    raise ValueError(f"head_input {head_input!r} is not an end point; choose conv_final or one of "
                                     f"{sorted(self.end_points)}")
                features = conv_final if head_input == "conv_final" else self.end_points[head_input]
                log_sigma_sq = uncertainty_graph(features, output_size, self.phase_train, weight_decay)
                self.log_sigma_sq = tf.identity(log_sigma_sq, name="log_sigma_sq")
                self.sigma_sq = tf.identity(tf.exp(log_sigma_sq), name="sigma_sq")
            if with_train_op:
                self._build_train_op(loss_weights or {"mls_loss": 1.0, "output_constraint_loss": 1e-3,
                                                      "discriminate_loss": 1e-3}, output_constraint)
            self.sess = v1.Session(graph=self.graph)
            self.sess.run(v1.global_variables_initializer())

    def _build_train_op(self, weights, oc_type):
        """Original network.py: weighted losses, slim regularizers, Momentum(0.9) on UncertaintyModule vars."""
        mls, atte, att_pos, att_neg = mls_losses(self.labels, self.mu, self.sigma_sq, self.output_size)
        terms, watch = [], {"att_pos": att_pos, "att_neg": att_neg}
        if weights["mls_loss"] > 0:
            terms.append(weights["mls_loss"] * mls)
            watch["mls"] = mls
        if oc_type in ("L1", "L2"):
            ratio = self.sigma_sq / tf.stop_gradient(tf.reduce_mean(self.sigma_sq)) - 1
            oc = tf.reduce_sum(tf.square(ratio) if oc_type == "L2" else tf.abs(ratio))
            oc = oc * weights["output_constraint_loss"]
            terms.append(oc)
            watch["s_" + oc_type] = oc
        if weights["discriminate_loss"] > 0:
            terms.append(weights["discriminate_loss"] * atte)
            watch["atte"] = atte
        watch["s_max"], watch["s_min"] = tf.reduce_max(self.sigma_sq), tf.reduce_min(self.sigma_sq)
        regu = tf.reduce_sum(v1.get_collection(v1.GraphKeys.REGULARIZATION_LOSSES))
        terms.append(regu)
        watch["regu"] = regu
        watch["a"] = tf.add_n(terms)
        self.watch = watch
        train_vars = [v for v in v1.global_variables() if v.op.name.startswith("UncertaintyModule")]
        grads = tf.gradients(watch["a"], train_vars)
        opt = v1.train.MomentumOptimizer(self.learning_rate, momentum=0.9)
        self.train_op = opt.apply_gradients([(g, v) for g, v in zip(grads, train_vars) if g is not None])

    # ---- weights ----
    def variables(self) -> dict[str, tf.Variable]:
        with self.graph.as_default():
            return {v.op.name: v for v in v1.global_variables()
                    if v.op.name.startswith(("Resface", "UncertaintyModule"))}

    def get_weights(self) -> dict[str, np.ndarray]:
        names, vars_ = zip(*self.variables().items())
        return dict(zip(names, self.sess.run(list(vars_))))

    def set_weights(self, values: dict[str, np.ndarray]) -> None:
        variables = self.variables()
        with self.graph.as_default():
            self.sess.run([variables[name].assign(value) for name, value in values.items()])

    def randomize(self, rng: np.random.Generator, calibrate_images=None) -> None:
        """Random weights and non-trivial BN statistics; the head's BN statistics are calibrated on
        ``calibrate_images`` (when given) so that log_sigma_sq stays in a realistic range."""
        values = {}
        for name, value in self.get_weights().items():
            if name.endswith("moving_mean"):
                values[name] = rng.normal(0, 0.1, value.shape)
            elif name.endswith("moving_variance"):
                values[name] = rng.uniform(0.5, 1.5, value.shape)
            elif name.endswith("BatchNorm/gamma"):
                values[name] = rng.uniform(0.5, 1.5, value.shape)
            elif name.endswith("BatchNorm/beta"):
                values[name] = rng.normal(0, 0.1, value.shape)
            elif name.endswith("scale_and_shift/alpha"):
                values[name] = np.float32(0.3)
            elif name.endswith("scale_and_shift/gamma"):
                values[name] = np.float32(-1.5)
        self.set_weights({k: np.asarray(v, np.float32) for k, v in values.items()})
        if calibrate_images is not None:
            self._calibrate_head_bn(calibrate_images, rng)

    def _calibrate_head_bn(self, images, rng):
        for layer in ("fc1", "fc_log_sigma_sq"):
            pre = self.graph.get_tensor_by_name(f"UncertaintyModule/{layer}/MatMul:0")
            acts = self.sess.run(pre, {self.images: images})
            self.set_weights({
                f"UncertaintyModule/{layer}/BatchNorm/moving_mean":
                    (acts.mean(0) + rng.normal(0, 0.1, acts.shape[1]) * acts.std(0)).astype(np.float32),
                # Floored: a few calibration images leave some dimensions nearly constant, and dividing by
                # their tiny spread would only amplify float32 round-off.
                f"UncertaintyModule/{layer}/BatchNorm/moving_variance":
                    (np.maximum(acts.var(0), 0.25 * acts.var(0).mean()) * rng.uniform(0.8, 1.2, acts.shape[1])
                     ).astype(np.float32)})

    def save(self, prefix: str, global_step: int | None = None) -> str:
        with self.graph.as_default():
            saver = v1.train.Saver(list(self.variables().values()))
            return saver.save(self.sess, prefix, global_step=global_step, write_meta_graph=False)

    # ---- running ----
    def run(self, images, fetch=("mu", "sigma_sq", "log_sigma_sq")) -> dict[str, np.ndarray]:
        return self.sess.run({k: getattr(self, k) for k in fetch}, {self.images: images})

    def train_step(self, images, labels, learning_rate) -> dict[str, float]:
        feed = {self.images: images, self.labels: labels, self.learning_rate: learning_rate,
                self.phase_train: True}
        watch, _ = self.sess.run([self.watch, self.train_op], feed)
        return {k: float(v) for k, v in watch.items()}
