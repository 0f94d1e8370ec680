import torch
input_array_info = {"raw": {"shape": (1, 64, 64), "scale": (8, 8, 8)}, "raw_4nm": {"shape": (1, 128, 128), "scale": (4, 4, 4)}}
