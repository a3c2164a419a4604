"""Faces in photos: reading a photo, a detector interface (MTCNN today), 5-point alignment to the ArcFace template."""
from probface_tf.faces.alignment import ARCFACE_TEMPLATE, CROP_SIZE, AlignmentError, align_face, similarity_transform
from probface_tf.faces.detector import Face, FaceDetector
from probface_tf.faces.photo import PhotoError, read_photo

__all__ = ["ARCFACE_TEMPLATE", "CROP_SIZE", "AlignmentError", "Face", "FaceDetector", "PhotoError", "align_face",
           "read_photo", "similarity_transform"]
