from .deformable_detr import DeformableDETR
from .deformable_layers import (
    DecoderOutput,
    DeformableTransformerDecoder,
    DeformableTransformerDecoderLayer,
    DeformableTransformerEncoder,
    DeformableTransformerEncoderLayer,
    box_from_delta,
    inverse_sigmoid,
)
from .deformable_transformer import DeformableTransformer, TransformerOutput
