"""Predict a list of targets into a store with one progress bar over all their tiles."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cellmap_train.data.ngff import ScaleLevel
from cellmap_train.predict.predictor import Predictor, check_inside_raw, model_grid
from cellmap_train.predict.store import PredictionStore
from cellmap_train.predict.targets import Target


@dataclass
class PredictSummary:
    output: Path
    arrays: int  # (crop, label) arrays in the store for these targets
    written: int  # of which this run wrote
    tiles: int
    seconds: float
    seconds_in_model: float
    voxels: int  # output voxels written


def predict_targets(targets: Sequence[Target], predictor: Predictor, output: str | Path, record: dict,
                    overwrite: bool = False, probabilities: str | Path | None = None,
                    progress_bar: bool = True) -> PredictSummary:
    start = time.perf_counter()
    store = PredictionStore(output, record, overwrite)
    soft = PredictionStore(probabilities, record, overwrite) if probabilities else None
    raws: dict[str, ScaleLevel] = {}
    plans = []
    for target in targets:  # every raw opened and every crop checked before the first tile
        if target.raw_url not in raws:
            raws[target.raw_url] = predictor.open_raw(target)
        check_inside_raw(target, raws[target.raw_url])
        plans.append(model_grid(target, predictor.spec.scale, raws[target.raw_url]))
    todo = [i for i, t in enumerate(targets) if any(not store.has(t.crop, label) for label in t.labels)]
    total = sum(predictor.tile_count(plans[i]) for i in todo)
    written, voxels = 0, 0
    with tqdm(total=total, unit="tile", disable=not progress_bar, dynamic_ncols=True) as bar:
        for i in todo:
            target = targets[i]
            bar.set_postfix_str(f"{target.crop} {','.join(target.labels)}", refresh=False)
            missing = sum(not store.has(target.crop, label) for label in target.labels)
            predictor.predict(target, raws[target.raw_url], plans[i], store, soft, bar.update)
            written += missing
            voxels += missing * int(np.prod(target.shape))
    store.close()
    if soft is not None:
        soft.close()
    arrays = sum(len(t.labels) for t in targets)
    return PredictSummary(Path(output), arrays, written, total, time.perf_counter() - start,
                          predictor.seconds_in_model, voxels)
