"""Head-training loop pieces: restore sources and their scope filters, mixed precision, the original log line and
its TensorBoard twin, per-epoch evaluation/export layout, resume selection and the early input checks."""
import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from probface_tf.config import from_dict, load_config
from probface_tf.convert import CheckpointError
from probface_tf.models.probface import backbone_of, build_probface, head_of
from probface_tf.models.resface import BackboneSpec, build_resface, tf1_variable_map
from tf1_reference import TF1ProbFace
from probface_tf.train.logs import format_line, latest_run_dir
from probface_tf.train.checks import TrainingInputError, check_inputs
from probface_tf.train.loop import HeadTrainer, train
from probface_tf.train.restore import restore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1))
SMALL = dict(image_size=(32, 32), embedding_size=16, backbone_filters=SPEC.filters, backbone_blocks=SPEC.blocks)
LOG_KEYS = ["a", "att_neg", "att_pos", "atte", "lr", "mls", "regu", "s_L2", "s_max", "s_min"]


# ------------------------------------------------------------------------------------------------ restore


def _named(model) -> dict:
    """{original TF1 name: variable} of a ProbFace model (the names the scope filters see)."""
    return {**tf1_variable_map(backbone_of(model)), **head_of(model).tf1_variable_map()}


def _perturbed(model, seed):
    rng = np.random.default_rng(seed)
    for w in model.weights:  # every variable differs from a fresh model's (moving variances stay positive)
        w.assign(np.abs(w.numpy()) + 0.5 if "moving_variance" in w.path
                 else w.numpy() + rng.normal(0, 0.1, w.shape).astype(np.float32))
    return model


def _check_restore(source_values: dict, restore_model, kept, restore_scopes=None, exclude=None):
    """Restore into a fresh model; variables ``kept(name)`` keep their fresh values, the others equal the source."""
    model = build_probface(**SMALL)
    fresh = {n: v.numpy().copy() for n, v in _named(model).items()}
    message = restore(model, str(restore_model), restore_scopes, exclude)
    restored, untouched = [], []
    for name, var in _named(model).items():
        if kept(name):
            np.testing.assert_array_equal(var.numpy(), fresh[name], err_msg=name)
            untouched.append(name)
        else:
            assert not np.array_equal(fresh[name], source_values[name]), name  # not a trivial equality
            np.testing.assert_array_equal(var.numpy(), source_values[name], err_msg=name)
            restored.append(name)
    assert f"Restoring {len(restored)} variables" in message
    return restored, untouched


FILTERS = [  # (restore_scopes, exclude_restore_scopes, predicate: the variable keeps its fresh value)
    (None, ["center_loss", "centers", "UncertaintyModule"], lambda n: "UncertaintyModule" in n),
    (["Resface/Conv1", "scale_and_shift"], None, lambda n: not ("Resface/Conv1" in n or "scale_and_shift" in n)),
    (None, ["Bottleneck", "fc_log_sigma_sq"], lambda n: "Bottleneck" in n or "fc_log_sigma_sq" in n),
    (["Resface", "UncertaintyModule"], ["Conv2"], lambda n: "Conv2" in n),
]


@pytest.fixture(scope="module")
def tf1_run(tmp_path_factory):
    """An original-style run directory: a TF1 checkpoint of a full ProbFace graph (backbone + head)."""
    graph = TF1ProbFace(SPEC, (32, 32), 16, 1)
    graph.randomize(np.random.default_rng(3))
    run = tmp_path_factory.mktemp("tf1_run")
    graph.save(str(run / "model-20200101-000000.ckpt"), global_step=120)
    return run, graph.get_weights()


@pytest.fixture(scope="module")
def keras_sources(tmp_path_factory):
    """A full ProbFace .keras, a stage-1 backbone .keras, and a stage-1 run dir holding that backbone."""
    root = tmp_path_factory.mktemp("keras_sources")
    full = _perturbed(build_probface(**SMALL), 1)
    full.save(root / "full.keras")
    backbone = _perturbed(build_resface(SPEC, (32, 32), 16), 2)
    backbone.save(root / "backbone.keras")
    (root / "stage1_run").mkdir()
    backbone.save(root / "stage1_run" / "backbone.keras")
    backbone_values = {n: v.numpy() for n, v in tf1_variable_map(backbone).items()}
    return root, {n: v.numpy() for n, v in _named(full).items()}, backbone_values


@pytest.mark.parametrize("scopes,exclude,kept", FILTERS)
def test_restore_tf1_checkpoint_run_dir(tf1_run, scopes, exclude, kept):
    run, values = tf1_run
    restored, _ = _check_restore(values, run, kept, scopes, exclude)
    assert restored


@pytest.mark.parametrize("scopes,exclude,kept", FILTERS + [(None, None, lambda n: False)])
def test_restore_full_keras_model(keras_sources, scopes, exclude, kept):
    root, values, _ = keras_sources
    _check_restore(values, root / "full.keras", kept, scopes, exclude)


@pytest.mark.parametrize("source", ["backbone.keras", "stage1_run"])
@pytest.mark.parametrize("scopes,exclude,kept", FILTERS + [(None, None, lambda n: False)])
def test_restore_stage1_backbone(keras_sources, source, scopes, exclude, kept):
    """A backbone source has no head: the head always keeps its fresh values, the filters act on the rest."""
    root, _, values = keras_sources
    restored, untouched = _check_restore(values, root / source, lambda n: kept(n) or n.startswith("Uncertainty"),
                                         scopes, exclude)
    assert len([n for n in untouched if n.startswith("UncertaintyModule/")]) == 10


def test_restore_reports_mismatched_source(keras_sources, tmp_path):
    other = build_resface(SPEC, (32, 32), 24)  # another embedding size: the Bottleneck shapes differ
    other.save(tmp_path / "backbone.keras")
    with pytest.raises(CheckpointError, match=r"Resface/Bottleneck/weights: checkpoint \(64, 24\) vs model \(64, 16\)"):
        restore(build_probface(**SMALL), str(tmp_path / "backbone.keras"))
    with pytest.raises(CheckpointError, match="restore_model file not found"):
        restore(build_probface(**SMALL), str(tmp_path / "none.keras"))


# ------------------------------------------------------------------------------------------ mixed precision


@pytest.fixture
def reset_policy():
    yield
    keras.config.set_dtype_policy("float32")


def _trainer(policy, weights):
    keras.config.set_dtype_policy(policy)
    model = build_probface(**SMALL)
    model.set_weights(weights)
    cfg = from_dict({"image_size": [32, 32], "embedding_size": 16, "backbone_filters": list(SPEC.filters),
                     "backbone_blocks": list(SPEC.blocks), "batch_size": 32, "double_batch": False,
                     "mixed_precision": policy, "learning_rate_schedule": {0: 0.05}})
    return HeadTrainer(model, cfg, 0.05), model


# Measured relative error of the frozen backbone's features vs float32 (4 seeds): float16 <= 9e-4, bfloat16
# <= 7.3e-3 -- the unit round-offs 2^-11 and 2^-8 accumulated over the backbone's layers.
FEATURE_TOL = {"float32": 1e-6, "mixed_float16": 3e-3, "mixed_bfloat16": 2e-2}
# Losses of whole image steps, relative to the loss scale: measured <= 1.5e-3 (float16) and <= 1.8e-2 (bfloat16).
LOSS_TOL = {"float32": 1e-6, "mixed_float16": 5e-3, "mixed_bfloat16": 4e-2}


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_head_and_losses_stay_float32(policy, reset_policy):
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (32, 32, 32, 3)).astype(np.float32)
    labels = np.repeat(np.arange(8), 4).astype(np.int32)
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    model = build_probface(**SMALL)
    _perturbed(backbone_of(model), 4)  # a non-trivial frozen backbone; the head keeps its original init
    weights = model.get_weights()

    ours, ours_model = _trainer(policy, weights)
    compute = {"float32": tf.float32, "mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}[policy]
    features, mu = ours.features(images)
    assert features.dtype == compute  # the frozen backbone really runs in the policy's precision
    watch, _, _ = ours._gradients[False](features, mu, labels)  # the compiled step on backbone features
    dtypes = {"log_sigma_sq": ours_model(images)["log_sigma_sq"].dtype, "head": ours.head(features).dtype,
              "mu": mu.dtype, **{k: v.dtype for k, v in watch.items()}}
    assert all(d == tf.float32 for d in dtypes.values()), dtypes
    assert isinstance(ours.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")

    # 1. The head and the losses compute in float32: fed the same (rounded) features, the policy's steps equal a
    # float32 trainer's to float32 round-off (measured: bit-identical; loss scaling by powers of 2 is exact).
    ref, ref_model = _trainer("float32", weights)
    same = tf.cast(features, tf.float32)
    for step in range(4):
        got, want = ours.step(features, mu, labels, step), ref.step(same, mu, labels, step)
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), (step, key)
    for a, b in zip(head_of(ours_model).weights, head_of(ref_model).weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-9, err_msg=a.path)
    moved = [v.numpy() for v in head_of(ref_model).weights][-2:]  # alpha, gamma left their initial 0.1, -1
    assert abs(float(moved[0]) - 0.1) > 1e-4 and abs(float(moved[1]) + 1.0) > 1e-4

    # 2. Whole image steps vs the float32 run: only the backbone's rounding separates them. (The head's weight
    # updates inherit that rounding amplified -- ~10% of a 4-step update for bfloat16 -- so weights are compared
    # in 1., on equal inputs, where they must match.)
    keras.config.set_dtype_policy("float32")
    f32_trainer, _ = _trainer("float32", weights)
    f32_features, _ = f32_trainer.features(images)
    error = float(tf.norm(tf.cast(features, tf.float32) - f32_features) / tf.norm(f32_features))
    assert error <= FEATURE_TOL[policy]
    fresh, _ = _trainer(policy, weights)
    for step in range(4):
        got, want = fresh.image_step(images, labels, step), f32_trainer.image_step(images, labels, step)
        # mls (and the total a holding it) is attention + log sigma^2, O(1) terms that can cancel to ~0: its
        # error is relative to the attention term, the size of what gets rounded.
        scale = {"mls": want["att_pos"], "a": want["att_pos"]}
        for key in want:
            assert abs(got[key] - want[key]) <= LOSS_TOL[policy] * max(abs(want[key]), scale.get(key, 0.0)) + 1e-7, \
                (step, key, got[key], want[key])


# -------------------------------------------------------------------------------------------- log line


def test_format_line_reproduces_the_original_example():
    watch = {"s_min": 0.2813, "mls": 0.6820, "a": 0.8130, "regu": 0.1267, "att_pos": 0.9874, "lr": 0.01,
             "s_max": 0.4467, "atte": 1.8354, "att_neg": 2.7123, "s_L2": 0.0025}
    expected = ("[1][1] time: 4.19 a 0.8130 att_neg 2.7123 att_pos 0.9874 atte 1.8354 lr 0.0100 mls 0.6820 "
                "regu 0.1267 s_L2 0.0025 s_max 0.4467 s_min 0.2813")
    assert format_line(0, 0, 4.19, watch) == expected
    assert format_line(0, 0, 4.19, dict(reversed(list(watch.items())))) == expected
    assert format_line(11, 999, 12.3456, {"a": 1}) == "[12][1000] time: 12.35 a 1.0000"


# --------------------------------------------------------------------- a short run: evaluation, export, logs

EPOCH, EPOCHS, PAIRS = 3, 2, 40


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """The tiny recipe on a smaller synthetic set with a .bin: 2 epochs of 3 steps, SavedModel export on."""
    tmp = tmp_path_factory.mktemp("short_run")
    synth = {"root": str(tmp / "synth"), "num_identities": 16, "images_per_identity": 4, "seed": 0,
             "image_size": 48, "bin_pairs": PAIRS, "split": 0.25, "workers": 1}
    config = os.path.join(REPO, "configs", "tiny.py")
    cfg = load_config(config, [f"log_base_dir={tmp / 'log'}", f"synthetic={synth!r}",
                               f"train_dataset_path={tmp / 'synth' / 'train'}",
                               f"test_bin_paths={[str(tmp / 'synth' / 'synth_val.bin')]!r}",
                               "batch_size=32", "batch_format={'size': 32, 'num_classes': 8}",
                               f"epoch_size={EPOCH}", f"num_epochs={EPOCHS}", "summary_interval=1",
                               "checkpoint_interval=2", "export_saved_model=True", "deterministic=False"])
    result = train(cfg, config_path=config)
    return result["run_dir"], tmp


def test_run_dir_layout_after_evaluation_and_export(short_run):
    run_dir, tmp = short_run
    assert os.path.dirname(run_dir) == str(tmp / "log" / "tiny")
    for name in ("config.py", "training-log.txt", "tensorboard", "checkpoints", "model.keras", "saved_model"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert sorted(os.listdir(os.path.join(run_dir, "saved_model")), key=int) == ["1", str(EPOCH), str(EPOCH * EPOCHS)]
    assert os.path.isfile(os.path.join(run_dir, "saved_model", str(EPOCH * EPOCHS), "saved_model.pb"))
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")).endswith(f"ckpt-{EPOCH * EPOCHS}")
    with open(os.path.join(REPO, "configs", "tiny.py")) as f, open(os.path.join(run_dir, "config.py")) as g:
        recipe, copy = f.read(), g.read()
    assert copy.startswith(recipe) and "# --set overrides of this run" in copy[len(recipe):]
    assert "log_base_dir = " in copy[len(recipe):]  # the copy alone reproduces this run's settings


def test_training_log_has_the_original_evaluation_blocks(short_run):
    run_dir, _ = short_run
    text = open(os.path.join(run_dir, "training-log.txt")).read()
    blocks = text.split("--- synth_val ---\n")[1:]
    assert len(blocks) == EPOCHS
    # After epoch e's block comes epoch e+1's first line (the block is written once that state is checked).
    assert blocks[0].split("\n[")[1].startswith("2][1] time: ")
    risk = re.compile(r"risk_factor (0\.[0-3]) risk_threshold ([-+.e\d]+) keep_idxes (\d+) / (\d+) "
                      r"Cosine score acc (\d\.\d{6}) threshold (-?\d+\.\d{6})$")
    for block in blocks:
        lines = block.split("\n")
        # The original prints str(np.percentile(...)): a numpy array that may wrap over two lines.
        end = next(i for i, line in enumerate(lines) if line.endswith(" percentile [0, 10, 30, 50, 70, 90, 100]"))
        percentile = " ".join(lines[:end + 1])
        assert percentile.startswith("sigma_sq [")
        values = np.array(percentile[len("sigma_sq ["):percentile.index("]")].split(), float)
        assert len(values) == 7 and np.all(np.diff(values) >= 0) and values[0] > 0
        rows = [risk.match(line) for line in lines[end + 1:end + 5]]
        assert all(rows), lines[end + 1:end + 5]
        assert [r.group(1) for r in rows] == ["0.0", "0.1", "0.2", "0.3"]
        assert rows[0].group(3) == rows[0].group(4) == str(PAIRS)  # risk 0 keeps every pair
        assert all(int(r.group(3)) <= PAIRS and 0 <= float(r.group(5)) <= 1 for r in rows)


def test_tensorboard_holds_the_log_line_scalars(short_run):
    run_dir, _ = short_run
    lines = [line for line in open(os.path.join(run_dir, "training-log.txt")) if line.startswith("[")]
    assert len(lines) == EPOCH * EPOCHS
    first = lines[0].split()
    logged = dict(zip(first[3::2], map(float, first[4::2])))
    assert sorted(logged) == LOG_KEYS
    scalars = {}
    folder = os.path.join(run_dir, "tensorboard")
    for name in os.listdir(folder):
        for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    train_tags = sorted(t for t in scalars if "/" not in t)
    assert train_tags == LOG_KEYS
    assert sorted(scalars["mls"]) == list(range(1, EPOCH * EPOCHS + 1))  # one point per logged step
    for key, value in logged.items():  # the line prints 4 decimals of the same number
        assert scalars[key][1] == pytest.approx(value, abs=5e-5), key
    assert {"synth_val/acc_risk0.0", "synth_val/acc_risk0.3"} <= set(scalars)


# ------------------------------------------------------------------------ resume selection and input checks


def test_latest_run_dir_skips_runs_without_checkpoint(tmp_path):
    cfg = from_dict({"name": "x", "log_base_dir": str(tmp_path)})
    assert latest_run_dir(cfg) is None
    base = tmp_path / "x"
    for run in ("20240101-000000", "20240102-000000", "20240102-000000-1", "20240103-000000"):
        (base / run).mkdir(parents=True)
    for run in ("20240101-000000", "20240102-000000"):
        (base / run / "checkpoints").mkdir()
        (base / run / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
    (base / "20240103-000000" / "checkpoints").mkdir()  # a failed start: folder but no checkpoint state file
    assert latest_run_dir(cfg) == str(base / "20240102-000000")


def test_resume_without_run_dir_continues_newest_run_with_checkpoint(short_run, tmp_path, capsys):
    finished, tmp = short_run
    base = tmp_path / "log" / "tiny"
    shutil.copytree(finished, base / os.path.basename(finished))  # a copy: the other tests read the original
    run_dir = str(base / os.path.basename(finished))
    empty = base / "99991231-235959"  # newer than the real run, but a failed start
    empty.mkdir()
    config = os.path.join(REPO, "configs", "tiny.py")
    synth = {"root": str(tmp / "synth"), "num_identities": 16, "images_per_identity": 4, "seed": 0,
             "image_size": 48, "bin_pairs": PAIRS, "split": 0.25, "workers": 1}
    cfg = load_config(config, [f"log_base_dir={tmp_path / 'log'}", f"synthetic={synth!r}",
                               f"train_dataset_path={tmp / 'synth' / 'train'}", "test_bin_paths=None",
                               "batch_size=32", "batch_format={'size': 32, 'num_classes': 8}",
                               f"epoch_size={EPOCH}", f"num_epochs={EPOCHS + 1}", "summary_interval=1",
                               "export_saved_model=False", "deterministic=False"])
    capsys.readouterr()
    result = train(cfg, config_path=config, resume=True)
    out = capsys.readouterr().out
    assert result["run_dir"] == run_dir and result["global_step"] == EPOCH * (EPOCHS + 1)
    assert f"resume: newest run with a checkpoint is {run_dir}" in out
    start = EPOCH * EPOCHS
    assert f"resumed from checkpoint {run_dir}/checkpoints/ckpt-{start} at step {start}" in out
    steps = [line.split()[0] for line in out.splitlines() if line.startswith("[")]
    assert steps == [f"[{EPOCHS + 1}][{k}]" for k in range(1, EPOCH + 1)]
    assert os.listdir(empty) == []


def test_check_inputs_names_keys_and_files(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "bins").mkdir()
    base = {"train_dataset_path": str(tmp_path / "train"), "test_data_dir_mx": str(tmp_path / "bins"),
            "test_targets": ["cfp_fp"]}
    warnings = check_inputs(from_dict(base))
    assert len(warnings) == 1
    assert "config key 'test_data_dir_mx'" in warnings[0] and str(tmp_path / "bins" / "cfp_fp.bin") in warnings[0]
    (tmp_path / "bins" / "cfp_fp.bin").write_bytes(b"")
    assert check_inputs(from_dict(base)) == []
    with pytest.raises(TrainingInputError, match=r"config key 'restore_model': .* " + re.escape(str(tmp_path / "m"))):
        check_inputs(from_dict({**base, "restore_model": str(tmp_path / "m")}))
    with pytest.raises(TrainingInputError, match="config key 'test_bin_paths': file not found: .*x.bin"):
        check_inputs(from_dict({**base, "test_bin_paths": [str(tmp_path / "x.bin")]}))
    with pytest.raises(TrainingInputError, match="config key 'train_dataset_path' is not set"):
        check_inputs(from_dict({}))


@pytest.mark.parametrize("stretch", [True, False])
def test_export_records_the_runs_evaluation_preprocessing(stretch, tmp_path):
    """The SavedModel a run exports carries the run's evaluation preprocessing, so evaluate.py without --config
    preprocesses .bin images as the run's own per-epoch evaluation did."""
    import json

    from probface_tf.eval.model_loader import load_model
    from probface_tf.train.loop import save_model

    cfg = from_dict({"image_size": [32, 32], "embedding_size": 16, "backbone_filters": [8, 8, 16, 16],
                     "backbone_blocks": [1, 1, 1, 1], "eval_contrast_stretch": stretch, "resize_method": "bilinear"})
    save_model(build_probface(**SMALL), str(tmp_path), cfg, 7)
    with open(os.path.join(tmp_path, "saved_model", "7", "assets", "probface.json"), encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["contrast_stretch"] is stretch and meta["resize_method"] == "bilinear"
    loaded = load_model(os.path.join(tmp_path, "saved_model"))
    assert loaded.preprocessing.contrast_stretch is stretch and loaded.preprocessing.resize_method == "bilinear"
