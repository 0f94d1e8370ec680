"""Segmentation networks; 2D and 3D variants share one code path (`spatial_dims`)."""

from cellmap_train.models.unet import UNet

__all__ = ["UNet"]
