"""Name -> class tables used by the pipelines and by export loading.

Importing this module registers every serialisable peterrec class with Keras.
"""

from peterrec.backbones.nextitnet import NextItNetBackbone
from peterrec.layers.dilated_block import DilatedResidualBlock
from peterrec.layers.model_patch import ModelPatch
from peterrec.layers.position import ConcatPositionEmbedding
from peterrec.models.gru4rec import GRU4RecBackbone
from peterrec.models.narm import NARMAttention, NARMBackbone
from peterrec.models.sasrec import PositionEmbedding, SASRecBackbone, SASRecBlock
from peterrec.models.stamp import STAMPAttention, STAMPBackbone
from peterrec.tasks.atrank import ATRankTask  # noqa: F401  (registers ATRank for export loading)
from peterrec.tasks.caser import CaserTask  # noqa: F401  (registers CaserTask and Caser for export loading)
from peterrec.tasks.miir import MIIRTask  # noqa: F401  (registers MIIR for export loading)
from peterrec.tasks.masked_item import MaskedItemTask
from peterrec.tasks.next_item import NextItemTask
from peterrec.tasks.transfer import TransferTask

BACKBONES = {
    "nextitnet": NextItNetBackbone,
    "grec": NextItNetBackbone,
    "sasrec": SASRecBackbone,
    "narm": NARMBackbone,
    "stamp": STAMPBackbone,
    "gru4rec": GRU4RecBackbone,
}
TASKS = {"transfer": TransferTask, "next_item": NextItemTask, "masked_item": MaskedItemTask}
LAYERS = {
    "concat_position_embedding": ConcatPositionEmbedding,
    "dilated_residual_block": DilatedResidualBlock,
    "model_patch": ModelPatch,
    "position_embedding": PositionEmbedding,
    "sasrec_block": SASRecBlock,
    "narm_attention": NARMAttention,
    "stamp_attention": STAMPAttention,
}
