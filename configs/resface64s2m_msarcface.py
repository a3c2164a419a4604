"""Original configfig/resface64s2m_msarcface.py: 0.5-width fusion backbone. Its s_wd_type='abs_avg' is read by
nothing in the original (presumably meant the L1 output constraint); kept as a key, without effect."""
import os as _os

exec(open(_os.path.join(_os.path.dirname(__file__), 'resface64_msarcface.py')).read())

name = 'resface64s2'
embedding_network = 'models/resface64s2_relu_m.py'
weight_decay = 1e-5
loss_weights = {'mls_loss': 1.0, 'output_constraint_loss': 0.0, 'discriminate_loss': 1e-4}
output_constraint_type = ''
s_wd_type = 'abs_avg'
s_wd_alpha = 0.001
