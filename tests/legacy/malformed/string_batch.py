batch_size = "8"
