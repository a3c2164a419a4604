"""Original configfig/resface64m_msarcface.py: the multi-layer fusion backbone (conv_final = flatten + GAP of
Conv1..Conv4, 19392-d at 96x96), restored from an earlier run."""
import os as _os

exec(open(_os.path.join(_os.path.dirname(__file__), 'resface64_msarcface.py')).read())

name = 'resface64-ms'
embedding_network = 'models/resface64_relu_m.py'
