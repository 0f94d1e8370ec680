"""Segmentation networks; 2D and 3D variants share one code path (`spatial_dims`)."""

from cellmap_train.models.resnet import ResNet
from cellmap_train.models.unet import UNet
from cellmap_train.models.vit import ViTVNet

__all__ = ["ResNet", "UNet", "ViTVNet"]
