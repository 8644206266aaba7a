"""Guidance of diffusers models read from a folder: through the VAE decoder (the gradient checked against finite
differences), and every sampler, guidance term and CFG variant run on them through ``SamplingModule``.

Oracle for the gradient: central finite differences of the very objective the term ascends, in float64, along
random directions (``<grad, v> = (f(x + h v) - f(x - h v)) / 2h + O(h^2)``). The classifier is a torchvision ResNet
with its ReLUs swapped for Softplus (EluCD's setting), so the objective is smooth.
"""

from __future__ import annotations

import pytest
import torch
from tiny_diffusers import ddim_scheduler, ddpm_scheduler, dit, save_dit_folder, save_unet_folder, unet, vae

from lightning_guidance.diffusion.cfg_rule import SamplingStep
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
from lightning_guidance.diffusion.plug import GuidanceState, denoise_for_guidance
from lightning_guidance.diffusion.sampling import build_denoiser
from lightning_guidance.guidance import (CFGPlusClassifierGuidance, ClassifierGuidance, DivergenceGuidance,
                                         EntropyAdaptiveGuidance, OffTheShelfGuidance, TiltedGuidance)
from lightning_guidance.guidance import cfg_variants as variants
from lightning_guidance.guidance.log_likelihood import log_likelihood
from lightning_guidance.guidance.sweep import Sweep
from lightning_guidance.modules.pretrained_diffusion import PretrainedDiffusion, PretrainedOptions
from lightning_guidance.modules.sampling import SamplingModule
from lightning_guidance.nets import DecodedImageClassifier, EncoderClassifier, OffTheShelfClassifier


def resnet(num_classes: int = 10) -> OffTheShelfClassifier:
    torch.manual_seed(0)
    return OffTheShelfClassifier("torchvision", "resnet18", allow_random_init=True, softplus_beta=3.0, input_size=32,
                                 model_kwargs={"num_classes": num_classes})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"dit": save_dit_folder(root / "dit", dit(num_classes=10), vae(), ddim_scheduler(beta_end=0.002)),
            "unet": save_unet_folder(root / "unet", unet(num_class_embeds=11), ddpm_scheduler()),
            "worse_unet": save_unet_folder(root / "worse", unet(num_class_embeds=11, seed=1), ddpm_scheduler()),
            "unconditional": save_unet_folder(root / "uncond", unet(num_class_embeds=None), ddpm_scheduler())}


# ---- classifier guidance through the decoder ----------------------------------------------------------------
@pytest.mark.parametrize("through_denoiser", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_through_the_decoder_equals_finite_differences(folders, through_denoiser, checkpointing):
    """``∇ log p(y | D(x0_hat))``, with respect to x0_hat (EluCD's reference) or to x_t through the DiT as well."""
    model = PretrainedDiffusion(folders["dit"]).double()
    classifier = DecodedImageClassifier(resnet(), str(folders["dit"]), checkpointing=checkpointing).double()
    term = OffTheShelfGuidance(classifier, tau1=1.0, tau2=0.5, input="x0_hat", through_denoiser=through_denoiser,
                               clip_x0=False)
    gen = torch.Generator().manual_seed(0)
    x_t = 0.5 * torch.randn(2, *model.data_shape, generator=gen, dtype=torch.float64)
    y, step = torch.tensor([3, 7]), SamplingStep(4, 10)
    t = torch.full((2,), 300 / 999, dtype=torch.float64)
    abar = model.schedule.alphas_cumprod[300].expand(2).clone()
    denoiser = build_denoiser(model, GuidanceSetting(1.5))
    out, graph = denoise_for_guidance(denoiser, [term], x_t, t, abar, y, step)
    state = GuidanceState(x_t=x_t, t=t, abar=abar, y=y, out=out, step=4, num_steps=10, sampler="ddim",
                          denoiser=denoiser, denoiser_graph=graph)
    gradient = term.gradient(state)

    def objective(x):  # the objective at x_t (through the denoiser) or at x0_hat (the state's, detached)
        x0 = denoiser(x, t, abar, y, step=step).x0 if through_denoiser else x
        images = classifier.decoder(x0).clamp(-1, 1)
        return log_likelihood(classifier.classifier(images), y, 1.0, 0.5).sum()

    point, h = (x_t if through_denoiser else out.x0), 1e-6  # small: the ResNet max-pools (kinks)
    with torch.no_grad():
        assert classifier.decoder(out.x0).abs().max() < 1  # no pixel at the clamp: the objective is smooth here
        for _ in range(3):
            v = torch.randn(point.shape, generator=gen, dtype=torch.float64)
            numeric = (objective(point + h * v) - objective(point - h * v)) / (2 * h)
            assert (gradient * v).sum().item() == pytest.approx(numeric.item(), rel=1e-6, abs=1e-9)
    assert gradient.abs().max() > 1e-3


def test_checkpointing_the_decoder_gives_the_same_gradient(folders):
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        classifier = DecodedImageClassifier(resnet(), str(folders["dit"]), checkpointing=checkpointing)
        leaf = z.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(classifier(leaf).logsumexp(1).sum(), leaf)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


# ---- everything runs through SamplingModule ----------------------------------------------------------------------
def module(folder, sampler="ddim", values=(1.0, 2.0), target="cfg", terms=(), cfg_rule=None, num_classes=10,
           **sampler_kwargs) -> SamplingModule:
    sweep = Sweep(target=target, values=list(values), terms=list(terms), cfg_rule=cfg_rule)
    steps = {"ddpm": {"num_steps": 4}, "ddim": {"num_steps": 4}, "edm": {"num_steps": 3}}[sampler]
    return SamplingModule(str(folder), output_dir="unused", sampler=sampler, sampler_kwargs={**steps, **sampler_kwargs},
                          sweep=sweep, samples_per_class=1, pretrained=PretrainedOptions(num_classes=num_classes))


def guided_and_not(m: SamplingModule, ids=(0, 1, 2)):
    """The samples at the sweep's first and last value (the same seeds)."""
    first, _ = m.sample(list(ids), m.sweep.values[0])
    last, _ = m.sample(list(ids), m.sweep.values[-1])
    assert torch.isfinite(first).all() and torch.isfinite(last).all()
    return first, last


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "edm"])
def test_every_sampler_runs_cfg_on_the_latent_dit(folders, sampler):
    m = module(folders["dit"], sampler)
    plain, guided = guided_and_not(m)
    assert plain.shape == (3, 4, 4, 4) and not torch.allclose(plain, guided)
    assert m.diffusion.decode(guided).shape == (3, 3, 8, 8)


def cfg_rules(folders):
    return {"GuidanceInterval": variants.GuidanceInterval(sigma_lo=0.3, sigma_hi=5.0),
            "CFGRescale": variants.CFGRescale(guidance_rescale=0.7),
            "AdaptiveProjectedGuidance": variants.AdaptiveProjectedGuidance(),
            "CFGZeroStar": variants.CFGZeroStar(),
            "TangentialCFG": variants.TangentialCFG(),
            "FrequencyDecoupledGuidance": variants.FrequencyDecoupledGuidance(),
            "Autoguidance": variants.Autoguidance(guide_checkpoint=str(folders["worse_unet"]))}


@pytest.mark.parametrize("rule", ["GuidanceInterval", "CFGRescale", "AdaptiveProjectedGuidance", "CFGZeroStar",
                                  "TangentialCFG", "FrequencyDecoupledGuidance", "Autoguidance"])
def test_every_cfg_variant_runs_on_the_unet(folders, rule):
    plain, guided = guided_and_not(module(folders["unet"], cfg_rule=cfg_rules(folders)[rule]))
    assert not torch.allclose(plain, guided)


def classifier_terms(noisy, clean):
    return {"ClassifierGuidance": ClassifierGuidance(noisy),
            "OffTheShelfGuidance": OffTheShelfGuidance(clean, tau2=0.5),
            "TiltedGuidance": TiltedGuidance(clean),
            "EntropyAdaptiveGuidance": EntropyAdaptiveGuidance(clean),
            "DivergenceGuidance": DivergenceGuidance(clean)}


@pytest.mark.parametrize("term", ["ClassifierGuidance", "OffTheShelfGuidance", "TiltedGuidance",
                                  "EntropyAdaptiveGuidance", "DivergenceGuidance"])
def test_every_guidance_term_runs_on_the_unconditional_unet(folders, term):
    """Classic classifier guidance of an unconditional model (the labels reach the classifier only)."""
    torch.manual_seed(0)
    noisy = EncoderClassifier(data_shape=[3, 8, 8], num_classes=10, model_channels=8, channel_mult=[1],
                              pool="adaptive")
    with torch.no_grad():
        noisy.head.weight.normal_()  # the head starts at zero: a fresh net would guide nowhere
    m = module(folders["unconditional"], "ddpm", values=(0.0, 50.0), target="guidance",
               terms=[classifier_terms(noisy, resnet())[term]])
    plain, guided = guided_and_not(m)
    assert not torch.allclose(plain, guided)


def test_cfg_plus_an_off_the_shelf_classifier_through_the_decoder_runs_on_the_dit(folders):
    """EluCD's DiT row in small: CFG 1.5 plus the decoded-image classifier's gradient."""
    classifier = DecodedImageClassifier(resnet(), str(folders["dit"]), checkpointing=True)
    term = CFGPlusClassifierGuidance(classifier, tau2=0.5, clip_x0=False)
    sweep = Sweep(target="guidance", values=[0.0, 4.0], cfg_scale=1.5, terms=[term])
    m = SamplingModule(str(folders["dit"]), output_dir="unused", sampler="ddpm", sampler_kwargs={"num_steps": 4},
                       sweep=sweep, samples_per_class=1)
    plain, guided = guided_and_not(m)
    assert not torch.allclose(plain, guided)


# ---- perturbed self-attention of diffusers networks (PAG, SLG, SEG) --------------------------------------------
@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_identity_attention_equals_diffusers_attention_score_skip(folders, kind):
    """PAG's identity map on one self-attention module equals that module run under diffusers' own
    ``AttentionScoreSkipFunctionMode`` (its layer-skip hook for ``skip_attention_scores``); the others are untouched."""
    from diffusers.hooks.layer_skip import AttentionScoreSkipFunctionMode

    from lightning_guidance.nets.diffusers_attention import DiffusersPerturbedAttention

    net = PretrainedDiffusion(folders[kind]).net
    layers = net.self_attention_layers()
    assert len(layers) == {"unet": 4, "dit": 2}[kind]  # down 1, middle 1, up 2 / one per transformer block
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, k, out, i=i: seen.__setitem__(i, out), with_kwargs=True)
             for i, m in enumerate(layers)]
    x, t, y = torch.randn(2, *net.data_shape), torch.full((2,), 0.4), torch.tensor([1, 2])
    with torch.no_grad():
        DiffusersPerturbedAttention(net, "identity", [1])(x, t, y)
        perturbed = dict(seen)
        inputs = {}
        pre = layers[1].register_forward_pre_hook(lambda m, a, k: inputs.update(args=a, kwargs=k), with_kwargs=True)
        net(x, t, y)
        pre.remove()
        plain = dict(seen)
        with AttentionScoreSkipFunctionMode():
            expected = layers[1](*inputs["args"], **inputs["kwargs"])
    for h in hooks:
        h.remove()
    torch.testing.assert_close(perturbed[0], plain[0], rtol=0, atol=0)  # before the perturbed layer: unchanged
    assert not torch.allclose(perturbed[1], plain[1])
    # the perturbed layer's own input is the same in both runs (layer 0 and what precedes it are unperturbed)
    torch.testing.assert_close(perturbed[1], expected, rtol=1e-5, atol=1e-6)
    assert "forward" not in vars(layers[1])  # restored after the call


def test_skip_and_infinite_blur_on_a_unet_attention(folders):
    """Skip: the module returns its residual input; infinite blur: every query is the mean query, so every position
    attends alike and the attention's contribution (output minus input) is one vector for all positions."""
    from lightning_guidance.nets.diffusers_attention import DiffusersPerturbedAttention

    net = PretrainedDiffusion(folders["unet"]).net
    layer = net.self_attention_layers()[1]  # the middle block's attention (residual connection)
    h = torch.randn(2, layer.to_q.in_features, 2, 2)
    with torch.no_grad():
        skip = DiffusersPerturbedAttention(net, "skip", [1])
        skip.perturb(layer)
        torch.testing.assert_close(layer(h), h / layer.rescale_output_factor)
        skip.restore(layer)
        blur = DiffusersPerturbedAttention(net, "blur", [1], blur_sigma=1e7, blur_threshold_inf=1e4)
        blur.perturb(layer)
        added = layer(h) * layer.rescale_output_factor - h
        blur.restore(layer)
        assert not torch.allclose(layer(h) * layer.rescale_output_factor - h, added[:, :, :1, :1].expand_as(h))
    torch.testing.assert_close(added, added[:, :, :1, :1].expand_as(added), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["PerturbedAttentionGuidance", "SkipLayerGuidance", "SmoothedEnergyGuidance"])
@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_perturbed_attention_rules_run_on_diffusers_models(folders, rule, kind):
    options = dict(perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0)
    if rule == "SmoothedEnergyGuidance":
        options = dict(seg_guidance_start=0.0, seg_guidance_stop=1.0)
    plain, guided = guided_and_not(module(folders[kind], cfg_rule=getattr(variants, rule)(layers=[0], **options)))
    assert not torch.allclose(plain, guided)


def test_autoguidance_stacks_two_diffusers_models_into_one_call(folders):
    """On CUDA the denoiser evaluates autoguidance's two networks as one vmapped call (StackedPair): it must give
    what the two calls give, for diffusers networks too."""
    from lightning_guidance.diffusion.denoiser import StackedPair

    good, bad = (PretrainedDiffusion(folders[k], num_classes=10).net for k in ("unet", "worse_unet"))
    x, t, y = torch.randn(2, *good.data_shape), torch.tensor([0.3, 0.6]), torch.tensor([1, 10])
    with torch.no_grad():
        stacked = StackedPair(good, bad)(x, t, y)
        torch.testing.assert_close(stacked[0], good(x, t, y), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stacked[1], bad(x, t, y), rtol=1e-5, atol=1e-5)
