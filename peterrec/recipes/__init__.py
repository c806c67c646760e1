"""Recipes: one module per model, and the one registry every pipeline dispatches through.

A recipe is everything a job needs to know about a model besides the shared
data path and training loop: its configuration dataclass (the fields its
flags map onto, with the model's defaults), the function that trains,
evaluates and exports one run of it, the batch layout its training rows use,
and what it can do (is it causal? does its export serve a top-k? does it
classify?). ``pipelines.train``, ``pretrain``, ``finetune``, ``casr``, ``tune``
and ``benchmark`` look models up here, so adding a model is writing
``peterrec/recipes/<name>.py`` (plus its layer/backbone file) and a test; see
docs/adding_a_model.md.

Every module of this package is imported the first time the registry is
read (:func:`get`, :func:`names`, :func:`all_recipes`), so a new recipe file
registers itself without being listed anywhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Callable

from peterrec.errors import ConfigError
from peterrec.settings import coerce, resolve_field

# Batch layouts: how a TFRecord row becomes training batches (peterrec.data.dataset and friends).
LAYOUTS = {
    "windows": "next item at every position of max_len-item windows (data.dataset.train_dataset)",
    "cloze": "masked-item chunks, scored with the end mask (data.cloze.cloze_train_dataset)",
    "caser_windows": "L inputs + T targets per window with sampled negatives (data.caser_dataset)",
    "candidate_pairs": "history + one candidate and its label, item side information (ATRank)",
    "mii_cells": "masked item-attribute cells (MIIR's MII pretraining and finetuning)",
    "target_pairs": "source sequence + one per-user target item or class (PeterRec finetuning)",
    "counterfactual": "observed windows plus generated counterfactual sequences (CASR anchors)",
}


@dataclasses.dataclass
class Recipe:
    """How to train one model: ``run(config_class(**overrides, **fixed)) -> metrics``.

    Args:
        name: the model's name (``--model``, ``--backbone``, ``--models``).
        config_class: the dataclass whose fields are the model's settings (one flag each).
        run: trains, evaluates and exports one run into the config's model_dir; returns metrics.json's dict.
        fixed: config values the recipe pins (e.g. ``{"backbone": "sasrec"}`` on the shared sequence config).
        clear_session: start each tune/benchmark run with a fresh Keras session.
        own_defaults: fields whose defaults are the model's own (Caser's ``max_len`` 5): an unset shared
            flag and the benchmark protocol leave them alone.
        defaults: the recipe's own defaults of shared config fields (BERT4Rec's ``mask_prob`` 0.2 on the
            shared sequence config, whose default is GRec's 0.3); an unset flag keeps them (they join
            ``own_defaults``), a given flag or override replaces them.
        layout: the training batch layout (a key of :data:`LAYOUTS`).
        causal: predicts the next item from the items before it only (usable as a CASR sampler/anchor).
        serves_top_k: the export's serving signature maps a raw id sequence to top-k items.
        classification: the model predicts a class per user (PeterRec profile classification).
        pipeline: the entry point that trains it (``python -m pipelines.<pipeline>``).
        backbone: for sequence recipes, the ``[B, L, C]`` encoder class.
        build_backbone: for sequence recipes, ``build_backbone(cfg, vocabulary_size)`` -> the encoder.
        task_class: for sequence recipes, the task (loss + head) around the backbone.
        family: for sequence recipes, ``"cnn"`` (NextItNet's settings: dilations, kernel_size, ...) or
            ``"zoo"`` (the backbone's constructor takes the shared zoo settings it names: num_layers, ...).
        eval_rows: ``eval_rows(loaded_export, set_dir, split, batch_size) -> dataset_fn(input_context)``, the
            evaluation rows an export of this model is scored on (``pipelines.evaluate``) when they are not the
            shared next-item rows (``data.dataset.eval_dataset``): Caser's rows carry the user, ATRank's the
            time buckets and a negative.
        order: position in listings (built-ins first, then new recipes by name).
        summary: one line for ``--help`` and the docs.
    """

    name: str
    config_class: type
    run: Callable | None
    fixed: dict = dataclasses.field(default_factory=dict)
    clear_session: bool = True
    own_defaults: tuple = ()
    defaults: dict = dataclasses.field(default_factory=dict)
    layout: str = "windows"
    causal: bool = True
    serves_top_k: bool = True
    classification: bool = False
    pipeline: str = "train"
    backbone: type | None = None
    build_backbone: Callable | None = None
    task_class: type | None = None
    family: str = ""
    eval_rows: Callable | None = None
    order: int = 100
    summary: str = ""

    def __post_init__(self):
        self.own_defaults = tuple(dict.fromkeys((*self.own_defaults, *self.defaults)))

    def config(self, overrides, where="overrides"):
        """The recipe's config with ``overrides`` (field or RecBole name -> value, coerced to the field's type)."""
        values = {}
        for name, value in overrides.items():
            field = resolve_field(self.config_class, name, where, self.name)
            values[field] = coerce(self.config_class, field, value, where)
        return self.config_class(**(self.defaults | values | self.fixed))


_REGISTRY: dict[str, Recipe] = {}
_loaded = False


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry (a later registration of the same name replaces it); returns it."""
    if recipe.layout not in LAYOUTS:
        raise ValueError(f"recipe {recipe.name!r}: layout {recipe.layout!r} is not one of {', '.join(LAYOUTS)}")
    _REGISTRY[recipe.name] = recipe
    return recipe


def unregister(name):
    """Remove a registered recipe (tests that register a throwaway model)."""
    _REGISTRY.pop(name, None)


def _load():
    global _loaded
    if not _loaded:
        _loaded = True
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")


def all_recipes() -> dict[str, Recipe]:
    """Every registered recipe, by name, in listing order (loads the recipe modules on first use)."""
    _load()
    return dict(sorted(_REGISTRY.items(), key=lambda item: (item[1].order, item[0])))


def names(**capabilities) -> tuple[str, ...]:
    """Registered names in listing order whose attributes equal ``capabilities`` (e.g. ``causal=True``)."""
    return tuple(
        name for name, recipe in all_recipes().items()
        if all(getattr(recipe, key) == value for key, value in capabilities.items())
    )


def get(name, flag="--model", **capabilities) -> Recipe:
    """The recipe called ``name``; ConfigError naming ``flag`` and the allowed names otherwise.

    ``capabilities`` restrict the allowed recipes (``get(name, "--anchor_model", causal=True)``).
    """
    allowed = names(**capabilities)
    if name not in allowed:
        what = "" if not capabilities else " (" + ", ".join(f"{k}={v}" for k, v in capabilities.items()) + ")"
        raise ConfigError(f"{flag}: {name!r} is not one of {', '.join(allowed)}{what}")
    return _REGISTRY[name]
