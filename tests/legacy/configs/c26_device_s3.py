device = "cpu"
use_s3 = True
validation_prob = 0.2
validation_time_limit = 30.5
load_model = "Best"
model_to_load = "older_run"
