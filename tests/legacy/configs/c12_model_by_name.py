classes = ["nuc", "er"]
input_array_info = {"shape": (16, 64, 64), "scale": (8, 8, 8)}
model_name = "3d_resnet"
model_kwargs = {"ngf": 16}
