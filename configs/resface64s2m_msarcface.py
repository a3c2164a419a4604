"""Original configfig/resface64s2m_msarcface.py: the 0.5-width fusion backbone (conv_final 9696-d at 96x96).

Its s_wd_type='abs_avg' is read by nothing in the original (presumably meant the L1 output constraint); kept
as a key, without effect. The original restores a half-width stage-1 run (the same as resface64s2's):
restore_model below is that run's name, a placeholder to point at your own half-width fusion backbone.
"""
from resface64_msarcface import *  # noqa: F401,F403  (the base recipe; keys below override it)

name = 'resface64s2'
embedding_network = 'models/resface64s2_relu_m.py'
restore_model = 'log/resface64s2/20200624-231443-run07-arc'
weight_decay = 1e-5
loss_weights = {'mls_loss': 1.0, 'output_constraint_loss': 0.0, 'discriminate_loss': 1e-4}
output_constraint_type = ''
s_wd_type = 'abs_avg'  # ignored
s_wd_alpha = 0.001  # ignored
