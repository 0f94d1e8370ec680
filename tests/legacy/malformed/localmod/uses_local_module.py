from helpers import pick_batch_size
batch_size = pick_batch_size()
