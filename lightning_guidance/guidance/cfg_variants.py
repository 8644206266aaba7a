"""The modern CFG variants as CFG rules (docs/math.md §8; reference behaviour: ``diffusers.guiders`` 0.42.1).

Each class is a :class:`~lightning_guidance.diffusion.cfg_rule.ClassifierFreeGuidance` (the plug a
:class:`~lightning_guidance.diffusion.denoiser.NetDenoiser` calls): ``c`` the conditional prediction, ``g`` the
guiding one (the null class, or the worse model for :class:`Autoguidance`), ``s`` the CFG scale in diffusers'
convention (``s = 1`` = conditional). All of them also take ``start``/``stop`` (fractions of the steps),
``sigma_lo``/``sigma_hi`` (noise levels), ``guidance_rescale`` (phi) and ``space`` (``"eps"``, diffusers on an eps
model, or ``"x0"``), see :mod:`lightning_guidance.diffusion.cfg_rule`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..diffusion.cfg_rule import ClassifierFreeGuidance, RuleContext, rescale_to_conditional_std
from ..diffusion.parameterization import per_sample

__all__ = ["AdaptiveProjectedGuidance", "Autoguidance", "CFGRescale", "CFGZeroStar", "ClassifierFreeGuidance",
           "FrequencyDecoupledGuidance", "GuidanceInterval", "PerturbedAttentionGuidance", "SkipLayerGuidance",
           "SmoothedEnergyGuidance", "TangentialCFG"]


def _flat_dims(x: Tensor) -> list[int]:
    return list(range(1, x.ndim))


class GuidanceInterval(ClassifierFreeGuidance):
    """CFG only where ``sigma_lo < sigma <= sigma_hi`` (Kynkäänniemi et al., NeurIPS 2024, eq. 4), the conditional
    model elsewhere; or, as diffusers writes it, only for steps ``int(start N) <= step < int(stop N)``.
    Both forms may be given (the rule then acts where both hold); at least one bound must be set."""

    def __init__(self, sigma_lo: float = 0.0, sigma_hi: float = math.inf, start: float = 0.0, stop: float = 1.0,
                 guidance_rescale: float = 0.0, space: str = "eps"):
        if (sigma_lo, sigma_hi, start, stop) == (0.0, math.inf, 0.0, 1.0):
            raise ValueError("GuidanceInterval needs an interval: set sigma_lo/sigma_hi (noise levels, e.g. 0.28 and "
                             "5.42 as in the paper's EDM2 setting) or start/stop (fractions of the steps)")
        super().__init__(start=start, stop=stop, sigma_lo=sigma_lo, sigma_hi=sigma_hi,
                         guidance_rescale=guidance_rescale, space=space)


class CFGRescale(ClassifierFreeGuidance):
    """CFG followed by Lin et al. (WACV 2024, §3.4, eq. 15-16): ``phi g_cfg std(c)/std(g_cfg) + (1 - phi) g_cfg``,
    std per sample over all non-batch dims (diffusers' ``rescale_noise_cfg``). ``guidance_rescale`` is phi."""

    def __init__(self, guidance_rescale: float = 0.7, start: float = 0.0, stop: float = 1.0, sigma_lo: float = 0.0,
                 sigma_hi: float = math.inf, space: str = "eps"):
        super().__init__(start=start, stop=stop, sigma_lo=sigma_lo, sigma_hi=sigma_hi,
                         guidance_rescale=guidance_rescale, space=space)


class AdaptiveProjectedGuidance(ClassifierFreeGuidance):
    """APG (Sadat et al., ICLR 2025, alg. 1; diffusers' ``normalized_guidance``).

    ``d = c - g``; momentum ``m <- d + momentum * m``, ``d = m`` (``momentum`` None: off; the paper uses a negative
    beta); norm threshold ``d <- d min(1, norm_threshold / ||d||)`` (0: off); ``d_par`` its projection on ``c``
    (float64), ``d_perp = d - d_par``; output ``g + s (d_perp + eta d_par)`` (diffusers' default), or with
    ``use_original_formulation`` the paper's ``c + (s - 1)(d_perp + eta d_par)`` (diffusers' flag, its scale being
    our ``s - 1``), which keeps the conditional prediction whole and reshapes only the guidance on top of it; the two
    agree at ``eta = 1`` without momentum and threshold. Norms and projections run over all non-batch dims. The momentum advances at every denoiser call that guides (twice per EDM Heun step) and
    restarts with every sampling run.
    """

    def __init__(self, eta: float = 0.0, momentum: float | None = -0.5, norm_threshold: float = 15.0,
                 use_original_formulation: bool = False, start: float = 0.0, stop: float = 1.0, sigma_lo: float = 0.0, sigma_hi: float = math.inf,
                 guidance_rescale: float = 0.0, space: str = "eps"):
        super().__init__(start=start, stop=stop, sigma_lo=sigma_lo, sigma_hi=sigma_hi,
                         guidance_rescale=guidance_rescale, space=space)
        if norm_threshold < 0:
            raise ValueError(f"AdaptiveProjectedGuidance: norm_threshold must be >= 0 (0 = off), got {norm_threshold}")
        self.eta = float(eta)
        self.momentum = None if momentum is None else float(momentum)
        self.norm_threshold = float(norm_threshold)
        self.use_original_formulation = bool(use_original_formulation)

    def guide(self, cond: Tensor, guide: Tensor, s: Tensor, ctx: RuleContext, state: dict) -> Tensor:
        dims = _flat_dims(cond)
        diff = cond - guide
        if self.momentum is not None:
            diff = diff + self.momentum * state.get("running_average", 0)
            state["running_average"] = diff
        if self.norm_threshold > 0:
            diff = diff * torch.clamp(self.norm_threshold / diff.norm(p=2, dim=dims, keepdim=True), max=1.0)
        d, unit = diff.double(), torch.nn.functional.normalize(cond.double(), dim=dims)
        parallel = (d * unit).sum(dim=dims, keepdim=True) * unit
        update = (d - parallel).to(diff.dtype) + self.eta * parallel.to(diff.dtype)
        return cond + (s - 1) * update if self.use_original_formulation else guide + s * update


class CFGZeroStar(ClassifierFreeGuidance):
    """CFG-Zero* (Fan et al. 2025, eq. 8 and §4.2; diffusers' ``ClassifierFreeZeroStarGuidance``).

    Per sample ``a = <c, g> / (||g||^2 + 1e-8)`` over the flattened dims (float32); output ``a g + s (c - a g)``;
    the first ``zero_init_steps`` steps output 0 in the rule's space (for a flow model, "do not move"; on the EDM
    sampler with eps, ``D = x`` likewise leaves the state in place; on DDPM/DDIM a zero eps rescales ``x``).
    """

    def __init__(self, zero_init_steps: int = 1, start: float = 0.0, stop: float = 1.0, sigma_lo: float = 0.0,
                 sigma_hi: float = math.inf, guidance_rescale: float = 0.0, space: str = "eps"):
        super().__init__(start=start, stop=stop, sigma_lo=sigma_lo, sigma_hi=sigma_hi,
                         guidance_rescale=guidance_rescale, space=space)
        if zero_init_steps < 0:
            raise ValueError(f"CFGZeroStar: zero_init_steps must be >= 0, got {zero_init_steps}")
        self.zero_init_steps = int(zero_init_steps)

    def _zeroed(self, ctx: RuleContext) -> bool:
        if self.zero_init_steps == 0:
            return False
        if ctx.step is None:
            raise ValueError("CFGZeroStar with zero_init_steps > 0 needs the sampler's step index")
        return ctx.step.index < self.zero_init_steps

    def needs_guide(self, s: float | Tensor, ctx: RuleContext) -> bool:
        return not self._zeroed(ctx) and super().needs_guide(s, ctx)

    def guide(self, cond: Tensor, guide: Tensor, s: Tensor, ctx: RuleContext, state: dict) -> Tensor:
        c, g = cond.flatten(1).float(), guide.flatten(1).float()
        a = ((c * g).sum(1, keepdim=True) / ((g ** 2).sum(1, keepdim=True) + 1e-8)).to(cond.dtype)
        scaled_guide = guide * per_sample(a, cond)
        return scaled_guide + s * (cond - scaled_guide)

    def __call__(self, cond: Tensor, guide: Tensor | None, s: float | Tensor, ctx: RuleContext,
                 state: dict) -> Tensor:
        if self._zeroed(ctx):
            pred = torch.zeros_like(cond)
            # diffusers rescales after zeroing too: std(0) = 0 gives 0/0; keep the zero prediction
            return pred
        return super().__call__(cond, guide, s, ctx, state)


class TangentialCFG(ClassifierFreeGuidance):
    """Tangential CFG (Kwon et al. 2025, "TCFG", alg. 1; diffusers' ``TangentialClassifierFreeGuidance``).

    Per sample, the top right-singular vector ``v`` of the 2 x D matrix ``[c; g]`` (flattened, float32); the guiding
    prediction is replaced by its projection ``g' = (g v) v^T``; output ``g' + s (c - g')``.
    """

    def guide(self, cond: Tensor, guide: Tensor, s: Tensor, ctx: RuleContext, state: dict) -> Tensor:
        preds = torch.stack([cond, guide], dim=1).float().flatten(2)  # (B, 2, D)
        _, _, vh = torch.linalg.svd(preds, full_matrices=False)
        top = vh[:, :1]  # (B, 1, D)
        g = guide.reshape(len(guide), 1, -1).float()
        projected = ((g @ top.transpose(-2, -1)) @ top).reshape(guide.shape).to(cond.dtype)
        return projected + s * (cond - projected)


class FrequencyDecoupledGuidance(ClassifierFreeGuidance):
    """Frequency-decoupled guidance (Sadat et al. 2025, "FDG", alg. 2; diffusers' ``FrequencyDecoupledGuidance``).

    ``c`` and ``g`` are split into a Laplacian pyramid of ``len(level_weights)`` levels (kornia's
    ``build_laplacian_pyramid``, highest frequency first); level k gets CFG at ``s_k = 1 + (s - 1) level_weights[k]``
    (so the sweep's s moves all levels and ``s = 1`` is the conditional model; diffusers' ``guidance_scales`` are
    the resulting ``s_k``), with the shift's part parallel to ``c_k`` weighted by ``parallel_weights[k]``; the
    guided pyramid is collapsed again. Images only (C, H, W), with H and W divisible by ``2^(levels - 1)``.
    """

    def __init__(self, level_weights: Sequence[float] = (1.0, 0.5), parallel_weights: Sequence[float] | None = None,
                 start: float = 0.0, stop: float = 1.0, sigma_lo: float = 0.0, sigma_hi: float = math.inf,
                 guidance_rescale: float = 0.0, space: str = "eps"):
        super().__init__(start=start, stop=stop, sigma_lo=sigma_lo, sigma_hi=sigma_hi,
                         guidance_rescale=guidance_rescale, space=space)
        self.level_weights = [float(w) for w in level_weights]
        if len(self.level_weights) < 1:
            raise ValueError("FrequencyDecoupledGuidance needs at least one level weight")
        parallel = [1.0] * len(self.level_weights) if parallel_weights is None else [float(w) for w in parallel_weights]
        if len(parallel) != len(self.level_weights):
            raise ValueError(f"FrequencyDecoupledGuidance: {len(parallel)} parallel_weights for "
                             f"{len(self.level_weights)} levels; give one per level")
        self.parallel_weights = parallel

    def check_data_shape(self, data_shape: tuple[int, ...]) -> None:
        super().check_data_shape(data_shape)
        levels = len(self.level_weights)
        if len(data_shape) != 3:
            raise ValueError(f"FrequencyDecoupledGuidance splits images into frequency bands; samples of shape "
                             f"{tuple(data_shape)} are not images (C, H, W): use another CFG rule for this data")
        factor = 2 ** (levels - 1)
        if data_shape[1] % factor or data_shape[2] % factor:
            raise ValueError(f"FrequencyDecoupledGuidance with {levels} levels needs H and W divisible by {factor}, "
                             f"got {tuple(data_shape)}: use fewer level_weights")

    def guide(self, cond: Tensor, guide: Tensor, s: Tensor, ctx: RuleContext, state: dict) -> Tensor:
        from kornia.geometry import pyrup
        from kornia.geometry.transform import build_laplacian_pyramid

        self.check_data_shape(tuple(cond.shape[1:]))
        levels = len(self.level_weights)
        cond_pyr, guide_pyr = build_laplacian_pyramid(cond, levels), build_laplacian_pyramid(guide, levels)
        guided = []
        for c, g, weight, par in zip(cond_pyr, guide_pyr, self.level_weights, self.parallel_weights):
            shift = c - g
            if not math.isclose(par, 1.0):
                dims = _flat_dims(c)
                unit = torch.nn.functional.normalize(c.double(), dim=dims)
                parallel = ((shift.double() * unit).sum(dim=dims, keepdim=True) * unit).to(shift.dtype)
                shift = par * parallel + (shift - parallel)
            guided.append(g + (1 + (s - 1) * weight) * shift)
        out = guided[-1]
        for band in reversed(guided[:-1]):
            out = pyrup(out) + band
        return out


class Autoguidance(ClassifierFreeGuidance):
    """Autoguidance (Karras et al., NeurIPS 2024, eq. 2): ``D = D_bad + s (D_good - D_bad)``, the guiding prediction
    being the *same class* through a worse version of the model (smaller, or trained for fewer steps).

    ``guide_checkpoint`` names that model's checkpoint (a ``CFGDiffusion`` trained on the same data and schedule);
    the sampling module loads it (``guide_use_ema``: its EMA weights). diffusers' ``AutoGuidance`` builds the bad
    model by dropping layers of the good one; its combination is the same formula, which is what is compared.
    """

    guide_is_other_model = True

    def __init__(self, guide_checkpoint: str, guide_use_ema: bool = True, start: float = 0.0, stop: float = 1.0,
                 sigma_lo: float = 0.0, sigma_hi: float = math.inf, guidance_rescale: float = 0.0,
                 space: str = "eps"):
        super().__init__(start=start, stop=stop, sigma_lo=sigma_lo, sigma_hi=sigma_hi,
                         guidance_rescale=guidance_rescale, space=space)
        if not guide_checkpoint:
            raise ValueError("Autoguidance needs guide_checkpoint: the worse model's checkpoint (e.g. one trained "
                             "with configs/fractal/cfg_autoguide_bad.yaml)")
        self.guide_checkpoint = str(guide_checkpoint)
        self.guide_use_ema = bool(guide_use_ema)


class PerturbedAttentionGuidance(ClassifierFreeGuidance):
    """Perturbed-attention guidance (Ahn et al., ECCV 2024; diffusers' ``PerturbedAttentionGuidance``).

    A third prediction ``p``: the conditional model with the attention map of the self-attention blocks ``layers``
    (indices in forward order; None = all) replaced by the identity. Output (diffusers' forward, both branches):
    ``g + s (c - g) + s_p (c - p)`` where CFG and the perturbation are both active, ``p + s_p (c - p)`` where only
    the perturbation is (CFG's ``s = 1`` or outside its window), ``c`` where neither is. The perturbation is active
    for steps ``int(perturbed_guidance_start N) < step < int(perturbed_guidance_stop N)`` (strict, as diffusers) and
    ``s_p = perturbed_guidance_scale != 0``. Needs a network with self-attention (the UNet; not the toy MLPs).
    """

    perturbation = "identity"

    def __init__(self, perturbed_guidance_scale: float = 2.8, perturbed_guidance_start: float = 0.01,
                 perturbed_guidance_stop: float = 0.2, layers: Sequence[int] | None = None, start: float = 0.0,
                 stop: float = 1.0, sigma_lo: float = 0.0, sigma_hi: float = math.inf, guidance_rescale: float = 0.0,
                 space: str = "eps"):
        super().__init__(start=start, stop=stop, sigma_lo=sigma_lo, sigma_hi=sigma_hi,
                         guidance_rescale=guidance_rescale, space=space)
        if not 0.0 <= perturbed_guidance_start <= perturbed_guidance_stop <= 1.0:
            raise ValueError(f"{type(self).__name__}: need 0 <= perturbed_guidance_start <= perturbed_guidance_stop "
                             f"<= 1, got {perturbed_guidance_start}, {perturbed_guidance_stop}")
        self.perturbed_guidance_scale = float(perturbed_guidance_scale)
        self.perturbed_guidance_start = float(perturbed_guidance_start)
        self.perturbed_guidance_stop = float(perturbed_guidance_stop)
        self.layers = None if layers is None else [int(i) for i in layers]

    def needs_perturbed(self, ctx: RuleContext) -> bool:
        if math.isclose(self.perturbed_guidance_scale, 0.0):
            return False
        if ctx.step is None:
            raise ValueError(f"{type(self).__name__} needs the sampler's step index")
        n = ctx.step.num_steps
        return int(self.perturbed_guidance_start * n) < ctx.step.index < int(self.perturbed_guidance_stop * n)

    def __call__(self, cond: Tensor, guide: Tensor | None, s: float | Tensor, ctx: RuleContext,
                 state: dict) -> Tensor:
        # which branch applies is decided for the whole batch (the denoiser asks for g and p batch-wide)
        s, p = per_sample(s, cond), ctx.perturbed
        if guide is not None:
            pred = guide + s * (cond - guide)
            if p is not None:
                pred = pred + self.perturbed_guidance_scale * (cond - p)
        elif p is not None:
            pred = p + self.perturbed_guidance_scale * (cond - p)
        else:
            pred = cond
        if self.guidance_rescale > 0:
            pred = rescale_to_conditional_std(pred, cond, self.guidance_rescale)
        return pred


class SkipLayerGuidance(PerturbedAttentionGuidance):
    """Skip-layer guidance (diffusers' ``SkipLayerGuidance``, after Stable Diffusion 3.5): the same combination as
    :class:`PerturbedAttentionGuidance`, the third prediction with the self-attention blocks ``layers`` skipped
    (each returns its input). ``perturbed_guidance_*`` are diffusers' ``skip_layer_guidance_*``."""

    perturbation = "skip"


class SmoothedEnergyGuidance(PerturbedAttentionGuidance):
    """Smoothed-energy guidance (Hong, NeurIPS 2024, arXiv 2408.00760; diffusers' ``SmoothedEnergyGuidance``).

    The third prediction ``p`` is the conditional model with the queries of the self-attention blocks ``layers``
    (diffusers' ``seg_guidance_layers``) Gaussian-blurred over the image grid with std ``seg_blur_sigma`` tokens
    (``nets.blocks.blur_queries``); above ``seg_blur_threshold_inf`` the blur is infinite (every query its spatial
    mean, i.e. uniform attention: the paper's and diffusers' default ``seg_blur_sigma = 9999999``). Output as
    :class:`PerturbedAttentionGuidance` with ``s_p = seg_guidance_scale``, active for steps
    ``int(seg_guidance_start N) < step < int(seg_guidance_stop N)`` (diffusers' defaults: 0 and 1, every step
    but the first). ``seg_blur_sigma = 0`` or ``seg_guidance_scale = 0``: plain CFG (the blur of width 0 leaves
    the queries as they are; no perturbed forward is run). Needs a network with self-attention (the UNet).

    diffusers 0.42.1's blur takes its two branches the other way round (a finite sigma gives the mean, a sigma
    above the threshold a Gaussian cut to the grid; diffusers PR #14187); the blur here is the paper's, and each of
    its branches equals the diffusers code of that branch (``tests/test_cfg_variants.py``).
    """

    perturbation = "blur"

    def __init__(self, seg_guidance_scale: float = 2.8, seg_blur_sigma: float = 9999999.0,
                 seg_blur_threshold_inf: float = 9999.0, seg_guidance_start: float = 0.0,
                 seg_guidance_stop: float = 1.0, layers: Sequence[int] | None = None, start: float = 0.0,
                 stop: float = 1.0, sigma_lo: float = 0.0, sigma_hi: float = math.inf, guidance_rescale: float = 0.0,
                 space: str = "eps"):
        super().__init__(perturbed_guidance_scale=seg_guidance_scale, perturbed_guidance_start=seg_guidance_start,
                         perturbed_guidance_stop=seg_guidance_stop, layers=layers, start=start, stop=stop,
                         sigma_lo=sigma_lo, sigma_hi=sigma_hi, guidance_rescale=guidance_rescale, space=space)
        if seg_blur_sigma < 0:
            raise ValueError(f"SmoothedEnergyGuidance: seg_blur_sigma must be >= 0 (0 = no blur, above "
                             f"seg_blur_threshold_inf = infinite blur), got {seg_blur_sigma}")
        self.seg_blur_sigma = float(seg_blur_sigma)
        self.seg_blur_threshold_inf = float(seg_blur_threshold_inf)

    def perturbation_options(self) -> dict:
        return {"blur_sigma": self.seg_blur_sigma, "blur_threshold_inf": self.seg_blur_threshold_inf}

    def needs_perturbed(self, ctx: RuleContext) -> bool:
        return self.seg_blur_sigma > 0 and super().needs_perturbed(ctx)
