"""probface_tf.data"""
