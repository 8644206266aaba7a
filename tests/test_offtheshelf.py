"""Off-the-shelf classifier adapter and the ReLU -> Softplus swap (docs/math.md §3, EluCD design 2).

No network here: models are randomly initialised and weight files are written by the tests themselves.
The independent check that no ReLU runs is an aten-level dispatch recorder (below the functions the swap
rewrites), plus a walk over the module tree.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import timm.data
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import InterpolationMode

from lightning_guidance.nets.activation_swap import swap_relu_for_softplus
from lightning_guidance.nets.offtheshelf import OffTheShelfClassifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AtenOps(TorchDispatchMode):
    """Counts every aten op executed (by packet name, e.g. 'aten.relu_')."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    def relu(self) -> int:
        return self.counts.get("aten.relu", 0) + self.counts.get("aten.relu_", 0)

    def softplus(self) -> int:
        return self.counts.get("aten.softplus", 0)


def aten_ops(fn, *args) -> AtenOps:
    with torch.no_grad(), AtenOps() as ops:
        fn(*args)
    return ops


def raw_model(source: str, arch: str) -> nn.Module:
    net = timm.create_model(arch) if source == "timm" else torchvision.models.get_model(arch, weights=None)
    return net.eval()


def grayscale_batch(size: int = 8, batch: int = 2, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(batch, 1, size, size, dtype=dtype) * 2 - 1).clamp(-1, 1)


# ---------------------------------------------------------------- the swap on real architectures


@pytest.mark.parametrize("source, arch", [("torchvision", "resnet50"), ("timm", "resnet26")])
def test_no_relu_runs_after_swap(source, arch):
    x = torch.randn(2, 3, 32, 32)
    relus_before = aten_ops(raw_model(source, arch), x).relu()
    assert relus_before > 0

    guide = OffTheShelfClassifier(source, arch, allow_random_init=True, softplus_beta=3.0, input_size=32)
    assert not any(isinstance(m, nn.ReLU) for m in guide.modules())
    softplus = [m for m in guide.modules() if isinstance(m, nn.Softplus)]
    assert softplus and all(m.beta == 3.0 for m in softplus)

    ops = aten_ops(guide, x.mean(1, keepdim=True).clamp(-1, 1))
    assert ops.relu() == 0
    # every former relu call (a reused module counts once per use) is now a softplus call
    assert ops.softplus() == relus_before
    assert guide.swap_report.complete

    if arch == "resnet50":
        # torchvision's Bottleneck calls its one self.relu three times: one registered name, three uses
        block = guide.net.layer1[0]
        assert "layer1.0.relu" in guide.swap_report.swapped_modules and isinstance(block.relu, nn.Softplus)
        ops_block = aten_ops(block, torch.randn(1, 64, 8, 8))
        assert (ops_block.relu(), ops_block.softplus()) == (0, 3)


# ---------------------------------------------------------------- functional relu and odd containers


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        F.relu(h, inplace=True)  # result unused: the caller relies on the in-place mutation
        return h + x.relu() + torch.relu_(x.clone())


class Functional(nn.Module):
    """ReLU as functions, as a shared module, in Sequential/ModuleList/ModuleDict, plus a ReLU6."""

    def __init__(self):
        super().__init__()
        self.shared = nn.ReLU()
        self.seq = nn.Sequential(nn.Linear(4, 4), self.shared)
        self.blocks = nn.ModuleList([Inner()])
        self.heads = nn.ModuleDict({"a": nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))})
        self.clip = nn.ReLU6()

    def forward(self, x):
        h = self.shared(F.relu(self.seq(x)))
        h = self.blocks[0](h)
        return self.clip(self.heads["a"](torch.relu(h)))


def functional_reference(model: Functional, x: torch.Tensor, beta: float) -> torch.Tensor:
    """Functional.forward written out by hand with softplus in place of every relu."""
    sp = lambda v: torch.log1p(torch.exp(beta * v)) / beta  # noqa: E731
    h = sp(sp(sp(model.seq[0](x))))
    inner = model.blocks[0]
    h = sp(inner.lin(h)) + sp(h) + sp(h)
    return torch.clamp(sp(model.heads["a"][0](sp(h))), 0, 6)


def test_functional_relu_swapped_through_fx():
    torch.manual_seed(1)
    model = Functional().double()
    original = copy.deepcopy(model)
    x = torch.randn(5, 4, dtype=torch.float64)
    relus_before = aten_ops(original, x).relu()

    smooth, report = swap_relu_for_softplus(model, 2.0, strict=True, example_input=x)
    assert report.traced and report.verified and report.complete
    ops = aten_ops(smooth, x)
    assert ops.relu() == 0 and ops.softplus() == relus_before == 8
    assert ops.counts.get("aten.hardtanh", 0) == 1  # ReLU6 is not a ReLU: left, and reported
    assert report.other_activations == ("clip: ReLU6",)
    assert set(report.swapped_modules) == {"shared", "seq.1", "heads.a.1"}
    assert sorted(report.swapped_calls) == sorted(["<root>: F.relu", "<root>: torch.relu", "blocks.0: F.relu",
                                                   "blocks.0: Tensor.relu", "blocks.0: torch.relu_"])
    with torch.no_grad():
        torch.testing.assert_close(smooth(x), functional_reference(original, x, 2.0), rtol=1e-12, atol=1e-12)
    # the GraphModule shares the parameters and keeps the state-dict keys
    assert smooth.state_dict().keys() == original.state_dict().keys()
    assert smooth.get_submodule("seq.0").weight is model.seq[0].weight


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent branch: torch.fx cannot trace this
            x = -x
        return F.relu(self.act(self.lin(x))).relu() + torch.relu_(x.clone())


def test_untraceable_functional_relu_reported_not_swapped():
    x = torch.randn(3, 4)
    model, report = swap_relu_for_softplus(Untraceable(), 3.0, example_input=x)
    assert not report.traced and report.trace_error
    assert report.swapped_modules == ("act",)  # modules are swapped without tracing
    assert report.not_swapped == ("<root>: F.relu", "<root>: Tensor.relu", "<root>: torch.relu_")
    assert not report.complete and "F.relu" in report.problem()
    ops = aten_ops(model, x)  # the report agrees with what really runs
    assert (ops.relu(), ops.softplus()) == (3, 1)

    with pytest.raises(RuntimeError, match="F.relu"):
        swap_relu_for_softplus(Untraceable(), 3.0, strict=True, example_input=x)
    # without an example input nothing can be checked: incomplete, and strict says why
    _, blind = swap_relu_for_softplus(Untraceable(), 3.0)
    assert not blind.complete
    with pytest.raises(RuntimeError, match="could not trace"):
        swap_relu_for_softplus(Untraceable(), 3.0, strict=True)


def test_beta_none_or_inf_keeps_relu():
    x = torch.randn(3, 4)
    for beta in (None, float("inf")):
        model = Functional()
        before = aten_ops(model, x).relu()
        same, report = swap_relu_for_softplus(model, beta, strict=True)
        assert same is model and report.beta is None and report.complete
        assert aten_ops(same, x).relu() == before
    with pytest.raises(ValueError, match="positive"):
        swap_relu_for_softplus(Functional(), 0.0)


# ---------------------------------------------------------------- the Softplus itself


def test_softplus_matches_hand_formula_and_relu_bound():
    beta = 3.0
    net, _ = swap_relu_for_softplus(nn.Sequential(nn.Linear(1, 1), nn.ReLU()), beta)
    act = net[1]
    x = torch.linspace(-40, 40, 2001, dtype=torch.float64)
    expected = np.logaddexp(0.0, beta * x.numpy()) / beta  # log(1 + exp(beta x)) / beta, stably
    # torch switches to the identity above beta x = 20, where the exact value differs by < exp(-20)/beta
    np.testing.assert_allclose(act(x).numpy(), expected, rtol=0, atol=1e-9)
    gap = act(x) - torch.relu(x)
    assert gap.min() >= 0 and gap.max() <= np.log(2) / beta + 1e-15


def test_swapped_net_converges_to_relu_net_as_beta_grows():
    net = torchvision.models.resnet18(num_classes=10).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        reference = net(x)
    gaps = []
    for beta in (1.0, 10.0, 100.0, 1e3):
        smooth, _ = swap_relu_for_softplus(copy.deepcopy(net), beta, strict=True)
        with torch.no_grad():
            gaps.append((smooth(x) - reference).abs().max().item())
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 1e-3 * reference.abs().max().item(), gaps


# ---------------------------------------------------------------- loading local weights


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A randomly initialised torchvision resnet18 with 12 classes, saved as a state dict."""
    original = torchvision.models.resnet18(num_classes=12).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(original.state_dict(), path)
    return path, original


TV_KWARGS = dict(input_size=32, model_kwargs={"num_classes": 12})


@pytest.fixture(scope="module")
def resnet18_guide(resnet18_file):
    return OffTheShelfClassifier("torchvision", "resnet18", resnet18_file[0], **TV_KWARGS)


def test_torchvision_local_weights_reproduce_the_original(resnet18_file, resnet18_guide):
    original, guide = resnet18_file[1], resnet18_guide
    x = grayscale_batch()
    # the mapping done by hand with torchvision's own transforms and ImageNet statistics
    by_hand = TF.normalize(TF.resize(TF.grayscale_to_rgb((x + 1) / 2), [32, 32], InterpolationMode.BILINEAR,
                                     antialias=True), IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(guide.map_input(x), by_hand, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(guide(x), original(by_hand), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(guide(x, torch.rand(2)), guide(x))  # t is ignored
    assert guide.num_classes == 12 and guide.swap_report.beta is None


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_local_weights_reproduce_the_original(tmp_path, suffix):
    original = timm.create_model("resnet18", num_classes=7).eval()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        import safetensors.torch
        safetensors.torch.save_file(original.state_dict(), str(path))
    else:
        torch.save(original.state_dict(), path)
    guide = OffTheShelfClassifier("timm", "resnet18", path, input_size=32, model_kwargs={"num_classes": 7})
    x = grayscale_batch()
    # timm's own eval transform (crop_pct=1: whole image) applied image by image
    transform = timm.data.create_transform(input_size=(3, 32, 32), interpolation="bicubic", mean=IMAGENET_MEAN,
                                           std=IMAGENET_STD, crop_pct=1.0)
    by_hand = torch.stack([transform(((xi + 1) / 2).expand(3, -1, -1).contiguous()) for xi in x])
    torch.testing.assert_close(guide.map_input(x), by_hand, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(guide(x), original(by_hand), rtol=1e-5, atol=1e-5)


def test_timm_head_mismatch_is_an_error_not_a_silent_random_head(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=7).state_dict(), path)
    with pytest.raises(ValueError, match=r"fc.weight: \(7, 512\).* built with 1000: add model_kwargs: "
                                         r"\{num_classes: 7\}"):
        OffTheShelfClassifier("timm", "resnet18", path, input_size=32)  # 1000 classes expected


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_missing_weights_file_names_the_path(tmp_path, source):
    missing = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(FileNotFoundError, match=r"classifier weights not found: .*nowhere/resnet50\.pth"):
        OffTheShelfClassifier(source, "resnet50", missing)
    with pytest.raises(ValueError, match="allow_random_init"):
        OffTheShelfClassifier(source, "resnet50")


def test_default_input_config_comes_from_the_libraries():
    tv = OffTheShelfClassifier("torchvision", "resnet18", allow_random_init=True)
    preset = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert tv.input_size == (224, 224) and tv.interpolation == "bilinear"
    torch.testing.assert_close(tv.mean, torch.tensor(preset.mean))
    torch.testing.assert_close(tv.std, torch.tensor(preset.std))
    assert tv.map_input(grayscale_batch()).shape == (2, 3, 224, 224)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):  # a typo must not fall back to defaults silently
        OffTheShelfClassifier("torchvision", "resnet18", allow_random_init=True, torchvision_weights="V1")
    tm = OffTheShelfClassifier("timm", "resnet18", allow_random_init=True, input_size=(40, 48))
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("resnet18"))
    assert tm.interpolation == cfg["interpolation"] == "bicubic" and tm.input_size == (40, 48)
    torch.testing.assert_close(tm.mean, torch.tensor(cfg["mean"], dtype=torch.float32))


# ---------------------------------------------------------------- class map, freezing, gradients


def test_class_map_selects_the_right_columns(resnet18_file, resnet18_guide):
    path = resnet18_file[0]
    by_list = OffTheShelfClassifier("torchvision", "resnet18", path, class_map=[5, 2, 11], **TV_KWARGS)
    by_dict = OffTheShelfClassifier("torchvision", "resnet18", path, class_map={1: 2, 0: 5, 2: 11}, **TV_KWARGS)
    x = grayscale_batch()
    with torch.no_grad():
        logits = resnet18_guide(x)
        torch.testing.assert_close(by_list(x), logits[:, [5, 2, 11]])
        torch.testing.assert_close(by_dict(x), logits[:, [5, 2, 11]])
    assert (resnet18_guide.num_classes, by_list.num_classes, by_dict.num_classes) == (12, 3, 3)
    with pytest.raises(ValueError, match=r"\[12\]"):
        OffTheShelfClassifier("torchvision", "resnet18", path, class_map=[0, 12], **TV_KWARGS)
    with pytest.raises(ValueError, match="keys"):
        OffTheShelfClassifier("torchvision", "resnet18", path, class_map={0: 1, 2: 3}, **TV_KWARGS)


def test_frozen_eval_and_input_gradient_matches_finite_differences():
    guide = OffTheShelfClassifier("torchvision", "resnet18", allow_random_init=True, softplus_beta=3.0,
                                  input_size=16, class_map=[0, 3]).double()
    assert all(not p.requires_grad for p in guide.parameters())
    stats = guide.net.bn1.running_mean.clone()
    guide.train()  # a parent in train mode must not put the frozen guide's BatchNorm in train mode
    assert not guide.net.training

    def log_p(v):
        return torch.log_softmax(guide(v), dim=1)[:, 1].sum()

    x = grayscale_batch(size=6, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(log_p(x), x)
    assert all(p.grad is None for p in guide.parameters())
    h = 1e-5
    with torch.no_grad():
        for _ in range(3):  # central differences along random directions
            v = torch.randn_like(x)
            numeric = (log_p(x + h * v) - log_p(x - h * v)) / (2 * h)
            torch.testing.assert_close(numeric, (grad * v).sum(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(guide.net.bn1.running_mean, stats, rtol=0, atol=0)
