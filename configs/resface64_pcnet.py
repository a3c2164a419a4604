"""PCNet (face-uncertainty-pytorch ``pc_loss``) on the original ProbFace setting: ResFace64 base model, MS1M.

    python train.py configs/resface64_pcnet.py

Built on configs/resface64_msarcface.py (same data, .bin files, frozen base model and preprocessing, so
the risk tables compare with ProbFace's), with face-uncertainty-pytorch's PCNet head and training (ORIGINAL_SPEC
section 8): ``head_fc2_prob`` (Linear(x1, 256) - BN - ReLU - Linear(256, 1) - sigmoid -> p) on the flattened
conv_final; loss = mean over positive pairs of (cos_ij - min(1 - p_i, 1 - p_j))^2 (L2, mu detached); from its
``pc_loss`` config lr 3e-2 for 2 epochs of 1000 steps; SGD momentum 0.9, weight decay 5e-4, MultiStepLR x0.1
at num_epochs/4 x {2, 3} epochs, batches of 10 identities x 8 images.
What does not map: its backbone is a frozen iresnet50 (glint360k CosFace, 112x112, x1 = 512x7x7) where ours
is the ResFace64 base model at 96x96 (x1 = its conv_final), and its Gaussian-blur training augmentation.
"""
from resface64_msarcface import *  # noqa: F401,F403  (data, .bin files, base model, preprocessing)

####### METHOD #######
name = 'resface64_pcnet'
head_type = 'pcnet'
pc_loss_type = 'L2'

uncertainty_module_input = 'conv_final'  # face-uncertainty-pytorch's x1: the flattened last feature map

####### TRAINING STRATEGY (face-uncertainty-pytorch, ORIGINAL_SPEC section 8) #######
batch_size = 80  # 10 identities x 8 images, no doubled batch, no identity cap
double_batch = False
max_identities = None


def batch_format(c):
    return {'size': c.batch_size, 'num_classes': 10}


epoch_size = 1000
num_epochs = 2
lr = 3e-2


def learning_rate_schedule(c):
    # MultiStepLR: x0.1 at num_epochs/4 x {2, 3} epochs (two decays, unlike ProbFace's one).
    two, three = c.num_epochs / 4 * 2 * c.epoch_size, c.num_epochs / 4 * 3 * c.epoch_size
    return {0: c.lr, two: 0.1 * c.lr, three: 0.01 * c.lr}


# SGD(momentum 0.9, weight_decay 5e-4) on every head parameter: torch's buf = m*buf + g; w -= lr*buf is the
# TF1 form, and the head's wd/2 * sum(w^2) regulariser gives torch's wd*w gradient term.
momentum = 0.9
momentum_form = 'tf1'
weight_decay = 5e-4
