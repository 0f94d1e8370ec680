learning_rate = 0.001
batch_size = (8
