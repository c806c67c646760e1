from setuptools import find_packages, setup

setup(
    name="peterrec",
    version="0.1.0",
    description="Sequential recommendation by transfer learning (NextItNet, GRec, PeterRec) on Keras 3 / TensorFlow",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["peterrec", "peterrec.*", "pipelines", "pipelines.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "tensorboard",
        "numpy",
        "pandas",
        "absl-py",
        "matplotlib",
        "h5py",
    ],
    extras_require={
        # tensorflow-datasets imports importlib_resources (through etils.epath) without declaring it.
        "tfds": ["tensorflow-datasets", "importlib_resources"],
        "tune": ["optuna>=3.2"],
        "bench": ["scikit-learn"],  # the logistic-regression baseline of benchmarks/transfer_real.py
        "test": ["pytest", "pytest-xdist", "optuna>=3.2"],
    },
)
