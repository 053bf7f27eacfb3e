from .level_layout import LevelLayout
from .mlp import MLP
from .ms_deform_attn_function import ms_deform_attn, ms_deform_attn_pytorch
from .multi_scale_deform_attn import MultiScaleDeformableAttention, attention_backend
from .position_embedding import PositionEmbeddingSine, with_pos_embed
