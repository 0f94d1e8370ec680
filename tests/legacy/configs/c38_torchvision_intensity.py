import torch
import torchvision.transforms.v2 as T
train_raw_value_transforms = T.Compose([
    T.ToDtype(torch.float, scale=True),
    T.ColorJitter(contrast=0.3),
    T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.25),
    T.GaussianNoise(sigma=0.1),
    T.RandomErasing(),
])
