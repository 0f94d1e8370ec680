from cellmap_data.transforms.augment import NaNtoNum, Normalize
raw_transforms = [Normalize(shift=-10, scale=1 / 200), NaNtoNum({"nan": 0})]
train_raw_value_transforms = raw_transforms
val_raw_value_transforms = raw_transforms
