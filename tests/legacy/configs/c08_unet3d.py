from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
classes = ["mito"]
input_array_info = {"shape": (64, 64, 64), "scale": (8, 8, 8)}
target_array_info = input_array_info
model = UNet_3D(1, len(classes))
