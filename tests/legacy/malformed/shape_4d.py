input_array_info = {"shape": (1, 1, 128, 128), "scale": (8, 8, 8)}
