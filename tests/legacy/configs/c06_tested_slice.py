from cellmap_segmentation_challenge.utils import get_tested_classes
from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
classes = get_tested_classes()[29:31] + ["mito"]
model = UNet_2D(1, len(classes))
