"""The demo pipeline end to end on a smaller recipe: synthetic identities -> stage 1 -> ProbFace head ->
held-out evaluation of the exported SavedModel. The claims of ``configs/demo.py`` must hold in a looser form:
predicted sigma^2 follows the known degradation severity, rejecting the riskiest pairs raises accuracy, and
FastMLS is not worse than cosine. The numbers are recomputed here from the per-pair scores the run wrote."""
import json
import os

import numpy as np
import pytest
from scipy.stats import spearmanr

from probface_tf import demo
from probface_tf.config import from_dict


def _mini_demo(root: str):
    return from_dict(dict(
        stage="demo", name="minidemo", log_base_dir=os.path.join(root, "log"), deterministic=True,
        synthetic={"root": os.path.join(root, "synth"), "num_identities": 200, "images_per_identity": 8, "seed": 0,
                   "image_size": 48, "bin_pairs": 600, "split": 0.25},
        image_size=[32, 32], backbone_filters=[8, 16, 32, 64], backbone_blocks=[1, 1, 1, 1], embedding_size=64,
        eval_batch_size=256, summary_interval=100,
        backbone_config=dict(margin_loss="cosface", margin_s=32.0, margin_m=0.2, optimizer="adam", batch_size=64,
                             epoch_size=600, num_epochs=1, lr=2e-3, learning_rate_schedule={0: 2e-3, 450: 2e-4},
                             weight_decay=5e-4, checkpoint_interval=600),
        head_config=dict(batch_size=64, batch_format={"size": 64, "num_classes": 16}, epoch_size=1500, num_epochs=1,
                         lr=1e-2, learning_rate_schedule={0: 1e-2}, feature_cache=True, checkpoint_interval=1500,
                         loss_weights={"mls_loss": 1.0, "output_constraint_loss": 0.001, "discriminate_loss": 0.001},
                         output_constraint_type="L2")), source="mini demo")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    return demo.train(_mini_demo(root), run_dir=os.path.join(root, "run"))


def test_demo_writes_every_stage_and_its_summary(run):
    run_dir = run["run_dir"]
    for path in ("backbone/backbone.keras", "head/model.keras", "head/saved_model/1500/saved_model.pb",
                 "eval/results.json", "eval/calibration.json", "eval/synth_val/scores.npz", "eval/sigma_vs_severity.png",
                 "eval/synth_val_reject_verification.png", "demo_results.json", "identification/results.json",
                 "identification/results.md", "identification/protocol/gallery.csv"):
        assert os.path.exists(os.path.join(run_dir, path)), path
    with open(os.path.join(run_dir, "demo_results.json"), encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(run["summary"]))


def test_demo_claims_hold_on_held_out_identities(run, tmp_path_factory):
    summary, run_dir = run["summary"], run["run_dir"]
    scores = dict(np.load(os.path.join(run_dir, "eval", "synth_val", "scores.npz")))
    severity = np.load(os.path.join(os.path.dirname(run_dir), "synth", "synth_val_severity.npy"))
    sigma_sq = np.stack([scores["sigma_sq_1"].ravel(), scores["sigma_sq_2"].ravel()], 1).ravel()
    rho = spearmanr(sigma_sq, severity).statistic
    assert summary["spearman_sigma_sq_vs_severity"] == pytest.approx(rho, abs=1e-9)
    assert rho > 0.15  # the full demo reaches ~0.6; this backbone is far weaker
    rejected = summary["accuracy_by_rejected_fraction"]
    assert rejected["0.2"] > rejected["0.0"]
    assert summary["fastmls_accuracy"] >= summary["cosine_accuracy"] - 0.01
    # severe pairs really are harder than clean ones for the trained backbone
    bands = summary["accuracy_by_pair_severity"]
    assert bands[0]["cosine_accuracy"] > bands[-1]["cosine_accuracy"] + 0.2
    # the reject table's first row is the plain 10-fold cosine accuracy
    assert rejected["0.0"] == pytest.approx(summary["cosine_accuracy"])


def test_demo_identifies_held_out_identities_better_than_chance(run):
    """The demo's open-set 1:N run: half of the held-out identities enrolled; rank-1 well above chance and the
    riskiest-probe rejection rows at least as good as keeping every probe."""
    ident = run["summary"]["identification"]
    rows, protocol = ident["rows"], ident["protocol"]
    chance = 1.0 / protocol["gallery_identities"]
    assert rows["fastmls"]["rank1"] > 3 * chance and rows["cosine"]["rank1"] > 3 * chance
    assert rows["fastmls_reject30"]["rank1"] >= rows["fastmls"]["rank1"] - 0.02
