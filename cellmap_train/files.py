"""Writing files so that a crash never leaves a truncated one under the final name, and a write
that fails (a full disk, a read-only or non-writable folder) ends the run in one line naming the
file and the cause, with no temporary file left behind."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator

from cellmap_train.errors import UserError


class RunWriteError(UserError, OSError):
    """A run's file could not be written. An OSError too: callers that handle OSError still do."""


def write_error(path: str | os.PathLike, err: OSError, what: str = "cannot write") -> str:
    """'<path>: cannot write: no space left on device' (the file, not the temporary beside it)."""
    cause = (err.strerror or str(err) or type(err).__name__).lower()
    return f"{path}: {what}: {cause}"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """Yield a temporary file beside `path`; on a clean exit fsync it and rename it over `path`.
    Readers see the previous file or the complete new one; on an error the temporary goes away.
    An OSError of the file system (ENOSPC, EACCES, EROFS, ...) is raised as RunWriteError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except RunWriteError:
        raise
    except OSError as err:
        raise RunWriteError(write_error(path, err)) from err
    finally:
        with contextlib.suppress(OSError):  # a folder we may not even list: nothing was made there
            tmp.unlink(missing_ok=True)


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Write a probe file in `folder` (made for the probe and removed again when missing), so a
    run learns before training, not after an epoch, that its checkpoints or events cannot be
    written (RunWriteError naming the folder); a run that stops later leaves no empty folder."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunWriteError(write_error(folder, err, f"cannot write {what} there")) from None
    finally:
        for made in missing:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()
