import os
from upath import UPath
from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
model_name = "my_unet"
run = "exp{}".format(2)
model_save_path = os.path.join("checkpoints", run, "{model_name}_{epoch}.pth")
logs_save_path = UPath("tensorboard/{model_name}").path
datasplit_path = f"splits/{run}_{len('abc')}.csv"
classes = ["nuc", "er"]
model = UNet_2D(1, len(classes))
