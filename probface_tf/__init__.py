"""probface_tf: ProbFace probabilistic face embeddings (mu, sigma^2) in TensorFlow 2 / Keras 3."""
__version__ = "0.1.0"
