"""`csc train CONFIG.py [overrides...]`: the challenge's command, on this project's trainer.

It translates the config.py (see `cellmap-train translate`) and runs `python -m cellmap_train`
with those overrides followed by yours, so yours win. Training runs in a child process: the
legacy layer only produces overrides and never imports the trainer itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Sequence

from cellmap_train.legacy.reader import LegacyError
from cellmap_train.legacy.translate import report, translate_file


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csc", description="CellMap challenge commands on cellmap_train.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train from a challenge config.py",
        description="Translate CONFIG.py into Hydra overrides (the file is read, not run) and train with "
                    "`python -m cellmap_train <translated overrides> <OVERRIDES>`; later overrides win, e.g. "
                    "`csc train train_2D.py epochs=5 data=demo`.",
        epilog="See the translation alone with: cellmap-train translate CONFIG.py")
    train.add_argument("config", metavar="CONFIG.py", help="the challenge config file")
    train.add_argument("overrides", nargs="*", metavar="OVERRIDES", help="Hydra overrides applied after the file's")
    train.add_argument("--allow-exec", action="store_true",
                       help="import the file (not its __main__ block) when static reading is not enough")
    train.add_argument("--dry-run", action="store_true", help="print the training command and exit")
    return p


def train(config_path: str | os.PathLike, *extra: str, allow_exec: bool = False, dry_run: bool = False) -> int:
    """Translate a config.py and train with it; returns the trainer's exit code (2: bad config)."""
    try:
        plan = translate_file(config_path, allow_exec=allow_exec)
    except LegacyError as err:
        print(f"csc train: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a file we did not foresee: one line, no traceback (as translate)
        print(f"csc train: error: {config_path}:0: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    report(plan)
    chosen = [token.split("=", 1)[0].lstrip("+~") for token in extra]
    if plan.unmapped_model and not {"model", "model._target_"} & set(chosen):
        note = plan.unmapped_model
        print(f"csc train: error: {plan.config.path}:{note.line}: {note.name}: {note.why}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "cellmap_train", *plan.tokens(), *extra]
    if dry_run:
        print(" ".join(command))
        return 0
    if plan.run_folder and "hydra.run.dir" not in chosen:
        print(f"csc train: run folder {plan.run_folder} ({plan.run_folder_origin}); running this again resumes "
              "from its latest checkpoint", file=sys.stderr)
    env = dict(os.environ)
    if plan.python_path:  # a model class from the config's folder (--allow-exec)
        env["PYTHONPATH"] = os.pathsep.join([*plan.python_path, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.call(command, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = parser().parse_known_args(sys.argv[1:] if argv is None else list(argv))
    return train(args.config, *args.overrides, *unknown, allow_exec=args.allow_exec, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
