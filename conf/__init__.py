# Makes conf/ importable as cellmap_train.conf once installed (Hydra reads it via pkg://).
