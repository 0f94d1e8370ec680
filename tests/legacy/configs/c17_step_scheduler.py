import torch
epochs = 40
scheduler = torch.optim.lr_scheduler.StepLR
scheduler_kwargs = {"step_size": epochs // 4, "gamma": 0.1}
