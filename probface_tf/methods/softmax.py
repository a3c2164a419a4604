"""Normalised softmax: scaled cosine logits without a margin (CosFace with m = 0; ``margin_m`` is ignored)."""
from probface_tf.methods.registry import BACKBONE_STAGE, Method, register_method
from probface_tf.models.heads import CosFace

register_method(Method(name="softmax", stage=BACKBONE_STAGE, summary="normalised softmax (no margin)",
                       build_head=lambda num_classes, s, m: CosFace(num_classes, s=s, m=0.0)))
