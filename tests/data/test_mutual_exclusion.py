"""`data.mutual_exclusion`: true negatives inferred from classes that never share a voxel (the
challenge's use_mutual_exclusion), on the class table, on label arrays, on the demo crops through
CellMapData and its DataLoader, and in a real run."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

from cellmap_train.data.class_relations import atoms_of, exclusive_partners, infer_negatives
from cellmap_train.errors import ConfigError
from cellmap_train.legacy.tested_classes import TESTED_CLASSES
from test_datasets import make_data

NAN = np.nan


def test_the_class_table_knows_which_structures_can_share_a_voxel():
    partners, unknown = exclusive_partners(["nuc", "er", "mito", "cell", "ecs", "ne_mem", "chloroplast", "my_class"])
    nuc, er, mito, cell, ecs, ne_mem, chloroplast, mine = partners
    assert nuc == (2, 4, 6) and er == (2, 4, 6)  # the nuclear envelope is ER and nucleus both: no negatives between them
    assert mito == (0, 1, 4, 5, 6)  # a mitochondrion is neither nucleus, ER, extracellular space, envelope nor plastid
    assert cell == (4,) and ecs == (0, 1, 2, 3, 5, 6)  # a cell is everything but the space around it
    assert chloroplast == (0, 1, 2, 4, 5)  # plant structures lie in cells here: none inferred between them
    assert ne_mem == (2, 4, 6) and mine == ()
    assert unknown == ["my_class"]
    assert all(atoms_of(name) for name in TESTED_CLASSES)  # every class the challenge scores


def test_unknown_voxels_become_negative_where_an_exclusive_class_is_present():
    classes = ["nuc", "er", "mito"]
    labels = np.array([
        [1, 1, 0, 0, NAN, NAN],  # nuc: annotated but for its last two voxels
        [NAN, 0, 1, NAN, 0, NAN],  # er
        [NAN, NAN, NAN, NAN, NAN, NAN],  # mito: not annotated in this crop
    ], dtype=np.float32)
    partners, _ = exclusive_partners(classes)
    infer_negatives(labels, partners)
    np.testing.assert_array_equal(labels, np.array([
        [1, 1, 0, 0, NAN, NAN],  # nothing excludes nuc but mito, which is nowhere present
        [NAN, 0, 1, NAN, 0, NAN],  # nuc does not exclude er (the nuclear envelope is both)
        [0, 0, 0, NAN, NAN, NAN],  # mito is absent where nuc or er is present, still unknown elsewhere
    ], dtype=np.float32))
    known = np.array([[1, 0], [0, 1], [0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(infer_negatives(known.copy(), partners), known)  # annotations are never changed


def test_a_demo_crop_without_mito_learns_where_mito_is_not(demo_root, tmp_path):
    plain = make_data(demo_root, tmp_path, shape=(4, 32, 32))
    inferred = make_data(demo_root, tmp_path, shape=(4, 32, 32), mutual_exclusion=True)
    k = next(i for i, crop in enumerate(plain.train_set.crops) if "mito" not in crop.entry.classes)  # demo crop 3
    centre = np.mean(plain.train_set.bounds[k], axis=0)
    _, before = plain.train_set.crops[k].read(centre)
    _, after = inferred.train_set.crops[k].read(centre)
    present = (before[0] > 0) | (before[1] > 0)  # nucleus or ER
    assert np.isnan(before[2]).all() and present.any() and not present.all()
    assert (after[2][present] == 0).all() and np.isnan(after[2][~present]).all()
    np.testing.assert_array_equal(after[:2], before[:2])
    # a DataLoader worker reads a copy of the crop, and validation tiles read crops made the same way
    _, copied = pickle.loads(pickle.dumps(inferred.train_set.crops[k])).read(centre)
    np.testing.assert_array_equal(copied, after)
    assert all(crop.exclusive == [(2,), (2,), (0, 1)] for crop in inferred.val_set.crops)


def test_classes_that_can_all_overlap_or_are_unknown_are_warned_about(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cellmap_train.data.datamodule"):
        data = make_data(demo_root, tmp_path, classes=["nuc", "er"], mutual_exclusion=True)
    assert "data.mutual_exclusion: no two of nuc, er exclude each other" in caplog.text
    assert all(crop.exclusive is None for crop in data.train_set.crops)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellmap_train.data.datamodule"):
        data = make_data(demo_root, tmp_path / "mine", classes=["nuc", "mito", "my_class"], mutual_exclusion=True)
    assert "data.mutual_exclusion: my_class not among CellMap's classes" in caplog.text
    assert data.train_set.crops[0].exclusive == [(1,), (0,), ()]  # nuc and mito still inform each other
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellmap_train.data.datamodule"):
        make_data(demo_root, tmp_path / "other", classes=["nuc", "er", "mito"], mutual_exclusion=False)
    assert "mutual_exclusion" not in caplog.text


def test_a_class_annotated_nowhere_learns_only_inferred_negatives_and_is_told_so(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cellmap_train.data.datamodule"):
        data = make_data(demo_root, tmp_path, classes=["nuc", "mito", "ecs"], mutual_exclusion=True)
    assert "class ecs: annotated in no training crop" in caplog.text and "only the negatives inferred" in caplog.text
    assert "nothing is learnt" not in caplog.text
    crop = data.train_set.crops[0]
    _, labels = crop.read(np.mean(data.train_set.bounds[0], axis=0))
    assert (labels[2][(labels[0] > 0) | (labels[1] > 0)] == 0).all() and np.isnan(labels[2]).any()


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_mutual_exclusion_must_be_a_bool(demo_root, tmp_path, bad):
    with pytest.raises(ConfigError, match=rf"data.mutual_exclusion={bad!r}: must be true or false"):
        make_data(demo_root, tmp_path, mutual_exclusion=bad)


@pytest.mark.slow
def test_a_run_trains_with_inferred_negatives(run_main, tmp_path):
    proc = run_main("experiment=demo", "debug=fast", "data.mutual_exclusion=true", "hydra.run.dir=run", check=True)
    assert "Checkpoint:" in proc.stdout and "mutual_exclusion" not in proc.stderr  # nuc, er, mito: nothing to warn of
    assert "mutual_exclusion: true" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
