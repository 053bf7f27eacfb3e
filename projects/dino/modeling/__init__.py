from .denoising import (
    DenoisingQueries,
    build_denoising_queries,
    denoising_attention_mask,
    denoising_indices,
    noise_boxes,
    noise_labels,
    num_denoising_groups,
)
from .dino import DINO
from .dino_criterion import DINOCriterion
from .dino_transformer import DINODecoderLayer, DINOTransformer, DINOTransformerDecoder, DINOTransformerOutput, box_sine_embed
