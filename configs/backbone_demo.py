"""Stage 1 of the CPU demo: a narrow ResFace trained with ArcFace on the synthetic identities.

    python train.py configs/backbone_demo.py

The synthetic set (600 identities x 10 images, 20 % of the identities held out for synth_val.bin) is generated
under data/backbone_demo_synth on first use. The run directory's backbone.keras is a ``restore_model`` for head
training. Each epoch ends with the cosine 10-fold accuracy on the held-out pairs.
"""
from demo_data import *  # noqa: F401,F403  (the demo's network; its own copy of the data, below)

stage = 'backbone'
name = 'backbone_demo'
log_base_dir = './log/'
summary_interval = 100
synthetic = {'root': 'data/backbone_demo_synth', 'num_identities': 600, 'images_per_identity': 10, 'seed': 0,
             'image_size': 48, 'bin_pairs': 1000, 'split': 0.2}
margin_loss = 'arcface'
margin_s = 64.0
margin_m = 0.5
uniform_loss_weight = 0.0
optimizer = 'adam'
batch_size = 64
epoch_size = 250
num_epochs = 6
lr = 1e-3


def learning_rate_schedule(c):
    return {0: c.lr, 1000: 0.1 * c.lr}


weight_decay = 5e-4
checkpoint_interval = 250
eval_batch_size = 128
