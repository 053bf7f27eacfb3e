# Ablation for the demo comparison (docs/demo.md): the Deformable DETR demo with DETR's input,
# one stride-32 feature map (res5), so that it differs from the DETR demo only in the attention
# (deformable vs dense), the focal-loss classifier and the box refinement.
#
#   python tools/train_net.py --config-file benchmarks/demo_comparison/deformable_detr_r18_single_scale_demo.py
import os

from detectron2.config import LazyConfig

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_base = LazyConfig.load(os.path.join(_REPO, "projects/deformable_detr/configs/deformable_detr_r18_demo.py"))
model, dataloader, optimizer, lr_multiplier, train = (
    _base.model, _base.dataloader, _base.optimizer, _base.lr_multiplier, _base.train
)

model.backbone.out_features = ["res5"]  # the neck follows (its in_features and input_shapes)
model.transformer.num_feature_levels = 1

train.output_dir = "./output/deformable_detr_r18_single_scale_demo"
