"""probface_tf.models"""
