import torch
if torch.cuda.is_available():
    device = "cuda"
    batch_size = 16
else:
    device = "cpu"
    batch_size = 16
