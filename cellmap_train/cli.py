"""`cellmap-train`: training (Hydra overrides) plus helper subcommands.

    cellmap-train [overrides]              train, same as `python -m cellmap_train`
    cellmap-train datasplit [options]      write a datasplit CSV from a folder or the S3 bucket
    cellmap-train translate config.py      print the Hydra overrides of a challenge config.py
    cellmap-train runs [folder]            list the runs under outputs/ (or the folder), best first
    cellmap-train predict input=<run> ...  predict crops into a zarr store (Hydra overrides, conf/predict.yaml)
    cellmap-train evaluate <store>         IoU and Dice of the predictions against ground truth
    cellmap-train pack <store>             zip the store for submission, checked against the manifest
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from cellmap_train.errors import UserError


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def datasplit_parser() -> argparse.ArgumentParser:
    from cellmap_train.data.datasplit import S3_BASE_PATH  # the data package imports torch: only this subcommand pays

    parser = argparse.ArgumentParser(prog="cellmap-train datasplit",
                                     description="Write a datasplit CSV (the challenge's format) listing the crops under a folder or the public S3 bucket.")
    parser.add_argument("-c", "--classes", type=_comma_list, default=["nuc", "er"], help="comma-separated classes (default nuc,er)")
    parser.add_argument("-p", "--base-path", default=None, help=f"folder (or s3:// URL) holding <dataset>/<dataset>.zarr (default ./data, or {S3_BASE_PATH} with --s3)")
    parser.add_argument("-s3", "--s3", action="store_true", help="list the public bucket anonymously")
    parser.add_argument("-vr", "--validation-prob", type=float, default=0.1, help="chance a crop validates (default 0.1)")
    force = parser.add_mutually_exclusive_group()
    force.add_argument("-fa", "--force-all-classes", dest="force", action="store_const", const=True, default=False,
                       help="drop crops lacking any class")
    force.add_argument("-ft", "--force-train", dest="force", action="store_const", const="train",
                       help="training crops must hold every class (others move to validation)")
    force.add_argument("-fv", "--force-validate", dest="force", action="store_const", const="validate",
                       help="validation crops must hold every class (others move to training)")
    parser.add_argument("-ds", "--datasets", type=_comma_list, default=["*"], help="comma-separated dataset globs")
    parser.add_argument("-cr", "--crops", type=_comma_list, default=["*"], help="comma-separated crop ids or globs")
    parser.add_argument("-s", "--scale", type=lambda t: [float(v) for v in _comma_list(t)], default=None,
                        help="keep classes whose finest voxel size is <= this (nm, one or three values)")
    parser.add_argument("-cp", "--csv-path", default="datasplit.csv", help="output file (default datasplit.csv)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the train/validate draw (default 42)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing CSV (default: keep it)")
    parser.add_argument("--dry-run", action="store_true", help="print the rows, write nothing")
    return parser


def datasplit_main(argv: Sequence[str]) -> int:
    from cellmap_train.data.datasplit import CROP_NAME, RAW_NAME, S3_BASE_PATH, SEARCH_PATH, make_datasplit_csv

    args = datasplit_parser().parse_args(list(argv))
    base = args.base_path or (S3_BASE_PATH if args.s3 else "data")
    options = {"anon": True} if args.s3 or "://" in base else None
    existed = not args.overwrite and not args.dry_run and os.path.exists(args.csv_path)
    try:
        entries = make_datasplit_csv(args.classes, args.force, args.validation_prob, args.datasets, args.crops,
                                     SEARCH_PATH, RAW_NAME, CROP_NAME, args.csv_path, args.dry_run, storage_options=options,
                                     seed=args.seed, overwrite=args.overwrite, base_path=base,
                                     scale=args.scale[0] if args.scale and len(args.scale) == 1 else args.scale)
    except UserError as err:
        print(f"cellmap-train datasplit: error: {err}", file=sys.stderr)
        return 1
    counts = {usage: sum(e.usage == usage for e in entries) for usage in ("train", "validate")}
    if args.dry_run:
        for entry in entries:
            print(",".join(f'"{cell}"' for cell in entry.row()))
    elif existed:
        print(f"{args.csv_path} exists, kept as is ({counts['train']} train, {counts['validate']} validate crops); pass --overwrite to replace it")
    else:
        print(f"wrote {args.csv_path}: {counts['train']} train, {counts['validate']} validate crops")
    return 0


def run_training(argv: Sequence[str]) -> int:
    """Hand the arguments to the @hydra.main entry, which reads sys.argv."""
    from cellmap_train.train import main as train_main

    sys.argv = [sys.argv[0], *argv]
    train_main()
    return 0


def run_prediction_command(command: str, argv: Sequence[str]) -> int:
    if command == "predict":  # the Hydra entry reads sys.argv
        from cellmap_train.predict.entry import main as predict_main

        sys.argv = [f"{sys.argv[0]} predict", *argv]
        predict_main()
        return 0
    from cellmap_train.predict import evaluate, pack

    return (evaluate if command == "evaluate" else pack).main(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command == "datasplit":
        return datasplit_main(argv[1:])
    if command == "runs":
        from cellmap_train.run.listing import main as runs_main

        return runs_main(argv[1:])
    if command in ("predict", "evaluate", "pack"):  # lazy: another subsystem
        return run_prediction_command(command, argv[1:])
    if command == "translate":
        from cellmap_train.legacy.translate import main as translate_main  # lazy: another subsystem

        return translate_main(argv[1:])
    return run_training(argv)


if __name__ == "__main__":
    sys.exit(main())
