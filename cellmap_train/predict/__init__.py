"""Prediction: sliding-window inference with Gaussian blending at the model's voxel size,
resampled to each target crop's grid and written as a zarr v2 store in the challenge's
submission layout (`<crop>/<label>`); packing it; scoring it against ground truth.
No Hydra here except the entry point (`entry.py`, `python -m cellmap_train.predict`)."""
