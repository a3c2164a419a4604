"""MC dropout (face-uncertainty-pytorch ``mc_dropout/``) on the original ProbFace setting: ResFace64 base model.

    python train.py configs/resface64_mc_dropout.py

The keys of configs/resface64_msarcface.py (same .bin files, base model and preprocessing, so the risk tables
compare with ProbFace's), with face-uncertainty-pytorch's MC dropout (ORIGINAL_SPEC section 8): dropout
p = 0.5 on the flattened last stage, then the backbone's own bottleneck (weights copied from the restored base
model), T = 100 stochastic passes; mu = the re-normalised mean direction, uncertainty = std over T of
cos(sample, mu). Nothing is trained: the run restores the base model, copies the bottleneck, saves model.keras
and evaluates cfp_fp once. The passes repeat only the bottleneck matmul, not the backbone.
"""

####### METHOD #######
name = 'resface64_mc_dropout'
head_type = 'mc_dropout'
mc_dropout_rate = 0.5
mc_samples = 100

####### INPUT OUTPUT (as configs/resface64_msarcface.py) #######
log_base_dir = './log/'
summary_interval = 100
train_dataset_path = 'data/ms1m-retinaface-t1-img'
test_data_dir_mx = 'data/ms1m-retinaface-t1'
test_targets = ['cfp_fp']  # face-uncertainty-pytorch also evaluates cfp_fp after each epoch
image_size = [96, 96]
channels = 3
# The frozen ResFace64 sees the preprocessing it was trained with; face-uncertainty-pytorch's extra Gaussian-blur
# and colour augmentation are left out (not cacheable, and not what this backbone's statistics expect).
preprocess_train = [
    ['resize', (image_size[0], image_size[1])],
    ['random_flip'],
    ['standardize', 'mean_scale'],
]
preprocess_test = [
    ['resize', (image_size[0], image_size[1])],
    ['standardize', 'mean_scale'],
]

####### NETWORK (ProbFace's frozen base model) #######
embedding_network = 'models/resface64_relu.py'
uncertainty_module_input = 'conv_final'  # face-uncertainty-pytorch's x1: the flattened last feature map
embedding_size = 256
restore_model = 'log/resface64/20200122-214343-arc'
restore_scopes = None
exclude_restore_scopes = ['center_loss', 'centers', 'UncertaintyModule']
keep_prob = 1.0
