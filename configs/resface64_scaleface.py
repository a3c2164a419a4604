"""ScaleFace stage 1 on MS1M: ResFace64 trained from scratch with an ArcFace margin and a learned per-image scale.

    python train.py configs/resface64_scaleface.py

ScaleFace replaces ArcFace's fixed scale by s(x) = margin_s * sigmoid(f(x)) from a scale head (Dense 512 -> BN
-> ReLU -> Dense 1); 1 / s(x) is the uncertainty. The run directory holds backbone.keras (a ``restore_model``
for head training) and scale_head.keras. The scale head reads the unit-norm embedding mu rather than conv_final:
a bounded input keeps the scale logit bounded, while from conv_final the demo's held-out images pushed it below
-88, where 1 / s(x) overflows float32 and the evaluation stops (see configs/scaleface_demo.py, docs/baselines.md).

Where the numbers come from: data, input size, network and batch size are ProbFace's (configs/resface64_msarcface.py:
ms1m-retinaface-t1, 96x96, ResFace64 with a 256-d embedding, 128 images per batch); s = 64 and m = 0.5 are
ArcFace's MS1M values (the original base model is an ArcFace ResFace64, downloaded, so its training recipe is
not in ORIGINAL_SPEC); 64 is also ScaleFace's scale coefficient. The schedule is ours, the usual single-node
MS1M one (SGD momentum 0.9, lr 0.1, x0.1 after epochs 12, 20 and 24 of 26, weight decay 5e-4), an epoch being
about one pass over ms1m-retinaface-t1's 5.18 M images at 128 per batch. Every identity is used (stage 1 has no
reason for the head recipe's 20 000-identity cut).
"""

####### INPUT OUTPUT #######
stage = 'backbone'
name = 'resface64_scaleface'
log_base_dir = './log/'
summary_interval = 100
train_dataset_path = 'data/ms1m-retinaface-t1-img'
test_data_dir_mx = 'data/ms1m-retinaface-t1'
test_targets = ['lfw', 'cfp_fp', 'agedb_30']
image_size = [96, 96]
channels = 3
# preprocess_train / preprocess_test: the defaults, ProbFace's lists derived from image_size
max_identities = None

####### NETWORK #######
embedding_network = 'models/resface64_relu.py'
embedding_size = 256
uncertainty_module_input = 'mu'  # the scale head's input (bounded; see above)
keep_prob = 1.0

####### MARGIN SOFTMAX #######
margin_loss = 'scaleface'
margin_s = 64.0  # ArcFace's s, here the bound of the learned scale
margin_m = 0.5  # ArcFace's angular margin
uniform_loss_weight = 0.0

####### TRAINING STRATEGY #######
base_random_seed = 0
optimizer = 'momentum'
momentum = 0.9
batch_size = 128
epoch_size = 40000
num_epochs = 26
lr = 0.1


def learning_rate_schedule(c):
    # x0.1 after epochs 12, 20 and 24
    return {0: c.lr, 12 * c.epoch_size: c.lr / 10, 20 * c.epoch_size: c.lr / 100, 24 * c.epoch_size: c.lr / 1000}


weight_decay = 5e-4
checkpoint_interval = 5000
keep_checkpoints = 2
