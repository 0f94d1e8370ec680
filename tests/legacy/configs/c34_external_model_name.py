"""A config written for another trainer: nothing here builds its model."""
model_name = "mednext"
model_kwargs = {"kernel_size": 3}
learning_rate = 3e-4
