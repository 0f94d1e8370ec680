import torch
learning_rate = 0.01
optimizer = torch.optim.SGD
