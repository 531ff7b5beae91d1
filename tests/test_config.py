"""Config: defaults are the reference's, presets load, overrides are typed, bad keys are named."""

from __future__ import annotations

import pytest

from spcl.cli import _ALIASES, build_parser, _config_from_args
from spcl.config import Config, ConfigError, leaf_fields, list_presets, load_config


def test_defaults_are_the_reference_hyper_parameters() -> None:
    c = Config(mode="usl")
    assert (c.optim.lr, c.optim.weight_decay, c.optim.epochs, c.optim.step_size) == (3.5e-4, 5e-4, 50, 20)
    assert c.memory.kind == "hybrid" and (c.memory.temp, c.memory.momentum) == (None, None)  # the method's own
    assert (c.pseudo.eps, c.pseudo.eps_gap, c.pseudo.k1, c.pseudo.k2, c.pseudo.min_samples) == (0.6, 0.02, 30, 6, 4)
    assert (c.optim.batch_size, c.data.num_instances, c.model.images_per_bn) == (64, 4, 16)


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_loads(preset: str) -> None:
    c = load_config(preset)
    assert c.mode in ("uda", "usl", "source-only")
    assert c.uses_source == (c.data.source is not None)


def test_iterations_follow_the_target() -> None:
    assert load_config("uda_market1501_msmt17").iters_per_epoch == 800
    assert load_config("usl_veri").iters_per_epoch == 800
    assert load_config("uda_personx_market1501").iters_per_epoch == 400
    assert load_config("uda_personx_market1501", {"optim.iters": 7}).iters_per_epoch == 7


def test_overrides_are_coerced_and_checked() -> None:
    c = load_config("usl_market1501", {"optim.lr": "1e-4", "model.dsbn": "false", "optim.epochs": "3"})
    assert c.optim.lr == 1e-4 and c.model.dsbn is False and c.optim.epochs == 3
    with pytest.raises(ValueError, match="optim.lrr"):
        load_config(overrides={"optim.lrr": 1})
    with pytest.raises(ValueError, match="optim.epochs must be int"):
        load_config(overrides={"optim.epochs": "many"})
    with pytest.raises(ValueError, match="pooling must be one of"):
        load_config(overrides={"model.pooling": "max"})
    with pytest.raises(ValueError, match="needs a labelled source"):
        load_config(overrides={"mode": "uda"})


def test_yaml_round_trip(tmp_path) -> None:
    c = load_config("uda_personx_market1501", {"seed": 5})
    path = tmp_path / "config.yaml"
    c.save(path)
    assert load_config(path) == c


def test_every_field_has_a_flag_and_aliases_map_to_fields() -> None:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    flags = {s for a in train._actions for s in a.option_strings}
    fields = {name for name, *_ in leaf_fields()} - {"mode"}
    for name in fields:
        assert f"--{name}" in flags, name
    for flag, (key, _) in _ALIASES.items():
        assert key in fields, flag
    args = parser.parse_args(["train", "uda", "--source", "personx", "--target", "market1501", "--lr", "0.001",
                              "--no-dsbn", "--pseudo.k1", "20"])
    c = _config_from_args(args, args.mode)
    assert (c.data.source, c.data.target, c.optim.lr, c.model.dsbn, c.pseudo.k1) == ("personx", "market1501", 0.001, False, 20)


def test_the_earlier_camera_aware_switch_loads_as_kind_cap(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="spcl.config"):
        c = load_config(overrides={"mode": "usl", "memory.kind": "cluster", "memory.camera_aware": True})
    assert c.memory.kind == "cap"
    assert [r.getMessage() for r in caplog.records] == ["note: memory.camera_aware: true is now written memory.kind: cap (read as such)"]
    assert load_config(overrides={"mode": "usl", "memory.camera_aware": False}).memory.kind == "hybrid"
    args = build_parser().parse_args(["train", "usl", "--memory.kind", "cluster", "--memory.camera_aware", "true"])
    assert _config_from_args(args, args.mode).memory.kind == "cap"


def test_schedule_settings_are_checked_and_milestones_read_from_text_or_lists(tmp_path) -> None:
    assert load_config(overrides={"mode": "usl", "optim.milestones": "20,40"}).optim.milestones == (20, 40)
    assert load_config(overrides={"mode": "usl", "optim.milestones": [20, 40]}).optim.milestones == (20, 40)
    assert load_config(overrides={"mode": "usl", "optim.milestones": "[20, 40]"}).optim.milestones == (20, 40)
    for empty in ("", "()", "[]", "none"):
        assert load_config(overrides={"mode": "usl", "optim.milestones": empty}).optim.milestones == ()
    c = load_config("usl_market1501_cap")
    assert c.optim.milestones == (20, 40) and c.optim.warmup_epochs == 10 and c.memory.kind == "cap"
    c.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == c
    with pytest.raises(ConfigError, match="optim.milestones must be increasing"):
        load_config(overrides={"mode": "usl", "optim.milestones": "40,20"})
    with pytest.raises(ConfigError, match="optim.milestones must be int"):
        load_config(overrides={"mode": "usl", "optim.milestones": "twenty"})
    with pytest.raises(ConfigError, match="optim.warmup_factor"):
        load_config(overrides={"mode": "usl", "optim.warmup_factor": 0})
    with pytest.raises(ConfigError, match="optim.optimizer must be one of"):
        load_config(overrides={"mode": "usl", "optim.optimizer": "rmsprop"})


def test_large_target_settings() -> None:
    with pytest.raises(ConfigError, match="pseudo.neighbors"):
        load_config(overrides={"mode": "usl", "pseudo.neighbors": "fast"})
    with pytest.raises(ConfigError, match="pseudo.approx_probe"):
        load_config(overrides={"mode": "usl", "pseudo.approx_probe": 0})
    c = load_config(overrides={"mode": "usl", "memory.precision": "bfloat16", "pseudo.neighbors": "approximate"})
    assert (c.memory.precision, c.pseudo.neighbors, c.pseudo.exact_up_to) == ("bfloat16", "approximate", 100_000)
