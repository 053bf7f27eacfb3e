from .backbone import build_resnet
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .meta_arch import DETRBase, select_topk
from .neck import ChannelMapper
