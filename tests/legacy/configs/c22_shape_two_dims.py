input_array_info = {"shape": (96, 96), "scale": (8, 8)}
