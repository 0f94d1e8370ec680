"""Datasplit CSVs: upstream format, split guarantees, force_all_classes, no silent overwrite, CLI."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from cellmap_train.cli import main as cli_main
from cellmap_train.data.datasplit import assign_usages, make_datasplit_csv, read_datasplit
from cellmap_train.errors import DataError

ALL = ("nuc", "er", "mito")


def test_csv_has_the_challenge_format(demo_root, tmp_path):
    csv_path = tmp_path / "split.csv"
    entries = make_datasplit_csv(list(ALL), False, 0.3, base_path=str(demo_root), csv_path=csv_path)
    text = csv_path.read_text().splitlines()
    assert len(text) == len(entries) == 10
    first = next(csv.reader([text[0]]))
    assert text[0].startswith('"') and text[0].count('"') == 10  # five quoted columns, no header
    assert first[1] == first[3] and first[1].endswith("jrc_demo-1.zarr") and first[2] == "recon-1/em/fibsem-uint8"
    assert first[4] == "recon-1/labels/groundtruth/crop1/[nuc,er,mito]"
    assert read_datasplit(csv_path) == entries
    assert "er" not in next(e for e in entries if e.name.endswith("crop8")).classes  # demo crop 8 lacks er


PRESENT = [("nuc",), ("nuc", "er"), ("nuc",), ("nuc", "er"), ("er",), ("nuc", "er")]  # crops 0, 2, 4 lack a class


def upstream_rule(drawn, force):
    """What the challenge does to the draw: move (train/validate) or drop (True) incomplete crops."""
    other = {"train": "validate", "validate": "train"}
    complete = [len(p) == 2 for p in PRESENT]
    if force is True:
        return [u if ok else None for u, ok in zip(drawn, complete)]
    return [other[u] if not ok and u == force else u for u, ok in zip(drawn, complete)]


def test_force_all_classes_on_a_known_draw():
    drawn = assign_usages(PRESENT, ["nuc", "er"], False, 0.5, seed=3)
    assert drawn == ["validate", "validate", "train", "train", "validate", "validate"]
    assert assign_usages(PRESENT, ["nuc", "er"], "validate", 0.5, seed=3) == ["train", "validate", "train", "train", "train", "validate"]
    assert assign_usages(PRESENT, ["nuc", "er"], "train", 0.5, seed=3) == ["validate", "validate", "validate", "train", "validate", "validate"]
    assert assign_usages(PRESENT, ["nuc", "er"], True, 0.5, seed=3) == [None, "validate", None, "train", None, "validate"]


@pytest.mark.parametrize("force", ["train", "validate", True])
@pytest.mark.parametrize("seed", range(8))
def test_force_all_classes_follows_the_upstream_rule(force, seed):
    drawn = assign_usages(PRESENT, ["nuc", "er"], False, 0.5, seed=seed)
    expected = upstream_rule(drawn, force)
    result = assign_usages(PRESENT, ["nuc", "er"], force, 0.5, seed=seed)
    if {"train", "validate"} <= set(expected):  # otherwise the one-of-each guarantee changes one crop
        assert result == expected
    assert {"train", "validate"} <= set(result)
    assert all(len(p) == 2 for p, u in zip(PRESENT, result) if u == force or (force is True and u))


@pytest.mark.parametrize("seed", range(20))
def test_two_or_more_crops_always_give_a_validation_crop(seed):
    usages = assign_usages([("nuc",)] * 6, ["nuc"], False, 0.01, seed=seed)
    assert "validate" in usages and "train" in usages
    assert assign_usages([("nuc",)], ["nuc"], False, 0.01, seed=seed) == ["train"]


def test_validation_crop_is_taken_among_allowed_crops():
    # force "validate": only the complete crop may validate, whatever the draw
    for seed in range(10):
        usages = assign_usages([("nuc",), ("nuc",), ("nuc", "er")], ["nuc", "er"], "validate", 0.0 + 1e-9, seed=seed)
        assert usages == ["train", "train", "validate"]


def test_existing_csv_is_kept_unless_overwrite(demo_root, tmp_path):
    csv_path = tmp_path / "split.csv"
    make_datasplit_csv(["nuc"], False, 0.3, base_path=str(demo_root), csv_path=csv_path)
    before = csv_path.read_text()
    kept = make_datasplit_csv(["nuc"], False, 0.9, base_path=str(demo_root), csv_path=csv_path, seed=1)
    assert csv_path.read_text() == before and kept == read_datasplit(csv_path)
    make_datasplit_csv(["nuc"], False, 0.9, base_path=str(demo_root), csv_path=csv_path, seed=1, overwrite=True)
    assert csv_path.read_text() != before


def test_scale_filter_keeps_classes_annotated_fine_enough(demo_root, tmp_path):
    fine = make_datasplit_csv(["nuc"], False, 0.3, base_path=str(demo_root), dry_run=True, scale=8)
    assert len(fine) == 10
    # the crops are looked at 16 at a time (on S3 each class is two requests): the same split one by one
    assert make_datasplit_csv(["nuc"], False, 0.3, base_path=str(demo_root), dry_run=True, scale=8, threads=1) == fine
    with pytest.raises(Exception, match="no crops"):
        make_datasplit_csv(["nuc"], False, 0.3, base_path=str(demo_root), dry_run=True, scale=[4, 4, 4])


def test_cli_writes_then_keeps(demo_root, tmp_path, capsys):
    csv_path = tmp_path / "cli.csv"
    args = ["datasplit", "-p", str(demo_root), "-c", "nuc,er", "-fv", "-vr", "0.2", "-cp", str(csv_path)]
    assert cli_main(args) == 0
    assert "wrote" in capsys.readouterr().out
    before = csv_path.read_text()
    assert all(e.classes == ("nuc", "er") for e in read_datasplit(csv_path) if e.usage == "validate")
    assert cli_main(args + ["-vr", "0.9"]) == 0
    assert "kept as is" in capsys.readouterr().out and csv_path.read_text() == before


def test_cli_entry_point_reports_a_missing_folder_in_one_line(tmp_path):
    script = [sys.executable, "-c", "import sys; from cellmap_train.cli import main; sys.exit(main())"]
    proc = subprocess.run([*script, "datasplit", "-p", str(tmp_path / "nowhere"), "-cp", str(tmp_path / "x.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and f"{tmp_path / 'nowhere'}: no such folder to list crops from" in proc.stderr
    assert not (tmp_path / "x.csv").exists()


def test_no_crop_with_any_class_shortens_a_long_class_list(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no crops with any of the classes \['c0', .*, 'c7'\] and 40 more$"):
        make_datasplit_csv([f"c{i}" for i in range(48)], base_path=str(tmp_path / "empty"), csv_path=tmp_path / "x.csv")
