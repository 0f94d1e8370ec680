input_array_info = {"raw": {"shape": (1, 64, 64), "scale": (8, 8, 8)}}
target_array_info = {"labels": {"shape": (1, 64, 64), "scale": (8, 8, 8)}}
