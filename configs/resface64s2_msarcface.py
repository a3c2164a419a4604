"""Original configfig/resface64s2_msarcface.py: the 0.5-width ResFace64 (filters 32/64/128/256).

Its backbone file, resface64s2_relu_v3.py, is missing from the original repository; the name is read as
resface64s2_relu, the only half-width plain network there (docs/faithfulness.md). As written it had no
output_constraint_loss weight and no test_data_dir_mx; both are filled here so it runs.

The original restores a half-width stage-1 run, not the full-width base model: restore_model below is that
run's name, a placeholder to point at your own half-width backbone.
"""
from resface64_msarcface import *  # noqa: F401,F403  (the base recipe; keys below override it)

name = 'resface64s2'
embedding_network = 'models/resface64s2_relu_v3.py'
restore_model = 'log/resface64s2/20200624-231443-run07-arc'
weight_decay = 1e-5
loss_weights = {'mls_loss': 1.0, 'output_constraint_loss': 0.0, 'discriminate_loss': 0.}
output_constraint_type = ''
s_wd_type = ''  # ignored
s_wd_alpha = 0.001  # ignored
