"""ResFace64 with a D-dimensional sigma (PFE's MLS; uncertainty_module_output_size = embedding_size)."""
from resface64_msarcface import *  # noqa: F401,F403  (the base recipe; keys below override it)

name = 'resface64-ddim'
uncertainty_module_output_size = embedding_size  # noqa: F405
