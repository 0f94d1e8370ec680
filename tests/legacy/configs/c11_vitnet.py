from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
classes = ["nuc", "er"]
input_array_info = {"shape": (32, 32, 32), "scale": (8, 8, 8)}
model_name = "3d_vnet"
model = ViTVNet(len(classes), img_size=input_array_info["shape"])
