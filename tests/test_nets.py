"""Networks: shapes, conditioning, ADM properties, input checks.

Oracles: diffusers' ``get_timestep_embedding`` and a numpy formula (time embedding), hand-written
GroupNorm/conv/attention formulas (ResBlock, AttentionBlock), hand-derived parameter counts, the
affine identity f(a u + b v) = a f(u) + b f(v) + (1 - a - b) f(0) (linear classifier), and autograd.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding

from lightning_guidance.diffusion.denoiser import NetDenoiser
from lightning_guidance.diffusion.guidance_setting import GuidanceSetting
from lightning_guidance.nets import (EncoderClassifier, LinearClassifier, MLPClassifier, MLPDenoiser, UNet,
                                     timestep_embedding)
from lightning_guidance.nets.blocks import AttentionBlock, ResBlock, group_norm

TINY_UNET = dict(model_channels=16, num_res_blocks=1, channel_mult=(1, 2), num_heads=2)
TINY_ENCODER = dict(model_channels=16, num_res_blocks=1, channel_mult=(1, 2), num_heads=2)


def perturb(net: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Move every parameter away from its (possibly zero) init so that every path carries signal."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn_like(p))
    return net


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def denoisers():
    return [
        ("mlp-1d", lambda: MLPDenoiser(1, 2, hidden_dim=32, num_layers=2), (1,)),
        ("mlp-2d", lambda: MLPDenoiser(2, 2, hidden_dim=32, num_layers=2), (2,)),
        ("unet-8", lambda: UNet((1, 8, 8), 10, attention_resolutions=(2,), **TINY_UNET), (1, 8, 8)),
        ("unet-28", lambda: UNet((1, 28, 28), 10, **TINY_UNET), (1, 28, 28)),
        ("unet-32", lambda: UNet((3, 32, 32), 10, resblock_updown=True, **TINY_UNET), (3, 32, 32)),
    ]


def classifiers():
    return [
        ("linear-1d", lambda: LinearClassifier((1,), 2), (1,)),
        ("linear-2d", lambda: LinearClassifier(2, 2), (2,)),
        ("linear-img", lambda: LinearClassifier((1, 8, 8), 10), (1, 8, 8)),
        ("mlp-2d", lambda: MLPClassifier((2,), 2, hidden_dim=32, num_layers=2), (2,)),
        ("mlp-img", lambda: MLPClassifier((1, 8, 8), 10, hidden_dim=32, num_layers=2), (1, 8, 8)),
        ("enc-attn-8", lambda: EncoderClassifier((1, 8, 8), 10, pool="attention", **TINY_ENCODER), (1, 8, 8)),
        ("enc-adapt-28", lambda: EncoderClassifier((1, 28, 28), 10, pool="adaptive", **TINY_ENCODER), (1, 28, 28)),
        ("enc-attn-32", lambda: EncoderClassifier((3, 32, 32), 10, attention_resolutions=(2,), **TINY_ENCODER),
         (3, 32, 32)),
    ]


def labels_for(net, batch):
    return torch.randint(0, net.num_classes + 1, (batch,))  # includes the null class


# ---- shapes, conditioning, gradients ---------------------------------------------------------------


@pytest.mark.parametrize("name,make,shape", denoisers(), ids=[d[0] for d in denoisers()])
def test_denoiser_shape_null_class_and_gradients(name, make, shape):
    net = make()
    assert net.data_shape == shape
    x, t = torch.randn(3, *shape), torch.rand(3)
    out = net(x, t, labels_for(net, 3))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out)), "ADM-style zero-initialised output: a fresh net predicts 0"

    perturb(net)
    y = torch.tensor([0, 1, 1])
    null = torch.full_like(y, net.num_classes)
    assert not torch.allclose(net(x, t, y), net(x, t, null)), "the null class must change the prediction"
    assert torch.equal(net(x, t, None), net(x, t, null)), "y=None means the null class"
    assert not torch.allclose(net(x, t, y), net(x, t.flip(0), y)), "the prediction must depend on t"

    loss = (net(x, t, y) * torch.randn_like(x)).sum()
    loss.backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("name,make,shape", classifiers(), ids=[c[0] for c in classifiers()])
def test_classifier_shape_clean_twin_and_gradients(name, make, shape):
    net = perturb(make())
    x, t = torch.randn(4, *shape), torch.rand(4)
    logits = net(x, t)
    assert logits.shape == (4, net.num_classes)
    assert torch.equal(net(x), net(x, torch.zeros(4))), "t=None must mean clean data, t = 0"
    assert not torch.allclose(net(x, t), net(x, t.flip(0)))
    F.cross_entropy(logits, torch.randint(0, net.num_classes, (4,))).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def test_unet_runs_under_cfg_denoiser_as_one_doubled_batch():
    net = perturb(UNet((1, 8, 8), 10, **TINY_UNET))
    calls = []
    net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    x = torch.randn(5, 1, 8, 8)
    out = NetDenoiser(net, 10, setting=GuidanceSetting(2.0))(x, torch.rand(5), torch.full((5,), 0.5, dtype=torch.float64),
                                                             torch.arange(5))
    assert out.eps.shape == x.shape and calls == [10]


def test_unconditional_unet_with_zero_classes():
    net = perturb(UNet((1, 8, 8), 0, **TINY_UNET))
    x = torch.randn(2, 1, 8, 8)
    assert net(x, torch.rand(2)).shape == x.shape
    with pytest.raises(ValueError, match="out of range"):
        net(x, torch.rand(2), torch.tensor([0, 1]))


# ---- time embedding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,max_period", [(16, 10000), (7, 10000), (32, 100)])
def test_timestep_embedding_matches_diffusers_and_numpy(dim, max_period):
    t = torch.rand(6, dtype=torch.float64)
    # diffusers works in float32 (angles up to 1000 rad): compare in float32 there, in float64 with numpy
    ref = get_timestep_embedding(1000 * t.float(), dim, flip_sin_to_cos=True, downscale_freq_shift=0,
                                 max_period=max_period)
    torch.testing.assert_close(timestep_embedding(t.float(), dim, max_period=max_period), ref, rtol=1e-5, atol=1e-5)

    ours = timestep_embedding(t, dim, max_period=max_period)

    half = dim // 2
    freqs = max_period ** (-np.arange(half) / half)
    angles = 1000 * t.numpy()[:, None] * freqs[None]
    expected = np.concatenate([np.cos(angles), np.sin(angles), np.zeros((6, dim % 2))], axis=1)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10, atol=1e-10)


# ---- linear classifier -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (2,), (1, 8, 8)])
def test_linear_classifier_is_affine_in_x_and_t(shape):
    net = LinearClassifier(shape, 3).double()
    u, v = torch.randn(2, *shape, dtype=torch.float64), torch.randn(2, *shape, dtype=torch.float64)
    tu, tv = torch.rand(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    a, b = 0.7, -1.9
    lhs = net(a * u + b * v, a * tu + b * tv)
    rhs = a * net(u, tu) + b * net(v, tv) + (1 - a - b) * net(torch.zeros_like(u), torch.zeros_like(tu))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)

    # the Jacobian w.r.t. (x, t) is the same everywhere
    def jacobian(x, t):
        return torch.autograd.functional.jacobian(lambda xx, tt: net(xx, tt).sum(0), (x, t))

    (jx_u, jt_u), (jx_v, jt_v) = jacobian(u, tu), jacobian(v, tv)
    torch.testing.assert_close(jx_u, jx_v)
    torch.testing.assert_close(jt_u, jt_v)
    assert not torch.equal(jx_u, torch.zeros_like(jx_u))


# ---- ADM blocks against hand-written formulas ------------------------------------------------------


def test_resblock_scale_shift_matches_formula():
    block = perturb(ResBlock(8, 12, out_channels=16)).double()
    x, emb = torch.randn(2, 8, 4, 4, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    g_in, g_out = block.in_norm, block.out_norm
    h = F.conv2d(F.silu(F.group_norm(x, 8, g_in.weight, g_in.bias, 1e-5)), block.in_conv.weight, block.in_conv.bias,
                 padding=1)
    e = F.silu(emb) @ block.emb_proj.weight.T + block.emb_proj.bias
    scale, shift = e[:, :16, None, None], e[:, 16:, None, None]
    h = F.group_norm(h, 16, g_out.weight, g_out.bias, 1e-5) * (1 + scale) + shift
    h = F.conv2d(F.silu(h), block.out_conv.weight, block.out_conv.bias, padding=1)
    skip = F.conv2d(x, block.skip.weight, block.skip.bias)
    torch.testing.assert_close(block(x, emb), skip + h)


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_block_matches_softmax_formula(heads):
    block = perturb(AttentionBlock(8, num_heads=heads)).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    n = F.group_norm(x.reshape(2, 8, 9), block.norm.num_groups, block.norm.weight, block.norm.bias, 1e-5)
    qkv = torch.einsum("oc,bcn->bon", block.qkv.weight[:, :, 0], n) + block.qkv.bias[None, :, None]
    d = 8 // heads
    outs = []
    for head in range(heads):  # documented layout: [q_1 k_1 v_1 q_2 k_2 v_2 ...]
        q, k, v = qkv[:, 3 * d * head:3 * d * (head + 1)].split(d, dim=1)
        weights = torch.softmax(torch.einsum("bdi,bdj->bij", q, k) / math.sqrt(d), dim=-1)
        outs.append(torch.einsum("bij,bdj->bdi", weights, v))
    attended = torch.cat(outs, dim=1)
    expected = x.reshape(2, 8, 9) + torch.einsum("oc,bcn->bon", block.proj.weight[:, :, 0], attended) \
        + block.proj.bias[None, :, None]
    torch.testing.assert_close(block(x), expected.reshape(2, 8, 3, 3))


def test_group_norm_falls_back_to_a_divisor_for_narrow_layers():
    assert group_norm(64).num_groups == 32 and group_norm(128).num_groups == 32
    for c in (8, 16, 24, 48, 20):
        g = group_norm(c).num_groups
        assert c % g == 0 and g <= 32 and all(c % k for k in range(g + 1, 33))


def test_attention_blocks_sit_at_the_configured_resolutions():
    net = UNet((1, 8, 8), 10, model_channels=16, num_res_blocks=2, channel_mult=(1, 2, 2),
               attention_resolutions=(2,), num_heads=2)
    sizes = []
    for m in net.modules():
        if isinstance(m, AttentionBlock):
            m.register_forward_hook(lambda mod, args, out: sizes.append(tuple(args[0].shape[2:])))
    net(torch.randn(1, 1, 8, 8), torch.rand(1), torch.tensor([3]))
    # down: 2 blocks at rate 2; middle: 1 at rate 4; up: num_res_blocks + 1 = 3 at rate 2
    assert sorted(sizes) == sorted([(4, 4)] * 5 + [(2, 2)])

    no_attention = UNet((1, 8, 8), 10, middle_attention=False, **TINY_UNET)
    assert not any(isinstance(m, AttentionBlock) for m in no_attention.modules())
    encoder = EncoderClassifier((1, 8, 8), 10, attention_resolutions=(1, 2), **TINY_ENCODER)
    assert sum(isinstance(m, AttentionBlock) for m in encoder.modules()) == 1 + 1 + 1  # level 0, level 1, middle


# ---- parameter counts ------------------------------------------------------------------------------


def resblock_params(ci: int, co: int, emb: int) -> int:
    """GroupNorm (2 per channel), 3x3 convs with bias, scale-shift Linear(emb, 2 co), 1x1 skip if ci != co."""
    return (2 * ci + (9 * ci * co + co) + (emb * 2 * co + 2 * co) + 2 * co + (9 * co * co + co)
            + (ci * co + co if ci != co else 0))


def test_resblock_parameter_count_matches_hand_count():
    assert count(ResBlock(8, 12, 16)) == resblock_params(8, 16, 12)
    assert count(ResBlock(16, 12)) == resblock_params(16, 16, 12)


@pytest.mark.parametrize("c", [8, 16])
def test_single_level_unet_parameter_count_matches_hand_count(c):
    k, e = 10, 4 * c
    expected = ((c * e + e) + (e * e + e)          # time MLP
                + (k + 1) * e                      # class table with the null class
                + (9 * c + c)                      # input conv (1 channel in)
                + resblock_params(c, c, e)         # down path
                + 2 * resblock_params(c, c, e)     # middle (no attention)
                + 2 * resblock_params(2 * c, c, e)  # up path, with skip concatenation
                + 2 * c + (9 * c + 1))             # output norm and conv
    net = UNet((1, 8, 8), k, model_channels=c, num_res_blocks=1, channel_mult=(1,), middle_attention=False)
    assert count(net) == expected


def test_parameter_count_grows_quadratically_with_model_channels():
    small, big = (count(UNet((1, 8, 8), 10, model_channels=m, channel_mult=(1, 2))) for m in (16, 32))
    assert 3.5 < big / small < 4.0  # weights ~ c^2, biases/norms ~ c
    small, big = (count(EncoderClassifier((1, 8, 8), 10, model_channels=m)) for m in (16, 32))
    assert 3.0 < big / small < 4.0


def test_mlp_parameter_count_matches_hand_count():
    d, k, h, n, te, ce = 2, 3, 32, 2, 16, 8
    block = 2 * h + 3 * (h * h + h)
    expected = ((d * h + h) + (te * h + h) + (h * h + h) + n * block + 2 * h  # body
                + (k + 1) * ce + (ce * h + h) + (h * d + d))                   # class table, projection, output
    assert count(MLPDenoiser(d, k, hidden_dim=h, num_layers=n, time_embed_dim=te, class_embed_dim=ce)) == expected
    assert count(LinearClassifier((1, 8, 8), 10)) == (64 + 1) * 10 + 10


# ---- input checks ----------------------------------------------------------------------------------


def test_wrong_input_shape_names_expected_and_got():
    unet = UNet((1, 8, 8), 10, **TINY_UNET)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\).*\(2, 1, 28, 28\)"):
        unet(torch.randn(2, 1, 28, 28), torch.rand(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\).*\(2, 3, 8, 8\)"):
        unet(torch.randn(2, 3, 8, 8), torch.rand(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, 2\).*\(4, 3\)"):
        MLPDenoiser(2, 2)(torch.randn(4, 3), torch.rand(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        EncoderClassifier((1, 8, 8), 10, **TINY_ENCODER)(torch.randn(2, 64))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        LinearClassifier(2, 2)(torch.randn(5))


def test_bad_time_and_labels_are_refused():
    net = MLPDenoiser(2, 3, hidden_dim=16, num_layers=1)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="out of range"):
        net(x, torch.rand(4), torch.tensor([0, 1, 4, 2]))  # 3 is the null class, 4 is not a class
    with pytest.raises(ValueError, match="out of range"):
        net(x, torch.rand(4), torch.tensor([0, -1, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        net(x, torch.rand(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        net(x, torch.rand(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="model_time"):
        net(x, torch.arange(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="needs the time"):
        net(x, None, torch.zeros(4, dtype=torch.long))
    assert net(x, 0.5, torch.zeros(4, dtype=torch.long)).shape == x.shape  # a scalar t is broadcast


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match=r"28x28 is not divisible by .* 8"):
        UNet((1, 28, 28), 10, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="not divisible"):
        EncoderClassifier((1, 8, 12), 10, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="channel_mult"):
        UNet((1, 8, 8), 10, channel_mult=())
    with pytest.raises(ValueError, match=r"downsample rates.*\(4,\)"):
        UNet((1, 8, 8), 10, channel_mult=(1, 2), attention_resolutions=(4,))
    with pytest.raises(ValueError, match="num_heads=3"):
        UNet((1, 8, 8), 10, model_channels=16, num_heads=3)
    with pytest.raises(ValueError, match="C, H, W"):
        UNet((64,), 10)
    with pytest.raises(ValueError, match="unknown pool"):
        EncoderClassifier((1, 8, 8), 10, pool="max")
    with pytest.raises(ValueError, match="num_classes >= 2"):
        LinearClassifier(2, 1)
