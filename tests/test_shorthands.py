"""A shorthand typed on the command line reaches its setting even when a preset wrote that
setting itself (`trainer=smoke` sets `epochs: 1`): the user's value is used, and said."""

from cellmap_train.config.shorthands import apply_command_line_shorthands


def test_a_typed_shorthand_wins_over_a_preset_and_says_so(compose_cfg, caplog):
    overrides = ["trainer=smoke", "epochs=3", "lr=0.01"]
    cfg = compose_cfg(*overrides)
    assert cfg.trainer.epochs == 1  # the preset's literal: epochs=3 would be dropped without a word
    lines = apply_command_line_shorthands(cfg, overrides)
    assert cfg.trainer.epochs == 3 and cfg.optimizer.lr == 0.01
    assert lines == ["epochs=3: used for trainer.epochs (the chosen preset set it to 1); set trainer.epochs=... "
                     "to choose otherwise"]
    assert lines[0] in caplog.text


def test_a_typed_home_wins_over_its_shorthand_and_defaults_stay_silent(compose_cfg):
    overrides = ["trainer=smoke", "epochs=3", "trainer.epochs=2"]
    cfg = compose_cfg(*overrides)
    assert apply_command_line_shorthands(cfg, overrides) == [] and cfg.trainer.epochs == 2
    plain = compose_cfg("epochs=4")  # trainer.epochs is ${epochs}: nothing to apply
    assert apply_command_line_shorthands(plain, ["epochs=4"]) == [] and plain.trainer.epochs == 4
