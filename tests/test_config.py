"""Config loading: original recipes read with their values; unknown keys and wrong types are named."""
import math
import os

import pytest

from probface_tf.config import ConfigError, load_config
from probface_tf.train.schedule import learning_rate_at


def test_original_recipe_values():
    cfg = load_config("configs/resface64_msarcface.py")
    assert cfg.batch_format == {"size": 128, "num_classes": 32}
    assert cfg.loss_weights == {"mls_loss": 1.0, "output_constraint_loss": 0.001, "discriminate_loss": 0.001}
    assert cfg.exclude_restore_scopes == ["center_loss", "centers", "UncertaintyModule"]
    assert cfg.double_batch and cfg.max_identities == 20000 and cfg.momentum_form == "tf1"
    # One LR decay at step 6000 (ORIGINAL_SPEC §10).
    assert [learning_rate_at(s, cfg.learning_rate_schedule) for s in (0, 5999, 6000, 11999)] == \
        [0.01, 0.01, 0.001, 0.001]


BASE_WEIGHTS = {"mls_loss": 1.0, "output_constraint_loss": 0.001, "discriminate_loss": 0.001}


# ORIGINAL_SPEC section 1 ("Other configs"): name, backbone, weight_decay, loss_weights of each variant. The s2
# recipes had no output_constraint_loss weight (a KeyError in the original network.py); ours fill it with 0.
@pytest.mark.parametrize("name,run_name,network,out,weight_decay,weights", [
    ("resface64m_msarcface", "resface64-ms", "models/resface64_relu_m.py", 1, 5e-4, BASE_WEIGHTS),
    ("resface64s2_msarcface", "resface64s2", "models/resface64s2_relu_v3.py", 1, 1e-5,
     {"mls_loss": 1.0, "output_constraint_loss": 0.0, "discriminate_loss": 0.0}),
    ("resface64s2m_msarcface", "resface64s2", "models/resface64s2_relu_m.py", 1, 1e-5,
     {"mls_loss": 1.0, "output_constraint_loss": 0.0, "discriminate_loss": 1e-4}),
    ("resface64_mls_ddim", "resface64-ddim", "models/resface64_relu.py", 256, 5e-4, BASE_WEIGHTS)])
def test_variant_recipes(name, run_name, network, out, weight_decay, weights):
    cfg = load_config(f"configs/{name}.py")
    assert cfg.embedding_network == network and cfg.uncertainty_module_output_size == out
    assert cfg.name == run_name and cfg.weight_decay == weight_decay and cfg.loss_weights == weights
    if name.startswith("resface64s2"):  # the s2 recipes have no output constraint term
        assert cfg.output_constraint_type == ""


@pytest.mark.parametrize("override,message", [
    ("loss_weights={'mls_loss': '1', 'output_constraint_loss': 0.0, 'discriminate_loss': 0.0}",
     "key 'loss_weights' entry 'mls_loss' must be a non-negative number, got str '1'"),
    ("loss_weights={'mls_loss': 1.0, 'output_constraint_loss': True, 'discriminate_loss': 0.0}",
     "key 'loss_weights' entry 'output_constraint_loss' must be a non-negative number, got bool True"),
    ("loss_weights={'mls_loss': 1.0, 'output_constraint_loss': 0.0, 'discriminate_loss': -1e-3}",
     "key 'loss_weights' entry 'discriminate_loss' must be a non-negative number, got float -0.001"),
    ("learning_rate_schedule={0: 0.1, '6000': 0.01}",
     "key 'learning_rate_schedule' has a non-numeric step '6000' \\(str\\)"),
    ("learning_rate_schedule={0: 0.1, 6000: '0.01'}",
     "key 'learning_rate_schedule' entry 6000 must map to a non-negative number, got str '0.01'"),
    ("learning_rate_schedule={0: None}",
     "key 'learning_rate_schedule' entry 0 must map to a non-negative number, got NoneType None"),
    ("batch_format={'size': 32.0, 'num_classes': 8}", "key 'batch_format' entry 'size' must be a positive int, "
     "got float 32.0"),
    ("batch_format={'size': 32, 'num_classes': '8'}", "key 'batch_format' entry 'num_classes' must be a positive "
     "int, got str '8'"),
    ("batch_format={'size': 0, 'num_classes': 8}", "key 'batch_format' entry 'size' must be a positive int, "
     "got int 0"),
])
def test_nested_values_are_type_checked(override, message):
    with pytest.raises(ConfigError, match=r"configs/tiny\.py: " + message):
        load_config("configs/tiny.py", [override])


def test_nested_values_accept_numbers():
    cfg = load_config("configs/tiny.py", ["learning_rate_schedule={0: 1, 4.5e3: 0.001}",
                                          "loss_weights={'mls_loss': 1, 'output_constraint_loss': 0, "
                                          "'discriminate_loss': 1e-3}"])
    assert learning_rate_at(4500, cfg.learning_rate_schedule) == 0.001 and cfg.loss_weights["mls_loss"] == 1


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("name = 'x'\nlerning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.py: unknown config key 'lerning_rate'"):
        load_config(str(path))


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("epoch_size = '1000'\n")
    with pytest.raises(ConfigError, match="key 'epoch_size' must be int, got str"):
        load_config(str(path))


def test_overrides_and_their_errors():
    cfg = load_config("configs/tiny.py", ["log_base_dir=/tmp/runs", "lr=1", "num_epochs=3"])
    assert cfg.log_base_dir == "/tmp/runs" and cfg.lr == 1.0 and cfg.num_epochs == 3
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config("configs/tiny.py", ["nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("configs/tiny.py", ["lr"])
    with pytest.raises(ConfigError, match="output_constraint_type"):
        load_config("configs/tiny.py", ["output_constraint_type=L3"])


MSARCFACE = "configs/resface64_msarcface.py"


def test_overrides_reach_the_keys_derived_from_them():
    """--set num_epochs / batch_size / lr move the schedule and the batch format computed from them."""
    cfg = load_config(MSARCFACE, ["num_epochs=6", "batch_size=64", "lr=0.05"])
    assert cfg.batch_format == {"size": 64, "num_classes": 16}
    assert [learning_rate_at(s, cfg.learning_rate_schedule) for s in (0, 2999, 3000, 5999)] == \
        pytest.approx([0.05, 0.05, 0.005, 0.005])


def test_an_override_of_a_derived_key_wins():
    cfg = load_config(MSARCFACE, ["num_epochs=6", "learning_rate_schedule={0: 0.1}"])
    assert cfg.learning_rate_schedule == {0: 0.1}


def test_override_that_a_plain_assignment_reads_is_refused(tmp_path):
    path = tmp_path / "literal.py"
    path.write_text("lr = 0.1\n_low = 0.1 * lr\nlearning_rate_schedule = {0: lr, 500: _low}\nbatch_size = 64\n"
                    "preprocess_test = [['resize', (32, 32)], ['standardize', 'mean_scale']]\n"
                    "weight_decay = 0.1 * _low\n")
    # weight_decay reads lr through the private intermediate _low
    with pytest.raises(ConfigError, match=r"--set lr=0\.2: .*literal\.py computes learning_rate_schedule, "
                                          r"weight_decay from 'lr'.*set learning_rate_schedule, weight_decay as well"):
        load_config(str(path), ["lr=0.2"])
    cfg = load_config(str(path), ["lr=0.2", "learning_rate_schedule={0: 0.2}", "weight_decay=0.0"])
    assert (cfg.learning_rate_schedule, cfg.weight_decay) == ({0: 0.2}, 0.0)
    assert load_config(str(path), ["batch_size=32"]).batch_format == {"size": 32, "num_classes": 8}


def test_override_of_a_key_the_recipe_does_not_use_is_refused(tmp_path):
    path = tmp_path / "fixed.py"
    path.write_text("lr = 0.1\nlearning_rate_schedule = {0: 0.1, 500: 0.01}\n")
    with pytest.raises(ConfigError, match=r"fixed\.py sets learning_rate_schedule without reading 'lr', so the "
                                          r"override would change nothing; set learning_rate_schedule instead"):
        load_config(str(path), ["lr=0.2"])
    child = tmp_path / "child.py"  # a function of the config replaces the base's fixed schedule
    child.write_text("from fixed import *\n\n\ndef learning_rate_schedule(c):\n    return {0: c.lr}\n")
    assert load_config(str(child), ["lr=0.2"]).learning_rate_schedule == {0: 0.2}


@pytest.mark.parametrize("key", ["epoch_size", "num_epochs", "batch_size"])
@pytest.mark.parametrize("value", [0, -1])
def test_zero_or_negative_steps_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"tiny\.py: key '{key}' must be a positive int, got {value}"):
        load_config("configs/tiny.py", [f"{key}={value}"])


def test_a_recipe_imports_its_base_and_derived_keys_follow(tmp_path):
    child = tmp_path / "child.py"
    child.write_text("from resface64_msarcface import *\nname = 'child'\nnum_epochs = 8\n"
                     "loss_weights['mls_loss'] = 3.0\n")
    cfg = load_config(str(child))
    assert (cfg.name, cfg.restore_model) == ("child", "log/resface64/20200122-214343-arc")
    assert sorted(cfg.learning_rate_schedule) == [0, 4000, 6000]
    assert cfg.loss_weights["mls_loss"] == 3.0
    assert load_config(MSARCFACE).loss_weights["mls_loss"] == 1.0  # every load reads its base afresh
    copy = tmp_path / "run" / "config.py"  # a run's copy, away from configs/, still finds the shipped base
    copy.parent.mkdir()
    copy.write_text(child.read_text())
    assert load_config(str(copy)).to_dict() == cfg.to_dict()


def test_ignored_original_keys_are_accepted_and_reported(caplog):
    from probface_tf.config_schema import SCHEMA

    ignored = sorted(k for k, spec in SCHEMA.items() if spec.ignored)
    assert ignored == ["num_gpus", "s_wd_alpha", "s_wd_type", "uncertainty_module"]
    assert all(SCHEMA[k].doc.startswith("ignored") for k in ignored)
    with caplog.at_level("WARNING", logger="probface_tf.config"):
        load_config("configs/resface64s2m_msarcface.py")
    assert "s_wd_alpha, s_wd_type have no effect" in caplog.text


def test_cosine_and_linear_strategies_and_several_roots_load_and_drive_the_learning_rate(tmp_path):
    from probface_tf.train.schedule import learning_rate_for

    path = tmp_path / "cosine.py"
    path.write_text("learning_rate_strategy = 'cosine'\n"
                    "learning_rate_schedule = {'initial': 0.1, 'interval': 10, 'end_step': 100}\n"
                    "train_dataset_path = ['a', 'b']\n")
    cfg = load_config(str(path))
    assert cfg.train_dataset_path == ["a", "b"]
    assert learning_rate_for(25, cfg) == pytest.approx(0.05 * (math.cos(0.2 * math.pi) + 1))
    linear = load_config(str(path), ["learning_rate_strategy='linear'",
                                     "learning_rate_schedule={'initial': 0.1, 'start': 50, 'end_step': 100}"])
    assert [learning_rate_for(s, linear) for s in (49, 75)] == [0.1, pytest.approx(0.05)]
    path.write_text("learning_rate_strategy = 'cosine'\nlearning_rate_schedule = {0: 0.1}\n")
    with pytest.raises(ConfigError, match="'learning_rate_schedule' with learning_rate_strategy 'cosine' must be"):
        load_config(str(path))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "none.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1/0\n")
    with pytest.raises(ConfigError, match="failed to execute: ZeroDivisionError"):
        load_config(str(broken))


def test_image_size_must_be_multiple_of_16():
    with pytest.raises(ConfigError, match="multiples of 16"):
        load_config("configs/tiny.py", ["image_size=[30, 30]"])


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_copy_of_the_config_records_the_overrides(tmp_path):
    """A run's config.py alone reproduces the run: the recipe followed by its --set overrides."""
    from probface_tf.train.logs import create_run_dir, ensure_run_dir

    cfg = load_config(os.path.join(ROOT, "configs", "tiny.py"),
                      ["lr=0.5", "name=renamed", f"log_base_dir={tmp_path}", "loss_weights={'mls_loss': 2.0}"])
    run = create_run_dir(cfg, os.path.join(ROOT, "configs", "tiny.py"))
    assert run.startswith(str(tmp_path / "renamed"))
    again = load_config(os.path.join(run, "config.py"))
    assert (again.lr, again.name, again.loss_weights) == (0.5, "renamed", {"mls_loss": 2.0})
    assert again.to_dict() == cfg.to_dict()
    explicit = ensure_run_dir(str(tmp_path / "explicit"), os.path.join(ROOT, "configs", "tiny.py"), cfg)
    assert load_config(os.path.join(explicit, "config.py")).lr == 0.5
