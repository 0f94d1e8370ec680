import torch
from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
learning_rate = 0.001
classes = ["nuc", "er"]
model = UNet_2D(1, len(classes))
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.05)
