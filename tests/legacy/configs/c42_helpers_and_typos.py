import os
learning_rat = 1e-3
scale = 8
input_array_info = {"shape": (1, 64, 64), "scale": (scale,) * 3}
run_name = os.environ.get("CELLMAP_LEGACY_TEST_UNSET", "default-run")
