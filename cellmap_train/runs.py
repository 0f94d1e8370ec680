"""`cellmap-train runs [folder]`: every run under a folder (default outputs/), one row each.

Hydra names run folders by date and time, so after a week of single runs "which one was the
lr=3e-4 run, and was it better?" means opening folders. Each run's result.json (status, metrics,
checkpoints) and .hydra/overrides.yaml (what the command changed) already say it; this lists them,
best first, in one table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import yaml

from cellmap_train.sweep import RESULT_FILE, read_result, recorded_overrides

COLUMNS = ["run", "overrides", "status", "classes", "best_metric_name", "best_metric", "best_epoch", "epochs_done",
           "wall_time_s", "best_checkpoint", "error"]


def run_rows(folder: Path) -> list[dict]:
    rows = []
    for record_file in sorted(folder.rglob(RESULT_FILE)):
        run_dir = record_file.parent
        try:
            record = read_result(run_dir)
        except (OSError, ValueError) as err:
            record = {"status": "unreadable", "error": f"{RESULT_FILE}: {err}"}
        try:
            overrides = recorded_overrides(run_dir)
        except (OSError, yaml.YAMLError):
            overrides = None
        if not isinstance(overrides, list):
            overrides = ["(unreadable .hydra/overrides.yaml)"]
        rows.append({**record, "run": str(run_dir.relative_to(folder)) if run_dir != folder else ".",
                     "overrides": " ".join(str(o) for o in overrides)})
    return rows


def ranked(rows: list[dict]):
    """A table of the runs, best first within each metric and class set (a loss ranks low first, a
    score high first), runs without a metric (failed, stopped before an epoch) last."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["best_metric"] = pd.to_numeric(frame["best_metric"], errors="coerce")
    # records written before classes were kept have none: they rank among themselves
    frame["classes"] = [" ".join(map(str, c)) if isinstance(c, list) else None for c in frame["classes"]]
    low = frame["low_is_best"] if "low_is_best" in frame else pd.Series([None] * len(frame), index=frame.index)
    # records written before low_is_best was kept: a loss is the one metric ranked low first
    low = low.where(low.notna(), frame["best_metric_name"].fillna("").str.startswith("loss")).astype(bool)
    frame["_none"] = frame["best_metric"].isna()
    frame["_key"] = frame["best_metric"].where(low, -frame["best_metric"])
    frame = frame.sort_values(["_none", "best_metric_name", "classes", "_key", "run"], na_position="last",
                              kind="stable")
    return frame[COLUMNS].reset_index(drop=True)


def shown(frame) -> tuple[str, list[str]]:
    """The table as printed, and the overrides every run shares (said once above it, not in every row)."""
    lists = [text.split() for text in frame["overrides"]]
    common = [o for o in lists[0] if all(o in other for other in lists[1:])] if len(lists) > 1 else []
    same_classes = frame["classes"].nunique() <= 1  # a column only when the runs differ
    table = frame.drop(columns=["best_checkpoint"] + (["classes"] if same_classes else [])).astype(object)
    table["overrides"] = [" ".join(o for o in items if o not in common) or "-" for items in lists]
    table = table.where(table.notna(), "-")
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}", max_colwidth=60), common


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cellmap-train runs",
                                     description="List the runs under a folder (their result.json), best first.")
    parser.add_argument("folder", nargs="?", default="outputs", help="where to look, at any depth (default outputs)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"cellmap-train runs: error: {folder}: no such folder", file=sys.stderr)
        return 1
    rows = run_rows(folder)
    if not rows:
        print(f"No runs under {folder} (a run writes {RESULT_FILE} when it ends).")
        return 0
    table, common = shown(ranked(rows))
    if common:
        print(f"{len(rows)} runs under {folder}, all with: {' '.join(common)}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
