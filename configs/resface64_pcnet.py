"""PCNet (face-uncertainty-pytorch ``pc_loss``) on the original ProbFace setting: ResFace64 base model, MS1M.

    python train.py configs/resface64_pcnet.py

The keys of configs/resface64_msarcface.py (same data, .bin files, frozen base model and preprocessing, so
the risk tables compare with ProbFace's), with face-uncertainty-pytorch's PCNet head and training (ORIGINAL_SPEC
section 8): ``head_fc2_prob`` (Linear(x1, 256) - BN - ReLU - Linear(256, 1) - sigmoid -> p) on the flattened
conv_final; loss = mean over positive pairs of (cos_ij - min(1 - p_i, 1 - p_j))^2 (L2, mu detached); from its
``pc_loss`` config lr 3e-2 for 2 epochs of 1000 steps; SGD momentum 0.9, weight decay 5e-4, MultiStepLR x0.1
at num_epochs/4 x {2, 3} epochs, batches of 10 identities x 8 images.
What does not map: its backbone is a frozen iresnet50 (glint360k CosFace, 112x112, x1 = 512x7x7) where ours
is the ResFace64 base model at 96x96 (x1 = its conv_final), and its Gaussian-blur training augmentation.
"""

####### METHOD #######
name = 'resface64_pcnet'
head_type = 'pcnet'
pc_loss_type = 'L2'

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

####### TRAINING STRATEGY (face-uncertainty-pytorch, ORIGINAL_SPEC section 8) #######
base_random_seed = 0
batch_size = 80  # 10 identities x 8 images, no doubled batch, no identity cap
batch_format = {'size': batch_size, 'num_classes': 10}
double_batch = False
max_identities = None
epoch_size = 1000
num_epochs = 2
learning_rate_strategy = 'step'
lr = 3e-2
# MultiStepLR: x0.1 at num_epochs/4 x {2, 3} epochs (two decays, unlike ProbFace's one).
learning_rate_schedule = {
    0: lr,
    num_epochs / 4 * 2 * epoch_size: 0.1 * lr,
    num_epochs / 4 * 3 * epoch_size: 0.01 * lr,
}
# SGD(momentum 0.9, weight_decay 5e-4) on every head parameter: torch's buf = m*buf + g; w -= lr*buf is the
# TF1 form, and the head's wd/2 * sum(w^2) regulariser gives torch's wd*w gradient term.
momentum = 0.9
momentum_form = 'tf1'
weight_decay = 5e-4
