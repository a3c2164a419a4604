"""MC dropout (face-uncertainty-pytorch ``mc_dropout/``) on the CPU demo: the demo's backbone, nothing to train.

    python train.py configs/demo.py          # once: the stage-1 backbone this recipe builds on
    python train.py configs/mc_dropout_demo.py

Reproduces face-uncertainty-pytorch's MC dropout (ORIGINAL_SPEC section 8): dropout p = 0.5 on the flattened last
stage, then a copy of the backbone's bottleneck (Dense + BN, weights taken from the restored backbone), kept
stochastic at test time; mu = the re-normalised mean direction of T passes, uncertainty = the standard
deviation over T of cos(sample, mu). The "training" restores the backbone, copies the bottleneck, saves
model.keras and evaluates the held-out pairs once. Demo-scale choice: T = 30 passes instead of the original's
100 (the spread's relative sampling error is about 1/sqrt(2T), 13 % at T = 30, which barely moves the ranking
the risk tables use; the passes only repeat the small bottleneck, so T is cheap here anyway).
The backbone is the one of the latest finished demo run (log/demo/LATEST).
"""
from demo_data import *  # noqa: F401,F403  (the demo's data and network)
from probface_tf.demo import latest_run

name = 'mc_dropout_demo'
log_base_dir = './log/'
summary_interval = 100
head_type = 'mc_dropout'
mc_dropout_rate = 0.5
mc_samples = 30

# Raises, naming `python train.py configs/demo.py`, when there is no finished demo run.
restore_model = latest_run('./log/', 'demo', 'backbone')
exclude_restore_scopes = ['UncertaintyModule']  # the head has no variables of its own to restore

