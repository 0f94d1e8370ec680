"""`python -m cellmap_train.predict` / `cellmap-train predict`: the Hydra entry (conf/predict.yaml).
Resolve the trained run, build its model and raw transform, list the targets, predict."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from cellmap_train.config.location import config_dir
from cellmap_train.errors import ConfigError, UserError, first_line
from cellmap_train.config.hydra_errors import one_line_hydra_errors

PROG = "cellmap_train.predict"


def build_predictor(cfg: DictConfig, run):
    """The run's model with its checkpoint's weights on the chosen device, and its raw transform."""
    from cellmap_train.engine.checkpoint import load_weights
    from cellmap_train.engine.settings import pick_device
    from cellmap_train.config.build import build_model
    from cellmap_train.predict.loading import model_spec
    from cellmap_train.predict.predictor import Predictor, PredictOptions
    from cellmap_train.predict.window import TileRunner

    spec = model_spec(run.config)
    model = build_model(OmegaConf.create(run.config["model"]), run.config.get("model_kwargs"))
    load_weights(model, run.state, run.checkpoint)
    transforms = (run.config.get("transforms") or {}).get("val")
    prepare = instantiate(transforms).raw if transforms else None
    device = pick_device(cfg.device)
    if cfg.amp not in ("auto", "bf16", "fp16", "none", None):
        raise ConfigError(f"amp={cfg.amp}: must be auto, bf16, fp16 or none")
    if not 0 <= float(cfg.overlap) < 1:
        raise ConfigError(f"overlap={cfg.overlap}: must be in [0, 1)")
    runner = TileRunner(model, device, 2 if spec.input_shape[0] == 1 else 3, bool(cfg.mirror), cfg.amp, prepare=prepare)
    options = PredictOptions(overlap=float(cfg.overlap), batch_size=int(cfg.batch_size or run.config.get("batch_size") or 8),
                             threshold=float(cfg.threshold), thresholds=dict(cfg.thresholds or {}),
                             chunks=tuple(int(c) for c in cfg.chunks), planes=int(cfg.get("planes", 1)))
    storage = cfg.storage_options if cfg.storage_options is not None else (run.config.get("data") or {}).get("storage_options")
    return Predictor(spec, runner, options, dict(storage or {}))


def list_targets(cfg: DictConfig, run, predictor):
    from cellmap_train.predict.targets import RAW_PATH, box_target, check_datasets, read_manifest, validation_targets

    classes = list(cfg.classes) if cfg.classes else run.classes
    unknown = [c for c in classes if c not in run.classes]
    if unknown:
        raise ConfigError(f"classes={classes}: the model does not predict {', '.join(unknown)} (it predicts {', '.join(run.classes)})")
    kind = cfg.crops if cfg.crops != "auto" else "manifest" if cfg.manifest else "box" if cfg.box.dataset else "validation"
    base = cfg.base_path or data_base_path(run.config)
    if kind == "validation":
        return validation_targets(run.datasplit(), classes, predictor.storage_options)
    if kind == "manifest":
        if not cfg.manifest:
            raise ConfigError("crops=manifest: set manifest=<test_crop_manifest.csv>")
        targets = read_manifest(to_absolute_path(cfg.manifest), base, classes)
        check_datasets(targets, predictor.storage_options)
        return targets
    if kind == "box":
        box = cfg.box
        if not box.dataset or box.low is None or box.high is None:
            raise ConfigError("crops=box: set box.dataset, box.low=[z,y,x] and box.high=[z,y,x] (nm)")
        raw = RAW_PATH.format(base=str(base).rstrip("/"), dataset=box.dataset)
        target = box_target(raw, box.name, list(box.low), list(box.high), list(box.voxel_size or predictor.spec.scale), classes)
        check_datasets([target], predictor.storage_options)
        return [target]
    raise ConfigError(f"crops={cfg.crops}: must be auto, validation, manifest or box")


def data_base_path(config: dict) -> str:
    """Where the run found its datasets (the demo's generated folder included)."""
    data = config.get("data") or {}
    base = str(data.get("search_path", "data"))
    if data.get("make_demo"):
        from cellmap_train.data.demo import DEMO_VERSION

        base = str(Path(base).expanduser() / f"v{DEMO_VERSION}")
    return base if "://" in base else to_absolute_path(base)


def predict(cfg: DictConfig) -> None:
    from cellmap_train.predict.loading import find_trained
    from cellmap_train.predict.run import predict_targets

    run = find_trained(to_absolute_path(str(cfg.input)))
    if run.how:
        print(f"input={cfg.input}: {run.how}: {run.checkpoint}")
    predictor = build_predictor(cfg, run)
    targets = list_targets(cfg, run, predictor)
    output = Path(to_absolute_path(str(cfg.output)))
    soft = output.with_name(f"{output.stem}_probabilities.zarr") if cfg.probabilities else None
    record = {"checkpoint": str(run.checkpoint.resolve()), "classes": run.classes, "threshold": float(cfg.threshold),
              "thresholds": dict(cfg.thresholds or {}), "overlap": float(cfg.overlap), "mirror": bool(cfg.mirror),
              "planes": int(cfg.get("planes", 1))}
    summary = predict_targets(targets, predictor, output, record, bool(cfg.overwrite), soft, bool(cfg.progress_bar))
    kept = summary.arrays - summary.written
    print(f"Predicted {summary.written} arrays ({summary.voxels / 1e6:.1f} M voxels, {summary.tiles} tiles) in "
          f"{summary.seconds:.1f} s{f'; {kept} already there kept' if kept else ''} -> {output}")
    print(f"Evaluate: cellmap-train evaluate {shlex.quote(str(output))}")
    print(f"Pack: cellmap-train pack {shlex.quote(str(output))}" + (f" --manifest {shlex.quote(to_absolute_path(cfg.manifest))}"
                                                                 if cfg.manifest else ""))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def run(cfg: DictConfig) -> None:
    try:
        predict(cfg)
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{PROG}: error: {first_line(err)}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    try:
        with one_line_hydra_errors():
            run()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (rerun with the same output to finish)", file=sys.stderr)
        sys.exit(130)
