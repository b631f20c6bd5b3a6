"""ELogitNorm and T2FNorm (logitnorm_plugin.successors) against independent float64
re-derivations, and the model-part binding of objectives (split.build_loss, create_loss).

The references below are written from the papers' formulas with Python floats and ``math``,
one sample at a time, with the gradients derived by hand (not by autograd):

ELogitNorm, one sample with logits ``z``, label ``y``, weights ``W`` (``C x D``):
``k`` = first index of ``max z``; ``g_j = |z_j - z_k|``; ``d_kj = ||w_k - w_j||`` (``d_kk = 1``);
``s = (1/C) sum_j g_j / d_kj``; ``u = z / s``; ``L = logsumexp(u) - u_y``. With
``p = softmax(u)`` and ``A = sum_m (p_m - [m = y]) z_m``:
``dL/ds = -A / s^2``; ``dL/dz_i = (p_i - [i = y]) / s + dL/ds * ds/dz_i`` where
``ds/dz_j = sgn(z_j - z_k) / (C d_kj)`` for ``j != k`` (``sgn(0) = 0``: autograd's subgradient of
``|x|`` at 0, the published code's convention at ties) and ``ds/dz_k = -sum_{j != k} ds/dz_j``;
``ds/dd_kj = -g_j / (C d_kj^2)`` and ``dd_kj/dw_k = -dd_kj/dw_j = (w_k - w_j) / d_kj``.
"""

import math
import os

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import logitnorm_plugin as lp
from logitnorm_plugin._core.errors import MissingModelPartsError
from logitnorm_plugin.models import DigitsCNN
from logitnorm_plugin.registry import listing
from logitnorm_plugin.registry.split import build_loss, split_model, unwrap_model
from logitnorm_plugin.successors.elogitnorm import (
    ELogitNormLoss,
    class_distances,
    elogitnorm_loss,
)
from logitnorm_plugin.successors.t2fnorm import PUBLISHED_T, T2FNormLoss

RTOL = 1e-10


def _sgn(x: float) -> float:
    return (x > 0) - (x < 0)


def _reference_elogitnorm(z_rows, targets, w_rows):
    """Mean ELogitNorm loss over ID samples, d loss / d logits and d loss / d W (floats)."""
    C, D = len(w_rows), len(w_rows[0])
    dist_ = [[1.0 if i == j else math.sqrt(sum((w_rows[i][e] - w_rows[j][e]) ** 2
                                                 for e in range(D)))
              for j in range(C)] for i in range(C)]
    ids = [b for b, y in enumerate(targets) if y >= 0]
    n = max(len(ids), 1)
    total = 0.0
    grad_z = [[0.0] * C for _ in z_rows]
    grad_w = [[0.0] * D for _ in range(C)]
    for b in ids:
        z, y = z_rows[b], targets[b]
        k = max(range(C), key=lambda j: (z[j], -j))  # the first maximal class
        g = [abs(z[j] - z[k]) for j in range(C)]
        s = sum(g[j] / dist_[k][j] for j in range(C)) / C
        u = [v / s for v in z]
        m = max(u)
        lse = m + math.log(sum(math.exp(v - m) for v in u))
        total += lse - u[y]
        p = [math.exp(v - lse) for v in u]
        r = [p[i] - (1.0 if i == y else 0.0) for i in range(C)]
        a = sum(r[i] * z[i] for i in range(C))
        dl_ds = -a / s**2
        ds_dz = [0.0] * C
        for j in range(C):
            if j != k:
                ds_dz[j] = _sgn(z[j] - z[k]) / (C * dist_[k][j])
        ds_dz[k] = -sum(ds_dz)
        for i in range(C):
            grad_z[b][i] = (r[i] / s + dl_ds * ds_dz[i]) / n
        for j in range(C):
            if j == k:
                continue
            ds_dd = -g[j] / (C * dist_[k][j] ** 2)
            for e in range(D):
                dd_dwk = (w_rows[k][e] - w_rows[j][e]) / dist_[k][j]
                grad_w[k][e] += dl_ds * ds_dd * dd_dwk / n
                grad_w[j][e] -= dl_ds * ds_dd * dd_dwk / n
    return total / n, grad_z, grad_w


def _assert_relative(got: torch.Tensor, expected, what: str):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    scale = expected.abs().max().clamp_min(1e-300)
    err = (got.detach().double() - expected).abs().max() / scale
    assert err <= RTOL, f"{what}: relative error {float(err):.3g}"


def _check_against_reference(z, y, w):
    z = z.double().clone().requires_grad_(True)
    w = w.double().clone().requires_grad_(True)
    value = elogitnorm_loss(z, y, w)
    value.backward()
    ref, ref_gz, ref_gw = _reference_elogitnorm(z.tolist(), y.tolist(), w.tolist())
    _assert_relative(value, ref, "value")
    _assert_relative(z.grad, ref_gz, "d/d logits")
    _assert_relative(w.grad, ref_gw, "d/d W")
    return value


def _random(b=7, c=5, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g, dtype=torch.float64) * 3,
            torch.randint(0, c, (b,), generator=g),
            torch.randn(c, d, generator=g, dtype=torch.float64))


# -- ELogitNorm against the re-derivation ------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elogitnorm_values_and_gradients_equal_the_formula(seed):
    z, y, w = _random(seed=seed)
    y[3] = -1  # an OOD row is ignored
    _check_against_reference(z, y, w)


def test_elogitnorm_ties_in_the_max_logit_take_the_first_class():
    z, y, w = _random(b=4, c=5)
    z[0, 1] = z[0, 3] = z[0].max() + 1.0  # two maximal classes
    z[1, :] = torch.tensor([2.0, 2.0, 2.0, -1.0, 0.5], dtype=torch.float64)  # three
    z[2, 4] = z[2, 0] = z[2].max() + 0.25
    value = _check_against_reference(z, y, w)
    # the rule matters: taking the last maximal class of row 0 gives another value
    swapped = z.clone()
    swapped[0, [1, 3]] = swapped[0, [3, 1]]
    w_swapped = w[[0, 3, 2, 1, 4]]
    y_swapped = y.clone()
    y_swapped[y == 1], y_swapped[y == 3] = 3, 1
    other = elogitnorm_loss(swapped, y_swapped, w_swapped)
    assert not torch.isclose(value, other, rtol=1e-6, atol=0)


def test_elogitnorm_single_class_batches():
    z, _, w = _random(b=6, c=4)
    _check_against_reference(z, torch.full((6,), 2), w)  # every label the same
    _check_against_reference(z[:1], torch.tensor([0]), w)  # one sample


def test_elogitnorm_reductions_and_ood_rows():
    z, y, w = _random()
    y[[1, 4]] = -1
    per = elogitnorm_loss(z, y, w, reduction="none")
    assert per.shape == y.shape and per[1] == 0 and per[4] == 0
    assert torch.allclose(elogitnorm_loss(z, y, w, reduction="sum"), per.sum(), rtol=1e-14)
    assert torch.allclose(elogitnorm_loss(z, y, w), per.sum() / 5, rtol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_elogitnorm_all_equal_logits_give_log_c_and_finite_gradients(dtype):
    c = 6
    w = torch.randn(c, 3, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                    requires_grad=True)
    z = torch.full((3, c), 7.5, dtype=dtype, requires_grad=True)  # scale 0
    value = elogitnorm_loss(z, torch.tensor([0, 1, 5]), w)
    assert torch.isfinite(value)
    assert math.isclose(value.detach().item(),
                        math.log(c), rel_tol=1e-6)
    value.backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(w.grad).all()


def test_elogitnorm_identical_class_weights_give_finite_values():
    z, y, w = _random(b=5, c=4, d=3)
    w[2] = w[1]
    w.requires_grad_(True)
    value = elogitnorm_loss(z, y, w)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(w.grad).all()


def test_elogitnorm_scale_is_float32_under_autocast():
    torch.manual_seed(0)
    head = nn.Linear(16, 10)
    x = torch.randn(12, 16)
    y = torch.arange(12) % 10
    loss = ELogitNormLoss(head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
        assert logits.dtype == torch.bfloat16
        value = loss(logits, y)
    assert value.dtype == torch.float32
    expected = elogitnorm_loss(logits.float(), y, head.weight)  # outside autocast, fp32
    assert torch.equal(value, expected)


def test_class_distances_equal_the_pairwise_norms():
    w = torch.randn(100, 64, dtype=torch.float64)
    expected = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist")
    expected.fill_diagonal_(1.0)
    assert torch.allclose(class_distances(w), expected, rtol=1e-12, atol=0)


def test_elogitnorm_trains_the_final_layer_through_the_loss():
    """Through a real module: the loss reads the bound layer's current weight, and its
    gradient reaches that weight through both the logits and the distances."""
    torch.manual_seed(0)
    model = DigitsCNN(10, width=4).double()
    loss = lp.create_loss("elogitnorm", model=model)
    assert loss.head is model.fc
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(8)
    features = model.features(x).detach()
    logits = F.linear(features, model.fc.weight, model.fc.bias)
    loss(logits, y).backward()
    # the same through the reference: both paths of W
    w = model.fc.weight.detach()
    z = logits.detach().clone().requires_grad_(True)
    ref, ref_gz, ref_gw = _reference_elogitnorm(z.tolist(), y.tolist(), w.tolist())
    via_logits = torch.tensor(ref_gz, dtype=torch.float64).T @ features
    _assert_relative(model.fc.weight.grad, via_logits + torch.tensor(ref_gw, dtype=torch.float64),
                     "d/d W (total)")


# -- binding model parts -----------------------------------------------------------------------


def test_a_loss_that_needs_parts_and_gets_none_raises_one_clear_error():
    for build in (lambda: lp.create_loss("elogitnorm"), lambda: ELogitNormLoss(),
                  lambda: lp.create_loss("t2fnorm"), lambda: build_loss(T2FNormLoss)):
        with pytest.raises(MissingModelPartsError, match=r"needs the model's head.*model=model"):
            build()


def test_losses_without_parts_ignore_the_model():
    model = DigitsCNN(10, width=4)
    assert lp.create_loss("logitnorm", model=model, t=0.05).t == 0.05
    assert lp.create_loss("cross_entropy", model=model) is not None


def test_unknown_part_names_are_rejected():
    class Odd(nn.Module):
        model_parts = ("penultimate",)

        def forward(self, logits, target):
            return logits.sum()

    with pytest.raises(ValueError, match="penultimate.*encoder"):
        lp.create_loss(Odd, model=DigitsCNN(10, width=4))


def test_wrappers_are_unwrapped(tmp_path):
    model = DigitsCNN(10, width=4)
    compiled = torch.compile(model)  # not run: wrapping alone
    assert unwrap_model(compiled) is model
    assert lp.create_loss("elogitnorm", model=compiled).head is model.fc
    store = dist.FileStore(os.fspath(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(torch.compile(ddp)) is model
        assert lp.create_loss("elogitnorm", model=ddp).head is model.fc
    finally:
        dist.destroy_process_group()


def test_parts_given_by_the_caller_win():
    model = DigitsCNN(10, width=4)
    other = nn.Linear(128, 10)
    assert lp.create_loss("elogitnorm", model=model, head=other).head is other


class RecordingLoss(nn.Module):
    """A third-party objective that declares two parts; records what it was given."""

    model_parts = ("encoder", "head")
    seen = []

    def __init__(self, encoder=None, head=None):
        super().__init__()
        RecordingLoss.seen.append((encoder, head))

    def forward(self, logits, target):
        return F.cross_entropy(logits, target)


def test_the_trainer_binds_the_parts_a_loss_declares(tmp_path):
    RecordingLoss.seen.clear()
    lp.train(loss=RecordingLoss, epochs=2, batch_size=256, out=tmp_path / "run", progress=False,
             device="cpu")
    encoder, head = RecordingLoss.seen[-1]  # the last: the trainer's (the first checks arguments)
    assert isinstance(head, nn.Linear) and head.out_features == 10
    model = encoder.__self__  # the split protocol: DigitsCNN.features, bound to the model
    assert isinstance(model, DigitsCNN) and model.fc is head


# -- T2FNorm ------------------------------------------------------------------------------------


def _reference_t2fnorm(features, targets, w_rows, bias, t):
    """Mean T2FNorm loss and d loss / d W from the features (floats)."""
    C, D = len(w_rows), len(w_rows[0])
    total, grad_w = 0.0, [[0.0] * D for _ in range(C)]
    n = len(targets)
    for f, y in zip(features, targets):
        norm = max(math.sqrt(sum(v * v for v in f)), 1e-12)
        h = [v / (norm * t) for v in f]
        z = [sum(w_rows[c][e] * h[e] for e in range(D)) + bias[c] for c in range(C)]
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        total += lse - z[y]
        for c in range(C):
            r = math.exp(z[c] - lse) - (1.0 if c == y else 0.0)
            for e in range(D):
                grad_w[c][e] += r * h[e] / n
    return total / n, grad_w


def test_t2fnorm_training_forward_and_loss_equal_the_formula():
    torch.manual_seed(0)
    model = DigitsCNN(10, width=4).double().train()
    loss = lp.create_loss("t2fnorm", model=model)
    assert loss.t == PUBLISHED_T == 0.1
    x = torch.randn(9, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(9)
    value = loss(model(x), y)
    value.backward()
    with torch.no_grad():  # training mode again: BatchNorm uses the same batch statistics
        features = model.features(x)  # the raw features: the hook acts on the head only
    ref, ref_gw = _reference_t2fnorm(features.tolist(), y.tolist(), model.fc.weight.tolist(),
                                     model.fc.bias.tolist(), 0.1)
    _assert_relative(value, ref, "T2FNorm value")
    _assert_relative(model.fc.weight.grad, ref_gw, "T2FNorm d/d W")


def test_t2fnorm_eval_forward_divides_by_t_and_remove_restores():
    torch.manual_seed(0)
    model = DigitsCNN(10, width=4).eval()
    x = torch.randn(5, 1, 8, 8)
    plain = model(x)
    loss = lp.create_loss("t2fnorm", model=model, t=0.25)
    f = model.features(x)
    expected = F.linear(f / 0.25, model.fc.weight, model.fc.bias)  # not model.fc: hooked
    assert torch.allclose(model(x), expected, atol=1e-6)
    loss.remove()
    assert torch.equal(model(x), plain)


def test_t2fnorm_t_is_its_own_not_the_recipes(tmp_path):
    from logitnorm_plugin._core.errors import UserError
    from logitnorm_plugin.training.config import resolve_config

    config, _ = resolve_config(loss="t2fnorm")
    assert config.loss_kwargs == {"t": PUBLISHED_T} and config.t is None
    config, _ = resolve_config(loss="t2fnorm", loss_kwargs={"t": 0.5})
    assert config.loss_kwargs == {"t": 0.5} and config.t is None
    with pytest.raises(UserError, match="temperature of its own"):
        resolve_config(loss="t2fnorm", t_from=tmp_path / "recommended_t.json")
    with pytest.raises(UserError, match="rejects"):
        resolve_config(loss="t2fnorm", loss_kwargs={"t": -1.0})


def test_a_trained_t2fnorm_run_loads_as_the_test_time_network(tmp_path):
    from logitnorm_plugin.evaluation.engine import evaluate
    from logitnorm_plugin.training.runs import load_checkpoint, load_trained, read_config

    out = tmp_path / "t2f"
    lp.train(loss="t2fnorm", loss_kwargs={"t": 0.2}, epochs=2, batch_size=256, out=out,
             progress=False, device="cpu")
    raw = DigitsCNN(**read_config(out)["arch_kwargs"]).eval()
    raw.load_state_dict(load_checkpoint(out / "checkpoint.pt")["model"])  # unfolded weights
    model = load_trained(out).eval()
    assert type(model) is DigitsCNN and not model.fc._forward_pre_hooks
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        f = raw.features(x)
        expected = raw.fc(f / 0.2)  # head(encoder(x) / tau) with the trained layer
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-5)
        parts = split_model(model)
        assert torch.equal(parts.encoder(x), f)  # detectors see the raw penultimate features
        assert torch.allclose(parts.head(parts.encoder(x)), model(x), atol=1e-6)
    # through the engine: MSP (OpenOOD's T2FNormPostprocessor) of the test-time network
    scores = {}
    evaluate({"t2f": str(out)}, "digits", ["msp"], progress=False, keep_scores=True,
             scores_out=scores)
    from logitnorm_plugin.data.benchmarks import DigitsBenchmark

    id_set = DigitsBenchmark(seed=0).test_sets(known=True, unknown=False)[0]
    images = torch.stack([id_set[i][0] for i in range(len(id_set))])
    with torch.no_grad():
        msp = -raw.fc(raw.features(images) / 0.2).softmax(dim=1).max(dim=1).values
    assert torch.allclose(scores[("t2f", "msp", "ID")], msp, atol=1e-5)


# -- tuning T2FNorm's t by tune-t's protocol -----------------------------------------------------


def test_tune_t_tunes_t2fnorms_temperature_by_the_same_protocol(tmp_path):
    from logitnorm_plugin._core.errors import UserError
    from logitnorm_plugin.training.runs import read_config
    from logitnorm_plugin.workflows import tune_t as tuning

    fast = dict(dataset="digits", epochs=1, seeds=[0], device="cpu", noise_n=200,
                progress=False, stdout=False, arch_kwargs={"width": 4}, batch_size=256)
    record = tuning.tune_t(grid=[0.1, 0.5], out=tmp_path / "tune", loss="T2FNorm", **fast)
    assert record["loss"] == "t2fnorm" and record["chosen_t"] in (0.1, 0.5)
    assert record["detector"] == "msp" and record["validation"]["test_split_read"] is False
    assert "--loss t2fnorm" in record["command"]
    folders = sorted((tmp_path / "tune" / "runs").iterdir())
    configs = [read_config(f) for f in folders]
    assert [c["loss"] for c in configs] == ["t2fnorm", "t2fnorm"]
    assert sorted(c["loss_kwargs"]["t"] for c in configs) == [0.1, 0.5]
    assert all(c["t"] is None and c["eval_split"] == "val" for c in configs)
    with pytest.raises(UserError, match="takes none"):
        tuning.tune_t(grid=[0.1], out=tmp_path / "ce", loss="cross_entropy", **fast)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["elogitnorm", "t2fnorm"])
def test_torchrun_two_processes_train_the_successors(tmp_path, loss):
    """DDP (gloo, 2 processes): ELogitNorm's gradient reaches the final layer outside DDP's
    forward, T2FNorm's hook sits inside the wrapped module; both train and load."""
    import subprocess
    import sys
    from pathlib import Path

    from logitnorm_plugin.training.runs import load_trained

    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "logitnorm_plugin.cli",
         "train", "--dataset", "digits", "--loss", loss, "--epochs", "3", "--arch-arg",
         "width=8", "--device", "cpu", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    model, card = load_trained(out, return_card=True)
    assert card["runtime"]["world_size"] == 2 and card["loss"] == loss
    assert card["metrics"]["final_accuracy"] > 0.3  # 3 warm-up epochs: far above chance
    assert (f"its own t={PUBLISHED_T:g}" in card["description"]) == (loss == "t2fnorm")
    assert not model.training


def test_listing_says_which_objectives_bind_model_parts():

    notes = {row["name"]: row["notes"] for row in listing.describe("loss")}
    assert notes["elogitnorm"] == notes["t2fnorm"] == "binds the model's head"
    assert notes["logitnorm"] == "" and "binds" not in notes["outlier_exposure"]


@pytest.mark.parametrize("name", ["elogitnorm", "t2fnorm"])
def test_the_training_step_with_a_successor_is_one_graph_with_no_host_sync(name):
    """Forward (T2FNorm's hook included) and loss (ELogitNorm's distances and scale) trace as
    one graph: nothing reads a value back to the host, so a CUDA graph can capture the step."""
    import torch._dynamo

    from logitnorm_plugin.data import ImageTensors
    from logitnorm_plugin.training.step import TrainStep

    torch.manual_seed(0)
    model = DigitsCNN(10, width=8)
    data = ImageTensors(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(1).long(),
                        (0.5,), (0.25,))
    step = TrainStep(model, lp.create_loss(name, model=model),
                     torch.optim.SGD(model.parameters(), lr=0.01), normalize=data.normalize)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,), generator=g)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(step.forward_loss)(images, labels)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    loss, logits = step.forward_loss(images, labels)
    compiled = torch.compile(step.forward_loss, fullgraph=True, backend="eager")
    loss_c, logits_c = compiled(images, labels)
    assert torch.allclose(loss_c, loss) and torch.allclose(logits_c, logits)
