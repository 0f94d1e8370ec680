from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
base_lr = 1e-4
learning_rate = base_lr * 3
batch_size = 4 * 2
epochs = 10 ** 2
iterations_per_epoch = epochs // 4 + 5
random_seed = -(-3)
classes = ["nuc", "er"]
model = UNet_2D(1, len(classes))
