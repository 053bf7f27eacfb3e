# The Deformable DETR demo (deformable_detr_r18_demo.py) trained on the first 100 of its 600
# training images, with the same budget (1200 iterations at batch 4, i.e. 48 epochs of the
# subset) and the same evaluation on the 100 val images: the small-data regime of docs/dino.md.
#
#   python tools/train_net.py --config-file projects/deformable_detr/configs/deformable_detr_r18_demo_100img.py
from detectron2.config import LazyCall as L

from detrex_lite.data import first_dataset_dicts

from .deformable_detr_r18_demo import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.dataset = L(first_dataset_dicts)(names="detrex_demo_train", num_images=100)
train.output_dir = "./output/deformable_detr_r18_demo_100img"
