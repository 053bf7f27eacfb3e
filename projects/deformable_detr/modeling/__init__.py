from .deformable_detr import DeformableDETR
from .deformable_layers import (
    DeformableTransformerDecoder,
    DeformableTransformerDecoderLayer,
    DeformableTransformerEncoder,
    DeformableTransformerEncoderLayer,
    inverse_sigmoid,
)
from .deformable_transformer import DeformableTransformer, TransformerOutput
