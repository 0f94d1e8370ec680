learning_rate = eval("1e-3")
