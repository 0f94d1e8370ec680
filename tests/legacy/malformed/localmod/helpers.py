def pick_batch_size():
    return 3
