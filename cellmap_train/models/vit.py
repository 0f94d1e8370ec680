"""ViT-V-Net-like network for 2D or 3D: a conv encoder, patch embedding, a transformer encoder over
the patch grid, and a conv decoder that climbs back to full resolution through the encoder's skips."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cellmap_train.errors import ConfigError
from cellmap_train.models.layers import (
    DoubleConv, check_batch, check_positive, check_spatial_dims, conv_layer, norm_layer, upsample_mode,
)


def infer_spatial_dims(img_size: Sequence[int]) -> int:
    """[1,H,W] or [H,W] trains 2D (the data layer squeezes z), [D,H,W] trains 3D."""
    return 2 if len(img_size) == 2 or int(img_size[0]) == 1 else 3


def patch_grid(img_size: Sequence[int], spatial_dims: int, patch_size: int) -> list[int]:
    """Validate the sample shape against the patch size; return the token grid (one size per axis)."""
    shape = [int(s) for s in img_size]
    if spatial_dims == 2 and len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]  # [1,H,W]: the data layer hands a 2D model N,C,H,W batches
    if spatial_dims == 3 and len(shape) == 3 and shape[0] == 1:
        raise ConfigError(f"vitnet: input shape {shape} is a 2D slice but spatial_dims=3; use a [D,H,W] shape "
                          f"(e.g. input_array_info.shape=[128,128,128]) or model.spatial_dims=2")
    if len(shape) != spatial_dims:
        raise ConfigError(f"vitnet: input shape {list(img_size)} does not fit spatial_dims={spatial_dims}")
    remainders = [s % patch_size for s in shape]
    if any(remainders) or min(shape) < 1:
        raise ConfigError(f"vitnet: input shape {list(img_size)} must be divisible by the patch grid "
                          f"(patch_size={patch_size} in every axis; remainders {remainders}): "
                          f"change input_array_info.shape or model.patch_size")
    return [s // patch_size for s in shape]


class ViTVNet(nn.Module):
    """Encoder: log2(patch_size) conv levels (`base_features` doubling per level, each a skip), then
    a stride-2 conv embeds each patch into `embed_dim` features; learned position embeddings and a
    `depth`-layer pre-norm transformer (`num_heads` heads, `mlp_dim` hidden) mix the patch tokens;
    the decoder up-samples x2 per level, concatenating the matching skip.

    `img_size` is the training sample shape (input_array_info.shape): it sizes the position
    embeddings and is checked here, at config time; `spatial_dims=None` takes 2D or 3D from it. Other shapes divisible by `patch_size` also
    run (the position embeddings are interpolated). Defaults follow the challenge's ViT-V-Net:
    patches 8, 252 features, 12 layers, 12 heads, MLP 3072, encoder from 16 features.
    """

    def __init__(self, spatial_dims: int | None = None, in_channels: int = 1, out_channels: int = 1,
                 img_size: Sequence[int] = (128, 128, 128), patch_size: int = 8, embed_dim: int = 252,
                 depth: int = 12, num_heads: int = 12, mlp_dim: int = 3072, base_features: int = 16,
                 dropout: float = 0.0, upsample: str = "trilinear"):
        super().__init__()
        spatial_dims = infer_spatial_dims(img_size) if spatial_dims is None else spatial_dims
        check_spatial_dims("vitnet", spatial_dims)
        check_positive("vitnet", in_channels=in_channels, out_channels=out_channels, embed_dim=embed_dim, depth=depth,
                       num_heads=num_heads, mlp_dim=mlp_dim, base_features=base_features)
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ConfigError(f"vitnet: patch_size must be a power of two >= 2 (the decoder doubles per level), "
                              f"got {patch_size}")
        if embed_dim % num_heads:
            raise ConfigError(f"vitnet: embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.grid = patch_grid(img_size, spatial_dims, patch_size)
        self.spatial_dims, self.in_channels, self.patch_size = spatial_dims, in_channels, patch_size
        levels = int(math.log2(patch_size))
        widths = [base_features * 2**i for i in range(levels + 1)]
        conv = conv_layer(spatial_dims)

        self.encoder = nn.ModuleList([DoubleConv(spatial_dims, in_channels, widths[0])])
        self.encoder.extend(DoubleConv(spatial_dims, widths[i - 1], widths[i]) for i in range(1, levels))
        self.pool = (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(2)
        self.patch_embed = conv(widths[levels - 1], embed_dim, 2, stride=2)
        self.position = nn.Parameter(torch.zeros(1, math.prod(self.grid), embed_dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, mlp_dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(embed_dim),
                                                 enable_nested_tensor=False)
        self.bridge = nn.Sequential(conv(embed_dim, widths[levels], 3, padding=1, bias=False),
                                    norm_layer("vitnet", spatial_dims, "batch", widths[levels]), nn.ReLU(inplace=True))
        self.up = nn.Upsample(scale_factor=2, mode=upsample_mode("vitnet", spatial_dims, upsample))
        self.decoder = nn.ModuleList(DoubleConv(spatial_dims, widths[i + 1] + widths[i], widths[i])
                                     for i in reversed(range(levels)))
        self.head = conv(widths[0], out_channels, 1)

    def position_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        if list(grid) == self.grid:
            return self.position
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        table = self.position.transpose(1, 2).reshape(1, -1, *self.grid)
        return nn.functional.interpolate(table, size=tuple(grid), mode=mode).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch("vitnet", x, self.spatial_dims, self.in_channels)
        if any(s % self.patch_size for s in x.shape[2:]):
            raise ConfigError(f"vitnet: batch spatial shape {list(x.shape[2:])} is not divisible by "
                              f"patch_size={self.patch_size}")
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = self.patch_embed(x)
        grid = x.shape[2:]
        tokens = self.transformer(x.flatten(2).transpose(1, 2) + self.position_embedding(grid))
        x = self.bridge(tokens.transpose(1, 2).reshape(x.shape))
        for block in self.decoder:
            x = block(torch.cat([self.up(x), skips.pop()], dim=1))
        return self.head(x)
