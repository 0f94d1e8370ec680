from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
classes = ["nuc", "er", "mito"]
n_out = len(classes)
model = UNet_2D(1, n_out)
