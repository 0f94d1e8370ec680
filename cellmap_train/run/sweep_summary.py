"""Run records and the multirun summary.

Every run writes `result.json` in its folder (status, one-line error, metrics, wall time).
After a `--multirun`, the `SweepSummary` Hydra callback gathers the jobs' records into
`summary.csv` in the sweep folder, prints them sorted by the best metric, and adds the mean
and spread over seeds for every other combination of swept values. A signal stops the whole
sweep (`sweep_stop.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cellmap_train.run.record import has_record, read_record
from cellmap_train.run.sweep_stop import (STOP_FILE, StopSweepOnSignal, jobs_run_in_other_processes_here,
                                     keep_submitit_controllers_out_of_ctrl_c)

if TYPE_CHECKING:  # pandas is imported only when a sweep summary is made: every run's start-up is spared it
    import pandas as pd

SUMMARY_FILE = "summary.csv"


def recorded_overrides(run_dir: Path) -> Any:
    """What Hydra recorded of a run's or job's overrides (.hydra/overrides.yaml, a list; [] if absent)."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    return yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []


def swept_values(job_dir: Path, swept_keys: list[str]) -> dict[str, str]:
    """The job's value for every swept key, read from Hydra's record of its overrides."""
    values = {}
    for item in recorded_overrides(job_dir) or []:
        key, _, value = str(item).lstrip("+~").partition("=")
        if key in swept_keys:
            values[key] = value
    return values


def swept_keys_of(task_overrides: list[str]) -> list[str]:
    """Keys given several values on the command line (`seed=1,2,3`, `lr=range(...)`, `choice(...)`)."""
    keys = []
    for item in task_overrides:
        key, _, value = str(item).lstrip("+~").partition("=")
        if "," in value.replace("\\,", "") and not value.strip().startswith(("[", "{")) or value.startswith(("range(", "choice(", "interval(", "glob(")):
            keys.append(key)
    return keys


def collect(sweep_dir: Path, swept_keys: list[str]) -> "pd.DataFrame":
    import pandas as pd

    rows = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                          key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else p.name)):
        record = (read_record(job_dir).as_dict() if has_record(job_dir)
                  else {"status": "failed", "error": "no result.json (job crashed)"})
        rows.append({"job": job_dir.name, **swept_values(job_dir, swept_keys), **record})
    frame = pd.DataFrame(rows)
    for key in swept_keys:
        if key in frame:
            frame[key] = _numeric_or_text(frame[key])
    return frame


def _numeric_or_text(column: "pd.Series") -> "pd.Series":
    import pandas as pd

    converted = pd.to_numeric(column, errors="coerce")
    return converted if converted.notna().all() else column


def seed_statistics(frame: "pd.DataFrame", swept_keys: list[str], metric: str = "best_metric") -> "pd.DataFrame | None":
    """Mean ± std of the metric over seeds, for every combination of the other swept values."""
    if "seed" not in swept_keys or metric not in frame:
        return None
    others = [k for k in swept_keys if k != "seed" and k in frame]
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return None
    grouped = ok.groupby(others, dropna=False) if others else ok.assign(all="all").groupby("all")
    stats = grouped[metric].agg(["mean", "std", "count"]).reset_index()
    return stats.rename(columns={"mean": f"{metric} mean", "std": f"{metric} std", "count": "seeds"})


def _from_sweep(sweep_dir: Path, job: str, path: Any) -> Any:
    """A job's datasplit (relative to the job's folder unless absolute) as a path from the sweep folder."""
    if not isinstance(path, str):
        return path
    full = Path(path) if Path(path).is_absolute() else sweep_dir / str(job) / path
    try:
        return str(full.resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        return str(full)


def split_line(frame: "pd.DataFrame") -> str | None:
    """Which datasplit the jobs used: one shared (named), or several (a warning: their metrics
    are scored on different validation sets)."""
    if "datasplit_digest" not in frame or frame["datasplit_digest"].isna().all():
        return None
    used = frame.dropna(subset=["datasplit_digest"]).drop_duplicates("datasplit_digest")
    if len(used) == 1:
        row, paths = used.iloc[0], frame["datasplit"].dropna().unique()
        count = int(frame["datasplit_digest"].notna().sum())
        jobs = (f"all {count} jobs" if count == len(frame)
                else f"{count} of {len(frame)} jobs (the others failed before reading one)")
        if len(paths) == 1:
            return f"Datasplit: {row['datasplit']} (sha256 {row['datasplit_digest']}), shared by {jobs}"
        return (f"Datasplit: the same rows (sha256 {row['datasplit_digest']}) in the own files of {jobs} "
                f"({paths[0]}, ...)")
    names = ", ".join(f"{row['datasplit']} ({row['datasplit_digest']})" for _, row in used.head(4).iterrows())
    return (f"Datasplits: the jobs used {len(used)} different ones ({names}{', ...' if len(used) > 4 else ''}): "
            f"their metrics are scored on different validation sets")


class SweepSummary(Callback):
    """Hydra callback: on_multirun_end writes summary.csv (and seed_stats.csv) and prints them;
    on_multirun_start clears a stopped sweep's marker and, when the jobs run in other processes,
    makes the launching process wait for them on a first signal (`sweep_stop.py`)."""

    def __init__(self, low_is_best: bool = False, fail_on_error: bool = True):
        self.low_is_best = low_is_best
        self.fail_on_error = fail_on_error
        self.on_signal: StopSweepOnSignal | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir, launcher = Path(config.hydra.sweep.dir), str(config.hydra.launcher._target_)
        if sweep_dir.is_dir():  # one that cannot be made is the launcher's error, in one line
            (sweep_dir / STOP_FILE).unlink(missing_ok=True)  # continuing a stopped sweep runs what is left
        if jobs_run_in_other_processes_here(launcher):
            self.on_signal = StopSweepOnSignal(sweep_dir).__enter__()  # left in on_multirun_end
            keep_submitit_controllers_out_of_ctrl_c(launcher)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.on_signal is not None:
            self.on_signal.__exit__(None, None, None)
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        swept = swept_keys_of(list(config.hydra.overrides.task))
        if config.hydra.sweeper.get("params"):  # optuna & co. declare their search space here
            swept += [k for k in config.hydra.sweeper.params if k not in swept]
        frame = collect(sweep_dir, swept)
        if frame.empty:
            return
        if "best_metric" in frame:
            frame = frame.sort_values("best_metric", ascending=self.low_is_best, na_position="last")
        columns = ["job", *[k for k in swept if k in frame], "status", "error", "best_metric", "best_epoch",
                   "final_metric", "epochs_done", "wall_time_s", "checkpoint", "best_checkpoint", "datasplit",
                   "datasplit_digest"]
        if "datasplit" in frame:  # the shared one is named from the sweep folder
            frame["datasplit"] = [_from_sweep(sweep_dir, job, path) for job, path in zip(frame["job"], frame["datasplit"])]
        frame = frame[[c for c in columns if c in frame] + [c for c in frame.columns if c not in columns]]
        frame.to_csv(sweep_dir / SUMMARY_FILE, index=False)
        shown = [c for c in columns if c in frame and not c.endswith("checkpoint") and not c.startswith("datasplit")]
        print(f"\nSweep summary ({len(frame)} jobs) -> {sweep_dir / SUMMARY_FILE}")
        split = split_line(frame)
        if split:
            print(split)
        print(frame[shown].fillna("-").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        stats = seed_statistics(frame, swept)
        if stats is not None:
            stats.to_csv(sweep_dir / "seed_stats.csv", index=False)
            print("\nOver seeds:")
            print(stats.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
        counts = frame["status"].value_counts()
        failed, stopped = int(counts.get("failed", 0)), int(counts.get("interrupted", 0) + counts.get("skipped", 0))
        if failed:
            print(f"\n{failed} of {len(frame)} job{'s' * (len(frame) > 1)} failed (see the error column).")
        if stopped:
            print(f"\nA signal stopped the sweep ({stopped} job{'s' * (stopped > 1)} interrupted or skipped): continue it with "
                  f"hydra.sweep.dir={sweep_dir} load_model=latest and the same sweep overrides.")
        if (failed or stopped) and self.fail_on_error:
            raise SystemExit(1)
