from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
classes = ["nuc", "er"]
model = ResNet(ndims=2, output_nc=len(classes), ngf=32, n_blocks=4)
