"""Name -> class tables used by the pipelines and by export loading.

Importing this module registers every serialisable peterrec class with Keras.
"""

from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.layers.dilated_block import DilatedResidualBlock
from peterrec.layers.model_patch import ModelPatch
from peterrec.layers.position import ConcatPositionEmbedding
from peterrec.tasks.masked_item import MaskedItemTask
from peterrec.tasks.next_item import NextItemTask
from peterrec.tasks.transfer import TransferTask

BACKBONES = {"nextitnet": NextItNetBackbone, "grec": NextItNetBackbone}
TASKS = {"transfer": TransferTask, "next_item": NextItemTask, "masked_item": MaskedItemTask}
LAYERS = {"concat_position_embedding": ConcatPositionEmbedding, "dilated_residual_block": DilatedResidualBlock, "model_patch": ModelPatch}
