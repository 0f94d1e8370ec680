"""A sample's shape and voxel size, as input_array_info / target_array_info give them."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from cellmap_train.errors import ConfigError


@dataclass(frozen=True)
class ArrayInfo:
    shape: tuple[int, ...]
    scale: tuple[float, ...]

    @classmethod
    def parse(cls, info, what: str) -> "ArrayInfo":
        """{shape: [D,H,W] or [1,H,W] or [H,W] voxels, scale: nm per voxel, [z,y,x] or [y,x]};
        the preflight checks the config with this too, so a bad value fails before any data."""
        if not isinstance(info, Mapping) or "shape" not in info or "scale" not in info:
            raise ConfigError(f"{what}={info}: must be {{shape: [D,H,W], scale: [z,y,x]}}")
        shape, scale = info["shape"], info["scale"]
        if not _positive_numbers(shape, numbers.Integral):
            raise ConfigError(f"{what}.shape={_listed(shape)}: must be 2 or 3 voxel counts >= 1, e.g. [1,128,128] or [64,64,64]")
        if not _positive_numbers(scale, numbers.Real):
            raise ConfigError(f"{what}.scale={_listed(scale)}: must be positive voxel sizes in nm, e.g. [8,8,8]")
        shape, scale = tuple(int(s) for s in shape), tuple(float(s) for s in scale)
        if len(shape) == 2:  # the challenge also spells 2D as (H, W)
            shape = (1, *shape)
        if len(scale) == 2:
            scale = (scale[0], *scale)
        return cls(shape, scale)

    @property
    def extent(self) -> np.ndarray:
        return np.asarray(self.shape) * np.asarray(self.scale)

    @property
    def is_2d(self) -> bool:
        return self.shape[0] == 1


def _positive_numbers(values, kind: type) -> bool:
    """2 or 3 numbers of `kind`, all > 0 (bools are not numbers here)."""
    return (isinstance(values, Sequence) and not isinstance(values, str) and len(values) in (2, 3)
            and all(isinstance(v, kind) and not isinstance(v, bool) and v > 0 for v in values))


def _listed(values):
    return list(values) if isinstance(values, Sequence) and not isinstance(values, str) else values
