"""The embedded CPU demo: synthetic identities -> stage-1 backbone -> ProbFace head -> uncertainty evaluation.

    python train.py configs/demo.py

Generates 600 face-like identities x 10 images with known degradation severity (20 % of the identities are
held out for the verification pairs), trains a narrow ResFace with CosFace (stage 1), freezes it, trains the
ProbFace head from the feature cache with the original losses (stage 2), exports the SavedModel and evaluates it
on the held-out identities. Everything lands in log/demo/<timestamp>/; the numbers the demo is about are in
demo_results.json. About 5-8 minutes on 2 CPU cores.

Top-level keys are shared by both stages; ``backbone_config`` and ``head_config`` hold each stage's own keys.
"""
from demo_data import *  # noqa: F401,F403  (data and network, shared with the demo baselines)

stage = 'demo'
name = 'demo'
log_base_dir = './log/'
summary_interval = 100
# Each stage is wired to the generated data by the demo itself; only the head is evaluated on the held-out
# pairs during training (stage 1 is judged by the final evaluation).
test_bin_paths = None

# Stage 1: a margin softmax from scratch. CosFace with a moderate scale and margin converges within minutes on
# this small network; ArcFace (s=64, m=0.5, the base model's recipe) needs far longer from scratch.
backbone_config = {
    'margin_loss': 'cosface',
    'margin_s': 32.0,
    'margin_m': 0.2,
    'optimizer': 'adam',
    'batch_size': 64,
    'epoch_size': 250,
    'num_epochs': 6,
    'lr': 1e-3,
    'learning_rate_schedule': {0: 1e-3, 1000: 1e-4},
    'weight_decay': 5e-4,
    'checkpoint_interval': 250,
}

# Stage 2: the original head recipe (momentum 0.9, one LR drop, mls + 1e-3 L2 output constraint + 1e-3
# semi-hard triplet, doubled batches of P x K = 16 x 4), from the feature cache of the frozen backbone.
head_config = {
    'batch_size': 64,
    'batch_format': {'size': 64, 'num_classes': 16},
    'epoch_size': 500,
    'num_epochs': 3,
    'lr': 1e-2,
    'learning_rate_schedule': {0: 1e-2, 1000: 1e-3},
    'weight_decay': 5e-4,
    'loss_weights': {'mls_loss': 1.0, 'output_constraint_loss': 0.001, 'discriminate_loss': 0.001},
    'output_constraint_type': 'L2',
    'feature_cache': True,
    'checkpoint_interval': 500,
}
