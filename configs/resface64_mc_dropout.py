"""MC dropout (face-uncertainty-pytorch ``mc_dropout/``) on the original ProbFace setting: ResFace64 base model.

    python train.py configs/resface64_mc_dropout.py

Built on configs/resface64_msarcface.py (same .bin files, base model and preprocessing, so the risk tables
compare with ProbFace's), with face-uncertainty-pytorch's MC dropout (ORIGINAL_SPEC section 8): dropout
p = 0.5 on the flattened last stage, then the backbone's own bottleneck (weights copied from the restored base
model), T = 100 stochastic passes; mu = the re-normalised mean direction, uncertainty = std over T of
cos(sample, mu). Nothing is trained: the run restores the base model, copies the bottleneck, saves model.keras
and evaluates cfp_fp once. The passes repeat only the bottleneck matmul, not the backbone.
"""
from resface64_msarcface import *  # noqa: F401,F403  (data, .bin files, base model, preprocessing)

####### METHOD #######
name = 'resface64_mc_dropout'
head_type = 'mc_dropout'
mc_dropout_rate = 0.5
mc_samples = 100

uncertainty_module_input = 'conv_final'  # face-uncertainty-pytorch's x1: the flattened last feature map
