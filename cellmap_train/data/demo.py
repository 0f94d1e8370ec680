"""A small synthetic dataset in the real CellMap layout (zarr v2 + OME-NGFF 0.4), so every
command and test runs without downloading anything.

    <root>/<ds>/<ds>.zarr/recon-1/em/fibsem-uint8/{s0,s1}
    <root>/<ds>/<ds>.zarr/recon-1/labels/groundtruth/crop<N>/<class>/{s0,s1}

Raw intensities are drawn from the label shapes (nuclei, ER sheets, mitochondria) plus noise,
so a small network learns them in minutes. Generated once per folder, then reused. As in the
challenge's data, datasets need not share a voxel size: the second is anisotropic
([5.24, 4, 4] nm, like jrc_hela-2's s1), so the default 8 nm run resamples it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

DEMO_VERSION = 3
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
    # dataset index -> (voxel size [z, y, x] nm, raw shape, crop shape) of a dataset on its own grid;
    # the others use voxel_nm, raw_shape and crop_shape
    grids: dict = field(default_factory=lambda: {1: ((5.24, 4.0, 4.0), (64, 256, 256), (48, 160, 160))})
    levels: int = 2  # pyramid levels written (s1 = 2x s0, ...)
    finer_levels: int = 0  # levels finer than the generated grid, made by repeating its voxels (the
    # challenge's 2 nm s0 under a 4 nm level, without generating 8x the voxels)
    # (dataset index, crop index) -> classes written at their coarsest level only (e.g. nuc only at 32 nm)
    coarse_only: dict = field(default_factory=dict)

    def grid(self, index: int) -> tuple[np.ndarray, tuple[int, int, int], tuple[int, int, int]]:
        voxel, raw_shape, crop_shape = self.grids.get(index, ((self.voxel_nm,) * 3, self.raw_shape, self.crop_shape))
        return np.asarray(voxel, dtype=float), tuple(raw_shape), tuple(crop_shape)


def multiscales_attrs(name: str, scales: list[list[float]], translations: list[list[float]],
                      paths: list[str] | None = None) -> dict:
    """OME-NGFF 0.4 `multiscales` metadata for levels s0, s1, ... (or `paths`; axes z, y, x in nm)."""
    paths = paths or [f"s{i}" for i in range(len(scales))]
    return {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
                "datasets": [
                    {
                        "path": path,
                        "coordinateTransformations": [
                            {"type": "scale", "scale": list(map(float, s))},
                            {"type": "translation", "translation": list(map(float, t))},
                        ],
                    }
                    for path, s, t in zip(paths, scales, translations)
                ],
            }
        ]
    }


def write_multiscale(group: zarr.Group, name: str, volume: np.ndarray, voxel_nm, translation_nm, chunks,
                     is_label: bool, levels: int = 2, finer: int = 0, only_coarsest: bool = False) -> None:
    """Write a pyramid with its NGFF transforms (voxel centres at translation): `finer` levels
    made by repeating `volume`'s voxels, `volume` itself, then 2x-downsampled ones up to `levels`
    in all. `only_coarsest`: list just the last level, as a class annotated only coarsely."""
    voxel = np.asarray(voxel_nm, dtype=float) / 2**finer
    data = volume
    for _ in range(finer):
        data = data.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    # the finest voxel's centre; a coarser voxel's centre sits half a fine voxel further in: (2v - v) / 2
    origin = np.asarray(translation_nm, dtype=float) - voxel * (2**finer - 1) / 2
    pyramid = []
    for k in range(levels):
        if k:
            data = volume if k == finer else downsample2(data, is_label)
        pyramid.append((f"s{k}", data, voxel * 2**k, origin + voxel * (2**k - 1) / 2))
    if only_coarsest:
        pyramid = pyramid[-1:]
    sub = group.create_group(name)
    sub.attrs.update(multiscales_attrs(name, [p[2].tolist() for p in pyramid], [p[3].tolist() for p in pyramid],
                                       [p[0] for p in pyramid]))
    for level, values, _, _ in pyramid:
        arr = sub.create_array(level, shape=values.shape, chunks=tuple(min(c, n) for c, n in zip(chunks, values.shape)),
                               dtype=values.dtype)
        arr[...] = values


def downsample2(volume: np.ndarray, is_label: bool) -> np.ndarray:
    z, y, x = (s // 2 * 2 for s in volume.shape)
    blocks = volume[:z, :y, :x].reshape(z // 2, 2, y // 2, 2, x // 2, 2).astype(np.float32)
    mean = blocks.mean(axis=(1, 3, 5))
    return (mean >= 0.5).astype(np.uint8) if is_label else np.round(mean).astype(volume.dtype)


def smooth_noise(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Gaussian-filtered white noise (via FFT), scaled to unit standard deviation."""
    noise = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij", sparse=True)
    sigmas = np.broadcast_to(np.asarray(sigma_vox, dtype=float), (len(shape),))  # per axis
    gain = np.exp(-2 * np.pi**2 * sum((s * f) ** 2 for s, f in zip(sigmas, freqs)))
    field_ = np.real(np.fft.ifftn(np.fft.fftn(noise) * gain))
    return field_ / (field_.std() + 1e-8)


def ellipsoids(rng, shape, count, radius_range, margin: float = 0.0, stretch=1.0) -> tuple[np.ndarray, list]:
    """Union of `count` random ellipsoids and their centres (kept `margin` of the extent inside);
    radii in voxels times `stretch` per axis (an anisotropic grid's voxels per 8 nm)."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, dtype=bool)
    centres = []
    for _ in range(count):
        centre = [rng.uniform(margin * n, (1 - margin) * n) for n in shape]
        radii = rng.uniform(*radius_range, size=3) * stretch
        mask |= ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1
        centres.append(centre)
    return mask, centres


def synthetic_volume(rng: np.random.Generator, spec: DemoSpec, index: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], list]:
    """One raw volume (uint8) of dataset `index`, the binary mask of each class on the same grid,
    nucleus centres. Sizes are set in 8 nm voxels, stretched on another grid."""
    voxel, shape, _ = spec.grid(index)
    stretch = 8.0 / voxel  # voxels per 8 nm, per axis
    scale = min(np.asarray(shape[1:]) / stretch[1:]) / 192  # structure sizes follow the volume's extent
    nuc, centres = ellipsoids(rng, shape, count=2, radius_range=(28 * scale, 44 * scale), margin=0.25, stretch=stretch)
    mito = ellipsoids(rng, shape, count=int(40 * scale**2) + 4, radius_range=(4, 9), stretch=stretch)[0] & ~nuc
    er = (np.abs(smooth_noise(rng, shape, sigma_vox=4.0 * stretch)) < 0.12) & ~nuc & ~mito
    raw = np.full(shape, INTENSITY["background"], dtype=np.float32)
    for name, mask in (("nuc", nuc), ("er", er), ("mito", mito)):
        raw[mask] = INTENSITY[name]
    raw += 12 * smooth_noise(rng, shape, sigma_vox=6.0 * stretch)  # slow shading, as in real stacks
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
    voxel, raw_shape, crop_shape = spec.grid(index)
    raw, masks, centres = synthetic_volume(rng, spec, index)
    store = zarr.open_group(str(root / name / f"{name}.zarr"), mode="w", zarr_format=2)
    # a dataset origin that is not zero, so world -> voxel mapping is exercised
    raw_translation = np.array([40.0, 80.0, 120.0]) * (index + 1)
    recon = store.create_group("recon-1")
    pyramid = dict(levels=spec.levels + spec.finer_levels, finer=spec.finer_levels)
    write_multiscale(recon.create_group("em"), "fibsem-uint8", raw, voxel, raw_translation, spec.chunks, False, **pyramid)
    groundtruth = recon.create_group("labels").create_group("groundtruth")
    crop_id = first_crop
    for k, corner in enumerate(crop_origins(rng, raw_shape, crop_shape, spec.crops_per_dataset, centres)):
        window = tuple(slice(c, c + n) for c, n in zip(corner, crop_shape))
        crop = groundtruth.create_group(f"crop{crop_id}")
        translation = raw_translation + np.asarray(corner) * voxel
        for cls in CLASSES:
            if cls in spec.missing.get((index, k), ()):
                continue
            write_multiscale(crop, cls, masks[cls][window].astype(np.uint8), voxel, translation, spec.chunks, True,
                             only_coarsest=cls in spec.coarse_only.get((index, k), ()), **pyramid)
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
