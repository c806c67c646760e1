"""CASR: counterfactual data augmentation with a sampler and an anchor model (Wang et al., SIGIR 2021).

``run(CASRConfig(...))`` is what ``python -m pipelines.casr`` calls (the stages are in
:mod:`peterrec.augment.casr`):

1. **Sampler.** Train the sampler (``sampler_model``, any causal next-item
   model: nextitnet, sasrec, narm, stamp, gru4rec) with
   :func:`peterrec.pretraining.run` into ``<model_dir>/sampler/``, or load an
   existing export (``sampler_dir``). It is rebuilt in Keras from the export
   and frozen; its vocabulary must be the data's.
2. **Generation** over the *training* prefixes only
   (:mod:`peterrec.augment.generate`): ``heuristic`` and ``learning`` write
   their samples as a TFRecord set ``<model_dir>/generated/`` plus
   ``generated_samples.tsv`` (originals next to counterfactuals); ``ad``
   stores the selected prefixes and makes its counterfactuals inside the
   anchor's training step.
3. **Anchor.** Train the anchor (``anchor_model``) on the observed windows
   plus the generated samples weighted by ``beta``
   (:class:`peterrec.augment.task.CounterfactualTask`) with the one training
   loop, select on validation MRR@10, evaluate with the full-ranking
   protocol on the untouched validation/test targets and export it as an
   ordinary next-item export.

With ``beta == 0`` or ``sample == 0`` stage 3 is exactly the plain anchor
(``python -m pipelines.train --model <anchor>`` with the same seed).

Outputs in ``model_dir`` (default ``checkpoints/casr-<sampler>-<anchor>-<learning>``):
``sampler/`` (stage 1 job, unless ``sampler_dir``), ``sampler.json`` (the
sampler export used), ``generated/`` + ``generation.json`` (statistics),
``generated_samples.tsv``, ``export/<version>/`` (the anchor), ``logs/``
(TensorBoard; ``logs/casr``: generated samples, share, flip rate), ``ckpt/``,
``metrics.json``, ``job_config.json``, ``curves.png``.

Every choice the paper leaves open is a field below with its default; see
docs/fidelity.md, section CASR.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

from absl import logging
import keras

from peterrec import io, pretraining, recipes, runner
from peterrec.augment import counterfactual, generate
from peterrec.augment.casr import (
    GENERATED_DIR, SAMPLER_DIR, SAMPLER_FILE, TSV_FILE, AdversarialStats, anchor_inputs, causal_models, job_record, read_export_config,
    stage_generate, stage_sampler, write_ad_samples,
)
from peterrec.augment.task import CounterfactualTask
from peterrec.errors import ConfigError, check
from peterrec.pretraining import CNN_FIELDS, PretrainConfig, ZOO_FIELDS, sequence_models
from peterrec.training import Trainer


@dataclasses.dataclass
class CASRConfig(PretrainConfig):
    """Settings of a CASR job (``pipelines.casr`` flags map 1:1 onto these fields).

    The data, training and model fields are :class:`PretrainConfig`'s and
    apply to both models (each takes the model settings it has; the sampler
    trains for ``sampler_epochs`` if set). Defaults of the seed's knobs follow
    the seed README's example command (``--learning Learning --index 2
    --kappa 0 --sample 1 --iter 1 --beta 1 --learning_rate 0.01``) except ``tao`` and ``sample`` (see fidelity).
    """

    learning_rate: float = 0.01  # the seed's main.py example and its run_test_example.py -r 0.01 (NARM, STAMP)

    sampler_model: str | None = None  # default narm, or the model of --sampler_dir's export
    anchor_model: str = "stamp"
    learning: str = "learning"  # heuristic | learning (data-oriented) | ad (model-oriented)
    sampler_dir: str | None = None  # reuse a sampler export instead of training one
    sampler_epochs: int | None = None  # stage 1 epochs (default --epochs)
    # where and how often to intervene
    index: int = 2  # intervention position, 1-based, counted as --position says
    position: str = "from_end"  # from_end (index 1 = the most recent item) | from_start | random
    sample: float = 0.1  # share of training prefixes selected for generation (0 = none); the seed's example: 1 (fidelity k3)
    n_per_seq: int = 1  # candidates per selected prefix
    # heuristic
    replacement: str = "uniform"  # uniform | popularity (training counts)
    # learning / ad search
    kappa: float = 0.0  # hinge margin (confidence) of the boundary search; threshold of --filter confidence
    tao: float = 0.1  # temperature of the softmax over item similarities that maps e' back to an item
    iter: int = 1  # gradient steps of the search
    step_size: float = 0.5  # step length in units of the RMS item-embedding norm
    closeness: float = 0.1  # weight of ||e' - e||^2 (relative to the RMS norm^2)
    similarity: str = "cosine"  # cosine | dot | euclidean (negative squared distance)
    candidates: int = 4  # ad: replacements drawn per prefix; the one with the highest anchor loss is used
    # labels and filtering
    label: str = "argmax"  # argmax | sampled (from the sampler's softmax)
    filter: str = "auto"  # auto (flip for learning, none otherwise) | none | flip | confidence
    # stage 3
    beta: float = 1.0  # weight of each generated sample's loss (observed samples weigh 1)
    generation_batch_size: int = 256
    inspect_rows: int = 1000  # rows of generated_samples.tsv

    def resolved_learning(self):
        return str(self.learning).lower()

    def resolved_sampler_model(self):
        if self.sampler_model:
            return str(self.sampler_model).lower()
        if self.sampler_dir:
            return str(read_export_config(self.sampler_dir).get("backbone_name", "?"))
        return "narm"

    def resolved_model_dir(self):
        name = f"casr-{self.resolved_sampler_model()}-{str(self.anchor_model).lower()}-{self.resolved_learning()}"
        return self.model_dir or os.path.join("checkpoints", name)

    def resolved_filter(self):
        if self.filter != "auto":
            return self.filter
        return "flip" if self.resolved_learning() == "learning" else "none"

    def intervention(self):
        """The :class:`~peterrec.augment.counterfactual.Intervention` these settings describe."""
        return counterfactual.Intervention(
            method=self.resolved_learning(),
            position=self.position,
            index=self.index,
            replacement=self.replacement,
            kappa=self.kappa,
            tao=self.tao,
            iters=self.iter,
            step_size=self.step_size,
            closeness=self.closeness,
            similarity=self.similarity,
            label=self.label,
            filter=self.resolved_filter(),
            candidates=self.candidates,
        )

    def model_config(self, role):
        """The :class:`PretrainConfig` of the sampler or the anchor: this job's settings that the model takes."""
        model = self.resolved_sampler_model() if role == "sampler" else str(self.anchor_model).lower()
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(PretrainConfig)}
        defaults = PretrainConfig()
        fields["backbone"] = model
        fields["model_dir"] = os.path.join(self.resolved_model_dir(), SAMPLER_DIR) if role == "sampler" else self.resolved_model_dir()
        if role == "sampler" and self.sampler_epochs:
            fields["epochs"] = self.sampler_epochs
        if sequence_models()[model].family == "zoo":
            for name in CNN_FIELDS:
                fields[name] = getattr(defaults, name)
            takes = PretrainConfig(backbone=model).model_settings()
            for name in ZOO_FIELDS:
                if name not in takes:
                    fields[name] = None
        else:
            for name in ZOO_FIELDS:
                fields[name] = None
        return PretrainConfig(**fields)

    def validate(self):
        learning = self.resolved_learning()
        check(learning in counterfactual.METHODS, "learning", f"{self.learning!r} is not one of {', '.join(counterfactual.METHODS)}")
        sampler = self.resolved_sampler_model()
        models = causal_models()
        check(sampler in models, "sampler_model", f"{sampler!r} is not one of {', '.join(models)}")
        check(str(self.anchor_model).lower() in models, "anchor_model", f"{self.anchor_model!r} is not one of {', '.join(models)}")
        check(self.index >= 1, "index", f"must be >= 1 (1-based), got {self.index}")
        check(
            self.index <= self.max_len,
            "index",
            f"{self.index} is beyond the sequence length: prefixes hold at most --max_len {self.max_len} items",
        )
        for name, choices in (
            ("position", counterfactual.POSITIONS),
            ("replacement", counterfactual.REPLACEMENTS),
            ("similarity", counterfactual.SIMILARITIES),
            ("label", counterfactual.LABEL_RULES),
            ("filter", ("auto", *counterfactual.FILTERS)),
        ):
            check(getattr(self, name) in choices, name, f"{getattr(self, name)!r} is not one of {', '.join(choices)}")
        check(0.0 <= self.sample <= 1.0, "sample", f"is the share of training prefixes, in [0, 1]; got {self.sample}")
        check(self.n_per_seq >= 1, "n_per_seq", f"must be >= 1, got {self.n_per_seq}")
        check(self.kappa >= 0 and math.isfinite(self.kappa), "kappa", f"must be a finite value >= 0, got {self.kappa}")
        check(self.tao > 0, "tao", f"must be > 0, got {self.tao}")
        check(self.iter >= 0, "iter", f"must be >= 0, got {self.iter}")
        check(self.step_size > 0, "step_size", f"must be > 0, got {self.step_size}")
        check(self.closeness >= 0, "closeness", f"must be >= 0, got {self.closeness}")
        check(self.candidates >= 1, "candidates", f"must be >= 1, got {self.candidates}")
        check(self.beta >= 0 and math.isfinite(self.beta), "beta", f"must be a finite value >= 0, got {self.beta}")
        check(self.generation_batch_size >= 1, "generation_batch_size", f"must be >= 1, got {self.generation_batch_size}")
        check(self.inspect_rows >= 0, "inspect_rows", f"must be >= 0, got {self.inspect_rows}")
        check(self.sampler_epochs is None or self.sampler_epochs >= 1, "sampler_epochs", f"must be >= 1, got {self.sampler_epochs}")
        check(not self.pad_as_item, "pad_as_item", "is not supported by casr (generated samples are right-padded)")
        for role in ("sampler", "anchor"):
            if role == "sampler" and self.sampler_dir:
                continue
            self.model_config(role).validate()
        models = {sampler, str(self.anchor_model).lower()}
        for name in ZOO_FIELDS:
            if getattr(self, name) is not None:
                takes = [m for m in models if sequence_models()[m].family == "zoo" and name in PretrainConfig(backbone=m).model_settings()]
                check(bool(takes), name, f"is taken by neither --sampler_model {sampler} nor --anchor_model {self.anchor_model}")




def run(cfg: CASRConfig):
    """Stages 1-3 (see the module docstring); returns the metrics dict written to metrics.json."""
    cfg.validate()
    model_dir = cfg.resolved_model_dir()
    anchor_cfg = cfg.model_config("anchor")
    set_dir, metadata, vocab = pretraining.prepare_data(anchor_cfg)
    record = job_record(cfg) | runner.data_identity(set_dir, vocab)
    _, eligible = generate.count_prefixes(metadata, cfg.max_len, cfg.intervention())
    if cfg.sample > 0 and not eligible:
        raise ConfigError(
            f"--index {cfg.index}: no training prefix of {set_dir} has {cfg.index} items (--position {cfg.position}); lower --index"
        )
    t0 = time.perf_counter()
    loaded = stage_sampler(cfg, vocab, set_dir) if cfg.sampler_dir else None  # a bad export fails before anything is written
    runner.open_model_dir(model_dir, record)
    sampler, sampler_metrics = loaded or stage_sampler(cfg, vocab, set_dir)
    io.write_json(os.path.join(model_dir, SAMPLER_FILE), {"export": os.path.abspath(sampler.path), "model": cfg.resolved_sampler_model(),
                                                              "test": sampler_metrics.get("test", {})})
    stats = stage_generate(cfg, sampler, set_dir, vocab, model_dir)
    gen_dir = os.path.join(model_dir, GENERATED_DIR)

    # Stage 3 starts from the same random state as a plain anchor job (pretraining.run) with this seed.
    keras.utils.set_random_seed(cfg.seed)
    strategy = runner.strategy_for(cfg)
    inputs, per_step = anchor_inputs(cfg, anchor_cfg, set_dir, metadata, gen_dir, stats["generated"], strategy.num_replicas_in_sync)
    intervention = cfg.intervention()
    adversarial = intervention.method == "ad" and per_step > 0

    def task_fn():
        anchor = pretraining.build_task(anchor_cfg, vocab)
        return CounterfactualTask(
            anchor, beta=cfg.beta, sampler=sampler.task if adversarial else None,
            intervention=intervention if adversarial else None, seed=cfg.seed,
        )

    if cfg.verbose:
        logging.info(f"casr stage 3: anchor {anchor_cfg.backbone}, {stats['generated']} generated samples "
              f"({per_step} per step, beta {cfg.beta:g})")
    callbacks = [AdversarialStats(model_dir)] if adversarial else []
    trainer = Trainer(task_fn, inputs, model_dir, cfg.train_config(), strategy, callbacks=callbacks)
    result, evaluation, eval_seconds = runner.fit_and_evaluate(trainer, vocab.counts)
    task = trainer.task
    ad_stats = None
    if adversarial:
        made = float(task.ad_generated.numpy())
        ad_stats = {"generated_in_steps": int(made), "flip_rate": float(task.ad_flipped.numpy()) / max(made, 1.0)}
    metrics = {
        **evaluation,
        **runner.fit_metrics(result, eval_seconds),
        "job_wall_seconds": round(time.perf_counter() - t0, 2),
        **runner.param_counts(task.anchor),
        "eval_protocol": cfg.eval_protocol,
        "casr": {
            "learning": cfg.resolved_learning(),
            "sampler": {"model": cfg.resolved_sampler_model(), "export": os.path.abspath(sampler.path),
                        "test": sampler_metrics.get("test", {})},
            "anchor": anchor_cfg.backbone,
            "beta": cfg.beta,
            "generation": stats,
            "generated_per_step": per_step,
            "ad": ad_stats,
        },
        "data": runner.data_summary(set_dir, vocab, metadata),
        "versions": runner.versions(),
    }

    def write_samples(metrics):
        if adversarial and cfg.inspect_rows:
            write_ad_samples(cfg, task, sampler.task, gen_dir, vocab, os.path.join(model_dir, TSV_FILE))

    export_kwargs = dict(task=task.anchor, vocab=vocab, max_len=cfg.max_len, top_k=cfg.top_k, extra_config={
        "job": pretraining.job_record(anchor_cfg), "backbone_name": anchor_cfg.backbone, "casr": record,
        "layout": "counterfactual"})
    return runner.finish(trainer, result, model_dir, metrics, export_kwargs=export_kwargs, after_export=write_samples)


recipes.register(recipes.Recipe(
    "casr", CASRConfig, run, layout="counterfactual", causal=False, pipeline="casr", order=10,
    own_defaults=("learning_rate",),  # an unset --learning_rate keeps the seed's 0.01
    summary="CASR: counterfactual data augmentation (heuristic, learning, ad) for a causal anchor model",
))
