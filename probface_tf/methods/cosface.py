"""CosFace (Wang et al.): additive cosine margin ``s * (cos(theta) - m)`` on the target class (stage 1)."""
from probface_tf.methods.registry import BACKBONE_STAGE, Method, register_method
from probface_tf.models.heads import CosFace

register_method(Method(name="cosface", stage=BACKBONE_STAGE, summary="CosFace: additive cosine margin",
                       build_head=lambda num_classes, s, m: CosFace(num_classes, s=s, m=m)))
