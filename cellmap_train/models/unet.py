"""U-Net for 2D or 3D (`spatial_dims`), output spatial shape = input spatial shape."""

from __future__ import annotations

import torch
from torch import nn

from cellmap_train.models.layers import (
    DoubleConv, check_batch, check_positive, check_spatial_dims, conv_layer, conv_transpose_layer, crop_to,
    pad_to_multiple, upsample_mode,
)


class UNet(nn.Module):
    """Classic U-Net: `depth` poolings, features doubling from `base_features` at each level.

    Inputs whose size is not a multiple of 2**depth are padded and the output cropped back.
    `upsample`: "transpose" (learned) or "trilinear"/"bilinear"/"nearest" (fixed, then a 1x1 conv).
    With the defaults (base_features=64, depth=4) it has the layout of the challenge's UNet_2D / UNet_3D.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, base_features: int = 64,
                 depth: int = 4, upsample: str = "transpose"):
        super().__init__()
        check_spatial_dims("UNet", spatial_dims)
        check_positive("UNet", in_channels=in_channels, out_channels=out_channels, base_features=base_features,
                       depth=depth)
        self.spatial_dims, self.in_channels, self.depth = spatial_dims, in_channels, depth
        conv = conv_layer(spatial_dims)
        widths = [base_features * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(spatial_dims, in_channels, widths[0])])
        self.down.extend(DoubleConv(spatial_dims, widths[i], widths[i + 1]) for i in range(depth))
        self.pool = (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in reversed(range(depth)):
            if upsample == "transpose":
                self.up.append(conv_transpose_layer(spatial_dims)(widths[i + 1], widths[i], 2, stride=2))
            else:
                mode = upsample_mode("UNet", spatial_dims, upsample)
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), conv(widths[i + 1], widths[i], 1)))
            self.merge.append(DoubleConv(spatial_dims, 2 * widths[i], widths[i]))
        self.head = conv(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch("UNet", x, self.spatial_dims, self.in_channels)
        size = x.shape[2:]
        x = pad_to_multiple(x, 2**self.depth)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return crop_to(self.head(x), size)
