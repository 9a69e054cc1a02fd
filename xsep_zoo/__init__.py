"""XSepConv model zoo for timm: `import xsep_zoo` registers the MobileNetV3-Small XSepConv family."""
from .counting import ModelCost, count_cost
from .fused import set_fused_op
from .mobilenetv3_xsep import ARCH_VARIANTS, MODEL_NAMES, MODELS, FamilyModel, XSepMobileNetV3
from .xsepconv import PaddedConv2x2, XSepConv, improved_padding_plan, padding_plan, symmetric_pad_groups

__version__ = '0.1.0'
__all__ = [
    'ARCH_VARIANTS', 'FamilyModel', 'MODELS', 'MODEL_NAMES', 'ModelCost', 'PaddedConv2x2', 'XSepConv',
    'XSepMobileNetV3', 'count_cost', 'improved_padding_plan', 'padding_plan', 'set_fused_op', 'symmetric_pad_groups',
]
