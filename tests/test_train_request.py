"""One request object for ``train`` and one config type for a run (issue 17).

The configuration hashes below were computed on the tree before :class:`TrainConfig` and
:class:`Recipe` shared their fields (commit a1c8538): the same requests must give the same
``config.json`` record, key order included, so existing run folders and store keys still match.
"""

import json

import pytest

from logitnorm_plugin._core.digests import config_hash
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.training import recipes
from logitnorm_plugin.training.config import TrainConfig, configure, resolve_config
from logitnorm_plugin.training.request import TrainRequest

#: (request, config_hash of the record, config_hash of its JSON text: the key order too)
BEFORE = [
    (dict(dataset="digits", loss="cross_entropy", seed=0), "7cb98b5b644c0b19", "acdc17475466c9f5"),
    (dict(dataset="digits", loss="logitnorm", seed=0), "9ce6762a0874a2d2", "8a58127be9ba0cf8"),
    (dict(dataset="digits", loss="logitnorm", seed=2, epochs=3, momentum=0.5),
     "4e204f967c0b4a7f", "0ae1435bf649c3e4"),
    (dict(dataset="cifar10", loss="logitnorm", seed=0), "b633b60db31bcd0f", "8730d2a86e0b675a"),
    (dict(dataset="cifar100", loss="logitnorm", recipe="openood", seed=1),
     "70cc2509d49703a5", "658f5b8dca459048"),
    (dict(dataset="digits", loss="outlier_exposure", outliers="digits_jigsaw", seed=0),
     "294aaebe0b1bbd9f", "cd687397c1187ea9"),
    (dict(dataset="digits", loss="logitnorm", eval_split="val", recipe="openood",
          arch="digits-cnn"), "8659ddc77ec718b7", "78c9e55e91debdc8"),
]


@pytest.mark.parametrize("options, record_hash, text_hash", BEFORE)
def test_config_json_and_its_hash_are_what_they_were(options, record_hash, text_hash):
    config, _ = resolve_config(**options)
    record = config.to_dict()
    assert config_hash(record) == record_hash
    assert config_hash(json.dumps(record)) == text_hash  # same keys in the same order
    # the request form and the keyword form are one path
    assert configure(TrainRequest.of(**options))[0] == config
    # config.json reads back into the same configuration
    assert TrainConfig(**json.loads(json.dumps(record))).to_dict() == record


def test_the_recipe_fields_are_declared_once():
    names = recipes.RecipeFields.names()
    assert len(names) == 16 and names[0] == "epochs" and names[-1] == "keep"
    assert issubclass(TrainConfig, recipes.RecipeFields)
    assert issubclass(recipes.Recipe, recipes.RecipeFields)
    own = set(TrainConfig.__annotations__) | set(recipes.Recipe.__annotations__)
    assert not own & set(names)  # neither subclass declares a choice again


def test_a_config_is_no_dict():
    config, _ = resolve_config("digits", loss="cross_entropy")
    with pytest.raises(TypeError):
        config["epochs"]  # noqa: B018
    assert not hasattr(config, "get")


@pytest.mark.parametrize("options, field", [
    (dict(epochs=0), "epochs"),
    (dict(batch_size=0), "batch size"),
    (dict(lr=0.0), "learning rate"),
    (dict(seed=-1), "seed"),
    (dict(seed=True), "seed"),
    (dict(outlier_seed=2**32), "outlier seed"),
    (dict(resume="yes"), "resume"),
    (dict(eval_split="train"), "eval_split"),
    (dict(eval_batch_size=0), "eval_batch_size"),
    (dict(check_every=-1), "check_every"),
    (dict(outlier_ratio=0), "outlier_ratio"),
    (dict(overrides={"momentumm": 0.5}), "momentumm"),
])
def test_the_request_is_checked_once_naming_the_field(options, field):
    with pytest.raises(ValueError, match=field) as info:
        TrainRequest(**options)
    assert isinstance(info.value, UserError)  # the command line prints it as one line


def test_a_numpy_seed_is_recorded_as_an_int():
    import numpy as np

    request = TrainRequest(seed=np.int64(3), outlier_seed=np.uint32(4))
    assert (request.seed, request.outlier_seed) == (3, 4)
    assert type(request.seed) is int and type(request.outlier_seed) is int


def test_the_request_is_frozen_and_keeps_its_own_copies():
    loss_kwargs = {"t": 0.1}
    request = TrainRequest.of(loss_kwargs=loss_kwargs, momentum=0.5)
    loss_kwargs["t"] = 9.0
    assert request.loss_kwargs == {"t": 0.1} and request.overrides == {"momentum": 0.5}
    with pytest.raises(AttributeError):
        request.seed = 3


def test_a_recipe_override_is_checked_with_the_recipe_rules():
    with pytest.raises(ValueError, match="schedule"):
        resolve_config("digits", schedule="steps")
    with pytest.raises(ValueError, match="best_val"):
        resolve_config("digits", keep="best_val")
