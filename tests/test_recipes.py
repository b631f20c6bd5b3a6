"""Named recipes: the paper's facts, lookup errors, and resolution into a run config."""

import dataclasses
import json

import pytest

from logitnorm_plugin._core.errors import UnknownNameError, UserError
from logitnorm_plugin.registry.architectures import ARCHS
from logitnorm_plugin.training import recipes
from logitnorm_plugin.training.config import resolve_config
from logitnorm_plugin.training.recipes import Recipe, get_recipe, list_recipes


def test_list_and_filter():
    assert list_recipes() == ["digits", "openood", "paper"]
    assert list_recipes("open*") == ["openood"]


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_is_complete_and_serialisable(name):
    r = get_recipe(name)
    assert r.name == name == name.lower()
    assert r.arch in ARCHS
    assert r.description and r.source
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    t, source = r.t_for("anything")
    assert t is not None and t > 0 and source
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.epochs = 1


def test_paper_recipe_is_the_papers():
    r = get_recipe("paper")
    assert (r.arch, dict(r.arch_kwargs)) == ("wrn-40-2", {"drop_rate": 0.3})
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.weight_decay) == (
        200, 128, 0.1, 0.9, 5e-4
    )
    assert (r.schedule, r.milestones, r.gamma) == ("multistep", (80, 140), 0.1)
    assert (r.crop_padding, r.flip, r.keep, r.train_split) == (4, True, "last", "train_full")
    assert r.nesterov is False
    assert r.t_for("cifar10")[0] == 0.04
    t100, source = r.t_for("cifar100")
    assert t100 == 0.0085
    assert "issue #2" in source and "first author" in source


def test_openood_recipe():
    r = get_recipe("openood")
    assert (r.epochs, r.nesterov, r.schedule, r.keep, r.train_split) == (
        100, True, "cosine", "best_val", "train"
    )
    assert r.lr_min == pytest.approx(1e-6)
    assert r.arch == "resnet18-32x32"


def test_lookup_is_forgiving_and_errors_name_the_closest():
    assert get_recipe("PAPER") is get_recipe("paper")
    assert get_recipe(get_recipe("digits")) is get_recipe("digits")
    with pytest.raises(UnknownNameError, match="Did you mean 'paper'") as info:
        get_recipe("papr")
    assert info.value.available == ["digits", "openood", "paper"]


def test_invalid_recipe_records_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        Recipe(name="x", description="d", arch="digits-cnn", epochs=1, batch_size=1, lr=0.1,
               schedule="steps")
    with pytest.raises(ValueError, match="best_val"):
        Recipe(name="x", description="d", arch="digits-cnn", epochs=1, batch_size=1, lr=0.1,
               keep="best_val", train_split="train_full")


def test_default_recipe_depends_on_dataset():
    assert recipes.default_recipe_for("digits") == "digits"
    assert recipes.default_recipe_for("cifar10") == "paper"


def test_resolve_config_fills_from_recipe_and_applies_overrides():
    config, cls = resolve_config("digits", loss="logitnorm", epochs=3, momentum=0.5)
    r = get_recipe("digits")
    assert config.recipe == "digits" and config.arch == r.arch
    assert config.epochs == 3 and config.momentum == 0.5
    assert config.lr == r.lr and config.batch_size == r.batch_size
    # the digits recipe carries the t that tune-t chose and the package ships
    from logitnorm_plugin.training.recipes import recommended_digits_t

    tuned = recommended_digits_t()
    assert config.loss_kwargs == {"t": tuned} and config.t == tuned
    assert config.t_source == r.t_for("digits")[1]
    assert cls.__name__ == "LogitNormLoss"
    json.dumps(config.to_dict())  # plain JSON all the way down


def test_resolve_config_paper_on_cifar100_uses_the_authors_t():
    config, _ = resolve_config("cifar100", loss="logitnorm")
    assert config.t == 0.0085 and "issue #2" in config.t_source
    assert config.arch_kwargs["drop_rate"] == 0.3
    assert config.arch_kwargs["num_classes"] == 100


def test_resolve_config_without_temperature_for_cross_entropy():
    config, _ = resolve_config("digits", loss="cross_entropy")
    assert config.t is None and config.loss_kwargs == {}


def test_resolve_config_rejects_unknown_options_and_bad_loss_arguments():
    with pytest.raises(UserError, match="unknown training option"):
        resolve_config("digits", momentumm=0.5)
    with pytest.raises(UserError, match="rejects the arguments"):
        resolve_config("digits", loss="logitnorm", loss_kwargs={"t": -1.0})
    with pytest.raises(UserError, match="rejects the arguments"):
        resolve_config("digits", loss="cross_entropy", loss_kwargs={"t": 0.1})


@pytest.mark.parametrize("name", list_recipes())
def test_description_states_the_recipes_numbers(name):
    # the one-line description is what listings and model cards show: it must not drift
    r = get_recipe(name)
    assert f"{r.epochs} epochs" in r.description
    assert f"lr {r.lr:g}" in r.description
    assert f"batch {r.batch_size}" in r.description
