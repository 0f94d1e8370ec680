import torch
per_gpu = 4
batch_size = per_gpu * torch.cuda.device_count()
device = torch.device("cuda", 0)
