import torch
import torchvision.transforms.v2 as T
from cellmap_data.transforms.augment import GaussianBlur, GaussianNoise, NaNtoNum, RandomContrast, RandomGamma
train_raw_value_transforms = T.Compose([
    T.ToDtype(torch.float, scale=True),
    NaNtoNum({"nan": 0}),
    RandomGamma((0.7, 1.3)),
    T.RandomApply([RandomContrast(contrast_range=(0.8, 1.2))], p=0.5),
    GaussianBlur(kernel_size=5, sigma=1.0, dim=3),
    GaussianNoise(std=0.05),
])
val_raw_value_transforms = T.Compose([T.ToDtype(torch.float, scale=True), GaussianNoise(std=0.05)])
