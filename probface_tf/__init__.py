"""probface_tf: ProbFace probabilistic face embeddings (mu, sigma^2) in TensorFlow 2 / Keras 3.

    import probface_tf as pf
    model = pf.load("model.keras", calibration="calibration.json")
    print(model.compare("a.jpg", "b.jpg"))

Names are imported on first use, so ``import probface_tf`` stays light (no TensorFlow until a model is needed).
"""
import importlib

__version__ = "0.1.0"

# public name -> module defining it
_PUBLIC = {
    "load": "probface_tf.loading",
    "FaceModel": "probface_tf.face_model",
    "Comparison": "probface_tf.face_model",
    "Calibration": "probface_tf.calibration",
    "Face": "probface_tf.faces.detector",
    "FaceDetector": "probface_tf.faces.detector",
    "align_face": "probface_tf.faces.alignment",
    "read_photo": "probface_tf.faces.photo",
    "ModelLoadError": "probface_tf.eval.model_loader",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'probface_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
