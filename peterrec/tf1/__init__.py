"""Import a TF1 checkpoint of the original NextItNet / GRec-encoder code into peterrec.

The original code (``fajieyuan/SIGIR2020_peterrec``, TF 1.7) saves ``tf.train.Saver``
checkpoints; TF2 reads them with ``tf.train.load_checkpoint``. This module

1. rebuilds the original item vocabulary from the data CSV the model was
   trained on (:func:`read_tf1_vocabulary`: ``<UNK>`` = 0, then tokens in
   order of first appearance, the padding token ``"0"`` an ordinary entry);
2. maps those ids onto peterrec's ids explicitly (:class:`IdMapping`);
3. inspects the checkpoint (:func:`inspect_checkpoint`: channel width,
   kernel size, dilations, vocabulary size and head read from the variable
   names and shapes; optimizer slots skipped);
4. builds a :class:`~peterrec.tasks.next_item.NextItemTask` and assigns every
   Keras weight from exactly one checkpoint tensor, refusing a checkpoint with
   tensors it would not use (:func:`import_checkpoint`);
5. writes a normal export directory (:func:`export_tf1_checkpoint`).

The steps live in :mod:`peterrec.tf1.vocab` (1, 2), :mod:`peterrec.tf1.checkpoint` (3, and
:func:`backbone_evidence`) and :mod:`peterrec.tf1.importer` (4, 5); this package exports their
public names. See ``docs/tf1_import.md`` for the id mapping and the variable map.

Example (Python; the CLI is ``python -m pipelines.import_tf1``)::

    result = import_checkpoint("Models/model_nextitnet_transfer_pretrain.ckpt",
                               "Session/history_sequences_20181014_fajie_transfer_pretrain_small.csv",
                               "nextitnet")
    ids = result.mapping.encode_tf1_ids(tf1_ids)         # original ids -> peterrec ids
    logits = result.task.logits(result.task(ids))        # scores over peterrec ids
    result.mapping.logits_to_tf1(logits)                  # ... in the original's column order
"""

from peterrec.tf1.checkpoint import (
    CheckpointError,
    TF1Checkpoint,
    backbone_evidence,
    inspect_checkpoint,
    is_optimizer_variable,
    resolve_checkpoint,
)
from peterrec.tf1.importer import BACKBONES, ImportResult, check_backbone, export_tf1_checkpoint, import_checkpoint
from peterrec.tf1.vocab import IdMapping, TF1Vocabulary, build_id_mapping, read_tf1_vocabulary

__all__ = [
    "BACKBONES",
    "CheckpointError",
    "IdMapping",
    "ImportResult",
    "TF1Checkpoint",
    "TF1Vocabulary",
    "backbone_evidence",
    "build_id_mapping",
    "check_backbone",
    "export_tf1_checkpoint",
    "import_checkpoint",
    "inspect_checkpoint",
    "is_optimizer_variable",
    "read_tf1_vocabulary",
    "resolve_checkpoint",
]
