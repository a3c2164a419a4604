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
preprocess_train = [
    ['resize', (image_size[0], image_size[1])],
    ['random_flip'],
    ['standardize', 'mean_scale'],
]
preprocess_test = [
    ['resize', (image_size[0], image_size[1])],
    ['standardize', 'mean_scale'],
]
num_gpus = 1

####### NETWORK #######
embedding_network = 'models/resface64_relu.py'
uncertainty_module = 'models/uncertainty_module.py'
uncertainty_module_input = 'conv_final'
embedding_size = 256
uncertainty_module_output_size = 1

####### TRAINING STRATEGY #######
base_random_seed = 0
batch_size = 128
batch_format = {
    'size': batch_size,
    'num_classes': batch_size // 4,
}
epoch_size = 1000
num_epochs = 12
learning_rate_strategy = 'step'
lr = 1e-2
# Float keys as in the original: one decay, at step 6000 (the 9000 entry repeats the same value).
learning_rate_schedule = {
    0: 1 * lr,
    num_epochs / 4 * 2000: 0.1 * lr,
    num_epochs / 4 * 3000: 0.1 * lr,
}
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
