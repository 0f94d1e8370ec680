"""`cellmap-train runs [folder]`: every run under a folder (default outputs/), one row each.

Hydra names run folders by date and time, so after a week of single runs "which one was the
lr=3e-4 run, and was it better?" means opening folders. Each run's result.json (status, metrics,
checkpoints) and .hydra/overrides.yaml (what the command changed) already say it; this lists them,
best first, in one table that fits the terminal (`runs_table.py`), or as CSV for pandas (`--csv`).
Runs stopped by their configuration before training are listed only with `--all`.
"""

from __future__ import annotations

import argparse
from collections import Counter
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import yaml

from cellmap_train.run.listing_table import OPTIONAL, cell, common_prefix, fit, short_keys
from cellmap_train.run.record import RESULT_FILE, read_record
from cellmap_train.run.sweep_summary import recorded_overrides

COLUMNS = ["run", "overrides", "status", "classes", "best_metric_name", "best_metric", "best_epoch", "epochs_done",
           "wall_time_s", "best_checkpoint", "error"]
METRICS = {"best": "best_metric", "final": "final_metric", "loss": "final_loss_val", "time": "wall_time_s"}
LOW_FIRST = {"final_loss_val", "wall_time_s"}  # ranked low first whatever the run's best metric is


def run_rows(folder: Path) -> list[dict]:
    rows = []
    for record_file in sorted(folder.rglob(RESULT_FILE)):
        run_dir = record_file.parent
        try:
            record = read_record(run_dir).as_dict()
        except (OSError, ValueError) as err:
            record = {"status": "unreadable", "error": f"{RESULT_FILE}: {err}"}
        try:
            overrides = recorded_overrides(run_dir)
        except (OSError, yaml.YAMLError):
            overrides = None
        if not isinstance(overrides, list):
            overrides = ["(unreadable .hydra/overrides.yaml)"]
        rows.append({**record, "run": str(run_dir.relative_to(folder)) if run_dir != folder else ".",
                     "overrides": " ".join(str(o) for o in overrides), "ended": record_file.stat().st_mtime})
    return rows


def select(rows: list[dict], status: Sequence[str] = (), last: int | None = None,
           everything: bool = False) -> tuple[list[dict], int]:
    """The rows asked for, and how many runs stopped by their config were left out (`--all` lists them)."""
    hidden = 0 if everything else sum(bool(r.get("config_error")) for r in rows)
    rows = [r for r in rows if everything or not r.get("config_error")]
    if status:
        rows = [r for r in rows if r.get("status") in status]
    if last is not None:
        rows = sorted(rows, key=lambda r: r["ended"], reverse=True)[:last]
    return rows, hidden


def ranked(rows: list[dict], metric: str = "best_metric"):
    """A table of the runs, best first within each metric and class set (a loss ranks low first, a
    score high first), runs without a metric (failed, stopped before an epoch) last."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    for column in COLUMNS + [metric]:
        if column not in frame:
            frame[column] = None
    frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    # records written before classes were kept have none: they rank among themselves
    frame["classes"] = [" ".join(map(str, c)) if isinstance(c, list) else None for c in frame["classes"]]
    low = frame["low_is_best"] if "low_is_best" in frame else pd.Series([None] * len(frame), index=frame.index)
    # records written before low_is_best was kept: a loss is the one metric ranked low first
    low = low.where(low.notna(), frame["best_metric_name"].fillna("").str.startswith("loss")).astype(bool)
    if metric in LOW_FIRST:
        low[:] = True
    elif metric not in METRICS.values():  # another field of the record: a loss low first, anything else high
        low[:] = "loss" in metric
    frame["_none"] = frame[metric].isna()
    frame["_key"] = frame[metric].where(low, -frame[metric])
    frame = frame.sort_values(["_none", "best_metric_name", "classes", "_key", "run"], na_position="last",
                              kind="stable")
    extra = [c for c in frame.columns if c not in COLUMNS and not c.startswith("_") and c != "ended"]
    return frame[COLUMNS + [c for c in extra if c == metric]].reset_index(drop=True)


def shown(frame, width: int = 120, metric: str = "best_metric") -> tuple[str, list[str], list[str]]:
    """The table as printed within `width` columns, the overrides every run shares and the other
    values they share ('classes nuc er'): each said once above it, not in every row."""
    lists = [text.split() for text in frame["overrides"]]
    common = [o for o in lists[0] if all(o in other for other in lists[1:])] if len(lists) > 1 else []
    short = short_keys(lists)
    seen = Counter(o for items in lists for o in set(items))  # in a row, the overrides fewest runs share come first
    lists = [sorted(items, key=lambda o: seen[o]) for items in lists]
    prefix = common_prefix(list(frame["run"]))
    values = {"run": [r[len(prefix):] for r in frame["run"]],
              "overrides": [[(short.get(o.split("=", 1)[0], o), o.split("=", 1)[1]) if "=" in o else (o, None)
                             for o in items if o not in common] for items in lists],
              "status": list(frame["status"]), "classes": list(frame["classes"]),
              "metric": list(frame["best_metric_name"]), metric: list(frame[metric]),
              "best_epoch": list(frame["best_epoch"]), "epochs_done": list(frame["epochs_done"]),
              "wall_time_s": list(frame["wall_time_s"]), "error": list(frame["error"])}
    cells = {name: [v if name == "overrides" else cell(v) for v in column] for name, column in values.items()}
    same = []
    for name in OPTIONAL:  # one value wherever there is one: said once (a column of dashes: not at all)
        distinct = set(cells[name]) - {"-"}
        if not distinct or len(distinct) == 1 and name != "error":
            same += [f"{name} {distinct.pop()}"] if distinct else []
            del cells[name]
    if prefix:
        same.insert(0, f"under {prefix}")
    header = list(cells)
    body = [[cells[name][i] for name in header] for i in range(len(frame))]
    return "\n".join(fit(header, body, width)), common, same


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cellmap-train runs",
                                     description="List the runs under a folder (their result.json), best first.")
    parser.add_argument("folder", nargs="?", default="outputs", help="where to look, at any depth (default outputs)")
    parser.add_argument("--status", default="", help="only runs with these statuses, e.g. ok or failed,interrupted")
    parser.add_argument("--last", type=int, metavar="N", help="only the N runs that ended last")
    parser.add_argument("--metric", default="best", help="the metric column, ranked by: best (default), final, "
                                                         "loss (final loss/val), time, or any field of result.json")
    parser.add_argument("--all", action="store_true", help="also runs stopped by their config before training")
    parser.add_argument("--csv", action="store_true", help="every column, unshortened, as CSV (pandas.read_csv)")
    parser.add_argument("--width", type=int, help="columns to fit (default: the terminal's, else 120)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    folder, metric = Path(args.folder), METRICS.get(args.metric, args.metric)
    if not folder.is_dir():
        print(f"cellmap-train runs: error: {folder}: no such folder", file=sys.stderr)
        return 1
    if args.last is not None and args.last < 1:
        print(f"cellmap-train runs: error: --last {args.last}: must be 1 or more", file=sys.stderr)
        return 2
    found = run_rows(folder)
    rows, hidden = select(found, [s for s in args.status.split(",") if s], args.last, args.all)
    if found and not any(metric in r for r in found):
        print(f"cellmap-train runs: error: --metric {args.metric}: no run records it; choose best, final, loss, "
              f"time or a field of {RESULT_FILE}", file=sys.stderr)
        return 2
    note = f" ({hidden} stopped by their config before training: --all lists them)" if hidden else ""
    if not rows:
        print(f"No runs under {folder}{' that match' if found else ''} (a run writes {RESULT_FILE} when it ends).{note}")
        return 0
    frame = ranked(rows, metric)
    if args.csv:
        import pandas as pd

        full = pd.DataFrame(rows).drop(columns=["ended"]).set_index("run").loc[frame["run"]].reset_index()
        full.to_csv(sys.stdout, index=False)
        return 0
    width = args.width or shutil.get_terminal_size((120, 24)).columns
    table, common, same = shown(frame, width, metric)
    shared = [" ".join(common)] if common else []
    if shared or same or note:
        heading = f"{len(rows)} runs under {folder}" + (f", all with: {'; '.join(shared + same)}" if shared or same else "")
        print(textwrap.fill(heading + note, width, subsequent_indent="  ", break_on_hyphens=False))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
