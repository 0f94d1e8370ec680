"""Fine-tuning: init_from (a new run starts from another run's weights, its output channels
matched by class) and freeze (parts of the model that do not train)."""

from __future__ import annotations

import pytest
import torch

from cellmap_train.engine.warm_start import init_weights
from cellmap_train.errors import CheckpointError, ConfigError
from cellmap_train.config.build import freeze_parameters
from cellmap_train.models.unet import UNet
from cellmap_train.config.preflight import meta_forward

SOURCE = ["nuc", "er", "mito"]


def unet(out_channels: int, seed: int = 0, features: int = 4) -> UNet:
    torch.manual_seed(seed)
    return UNet(spatial_dims=2, in_channels=1, out_channels=out_channels, base_features=features, depth=2).eval()


def save_full(model: torch.nn.Module, path, classes) -> None:
    """A checkpoint as the engine writes it (the parts init_from reads: model and config)."""
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 3, "step": 30,
                "config": {"classes": list(classes)}}, path)


@pytest.fixture
def source(tmp_path):
    model = unet(len(SOURCE), seed=1)
    path = tmp_path / "source.pth"
    save_full(model, path, SOURCE)
    return model, path


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("model", ["2d_unet", "3d_unet", "2d_resnet", "3d_resnet", "vitnet"])
def test_the_output_layer_is_found_for_every_shipped_model(compose_cfg, model):
    from cellmap_train.config.build import build_model

    cfg = compose_cfg("experiment=demo", f"model={model}")
    layer = meta_forward(cfg).output_layer
    with torch.device("meta"):
        built = build_model(cfg.model, cfg.get("model_kwargs"))
    assert built.get_submodule(layer).weight.shape[0] == len(cfg.classes), layer


def test_classes_are_matched_by_name_and_a_new_class_keeps_its_fresh_weights(source):
    trained, path = source
    fresh = unet(2, seed=2)
    model = unet(2, seed=2)
    line = init_weights(model, path, ["mito", "cell"], "head")
    assert "trained on nuc, er, mito" in line and "mito taken from it" in line and "cell new" in line
    got, want, untouched = outputs(model), outputs(trained), outputs(fresh)
    torch.testing.assert_close(got[:, 0], want[:, 2])  # mito: the trained channel, exactly
    torch.testing.assert_close(model.head.weight[1], fresh.head.weight[1])  # cell: as initialised
    assert not torch.allclose(got[:, 1], untouched[:, 1])  # ... but on the trained features


def test_the_same_classes_in_another_order_are_reordered(source):
    trained, path = source
    model = unet(3, seed=5)
    init_weights(model, path, ["mito", "nuc", "er"], "head")
    torch.testing.assert_close(outputs(model), outputs(trained)[:, [2, 0, 1]])


def test_the_same_classes_load_everything(source):
    trained, path = source
    model = unet(3, seed=5)
    assert "the same classes" in init_weights(model, path, SOURCE, "head")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[name]), name


def test_a_weights_only_file_loads_when_shapes_match_and_says_it_cannot_match_classes(tmp_path):
    trained = unet(2, seed=1)
    torch.save(trained.state_dict(), tmp_path / "weights.pth")  # the challenge's format
    model = unet(2, seed=3)
    assert "weights-only file" in init_weights(model, tmp_path / "weights.pth", ["nuc", "mito"], "head")
    torch.testing.assert_close(outputs(model), outputs(trained))


def test_a_weights_only_file_of_another_class_count_gives_everything_but_a_fresh_output_layer(tmp_path):
    """Nothing names its output channels, so none can be matched to this run's classes: the
    output layer keeps its fresh initialisation (a new head on a trained network) and says so."""
    trained = unet(2, seed=1)
    torch.save(trained.state_dict(), tmp_path / "weights.pth")
    model = unet(3, seed=3)
    fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    line = init_weights(model, tmp_path / "weights.pth", SOURCE, "head")
    assert line == (f"Initialised model weights from {tmp_path / 'weights.pth'} ({len(fresh) - 2} of {len(fresh)} tensors; "
                    f"a weights-only file, which does not name its classes, with 2 output channels for this run's 3): "
                    f"the output layer starts fresh, everything else is taken from it.")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, fresh[name] if name.startswith("head.") else trained.state_dict()[name]), name
    wider = unet(3, features=8)  # another width is another architecture, head or not
    with pytest.raises(CheckpointError, match=r"down.0.0.weight is \[4, 1, 3, 3\] there and \[8, 1, 3, 3\] in this model$"):
        init_weights(wider, tmp_path / "weights.pth", SOURCE, "head")


def test_init_from_classes_names_a_weights_only_files_channels_so_they_are_matched_by_name(tmp_path):
    """The challenge's .pth files do not say what they were trained on; whoever trained it knows."""
    trained = unet(3, seed=1)
    torch.save(trained.state_dict(), tmp_path / "weights.pth")
    fresh, model = unet(2, seed=2), unet(2, seed=2)
    line = init_weights(model, tmp_path / "weights.pth", ["mito", "cell"], "head", file_classes=SOURCE)
    assert line.endswith("tensors; trained on nuc, er, mito, as init_from_classes says): output channels of mito "
                         "taken from it; cell new (fresh weights).")
    got, want, untouched = outputs(model), outputs(trained), outputs(fresh)
    torch.testing.assert_close(got[:, 0], want[:, 2])
    assert torch.equal(model.head.weight[1], fresh.head.weight[1]) and not torch.allclose(got[:, 1], untouched[:, 1])
    with pytest.raises(CheckpointError, match=r"output layer head.weight is \[3, 4, 1, 1\] there, \[2, 4, 1, 1\] here "
                                              r"\(for 2 classes as init_from_classes names them and 2 classes\)"):
        init_weights(unet(2), tmp_path / "weights.pth", ["mito", "cell"], "head", file_classes=["nuc", "mito"])


def test_init_from_classes_must_agree_with_a_checkpoint_that_names_its_own(source):
    trained, path = source
    model = unet(3, seed=5)
    assert "the same classes" in init_weights(model, path, SOURCE, "head", file_classes=SOURCE)
    with pytest.raises(CheckpointError, match=r"source.pth: trained on classes \['nuc', 'er', 'mito'\] \(saved in it\), "
                                              r"not init_from_classes=\['mito', 'er', 'nuc'\]"):
        init_weights(model, path, SOURCE, "head", file_classes=["mito", "er", "nuc"])


@pytest.mark.parametrize("overrides, message", [
    (["init_from_classes=[nuc,er]"], "init_from_classes=['nuc', 'er'] names the classes of an init_from file, and "
                                     "init_from is not set"),
    (["init_from=w.pth", "init_from_classes=nuc"], "init_from_classes='nuc': must be a non-empty list of class names, "
                                                   "e.g. init_from_classes=[nuc,er,mito]"),
    (["init_from=w.pth", "init_from_classes=[]"], "init_from_classes=[]: must be a non-empty list of class names"),
    (["init_from=w.pth", "init_from_classes=[nuc,er,nuc]"], "init_from_classes=['nuc', 'er', 'nuc']: 'nuc' is listed twice"),
])
def test_a_wrong_init_from_classes_is_one_line_before_anything_runs(compose_cfg, overrides, message):
    from cellmap_train.config.shorthands import check_shorthands
    from cellmap_train.config.preflight import check_init_from

    cfg = compose_cfg("experiment=demo", *overrides)
    with pytest.raises(ConfigError) as err:
        check_shorthands(cfg)
        check_init_from(cfg)
    assert str(err.value).startswith(message)


def test_another_architecture_is_refused_naming_the_tensor_and_leaves_the_model_as_it_was(source):
    _, path = source
    model = unet(1, features=8)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"source.pth: down.0.0.weight is \[4, 1, 3, 3\] there and \[8, 1, 3, 3\]"):
        init_weights(model, path, ["mito"], "head")
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    deeper = UNet(spatial_dims=2, in_channels=1, out_channels=1, base_features=4, depth=3)
    with pytest.raises(CheckpointError, match="weights of another architecture \\(missing "):
        init_weights(deeper, path, ["mito"], "head")


def test_other_classes_without_a_known_output_layer_are_refused(source):
    _, path = source
    with pytest.raises(CheckpointError, match="output layer could not be found"):
        init_weights(unet(2), path, ["mito", "nuc"], None)


def test_a_folder_or_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="a folder, not a checkpoint file"):
        init_weights(unet(1), tmp_path, ["nuc"], "head")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        init_weights(unet(1), tmp_path / "nope.pth", ["nuc"], "head")


def test_freeze_stops_the_named_parts_training_and_a_wrong_name_lists_the_parts():
    model = unet(2)
    line = freeze_parameters(model, ["down", "up"])
    assert line.startswith("Frozen: down, up (") and "the rest trains" in line
    assert {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} == {"merge", "head"}
    assert freeze_parameters(unet(2), []) is None
    with pytest.raises(ConfigError, match="freeze: 'encoder' names no parameters of UNet; its parts with parameters "
                                          "are down, up, merge, head"):
        freeze_parameters(unet(2), ["encoder"])
    with pytest.raises(ConfigError, match="'dow' names no parameters"):  # a prefix of a name is not a module path
        freeze_parameters(unet(2), ["dow"])


def test_batch_norms_of_a_frozen_part_keep_their_running_statistics():
    model = unet(2)
    assert "its 6 batch norms keep their running statistics" in freeze_parameters(model, ["down"])
    norms = {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)}
    before = {name: module.running_mean.clone() for name, module in norms.items()}
    batch = torch.rand(2, 1, 16, 16) * 5
    encoder = model.down[0]
    expected = encoder.eval()(batch)  # the frozen part's output with its trained statistics
    model.train()
    assert torch.equal(encoder(batch), expected)  # a train-mode forward normalises the same way
    model(batch).sum().backward()
    changed = {name for name, module in norms.items() if not torch.equal(module.running_mean, before[name])}
    assert changed == {name for name in norms if name.startswith("merge.")}


def hparams(log_dir, keys=("init_from", "freeze")) -> dict:
    """What TensorBoard's HParams tab shows for `keys` of the run logged under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    for events in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        try:
            content = acc.PluginTagToContent("hparams")
        except KeyError:  # only the file add_hparams wrote has the plugin
            continue
        if "_hparams_/session_start_info" in content:
            info = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
            return {key: info.hparams[key].string_value for key in keys}
    raise AssertionError(f"no hparams under {log_dir}")


def test_fine_tuning_runs_resume_freeze_and_conflicts(run_main, tmp_path):
    """A run that resumes uses its own checkpoint, not init_from; a run from init_from with
    everything but the output layer frozen changes only that layer; init_from with
    model_to_load is refused."""
    base = ["experiment=demo", "trainer=smoke", "trainer.progress_bar=false"]
    run_main(*base, "hydra.run.dir=first", check=True)
    first = tmp_path / "first" / "checkpoints" / "2d_unet_1.pth"
    proc = run_main(*base, "hydra.run.dir=tuned", f"init_from={first}", "freeze=[down,up,merge]", "lr=1e-2", check=True)
    assert "Frozen: down, up, merge (" in proc.stdout
    before, after = (torch.load(path, weights_only=True)["model"] for path in (first, tmp_path / "tuned/checkpoints/2d_unet_1.pth"))
    # nothing else moves: the frozen batch norms' running statistics neither
    assert {name for name in before if not torch.equal(before[name], after[name])} == {"head.weight", "head.bias"}
    assert hparams(tmp_path / "tuned" / "tensorboard") == {"init_from": str(first), "freeze": "down,up,merge"}
    weights_only = tmp_path / "weights.pth"  # the challenge's format, its classes named on the command line
    torch.save(before, weights_only)
    proc = run_main(*base, "hydra.run.dir=named", f"init_from={weights_only}", "init_from_classes=[nuc,er,mito]",
                   "classes=[mito,nuc]", "lr=1e-12", "epochs=1", "iterations_per_epoch=1", check=True)
    assert "trained on nuc, er, mito, as init_from_classes says): output channels of mito, nuc taken from it." in proc.stdout
    named = torch.load(tmp_path / "named" / "checkpoints" / "2d_unet_1.pth", weights_only=True)["model"]
    torch.testing.assert_close(named["head.weight"], before["head.weight"][[2, 0]])  # one step at lr 1e-12 moves nothing
    proc = run_main(*base, "hydra.run.dir=first", "load_model=latest", "epochs=2", f"init_from={first}", check=True)
    assert f"init_from={first} not used: the run continues from its own checkpoint" in proc.stdout
    assert "Resumed from" in proc.stdout
    proc = run_main(*base, "hydra.run.dir=second", "load_model=latest", f"init_from={first}", "model_to_load=other")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"cellmap_train: error: init_from={first} and model_to_load=other "
                                                     "both say where the weights come from: set one of them")


def test_the_memory_check_counts_frozen_weights_once(compose_cfg):
    whole = meta_forward(compose_cfg("experiment=demo"))
    head_only = meta_forward(compose_cfg("experiment=demo", "freeze=[down,up,merge]"))
    assert head_only.parameter_bytes == whole.parameter_bytes == whole.trainable_bytes
    assert head_only.trainable_bytes == 4 * (8 * 3 + 3)  # the 1x1 head's weight and bias, float32


def test_freezing_everything_is_refused():
    with pytest.raises(ConfigError, match=r"freeze=\['down', 'up', 'merge', 'head'\] leaves nothing to train: all 36 parameter tensors of UNet"):
        freeze_parameters(unet(2), ["down", "up", "merge", "head"])
