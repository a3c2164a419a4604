"""Former home of the baselines, which are methods now (``probface_tf.methods``)."""
