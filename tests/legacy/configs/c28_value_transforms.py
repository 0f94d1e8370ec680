import torch
import torchvision.transforms.v2 as T
from cellmap_data.transforms.augment import Binarize, NaNtoNum
train_raw_value_transforms = T.Compose([T.ToDtype(torch.float, scale=True), NaNtoNum({"nan": 0})])
target_value_transforms = T.Compose([T.ToDtype(torch.float), Binarize(0.3)])
