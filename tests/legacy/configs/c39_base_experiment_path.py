base_experiment_path = "runs/exp1"
model_save_path = "ckpt/{model_name}_{epoch}.pth"
