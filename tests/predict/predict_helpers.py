"""Helpers shared by the predict tests."""

from __future__ import annotations

from pathlib import Path


def write_manifest(path: Path, rows) -> Path:
    """rows: (crop, dataset, label, voxel_size, translation, shape) -> the challenge's CSV format."""
    with open(path, "w", newline="") as handle:
        handle.write("crop_name,dataset,class_label,voxel_size,translation,shape\n")
        for crop, dataset, label, size, translation, shape in rows:
            fmt = lambda values: "[" + ";".join(str(v) for v in values) + "]"  # noqa: E731
            handle.write(f"{crop},{dataset},{label},{fmt(size)},{fmt(translation)},{fmt(shape)}\n")
    return path
