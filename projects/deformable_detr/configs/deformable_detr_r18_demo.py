# Deformable DETR on the synthetic demo dataset (detrex_lite.data.demo): trains from scratch and
# evaluates on a 2-core CPU in about 10 minutes. The shipped R50 model config, shrunk:
# ResNet-18 at half width (res3/res4/res5 = 64/128/256 channels), d_model 128, 3 + 3 layers,
# 4 feature levels x 4 points, 50 queries, iterative box refinement, no dropout.
#
#   python tools/train_net.py --config-file projects/deformable_detr/configs/deformable_detr_r18_demo.py
#
# projects/detr/configs/detr_r18_demo.py is the matched DETR (same backbone, width, depth,
# iterations, batch and schedule shape); docs/demo.md compares the two.
from detectron2.config import LazyCall as L

from detrex_lite.config import get_config, num_classes_from_dataset, shrink_model

from .models.deformable_detr_r50 import model

# Data, schedule (8 epochs of the 600 demo images at batch 4, lr x0.1 at 80 %) and run settings:
# the demo recipe every family's demo config shares (configs/common/demo_recipe.py).
_recipe = get_config("common/demo_recipe.py")
dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
lr_multiplier = _recipe.lr_multiplier

# The class count comes from the training set's metadata (6 shapes).
model.num_classes = L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}")

# No pretrained weights can be assumed: the whole backbone trains (freeze_at=0), from random
# initialisation. ResNet-18 at half width (stem 32); FrozenBN with its default statistics is the
# identity, so the network is a plain (normalisation-free) ResNet, as in the overfit tests.
# No dropout: a short run, regularisation only slows it down. At most 6 objects per demo image.
shrink_model(
    model, depth=18, stem_out_channels=32, freeze_at=0, num_groups=32,
    d_model=128, nhead=8, dim_feedforward=512, num_layers=3, dropout=0.0, num_queries=50,
)
model.with_box_refine = True

# From scratch the backbone gets the full lr (the 0.1x of the official recipe is for an
# ImageNet-pretrained backbone); the sampling offsets and reference points keep 0.1x.
optimizer.lr = 1e-3
optimizer.params.lr_multipliers = {"sampling_offsets": 0.1, "reference_points": 0.1}

train.output_dir = "./output/deformable_detr_r18_demo"
