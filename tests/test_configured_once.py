"""Issue 17 follow-up: bench configures each model once (its up-front check), and the training
reuses that configuration, inline or in a job that travels to another process (pickled, as the
local pool and submitit send it)."""

import json
import pickle

import pytest

import logitnorm_plugin.training.loop as loop
from logitnorm_plugin.training import config as config_module
from logitnorm_plugin.training.runs import CARD_FILE, CONFIG_FILE
from logitnorm_plugin.workflows import bench
from logitnorm_plugin.workflows.bench_request import BenchRequest
from logitnorm_plugin.workflows.jobs import TrainJob


@pytest.fixture
def configured_calls(monkeypatch):
    """Every ``configure`` call, by (loss, seed), wherever it is called from."""
    calls = []
    original = config_module.configure

    def counting(request, *args, **kwargs):
        calls.append((str(request.loss), request.seed))
        return original(request, *args, **kwargs)

    for module in (config_module, loop, bench):
        monkeypatch.setattr(module, "configure", counting)
    return calls


def test_bench_configures_each_model_once(tmp_path, configured_calls):
    options = dict(benchmark="digits", losses=("cross_entropy", "logitnorm"), seeds=(0,),
                   epochs=1, detectors=("msp",), out=tmp_path / "b", progress=False,
                   plots=False)
    result = bench.run(**options)
    assert sorted(configured_calls) == [("cross_entropy", 0), ("logitnorm", 0)]  # before: 4
    assert len(result["rows"]) == 2 * 4  # 2 models x 1 detector x 4 OOD sets
    for loss in ("cross_entropy", "logitnorm"):
        run_dir = tmp_path / "b" / "runs" / f"digits-{loss}-s0"
        assert (run_dir / CARD_FILE).is_file()
        assert json.loads((run_dir / CONFIG_FILE).read_text())["loss"] == loss

    # a rerun checks each model up front again and trains nothing
    configured_calls.clear()
    again = bench.run(**options)
    assert sorted(configured_calls) == [("cross_entropy", 0), ("logitnorm", 0)]
    assert again["rows"] == result["rows"]


def test_a_training_job_carries_its_configuration(tmp_path, configured_calls, monkeypatch):
    request = BenchRequest(benchmark="digits", losses=("logitnorm",), seeds=(1,), epochs=1,
                           out=tmp_path / "b", progress=False)
    model = bench._TrainRequest.resolve("logitnorm", 1, "digits", request, "cpu")
    assert configured_calls == [("logitnorm", 1)]
    job = TrainJob(name="train logitnorm/s1", slug="train-digits-logitnorm-s1",
                   status_dir=str(tmp_path / "status"), device="cpu", dataset="digits",
                   request=model)
    travelled = pickle.loads(pickle.dumps(job))  # what a spawned worker or a Slurm task gets
    assert travelled.request.configured[0] == model.configured[0]

    def refuse(*args, **kwargs):
        raise AssertionError("the job configured its model again")

    monkeypatch.setattr(loop, "configure", refuse)
    outcome = travelled()
    assert outcome["trained"] is True
    written = json.loads((model.run_dir / CONFIG_FILE).read_text())
    expected = model.configured[0].to_dict()  # on the CPU: no autocast, the same record
    assert {k: v for k, v in written.items() if k != "runtime"} == expected
    assert (model.run_dir / CARD_FILE).is_file()


def test_a_given_configuration_takes_the_autocast_of_where_it_runs(tmp_path, configured_calls):
    from logitnorm_plugin.training.request import TrainRequest

    request = TrainRequest(dataset="digits", loss="cross_entropy", epochs=1, out=tmp_path / "r",
                           progress=False)
    # checked elsewhere as if for a bf16 device; this CPU run has no autocast
    checked = config_module.configure(request, amp="bf16")
    assert checked[0].amp == "bf16"
    configured_calls.clear()
    result = loop.run_training(request, checked)
    assert configured_calls == []
    written = json.loads((tmp_path / "r" / CONFIG_FILE).read_text())
    assert written["amp"] is None and result.card is not None
    assert {k: v for k, v in written.items() if k not in ("runtime", "amp")} == {
        k: v for k, v in checked[0].to_dict().items() if k != "amp"}


def test_tune_t_inline_configures_each_point_once(tmp_path, configured_calls, monkeypatch):
    from logitnorm_plugin.workflows import tune_t as tuning

    monkeypatch.setattr(tuning, "configure", config_module.configure)  # the counting one
    record = tuning.tune_t(dataset="digits", grid=[0.04, 0.1], epochs=1, seeds=[0],
                           device="cpu", noise_n=200, progress=False, stdout=False,
                           out=tmp_path / "tune")
    assert sorted(configured_calls) == [("logitnorm", 0), ("logitnorm", 0)]  # before: 4
    assert record["points"] == {"total": 2, "computed": 2, "reused": 0}
