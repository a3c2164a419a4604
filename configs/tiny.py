"""A minute-long head-training recipe on generated data (used by the tests and as a smoke run).

A narrow ResFace at 32x32 with a random frozen backbone (no restore_model), trained from the feature cache.
The synthetic identities are generated under train_dataset_path on first use.

Every batch holds all 30 training identities (4 images each, doubled to 240), so the logged mls varies little
from batch to batch and its decrease is visible within 60 steps; the high learning rate is what a random
backbone's small attainable gain (mostly the overall sigma scale) needs to show up in that time.
"""
name = 'tiny'
log_base_dir = './log/'
summary_interval = 10
train_dataset_path = 'data/tiny_synth/train'
synthetic = {'root': 'data/tiny_synth', 'num_identities': 40, 'images_per_identity': 6, 'seed': 0,
             'image_size': 64, 'bin_pairs': 200, 'split': 0.25}
test_bin_paths = ['data/tiny_synth/synth_val.bin']
test_targets = []
image_size = [32, 32]
embedding_network = 'resface64_relu'
backbone_filters = [8, 16, 16, 32]
backbone_blocks = [1, 1, 1, 1]
embedding_size = 32
uncertainty_module_output_size = 1
batch_size = 120
epoch_size = 30
num_epochs = 2
lr = 0.1


def batch_format(c):
    return {'size': c.batch_size, 'num_classes': c.batch_size // 4}


def learning_rate_schedule(c):
    return {0: c.lr, 40: 0.1 * c.lr}


weight_decay = 5e-4
loss_weights = {'mls_loss': 1.0, 'output_constraint_loss': 0.001, 'discriminate_loss': 0.001}
output_constraint_type = 'L2'
feature_cache = True
checkpoint_interval = 10
eval_batch_size = 64
deterministic = True
