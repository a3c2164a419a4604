"""probface_tf.eval"""
