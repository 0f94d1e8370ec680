"""ResNet generator (pix2pix style) for 2D or 3D: down-sampling convs, residual blocks at the
coarsest resolution, up-sampling convs. Output spatial shape = input spatial shape."""

from __future__ import annotations

import torch
from torch import nn

from cellmap_train.errors import ConfigError
from cellmap_train.models.layers import (
    check_batch, check_positive, check_spatial_dims, conv_layer, conv_transpose_layer, crop_to, norm_layer,
    pad_to_multiple,
)

PADDING_MODES = ("reflect", "replicate", "zeros")


class ResidualBlock(nn.Module):
    def __init__(self, spatial_dims: int, channels: int, norm: str, padding_mode: str, dropout: float):
        super().__init__()
        conv, bias = conv_layer(spatial_dims), norm != "batch"
        self.body = nn.Sequential(
            conv(channels, channels, 3, padding=1, padding_mode=padding_mode, bias=bias),
            norm_layer("ResNet", spatial_dims, norm, channels), nn.ReLU(inplace=True), nn.Dropout(dropout),
            conv(channels, channels, 3, padding=1, padding_mode=padding_mode, bias=bias),
            norm_layer("ResNet", spatial_dims, norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet(nn.Module):
    """`ngf` features at full resolution, doubled by each of `n_downsampling` stride-2 convs, then
    `n_blocks` residual blocks and as many transposed convs back up. Outputs logits (no tanh).

    Inputs whose size is not a multiple of 2**n_downsampling are padded and the output cropped back.
    The defaults match the challenge's `ResNet(ndims, output_nc=...)`: ngf=64, 6 blocks, 2 down-samplings,
    instance norm, reflect padding.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, ngf: int = 64,
                 n_blocks: int = 6, n_downsampling: int = 2, norm: str = "instance", padding_mode: str = "reflect",
                 dropout: float = 0.0):
        super().__init__()
        check_spatial_dims("ResNet", spatial_dims)
        check_positive("ResNet", in_channels=in_channels, out_channels=out_channels, ngf=ngf)
        if n_blocks < 0 or n_downsampling < 0:
            raise ConfigError(f"ResNet: n_blocks={n_blocks} and n_downsampling={n_downsampling} must be >= 0")
        if padding_mode not in PADDING_MODES:
            raise ConfigError(f"ResNet: padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        self.spatial_dims, self.in_channels, self.n_downsampling = spatial_dims, in_channels, n_downsampling
        conv, bias = conv_layer(spatial_dims), norm != "batch"  # batch norm's shift makes a bias redundant

        def conv_norm_relu(block: nn.Module, channels: int) -> list[nn.Module]:
            return [block, norm_layer("ResNet", spatial_dims, norm, channels), nn.ReLU(inplace=True)]

        layers = conv_norm_relu(conv(in_channels, ngf, 7, padding=3, padding_mode=padding_mode, bias=bias), ngf)
        for i in range(n_downsampling):
            width = ngf * 2**i
            layers += conv_norm_relu(conv(width, 2 * width, 3, stride=2, padding=1, padding_mode=padding_mode,
                                          bias=bias), 2 * width)
        width = ngf * 2**n_downsampling
        layers += [ResidualBlock(spatial_dims, width, norm, padding_mode, dropout) for _ in range(n_blocks)]
        for i in reversed(range(n_downsampling)):
            width = ngf * 2**i
            layers += conv_norm_relu(conv_transpose_layer(spatial_dims)(2 * width, width, 3, stride=2, padding=1,
                                                                        output_padding=1, bias=bias), width)
        layers.append(conv(ngf, out_channels, 7, padding=3, padding_mode=padding_mode))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch("ResNet", x, self.spatial_dims, self.in_channels)
        size = x.shape[2:]
        return crop_to(self.net(pad_to_multiple(x, 2**self.n_downsampling)), size)
