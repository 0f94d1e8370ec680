import os
os.system("echo hacked")
learning_rate = 0.001
