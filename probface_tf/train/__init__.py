"""probface_tf.train"""
