spatial_transforms = None
