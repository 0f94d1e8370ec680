"""Safety: a training run writes nothing outside its run folder and the demo cache (HOME, cwd
and TMPDIR are fresh folders, snapshotted before and after). Weights-only loading is proven in
test_corrupt_inputs.py (malicious pickle); config.py is never executed without --allow-exec:
tests/legacy/test_legacy_cli.py::test_default_path_never_runs_the_file."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from faults import TINY


def files_under(*folders):
    return {p for folder in folders for p in folder.rglob("*") if p.is_file()}


def test_training_writes_only_the_run_folder_and_demo_cache(tmp_path, demo_cache):
    # TMPDIR: a fresh folder outside pytest's deep tmp_path, where the DataLoader workers' socket
    # path could pass what a socket address holds (test_bad_config.py checks that case)
    with tempfile.TemporaryDirectory(prefix="ct-") as short_tmp:
        home, cwd, tmp = tmp_path / "home", tmp_path / "cwd", Path(short_tmp)
        for folder in (home, cwd):
            folder.mkdir()
        env = {key: value for key, value in os.environ.items() if not key.startswith(("CELLMAP_TRAIN", "HYDRA_", "XDG_"))}
        env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
        proc = subprocess.run([sys.executable, "-m", "cellmap_train", *TINY, "trainer=smoke", "hydra.run.dir=run"],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        allowed = (cwd / "run", home / ".cache" / "cellmap_train")
        stray = [p for p in files_under(home, cwd, tmp) if not any(p.is_relative_to(a) for a in allowed)]
    assert not stray, f"files written outside the run folder and the demo cache: {sorted(map(str, stray))[:10]}"
    assert (cwd / "run" / "checkpoints" / "2d_unet_1.pth").is_file()
