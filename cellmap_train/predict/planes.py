"""The ways a model's tiles lie in the volume: a 3D model's one, a 2D model's z-slices, or with
`planes=3` also its y-slices and x-slices (the challenge's 2D path averages the three orthogonal
planes). A 2D model's tile (1, h, w) then also lies as (h, 1, w) and (h, w, 1): the model sees
[z, x] and [z, y] images, and each view is blended on its own and the probabilities averaged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from cellmap_train.errors import ConfigError
from cellmap_train.predict.window import gaussian_weight


def lay(shape: Sequence[int], axis: int) -> tuple[int, int, int]:
    """A 2D tile (1, h, w) with its slice axis moved to `axis` (0 z, 1 y, 2 x)."""
    return tuple(int(n) for n in np.moveaxis(np.empty(tuple(shape), dtype=np.bool_), 0, axis).shape)


class PlaneRunner:
    """A 2D runner (raw [N, 1, h, w] -> [N, C, 1, h, w]) on tiles whose slice axis is `axis`:
    raw [N, *tile] -> probabilities [N, C, *tile]."""

    def __init__(self, runner: Callable[[np.ndarray], np.ndarray], axis: int):
        self.runner, self.axis = runner, axis

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.axis == 0:
            return self.runner(raw)
        out = self.runner(np.ascontiguousarray(np.moveaxis(raw, 1 + self.axis, 1)))
        return np.moveaxis(out, 2, 2 + self.axis)


@dataclass(frozen=True)
class View:
    """One way tiles lie: the runner on them, their input and output shapes, blending weights."""

    runner: Callable[[np.ndarray], np.ndarray]
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    weight: np.ndarray

    @property
    def margin(self) -> np.ndarray:
        """Input voxels around the output tile, per side."""
        return (np.asarray(self.input_shape) - np.asarray(self.output_shape)) // 2


def views(runner: Callable[[np.ndarray], np.ndarray], input_shape: Sequence[int], output_shape: Sequence[int],
          planes: int) -> list[View]:
    """`planes=1`: the model's own tiles; `planes=3` (2D models): z-, y- and x-slices."""
    if planes not in (1, 3):
        raise ConfigError(f"planes={planes}: must be 1 or 3")
    if planes == 3 and (input_shape[0] != 1 or output_shape[0] != 1):
        raise ConfigError(f"planes=3: averages the three orthogonal planes of a 2D model; this model's tiles are "
                          f"{list(input_shape)} voxels (3D)")
    out = []
    for axis in range(planes):
        tile_in, tile_out = lay(input_shape, axis), lay(output_shape, axis)
        out.append(View(PlaneRunner(runner, axis), tile_in, tile_out, gaussian_weight(tile_out)))
    return out
