"""Original configfig/resface64m_msarcface.py: the multi-layer fusion backbone (conv_final = flatten + GAP of
Conv1..Conv4, 19392-d at 96x96).

The original restores an earlier ProbFace run of this fusion network (its head excluded), not the plain
ResFace64 base model, whose conv_final is 18432-d: restore_model below is that run's name, a placeholder to
point at your own fusion-backbone run (a stage-1 run or a converted original).
"""
from resface64_msarcface import *  # noqa: F401,F403  (the base recipe; keys below override it)

name = 'resface64-ms'
embedding_network = 'models/resface64_relu_m.py'
restore_model = 'log/resface64_relu_msarcface_am_PFE/20201022-104812-mls1.0-abs1e-3'
