"""PP-MobileSeg (Tang et al., 2023) in PyTorch, ported from PaddleSeg 2.8.

The network is StrideFormer (MobileNetV3 stacks with strided Sea attention on the
last two stages), an Aggregated Attention Module (AAM) that fuses the 1/8, 1/16 and
1/32 features, and a light segmentation head. Module and attribute names follow
PaddleSeg's so that an official ``.pdparams`` maps onto this model by a handful of
renaming rules (see ``model/weights.py``).

This is an inference port: stochastic depth (drop path) and dropout, which do
nothing in eval mode, are left out, so ``train()`` does not reproduce PaddleSeg's
training regime.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.random_init import random_tensor
from model.upsample import OUTPUT_MODES, OutputMode, segment_logits

Activation = Literal["relu", "hardswish"]


@dataclass(frozen=True)
class MV3Unit:
    """One MobileNetV3 residual unit: kernel, expanded channels, output channels,
    squeeze-excitation, activation, stride (PaddleSeg's ``[k, exp, c, se, act, s]``)."""

    kernel: int
    expand: int
    out: int
    se: bool
    act: Activation
    stride: int


@dataclass(frozen=True)
class StrideFormerConfig:
    stages: tuple[tuple[MV3Unit, ...], ...]
    channels: tuple[int, ...]  # input channels of each stage, then the last stage's output
    embed_dims: tuple[int, int]  # channels entering the two attention stages
    depths: tuple[int, int]  # Sea attention blocks on stages 3 and 4 (M, N)
    num_heads: int
    key_dims: tuple[int, int] = (16, 24)
    attn_ratio: int = 2
    mlp_ratios: tuple[int, int] = (2, 4)
    aam: Literal["AAM", "AAMSx8"] = "AAM"
    aam_in_channels: tuple[int, int, int] = (32, 64, 128)
    aam_out_channels: int = 256


@dataclass(frozen=True)
class PPMobileSegConfig:
    name: str
    backbone: StrideFormerConfig
    num_classes: int = 150
    head_use_dw: bool = True
    # ImageNet statistics on RGB in [0, 1], as in PaddleSeg's ADE20K configs.
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _u(k: int, e: int, c: int, se: bool, act: Activation, s: int) -> MV3Unit:
    return MV3Unit(k, e, c, se, act, s)


# The two ADE20K variants of PaddleSeg 2.8 (MobileSeg_Tiny / MobileSeg_Base).
TINY = PPMobileSegConfig(
    name="tiny",
    backbone=StrideFormerConfig(
        stages=(
            (_u(3, 16, 16, True, "relu", 1), _u(3, 64, 32, False, "relu", 2), _u(3, 48, 24, False, "relu", 1)),
            (_u(5, 96, 32, True, "hardswish", 2), _u(5, 96, 32, True, "hardswish", 1)),
            (_u(5, 160, 64, True, "hardswish", 2), _u(5, 160, 64, True, "hardswish", 1)),
            (_u(3, 384, 128, True, "hardswish", 2), _u(3, 384, 128, True, "hardswish", 1)),
        ),
        channels=(16, 24, 32, 64, 128),
        embed_dims=(64, 128),
        depths=(2, 2),
        num_heads=4,
        aam="AAM",
        aam_in_channels=(32, 64, 128),
    ),
)

BASE = PPMobileSegConfig(
    name="base",
    backbone=StrideFormerConfig(
        stages=(
            (_u(3, 16, 16, True, "relu", 1), _u(3, 64, 32, False, "relu", 2), _u(3, 96, 32, False, "relu", 1)),
            (_u(5, 128, 64, True, "hardswish", 2), _u(5, 240, 64, True, "hardswish", 1)),
            (_u(5, 384, 128, True, "hardswish", 2), _u(5, 384, 128, True, "hardswish", 1)),
            (_u(5, 768, 192, True, "hardswish", 2), _u(5, 768, 192, True, "hardswish", 1)),
        ),
        channels=(16, 32, 64, 128, 192),
        embed_dims=(128, 192),
        depths=(3, 3),
        num_heads=8,
        aam="AAMSx8",
        aam_in_channels=(64, 128, 192),
    ),
)

VARIANTS: dict[str, PPMobileSegConfig] = {c.name: c for c in (TINY, BASE)}


def get_config(name: str, num_classes: int | None = None) -> PPMobileSegConfig:
    """The named variant's config, optionally with another class count."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(VARIANTS)}")
    cfg = VARIANTS[name]
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        cfg = replace(cfg, num_classes=num_classes)
    return cfg


# ---------------------------------------------------------------- building blocks

# PaddleSeg's BatchNorm layers all use epsilon 1e-5 and momentum 0.9 (PyTorch 0.1).
def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


def _act(name: Activation | None) -> nn.Module:
    return {"relu": nn.ReLU, "hardswish": nn.Hardswish, None: nn.Identity}[name]()


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet channel rounding (to a multiple of ``divisor``, never below 90%)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBN(nn.Module):
    """Bias-free convolution, BatchNorm, optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1,
                 groups: int = 1, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        self.bn = _bn(cout)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE with PaddleSeg's hard sigmoid: clip(0.2 x + 0.5, 0, 1)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // reduction, 1)
        self.conv2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv2(F.relu(self.conv1(x.mean((2, 3), keepdim=True))))
        return x * (0.2 * s + 0.5).clamp(0.0, 1.0)


class ResidualUnit(nn.Module):
    """MobileNetV3 inverted residual: 1x1 expand, depthwise kxk, SE, 1x1 project."""

    def __init__(self, cin: int, unit: MV3Unit) -> None:
        super().__init__()
        mid, out = make_divisible(unit.expand), make_divisible(unit.out)
        self.use_shortcut = unit.stride == 1 and cin == out
        self.expand_conv = ConvBN(cin, mid, 1, act=_act(unit.act))
        self.bottleneck_conv = ConvBN(mid, mid, unit.kernel, unit.stride, groups=mid, act=_act(unit.act))
        self.mid_se = SqueezeExcite(mid) if unit.se else nn.Identity()
        self.linear_conv = ConvBN(mid, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear_conv(self.mid_se(self.bottleneck_conv(self.expand_conv(x))))
        return x + y if self.use_shortcut else y


class StackedMV3Block(nn.Module):
    """One StrideFormer stage of MobileNetV3 units; the first stage has the stem."""

    def __init__(self, units: tuple[MV3Unit, ...], cin: int, stem: bool) -> None:
        super().__init__()
        cin = make_divisible(cin)
        self.conv = ConvBN(3, cin, 3, 2, act=nn.Hardswish()) if stem else nn.Identity()
        blocks = []
        for unit in units:
            blocks.append(ResidualUnit(cin, unit))
            cin = make_divisible(unit.out)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv(x))


class AxialPositionalEmbedding(nn.Module):
    """A learned [1, dim, 16] embedding, linearly resized to the axis length."""

    def __init__(self, dim: int, length: int = 16) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, dim, length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, dim, N]
        return x + F.interpolate(self.pos_embed, size=x.shape[-1], mode="linear", align_corners=False)


class SeaAttention(nn.Module):
    """Squeeze-enhanced axial attention, computed at half resolution when strided.

    Queries and keys are averaged along rows and along columns; the two axial
    attentions are broadcast back to the full map, added to V and gate a detail
    branch (depthwise 3x3 over q, k, v) through a hard sigmoid.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: int, strided: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        nh_kd = key_dim * num_heads
        self.dh = attn_ratio * key_dim * num_heads
        self.strided = strided
        self.to_q = ConvBN(dim, nh_kd)
        self.to_k = ConvBN(dim, nh_kd)
        self.to_v = ConvBN(dim, self.dh)
        if strided:
            self.stride_conv = nn.Sequential(nn.Conv2d(dim, dim, 3, 2, 1, groups=dim), _bn(dim))
        self.proj = nn.Sequential(nn.ReLU6(), ConvBN(self.dh, dim))
        self.proj_encode_row = nn.Sequential(nn.ReLU6(), ConvBN(self.dh, self.dh))
        self.pos_emb_rowq = AxialPositionalEmbedding(nh_kd)
        self.pos_emb_rowk = AxialPositionalEmbedding(nh_kd)
        self.proj_encode_column = nn.Sequential(nn.ReLU6(), ConvBN(self.dh, self.dh))
        self.pos_emb_columnq = AxialPositionalEmbedding(nh_kd)
        self.pos_emb_columnk = AxialPositionalEmbedding(nh_kd)
        self.dwconv = ConvBN(2 * self.dh, 2 * self.dh, 3, groups=2 * self.dh, act=nn.ReLU6())
        self.pwconv = ConvBN(2 * self.dh, dim)

    def _axial(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               pos_q: nn.Module, pos_k: nn.Module) -> torch.Tensor:
        """Attention along one axis of squeezed [B, C, N] tensors; returns [B, dh, N]."""
        b, _, n = q.shape
        q = pos_q(q).reshape(b, self.num_heads, -1, n).transpose(2, 3)
        k = pos_k(k).reshape(b, self.num_heads, -1, n)
        v = v.reshape(b, self.num_heads, -1, n).transpose(2, 3)
        attn = torch.softmax(torch.matmul(q, k) * self.scale, dim=-1)
        return torch.matmul(attn, v).transpose(2, 3).reshape(b, self.dh, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.strided:
            x = self.stride_conv(x)
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        detail = self.pwconv(self.dwconv(torch.cat([q, k, v], dim=1)))

        row = self._axial(q.mean(-1), k.mean(-1), v.mean(-1), self.pos_emb_rowq, self.pos_emb_rowk)
        col = self._axial(q.mean(-2), k.mean(-2), v.mean(-2), self.pos_emb_columnq, self.pos_emb_columnk)
        row = self.proj_encode_row(row.unsqueeze(-1))  # [B, dh, H, 1]
        col = self.proj_encode_column(col.unsqueeze(-2))  # [B, dh, 1, W]
        gate = self.proj(v + (row + col))  # PaddleSeg's summation order
        out = F.relu6(gate + 3.0) / 6.0 * detail
        if self.strided:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = ConvBN(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu6(self.dwconv(self.fc1(x))))


class SeaBlock(nn.Module):
    def __init__(self, dim: int, key_dim: int, num_heads: int, mlp_ratio: int, attn_ratio: int) -> None:
        super().__init__()
        self.attn = SeaAttention(dim, key_dim, num_heads, attn_ratio, strided=True)
        self.mlp = MLP(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class SeaStage(nn.Module):
    def __init__(self, depth: int, **block_args: int) -> None:
        super().__init__()
        self.transformer_blocks = nn.Sequential(*(SeaBlock(**block_args) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer_blocks(x)


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class AAM(nn.Module):
    """Aggregated Attention Module of the Tiny model, at 1/16 resolution:
    ``act(e8) * act(e16) * act(e32) * (f8 + f16) + f32``."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        self.embedding_list = nn.ModuleList(ConvBN(c, out_channels) for c in in_channels)
        self.act_embedding_list = nn.ModuleList(ConvBN(c, out_channels) for c in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x8, x16, x32 = feats
        # PaddleSeg halves x8 by a scale factor (coordinates scale by exactly 2),
        # then brings the others to that size.
        x8 = F.interpolate(x8, scale_factor=0.5, mode="bilinear", align_corners=False)
        size = x8.shape[-2:]
        x16 = _resize(x16, size)
        emb, act = self.embedding_list, self.act_embedding_list
        gate = F.relu6(act[0](x8)) * F.relu6(act[1](x16)) * _resize(F.relu6(act[2](x32)), size)
        return gate * (emb[0](x8) + emb[1](x16)) + _resize(emb[2](x32), size)


class AAMSx8(nn.Module):
    """The Base model's simplified AAM, at 1/8 resolution:
    ``act(e16) * act(e32) * f8 + f32``."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        self.embedding_list = nn.ModuleList(ConvBN(c, out_channels) for c in (in_channels[0], in_channels[2]))
        self.act_embedding_list = nn.ModuleList(ConvBN(c, out_channels) for c in in_channels[1:])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x8, x16, x32 = feats
        f8 = self.embedding_list[0](x8)
        size = f8.shape[-2:]
        act = self.act_embedding_list
        gate = F.relu6(act[0](_resize(x16, size))) * _resize(F.relu6(act[1](x32)), size)
        return gate * f8 + _resize(self.embedding_list[1](x32), size)


AAM_TYPES: dict[str, type[nn.Module]] = {"AAM": AAM, "AAMSx8": AAMSx8}


class StrideFormer(nn.Module):
    """Backbone: four MobileNetV3 stages (``smb1``..``smb4``), Sea attention after
    stages 3 and 4 (``trans1``, ``trans2``), and the AAM (``inj_module``)."""

    def __init__(self, cfg: StrideFormerConfig) -> None:
        super().__init__()
        for i, units in enumerate(cfg.stages):
            setattr(self, f"smb{i + 1}", StackedMV3Block(units, cfg.channels[i], stem=i == 0))
        for i in range(2):
            setattr(self, f"trans{i + 1}", SeaStage(
                cfg.depths[i], dim=cfg.embed_dims[i], key_dim=cfg.key_dims[i], num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_ratios[i], attn_ratio=cfg.attn_ratio))
        self.inj_module = AAM_TYPES[cfg.aam](cfg.aam_in_channels, cfg.aam_out_channels)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 1/8, 1/16 and 1/32 feature maps that the AAM fuses."""
        x8 = self.smb2(self.smb1(x))
        x16 = self.trans1(self.smb3(x8))
        x32 = self.trans2(self.smb4(x16))
        return [x8, x16, x32]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inj_module(self.features(x))


class SegHead(nn.Module):
    """Depthwise 1x1 ConvBN + ReLU, then a 1x1 classifier (dropout is a no-op in eval)."""

    def __init__(self, channels: int, num_classes: int, use_dw: bool) -> None:
        super().__init__()
        self.linear_fuse = ConvBN(channels, channels, groups=channels if use_dw else 1, act=nn.ReLU())
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.linear_fuse(x))


class PPMobileSeg(nn.Module):
    """PP-MobileSeg. ``output`` picks what ``forward`` returns:

    - ``logits``: low-resolution logits ``[B, C, h, w]`` (what the compiler consumes);
    - ``interpolate``: bilinear upsample of all C channels to the input size, argmax;
    - ``vim``: the Valid Interpolate Module (only classes present at low resolution
      are upsampled); below 30 classes it falls back to ``interpolate``.
    The two label modes return ``int32`` maps ``[B, H, W]``.
    """

    def __init__(self, cfg: PPMobileSegConfig, output: OutputMode = "logits") -> None:
        super().__init__()
        if output not in OUTPUT_MODES:
            raise ValueError(f"unknown output mode {output!r}; choose one of {', '.join(OUTPUT_MODES)}")
        self.cfg = cfg
        self.output = output
        self.backbone = StrideFormer(cfg.backbone)
        self.decode_head = SegHead(cfg.backbone.aam_out_channels, cfg.num_classes, cfg.head_use_dw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.backbone(x))
        return segment_logits(logits, x.shape[-2:], self.output)


def build_model(name: str, num_classes: int | None = None, output: OutputMode = "logits",
                seed: int = 0) -> PPMobileSeg:
    """The named variant in eval mode, with a fixed random initialization (every
    tensor random, see ``model/random_init.py``)."""
    model = PPMobileSeg(get_config(name, num_classes), output)
    rng = np.random.default_rng(seed)
    state = {k: v if k.endswith("num_batches_tracked") else torch.from_numpy(random_tensor(k, tuple(v.shape), rng))
             for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model.eval()
