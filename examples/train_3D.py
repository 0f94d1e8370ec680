"""Train a 3D network on all of the challenge's tested classes, in the style of its train_3D.py.

Run it with `csc train examples/train_3D.py` or `python examples/train_3D.py [overrides]`; the
file is translated into Hydra overrides (`cellmap-train translate examples/train_3D.py`) and
never executed by the trainer. The ViT-V-Net below is the challenge's choice for 3D; the
3D U-Net and ResNet are the alternatives (uncomment one block, comment the others).
"""

# With the challenge installed, `from cellmap_segmentation_challenge.models import ...` reads the same:
# the translator goes by the names. These run where it is not (this project installs them).
from cellmap_train.legacy.challenge import ResNet, UNet_3D, ViTVNet, get_tested_classes  # noqa: F401

# %% Set hyperparameters and other configurations
learning_rate = 0.0001  # learning rate for the optimizer
batch_size = 8  # batch size for the dataloader
input_array_info = {
    "shape": (128, 128, 128),
    "scale": (8, 8, 8),
}  # shape and voxel size of the data to load for the input
target_array_info = {
    "shape": (128, 128, 128),
    "scale": (8, 8, 8),
}  # shape and voxel size of the data to load for the target
epochs = 1000  # number of epochs to train the model for
iterations_per_epoch = 1000  # number of iterations per epoch
random_seed = 42  # random seed for reproducibility

classes = get_tested_classes()  # list of classes to segment (all 48 tested classes)

# Defining model (comment out all that are not used)
# # 3D UNet
# model_name = "3d_unet"
# model_to_load = "3d_unet"
# model = UNet_3D(1, len(classes))

# # 3D ResNet
# model_name = "3d_resnet"
# model_to_load = "3d_resnet"
# model = ResNet(ndims=3, output_nc=len(classes))

# 3D ViT VNet
model_name = "3d_vnet"  # name of the model to use
model_to_load = "3d_vnet"  # name of the pre-trained model to load
model = ViTVNet(len(classes), img_size=input_array_info["shape"])

load_model = "latest"  # load the latest model or the best validation model

# Define the paths for saving the model and logs, etc.
logs_save_path = "tensorboard/{model_name}"  # path to save the logs from tensorboard
model_save_path = "checkpoints/{model_name}_{epoch}.pth"  # path to save the model checkpoints
datasplit_path = "datasplit.csv"  # path to the datasplit file that defines the train/val split the dataloader should use

# Define the spatial transformations to apply to the training data
spatial_transforms = {  # dictionary of spatial transformations to apply to the data
    "mirror": {"axes": {"x": 0.5, "y": 0.5, "z": 0.1}},
    "transpose": {"axes": ["x", "y", "z"]},
    "rotate": {"axes": {"x": [-180, 180], "y": [-180, 180], "z": [-180, 180]}},
}

# Set a limit to how long the validation can take
validation_time_limit = 60  # time limit in seconds for the validation step
filter_by_scale = True  # keep only classes annotated at least as finely as input_array_info's scale

# %% Train the model (through cellmap_train's translator: this file is read, not executed, by the trainer)
if __name__ == "__main__":
    from cellmap_train.legacy import train

    train(__file__)
