"""A config that uses ordinary Python: conditions, try, mutation, comprehensions, unpacking."""
try:
    from cellmap_segmentation_challenge.models import UNet_2D
except ImportError:
    UNet_2D = None
USE_BIG = False
if USE_BIG:
    batch_size = 32
else:
    batch_size = 2
batch_size += 1
classes = ["nuc"]
classes.append("er")
classes.extend([c for c in ("mito", "ld") if c != "ld"])
epochs, iterations_per_epoch = 5, 6
shape = {a: 64 for a in "yx"}
input_array_info = {"shape": (1, shape["y"], shape["x"]), "scale": (8,) * 3}
model = UNet_2D(1, len(classes)) if UNet_2D is not None else None
