"""One request object for ``evaluate`` (issue 17): built once from lp.evaluate's keywords,
checked once, naming the field."""

import pytest

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.evaluation import engine
from logitnorm_plugin.evaluation.request import EvaluateRequest


@pytest.mark.parametrize("options, field", [
    (dict(protocol="papers"), "protocol"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=True), "batch_size"),
    (dict(seed=-1), "seed"),
    (dict(repetitions=0), "repetitions"),
    (dict(num_workers=-1), "num_workers"),
])
def test_the_request_is_checked_once_naming_the_field(options, field):
    with pytest.raises(ValueError, match=field) as info:
        EvaluateRequest(models={}, benchmark="digits", **options)
    assert isinstance(info.value, UserError)


def test_evaluate_refuses_a_bad_value_before_anything_is_resolved(monkeypatch):
    def resolved(*args, **kwargs):
        raise AssertionError("resolved before the values were checked")

    monkeypatch.setattr(engine, "resolve_models", resolved)
    monkeypatch.setattr(engine, "resolve_benchmark", resolved)
    with pytest.raises(ValueError, match="protocol must be 'full' or 'paper'"):
        engine.evaluate({"m": "no-such-model"}, "digits", protocol="paper2")


def test_evaluate_passes_its_request_down_whole(monkeypatch):
    seen = []
    monkeypatch.setattr(engine, "run_evaluation", lambda request: seen.append(request) or [])
    assert engine.evaluate({}, "digits", ["msp"], batch_size=7, seed=3, protocol="paper",
                           repetitions=2) == []
    (request,) = seen
    assert (request.benchmark, request.detectors, request.batch_size, request.seed,
            request.protocol, request.repetitions) == ("digits", ["msp"], 7, 3, "paper", 2)
