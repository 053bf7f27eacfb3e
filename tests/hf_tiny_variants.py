"""What the Hugging Face conversion tests share: the tiny HF ResNet backbone and the Deformable
DETR variants (the keyword arguments of DeformableDetrConfig that select each one)."""

# transformers.ResNetConfig keywords: a bottleneck ResNet with one block per stage, narrow.
BACKBONE = dict(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="bottleneck")

DEFORMABLE_VARIANTS = {
    "multi_scale": dict(),
    "single_scale": dict(num_feature_levels=1),
    "box_refine": dict(with_box_refine=True),
    "two_stage": dict(with_box_refine=True, two_stage=True),
}
