"""Which checkpoint a run folder or a sweep folder stands for (`init_from=<folder>`).

A run folder's `result.json` names its best checkpoint (by the run's own `trainer.best_metric`)
and its latest; a sweep folder's `summary.csv` lists its jobs best first. So a user can start
from "that run" or "the best job of that sweep" without looking up epoch numbers.
"""

from __future__ import annotations

from pathlib import Path

from cellmap_train.errors import CheckpointError
from cellmap_train.run.record import RESULT_FILE, has_record, read_record
from cellmap_train.run.sweep_summary import SUMMARY_FILE


def checkpoint_of(path: str | Path) -> tuple[Path, str | None]:
    """(checkpoint file, a line saying how a folder led to it); a file is returned as it is."""
    path = Path(path)
    if not path.is_dir():
        return path, None
    if has_record(path):
        return best_of_run(path)
    if (path / SUMMARY_FILE).is_file():
        return best_of_sweep(path)
    found = sorted(path.rglob("*.pth"))[:3]
    hint = f"; checkpoint files in it: {', '.join(str(p.relative_to(path)) for p in found)}" if found else ""
    raise CheckpointError(f"{path}: a folder, but neither a run folder (no {RESULT_FILE}: a run still going or killed?) "
                          f"nor a sweep folder (no {SUMMARY_FILE}); name a checkpoint file{hint}")


def best_of_run(run_dir: Path) -> tuple[Path, str]:
    try:
        record = read_record(run_dir)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{run_dir / RESULT_FILE}: not a readable run record ({err})") from None
    best, latest = record.best_checkpoint, record.checkpoint
    metric = record.best_metric_name or "its metric"
    if best and (run_dir / best).is_file():  # kept in the folder's terms, so a copied or moved run still works
        score = record.best_metric
        value = f" {score:.4g}" if isinstance(score, (int, float)) else ""
        return run_dir / best, f"its best checkpoint (epoch {record.best_epoch}, {metric}{value})"
    if latest:  # relative to the folder (older records: as the run saw it; a moved folder holds it by name)
        candidate = run_dir / latest if (run_dir / latest).is_file() else next(iter(sorted(run_dir.rglob(Path(latest).name))), None)
        if candidate is not None:
            why = "best checkpoint is gone" if best else f"run has no best {metric}"
            return candidate, f"its latest checkpoint (epoch {record.epochs_done}; the {why})"
    status = record.status + (f": {record.error}" if record.error else "")
    raise CheckpointError(f"{run_dir}: the run wrote no checkpoint that is still there (it ended {status})")


def best_of_sweep(sweep_dir: Path) -> tuple[Path, str]:
    import pandas as pd

    summary = pd.read_csv(sweep_dir / SUMMARY_FILE, dtype={"job": str})  # sorted best first when it was written
    for _, row in summary.iterrows():
        if row.get("status") == "ok" and has_record(sweep_dir / row["job"]):
            path, how = best_of_run(sweep_dir / row["job"])
            return path, f"job {row['job']}, the sweep's best, {how}"
    raise CheckpointError(f"{sweep_dir}: no job of the sweep ended ok (see its {SUMMARY_FILE})")
