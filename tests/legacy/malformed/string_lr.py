learning_rate = "0.001"
