"""A small synthetic dataset in the real CellMap layout (zarr v2 + OME-NGFF 0.4), so every
command and test runs without downloading anything.

    <root>/<ds>/<ds>.zarr/recon-1/em/fibsem-uint8/{s0,s1}
    <root>/<ds>/<ds>.zarr/recon-1/labels/groundtruth/crop<N>/<class>/{s0,s1}

Raw intensities are drawn from the label shapes (nuclei, ER sheets, mitochondria) plus noise,
so a small network learns them in minutes. Generated once per folder, then reused.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

DEMO_VERSION = 2
CLASSES = ("nuc", "er", "mito")
RAW_PATH = "recon-1/em/fibsem-uint8"
CROPS_PATH = "recon-1/labels/groundtruth"
# mean intensity of each structure in the raw (background is brighter, as in FIB-SEM)
INTENSITY = {"background": 175.0, "nuc": 115.0, "er": 70.0, "mito": 45.0}


@dataclass
class DemoSpec:
    """Sizes of the demo volume; `benchmarks/` makes a bigger one with the same generator."""

    n_datasets: int = 2
    raw_shape: tuple[int, int, int] = (64, 192, 192)
    crop_shape: tuple[int, int, int] = (32, 96, 96)
    crops_per_dataset: int = 5
    voxel_nm: float = 8.0
    noise: float = 18.0
    chunks: tuple[int, int, int] = (32, 32, 32)
    # (dataset index, crop index within it) -> classes left unannotated (they become unknown)
    missing: dict = field(default_factory=lambda: {(1, 2): ("er",), (0, 3): ("mito",)})


def multiscales_attrs(name: str, scales: list[list[float]], translations: list[list[float]]) -> dict:
    """OME-NGFF 0.4 `multiscales` metadata for levels s0, s1, ... (axes z, y, x in nm)."""
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
                "datasets": [
                    {
                        "path": f"s{i}",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": list(map(float, s))},
                            {"type": "translation", "translation": list(map(float, t))},
                        ],
                    }
                    for i, (s, t) in enumerate(zip(scales, translations))
                ],
            }
        ]
    }


def write_multiscale(group: zarr.Group, name: str, s0: np.ndarray, voxel_nm: float,
                     translation_nm, chunks, is_label: bool) -> None:
    """Write s0 and a 2x-downsampled s1 with their NGFF transforms (voxel centres at translation)."""
    s1 = downsample2(s0, is_label)
    translation = np.asarray(translation_nm, dtype=float)
    scales = [[voxel_nm] * 3, [2 * voxel_nm] * 3]
    # a coarser voxel's centre sits half a fine voxel further in: (2v - v) / 2
    translations = [translation.tolist(), (translation + voxel_nm / 2).tolist()]
    sub = group.create_group(name)
    sub.attrs.update(multiscales_attrs(name, scales, translations))
    for level, data in (("s0", s0), ("s1", s1)):
        arr = sub.create_array(level, shape=data.shape, chunks=tuple(min(c, n) for c, n in zip(chunks, data.shape)), dtype=data.dtype)
        arr[...] = data


def downsample2(volume: np.ndarray, is_label: bool) -> np.ndarray:
    z, y, x = (s // 2 * 2 for s in volume.shape)
    blocks = volume[:z, :y, :x].reshape(z // 2, 2, y // 2, 2, x // 2, 2).astype(np.float32)
    mean = blocks.mean(axis=(1, 3, 5))
    return (mean >= 0.5).astype(np.uint8) if is_label else np.round(mean).astype(volume.dtype)


def smooth_noise(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Gaussian-filtered white noise (via FFT), scaled to unit standard deviation."""
    noise = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij", sparse=True)
    gain = np.exp(-2 * (np.pi * sigma_vox) ** 2 * sum(f**2 for f in freqs))
    field_ = np.real(np.fft.ifftn(np.fft.fftn(noise) * gain))
    return field_ / (field_.std() + 1e-8)


def ellipsoids(rng, shape, count, radius_range, margin: float = 0.0) -> tuple[np.ndarray, list]:
    """Union of `count` random ellipsoids and their centres (kept `margin` of the extent inside)."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, dtype=bool)
    centres = []
    for _ in range(count):
        centre = [rng.uniform(margin * n, (1 - margin) * n) for n in shape]
        radii = rng.uniform(*radius_range, size=3)
        mask |= ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1
        centres.append(centre)
    return mask, centres


def synthetic_volume(rng: np.random.Generator, spec: DemoSpec) -> tuple[np.ndarray, dict[str, np.ndarray], list]:
    """One raw volume (uint8), the binary mask of each class on the same grid, nucleus centres."""
    shape = spec.raw_shape
    scale = min(shape[1:]) / 192  # structure sizes follow the volume's extent
    nuc, centres = ellipsoids(rng, shape, count=2, radius_range=(28 * scale, 44 * scale), margin=0.25)
    mito = ellipsoids(rng, shape, count=int(40 * scale**2) + 4, radius_range=(4, 9))[0] & ~nuc
    er = (np.abs(smooth_noise(rng, shape, sigma_vox=4.0)) < 0.12) & ~nuc & ~mito
    raw = np.full(shape, INTENSITY["background"], dtype=np.float32)
    for name, mask in (("nuc", nuc), ("er", er), ("mito", mito)):
        raw[mask] = INTENSITY[name]
    raw += 12 * smooth_noise(rng, shape, sigma_vox=6.0)  # slow shading, as in real stacks
    raw += spec.noise * rng.standard_normal(shape)
    raw = np.clip(np.round(raw), 0, 255).astype(np.uint8)
    return raw, {"nuc": nuc, "er": er, "mito": mito}, centres


def crop_origins(rng, raw_shape, crop_shape, count, centres) -> list[tuple[int, int, int]]:
    """Crop corners (voxels) inside the volume; every other crop is centred on a nucleus so
    both training and validation crops see every class."""
    corners = []
    for k in range(count):
        if k % 2 == 0 and centres:
            centre = centres[(k // 2) % len(centres)]
            jitter = rng.uniform(-0.35, 0.35, size=3) * np.asarray(crop_shape)  # no two crops identical
            corner = [int(np.clip(round(m + j - c / 2), 0, r - c)) for m, j, r, c in zip(centre, jitter, raw_shape, crop_shape)]
        else:
            corner = [int(rng.integers(0, r - c + 1)) for r, c in zip(raw_shape, crop_shape)]
        corners.append(tuple(corner))
    return corners


def write_dataset(root: Path, index: int, spec: DemoSpec, first_crop: int) -> int:
    rng = np.random.default_rng(1000 + index)
    name = f"jrc_demo-{index + 1}"
    raw, masks, centres = synthetic_volume(rng, spec)
    store = zarr.open_group(str(root / name / f"{name}.zarr"), mode="w", zarr_format=2)
    # a dataset origin that is not zero, so world -> voxel mapping is exercised
    raw_translation = np.array([40.0, 80.0, 120.0]) * (index + 1)
    recon = store.create_group("recon-1")
    write_multiscale(recon.create_group("em"), "fibsem-uint8", raw, spec.voxel_nm, raw_translation, spec.chunks, is_label=False)
    groundtruth = recon.create_group("labels").create_group("groundtruth")
    crop_id = first_crop
    for k, corner in enumerate(crop_origins(rng, spec.raw_shape, spec.crop_shape, spec.crops_per_dataset, centres)):
        window = tuple(slice(c, c + n) for c, n in zip(corner, spec.crop_shape))
        crop = groundtruth.create_group(f"crop{crop_id}")
        translation = raw_translation + np.asarray(corner) * spec.voxel_nm
        for cls in CLASSES:
            if cls in spec.missing.get((index, k), ()):
                continue
            write_multiscale(crop, cls, masks[cls][window].astype(np.uint8), spec.voxel_nm, translation, spec.chunks, is_label=True)
        crop_id += 1
    return crop_id


def make_demo_data(root: str | os.PathLike, spec: DemoSpec | None = None) -> Path:
    """Write the demo datasets under `root` (overwriting it)."""
    spec = spec or DemoSpec()
    root = Path(root)
    crop_id = 1
    for index in range(spec.n_datasets):
        crop_id = write_dataset(root, index, spec, crop_id)
    (root / ".complete").write_text(f"cellmap_train demo v{DEMO_VERSION}\n")
    return root


def ensure_demo_data(cache_dir: str | os.PathLike, spec: DemoSpec | None = None) -> Path:
    """The demo data under `cache_dir/v<N>`, generated on first use.

    Built in a private temporary folder and renamed into place, so parallel sweep jobs that
    start together never see (or write) a half-made dataset.
    """
    target = Path(cache_dir).expanduser() / f"v{DEMO_VERSION}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".v{DEMO_VERSION}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    make_demo_data(tmp, spec)
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished first; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / ".complete").exists():
            raise
    return target
