"""probface_tf: ProbFace (uncertainty-aware face recognition) in TensorFlow 2 / Keras 3."""
from setuptools import find_packages, setup

setup(
    name="probface_tf",
    version="0.1.0",
    description="ProbFace probabilistic face embeddings (mu, sigma^2) in TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["probface_tf", "probface_tf.*"]),
    install_requires=[
        "numpy>=1.24",
        "absl-py>=1.4",
        "scikit-learn>=1.3",
        "threadpoolctl>=3",  # one BLAS thread per scoring thread (ThreadpoolController)
        "pillow>=10",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tensorboard>=2.16",  # tf.summary scalars; tensorflow-cpu no longer pulls it in
    ],
    extras_require={
        # TensorFlow is an extra so CPU and GPU users pick the matching wheel.
        # llvmlite compiles the per-entry FastMLS tail of all-pairs scoring; without it NumPy does the same work
        # photos: MTCNN face detection (weights ship in the wheel) and OpenCV for the alignment warp
        "cpu": ["tensorflow-cpu>=2.16,<3", "keras>=3.0", "llvmlite>=0.44", "mtcnn>=1.0,<2",
                "opencv-python-headless>=4.8"],
        "gpu": ["tensorflow[and-cuda]>=2.16,<3", "keras>=3.0", "llvmlite>=0.44", "mtcnn>=1.0,<2",
                "opencv-python-headless>=4.8"],
        "photos": ["mtcnn>=1.0,<2", "opencv-python-headless>=4.8"],
        "dev": ["pytest>=7", "pytest-xdist>=3", "scipy>=1.10", "opencv-python-headless>=4.8", "scikit-image>=0.21"],
    },
    entry_points={
        "console_scripts": [
            "probface-convert=probface_tf.convert:run",
            "probface-export=probface_tf.export:run",
            "probface-data=probface_tf.data.cli:run",
            "probface=probface_tf.face_cli:run",
        ]
    },
)
