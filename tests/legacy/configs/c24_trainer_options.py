gradient_accumulation_steps = 2
max_grad_norm = 1.0
low_is_best = True
weighted_sampler = False
force_all_classes = True
dataloader_kwargs = {"num_workers": 1, "pin_memory": False}
validation_batch_limit = 5
use_mutual_exclusion = True
