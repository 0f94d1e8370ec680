from os import system as s
batch_size = 2 if s("true") else 3
