"""The names a challenge config.py imports, for configs that run where the challenge's package
is not installed (examples/ import them from here):

    from cellmap_train.legacy.challenge import UNet_2D, get_tested_classes, train

The translator reads a config by these names whichever module they come from, so the same file
works with `from cellmap_segmentation_challenge.models import UNet_2D`. Called (a config's
top level runs when the file itself is run), each builds this project's model with the
challenge's sizes; torch is imported only then.
"""

from __future__ import annotations

from typing import Sequence

from cellmap_train.legacy import train
from cellmap_train.legacy.tested_classes import TESTED_CLASSES

__all__ = ["ResNet", "UNet_2D", "UNet_3D", "ViTVNet", "get_tested_classes", "train"]


def get_tested_classes() -> list[str]:
    """The challenge's 48 tested classes, in its order."""
    return list(TESTED_CLASSES)


def UNet_2D(n_channels: int = 1, n_classes: int = 1, trilinear: bool = False):  # noqa: N802 - the challenge's name
    from cellmap_train.models import UNet

    return UNet(spatial_dims=2, in_channels=n_channels, out_channels=n_classes, base_features=64,
                upsample="bilinear" if trilinear else "transpose")


def UNet_3D(n_channels: int = 1, n_classes: int = 1, trilinear: bool = False):  # noqa: N802
    from cellmap_train.models import UNet

    return UNet(spatial_dims=3, in_channels=n_channels, out_channels=n_classes, base_features=64,
                upsample="trilinear" if trilinear else "transpose")


def ResNet(ndims: int = 2, input_nc: int = 1, output_nc: int = 1, ngf: int = 64, n_blocks: int = 6,
           n_downsampling: int = 2, padding_type: str = "reflect", use_dropout: bool = False):  # noqa: N802
    from cellmap_train.models import ResNet as Network

    return Network(spatial_dims=ndims, in_channels=input_nc, out_channels=output_nc, ngf=ngf, n_blocks=n_blocks,
                   n_downsampling=n_downsampling, padding_mode=padding_type, dropout=0.5 if use_dropout else 0.0)


def ViTVNet(out_channels: int = 1, config: str = "ViT-V-Net", img_size: Sequence[int] = (64, 64, 64),  # noqa: N802
            vis: bool = False):
    from cellmap_train.models import ViTVNet as Network

    if config != "ViT-V-Net":
        raise ValueError(f"ViTVNet config {config!r}: only the ViT-V-Net sizes are built here")
    return Network(out_channels=out_channels, img_size=list(img_size))
