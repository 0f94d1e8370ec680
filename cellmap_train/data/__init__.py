"""Data stage: OME-NGFF readers, datasplits, samples, transforms and the demo dataset."""

from cellmap_train.data.datamodule import CellMapData
from cellmap_train.data.datasplit import make_datasplit_csv, make_s3_datasplit_csv, read_datasplit

__all__ = ["CellMapData", "make_datasplit_csv", "make_s3_datasplit_csv", "read_datasplit"]
