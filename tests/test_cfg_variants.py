"""The CFG variants held against diffusers' own guiders (0.42.1) on the same tensors, and their identities.

diffusers' guiders combine whatever the model predicts; the suite's rules combine eps by default (``space="eps"``),
so the oracle comparisons below feed both the same tensors as eps predictions. The x0-space tests convert with the
suite's one conversion (``combine_predictions``) and say what they check.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from lightning_guidance.diffusion.cfg_rule import (ClassifierFreeGuidance, RuleContext, SamplingStep,
                                                   combine_predictions)
from lightning_guidance.diffusion.denoiser import NetDenoiser, StackedPair
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting, WeakModel
from lightning_guidance.diffusion.noise import PerSampleNoise
from lightning_guidance.diffusion.parameterization import eps_to_x0
from lightning_guidance.diffusion.sampling import sample
from lightning_guidance.diffusion.schedules import VPSchedule
from lightning_guidance.guidance.cfg_variants import (AdaptiveProjectedGuidance, Autoguidance, CFGRescale, CFGZeroStar,
                                                      FrequencyDecoupledGuidance, GuidanceInterval,
                                                      PerturbedAttentionGuidance, SkipLayerGuidance,
                                                      SmoothedEnergyGuidance, TangentialCFG)
from lightning_guidance.nets import MLPDenoiser, UNet

guiders = pytest.importorskip("diffusers.guiders")
logging.getLogger("diffusers").setLevel(logging.ERROR)  # "guiders are experimental" on every construction

SHAPES = [(4, 2), (4, 1, 8, 8)]  # the fractal's points and the digits' images


def preds(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(shape, generator=g)
    return cond, cond * 0.7 + 0.5 * torch.randn(shape, generator=g)  # correlated, as real predictions are


def ctx_at(shape, index=0, num_steps=10, abar=0.5):
    return RuleContext(x_t=torch.zeros(shape), abar=torch.full((shape[0],), abar), step=SamplingStep(index, num_steps))


def ours(rule, cond, guide, scale, ctx, state=None):
    return rule(cond, guide, scale, ctx, {} if state is None else state)


def theirs(guider, cond, guide, step=0, num_steps=10):
    guider.set_state(step, num_steps, torch.tensor(999))
    return guider.forward(pred_cond=cond, pred_uncond=guide).pred


# ---------------------------------------------------------------- oracle equality, one test per guider


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.5, 3.0, 7.5])
def test_cfg_equals_diffusers(shape, scale):
    cond, guide = preds(shape)
    torch.testing.assert_close(ours(ClassifierFreeGuidance(), cond, guide, scale, ctx_at(shape)),
                               theirs(guiders.ClassifierFreeGuidance(guidance_scale=scale), cond, guide))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("start, stop", [(0.0, 1.0), (0.2, 0.7), (0.5, 0.5), (0.0, 0.3)])
def test_interval_start_stop_equals_diffusers_at_every_step(shape, start, stop):
    cond, guide = preds(shape)
    rule = ClassifierFreeGuidance(start=start, stop=stop)
    guider = guiders.ClassifierFreeGuidance(guidance_scale=4.0, start=start, stop=stop)
    for step in range(10):
        torch.testing.assert_close(ours(rule, cond, guide, 4.0, ctx_at(shape, step)),
                                   theirs(guider, cond, guide, step), msg=f"step {step}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_rescale_equals_diffusers(shape, phi):
    cond, guide = preds(shape)
    torch.testing.assert_close(ours(CFGRescale(guidance_rescale=phi), cond, guide, 5.0, ctx_at(shape)),
                               theirs(guiders.ClassifierFreeGuidance(guidance_scale=5.0, guidance_rescale=phi),
                                      cond, guide))


def assert_apg_steps_equal(rule, guider, momentum, shape, scale, steps):
    """``steps`` steps with fresh predictions each: the momentum buffer carries over, exactly as diffusers' does."""
    if momentum is not None:  # what diffusers' prepare_inputs does at step 0
        from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer
        guider.momentum_buffer = MomentumBuffer(momentum)
    state = {}
    for step in range(steps):
        cond, guide = preds(shape, seed=step)
        torch.testing.assert_close(ours(rule, cond, guide, scale, ctx_at(shape, step), state),
                                   theirs(guider, cond, guide, step), msg=f"step {step}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eta, momentum, threshold", [(0.0, -0.5, 2.0), (0.3, 0.4, 0.0), (1.0, None, 1.0),
                                                      (0.0, None, 0.0)])
def test_apg_with_momentum_over_several_steps_equals_diffusers(shape, eta, momentum, threshold):
    """Six steps with fresh predictions each: the momentum buffer carries over, exactly as diffusers' does."""
    rule = AdaptiveProjectedGuidance(eta=eta, momentum=momentum, norm_threshold=threshold)
    guider = guiders.AdaptiveProjectedGuidance(guidance_scale=6.0, adaptive_projected_guidance_momentum=momentum,
                                               adaptive_projected_guidance_rescale=threshold, eta=eta)
    assert_apg_steps_equal(rule, guider, momentum, shape, 6.0, steps=6)


@pytest.mark.parametrize("shape", SHAPES)
def test_apg_original_formulation_equals_diffusers_with_its_scale_s_minus_1(shape):
    rule = AdaptiveProjectedGuidance(eta=0.2, momentum=-0.5, norm_threshold=2.0, use_original_formulation=True)
    guider = guiders.AdaptiveProjectedGuidance(guidance_scale=6.0 - 1, adaptive_projected_guidance_momentum=-0.5,
                                               adaptive_projected_guidance_rescale=2.0, eta=0.2,
                                               use_original_formulation=True)
    assert_apg_steps_equal(rule, guider, -0.5, shape, 6.0, steps=4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("zero_init_steps", [0, 1, 3])
def test_cfg_zero_star_equals_diffusers_at_every_step(shape, zero_init_steps):
    cond, guide = preds(shape)
    rule = CFGZeroStar(zero_init_steps=zero_init_steps)
    guider = guiders.ClassifierFreeZeroStarGuidance(guidance_scale=4.0, zero_init_steps=zero_init_steps)
    for step in range(5):
        got = ours(rule, cond, guide, 4.0, ctx_at(shape, step))
        torch.testing.assert_close(got, theirs(guider, cond, guide, step), msg=f"step {step}")
        assert bool((got == 0).all()) == (step < zero_init_steps)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [2.0, 7.5])
def test_tangential_equals_diffusers(shape, scale):
    cond, guide = preds(shape)
    torch.testing.assert_close(ours(TangentialCFG(), cond, guide, scale, ctx_at(shape)),
                               theirs(guiders.TangentialClassifierFreeGuidance(guidance_scale=scale), cond, guide))


@pytest.mark.parametrize("level_weights, parallel", [((1.0, 0.5), None), ((1.0, 0.4), (0.5, 1.0)),
                                                     ((1.0, 0.7, 0.2), (0.0, 0.5, 0.3))])
def test_frequency_decoupled_equals_diffusers_on_images(level_weights, parallel):
    pytest.importorskip("kornia")
    shape, scale = (4, 1, 8, 8), 5.0
    cond, guide = preds(shape)
    rule = FrequencyDecoupledGuidance(level_weights=level_weights, parallel_weights=parallel)
    guider = guiders.FrequencyDecoupledGuidance(guidance_scales=[1 + (scale - 1) * w for w in level_weights],
                                                parallel_weights=None if parallel is None else list(parallel))
    torch.testing.assert_close(ours(rule, cond, guide, scale, ctx_at(shape)), theirs(guider, cond, guide))


def test_frequency_decoupled_refuses_points_with_a_clear_line():
    with pytest.raises(ValueError, match=r"not images \(C, H, W\)"):
        FrequencyDecoupledGuidance().check_data_shape((2,))
    with pytest.raises(ValueError, match="divisible by 4"):
        FrequencyDecoupledGuidance(level_weights=(1.0, 0.5, 0.2)).check_data_shape((1, 6, 6))


@pytest.mark.parametrize("shape", SHAPES)
def test_autoguidance_combination_equals_diffusers(shape):
    """diffusers' AutoGuidance makes its bad model by skipping layers; its combination of the two predictions is
    the formula compared here (``pred_uncond`` is the bad model's prediction)."""
    good, bad = preds(shape)
    guider = guiders.AutoGuidance(guidance_scale=2.5, auto_guidance_layers=[0], dropout=1.0)
    torch.testing.assert_close(ours(Autoguidance("bad.ckpt"), good, bad, 2.5, ctx_at(shape)),
                               theirs(guider, good, bad))


# ---------------------------------------------------------------- limits and identities


@pytest.mark.parametrize("shape", SHAPES)
def test_interval_covering_all_is_cfg_and_empty_is_conditional(shape):
    cond, guide = preds(shape)
    cfg = ours(ClassifierFreeGuidance(), cond, guide, 3.0, ctx_at(shape, abar=0.3))
    everything = GuidanceInterval(sigma_lo=0.0, sigma_hi=1e9)
    empty = GuidanceInterval(sigma_lo=2.0, sigma_hi=2.0)
    outside = GuidanceInterval(sigma_lo=0.0, sigma_hi=0.5)  # abar 0.3: sigma = 1.53
    torch.testing.assert_close(ours(everything, cond, guide, 3.0, ctx_at(shape, abar=0.3)), cfg, rtol=0, atol=0)
    torch.testing.assert_close(ours(empty, cond, guide, 3.0, ctx_at(shape, abar=0.3)), cond, rtol=0, atol=0)
    torch.testing.assert_close(ours(outside, cond, guide, 3.0, ctx_at(shape, abar=0.3)), cond, rtol=0, atol=0)
    assert not empty.needs_guide(3.0, ctx_at(shape, abar=0.3))  # the null forward is skipped there


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_interval_guides_exactly_the_steps_whose_edm_sigma_is_inside(sampler):
    """Kynkäänniemi et al. 2024 guide where ``sigma_lo < sigma <= sigma_hi`` with EDM's noise level ``sigma =
    sqrt((1 - abar) / abar)``. Oracle, written here from the definitions: DDPM's linear betas (1e-4 .. 0.02 over
    1000 steps), the 20 respaced steps ``round(i 999 / 19)`` (DDPM/DDIM) or Karras et al.'s eq. 5 grid (EDM: 20 steps
    from 80 to the schedule's smallest sigma, each Heun step calling at sigma_i and, but the last, at sigma_i+1).
    The record: which network calls carried the null class (CFG's guiding half). Bounds 0.28 and 5.42 are the
    paper's EDM2 setting; the ends are checked at abar = 1/2, where sigma is exactly 1 (open below, closed above).
    Catches: sigma taken as sqrt(1 - abar) (or any other noise level), the ends swapped, the interval ignored by one
    sampler."""
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    steps, lo, hi = 20, 0.28, 5.42
    if sampler == "edm":
        smin, smax = math.sqrt((1 - abar[0]) / abar[0]), 80.0
        grid = [(smax ** (1 / 7) + i / (steps - 1) * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7 for i in range(steps)]
        sigmas = [s for i in range(steps) for s in ([grid[i], grid[i + 1]] if i < steps - 1 else [grid[i]])]
    else:
        kept = [round(i * 999 / (steps - 1)) for i in range(steps)][::-1]
        sigmas = [math.sqrt((1 - abar[k]) / abar[k]) for k in kept]
    expected = [lo < s <= hi for s in sigmas]
    assert 0 < sum(expected) < len(expected)
    assert expected != [lo < math.sqrt(1 - 1 / (1 + s**2)) <= hi for s in sigmas]  # the other sigma would differ
    assert min(abs(s - b) for s in sigmas for b in (lo, hi)) > 1e-3  # no grid point on a bound: float-proof

    class RecordNull(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.guided = []

        def forward(self, x, t, y):
            self.guided.append(bool((y == 3).any()))
            return 0.1 * x

    net = RecordNull()
    den = NetDenoiser(net, 3, setting=GuidanceSetting(3.0, GuidanceInterval(sigma_lo=lo, sigma_hi=hi)), clip_x0=False)
    sample(sampler, den, VPSchedule.linear(), torch.tensor([0, 1]), PerSampleNoise([0, 1]), (2,), num_steps=steps,
           **({"sigma_max": 80.0} if sampler == "edm" else {}))
    assert net.guided == expected
    at_one = RuleContext(x_t=torch.zeros(1, 2), abar=torch.tensor([0.5]), step=None)
    assert not GuidanceInterval(sigma_lo=1.0, sigma_hi=2.0).active(at_one).item()
    assert GuidanceInterval(sigma_lo=0.5, sigma_hi=1.0).active(at_one).item()


def test_interval_needs_a_bound():
    with pytest.raises(ValueError, match="needs an interval"):
        GuidanceInterval()


@pytest.mark.parametrize("shape", SHAPES)
def test_rescale_phi_zero_is_cfg(shape):
    cond, guide = preds(shape)
    torch.testing.assert_close(ours(CFGRescale(guidance_rescale=0.0), cond, guide, 4.0, ctx_at(shape)),
                               ours(ClassifierFreeGuidance(), cond, guide, 4.0, ctx_at(shape)), rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_apg_eta_one_no_momentum_no_threshold_is_cfg(shape):
    rule = AdaptiveProjectedGuidance(eta=1.0, momentum=None, norm_threshold=0.0)
    cond, guide = preds(shape)
    torch.testing.assert_close(ours(rule, cond, guide, 4.0, ctx_at(shape)),
                               ours(ClassifierFreeGuidance(), cond, guide, 4.0, ctx_at(shape)))
    # ... and eta = 0 removes exactly the part of the update parallel to c
    flat = ours(AdaptiveProjectedGuidance(eta=0.0, momentum=None, norm_threshold=0.0), cond, guide, 4.0,
                ctx_at(shape)) - guide
    assert (flat.flatten(1) * cond.flatten(1)).sum(1).abs().max() < 1e-4


def test_scale_one_is_the_conditional_model_for_every_rule():
    cond, guide = preds((4, 1, 8, 8))
    for rule in (ClassifierFreeGuidance(), CFGRescale(0.5), AdaptiveProjectedGuidance(), CFGZeroStar(0),
                 TangentialCFG(), FrequencyDecoupledGuidance(), Autoguidance("bad.ckpt")):
        torch.testing.assert_close(ours(rule, cond, guide, 1.0, ctx_at((4, 1, 8, 8))), cond, msg=type(rule).__name__)


@pytest.mark.parametrize("shape", SHAPES)
def test_x0_space_cfg_equals_eps_space_cfg(shape):
    """The conversion in one place: CFG is affine with weights summing to 1, so combining x0 = (x - b eps) / a
    gives the same eps as combining eps; APG (a projection) does not, which shows the space is really switched."""
    cond, guide = preds(shape)
    ctx = RuleContext(x_t=preds(shape, seed=9)[1], abar=torch.full((shape[0],), 0.4), step=None)
    eps_space = combine_predictions(ClassifierFreeGuidance(), cond, guide, 3.0, ctx, {})
    x0_space = combine_predictions(ClassifierFreeGuidance(space="x0"), cond, guide, 3.0, ctx, {})
    torch.testing.assert_close(x0_space, eps_space)
    apg = dict(eta=0.0, momentum=None, norm_threshold=0.0)
    apg_x0 = combine_predictions(AdaptiveProjectedGuidance(space="x0", **apg), cond, guide, 3.0, ctx, {})
    expected = AdaptiveProjectedGuidance(**apg)(eps_to_x0(cond, ctx.x_t, ctx.abar), eps_to_x0(guide, ctx.x_t, ctx.abar),
                                                 3.0, ctx, {})
    torch.testing.assert_close(eps_to_x0(apg_x0, ctx.x_t, ctx.abar), expected)
    assert not torch.allclose(apg_x0, combine_predictions(AdaptiveProjectedGuidance(**apg), cond, guide, 3.0, ctx, {}))


# ---------------------------------------------------------------- through the denoiser and the samplers


def _tiny_unet(seed):
    torch.manual_seed(seed)
    net = UNet((1, 8, 8), num_classes=3, model_channels=8, num_res_blocks=1, channel_mult=(1,)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return net


def _mlp(seed, hidden=16):
    torch.manual_seed(seed)
    net = MLPDenoiser(data_dim=2, num_classes=3, hidden_dim=hidden, num_layers=2).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return net


def _sample(denoiser, sampler, shape, **kw):
    labels = torch.tensor([0, 1, 2, 1])
    return sample(sampler, denoiser, VPSchedule.from_name("linear", 100), labels, PerSampleNoise(range(4)), shape,
                  num_steps=6, **kw)


@pytest.mark.parametrize("make, shape", [(_mlp, (2,)), (_tiny_unet, (1, 8, 8))])
def test_stacked_pair_equals_two_calls(make, shape):
    a, b = make(0), make(1)
    x, t, y = torch.randn(5, *shape), torch.rand(5), torch.tensor([0, 1, 2, 3, 1])
    got_a, got_b = StackedPair(a, b)(x, t, y)
    torch.testing.assert_close(got_a, a(x, t, y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_b, b(x, t, y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_autoguidance_with_the_good_model_as_guide_is_the_good_model(sampler):
    net = _mlp(0)
    plain = _sample(NetDenoiser(net, 3, clip_x0=False), sampler, (2,))
    rule = Autoguidance("same-model.ckpt")
    for batch_guide in (True, False):
        auto = NetDenoiser(net, 3, setting=GuidanceSetting(2.5, rule, WeakModel(_mlp(0))), clip_x0=False,
                           batch_guide=batch_guide)
        assert (auto.pair is not None) == batch_guide
        torch.testing.assert_close(_sample(auto, sampler, (2,)), plain, rtol=1e-5, atol=1e-5)
    # a different guide moves the samples; a guide of another architecture runs as two calls
    other = NetDenoiser(net, 3, setting=GuidanceSetting(2.5, rule, WeakModel(_mlp(1, hidden=8))), clip_x0=False)
    assert other.pair is None
    assert not torch.allclose(_sample(other, sampler, (2,)), plain, atol=1e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_interval_covering_everything_samples_like_cfg(sampler):
    net = _tiny_unet(0)
    cfg = _sample(NetDenoiser(net, 3, setting=GuidanceSetting(3.0)), sampler, (1, 8, 8))
    whole = GuidanceInterval(sigma_lo=0.0, sigma_hi=1e9)
    got = _sample(NetDenoiser(net, 3, setting=GuidanceSetting(3.0, whole)), sampler, (1, 8, 8))
    torch.testing.assert_close(got, cfg, rtol=0, atol=0)
    conditional = _sample(NetDenoiser(net, 3, setting=GuidanceSetting(1.0)), sampler, (1, 8, 8))
    nothing = _sample(NetDenoiser(net, 3, setting=GuidanceSetting(3.0, GuidanceInterval(start=0.5, stop=0.5))),
                      sampler, (1, 8, 8))
    torch.testing.assert_close(nothing, conditional, rtol=0, atol=0)


def test_apg_momentum_restarts_with_each_sampling_run():
    net = _mlp(0)
    den = NetDenoiser(net, 3, setting=GuidanceSetting(3.0, AdaptiveProjectedGuidance(momentum=-0.5)), clip_x0=False)
    first = _sample(den, "ddim", (2,))
    again = _sample(den, "ddim", (2,))  # same denoiser object: the step index going back to 0 restarts the buffer
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert "running_average" in den.rule_state


def test_cfg_zero_star_zero_init_keeps_the_edm_state_in_place():
    """With eps = 0 the EDM denoiser returns D = x: the zeroed first step does not move the state (the flow-model
    meaning of CFG-Zero*'s zero init)."""
    den = NetDenoiser(_mlp(0), 3, setting=GuidanceSetting(3.0, CFGZeroStar(zero_init_steps=1)), clip_x0=False)
    x = torch.randn(4, 2)
    out = den(x, torch.full((4,), 0.5), torch.full((4,), 0.3), torch.tensor([0, 1, 2, 0]), step=SamplingStep(0, 10))
    assert bool((out.eps == 0).all()) and out.eps_cond is None  # no guiding forward at a zeroed step
    edm_d = x / 0.3 ** 0.5 - ((1 - 0.3) / 0.3) ** 0.5 * out.eps  # D(x; sigma) = x_VE - sigma eps
    torch.testing.assert_close(edm_d, x / 0.3 ** 0.5)


def test_a_rule_with_start_stop_needs_the_step():
    with pytest.raises(ValueError, match="needs the sampler's step index"):
        ClassifierFreeGuidance(start=0.2).active(RuleContext(torch.zeros(2, 2), torch.full((2,), 0.5), None))


@pytest.mark.parametrize("bad", [dict(start=0.6, stop=0.4), dict(sigma_lo=2.0, sigma_hi=1.0),
                                 dict(guidance_rescale=1.5), dict(space="v")])
def test_bad_rule_settings_are_refused(bad):
    with pytest.raises(ValueError, match="ClassifierFreeGuidance"):
        ClassifierFreeGuidance(**bad)


def test_settings_name_every_value():
    s = AdaptiveProjectedGuidance(eta=0.2, momentum=-0.3).settings()
    assert s["class"] == "AdaptiveProjectedGuidance" and s["eta"] == 0.2 and s["momentum"] == -0.3
    assert math.isinf(GuidanceInterval(sigma_lo=0.3).settings()["sigma_hi"])


# ---------------------------------------------------------------- attention perturbation (UNet only)


def _pag(**kw):
    return PerturbedAttentionGuidance(**{k.replace("prefix", "perturbed_guidance"): v for k, v in kw.items()})


def _slg(**kw):
    return SkipLayerGuidance(**{k.replace("prefix", "perturbed_guidance"): v for k, v in kw.items()})


def _seg(**kw):
    return SmoothedEnergyGuidance(seg_blur_sigma=1.0, **{k.replace("prefix", "seg_guidance"): v
                                                         for k, v in kw.items()})


def _perturbation_enabled(guider) -> bool:
    """Whether diffusers' guider runs its perturbed condition at its current step."""
    return (getattr(guider, "_is_seg_enabled", None) or guider._is_slg_enabled)()


@pytest.mark.parametrize("make_rule, guider_name, prefix, pred_name", [
    (_pag, "PerturbedAttentionGuidance", "perturbed_guidance", "pred_cond_skip"),
    (_slg, "SkipLayerGuidance", "skip_layer_guidance", "pred_cond_skip"),
    (_seg, "SmoothedEnergyGuidance", "seg_guidance", "pred_cond_seg")])
@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_attention_perturbation_combination_equals_diffusers_at_every_step(make_rule, guider_name, prefix, pred_name,
                                                                           scale, rescale):
    """diffusers' forward on (pred_cond, pred_uncond, perturbed) against ours with the same perturbed prediction,
    over all steps of a 20-step run: CFG only, both, the perturbation only (s = 1) and neither, with and without
    guidance_rescale; the perturbed pass is asked for exactly where diffusers' guider enables it. Catches: the
    rescale applied to the wrong tensors, the perturbed forward run outside its window."""
    shape = (4, 1, 8, 8)
    cond, guide = preds(shape)
    perturbed = preds(shape, seed=3)[1]
    rule = make_rule(prefix_scale=2.0, prefix_start=0.1, prefix_stop=0.5, stop=0.8, layers=[0],
                     guidance_rescale=rescale)
    kwargs = {f"{prefix}_scale": 2.0, f"{prefix}_start": 0.1, f"{prefix}_stop": 0.5, f"{prefix}_layers": [0]}
    guider = getattr(guiders, guider_name)(guidance_scale=scale, stop=0.8, guidance_rescale=rescale, **kwargs)
    kinds = set()
    for step in range(20):
        ctx = ctx_at(shape, step, num_steps=20)
        g = guide if rule.needs_guide(scale, ctx) else None
        guider.set_state(step, 20, torch.tensor(999))
        assert rule.needs_perturbed(ctx) == _perturbation_enabled(guider), f"step {step}"
        if rule.needs_perturbed(ctx):
            ctx.perturbed = perturbed
        kinds.add((g is not None, ctx.perturbed is not None))
        guider.set_state(step, 20, torch.tensor(999))
        expected = guider.forward(**{"pred_cond": cond, "pred_uncond": guide, pred_name: perturbed}).pred
        torch.testing.assert_close(ours(rule, cond, g, scale, ctx), expected, msg=f"step {step}")
    assert kinds == ({(True, True), (True, False), (False, False)} if scale != 1
                     else {(False, True), (False, False)})


@pytest.mark.parametrize("make_rule, guider_name, prefix", [
    (_pag, "PerturbedAttentionGuidance", "perturbed_guidance"), (_slg, "SkipLayerGuidance", "skip_layer_guidance"),
    (_seg, "SmoothedEnergyGuidance", "seg_guidance")])
def test_zero_perturbation_scale_never_asks_for_the_perturbed_pass(make_rule, guider_name, prefix):
    """s_p = 0: no perturbed forward at any step (diffusers' guider counts no perturbed condition), and none is
    asked for even without a step index. Catches: a perturbed forward of the network run for nothing."""
    rule = make_rule(prefix_scale=0.0, prefix_start=0.0, prefix_stop=1.0)
    guider = getattr(guiders, guider_name)(guidance_scale=3.0, **{f"{prefix}_scale": 0.0, f"{prefix}_start": 0.0,
                                                                   f"{prefix}_stop": 1.0, f"{prefix}_layers": [0]})
    for step in range(10):
        guider.set_state(step, 10, torch.tensor(999))
        assert not _perturbation_enabled(guider) and not rule.needs_perturbed(ctx_at((2, 2), step))
    assert not rule.needs_perturbed(RuleContext(torch.zeros(2, 2), torch.full((2,), 0.5), None))


@pytest.mark.parametrize("make, name", [(PerturbedAttentionGuidance, "PerturbedAttentionGuidance"),
                                        (SkipLayerGuidance, "SkipLayerGuidance")])
def test_perturbation_window_refusal_names_the_rule_and_the_values(make, name):
    """A window with start > stop is refused with the rule's name and both values. Catches: an empty message."""
    with pytest.raises(ValueError, match=rf"^{name}: need 0 <= perturbed_guidance_start <= perturbed_guidance_stop "
                                         r"<= 1, got 0\.5, 0\.2$"):
        make(perturbed_guidance_start=0.5, perturbed_guidance_stop=0.2)


def test_the_null_class_id_through_netdenoiser_is_the_networks_unconditional_prediction():
    """NetDenoiser accepts the null id (= num_classes) as a label: unconditional sampling asks the network's null
    class directly (cfg_scale 1, no doubled batch), and the result is the network's own output for that id; one
    past it is refused. Catches: the null id refused as out of range."""
    net = _mlp(0)
    x, t, abar = torch.randn(4, 2), torch.rand(4), torch.full((4,), 0.5)
    y = torch.tensor([3, 3, 0, 3])
    out = NetDenoiser(net, 3, clip_x0=False)(x, t, abar, y)
    with torch.no_grad():
        torch.testing.assert_close(out.eps, net(x, t, y))
    with pytest.raises(ValueError, match=r"class ids \[4\] out of range"):
        NetDenoiser(net, 3)(x, t, abar, torch.tensor([4, 0, 0, 0]))


def test_identity_attention_keeps_each_positions_value_and_skip_adds_nothing():
    from lightning_guidance.nets.attention_perturbation import PerturbedAttention, attention_blocks

    net = _tiny_unet(0)
    [block] = attention_blocks(net)  # the middle block's
    h = torch.randn(3, 8, 4, 4)
    tokens = block.qkv(block.norm(h.reshape(3, 8, -1))).reshape(3, block.num_heads, 3, 8 // block.num_heads, -1)
    v = tokens[:, :, 2]  # (B, heads, d, N)
    block.perturbation = "identity"
    torch.testing.assert_close(block(h), h + block.proj(v.reshape(3, 8, -1)).reshape(3, 8, 4, 4))
    block.perturbation = "skip"
    torch.testing.assert_close(block(h), h)
    block.perturbation = None
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1])
    plain = net(x, t, y)
    assert not torch.allclose(PerturbedAttention(net, "identity")(x, t, y), plain)
    torch.testing.assert_close(net(x, t, y), plain)  # the perturbation ends with the call
    with pytest.raises(ValueError, match="MLPDenoiser has no self-attention layers"):
        PerturbedAttention(_mlp(0), "identity")
    with pytest.raises(ValueError, match=r"attention layers \[3\] out of range"):
        PerturbedAttention(net, "skip", [3])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_perturbed_attention_through_the_denoiser(sampler):
    from lightning_guidance.nets.attention_perturbation import PerturbedAttention

    net = _tiny_unet(0)
    rule = PerturbedAttentionGuidance(perturbed_guidance_scale=0.0)
    perturbed = WeakModel(PerturbedAttention(net, "identity"))
    off = NetDenoiser(net, 3, setting=GuidanceSetting(3.0, rule, perturbed))
    plain = NetDenoiser(net, 3, setting=GuidanceSetting(3.0))
    torch.testing.assert_close(_sample(off, sampler, (1, 8, 8)), _sample(plain, sampler, (1, 8, 8)), rtol=0, atol=0)
    rule = PerturbedAttentionGuidance(perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0)
    on = NetDenoiser(net, 3, setting=GuidanceSetting(3.0, rule, perturbed))
    assert not torch.allclose(_sample(on, sampler, (1, 8, 8)), _sample(off, sampler, (1, 8, 8)))
    with pytest.raises(ValueError, match="self-attention perturbed"):
        GuidanceSetting(3.0, rule)


# ---------------------------------------------------------------- smoothed-energy guidance: the query blur


def _diffusers_blur(query, sigma, gaussian: bool):
    """diffusers' SEG hook on the output of a query projection (B, N, C). Its ``is_inf`` test is inverted in 0.42.1
    (PR #14187), so the threshold is set to pick the branch: ``gaussian`` its Gaussian code, else its mean."""
    from diffusers.hooks.smoothed_energy_guidance_utils import SmoothedEnergyGuidanceHook

    hook = SmoothedEnergyGuidanceHook(blur_sigma=sigma, blur_threshold_inf=-1.0 if gaussian else math.inf)
    return hook.post_forward(None, query.clone())


@pytest.mark.parametrize("side", [4, 5, 8])
@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0, 30.0])
def test_query_blur_equals_diffusers_gaussian(side, sigma):
    from lightning_guidance.nets.blocks import blur_queries

    query = torch.randn(3, side * side, 6, generator=torch.Generator().manual_seed(side))
    got = blur_queries(query, (side, side), sigma, threshold_inf=9999.0)
    torch.testing.assert_close(got, _diffusers_blur(query, sigma, gaussian=True), rtol=1e-6, atol=1e-6)
    if sigma <= 1 / 6:  # a one-token kernel: the queries as they are
        torch.testing.assert_close(got, query, rtol=0, atol=0)
    else:
        assert not torch.allclose(got, query)


@pytest.mark.parametrize("side", [4, 8])
def test_infinite_query_blur_is_the_spatial_mean_as_diffusers(side):
    from lightning_guidance.nets.blocks import blur_queries

    query = torch.randn(2, side * side, 5, generator=torch.Generator().manual_seed(1))
    got = blur_queries(query, (side, side), 9999999.0, threshold_inf=9999.0)
    torch.testing.assert_close(got, _diffusers_blur(query, 9999999.0, gaussian=False))
    torch.testing.assert_close(got, query.mean(dim=1, keepdim=True).expand_as(query))


def test_diffusers_0_42_takes_the_blur_branches_the_other_way():
    """What the docstrings say about diffusers: as its guider installs the hook (threshold 9999.9), a finite sigma
    gives the spatial mean, not a Gaussian. If a diffusers upgrade fixes this, drop the note and this test."""
    from diffusers.hooks.smoothed_energy_guidance_utils import SmoothedEnergyGuidanceHook

    query = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(2))
    theirs_finite = SmoothedEnergyGuidanceHook(blur_sigma=1.0).post_forward(None, query.clone())
    torch.testing.assert_close(theirs_finite, query.mean(dim=1, keepdim=True).expand_as(query))


def test_blurred_attention_block_equals_diffusers_blur_on_its_queries():
    """The block with perturbation "blur": the queries of all heads laid out as diffusers' to_q output (B, N, C),
    blurred by diffusers' hook, attended per head: the same output."""
    from lightning_guidance.nets.blocks import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(8, num_heads=2).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    h = torch.randn(3, 8, 4, 4)
    qkv = block.qkv(block.norm(h.reshape(3, 8, -1))).reshape(3, 2, 3, 4, 16)  # (B, heads, qkv, d, N)
    q, k, v = (qkv[:, :, i].transpose(-1, -2) for i in range(3))  # (B, heads, N, d)
    q_tokens = q.permute(0, 2, 1, 3).reshape(3, 16, 8)  # (B, N, heads d) as a query projection's output
    q_blurred = _diffusers_blur(q_tokens, 1.0, gaussian=True).reshape(3, 16, 2, 4).permute(0, 2, 1, 3)
    attended = torch.nn.functional.scaled_dot_product_attention(q_blurred, k, v).transpose(-1, -2).reshape(3, 8, 16)
    expected = h + block.proj(attended).reshape(3, 8, 4, 4)
    block.perturbation, block.blur_sigma = "blur", 1.0
    torch.testing.assert_close(block(h), expected, rtol=1e-5, atol=1e-6)


def _sharp_attention_unet(seed):
    """The tiny UNet with its attention block's weights at std 1: peaked attention maps, so that what the blur does
    to the queries reaches the output (at std 0.1 the maps are near uniform and the blur changes ~1e-7)."""
    from lightning_guidance.nets.attention_perturbation import attention_blocks

    net = _tiny_unet(seed)
    torch.manual_seed(seed + 5)
    for block in attention_blocks(net):
        for p in (block.qkv.weight, block.proj.weight):
            torch.nn.init.normal_(p, std=1.0)
    return net


def _differ(a, b, by=1e-5):
    return float((a - b).detach().abs().max()) > by  # float noise of these forwards is ~1e-7


def test_smoothed_energy_limits_on_the_unet():
    """sigma -> 0 (a one-token kernel) is the unperturbed network; sigma > 0 is not; the network is restored."""
    from lightning_guidance.nets.attention_perturbation import PerturbedAttention

    net = _sharp_attention_unet(0)
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1])
    plain = net(x, t, y)
    torch.testing.assert_close(PerturbedAttention(net, "blur", blur_sigma=0.1)(x, t, y), plain, rtol=0, atol=0)
    torch.testing.assert_close(PerturbedAttention(net, "blur", blur_sigma=0.0)(x, t, y), plain, rtol=0, atol=0)
    assert _differ(PerturbedAttention(net, "blur", blur_sigma=1.0)(x, t, y), plain)
    assert _differ(PerturbedAttention(net, "blur", blur_sigma=1e7, blur_threshold_inf=9999.0)(x, t, y), plain)
    torch.testing.assert_close(net(x, t, y), plain)  # the perturbation ends with the call
    with pytest.raises(ValueError, match="MLPDenoiser has no self-attention layers"):
        PerturbedAttention.for_rule(_mlp(0), SmoothedEnergyGuidance())
    with pytest.raises(ValueError, match="seg_blur_sigma must be >= 0"):
        SmoothedEnergyGuidance(seg_blur_sigma=-1.0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_smoothed_energy_guidance_through_the_denoiser(sampler):
    """sigma = 0, a one-token blur (sigma = 0.1, perturbed forward run) and seg_guidance_scale = 0 all sample
    exactly like plain CFG; a real blur does not."""
    from lightning_guidance.nets.attention_perturbation import PerturbedAttention

    net = _sharp_attention_unet(0)

    def run(rule):
        weak = WeakModel(PerturbedAttention.for_rule(net, rule))
        return _sample(NetDenoiser(net, 3, setting=GuidanceSetting(3.0, rule, weak)), sampler, (1, 8, 8))

    cfg = _sample(NetDenoiser(net, 3, setting=GuidanceSetting(3.0)), sampler, (1, 8, 8))
    for limit in (dict(seg_blur_sigma=0.0), dict(seg_blur_sigma=0.1), dict(seg_guidance_scale=0.0)):
        torch.testing.assert_close(run(SmoothedEnergyGuidance(**limit)), cfg, rtol=0, atol=0, msg=str(limit))
    assert _differ(run(SmoothedEnergyGuidance(seg_blur_sigma=1.0)), cfg)
    assert _differ(run(SmoothedEnergyGuidance()), cfg)  # infinite blur (diffusers' default sigma)
# ---------------------------------------------------------------- every rule keeps the settings it is given

BASE = dict(start=0.1, stop=0.9, sigma_lo=0.2, sigma_hi=5.0, guidance_rescale=0.3, space="x0")
RULES = [(GuidanceInterval, {}), (CFGRescale, {}), (AdaptiveProjectedGuidance, {}), (CFGZeroStar, {}),
         (TangentialCFG, {}), (FrequencyDecoupledGuidance, {}), (Autoguidance, {"guide_checkpoint": "bad.ckpt"}),
         (PerturbedAttentionGuidance, {}), (SkipLayerGuidance, {}), (SmoothedEnergyGuidance, {})]


@pytest.mark.parametrize("rule_cls, own", RULES, ids=[r.__name__ for r, _ in RULES])
def test_every_rule_keeps_the_shared_settings_it_is_given(rule_cls, own):
    """Each variant passes start/stop/sigma_lo/sigma_hi/guidance_rescale/space on to the shared base, so they act
    and are recorded in the config hash (settings()). Catches: a constructor that drops one of them (the rule then
    guides at every step, in eps space or without rescale, while the hash claims otherwise)."""
    s = rule_cls(**own, **BASE).settings()
    assert {k: s[k] for k in BASE} == BASE
    assert s["class"] == rule_cls.__name__


def test_rule_specific_settings_are_checked_with_their_own_message():
    """Catches: a refusal without its message (ValueError(None)), a message in another case, a bound off by one
    (one level weight must be enough), Autoguidance's EMA choice lost."""
    with pytest.raises(ValueError,
                       match=r"^AdaptiveProjectedGuidance: norm_threshold must be >= 0 \(0 = off\), got -1"):
        AdaptiveProjectedGuidance(norm_threshold=-1.0)
    with pytest.raises(ValueError, match=r"^CFGZeroStar: zero_init_steps must be >= 0, got -1$"):
        CFGZeroStar(zero_init_steps=-1)
    with pytest.raises(ValueError, match=r"^FrequencyDecoupledGuidance needs at least one level weight$"):
        FrequencyDecoupledGuidance(level_weights=())
    assert FrequencyDecoupledGuidance(level_weights=(2.0,)).settings()["level_weights"] in ([2.0], (2.0,))
    with pytest.raises(ValueError, match=r"^Autoguidance needs guide_checkpoint: the worse model's checkpoint "
                                         r"\(e\.g\. one trained with configs/fractal/cfg_autoguide_bad\.yaml\)$"):
        Autoguidance("")
    with pytest.raises(ValueError, match=r"^GuidanceInterval needs an interval: set sigma_lo/sigma_hi \(noise levels, "
                                         r"e\.g\. 0\.28 and 5\.42 as in the paper's EDM2 setting\) or start/stop "
                                         r"\(fractions of the steps\)$"):
        GuidanceInterval()
    assert Autoguidance("bad.ckpt", guide_use_ema=False).settings()["guide_use_ema"] is False
    assert Autoguidance("bad.ckpt").settings()["guide_use_ema"] is True
    with pytest.raises(ValueError, match=r"^CFGZeroStar with zero_init_steps > 0 needs the sampler's step index$"):
        CFGZeroStar(zero_init_steps=1)(*preds((4, 2)), 2.0, RuleContext(torch.zeros(4, 2), torch.full((4,), 0.5),
                                                                         None), {})


def test_tangential_cfg_returns_the_dtype_it_is_given():
    """TCFG's SVD runs in float32; the result is cast back to the predictions' dtype (bfloat16 under mixed
    precision), as every other rule returns. Catches: the float32 projection leaking out (the cast dropped)."""
    cond, guide = preds((4, 2))
    out = TangentialCFG().guide(cond.bfloat16(), guide.bfloat16(), torch.full((4, 1), 2.0, dtype=torch.bfloat16),
                                ctx_at((4, 2)), {})
    assert out.dtype == torch.bfloat16


def test_autoguidance_converts_each_models_prediction_with_its_own_parameterization():
    """A guide trained with another parameterization (x0) than the main model (eps): its output is converted with
    x_t and abar, eps_g = (x_t - sqrt(abar) x0_g) / sqrt(1 - abar) (docs/math.md §1), and at scale 0 the guided eps
    is the guide's. Catches: the guide's conversion fed the wrong x_t (or none), the main model's
    parameterization used for the guide."""
    net, guide = _mlp(0), _mlp(1)
    den = NetDenoiser(net, 3, setting=GuidanceSetting(0.0, Autoguidance("bad.ckpt"), WeakModel(guide, "x0")),
                      clip_x0=False)
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    t, abar, y = torch.full((4,), 0.4), torch.full((4,), 0.6), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        expected = (x_t - abar.sqrt().view(-1, 1) * guide(x_t, t, y)) / (1 - abar).sqrt().view(-1, 1)
        got = den(x_t, t, abar, y).eps
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_an_x0_space_rule_runs_through_the_denoiser():
    """A rule combining in x0 space gets the denoiser's x_t and abar for the conversion: plain CFG is linear, so the
    x0-space combination through NetDenoiser equals the eps-space one. Catches: the rule's context built without
    x_t (the conversion then fails or uses another state)."""
    net = _mlp(0)
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(5))
    t, abar, y = torch.full((4,), 0.3), torch.full((4,), 0.7), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        eps_space = NetDenoiser(net, 3, setting=GuidanceSetting(2.5), clip_x0=False)(x_t, t, abar, y).eps
        x0_space = NetDenoiser(net, 3, setting=GuidanceSetting(2.5, ClassifierFreeGuidance(space="x0")),
                               clip_x0=False)(x_t, t, abar, y).eps
    torch.testing.assert_close(x0_space, eps_space, rtol=1e-5, atol=1e-5)
