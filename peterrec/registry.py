"""Name -> class tables used by the pipelines and by export loading.

Importing this module registers every serialisable peterrec class with Keras.
"""

from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.layers.dilated_block import DilatedResidualBlock
from peterrec.layers.model_patch import ModelPatch
from peterrec.tasks.next_item import NextItemTask

BACKBONES = {"nextitnet": NextItNetBackbone}
TASKS = {"next_item": NextItemTask}
LAYERS = {"dilated_residual_block": DilatedResidualBlock, "model_patch": ModelPatch}
