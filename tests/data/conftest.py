"""Helpers for the data tests: small OME-NGFF groups written exactly as the tests need them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import zarr

from cellmap_train.data.demo import multiscales_attrs


def write_ngff(path: Path, levels: Sequence[tuple[np.ndarray, Sequence[float], Sequence[float]]],
               chunks=(4, 4, 4), s0_attrs: dict | None = None) -> Path:
    """A multiscale group at `path` with levels s0, s1, ... = (data, scale nm, translation nm)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs.update(multiscales_attrs(path.name, [list(s) for _, s, _ in levels], [list(t) for _, _, t in levels]))
    for i, (data, _, _) in enumerate(levels):
        array = group.create_array(f"s{i}", shape=data.shape, chunks=tuple(min(c, n) for c, n in zip(chunks, data.shape)),
                                   dtype=data.dtype)
        array[...] = data
        if i == 0 and s0_attrs:
            array.attrs.update(s0_attrs)
    return path


@pytest.fixture
def ngff_writer():
    return write_ngff
