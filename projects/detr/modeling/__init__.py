from .detr import DETR
from .transformer import (
    DetrTransformer,
    DetrTransformerDecoder,
    DetrTransformerDecoderLayer,
    DetrTransformerEncoder,
    DetrTransformerEncoderLayer,
    DetrTransformerOutput,
)
