"""cellmap_train: Hydra-composed training for CellMap volume-EM segmentation."""

from cellmap_train.data.datasplit import make_datasplit_csv, make_s3_datasplit_csv
from cellmap_train.engine.checkpoint import load_best_val, load_latest

__all__ = ["load_best_val", "load_latest", "make_datasplit_csv", "make_s3_datasplit_csv"]
__version__ = "0.1.0"
