from .backbone import build_resnet
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .meta_arch import DETRBase, gather_queries, select_topk
from .neck import ChannelMapper
