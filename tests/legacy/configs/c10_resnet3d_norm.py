import torch
from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
classes = ["nuc", "er"]
input_array_info = {"shape": [32, 32, 32], "scale": [8, 8, 8]}
model = ResNet(ndims=3, output_nc=len(classes), norm_layer=torch.nn.BatchNorm3d, n_downsampling=1)
