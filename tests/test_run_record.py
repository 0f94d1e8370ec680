"""A run's record over its whole life: result.json (one RunRecord type, paths relative to the run
folder) and `.hydra/` kept per process when a run is resumed in its folder, by real runs."""

import json
import math

import yaml

from cellmap_train.run.history import earlier_configs, keep_earlier_configs
from cellmap_train.run.record import RunRecord, read_record, write_record

FAST = ["experiment=demo", "iterations_per_epoch=2", "validation_batch_limit=1", "model.base_features=4", "model.depth=2", "batch_size=2",
        "data.dataloader_kwargs.num_workers=0"]


def test_a_record_reads_back_as_written_and_keeps_fields_it_does_not_know(tmp_path):
    write_record(tmp_path, {"status": "ok", "best_metric": math.nan, "epochs_done": 3, "from_a_later_version": [1, 2]})
    assert json.loads((tmp_path / "result.json").read_text())["best_metric"] is None  # strict JSON
    record = read_record(tmp_path)
    assert (record.status, record.best_metric, record.epochs_done) == ("ok", None, 3)
    assert record.extra == {"from_a_later_version": [1, 2]}
    record.write(tmp_path)
    assert read_record(tmp_path) == record


def test_earlier_configs_are_numbered_in_the_order_the_processes_ran(tmp_path):
    for command in ("first", "second"):
        (tmp_path / ".hydra").mkdir()
        (tmp_path / ".hydra" / "overrides.yaml").write_text(f"- {command}\n")
        keep_earlier_configs(tmp_path)
    assert [p.name for p in earlier_configs(tmp_path)] == [".hydra.1", ".hydra.2"]
    assert (tmp_path / ".hydra.1" / "overrides.yaml").read_text() == "- first\n"
    assert keep_earlier_configs(tmp_path) is None  # no .hydra: a new run, nothing moved


def test_a_resumed_run_keeps_its_first_command_and_records_paths_in_its_folder(run_main, tmp_path):
    run_main(*FAST, "epochs=1", "hydra.run.dir=run", check=True)
    first = read_record(tmp_path / "run")
    run_main(*FAST, "epochs=2", "load_model=latest", "hydra.run.dir=run", check=True)
    run = tmp_path / "run"
    assert yaml.safe_load((run / ".hydra.1" / "overrides.yaml").read_text()) == [*FAST, "epochs=1"]  # hydra.* not recorded
    assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) == [*FAST, "epochs=2", "load_model=latest"]
    record = read_record(run)
    assert isinstance(record, RunRecord) and record.epochs_done == 2
    for path in (record.checkpoint, record.best_checkpoint, record.datasplit):
        assert path and not path.startswith("/") and (run / path).is_file(), path
    # the run's time covers both of its processes: the first one's training time, which its
    # checkpoint carries, and the whole of the second (the first's record also counted its set-up,
    # e.g. torch's first import in this process, so it is not the bound)
    from cellmap_train.engine.checkpoint import read_checkpoint

    first_training = read_checkpoint(run / "checkpoints" / "2d_unet_1.pth")["wall_time_s"]
    both_trainings = read_checkpoint(run / "checkpoints" / "2d_unet_2.pth")["wall_time_s"]
    assert 0 < first_training <= first.wall_time_s and first_training < both_trainings <= record.wall_time_s
