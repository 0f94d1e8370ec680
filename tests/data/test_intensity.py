"""Intensity augmentations on known patterns: noise statistics, the gamma curve, contrast about the
mean, the blur kernel (2D and 3D, edges replicated); their probabilities, their randomness (only
the sample's generator) and the presets that turn them on for training samples only."""

from __future__ import annotations

import numpy as np
import pytest

from cellmap_train.data.intensity import (IntensityTransforms, RandomBlur, RandomContrast, RandomGamma, RandomNoise,
                                          blur_axis, gaussian_kernel)
from cellmap_train.data.transforms import BinarizeLabels, NormalizeRaw, SampleTransforms


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_noise_has_the_mean_and_std_asked_for():
    out = RandomNoise(p=1, std=0.1, mean=0.2)(np.zeros((1, 256, 256), np.float32), rng())
    assert out.dtype == np.float32 and out.shape == (1, 256, 256)
    assert out.mean() == pytest.approx(0.2, abs=0.003) and out.std() == pytest.approx(0.1, rel=0.02)
    stds = [RandomNoise(p=1, std=[0.0, 0.05])(np.zeros((1, 64, 64), np.float32), rng(s)).std() for s in range(40)]
    assert max(stds) < 0.053 and min(stds) < 0.01 < 0.04 < max(stds)  # drawn per sample across the range


def test_gamma_bends_the_sample_range_as_x_to_the_gamma():
    ramp = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 1, 101)
    np.testing.assert_allclose(RandomGamma(p=1, gamma=2.0)(ramp, rng()), ramp ** 2, atol=1e-6)
    np.testing.assert_allclose(RandomGamma(p=1, gamma=0.5)(ramp, rng()), np.sqrt(ramp), atol=1e-6)
    shifted = 10 + 10 * ramp  # mean/std-normalised raw: the curve is taken on the sample's own range
    np.testing.assert_allclose(RandomGamma(p=1, gamma=2.0)(shifted, rng()), 10 + 10 * ramp ** 2, rtol=1e-5)
    flat = np.full((1, 4, 4), 0.3, np.float32)
    assert np.array_equal(RandomGamma(p=1, gamma=2.0)(flat, rng()), flat)


def test_contrast_scales_about_the_mean_and_stays_in_the_sample_range():
    ramp = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 1, 101)
    lower = RandomContrast(p=1, factor=0.5)(ramp, rng())
    assert lower.mean() == pytest.approx(ramp.mean(), abs=1e-6) and lower.std() == pytest.approx(ramp.std() / 2, rel=1e-5)
    higher = RandomContrast(p=1, factor=2.0)(ramp, rng())
    assert higher.min() == 0 and higher.max() == 1  # saturated, not pushed outside
    np.testing.assert_allclose(higher[0, 0, 40:61], 0.5 + 2 * (ramp[0, 0, 40:61] - 0.5), atol=1e-6)


def test_blur_kernel_is_the_sampled_gaussian():
    kernel = gaussian_kernel(1.5, 5)
    x = np.arange(-5, 6)
    expected = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    np.testing.assert_allclose(kernel, expected / expected.sum(), rtol=1e-6)
    assert kernel.sum() == pytest.approx(1.0) and np.array_equal(kernel, kernel[::-1])


def test_2d_blur_of_an_impulse_is_the_outer_product_of_the_kernel():
    impulse = np.zeros((1, 21, 21), np.float32)
    impulse[0, 10, 10] = 1
    out = RandomBlur(p=1, sigma=1.0)(impulse, rng())
    kernel = gaussian_kernel(1.0, 3)  # radius: 3 sigmas
    expected = np.zeros((21, 21), np.float32)
    expected[7:14, 7:14] = np.outer(kernel, kernel)
    np.testing.assert_allclose(out[0], expected, atol=1e-7)
    assert out.sum() == pytest.approx(1.0, rel=1e-5)


def test_3d_blur_reaches_along_z_and_2d_blur_keeps_each_slice():
    impulse = np.zeros((9, 9, 9), np.float32)
    impulse[4, 4, 4] = 1
    kernel = gaussian_kernel(1.0, 2)
    three = RandomBlur(p=1, sigma=1.0, kernel_size=5)(impulse, rng())  # dims null: the sample's own (3D)
    np.testing.assert_allclose(three[2:7, 2:7, 2:7], np.einsum("i,j,k->ijk", kernel, kernel, kernel), atol=1e-7)
    two = RandomBlur(p=1, sigma=1.0, kernel_size=5, dims=2)(impulse, rng())
    assert two[4].sum() == pytest.approx(1.0, rel=1e-5) and not two[3].any() and not two[5].any()


def test_blur_replicates_the_edges():
    constant = np.full((1, 8, 8), 0.7, np.float32)
    np.testing.assert_allclose(RandomBlur(p=1, sigma=2.0)(constant, rng()), constant, rtol=1e-6)
    step = np.zeros((1, 1, 8), np.float32)
    step[..., 4:] = 1
    out = blur_axis(step, gaussian_kernel(1.0, 3), axis=2)
    assert out[0, 0, 0] == pytest.approx(0, abs=1e-3) and out[0, 0, -1] == pytest.approx(1, abs=1e-3)


def test_each_step_runs_with_its_probability_and_none_is_a_no_op():
    raw = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    steps = IntensityTransforms(noise=RandomNoise(p=0.3, std=0.1))
    changed = [not np.array_equal(steps(raw, rng(s)), raw) for s in range(2000)]
    assert np.mean(changed) == pytest.approx(0.3, abs=0.04)
    never = IntensityTransforms(gamma=RandomGamma(p=0), contrast=RandomContrast(p=0), blur=RandomBlur(p=0),
                                noise=RandomNoise(p=0))
    assert np.array_equal(never(raw, rng()), raw) and np.array_equal(IntensityTransforms()(raw, rng()), raw)


def test_a_sample_is_a_function_of_its_generator_only():
    steps = IntensityTransforms(RandomGamma(p=1), RandomContrast(p=1), RandomBlur(p=1), RandomNoise(p=1, std=0.05))
    raw = np.random.default_rng(7).random((1, 32, 32), dtype=np.float32)
    np.random.seed(1)  # the global generators play no part
    first = steps(raw.copy(), rng(3))
    np.random.seed(2)
    assert np.array_equal(first, steps(raw.copy(), rng(3)))
    assert not np.array_equal(first, steps(raw.copy(), rng(4)))


def test_sample_transforms_apply_them_to_training_samples_only():
    transforms = SampleTransforms(None, NormalizeRaw(), BinarizeLabels(), intensity=IntensityTransforms(noise=RandomNoise(p=1)))
    raw = np.full((1, 16, 16), 128, np.uint8)
    labels = np.zeros((2, 1, 16, 16), np.uint8)
    val_raw, val_labels = transforms.values(raw, labels, rng=None)
    np.testing.assert_allclose(val_raw, 128 / 255)
    train_raw, train_labels = transforms.values(raw, labels, rng=rng())
    assert train_raw.dtype == np.float32 and train_raw.std() > 0.01
    assert np.array_equal(train_labels, val_labels)  # labels are never touched


@pytest.mark.parametrize("preset,dims", [("intensity", 2), ("intensity_3d", 3)])
def test_presets_build_training_intensity_and_leave_validation_alone(compose_cfg, preset, dims):
    from hydra.utils import instantiate

    cfg = compose_cfg(f"transforms={preset}")
    train, val = instantiate(cfg.transforms.train), instantiate(cfg.transforms.val)
    assert [name for name, _ in train.intensity.steps] == ["gamma", "contrast", "blur", "noise"]
    assert val.intensity is None and len(train.spatial.rotate) == (1 if dims == 2 else 3)
    assert instantiate(compose_cfg("transforms=default").transforms.train).intensity is None


@pytest.mark.parametrize("make,words", [
    (lambda: RandomNoise(p=1.5), "p must be a probability"),
    (lambda: RandomNoise(std=[0.1, 0.0]), "std must be at least 0 with low <= high"),
    (lambda: RandomGamma(gamma=[0.0, 1.0]), "gamma must be above 0"),
    (lambda: RandomBlur(sigma=0), "sigma must be above 0"),
    (lambda: RandomBlur(dims=4), "dims must be 2, 3 or null"),
    (lambda: RandomBlur(kernel_size=4), "kernel_size must be an odd positive integer"),
    (lambda: RandomContrast(factor="high"), "factor must be a number or [low, high]"),
])
def test_bad_arguments_say_which_and_why(make, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        make()


def test_a_bad_value_on_the_command_line_is_one_line(run_main, tmp_path):
    proc = run_main("experiment=demo", "transforms=intensity", "transforms.train.intensity.noise.p=2",
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("cellmap_train: error: transforms.train.intensity.noise: ValueError: "
                                                    "p must be a probability in [0, 1], got 2")
