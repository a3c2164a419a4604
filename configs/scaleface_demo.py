"""ScaleFace stage 1 on the CPU demo's synthetic identities: the demo's backbone recipe with a learned scale.

    python train.py configs/scaleface_demo.py

ScaleFace replaces ArcFace's fixed scale s by a per-image scale s(x) = margin_s * sigmoid(f(x)) predicted by a
small head (Dense 512 -> BN -> ReLU -> Dense 1); the softmax loss trains it, and 1 / s(x) is the image's
uncertainty (a low scale marks a hard, uncertain face). The run directory holds backbone.keras and
scale_head.keras; ``evaluate.py --model <run dir>`` composes them into one model.

The scale head reads the unit-norm embedding ``mu``, not conv_final: from conv_final, Adam drives the scale
logit of hopeless training images down without bound and held-out images extrapolate past -88, where the
float32 scale underflows to 0 (12 of the 4000 held-out images in a measured run; their uncertainty is floored
to a large finite value). A bounded input keeps the logit bounded
(-6.5 ... 5.9 measured) and tracks degradation as well (Spearman of 1 / s(x) with severity 0.75 vs 0.74).

Same data, architecture, optimizer and schedule as the demo's stage 1 (configs/demo.py ``backbone_config``:
Adam 1e-3 -> 1e-4 at step 1000, 6 epochs of 250 batches of 64, weight decay 5e-4), so the comparison with
ProbFace on that backbone is like for like; about 3-4 minutes on 2 CPU cores. The margin is ScaleFace's
(ArcFace's angular margin), with the demo's moderate values instead of ArcFace's s = 64, m = 0.5, for the same
reason the demo uses CosFace: from scratch on this small network the large margin needs far longer.
"""
import demo as _demo  # configs/demo.py, for its stage-1 optimisation
from demo_data import *  # noqa: F401,F403  (the demo's data and network)

stage = 'backbone'
name = 'scaleface_demo'
log_base_dir = './log/'
summary_interval = 100

margin_loss = 'scaleface'
margin_s = 32.0  # upper bound of the learned scale (the demo's fixed CosFace scale)
margin_m = 0.2  # angular margin (rad)
uncertainty_module_input = 'mu'  # the scale head's input: bounded, see above

# The demo's stage-1 optimisation (configs/demo.py backbone_config): the same run, a learned scale for CosFace's.
optimizer = _demo.backbone_config['optimizer']
batch_size = _demo.backbone_config['batch_size']
epoch_size = _demo.backbone_config['epoch_size']
num_epochs = _demo.backbone_config['num_epochs']
lr = _demo.backbone_config['lr']
learning_rate_schedule = _demo.backbone_config['learning_rate_schedule']
weight_decay = _demo.backbone_config['weight_decay']
checkpoint_interval = _demo.backbone_config['checkpoint_interval']
