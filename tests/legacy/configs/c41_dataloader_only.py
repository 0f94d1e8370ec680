batch_size = 2
train_micro_batch_size_per_gpu = 4
random_validation = True
kwargs = {"num_workers": 2}
