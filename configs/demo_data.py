"""The CPU demo's synthetic data and network, shared by configs/demo.py and the recipes built on its backbone.

600 face-like identities x 10 images with known degradation severity; 20 % of the identities are held out for
the verification pairs (synth_val.bin). Loaded alone it is a valid head recipe without a base model.
"""
synthetic = {'root': 'data/demo_synth', 'num_identities': 600, 'images_per_identity': 10, 'seed': 0,
             'image_size': 48, 'bin_pairs': 2000, 'split': 0.2}
test_targets = []
image_size = [32, 32]
embedding_network = 'resface64_relu'
backbone_filters = [16, 32, 64, 128]
backbone_blocks = [1, 1, 1, 1]
embedding_size = 128
eval_batch_size = 256


# Where the generator writes (under synthetic['root']), so a recipe that moves the root moves both.
def train_dataset_path(c):
    return c.synthetic['root'] + '/train'


def test_bin_paths(c):
    return [c.synthetic['root'] + '/synth_val.bin']
