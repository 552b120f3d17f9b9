"""Deployment preparation of the PyTorch model before export."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every BatchNorm that directly follows a convolution
    (as an attribute pair ``conv``/``bn`` or inside an ``nn.Sequential``) is folded into
    that convolution's weights and bias. Inference only: the result computes the same
    function up to float rounding with one operator less per pair, and the compiled
    network has no separate normalization passes over the feature maps."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(getattr(module, "conv", None), nn.Conv2d) and isinstance(getattr(module, "bn", None),
                                                                               nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return model


def batchnorm_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())



