"""Samples at the requested voxel size from levels that do not have it, checked against content
defined in world coordinates: a smooth raw field and balls, written at the challenge's
anisotropic voxel sizes ([2.62, 2, 2] nm x 2^k) and a class annotated only at 32 nm."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cellmap_train.data.dataset import ArrayInfo, Crop
from cellmap_train.data.datasplit import CropEntry
from cellmap_train.data.resample import Placement, onto_grid
from cellmap_train.data.transforms import SpatialTransform

S0 = np.array([2.62, 2.0, 2.0])
RAW_T0 = np.array([10.0, 20.0, 30.0])  # world centre of raw voxel 0 at s0
RAW_SHAPE0 = np.array([100, 160, 160])  # 262 x 320 x 320 nm
CROP_SCALE = 2 * S0  # annotated at [5.24, 4, 4], as a crop of jrc_hela-2 at "4 nm"
CROP_SHAPE = np.array([36, 56, 56])
CENTRE = np.array([141.0, 180.0, 190.0])  # of the balls
RADIUS, COARSE_RADIUS = 60.0, 70.0
UNKNOWN_X = CENTRE[2] + 40  # beyond it, the crop's first class is unknown (255)
SEMANTIC = {"cellmap": {"annotation": {"annotation_type": {"type": "semantic_segmentation",
                                                           "encoding": {"absent": 0, "present": 1, "unknown": 255}}}}}


def raw_field(world: np.ndarray) -> np.ndarray:
    """A smooth raw intensity at world points [..., 3] (nm): linear interpolation errs < 1 here."""
    z, y, x = world[..., 0], world[..., 1], world[..., 2]
    return 128 + 80 * np.sin(2 * np.pi * z / 180) * np.sin(2 * np.pi * y / 220 + 0.3) * np.cos(2 * np.pi * x / 260)


def voxel_centres(shape, scale, translation) -> np.ndarray:
    axes = [t + s * np.arange(n) for n, s, t in zip(shape, scale, translation)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def ball(world, radius) -> np.ndarray:
    return np.linalg.norm(world - CENTRE, axis=-1) <= radius


@pytest.fixture(scope="module")
def anisotropic(tmp_path_factory):
    """A dataset with raw at [2.62, 2, 2] x 2^k (k = 0..3), a crop whose `mito` is annotated at
    [5.24, 4, 4] x 2^k (unknown beyond UNKNOWN_X) and whose `nuc` exists only at [41.92, 32, 32]."""
    from tests.data.conftest import write_ngff

    root = tmp_path_factory.mktemp("aniso") / "jrc_hela-2" / "jrc_hela-2.zarr"
    levels = []
    for k in range(4):
        scale, shape = S0 * 2**k, RAW_SHAPE0 // 2**k
        translation = RAW_T0 + S0 * (2**k - 1) / 2
        levels.append((raw_field(voxel_centres(shape, scale, translation)).astype(np.float32), scale, translation))
    write_ngff(root / "recon-1/em/fibsem-uint8", levels, chunks=(16, 32, 32))
    crop_t0 = levels[1][2] + CROP_SCALE * np.array([8, 14, 12])  # on the raw's s1 grid
    mito = []
    for k in range(3):
        scale, shape, translation = CROP_SCALE * 2**k, CROP_SHAPE // 2**k, crop_t0 + CROP_SCALE * (2**k - 1) / 2
        world = voxel_centres(shape, scale, translation)
        values = np.where(world[..., 2] > UNKNOWN_X, 255, ball(world, RADIUS)).astype(np.uint8)
        mito.append((values, scale, translation))
    write_ngff(root / "recon-1/labels/groundtruth/crop7/mito", mito, s0_attrs=SEMANTIC)
    coarse_scale, coarse_t = CROP_SCALE * 8, crop_t0 + CROP_SCALE * 7 / 2
    coarse_shape = np.ceil(CROP_SHAPE / 8).astype(int)
    nuc = ball(voxel_centres(coarse_shape, coarse_scale, coarse_t), COARSE_RADIUS).astype(np.uint8)
    write_ngff(root / "recon-1/labels/groundtruth/crop7/nuc", [(nuc, coarse_scale, coarse_t)])
    return CropEntry("train", str(root), "recon-1/em/fibsem-uint8", str(root), "recon-1/labels/groundtruth/crop7",
                     ("mito", "nuc"))


def crop_at(entry, scale: float, shape) -> Crop:
    info = ArrayInfo(tuple(shape), (float(scale),) * 3)
    return Crop(entry, ["mito", "nuc"], info, info, None)


def sample_world(centre, shape, scale, read_map=np.eye(3)) -> np.ndarray:
    """World position of each voxel of a sample of `shape` centred at `centre` (no snapping: no
    label level has the requested voxel size here), `read_map` its spatial draw's."""
    offsets = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"), axis=-1)
    return centre + (offsets @ read_map.T) * scale


def near_surface(world, radius, level_scale) -> np.ndarray:
    """Voxels whose nearest level voxel may lie across the ball's surface: within half that
    level voxel's diagonal of it."""
    return np.abs(np.linalg.norm(world - CENTRE, axis=-1) - radius) <= np.linalg.norm(level_scale) / 2 + 1e-6


@pytest.mark.parametrize("scale, shape, raw_level", [(8.0, (12, 16, 16), "s1"), (4.0, (20, 30, 30), "s0")])
def test_samples_at_8_and_4_nm_match_the_world_content(anisotropic, scale, shape, raw_level):
    crop = crop_at(anisotropic, scale, shape)
    assert crop.raw_level.path.endswith(raw_level)  # the coarsest level nowhere coarser than asked
    centre = CENTRE + np.array([3.3, -5.1, 2.7])
    raw, labels = crop.read(centre)
    world = sample_world(centre, shape, scale)
    assert raw.shape == shape and labels.shape == (2, *shape)
    assert np.abs(raw - raw_field(world)).max() < 1.0  # linear interpolation of a smooth field
    mito, nuc = labels
    known = world[..., 2] < UNKNOWN_X - CROP_SCALE[2] / 2  # unknown stays unknown, never 0 or 1
    unknown = world[..., 2] > UNKNOWN_X + CROP_SCALE[2] / 2
    assert not np.isnan(mito[known]).any() and np.isnan(mito[unknown]).all()
    assert set(np.unique(mito[~np.isnan(mito)])) <= {0.0, 1.0}
    mito_level = CROP_SCALE * (2 if scale == 8 else 1)
    wrong = known & (mito != ball(world, RADIUS)) & ~near_surface(world, RADIUS, mito_level)
    assert not wrong.any()
    assert (mito[known] == 1).any() and (mito[known] == 0).any()
    # nuc exists only at 32 nm: upsampled (nearest), not dropped
    assert "nuc" in crop.entry.classes and not np.isnan(nuc).any()
    assert not ((nuc != ball(world, COARSE_RADIUS)) & ~near_surface(world, COARSE_RADIUS, CROP_SCALE * 8)).any()


@pytest.mark.parametrize("shape, rotate", [((1, 24, 24), {"z": [-180, 180]}),
                                           ((12, 14, 14), {"z": [-180, 180], "x": [-30, 30]})])
def test_resampled_rotated_samples_keep_raw_and_labels_on_the_same_world_points(anisotropic, shape, rotate):
    crop = crop_at(anisotropic, 8.0, shape)
    spatial = SpatialTransform({"y": 0.5, "x": 0.5}, ["x", "y"], rotate, read_context=True)
    for seed in range(6):
        draw = spatial.draw(np.random.default_rng(seed), shape, shape)
        centre = CENTRE + np.random.default_rng(seed + 100).uniform(-8, 8, 3)
        raw, labels = crop.read(centre, draw)
        world = sample_world(centre, draw.out_shapes()[0], 8.0, draw.read_map())
        raw_expected = raw_field(world)
        assert np.abs(raw - raw_expected).max() < 1.0
        mito = labels[0]
        low, high = crop.bounds()  # outside the crop: unknown
        inside = np.all((world > low + CROP_SCALE) & (world < high - CROP_SCALE), axis=-1)
        assert np.isnan(mito[np.any((world < low - CROP_SCALE) | (world > high + CROP_SCALE), axis=-1)]).all()
        known = inside & (world[..., 2] < UNKNOWN_X - CROP_SCALE[2])
        assert known.mean() > 0.3
        assert not np.isnan(mito[known]).any()
        assert not (known & (mito != ball(world, RADIUS)) & ~near_surface(world, RADIUS, 2 * CROP_SCALE)).any()


def test_the_resampled_path_equals_the_exact_one_when_the_grids_coincide():
    """Flips, axis order and rotation folded into the interpolation give what the draw's own
    turn gives on a grid read as is: labels identical, raw within a rounding."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, size=(24, 44, 44), dtype=np.uint8)  # room for any turn's margins
    labels = np.where(rng.random((2, 24, 44, 44)) < 0.1, np.nan, rng.integers(0, 2, (2, 24, 44, 44))).astype(np.float32)
    spatial = SpatialTransform({"z": 0.5, "y": 0.5, "x": 0.5}, ["x", "y"], {"z": [-180, 180], "y": [-20, 20]},
                               read_context=True)
    for seed in range(8):
        draw = spatial.draw(np.random.default_rng(seed), (10, 20, 20), (10, 20, 20))
        read = tuple(int(n) for n in np.asarray((10, 20, 20)) + 2 * draw.raw_margin)
        cut = tuple(slice((n - r) // 2, (n - r) // 2 + r) for n, r in zip(raw.shape, read))
        box_raw, box_labels = raw[cut], labels[(slice(None), *cut)]
        centre = (np.asarray(read) - 1) / 2
        exact = Placement((0, 0, 0), read, centre, np.ones(3), True)
        resampled = Placement((0, 0, 0), read, centre, np.ones(3), False)
        out = draw.out_shapes()[0]
        np.testing.assert_array_equal(onto_grid(box_labels, resampled, draw, out, True),
                                      onto_grid(box_labels, exact, draw, out, True))
        difference = onto_grid(box_raw, resampled, draw, out, False).astype(int) - onto_grid(box_raw, exact, draw, out, False)
        assert np.abs(difference).max() <= 1


def test_a_turn_in_a_plane_gives_the_same_before_or_after_the_third_axis_is_resampled(monkeypatch):
    """sample_linear interpolates the unmixed axis before or after the planes are turned, whichever
    is less work (`_turn_first`): trilinear either way, zeros from outside, equal to float32
    rounding. A 128^3 sample read at [5.24, 4, 4] for 8 nm turns first, a 2D one does not."""
    from cellmap_train.data import resample

    values = np.random.default_rng(1).random((1, 30, 60, 60), dtype=np.float32) * 255
    c, s = np.cos(0.7), np.sin(0.7)
    matrix = np.diag([8 / 5.24, 2.0, 2.0]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])  # turned about z
    centre, out = np.array([14.3, 29.6, 30.2]), (16, 24, 24)  # the turned corners reach outside: zeros
    results = []
    for first in (False, True):
        monkeypatch.setattr(resample, "_turn_first", lambda *args, first=first: first)
        results.append(resample.sample_linear(values, matrix, centre, out))
    assert results[0].shape == (1, *out) and (results[0] == 0).any()
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=1e-3)
    monkeypatch.undo()
    assert resample._turn_first((195, 256, 256), (128, 128, 128), [1, 2], 0)
    assert not resample._turn_first((2, 256, 256), (1, 128, 128), [1, 2], 0)


def test_a_run_at_8_nm_on_anisotropic_levels_uses_every_crop_and_class_and_learns(run_cli, tmp_path):
    """The challenge's default voxel size on a dataset at [2.62, 2, 2] x 2^k, one crop's nuc only
    at 32 nm: nothing is left out, the anisotropic crops validate, and the Dice climbs."""
    from cellmap_train.data.demo import DemoSpec, make_demo_data

    spec = DemoSpec(n_datasets=1, grids={0: ((5.24, 4.0, 4.0), (64, 256, 256), (48, 160, 160))}, finer_levels=1,
                    levels=4, coarse_only={(0, 1): ("nuc",)}, crops_per_dataset=5)
    data = make_demo_data(tmp_path / "data", spec)
    proc = run_cli("experiment=demo", f"data.search_path={data}", "data.make_demo=false", "hydra.run.dir=run",
                   "epochs=4", "validation_prob=0.4", check=True)
    log = proc.stdout + proc.stderr
    assert "WARNING" not in log, log  # no crop left out, no class unannotated anywhere
    assert re.search(r"(\d+) of \1 arrays have no level at the requested voxel size and are resampled from the level "
                     r"chosen for them; 1 class arrays annotated only coarser than 8x8x8 nm are upsampled", log), log
    split = (tmp_path / "run" / "datasplit.csv").read_text().splitlines()
    assert len(split) == 5 and any(row.startswith('"validate"') for row in split)
    match = re.search(r"epoch 1 ([0-9.]+) -> final ([0-9.]+)", proc.stdout)
    assert float(match.group(2)) > max(0.6, float(match.group(1))), proc.stdout
