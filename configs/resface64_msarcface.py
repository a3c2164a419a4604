"""The original ProbFace recipe (configfig/resface64_msarcface.py): ResFace64 + 1-d FastMLS head on MS1M.

Paths are relative to the repository: decode ms1m-retinaface-t1 into an identity-folder tree (or point
train_dataset_path at its train.rec), put the .bin verification files in test_data_dir_mx, and convert the
original base model (probface-convert) or use a stage-1 run as restore_model.
"""

####### INPUT OUTPUT #######
name = 'resface64'
log_base_dir = './log/'
summary_interval = 100
train_dataset_path = 'data/ms1m-retinaface-t1-img'
test_data_dir_mx = 'data/ms1m-retinaface-t1'
image_size = [96, 96]
channels = 3
# preprocess_train / preprocess_test: the original's lists are the defaults, derived from image_size
# (resize, random_flip, standardize mean_scale; the test list without the flip).
num_gpus = 1  # ignored

####### NETWORK #######
embedding_network = 'models/resface64_relu.py'
uncertainty_module = 'models/uncertainty_module.py'  # ignored
uncertainty_module_input = 'conv_final'
embedding_size = 256
uncertainty_module_output_size = 1

####### TRAINING STRATEGY #######
base_random_seed = 0
batch_size = 128
epoch_size = 1000
num_epochs = 12
learning_rate_strategy = 'step'  # the table below by global step ('cosine' / 'linear' also exist)
lr = 1e-2


# Keys computed from others are functions of the final config, so a recipe that imports this one, or
# --set batch_size / num_epochs / lr, moves them along.
def batch_format(c):
    return {'size': c.batch_size, 'num_classes': c.batch_size // 4}


def learning_rate_schedule(c):
    # The original's num_epochs/4*2000 and */4*3000 with its 1000-step epochs, as float keys: one decay, at
    # step 6000 (the 9000 entry repeats the same value).
    half, three_quarters = c.num_epochs / 4 * 2 * c.epoch_size, c.num_epochs / 4 * 3 * c.epoch_size
    return {0: 1 * c.lr, half: 0.1 * c.lr, three_quarters: 0.1 * c.lr}


# The base model: a ResFace64 ArcFace run (original, converted with probface-convert) or a stage-1 run.
restore_model = 'log/resface64/20200122-214343-arc'
restore_scopes = None
exclude_restore_scopes = ['center_loss', 'centers', 'UncertaintyModule']
weight_decay = 5e-4
keep_prob = 1.0
discriminat_metric_type = 'triplet_semihard'
loss_weights = {
    'mls_loss': 1.0,
    'output_constraint_loss': 0.001,
    'discriminate_loss': 0.001,
}
output_constraint_type = 'L2'

####### THIS IMPLEMENTATION #######
test_targets = ['cfp_fp']
