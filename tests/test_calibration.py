"""Calibration math against its oracles: torchmetrics' calibration error, relplot's Smooth ECE, hand computations."""

import numpy as np
import pytest
import relplot
import torch
from torchmetrics.classification import MulticlassCalibrationError

from lightning_guidance.calibration import (
    expected_calibration_error,
    integral_ece,
    smooth_ece,
    smooth_ece_bandwidth,
    smooth_ece_fixed_bandwidth,
    top_label_confidence,
)


def _random_probs(n, num_classes, temperature, seed, saturate=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, num_classes, generator=g) / temperature, dim=1)
    labels = torch.randint(num_classes, (n,), generator=g)
    if saturate:  # one-hot rows: confidence exactly 1, torchmetrics' extra bin
        probs[:saturate] = torch.nn.functional.one_hot(torch.randint(num_classes, (saturate,), generator=g),
                                                       num_classes).float()
    return probs, labels


@pytest.mark.parametrize("temperature,n_bins,saturate,seed", [
    (1.0, 10, 0, 0), (0.2, 10, 0, 1), (0.05, 10, 40, 2), (3.0, 15, 0, 3), (0.5, 5, 10, 4)])
def test_ece_equals_torchmetrics(temperature, n_bins, saturate, seed):
    probs, labels = _random_probs(500, 7, temperature, seed, saturate)
    expected = MulticlassCalibrationError(num_classes=7, n_bins=n_bins, norm="l1")(probs, labels)
    confidence, correct = top_label_confidence(probs, labels)
    assert float(expected_calibration_error(confidence, correct, n_bins)) == pytest.approx(float(expected), abs=1e-6)


def test_ece_hand_example():
    # bin 9: two samples at 0.95, one right -> |0.5 - 0.95| * 2/4; bin 5: 0.55 right -> 0.45/4; bin 1: 0.15 wrong
    confidence = torch.tensor([0.95, 0.95, 0.55, 0.15], dtype=torch.float64)
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert float(expected_calibration_error(confidence, correct)) == pytest.approx(0.45 / 2 + 0.45 / 4 + 0.15 / 4)


def test_ece_saturated_confidence_has_its_own_bin():
    # torchmetrics puts c == 1 in a bin of its own: |2 - 1.9|/3 + |0 - 1|/3, not |2 - 2.9|/3 for a merged last bin
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    expected = 0.1 / 3 + 1 / 3
    assert float(MulticlassCalibrationError(num_classes=2, n_bins=10)(probs, labels)) == pytest.approx(expected)
    assert float(expected_calibration_error(*top_label_confidence(probs, labels))) == pytest.approx(expected)


def test_top_label_confidence_and_input_errors():
    probs = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.3, 0.2]])
    confidence, correct = top_label_confidence(probs, torch.tensor([1, 2]))
    assert confidence.tolist() == pytest.approx([0.7, 0.5])
    assert correct.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="softmax"):
        top_label_confidence(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="at least one"):
        expected_calibration_error(torch.zeros(0), torch.zeros(0))


def test_integral_ece_is_mean_over_time():
    probs_per_t = [_random_probs(200, 5, temp, seed) for seed, temp in enumerate([0.1, 0.5, 2.0])]
    eces = [float(MulticlassCalibrationError(num_classes=5, n_bins=10)(p, y)) for p, y in probs_per_t]
    assert float(integral_ece(eces)) == pytest.approx(sum(eces) / 3)
    assert float(integral_ece(torch.tensor([0.1, 0.2, 0.6]))) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        integral_ece([])


def _smece_cases():
    rng = np.random.default_rng(0)
    cases = {}
    c = rng.uniform(0.1, 1, 2000)
    cases["calibrated"] = (c, (rng.uniform(size=2000) < c) * 1.0)
    c = rng.uniform(0.5, 1, 1000)
    cases["over-confident"] = (c, (rng.uniform(size=1000) < c**3) * 1.0)
    c = rng.uniform(0.2, 0.7, 1000)
    cases["under-confident"] = (c, (rng.uniform(size=1000) < np.sqrt(c)) * 1.0)
    c = rng.uniform(0, 1, 7)
    cases["few samples"] = (c, np.array([1, 0, 0, 1, 1, 0, 1.0]))
    c = rng.choice([0.3, 0.6, 0.9, 1.0], 500)
    cases["ties"] = (c, (rng.uniform(size=500) < 0.7) * 1.0)
    cases["saturated"] = (np.ones(50), (rng.uniform(size=50) < 0.5) * 1.0)
    return cases


_CASES = _smece_cases()


@pytest.mark.parametrize("case", list(_CASES))
def test_smooth_ece_equals_relplot(case):
    c, a = _CASES[case]
    expected, expected_sigma = relplot.smECE(c, a, return_width=True)
    c_t, a_t = torch.from_numpy(c), torch.from_numpy(a)
    # measured: the value agrees with relplot to 1e-16 and the bandwidth exactly on every case. 1e-12 still allows
    # float reordering but not a bisection stopped one step early (bandwidth off by up to 2^-10 ~ 1e-3, which the
    # former abs=1e-3 let through) nor another grid size or kernel truncation (differences of 1e-5 and more).
    assert smooth_ece(c_t, a_t) == pytest.approx(expected, abs=1e-12)
    assert smooth_ece_bandwidth(c_t, a_t) == expected_sigma  # the same bisection on the same grid: bit-equal
    # the fixed-bandwidth form at relplot's bandwidth is relplot's value
    at_sigma = smooth_ece_fixed_bandwidth(c_t, a_t, expected_sigma)
    assert float(at_sigma.detach()) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.3])
def test_fixed_bandwidth_equals_relplot_sigma(sigma):
    c, a = _CASES["over-confident"]
    expected = relplot.smECE_sigma(c, a, sigma)
    # measured agreement 6e-17: 1e-12 leaves room for float reordering only
    assert float(smooth_ece_fixed_bandwidth(torch.from_numpy(c), torch.from_numpy(a), sigma)) == pytest.approx(
        expected, abs=1e-12)


def test_smooth_ece_closed_form_constant_confidence():
    # every confidence equal to c with a fraction p correct: the smoothed residual is p - c everywhere
    c, p = 0.8, 0.55
    confidence = torch.full((40,), c, dtype=torch.float64)
    correct = (torch.arange(40) < 22).double()
    for sigma in (0.02, 0.1, 0.5):
        assert float(smooth_ece_fixed_bandwidth(confidence, correct, sigma)) == pytest.approx(abs(p - c), rel=1e-4)
    # the fixed point of sigma -> |p - c| is |p - c| itself, up to the bisection's resolution 2^-10
    assert smooth_ece_bandwidth(confidence, correct) == pytest.approx(abs(p - c), abs=2**-10)


def test_fixed_bandwidth_gradcheck():
    g = torch.Generator().manual_seed(0)
    confidence = (0.1 + 0.9 * torch.rand(30, generator=g, dtype=torch.float64)).requires_grad_()
    correct = (torch.rand(30, generator=g, dtype=torch.float64) < confidence.detach() ** 2).double()
    assert torch.autograd.gradcheck(lambda c: smooth_ece_fixed_bandwidth(c, correct, 0.1), (confidence,),
                                    eps=1e-7, atol=1e-6)
    assert torch.autograd.gradcheck(
        lambda c: smooth_ece_fixed_bandwidth(c, correct, 0.05, num_grid=301, num_eval=150), (confidence,),
        eps=1e-7, atol=1e-6)


def test_gradient_step_reduces_smooth_ece_of_overconfident_batch():
    c, a = _CASES["over-confident"]
    confidence = torch.from_numpy(c).requires_grad_()
    correct = torch.from_numpy(a)
    sigma = smooth_ece_bandwidth(confidence, correct)
    before = smooth_ece_fixed_bandwidth(confidence, correct, sigma)
    (grad,) = torch.autograd.grad(before, confidence)
    assert (grad > 0).float().mean() > 0.9  # over-confident: lowering confidences helps almost everywhere
    after = smooth_ece_fixed_bandwidth((confidence - 20.0 * grad).clamp(0, 1), correct, sigma)
    assert float(after.detach()) < float(before.detach())


def test_smooth_ece_input_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        smooth_ece(torch.tensor([1.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="at least one"):
        smooth_ece(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="positive"):
        smooth_ece_fixed_bandwidth(torch.tensor([0.5]), torch.tensor([1.0]), 0.0)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_bin_count_matters_and_equals_torchmetrics(n_bins):
    """Over-confident above 0.75 and under-confident below: the bins' gaps have both signs, so the ECE depends on
    the bin count (with one sign everywhere every binning gives |mean(a) - mean(c)|, which is why the random cases
    above could not tell 10 bins from 15). Catches ``n_bins`` not passed on or a wrong default."""
    g = torch.Generator().manual_seed(7)
    c = 0.5 + 0.5 * torch.rand(3000, generator=g, dtype=torch.float64)
    accuracy = torch.where(c > 0.75, c - 0.2, (c + 0.15).clamp(max=1.0))
    correct = (torch.rand(3000, generator=g, dtype=torch.float64) < accuracy).long()
    labels = 1 - correct  # class 0 carries the confidence: right when the label is 0
    probs = torch.stack([c, 1 - c], dim=1).float()
    expected = float(MulticlassCalibrationError(num_classes=2, n_bins=n_bins, norm="l1")(probs, labels))
    confidence, hit = top_label_confidence(probs, labels)
    assert float(expected_calibration_error(confidence, hit, n_bins)) == pytest.approx(expected, abs=1e-6)
    others = {float(expected_calibration_error(confidence, hit, n)) for n in (5, 10, 15)}
    assert len(others) == 3  # the three bin counts give three different values
    if n_bins == 10:  # the documented default
        assert float(expected_calibration_error(confidence, hit)) == pytest.approx(expected, abs=1e-6)


def test_calibration_loss_is_cross_entropy_plus_weighted_relplot_smooth_ece():
    """The fine-tune's loss ``CE + lambda smECE`` (calibration/loss.py) against hand-computed cross-entropy and
    relplot's Smooth ECE of the top-label confidences, at the batch's own bandwidth and at a given one; with
    ``gather`` (DDP), smECE is that of the gathered batch while CE stays local. Catches: the weight applied to CE,
    smECE of the raw probabilities instead of the top label, a given bandwidth ignored, gather skipped for the
    correctness flags, smECE detached (no gradient reaches the logits through it)."""
    from lightning_guidance.calibration.loss import calibration_loss

    g = torch.Generator().manual_seed(5)
    logits = (2.5 * torch.randn(64, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = torch.randint(5, (64,), generator=g)
    probs = torch.softmax(logits.detach().float(), dim=1).double()
    ce_hand = float(-torch.log_softmax(logits.detach(), dim=1)[torch.arange(64), y].mean())
    conf, pred = probs.max(dim=1)
    correct = (pred == y).double()

    loss, ce, smooth = calibration_loss(logits, y, smooth_ece_weight=0.7)
    # float32 softmax inside: agreement to ~1e-7, a wrong bandwidth or kernel differs by > 1e-4
    assert float(ce.detach()) == pytest.approx(ce_hand, abs=1e-12)
    assert float(smooth.detach()) == pytest.approx(relplot.smECE(conf.numpy(), correct.numpy()), abs=1e-6)
    assert float(loss.detach()) == pytest.approx(float(ce.detach()) + 0.7 * float(smooth.detach()), abs=1e-6)  # f32
    smooth.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0

    _, _, at_sigma = calibration_loss(logits, y, smooth_ece_weight=1.0, bandwidth=0.2)
    assert float(at_sigma.detach()) == pytest.approx(relplot.smECE_sigma(conf.numpy(), correct.numpy(), 0.2), abs=1e-6)

    other_conf = torch.linspace(0.3, 0.95, 40, dtype=torch.float32)
    other_correct = (torch.arange(40) % 3 == 0).float()
    gather = lambda t: torch.cat([t, other_conf if t.requires_grad else other_correct])  # noqa: E731
    _, ce_g, smooth_g = calibration_loss(logits, y, smooth_ece_weight=1.0, gather=gather)
    both_c = np.concatenate([conf.numpy(), other_conf.double().numpy()])
    both_a = np.concatenate([correct.numpy(), other_correct.double().numpy()])
    assert float(ce_g.detach()) == pytest.approx(ce_hand, abs=1e-12)
    assert float(smooth_g.detach()) == pytest.approx(relplot.smECE(both_c, both_a), abs=1e-6)
