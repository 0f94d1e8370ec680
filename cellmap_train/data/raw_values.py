"""Raw whose dtype and values disagree: NormalizeRaw(mode=unit) scales by the dtype's range
(uint8 by 255, uint16 by 65535, floats by 1), so float32 holding 0..255 reaches the network as
0..255 and uint16 holding 8-bit values as 0..0.004, and it trains on without a word. One look
per dataset at a bounded box of its coarsest level (a few chunks) tells; it warns once per
dataset with the override that fixes it."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from cellmap_train.data.ngff import coarsest_level, map_concurrently

log = logging.getLogger(__name__)
LOOK = 64  # voxels per axis read from the coarsest level's centre
FLOAT_RANGE = 1.5  # a float raw above this is not in [0, 1]


def raw_value_problem(dtype: np.dtype, values: np.ndarray, unit: bool = True) -> str:
    """What is wrong with raw of `dtype` whose coarsest level holds `values` (its range only
    matters to `unit` normalization), or '' when nothing is."""
    dtype = np.dtype(dtype)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if values.dtype.kind == "f" and finite.size < values.size:
        return f"{dtype} raw holding NaN or inf: every sample touching them trains on a non-finite input"
    if not finite.size or not unit:
        return ""
    top = float(finite.max())
    if dtype.kind == "f" and top > FLOAT_RANGE:
        return (f"{dtype} raw holding values up to {top:g}, but unit normalization scales floats by 1: "
                f"the network sees 0..{top:g}, not 0..1")
    if dtype.kind in "ui" and dtype.itemsize > 1 and 0 < top <= 255:
        scaled = top / np.iinfo(dtype).max
        return (f"{dtype} raw holding 8-bit values (at most {top:g}), scaled by {dtype}'s range "
                f"{np.iinfo(dtype).max}: the network sees 0..{scaled:.2g}, not 0..1")
    return ""


def fix_for(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size < values.size or not finite.size:
        return "replace them in the data (or leave the dataset out of the datasplit)"
    mean, std = float(finite.mean()), float(finite.std()) or 1.0
    return (f"normalize by its own statistics (transforms.train.raw.mode=meanstd transforms.train.raw.mean={mean:.4g} "
            f"transforms.train.raw.std={std:.4g}) or store it as uint8 0..255")


def centre_box(shape: Sequence[int], size: int = LOOK) -> tuple[slice, ...]:
    return tuple(slice(max(0, n // 2 - size // 2), max(0, n // 2 - size // 2) + min(n, size)) for n in shape)


def look(url: str, storage_options: dict | None) -> tuple[np.dtype, np.ndarray]:
    """(dtype, values of a box of at most LOOK^3 voxels at the centre of the coarsest level)."""
    level = coarsest_level(url, storage_options)
    return np.dtype(level.array.dtype), np.asarray(level.array[centre_box(level.array.shape)])


def warn_of_raw_values(raw_urls: Sequence[str], storage_options: dict | None, unit: bool = True,
                       threads: int = 8) -> list[str]:
    """Warn once per dataset whose raw disagrees with its dtype (with `unit` normalization) or
    holds NaN; returns the warnings."""
    urls = list(dict.fromkeys(raw_urls))
    lines = []
    for url, (dtype, values) in zip(urls, map_concurrently(lambda u: look(u, storage_options), urls, threads)):
        problem = raw_value_problem(dtype, values, unit)
        if problem:
            lines.append(f"{url}: {problem}; {fix_for(values)}")
            log.warning("%s", lines[-1])
    return lines


def unit_normalized(transforms) -> bool:
    """Whether samples are scaled by their dtype's range (NormalizeRaw mode=unit)."""
    raw = getattr(transforms, "raw", None)
    return getattr(raw, "mode", None) == "unit"
