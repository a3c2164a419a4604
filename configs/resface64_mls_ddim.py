"""ResFace64 with a D-dimensional sigma (PFE's MLS; uncertainty_module_output_size = embedding_size)."""
import os as _os

exec(open(_os.path.join(_os.path.dirname(__file__), 'resface64_msarcface.py')).read())

name = 'resface64-ddim'
uncertainty_module_output_size = embedding_size
