"""Layer 1 for legacy configs: each small config.py in configs/ translates to overrides whose
composed config holds the expected values; a representative subset also trains 2 steps."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cellmap_train.legacy import overrides
from cellmap_train.legacy.fold import LocalDef, Ref
from cellmap_train.legacy.mapping import READ
from cellmap_train.legacy.reader import read_config
from cellmap_train.legacy.tested_classes import TESTED_CLASSES
from cellmap_train.legacy.translate import translate_file

CONFIGS = Path(__file__).parent / "configs"
ABSENT = object()
UNET, RESNET, VIT = "cellmap_train.models.UNet", "cellmap_train.models.ResNet", "cellmap_train.models.ViTVNet"
ARRAY_128 = {"shape": [1, 128, 128], "scale": [8, 8, 8]}

# What a config that sets nothing composes to: the challenge's defaults.
DEFAULTS = {
    "lr": 1e-4, "batch_size": 8, "epochs": 1000, "iterations_per_epoch": 1000, "seed": 42, "classes": ["nuc", "er"],
    "model._target_": UNET, "model.spatial_dims": 2, "model.out_channels": 2, "model.base_features": 64,
    "input_array_info": ARRAY_128, "target_array_info": ARRAY_128,
    "optimizer._target_": "torch.optim.RAdam", "optimizer.decoupled_weight_decay": True, "optimizer.lr": 1e-4,
    "scheduler._target_": "torch.optim.lr_scheduler.ConstantLR", "loss._target_": "cellmap_train.engine.losses.MaskedBCELoss",
    "data.force_all_classes": "validate", "data.make_demo": False, "loss.pos_weight": "auto",
    "device": None, "transforms.train.intensity": None, "transforms.train.raw.mode": "unit",
    "transforms.val.raw.mode": "unit", "hydra.run.dir": str(CONFIGS),  # csc train runs in the config's folder
}
INTENSITY = "transforms.train.intensity"
NORMALISER = "cellmap_train.data.transforms.NormalizeRaw"
ADAMW, ADAM = "torch.optim.AdamW", "torch.optim.Adam"
TABLE = {
    "c01_literals": {"lr": 3e-4, "batch_size": 4, "epochs": 3, "iterations_per_epoch": 20, "seed": 7,
                     "classes": ["nuc", "mito"], "input_array_info": {"shape": [1, 64, 64], "scale": [16, 16, 16]},
                     "target_array_info": {"shape": [1, 64, 64], "scale": [16, 16, 16]}, "optimizer.lr": 3e-4},
    "c02_arithmetic": {"lr": pytest.approx(3e-4), "batch_size": 8, "epochs": 100, "iterations_per_epoch": 30, "seed": 3,
                       "optimizer.lr": pytest.approx(3e-4)},
    "c03_paths": {"model_name": "my_unet", "model_save_path": "checkpoints/exp2/{model_name}_{epoch}.pth",
                  "logs_save_path": "tensorboard/{model_name}", "datasplit_path": "splits/exp2_3.csv"},
    "c04_len_classes": {"classes": ["nuc", "er", "mito"], "model.out_channels": 3},
    "c05_tested_classes": {"classes": list(TESTED_CLASSES), "model.out_channels": 48},
    "c06_tested_slice": {"classes": ["nuc", "golgi", "mito"], "model.out_channels": 3},
    "c07_unet2d_trilinear": {"model.upsample": "bilinear"},
    "c08_unet3d": {"classes": ["mito"], "model.spatial_dims": 3, "model.out_channels": 1,
                   "input_array_info": {"shape": [64, 64, 64], "scale": [8, 8, 8]},
                   "target_array_info": {"shape": [64, 64, 64], "scale": [8, 8, 8]}},
    "c09_resnet2d": {"model._target_": RESNET, "model.ngf": 32, "model.n_blocks": 4, "model.base_features": ABSENT},
    "c10_resnet3d_norm": {"model._target_": RESNET, "model.spatial_dims": 3, "model.norm": "batch",
                          "model.n_downsampling": 1, "model.base_features": ABSENT,
                          "input_array_info": {"shape": [32, 32, 32], "scale": [8, 8, 8]},
                          "target_array_info": {"shape": [32, 32, 32], "scale": [8, 8, 8]}},
    "c11_vitnet": {"model._target_": VIT, "model.spatial_dims": None, "model.img_size": [32, 32, 32], "model_name": "3d_vnet",
                   "model.base_features": 16, "input_array_info": {"shape": [32, 32, 32], "scale": [8, 8, 8]},
                   "target_array_info": {"shape": [32, 32, 32], "scale": [8, 8, 8]}},
    "c12_model_by_name": {"model._target_": RESNET, "model.spatial_dims": 3, "model.ngf": 16, "model_name": "3d_resnet",
                          "model.base_features": ABSENT, "input_array_info": {"shape": [16, 64, 64], "scale": [8, 8, 8]},
                          "target_array_info": {"shape": [16, 64, 64], "scale": [8, 8, 8]}},
    "c13_adamw_instance": {"lr": 1e-3, "optimizer._target_": ADAMW, "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.05,
                           "optimizer.decoupled_weight_decay": ABSENT},
    "c14_optimizer_class": {"lr": 0.01, "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 0.01,
                            "optimizer.decoupled_weight_decay": ABSENT},
    "c15_adam_betas": {"lr": 2e-4, "optimizer._target_": ADAM, "optimizer.lr": 2e-4, "optimizer.betas": [0.8, 0.99],
                       "optimizer.decoupled_weight_decay": ABSENT},
    "c16_custom_optimizer": {"lr": 0.01, "optimizer._target_": "torch.optim.Adagrad", "optimizer.lr": 0.01,
                             "optimizer.lr_decay": 0.001, "optimizer.decoupled_weight_decay": ABSENT},
    "c17_step_scheduler": {"epochs": 40, "scheduler._target_": "torch.optim.lr_scheduler.StepLR", "scheduler.step_size": 10,
                           "scheduler.gamma": 0.1, "trainer.scheduler_interval": "epoch"},
    "c18_onecycle_instance": {"lr": 1e-3, "optimizer._target_": ADAMW, "optimizer.decoupled_weight_decay": ABSENT,
                              "optimizer.lr": 1e-3, "scheduler._target_": "torch.optim.lr_scheduler.OneCycleLR",
                              "scheduler.max_lr": 0.01, "scheduler.pct_start": 0.1},
    "c19_criterion": {"loss.pos_weight": [2.0, 0.5]},
    "c20_spatial_3d": {"model.spatial_dims": 3, "input_array_info": {"shape": [32, 32, 32], "scale": [8, 8, 8]},
                       "target_array_info": {"shape": [32, 32, 32], "scale": [8, 8, 8]},
                       "transforms.train.spatial.mirror": {"z": 0.1, "y": 0.5, "x": 0.5},
                       "transforms.train.spatial.transpose": ["x", "y", "z"],
                       "transforms.train.spatial.rotate": {a: [-180, 180] for a in "zyx"}},
    "c21_no_spatial": {"transforms.train.spatial": None},
    "c22_shape_two_dims": {"input_array_info": {"shape": [96, 96], "scale": [8, 8]},
                           "target_array_info": {"shape": [96, 96], "scale": [8, 8]}},
    "c23_target_differs": {"target_array_info": {"shape": [1, 64, 64], "scale": [16, 16, 16]}},
    "c24_trainer_options": {"trainer.gradient_accumulation_steps": 2, "trainer.max_grad_norm": 1.0,
                            "trainer.low_is_best": True, "trainer.best_metric": "loss/val", "data.weighted_sampler": False,
                            "data.force_all_classes": True, "data.dataloader_kwargs.num_workers": 1,
                            "data.dataloader_kwargs.pin_memory": False, "validation_batch_limit": 5,
                            "data.mutual_exclusion": True, "trainer.smoothing_window": 3},
    "c25_control_flow": {"batch_size": 3, "classes": ["nuc", "er", "mito"], "model.out_channels": 3, "epochs": 5,
                         "iterations_per_epoch": 6, "input_array_info": {"shape": [1, 64, 64], "scale": [8, 8, 8]},
                         "target_array_info": {"shape": [1, 64, 64], "scale": [8, 8, 8]}},
    "c26_device_s3": {"device": "cpu", "use_s3": True, "validation_prob": 0.2, "validation_time_limit": 30.5,
                      "load_model": "best", "model_to_load": "older_run", "data.search_path": "s3://janelia-cosem-datasets"},
    "c27_custom_importable_model": {"model._target_": "torch.nn.Conv2d", "model._args_": [1, 2], "model.kernel_size": 3,
                                    "model.padding": 1, "model.out_channels": ABSENT, "model.spatial_dims": ABSENT,
                                    "model.base_features": ABSENT},
    "c28_value_transforms": {"transforms.train.target.threshold": 0.3},
    "c29_side_effects": {"lr": 2e-3, "optimizer.lr": 2e-3},
    "c30_device_idiom": {"device": None},
    "c31_device_ddp_rank": {"device": None},
    "c32_device_string_idiom": {"device": None},  # not "cuda": the machine that trains decides
    "c33_batch_per_gpu": {"batch_size": 4, "device": "cuda:0"},
    "c34_external_model_name": {"model_name": "mednext", "model._target_": ABSENT,  # ???: named with the override
                                "model.spatial_dims": ABSENT, "model.out_channels": 2, "model_kwargs": {"kernel_size": 3},
                                "lr": 3e-4, "optimizer.lr": 3e-4},
    "c35_normalize_train_only": {"transforms.train.raw": {"_target_": NORMALISER, "mode": "meanstd", "mean": 127.5, "std": 63.75},
                                 "transforms.train.raw.mode": "meanstd", "transforms.val.raw.mode": "unit"},  # the challenge's default for the set not given
    "c36_cellmap_normalize_both": {"transforms.train.raw": {"_target_": NORMALISER, "mode": "meanstd", "mean": 10.0, "std": 200.0},
                                   "transforms.train.raw.mode": "meanstd", "transforms.val.raw.mode": "meanstd", "transforms.val.raw.std": 200.0},
    "c37_cellmap_intensity": {f"{INTENSITY}.gamma.gamma": [0.7, 1.3], f"{INTENSITY}.gamma.p": 1.0,
                              f"{INTENSITY}.contrast.factor": [0.8, 1.2], f"{INTENSITY}.contrast.p": 0.5,
                              f"{INTENSITY}.blur.sigma": 1.0, f"{INTENSITY}.blur.dims": 3, f"{INTENSITY}.blur.kernel_size": 5,
                              f"{INTENSITY}.noise.std": 0.05, f"{INTENSITY}.noise.mean": 0.0, f"{INTENSITY}.noise.p": 1.0,
                              "transforms.val.intensity": ABSENT},
    "c38_torchvision_intensity": {f"{INTENSITY}.gamma": None, f"{INTENSITY}.contrast.factor": [0.7, 1.3],
                                  f"{INTENSITY}.blur.sigma": [0.1, 2.0], f"{INTENSITY}.blur.p": 0.25,
                                  f"{INTENSITY}.blur.dims": 2, f"{INTENSITY}.blur.kernel_size": 5,
                                  f"{INTENSITY}.noise.std": 0.1, f"{INTENSITY}.noise.p": 1.0},
    "c39_base_experiment_path": {"hydra.run.dir": str(CONFIGS / "runs" / "exp1"),
                                 "model_save_path": str(CONFIGS / "ckpt" / "{model_name}_{epoch}.pth"),
                                 "logs_save_path": "tensorboard/{model_name}", "datasplit_path": "datasplit.csv"},
    "c40_one_named_array": {"input_array_info": {"shape": [1, 64, 64], "scale": [8, 8, 8]},
                            "target_array_info": {"shape": [1, 64, 64], "scale": [8, 8, 8]}},
    "c41_dataloader_only": {"batch_size": 2},
    "c42_helpers_and_typos": {"lr": 1e-4, "input_array_info": {"shape": [1, 64, 64], "scale": [8, 8, 8]},
                              "target_array_info": {"shape": [1, 64, 64], "scale": [8, 8, 8]}},
    "c43_device_if_else": {"device": None, "batch_size": 16},  # the same either way: known without the machine
}
# The lines on stderr a construct must give (`LINE: name: words`), beside its overrides.
DEVICE_AUTO = "device=null: cuda, then mps, then cpu on the machine that trains"
NOTES = {
    "c30_device_idiom": ["2: device: depends on torch.cuda.is_available(); " + DEVICE_AUTO],
    "c31_device_ddp_rank": ["4: device: depends on the environment variable LOCAL_RANK (torchrun sets it", DEVICE_AUTO,
                            "3: local_rank: not a setting the challenge's train() reads (a helper of the file)"],
    "c32_device_string_idiom": ["2: device: depends on torch.cuda.is_available(); " + DEVICE_AUTO],
    "c33_batch_per_gpu": ["3: batch_size: the file multiplies 4 by torch.cuda.device_count(), the GPU count; batch_size "
                          "here is per process, so it is 4: `torchrun --standalone --nproc_per_node=N -m cellmap_train"],
    "c34_external_model_name": ["2: model_name: 'mednext' is no model the challenge builds",
                                "add model=custom model._target_=<package.Class>"],
    "c35_normalize_train_only": ["3: val_raw_value_transforms: not set: the challenge validates with its default ([0, 1])"],
    "c36_cellmap_normalize_both": ["2: raw_transforms: not a setting the challenge's train() reads (a helper of the file)"],
    "c37_cellmap_intensity": ["4: train_raw_value_transforms: RandomGamma -> transforms.train.intensity.gamma (p=1.0, gamma=[0.7, 1.3])",
                              "4: train_raw_value_transforms: RandomContrast -> transforms.train.intensity.contrast (p=0.5",
                              "4: train_raw_value_transforms: GaussianBlur -> transforms.train.intensity.blur",
                              "4: train_raw_value_transforms: GaussianNoise -> transforms.train.intensity.noise",
                              "12: val_raw_value_transforms: GaussianNoise: validation samples are never augmented here"],
    "c38_torchvision_intensity": ["3: train_raw_value_transforms: ColorJitter -> transforms.train.intensity.contrast",
                                  "3: train_raw_value_transforms: RandomErasing has no equivalent in transforms/; ignored"],
    "c39_base_experiment_path": [f"2: model_save_path: relative to the config file's folder, as the challenge runs there: {CONFIGS}/ckpt/"],
    "c40_one_named_array": ["1: input_array_info: the one named array 'raw' is the input",
                            "2: target_array_info: the one named array 'labels' is the target"],
    "c41_dataloader_only": ["2: train_micro_batch_size_per_gpu: read only by the challenge's get_dataloader(config=...)",
                            "3: random_validation: read only by the challenge's get_dataloader(config=...)",
                            "4: kwargs: read only by the challenge's get_dataloader(config=...)"],
    "c42_helpers_and_typos": ["2: learning_rat: not a setting the challenge's train() reads; did you mean learning_rate?",
                              "3: scale: not a setting the challenge's train() reads (a helper of the file)",
                              "5: run_name: reads the environment variable CELLMAP_LEGACY_TEST_UNSET of this machine "
                              "(unset here, so 'default-run')"],
    "c43_device_if_else": ["2: device: depends on torch.cuda.is_available(); " + DEVICE_AUTO],
}
# Trained 2 steps each (in this process, a few seconds per config): one per model family and the
# optimizer/scheduler/loss/transform paths; all 29 would add minutes to the suite on 2 cores.
TRAINED = ["c01_literals", "c09_resnet2d", "c11_vitnet", "c16_custom_optimizer", "c18_onecycle_instance",
           "c20_spatial_3d", "c27_custom_importable_model", "c37_cellmap_intensity"]


def test_table_covers_every_config_file():
    assert sorted(TABLE) == sorted(p.stem for p in CONFIGS.glob("c*.py"))
    assert len(TABLE) >= 25


def composed_value(cfg, key):
    node = OmegaConf.select(cfg, key, default=ABSENT)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


@pytest.mark.parametrize("name", sorted(NOTES))
def test_translation_reports_each_construct(name):
    lines = [f"{note.line}: {note.name}: {note.why}" for note in translate_file(CONFIGS / f"{name}.py").notes]
    for words in NOTES[name]:
        assert any(words in line for line in lines), (words, lines)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_variable_is_mapped_or_reported(name):
    """Nothing in a file vanishes: a variable the challenge's train() reads is mapped (or noted),
    any other one has a line on stderr."""
    noted = {note.name for note in translate_file(CONFIGS / f"{name}.py").notes}
    variables = {k for k, v in read_config(CONFIGS / f"{name}.py").values.items()
                 if not k.startswith("__") and not isinstance(v, (Ref, LocalDef))}
    assert not {v for v in variables if v not in READ and v not in noted}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_translation_composes_to_expected_values(compose_cfg, name):
    cfg = compose_cfg(*overrides(CONFIGS / f"{name}.py"))
    defaults = {k: v for k, v in DEFAULTS.items() if not any(key.startswith(f"{k}.") for key in TABLE[name])}
    expected = {**defaults, **TABLE[name]}
    if expected["model._target_"] != UNET and "model.base_features" not in TABLE[name]:
        expected["model.base_features"] = ABSENT
    for key, value in expected.items():
        assert composed_value(cfg, key) == value, key


def small_overrides(cfg) -> list[str]:
    """Make any translated config train in seconds on the demo data (these come last, so they win)."""
    source = list(cfg.input_array_info.shape)
    shape = [16, 32, 32] if len(source) == 3 and source[0] > 1 else [1, 32, 32]
    sizes = {UNET: ["model.base_features=4", "model.depth=2"],
             RESNET: ["model.ngf=4", "model.n_blocks=1", "model.n_downsampling=1"],
             VIT: ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.mlp_dim=16", "model.base_features=4",
                   "model.patch_size=8"]}.get(cfg.model._target_, [])
    info = f"{{shape:[{','.join(map(str, shape))}],scale:[8,8,8]}}"
    # trainer=smoke's one epoch of two steps, said again: a file's own epochs= would win over the preset
    return ["data=demo", "trainer=smoke", "epochs=1", "iterations_per_epoch=2", "device=cpu", "load_model=null", "batch_size=2",
            f"input_array_info={info}",
            f"target_array_info={info}", "data.dataloader_kwargs={num_workers:0,persistent_workers:false,prefetch_factor:null}",
            "classes=[nuc,er]", "validation_batch_limit=1", *sizes]


@pytest.mark.parametrize("name", TRAINED)
def test_translated_config_trains_two_steps(compose_cfg, run_main, tmp_path, name):
    translated = overrides(CONFIGS / f"{name}.py")
    cfg = compose_cfg(*translated)
    proc = run_main(*translated, *small_overrides(cfg), f"hydra.run.dir={tmp_path / 'run'}", check=True)
    assert "epoch 1/1" in proc.stdout + proc.stderr
    assert list((tmp_path / "run" / "checkpoints").glob("*_1.pth"))
    if "loss.pos_weight=auto" in translated:  # weight_loss, the challenge's default: weights from the demo crops
        assert "loss.pos_weight=auto (background / foreground in the training crops): nuc " in proc.stdout + proc.stderr
