"""ArcFace (Deng et al.): additive angular margin ``s * cos(theta + m)`` on the target class (stage 1)."""
from probface_tf.methods.registry import BACKBONE_STAGE, Method, register_method
from probface_tf.models.heads import ArcFace

register_method(Method(name="arcface", stage=BACKBONE_STAGE, summary="ArcFace: additive angular margin",
                       build_head=lambda num_classes, s, m: ArcFace(num_classes, s=s, m=m)))
