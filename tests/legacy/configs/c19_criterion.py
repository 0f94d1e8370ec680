import torch
criterion = torch.nn.BCEWithLogitsLoss
criterion_kwargs = {"pos_weight": [2.0, 0.5]}
weight_loss = False
