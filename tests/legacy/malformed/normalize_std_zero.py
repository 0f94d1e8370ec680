import torchvision.transforms.v2 as T
train_raw_value_transforms = T.Compose([T.ToDtype(float, scale=True), T.Normalize([0.5], [0])])
