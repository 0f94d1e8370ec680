"""Train a 2D U-Net on z-slices, written the way the CellMap challenge's train_2D.py is.

Run it with `csc train examples/train_2D.py` or `python examples/train_2D.py`; either way the
file is translated into Hydra overrides (see `cellmap-train translate examples/train_2D.py`),
not executed by the trainer. Extra arguments are Hydra overrides and win, e.g.
`python examples/train_2D.py data=demo epochs=2` tries it on the built-in demo data.
"""

# With the challenge installed, `from cellmap_segmentation_challenge.models import ...` reads the same:
# the translator goes by the names. These run where it is not (this project installs them).
from cellmap_train.legacy.challenge import ResNet, UNet_2D  # noqa: F401 (names the translator maps)

# %% Set hyperparameters and other configurations
learning_rate = 0.0001  # learning rate for the optimizer
batch_size = 8  # batch size for the dataloader
input_array_info = {
    "shape": (1, 128, 128),
    "scale": (8, 8, 8),
}  # shape and voxel size of the data to load for the input
target_array_info = {
    "shape": (1, 128, 128),
    "scale": (8, 8, 8),
}  # shape and voxel size of the data to load for the target
epochs = 1000  # number of epochs to train the model for
iterations_per_epoch = 1000  # number of iterations per epoch
random_seed = 42  # random seed for reproducibility

classes = ["nuc", "er"]  # list of classes to segment

# Defining model (comment out all that are not used)
# 2D UNet
model_name = "2d_unet"  # name of the model to use
model_to_load = "2d_unet"  # name of the pre-trained model to load
model = UNet_2D(1, len(classes))

# # 2D ResNet
# model_name = "2d_resnet"
# model_to_load = "2d_resnet"
# model = ResNet(ndims=2, output_nc=len(classes))

load_model = "latest"  # load the latest model or the best validation model

# Define the paths for saving the model and logs, etc.
logs_save_path = "tensorboard/{model_name}"  # path to save the logs from tensorboard
model_save_path = "checkpoints/{model_name}_{epoch}.pth"  # path to save the model checkpoints
datasplit_path = "datasplit.csv"  # path to the datasplit file that defines the train/val split the dataloader should use

# Define the spatial transformations to apply to the training data
spatial_transforms = {  # dictionary of spatial transformations to apply to the data
    "mirror": {"axes": {"x": 0.5, "y": 0.5}},
    "transpose": {"axes": ["x", "y"]},
    "rotate": {"axes": {"x": [-180, 180], "y": [-180, 180]}},
}

# Set a limit to how long the validation can take
validation_time_limit = 60  # time limit in seconds for the validation step
filter_by_scale = True  # keep only classes annotated at least as finely as input_array_info's scale

# %% Train the model (through cellmap_train's translator: this file is read, not executed, by the trainer)
if __name__ == "__main__":
    from cellmap_train.legacy import train

    train(__file__)
