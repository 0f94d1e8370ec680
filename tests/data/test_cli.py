"""`cellmap-train` dispatch: subcommands go to their parsers, anything else to Hydra training."""

from __future__ import annotations

import subprocess

from inprocess import run_module


def run(*args: str) -> subprocess.CompletedProcess:
    """`python -m cellmap_train.cli ARGS` (the console script's entry), in this process."""
    return run_module("cellmap_train.cli", *args)


def test_overrides_go_to_hydra():
    proc = run("batch_size=3", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "batch_size: 3" in proc.stdout


def test_subcommands_have_their_own_help():
    datasplit = run("datasplit", "--help")
    assert datasplit.returncode == 0 and "--force-validate" in datasplit.stdout
    translate = run("translate", "--help")
    assert translate.returncode == 0 and "datasplit" not in translate.stdout
