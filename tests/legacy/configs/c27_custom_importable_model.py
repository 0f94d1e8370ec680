import torch
classes = ["nuc", "er"]
model = torch.nn.Conv2d(1, len(classes), kernel_size=3, padding=1)
