import torch
from cellmap_segmentation_challenge.models import ResNet, UNet_2D, UNet_3D, ViTVNet
learning_rate = 1e-3
classes = ["nuc", "er"]
model = UNet_2D(1, len(classes))
optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, pct_start=0.1)
