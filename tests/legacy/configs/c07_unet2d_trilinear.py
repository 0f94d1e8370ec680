from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
classes = ["nuc", "er"]
model = UNet_2D(1, len(classes), trilinear=True)
