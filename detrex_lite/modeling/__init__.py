from .backbone import build_resnet, resnet_output_shape
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .meta_arch import DETRBase, gather_queries, select_topk
from .neck import ChannelMapper
