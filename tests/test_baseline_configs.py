"""Every recipe in configs/ loads, and the baseline recipes keep the hyper-parameters they claim to reproduce
(face-uncertainty-pytorch's, ORIGINAL_SPEC section 8) and the architecture of the recipe they build on."""
import glob
import os

import numpy as np
import pytest

from probface_tf import demo
from probface_tf.config import ConfigError, load_config

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "configs"))
DEMO_RUN = "20250101-000000"

# What each baseline recipe must say. A new baseline config fails test_every_baseline_config_is_checked until it
# is listed here.
EXPECTED = {
    "pcnet_demo": dict(head_type="pcnet", pc_loss_type="L2", lr=3e-2, num_epochs=2),
    "idq_demo": dict(head_type="idq", idq_target="soft", idq_s=16.0, idq_m=0.45, lr=1e-2),
    "mc_dropout_demo": dict(head_type="mc_dropout", mc_dropout_rate=0.5),
    # ScaleFace's scale head on the unit-norm embedding: a bounded input keeps 1/scale finite (configs' docstrings)
    "scaleface_demo": dict(stage="backbone", margin_loss="scaleface", uncertainty_module_input="mu"),
    "resface64_pcnet": dict(head_type="pcnet", pc_loss_type="L2", lr=3e-2, num_epochs=2, epoch_size=1000),
    "resface64_idq": dict(head_type="idq", idq_target="soft", idq_s=16.0, idq_m=0.45, lr=1e-2, num_epochs=12,
                          epoch_size=1000),
    "resface64_mc_dropout": dict(head_type="mc_dropout", mc_dropout_rate=0.5, mc_samples=100),
    "resface64_scaleface": dict(stage="backbone", margin_loss="scaleface", margin_s=64.0, margin_m=0.5,
                                max_identities=None, uncertainty_module_input="mu"),
}
PROBABILITY_HEADS = [n for n, e in EXPECTED.items() if e.get("head_type") in ("pcnet", "idq")]
DEMO_BASED = [n for n in EXPECTED if n.endswith("_demo")]
ARCHITECTURE = ("image_size", "embedding_network", "backbone_filters", "backbone_blocks", "embedding_size")
ORIGINAL_SETTING = ARCHITECTURE + ("train_dataset_path", "test_data_dir_mx", "preprocess_test")


@pytest.fixture
def demo_cwd(tmp_path, monkeypatch):
    """A working directory holding a finished demo run (log/demo/LATEST -> its folder with backbone/)."""
    os.makedirs(tmp_path / "log" / "demo" / DEMO_RUN / "backbone")
    demo.mark_latest(str(tmp_path / "log" / "demo" / DEMO_RUN))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(name: str):
    return load_config(os.path.join(CONFIGS, name + ".py"))


def config_names() -> list[str]:
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONFIGS, "*.py")))


@pytest.mark.parametrize("name", config_names())
def test_every_config_loads(name, demo_cwd):
    assert load(name).name


def test_every_baseline_config_is_checked(demo_cwd):
    baselines = {n for n in config_names()
                 if load(n).head_type != "probface" or load(n).margin_loss == "scaleface"}
    assert baselines == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_baseline_hyper_parameters(name, demo_cwd):
    cfg = load(name)
    for key, value in EXPECTED[name].items():
        assert cfg[key] == value, key


@pytest.mark.parametrize("name", PROBABILITY_HEADS)
def test_probability_heads_train_as_face_uncertainty_pytorch(name, demo_cwd):
    cfg = load(name)
    # 10 identities x 8 images, no doubled batch, no identity cap, SGD momentum 0.9 (torch's form = TF1's), wd 5e-4
    assert cfg.batch_format == {"size": 80, "num_classes": 10}
    assert (cfg.double_batch, cfg.max_identities) == (False, None)
    assert (cfg.momentum, cfg.momentum_form, cfg.weight_decay) == (0.9, "tf1", 5e-4)
    # MultiStepLR: two x0.1 decays at num_epochs/4 x {2, 3} epochs
    decays = {k * 4 / (cfg.num_epochs * cfg.epoch_size): v / cfg.lr for k, v in cfg.learning_rate_schedule.items()}
    assert decays == pytest.approx({0: 1.0, 2: 0.1, 3: 0.01})


@pytest.mark.parametrize("name", DEMO_BASED)
def test_demo_baselines_share_the_demo_data_and_architecture(name, demo_cwd):
    cfg, reference = load(name), load("demo")
    for key in ARCHITECTURE + ("synthetic",):
        assert cfg[key] == reference[key], key
    assert cfg.train_dataset_path == os.path.join(reference.synthetic["root"], "train")
    assert cfg.test_bin_paths == [os.path.join(reference.synthetic["root"], "synth_val.bin")]
    if cfg.stage == "backbone":  # ScaleFace: the demo's stage-1 optimisation, a learned scale in place of CosFace's
        for key, value in reference.backbone_config.items():
            if key not in ("margin_loss", "margin_m"):
                assert cfg[key] == value, key
    else:
        assert cfg.restore_model == os.path.join(".", "log", "demo", DEMO_RUN, "backbone")
        assert cfg.feature_cache or cfg.head_type == "mc_dropout"


def test_mc_dropout_demo_uses_few_passes(demo_cwd):
    assert 20 <= load("mc_dropout_demo").mc_samples <= 30


@pytest.mark.parametrize("name", [n for n in EXPECTED if n.startswith("resface64_")])
def test_original_recipe_baselines_keep_the_probface_setting(name):
    cfg, reference = load(name), load("resface64_msarcface")
    for key in ORIGINAL_SETTING:
        assert cfg[key] == reference[key], key
    if cfg.stage != "backbone":  # heads on the original frozen base model, fed by the same end point
        assert (cfg.restore_model, cfg.exclude_restore_scopes, cfg.uncertainty_module_input) == (
            reference.restore_model, reference.exclude_restore_scopes, reference.uncertainty_module_input)


@pytest.mark.parametrize("name", [n for n in DEMO_BASED if n != "scaleface_demo"])
def test_demo_baselines_without_a_demo_run_name_the_command(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"python train\.py configs/demo\.py"):
        load(name)


def test_latest_pointer_names_a_missing_run(tmp_path, monkeypatch):
    os.makedirs(tmp_path / "log" / "demo")
    (tmp_path / "log" / "demo" / demo.LATEST_FILE).write_text("20990101-000000\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(demo.DemoRunMissing, match="does not exist.*configs/demo.py"):
        demo.latest_run("./log/", "demo", "backbone")


def test_mark_latest_replaces_the_pointer_atomically(tmp_path):
    for run in ("20250101-000000", "20250102-000000"):
        os.makedirs(tmp_path / "demo" / run / "backbone")
        demo.mark_latest(str(tmp_path / "demo" / run))
    assert demo.latest_run(str(tmp_path), "demo", "backbone") == str(tmp_path / "demo" / "20250102-000000" / "backbone")
    assert sorted(os.listdir(tmp_path / "demo")) == ["20250101-000000", "20250102-000000", "LATEST"]  # no temp left


@pytest.mark.parametrize("name", [n for n in DEMO_BASED if n != "scaleface_demo"])
def test_demo_baseline_models_build(name, demo_cwd):
    from probface_tf.methods import model_from_config as from_config
    from probface_tf.methods.mc_dropout import MCDropoutHead
    from probface_tf.models.probability_head import ProbabilityHead

    cfg = load(name)
    head = from_config(cfg).get_layer("UncertaintyModule")
    assert isinstance(head, MCDropoutHead if cfg.head_type == "mc_dropout" else ProbabilityHead)
    if cfg.head_type == "mc_dropout":
        assert (head.rate, head.samples) == (cfg.mc_dropout_rate, cfg.mc_samples)


# The original's recipes (configfig/) and the width of the conv_final their head reads, built at 32x32 with one
# block per stage to stay quick (neither changes which network, head or widths the recipe picks): 2x2 x the last stage's filters (512, half-width 256), plus for the fusion backbones the global average of
# every stage (64+128+256+512 = 960, half-width 480), as 18432 / 19392 / 9216 / 9696 at 96x96 (ORIGINAL_SPEC
# section 2). Each names its own base model, since a full-width ResFace64 does not fit the other backbones.
ORIGINAL_RECIPES = {
    "resface64_msarcface": (2048, "log/resface64/20200122-214343-arc"),
    "resface64_mls_ddim": (2048, "log/resface64/20200122-214343-arc"),
    "resface64m_msarcface": (2048 + 960, "log/resface64_relu_msarcface_am_PFE/20201022-104812-mls1.0-abs1e-3"),
    "resface64s2_msarcface": (1024, "log/resface64s2/20200624-231443-run07-arc"),
    "resface64s2m_msarcface": (1024 + 480, "log/resface64s2/20200624-231443-run07-arc"),
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_RECIPES))
def test_original_recipes_build_on_their_own_base_model(name):
    from probface_tf.methods import model_from_config as from_config

    cfg = load(name)
    width, base_model = ORIGINAL_RECIPES[name]
    assert cfg.restore_model == base_model
    assert cfg.image_size == [96, 96]
    model = from_config(cfg.replace(image_size=[32, 32], backbone_blocks=[1, 1, 1, 1]))
    head = model.get_layer("UncertaintyModule")
    assert head.input.shape[-1] == width
    assert model.output["sigma_sq"].shape[-1] == cfg.uncertainty_module_output_size


@pytest.fixture(scope="module")
def identity_folder(tmp_path_factory):
    """8 identities x 4 random 32x32 images: enough for one class-balanced batch of the original sampler."""
    from PIL import Image

    root = tmp_path_factory.mktemp("recipe_step") / "faces"
    rng = np.random.default_rng(0)
    for i in range(8):
        os.makedirs(root / f"{i:03d}")
        for k in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:03d}" / f"{k}.png")
    return root


@pytest.mark.parametrize("name", sorted(ORIGINAL_RECIPES))
def test_original_recipes_run_one_step_from_their_base_model(name, identity_folder, tmp_path):
    """Each original recipe, shrunk (32x32, one block per stage) and given a base model of its own backbone,
    restores it, runs one training step of the head and changes only the head."""
    from probface_tf.methods import model_from_config
    from probface_tf.models.probface import backbone_of, head_of
    from probface_tf.train.loop import train

    small = [f"log_base_dir={str(tmp_path / 'log')!r}", "image_size=[32, 32]", "backbone_blocks=[1, 1, 1, 1]",
             f"train_dataset_path={str(identity_folder)!r}", "test_data_dir_mx=None", "batch_size=8",
             "epoch_size=1", "num_epochs=1", "export_saved_model=False", "feature_cache=False"]
    base = model_from_config(load_config(os.path.join(CONFIGS, name + ".py"), small))
    base.save(str(tmp_path / "base.keras"))
    cfg = load_config(os.path.join(CONFIGS, name + ".py"),
                      small + [f"restore_model={str(tmp_path / 'base.keras')!r}"])
    result = train(cfg, max_steps=1, evaluate_each_epoch=False)
    assert result["global_step"] == 1
    trained = result["model"]
    for before, after in zip(backbone_of(base).weights, backbone_of(trained).weights):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    assert any(not np.array_equal(b.numpy(), a.numpy()) for b, a in zip(head_of(base).weights, head_of(trained).weights))
