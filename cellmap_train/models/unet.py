"""U-Net for 2D or 3D (`spatial_dims`), output spatial shape = input spatial shape."""

from __future__ import annotations

import torch
from torch import nn


def conv_layer(spatial_dims: int):
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def norm_layer(spatial_dims: int):
    return nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d


class DoubleConv(nn.Sequential):
    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int):
        conv, norm = conv_layer(spatial_dims), norm_layer(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Classic U-Net: `depth` poolings, features doubling from `base_features` at each level.

    Inputs whose size is not a multiple of 2**depth are padded and the output cropped back.
    `upsample`: "transpose" (learned) or "trilinear"/"bilinear"/"nearest" (fixed, then a 1x1 conv).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, base_features: int = 64,
                 depth: int = 4, upsample: str = "transpose"):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"UNet spatial_dims must be 2 or 3, got {spatial_dims}")
        if depth < 1 or base_features < 1:
            raise ValueError(f"UNet depth and base_features must be >= 1, got {depth}, {base_features}")
        self.spatial_dims, self.depth = spatial_dims, depth
        conv = conv_layer(spatial_dims)
        widths = [base_features * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(spatial_dims, in_channels, widths[0])])
        self.down.extend(DoubleConv(spatial_dims, widths[i], widths[i + 1]) for i in range(depth))
        self.pool = (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in reversed(range(depth)):
            if upsample == "transpose":
                deconv = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
                self.up.append(deconv(widths[i + 1], widths[i], 2, stride=2))
            elif upsample in ("trilinear", "bilinear", "nearest"):
                mode = upsample if upsample == "nearest" else ("bilinear" if spatial_dims == 2 else "trilinear")
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), conv(widths[i + 1], widths[i], 1)))
            else:
                raise ValueError(f"UNet upsample must be transpose, trilinear, bilinear or nearest, got {upsample!r}")
            self.merge.append(DoubleConv(spatial_dims, 2 * widths[i], widths[i]))
        self.head = conv(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        multiple = 2**self.depth
        pad = [(-s) % multiple for s in size]
        if any(pad):  # F.pad lists the last axis first
            x = nn.functional.pad(x, [p for axis in reversed(pad) for p in (0, axis)])
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        x = self.head(x)
        return x[(..., *[slice(0, s) for s in size])]
