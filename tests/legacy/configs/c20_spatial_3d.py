from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
classes = ["nuc", "er"]
input_array_info = {"shape": (32, 32, 32), "scale": (8, 8, 8)}
model = UNet_3D(1, len(classes))
spatial_transforms = {
    "mirror": {"axes": {"x": 0.5, "y": 0.5, "z": 0.1}},
    "transpose": {"axes": ["x", "y", "z"]},
    "rotate": {"axes": {"x": [-180, 180], "y": [-180, 180], "z": [-180, 180]}},
}
