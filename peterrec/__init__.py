"""peterrec: sequential recommendation by transfer learning on Keras 3 / TensorFlow."""

__version__ = "0.1.0"
