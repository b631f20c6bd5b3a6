"""LogitNormLoss / logit_norm_loss: equal to the host and to the paper's formula, robust."""

import math

import pytest
import torch
from pytorch_ood.api import LossInfo
from pytorch_ood.loss import LogitNorm as HostLogitNorm
from pytorch_ood.loss import logit_norm_loss as host_logit_norm_loss
from torch.nn import functional as F

from logitnorm_plugin import LogitNormLoss, create_loss, logit_norm_loss


def _reference_logit_norm(logits, target, t):
    """The authors' formula, written from the paper: normalise by the L2 norm (+1e-7), divide
    by t, then plain cross-entropy (mean over the batch)."""
    norms = logits.norm(p=2, dim=-1, keepdim=True) + 1e-7
    return F.cross_entropy(logits / norms / t, target)


@pytest.mark.parametrize("t", [0.0085, 0.04, 0.1, 1.0])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_equals_host_and_reference(t, scale):
    logits = torch.randn(64, 10) * scale
    target = torch.randint(0, 10, (64,))
    ours = logit_norm_loss(logits, target, t=t)
    assert torch.allclose(ours, host_logit_norm_loss(logits, target, t=t), rtol=0, atol=1e-6)
    assert torch.allclose(ours, HostLogitNorm(t=t)(logits, target), rtol=0, atol=1e-6)
    # the authors divide twice (by the norm, then by t): a different rounding order, so the
    # bound is 1e-6 relative (a float32 loss of 57 has a resolution of 4e-6)
    assert torch.allclose(ours, _reference_logit_norm(logits, target, t), rtol=1e-6, atol=1e-6)
    for reduction in ("sum", "none"):
        assert torch.allclose(
            logit_norm_loss(logits, target, t=t, reduction=reduction),
            host_logit_norm_loss(logits, target, t=t, reduction=reduction),
            rtol=1e-6,
            atol=1e-5,
        )


def test_module_equals_function_and_default_t():
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    loss = LogitNormLoss()
    assert loss.t == 0.04
    assert torch.equal(loss(logits, target), logit_norm_loss(logits, target, t=0.04))
    assert isinstance(create_loss("logitnorm"), LogitNormLoss)


def test_ood_labels_are_ignored_like_the_host():
    logits = torch.randn(10, 4)
    target = torch.tensor([0, 1, -1, 2, 3, -1, 0, 1, 2, -5])
    known = target >= 0
    with pytest.warns(UserWarning, match="Discarding"):
        host_mean = host_logit_norm_loss(logits, target, t=0.04)
    with pytest.warns(UserWarning, match="Discarding"):
        host_none = host_logit_norm_loss(logits, target, t=0.04, reduction="none")
    assert torch.allclose(logit_norm_loss(logits, target), host_mean, atol=1e-6)
    ours_none = logit_norm_loss(logits, target, reduction="none")
    # documented difference: shape B is kept, OOD rows are zero
    assert ours_none.shape == (10,)
    assert torch.all(ours_none[~known] == 0)
    assert torch.allclose(ours_none[known], host_none, atol=1e-6)
    assert torch.allclose(
        logit_norm_loss(logits, target, reduction="sum"), host_none.sum(), atol=1e-5
    )


def test_batch_without_id_samples_gives_zero_connected_to_graph():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = logit_norm_loss(logits, torch.tensor([-1, -1, -1]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_gradcheck_float64():
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 4, 2, -1, 1, 3])
    assert torch.autograd.gradcheck(lambda z: logit_norm_loss(z, target, t=0.3), (logits,))
    assert torch.autograd.gradcheck(
        lambda z: logit_norm_loss(z, target, t=0.3, reduction="none"), (logits,)
    )


def test_zero_logits_give_finite_loss_and_gradient():
    logits = torch.zeros(4, 10, requires_grad=True)
    loss = logit_norm_loss(logits, torch.tensor([0, 1, 2, 3]))
    assert math.isclose(loss.item(), math.log(10), rel_tol=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_autocast_bf16_is_computed_in_float32():
    torch.manual_seed(1)
    layer = torch.nn.Linear(16, 10)
    x, target = torch.randn(32, 16), torch.randint(0, 10, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = logit_norm_loss(logits, target)
    assert loss.dtype == torch.float32
    # the same bf16 logits, promoted before the loss: identical result
    assert torch.equal(loss, logit_norm_loss(logits.float(), target))
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_segmentation_shapes_norm_over_classes_per_pixel():
    logits = torch.randn(2, 5, 3, 4)
    target = torch.randint(0, 5, (2, 3, 4))
    target[0, 0, 0] = -1
    flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, 5)
    flat_target = target.reshape(-1)
    expected = logit_norm_loss(flat_logits, flat_target, t=0.1, reduction="none")
    ours = logit_norm_loss(logits, target, t=0.1, reduction="none")
    assert ours.shape == (2, 3, 4)
    assert torch.allclose(ours.reshape(-1), expected, atol=1e-6)
    assert torch.allclose(
        logit_norm_loss(logits, target, t=0.1), expected.sum() / (flat_target >= 0).sum()
    )


@pytest.mark.parametrize("t", [0, -0.1, float("nan"), float("inf"), "0.04", None, True])
def test_invalid_temperature_raises(t):
    with pytest.raises(ValueError, match="temperature"):
        LogitNormLoss(t=t)
    with pytest.raises(ValueError, match="temperature"):
        logit_norm_loss(torch.randn(2, 3), torch.tensor([0, 1]), t=t)


def test_invalid_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        LogitNormLoss(reduction="average")


@pytest.mark.parametrize(
    "logits, target, message",
    [
        (torch.randn(5), torch.tensor([0]), "B x C"),
        (torch.randn(4, 3), torch.tensor([0, 1, 2]), "shape"),
        (torch.randn(4, 3), torch.zeros(4, 3, dtype=torch.long), "shape"),
        (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0]), "integer"),
    ],
)
def test_bad_shapes_and_dtypes_raise(logits, target, message):
    with pytest.raises(ValueError, match=message):
        logit_norm_loss(logits, target)


def test_label_out_of_range_names_the_problem():
    with pytest.raises(ValueError, match=r"label 7.*3 classes"):
        logit_norm_loss(torch.randn(2, 3), torch.tensor([0, 7]))


def test_info_record():
    assert "info" in LogitNormLoss.__dict__
    assert isinstance(LogitNormLoss.info, LossInfo)
    assert LogitNormLoss.info.paper.code == "https://github.com/hongxin001/logitnorm_ood"


# -- numerics at the edges (issue 10) ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_zero_logits_give_finite_loss_and_gradient_in_every_dtype(dtype, reduction):
    target = torch.tensor([0, 1, 2, 3])
    for logits in (torch.zeros(4, 10, dtype=dtype), (torch.randn(4, 10) * 1e-5).to(dtype)):
        logits.requires_grad_(True)
        loss = logit_norm_loss(logits, target, t=0.0085, reduction=reduction)
        assert torch.isfinite(loss).all()
        loss.sum().backward()
        assert logits.grad.dtype == dtype
        assert torch.isfinite(logits.grad).all(), (dtype, logits.grad.abs().max())
    zero = logit_norm_loss(torch.zeros(4, 10, dtype=dtype), target)
    assert math.isclose(zero.item(), math.log(10), rel_tol=1e-6)


def test_float16_logits_of_ordinary_size_get_exactly_the_paper_formula():
    # the float16 floor of the norm only acts below it (7.6e-4 at t=0.04)
    logits = (torch.randn(32, 10) * 3).half()
    target = torch.randint(0, 10, (32,))
    assert torch.equal(logit_norm_loss(logits, target), logit_norm_loss(logits.float(), target))
    assert torch.allclose(
        logit_norm_loss(logits, target), _reference_logit_norm(logits.float(), target, 0.04),
        rtol=1e-6, atol=1e-6,
    )


@pytest.mark.parametrize("t", [1e-300, 1e-7, 5e-7])
def test_temperature_below_the_float32_safe_range_is_refused(t):
    with pytest.raises(ValueError, match=r"temperature t must be finite and > 0, at least 1e-06"):
        logit_norm_loss(torch.randn(4, 10), torch.tensor([0, 1, 2, 3]), t=t)
    with pytest.raises(ValueError, match=r"at least 1e-06 .*got "):
        LogitNormLoss(t=t)


def test_smallest_allowed_temperature_stays_finite_in_float32():
    from logitnorm_plugin.loss import MIN_T

    logits = (torch.randn(8, 100) * 50).requires_grad_(True)
    target = torch.randint(0, 100, (8,))
    for t in (MIN_T, 1e-3):
        loss = logit_norm_loss(logits, target, t=t, reduction="sum")
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all()
    # zero logits too (the largest gradient: 1 / (t * EPS) per unit of loss gradient)
    zero = torch.zeros(2, 100, requires_grad=True)
    logit_norm_loss(zero, torch.tensor([0, 1]), t=MIN_T, reduction="sum").backward()
    assert torch.isfinite(zero.grad).all()


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_any_integer_target_dtype_is_accepted(dtype):
    logits = torch.randn(6, 5, requires_grad=True)
    target = torch.tensor([0, 4, 2, 1, 3, 0])
    expected = logit_norm_loss(logits, target, reduction="none")
    ours = logit_norm_loss(logits, target.to(dtype), reduction="none")
    assert torch.equal(ours, expected)
    assert torch.equal(LogitNormLoss()(logits, target.to(dtype)), LogitNormLoss()(logits, target))
    if dtype.is_signed:  # OOD labels < 0 are ignored whatever the dtype
        with_ood = torch.tensor([0, -1, 2, -1, 3, 0], dtype=dtype)
        assert torch.equal(
            logit_norm_loss(logits, with_ood), logit_norm_loss(logits, with_ood.long())
        )
    ours.sum().backward()
    assert torch.isfinite(logits.grad).all()
