"""Hydra's own errors (a mistyped override key, a missing group option, override syntax) as one
line, like every other user error, instead of Hydra's several-line report; so is a file system
error that reaches it (a run folder that cannot be made, a full disk): the path and the reason.

Hydra prints these from `hydra._internal.utils.run_and_report`, which `@hydra.main` looks up at
call time; `one_line_hydra_errors()` wraps the callable it is given so configuration errors end
as `cellmap_train: error: ...` and exit 1. Everything else (--help, --cfg, -m, a bug's traceback)
goes through Hydra's report unchanged; HYDRA_FULL_ERROR=1 keeps Hydra's behaviour entirely.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import traceback
from typing import Any, Callable, Iterator

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from cellmap_train.config.shorthands import removed_group_message
from cellmap_train.errors import UserError, first_line

PROG = "cellmap_train"


# Hydra's words when a defaults-list entry such as `${experiment}_${model}` names a removed group (`~model`)
_DEFAULTS_INTERPOLATION = re.compile(r"Error resolving interpolation '(.*)', possible interpolation keys: (.*)")


def _removed_group(head: str) -> str | None:
    match = _DEFAULTS_INTERPOLATION.fullmatch(head)
    if not match:
        return None
    present = {key.strip() for key in match.group(2).split(",")}
    missing = [name for name in re.findall(r"\$\{(\w+)\}", match.group(1)) if name not in present]
    return removed_group_message(missing[0]) if missing else None


def condense(err: BaseException) -> str:
    """First line of the error, the option list of a missing config and the OmegaConf cause; a
    group removed (`~model`) or added with + (`+model=3d_unet`) in words of the command line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    head = lines[0] if lines else type(err).__name__
    in_cli_words = _removed_group(head) or _group_added_twice(err)
    if in_cli_words:
        return in_cli_words
    if isinstance(err, OverrideParseException):
        head = f"{err.override}: {head}"
    elif _override_at_fault(err):  # e.g. `scheduler=null`: Hydra's message does not say which override
        head = f"{_override_at_fault(err)}: {head}"
    if isinstance(err, MissingConfigException) and err.options:
        head += f" (available: {', '.join(err.options)})"
    elif len(lines) > 1 and not lines[1].startswith(("See http", "full_key:")):
        head += f"{'' if head.endswith('.') else ':'} {lines[1]}"  # e.g. "To append to your config use +key=value"
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        head += f" ({first_line(cause)})"
    return head


def _group_added_twice(err: BaseException) -> str | None:
    """`+scheduler=step` on the command line, where the defaults already choose a scheduler: Hydra
    answers with the YAML syntax of a defaults list (`override scheduler: step`); say the CLI's."""
    frame = _innermost_frame(err)
    key = frame.f_locals.get("key") if frame else None
    if not str(err).startswith("Multiple values for") or not isinstance(key, str):
        return None
    added = next((arg for arg in sys.argv[1:] if arg.startswith(f"+{key}=")), None)
    if added is None:
        return None
    default = frame.f_locals.get("default")
    chosen = {frame.f_locals.get("prev"), default.get_name() if hasattr(default, "get_name") else None}
    others = sorted(str(name) for name in chosen - {added.split("=", 1)[1], None})
    already = f" ({others[0]})" if others else ""
    return f"{added}: {key} already has an option{already}: set it with {added[1:]}, without the +"


def _innermost_frame(err: BaseException):
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame if tb is not None else None


def _override_at_fault(err: BaseException) -> str | None:
    """The command-line override Hydra was reading when it raised, if its innermost frame holds one."""
    frame = _innermost_frame(err)
    line = getattr(frame.f_locals.get("override"), "input_line", None) if frame else None
    return line if isinstance(line, str) and line not in str(err) else None


def _file_written(err: OSError) -> str | None:
    """The file a failed write was writing (a write or close names none: Hydra's `.hydra/`
    files on a full disk): an open file in the innermost frame that holds one."""
    tb, found = err.__traceback__, None
    while tb is not None:
        name = next((getattr(value, "name", None) for value in tb.tb_frame.f_locals.values()
                     if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str)), None)
        found = name or found
        tb = tb.tb_next
    return found


def _raised_by_hydra(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"hydra{os.sep}_internal" in frames[-1].filename


def _guarded(func: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        try:
            return func()
        except (HydraException, OmegaConfBaseException) as err:
            print(f"{PROG}: error: {condense(err)}", file=sys.stderr)
            sys.exit(1)
        except UserError as err:  # raised before the run's own handler: a busy run folder, a record that cannot be written
            print(f"{PROG}: error: {first_line(err)}", file=sys.stderr)
            sys.exit(1)
        except OSError as err:  # a folder or file that cannot be made or written: an unusable hydra.run.dir, a full disk
            where = (f"{err.filename} -> {err.filename2}" if err.filename2 else err.filename) or _file_written(err)
            if where is None:
                raise
            print(f"{PROG}: error: {where}: {err.strerror or type(err).__name__}", file=sys.stderr)
            sys.exit(1)
        except (ValueError, TypeError) as err:  # e.g. `model=1.5` / an int choice: Hydra rejects the value while composing
            if not _raised_by_hydra(err):
                raise
            print(f"{PROG}: error: {condense(err)}", file=sys.stderr)
            sys.exit(1)

    return call


@contextlib.contextmanager
def one_line_hydra_errors() -> Iterator[None]:
    """While active, Hydra reports configuration errors as one line (unless HYDRA_FULL_ERROR=1)."""
    from hydra._internal import utils  # private: the one place Hydra formats its errors

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield
        return
    original = utils.run_and_report
    utils.run_and_report = lambda func: original(_guarded(func))
    try:
        yield
    finally:
        utils.run_and_report = original
