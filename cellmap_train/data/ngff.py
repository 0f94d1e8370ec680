"""Open one scale level of an OME-NGFF multiscale group (local path or s3:// URL) and read
world-coordinate boxes from it, touching only the chunks the box covers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import zarr

from cellmap_train.errors import DataError


def _is_url(path: str) -> bool:
    return "://" in str(path)


def open_group(path: str, storage_options: dict | None = None) -> zarr.Group:
    """Open a zarr group read-only; `storage_options` go to fsspec for URLs (e.g. anon=True)."""
    kwargs: dict[str, Any] = {"mode": "r"}
    if _is_url(path) and storage_options:
        kwargs["storage_options"] = dict(storage_options)
    try:
        return zarr.open_group(str(path), **kwargs)
    except (FileNotFoundError, KeyError) as err:
        raise DataError(f"{path}: no zarr group there") from err
    except PermissionError as err:
        raise DataError(f"{path}: access denied ({err})") from err
    except Exception as err:  # zarr raises its own types for missing groups
        if type(err).__name__ in {"GroupNotFoundError", "NodeNotFoundError", "ContainsArrayError"}:
            raise DataError(f"{path}: no zarr group there") from err
        raise


@dataclass
class ScaleLevel:
    """One array of a multiscale pyramid with its voxel size and origin in world units (nm)."""

    array: Any  # zarr.Array (or anything with .shape and numpy-style slicing)
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    path: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World coordinates of the low and high voxel *edges* (voxel centres sit at translation)."""
        scale = np.asarray(self.scale, dtype=float)
        low = np.asarray(self.translation, dtype=float) - scale / 2
        return low, low + np.asarray(self.shape) * scale

    def read(self, world_low: Sequence[float], shape: Sequence[int], fill: float = 0) -> np.ndarray:
        """Read `shape` voxels whose first voxel edge is at `world_low`; outside the array is `fill`.

        `world_low` is snapped to this level's voxel grid, so callers get exactly `shape` voxels.
        """
        scale = np.asarray(self.scale, dtype=float)
        origin = np.asarray(self.translation, dtype=float) - scale / 2
        start = np.round((np.asarray(world_low, dtype=float) - origin) / scale).astype(int)
        stop = start + np.asarray(shape, dtype=int)
        src_lo = np.maximum(start, 0)
        src_hi = np.minimum(stop, self.shape)
        dtype = np.result_type(self.array.dtype, np.float32) if np.isnan(fill) else self.array.dtype
        out = np.full(tuple(shape), fill, dtype=dtype)
        if np.any(src_hi <= src_lo):
            return out
        src = tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi))
        dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(src_lo, src_hi, start))
        try:
            out[dst] = self.array[src]
        except Exception as err:
            raise DataError(f"{self.path}: cannot read voxels {src_lo.tolist()}..{src_hi.tolist()} ({type(err).__name__}: {err})") from err
        return out


def multiscale_levels(group: zarr.Group, path: str) -> list[ScaleLevel]:
    """Every level of the group's first OME-NGFF 0.4 multiscale, in the order listed."""
    attrs = dict(group.attrs)
    try:
        multiscale = attrs["multiscales"][0]
        datasets = multiscale["datasets"]
    except (KeyError, IndexError, TypeError) as err:
        raise DataError(f"{path}: no OME-NGFF 'multiscales' metadata in .zattrs") from err
    levels = []
    for entry in datasets:
        scale, translation = None, None
        for transform in entry.get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                scale = tuple(float(v) for v in transform["scale"])
            elif transform.get("type") == "translation":
                translation = tuple(float(v) for v in transform["translation"])
        if scale is None:
            raise DataError(f"{path}/{entry.get('path')}: multiscale level has no scale transform")
        translation = translation or (0.0,) * len(scale)
        try:
            array = group[entry["path"]]
        except KeyError as err:
            raise DataError(f"{path}/{entry['path']}: listed in multiscales but missing") from err
        levels.append(ScaleLevel(array, scale, translation, f"{path}/{entry['path']}"))
    return levels


def open_level(path: str, scale: Sequence[float], storage_options: dict | None = None) -> ScaleLevel:
    """The level of the multiscale group at `path` whose voxel size equals `scale` (nm, z/y/x)."""
    group = open_group(path, storage_options)
    levels = multiscale_levels(group, path)
    wanted = tuple(float(s) for s in scale)
    for level in levels:
        if len(level.scale) == len(wanted) and np.allclose(level.scale, wanted):
            return level
    available = ", ".join(str(list(lvl.scale)) for lvl in levels)
    raise DataError(f"{path}: no level at scale {list(wanted)} nm (available: {available})")
