"""cellmap_train: Hydra-composed training for CellMap volume-EM segmentation.

The seed's helpers are re-exported here, imported on first use so that light entry points
(`cellmap-train translate`, `--help`) do not pay for importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"
_EXPORTS = {
    "make_datasplit_csv": "cellmap_train.data.datasplit",
    "make_s3_datasplit_csv": "cellmap_train.data.datasplit",
    "load_latest": "cellmap_train.engine.checkpoint",
    "load_best_val": "cellmap_train.engine.checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cellmap_train' has no attribute {name!r}")
