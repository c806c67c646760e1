"""Finetuning defaults that follow the original PeterRec / GRec scripts (docs/fidelity.md, PeterRec finetuning rows)."""

import numpy as np
import pytest

from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.errors import ConfigError
from peterrec.features import MASK_ID, PAD_ID, SEP_ID
from peterrec.finetuning import FinetuneConfig
from peterrec.tasks.transfer import TransferTask

SOURCES = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]


def _rows(width=6):
    ids = np.full((len(SOURCES), width), PAD_ID, np.int32)
    for row, items in enumerate(SOURCES):
        ids[row, : len(items)] = items
    return ids, np.array([len(s) for s in SOURCES], np.int32)


def _task(causal, pooling):
    backbone = NextItNetBackbone(30, 8, [1, 2], causal=causal)
    return TransferTask(backbone, num_targets=12, pooling=pooling)


def test_fineall_defaults_to_the_original_scripts_user_vectors():
    """NextitNet_TF_FineAll: the last real item's output; GRec_TF_FineAll: the mean over the source positions;
    every PeterRec mode keeps the separator(s); classes keep the mean + LayerNorm (row f11)."""
    fineall = FinetuneConfig(finetune_mode="fineall")
    assert fineall.resolved_pooling(causal=True) == "last" and fineall.resolved_pooling(causal=False) == "mean_nosep"
    assert fineall.context_slots(causal=True) == 0 and fineall.context_slots(causal=False) == 0
    for mode in ("peterrec", "finelast", "finecls", "scratch"):
        cfg = FinetuneConfig(finetune_mode=mode)
        assert cfg.resolved_pooling(True) == cfg.resolved_pooling(False) == "sep", mode
        assert (cfg.context_slots(True), cfg.context_slots(False)) == (1, 2)
    assert FinetuneConfig(finetune_mode="fineall", task="classify").resolved_pooling(True) == "mean"
    assert FinetuneConfig(finetune_mode="fineall", pooling="sep").resolved_pooling(True) == "sep"


def test_last_pooling_is_the_last_real_items_output_without_a_separator():
    task = _task(causal=True, pooling="last")
    ids, lengths = _rows()
    user = task.user_vector(ids, lengths).numpy()
    for row, items in enumerate(SOURCES):
        alone = task.backbone(np.array([items], np.int32)).numpy()[0]  # the original feeds [src] (its [src, 0] minus the label)
        np.testing.assert_allclose(user[row], alone[-1], atol=1e-5)
    assert task.context_slots == 0
    # the separator head reads another position: the SEP token appended after the items
    sep = _task(causal=True, pooling="sep")
    sep.backbone.set_weights(task.backbone.get_weights())
    with_sep = sep.backbone(np.array([SOURCES[0] + [SEP_ID]], np.int32)).numpy()[0]
    np.testing.assert_allclose(sep.user_vector(ids, lengths).numpy()[0], with_sep[-1], atol=1e-5)
    assert not np.allclose(with_sep[-1], user[0], atol=1e-3)


def test_mean_nosep_pooling_is_the_mean_over_the_source_items_alone():
    task = _task(causal=False, pooling="mean_nosep")
    ids, lengths = _rows()
    user = task.user_vector(ids, lengths).numpy()
    for row, items in enumerate(SOURCES):
        alone = task.backbone(np.array([items], np.int32)).numpy()[0]  # no [MASK] separators around the items
        np.testing.assert_allclose(user[row], alone.mean(axis=0), atol=1e-5)
    assert task.context_slots == 0
    # the non-causal separator head: [MASK, src, MASK], the outputs at both separators summed
    sep = _task(causal=False, pooling="sep")
    sep.backbone.set_weights(task.backbone.get_weights())
    framed = sep.backbone(np.array([[MASK_ID, *SOURCES[1], MASK_ID]], np.int32)).numpy()[0]
    np.testing.assert_allclose(sep.user_vector(ids, lengths).numpy()[1], framed[0] + framed[-1], atol=1e-5)


def test_no_separator_pooling_is_refused_for_finecls():
    with pytest.raises(ConfigError, match="--pooling"):
        FinetuneConfig(finetune_mode="finecls", pooling="last").validate()


def test_default_insertion_is_parallel_on_a_non_causal_backbone():
    cfg = FinetuneConfig()
    assert cfg.insertion is None and cfg.resolved_insertion(causal=True) == "serial" and cfg.resolved_insertion(causal=False) == "parallel"
    assert FinetuneConfig(insertion="serial").resolved_insertion(causal=False) == "serial"


def test_lambdafm_evaluates_on_the_full_ranking_by_default():
    assert FinetuneConfig().resolved_protocol() == "sampled"
    assert FinetuneConfig(sampler="lambdafm").resolved_protocol() == "full"
    assert FinetuneConfig(sampler="lambdafm", eval_protocol="sampled").resolved_protocol() == "sampled"
    assert FinetuneConfig(task="classify").resolved_protocol() == "full"


def test_kept_training_defaults():
    """The project's choices documented in docs/fidelity.md (rows f14, f16): Adam 1e-3, batch 64, a new order every epoch."""
    cfg = FinetuneConfig()
    assert (cfg.learning_rate, cfg.batch_size, cfg.shuffle) == (1e-3, 64, "epoch")
    with pytest.raises(ConfigError, match="--shuffle"):
        FinetuneConfig(shuffle="never").validate()
