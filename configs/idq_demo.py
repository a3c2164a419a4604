"""IDQ (face-uncertainty-pytorch ``idq_loss``) on the CPU demo: a confidence head on the demo's frozen backbone.

    python train.py configs/demo.py          # once: the stage-1 backbone this recipe builds on
    python train.py configs/idq_demo.py

Reproduces face-uncertainty-pytorch's IDQ recipe (ORIGINAL_SPEC section 8) at demo scale: the same
``head_fc2_prob`` as PCNet (fc1 256, p = uncertainty probability), trained with the binary cross-entropy of the
pair confidence min(1 - p_i, 1 - p_j) against the soft target sigmoid(s (cos_ij - m)) over positive pairs.
From section 8 (its ``idq_loss`` config): s = 16, m = 0.45 (issue 9 says 0.4, the schema default; the shipped
config says 0.45), 'soft' target, lr 1e-2, SGD momentum 0.9 with weight decay 5e-4, two x0.1 decays at
num_epochs/4 x {2, 3} epochs, batches of 10 identities x 8 images without doubling or identity cap.
Demo-scale choices: 3 epochs of 500 steps instead of 12 of 1000, and the demo's architecture, data and
preprocessing. The backbone is the one of the latest finished demo run (log/demo/LATEST).
"""
from demo_data import *  # noqa: F401,F403  (the demo's data and network)
from probface_tf.demo import latest_run

name = 'idq_demo'
log_base_dir = './log/'
summary_interval = 100
head_type = 'idq'
idq_target = 'soft'
idq_s = 16.0
idq_m = 0.45

# Raises, naming `python train.py configs/demo.py`, when there is no finished demo run.
restore_model = latest_run('./log/', 'demo', 'backbone')
exclude_restore_scopes = ['UncertaintyModule']

# face-uncertainty-pytorch's head training (section 8).
batch_size = 80
double_batch = False
max_identities = None


def batch_format(c):
    return {'size': c.batch_size, 'num_classes': 10}

epoch_size = 500
num_epochs = 3
lr = 1e-2


def learning_rate_schedule(c):
    # MultiStepLR milestones num_epochs/4 x {2, 3} epochs, x0.1 each: steps 750 and 1125 here.
    two, three = c.num_epochs / 4 * 2 * c.epoch_size, c.num_epochs / 4 * 3 * c.epoch_size
    return {0: c.lr, two: 0.1 * c.lr, three: 0.01 * c.lr}

weight_decay = 5e-4
momentum = 0.9
feature_cache = True
checkpoint_interval = 500
