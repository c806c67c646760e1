"""peterrec: sequential recommendation by transfer learning on Keras 3 / TensorFlow.

Python API (imported lazily, so ``import peterrec`` stays cheap)::

    import peterrec

    # Train and export (the library behind `python -m pipelines.pretrain`).
    metrics = peterrec.pretrain(peterrec.PretrainConfig(epochs=5, model_dir="checkpoints/my-run"))

    # Load an export and recommend for raw item-id sequences.
    model = peterrec.load_export("checkpoints/my-run/export")
    model.recommend([["i00042", "i01337", "i00007"]], top_k=10, exclude_seen=True)

    # Building blocks.
    backbone = peterrec.NextItNetBackbone(vocabulary_size=1000, embedding_dim=64)
"""

__version__ = "0.1.0"

_LAZY = {
    "PretrainConfig": ("peterrec.pretraining", "PretrainConfig"),
    "pretrain": ("peterrec.pretraining", "run"),
    "load_export": ("peterrec.export", "load_export"),
    "export_model": ("peterrec.export", "export_model"),
    "Vocabulary": ("peterrec.data.vocab", "Vocabulary"),
    "convert": ("peterrec.data.convert", "convert"),
    "read_sequences": ("peterrec.data.readers", "read_sequences"),
    "NextItNetBackbone": ("peterrec.backbones.nextitnet", "NextItNetBackbone"),
    "NextItemTask": ("peterrec.tasks.next_item", "NextItemTask"),
    "Trainer": ("peterrec.training", "Trainer"),
    "TrainConfig": ("peterrec.training", "TrainConfig"),
    "predict_file": ("peterrec.inference", "predict_file"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'peterrec' has no attribute {name!r}")
