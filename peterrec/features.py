"""Reserved ids, batch keys and record roles shared by every part of peterrec.

This module imports nothing from peterrec: it is the contract between the data
path, the models, the evaluation code and the exports.

Reserved ids (the original PeterRec code overloads id 0 for unknown, separator
and mask; peterrec gives each role its own id):

==========  ==  ==========================================================
``PAD_ID``   0  padding; never a prediction target, excluded from ranking
``OOV_ID``   1  an item not in the vocabulary
``MASK_ID``  2  the [MASK] token of cloze (GRec) pretraining
``SEP_ID``   3  the separator / [CLS] token appended for finetuning
==========  ==  ==========================================================

Real items start at ``NUM_RESERVED``.
"""

PAD_ID = 0
OOV_ID = 1
MASK_ID = 2
SEP_ID = 3
NUM_RESERVED = 4
RESERVED_TOKENS = ("[PAD]", "[OOV]", "[MASK]", "[SEP]")
RESERVED_IDS = {"pad": PAD_ID, "oov": OOV_ID, "mask": MASK_ID, "sep": SEP_ID}

# The string that means "no item" in the serving signature's input.
SERVING_PAD = ""

# Role of a user record in a TFRecord set (which evaluation views it feeds).
ROLE_LOO = 0  # leave-one-out user: train on items[:-2], validate items[-2], test items[-1]
ROLE_TRAIN = 1  # random split: training user, every item is a training target
ROLE_VALID = 2  # random split: validation user, predict items[-1] from items[:-1]
ROLE_TEST = 3  # random split: test user, predict items[-1] from items[:-1]
ROLE_NAMES = {ROLE_LOO: "loo", ROLE_TRAIN: "train", ROLE_VALID: "valid", ROLE_TEST: "test"}

# Keys of the batches the input pipeline produces.
ITEM_IDS = "item_ids"  # int32 [batch, length], right-padded with PAD_ID
LABELS = "labels"  # int32 [batch, length] (next item per position) or [batch] (one target)
SAMPLE_WEIGHT = "sample_weight"  # float32, same shape as LABELS; 0 where no loss
LENGTHS = "lengths"  # int32 [batch], number of real items in ITEM_IDS
USER_INDEX = "user_index"  # int32 [batch], the user's row in a per-user table (Caser)
