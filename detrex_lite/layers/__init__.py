from .mlp import MLP
from .ms_deform_attn_function import ms_deform_attn, ms_deform_attn_pytorch
from .multi_scale_deform_attn import MultiScaleDeformableAttention
from .position_embedding import PositionEmbeddingSine, with_pos_embed
