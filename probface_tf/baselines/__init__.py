"""Uncertainty baselines of face-uncertainty-pytorch: PCNet, IDQ and MC dropout."""
