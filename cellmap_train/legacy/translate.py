"""`cellmap-train translate CONFIG.py`: a challenge config.py -> Hydra overrides (or an experiment file).

The file is read as an AST and never run, unless --allow-exec is given; then it is imported as
a module (its `if __name__ == "__main__":` block does not run) to learn what static reading cannot.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from cellmap_train.errors import first_line
from cellmap_train.legacy.fold import PathValue, Unknown, first_unknown
from cellmap_train.legacy.mapping import READ, build_plan
from cellmap_train.legacy.plan import Override, Plan
from cellmap_train.legacy.reader import ConfigFile, LegacyError, read_config

PROG = "cellmap-train translate"


def translate_file(path: str | os.PathLike, allow_exec: bool = False) -> Plan:
    """Translate a config.py; raises LegacyError (one line) for files that cannot be translated."""
    config = read_config(path)
    if allow_exec:
        fill_from_execution(config, Path(path))
    plan = build_plan(config, allow_exec=allow_exec)
    if plan.needs_exec:
        first = plan.needs_exec[0]
        raise LegacyError(config.path, first.line, first.name, f"{first.why}; needs execution (--allow-exec imports the file)")
    settle(plan)
    return plan


def overrides(path: str | os.PathLike, allow_exec: bool = False) -> list[str]:
    """The Hydra overrides that reproduce a config.py, in order (later ones win)."""
    return translate_file(path, allow_exec).tokens()


# ---- --allow-exec: import the file and read the values static reading missed ------------

def runtime_plain(value: Any) -> Any:
    """A value of the executed module as literals; Unknown if it is an object."""
    if isinstance(value, (list, tuple)):
        return type(value)(runtime_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: runtime_plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "path") and isinstance(value.path, str):  # UPath
        return value.path
    if isinstance(value, os.PathLike):
        return PathValue(os.fspath(value))
    return Unknown(f"{type(value).__name__} object")


@contextmanager
def on_sys_path(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def fill_from_execution(config: ConfigFile, path: Path) -> None:
    name = path.stem if path.stem.isidentifier() else "csc_config"  # not "__main__": the main block stays off
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        with on_sys_path(path.resolve().parent):
            spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file: report, do not crash
        raise LegacyError(config.path, 0, "--allow-exec", f"importing the file failed: {type(err).__name__}: {err}") from None
    for key, static in config.values.items():
        machine = isinstance(static, Unknown) and static.asks_machine and (key == "device" or key in config.per_device)
        if key in READ and first_unknown(static) is not None and hasattr(module, key) and not machine:
            config.values[key] = runtime_plain(getattr(module, key))  # (not this machine's device or GPU count)


# ---- make the overrides valid for the composed tree --------------------------------------

@contextmanager
def hydra_context():
    from hydra import initialize_config_dir, initialize_config_module

    from cellmap_train.config.location import config_dir

    where = config_dir()
    if where.startswith("pkg://"):
        with initialize_config_module(config_module=where[len("pkg://"):].replace("/", "."), version_base="1.3"):
            yield
    else:
        with initialize_config_dir(config_dir=where, version_base="1.3"):
            yield


def compose_tokens(tokens: list[str]):
    from hydra import compose

    with hydra_context():
        return compose("config", overrides=tokens)


def has_key(tree: dict, key: str) -> bool:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def keys_at(tree: dict, key: str) -> set | None:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return set(node) if isinstance(node, dict) else None


def settle(plan: Plan) -> None:
    """`+key=` for keys the chosen groups do not have; then check the whole list composes."""
    choices = [o.token() for o in plan.overrides if o.kind == "group" or o.kind == "delete" and "." not in o.key]
    tree = OmegaConf.to_container(compose_tokens(choices), resolve=False)
    settled = []
    for override in plan.overrides:
        if override.key.startswith("hydra."):  # Hydra's own node: not in the composed tree, but always there
            pass
        elif override.kind == "set" and not has_key(tree, override.key):
            override.kind = "add"
        elif override.kind == "set" and isinstance(override.value, dict) and keys_at(tree, override.key) not in (None, set(override.value)):
            settled.append(Override(override.key, None))  # a dict override merges; null first makes it replace
        settled.append(override)
    plan.overrides = settled
    try:
        compose_tokens(plan.tokens())
    except Exception as err:  # noqa: BLE001 - Hydra raises several types; all mean "this override is wrong"
        raise LegacyError(plan.config.path, 0, "overrides", first_line(err)) from None


# ---- output ------------------------------------------------------------------------------

def to_yaml(plan: Plan) -> str:
    """An experiment file: `# @package _global_`, group choices as `override /group:`, values nested."""
    defaults, tree = [], {}
    for override in plan.overrides:
        if override.key.startswith("hydra."):  # an experiment runs in a folder of its own; csc train's is noted
            continue
        if override.kind in ("group", "delete") and "." not in override.key:
            defaults = [d for d in defaults if d[0] != override.key] + [(override.key, override.value)]
        elif override.kind == "delete":
            plan.note(override.key, "an experiment file cannot remove a key; use the overrides format", 0)
        else:
            *parents, leaf = override.key.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = override.value
    body = OmegaConf.to_yaml(OmegaConf.create(tree)) if tree else ""
    lines = ["# @package _global_", f"# Translated from {plan.config.path} by {PROG}", "defaults:"]
    if plan.run_folder:
        lines.insert(2, f"# csc train runs it in {plan.run_folder} ({plan.run_folder_origin}); to resume there, add "
                        f"hydra.run.dir={plan.run_folder}")
    lines += [f"  - override /{group}: {option if option is not None else 'null'}" for group, option in defaults]
    return "\n".join(lines if defaults else lines[:-1]) + "\n" + body


def report(plan: Plan) -> None:
    for note in sorted(dict.fromkeys(plan.notes), key=lambda n: n.line):  # in the file's order, each once
        print(f"{plan.config.path}:{note.line}: {note.name}: {note.why}", file=sys.stderr)
    for token in plan.tokens():
        if any(c.isspace() for c in token):
            print(f"{plan.config.path}:0: {token.split('=')[0]}: contains whitespace; pass the lines as separate"
                  " arguments (not $(...)) or use --format yaml", file=sys.stderr)
    if plan.python_path:
        print(f"{plan.config.path}:0: model: training imports it: add {os.pathsep.join(plan.python_path)} to PYTHONPATH",
              file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Translate a CellMap challenge config.py (for `csc train`) into "
                                "Hydra overrides of cellmap_train, one per line: "
                                "python -m cellmap_train $(cellmap-train translate CONFIG.py). "
                                "The file is read, never run, unless --allow-exec is given.")
    p.add_argument("config", metavar="CONFIG.py", help="the challenge config file")
    p.add_argument("--format", choices=["overrides", "yaml"], default="overrides",
                   help="overrides (default): one per line; yaml: an experiment file for conf/experiment/")
    p.add_argument("--allow-exec", action="store_true",
                   help="import the file (not its __main__ block) to read values static analysis cannot, "
                        "e.g. a model class defined in it")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        plan = translate_file(args.config, allow_exec=args.allow_exec)
    except LegacyError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a file we did not foresee: one line, no traceback
        print(f"{PROG}: error: {args.config}:0: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    text = to_yaml(plan) if args.format == "yaml" else "\n".join(plan.tokens()) + "\n"
    report(plan)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
