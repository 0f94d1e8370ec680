"""Layer 3: real multiruns in subprocesses: summary table, failing jobs, launchers, Optuna."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from cellmap_train.host.cores import usable_cores
from cellmap_train.run.listing import ranked, run_rows, select

FAST = ["experiment=demo", "trainer=smoke", "model.base_features=4", "model.depth=2", "batch_size=2",
        "data.dataloader_kwargs.num_workers=0"]


def summary(tmp_path):
    return pd.read_csv(tmp_path / "sweep" / "summary.csv")


def test_seed_lr_sweep_writes_summary_and_keeps_going_after_a_failure(run_cli, tmp_path):
    proc = run_cli("-m", *FAST, "seed=1,2", "lr=1e-3,abc", "hydra.sweep.dir=sweep")
    assert proc.returncode == 1  # a job failed: the sweep says so, after running every job
    table = summary(tmp_path)
    assert len(table) == 4 and set(table.columns) >= {"job", "seed", "lr", "status", "error", "best_metric",
                                                      "final_metric", "epochs_done", "wall_time_s", "checkpoint"}
    failed = table[table.status == "failed"]
    assert len(failed) == 2 and failed.error.str.contains("lr='abc'").all()
    ok = table[table.status == "ok"]
    assert sorted(ok.seed) == [1, 2] and (ok.epochs_done == 1).all()
    assert all((tmp_path / "sweep" / str(job) / "checkpoints" / "2d_unet_1.pth").is_file() for job in ok.job)
    stats = pd.read_csv(tmp_path / "sweep" / "seed_stats.csv")
    assert stats.seeds.tolist() == [2]
    assert "Sweep summary (4 jobs)" in proc.stdout and "Over seeds" in proc.stdout
    listed = ranked(run_rows(tmp_path / "sweep"))  # `cellmap-train runs sweep`: the same jobs, from their folders
    assert listed.run.tolist()[:2] == [str(job) for job in ok.job] and listed.status.tolist()[2:] == ["failed"] * 2
    assert listed.overrides[0].endswith(f"seed={ok.seed.iloc[0]} lr=0.001")  # as Hydra records the swept value
    assert select(run_rows(tmp_path / "sweep"))[1] == 2  # lr='abc' stopped them before training: listed with --all


def test_a_seed_sweep_shares_one_datasplit_and_the_summary_names_it(run_cli, tmp_path):
    """seed=1,2 varies the initialisation, never the validation set: the split is drawn with
    split_seed, written once in the sweep folder, and every job reads that file."""
    proc = run_cli("-m", *FAST, "seed=1,2", "hydra.sweep.dir=sweep", check=True)
    sweep = tmp_path / "sweep"
    shared = sorted(sweep.glob("datasplit*.csv"))
    assert len(shared) == 1 and shared[0].read_text().count("\n") >= 2
    assert not list(sweep.glob("*/datasplit*.csv"))  # no job drew its own
    digest = hashlib.sha256(shared[0].read_bytes()).hexdigest()[:12]
    records = [json.loads((sweep / job / "result.json").read_text()) for job in ("0", "1")]
    assert [r["datasplit_digest"] for r in records] == [digest, digest]
    assert [r["datasplit"] for r in records] == [str(shared[0].resolve())] * 2
    table = summary(tmp_path)
    assert table.datasplit.tolist() == [shared[0].name] * 2 and table.datasplit_digest.tolist() == [digest] * 2
    assert f"Datasplit: {shared[0].name} (sha256 {digest}), shared by all 2 jobs" in proc.stdout
    assert "split_seed: 42" in (sweep / "0" / ".hydra" / "config.yaml").read_text()


def saved_trainer_config(checkpoint) -> dict:
    from cellmap_train.engine.checkpoint import read_checkpoint

    return read_checkpoint(checkpoint)["config"]["trainer"]


def test_summary_is_sorted_by_best_metric_and_a_new_run_starts_from_the_best_job(run_cli, tmp_path):
    run_cli("-m", *FAST, "seed=1,2,3", "hydra.sweep.dir=sweep", check=True)
    table = summary(tmp_path)
    metrics = table.best_metric.tolist()
    assert metrics == sorted(metrics, reverse=True)
    first_job = tmp_path / "sweep" / str(table.job[0])  # the record's paths are relative to the job's folder
    assert saved_trainer_config(first_job / table.checkpoint[0])["num_threads"] is None  # jobs one by one: torch's default
    assert table.best_checkpoint.tolist() == ["checkpoints/2d_unet_1.pth"] * 3  # relative to each job's folder
    proc = run_cli(*FAST, "init_from=sweep", "hydra.run.dir=tuned", check=True)
    best = tmp_path / "sweep" / str(table.job[0]) / "checkpoints" / "2d_unet_1.pth"
    assert f"init_from=sweep: job {table.job[0]}, the sweep's best, its best checkpoint (epoch 1, " \
           f"dice/mean {table.best_metric[0]:.4g}): {best}" in proc.stdout


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(run_cli, tmp_path):
    # with DataLoader workers: inside a loky job they need a standard multiprocessing context
    with_workers = [o for o in FAST if "num_workers" not in o]
    run_cli("-m", "hydra/launcher=parallel", *with_workers, "seed=1,2", "hydra.sweep.dir=sweep", check=True)
    table = summary(tmp_path)
    assert (table.status == "ok").all() and len(table) == 2
    assert table.datasplit_digest.nunique() == 1 and len(list((tmp_path / "sweep").glob("datasplit*.csv"))) == 1
    cores = usable_cores()
    first_job = tmp_path / "sweep" / str(table.job[0])
    assert saved_trainer_config(first_job / table.checkpoint[0])["num_threads"] == max(1, cores // min(2, cores))  # 2 jobs share the cores


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(run_cli, tmp_path):
    run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *FAST, "seed=1,2",
            "hydra.sweep.dir=sweep", check=True)
    table = summary(tmp_path)
    assert (table.status == "ok").all() and len(table) == 2


def test_slurm_launcher_config_composes(run_cli):
    proc = run_cli("hydra/launcher=slurm", "hydra.launcher.partition=short", "--cfg", "hydra", check=True)
    assert "SlurmLauncher" in proc.stdout and "partition: short" in proc.stdout and "gpus_per_node: 1" in proc.stdout


@pytest.mark.slow
def test_optuna_searches_lr_and_batch_size(run_cli, tmp_path):
    run_cli("hparams_search=optuna", *FAST, "hydra.sweeper.n_trials=3", "hydra.sweep.dir=sweep", check=True)
    table = summary(tmp_path)
    assert len(table) == 3 and (table.status == "ok").all()
    assert {"lr", "batch_size"} <= set(table.columns)
    assert table.lr.between(1e-5, 1e-2).all() and table.batch_size.isin([2, 4, 8, 16]).all()
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_params" in best and "best_value" in best
