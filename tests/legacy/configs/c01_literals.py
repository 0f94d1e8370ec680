from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
learning_rate = 0.0003
batch_size = 4
epochs = 3
iterations_per_epoch = 20
random_seed = 7
classes = ["nuc", "mito"]
input_array_info = {"shape": (1, 64, 64), "scale": (16, 16, 16)}
target_array_info = {"shape": (1, 64, 64), "scale": (16, 16, 16)}
model = UNet_2D(1, len(classes))
