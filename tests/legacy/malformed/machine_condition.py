import torch
if torch.cuda.is_available():
    batch_size = 16
else:
    batch_size = 4
