"""Original configfig/resface64s2_msarcface.py: the 0.5-width ResFace64 (its resface64s2_relu_v3.py file is
missing from the original repository and is read as resface64s2_relu). As written there it had no
output_constraint_loss weight and no test_data_dir_mx; both are filled here so it runs."""
import os as _os

exec(open(_os.path.join(_os.path.dirname(__file__), 'resface64_msarcface.py')).read())

name = 'resface64s2'
embedding_network = 'models/resface64s2_relu_v3.py'
weight_decay = 1e-5
loss_weights = {'mls_loss': 1.0, 'output_constraint_loss': 0.0, 'discriminate_loss': 0.}
output_constraint_type = ''
s_wd_type = ''
s_wd_alpha = 0.001
