"""A clean timm or torchvision classifier on local disk, made into a smooth off-the-shelf guide.

EluCD (Ma et al.; docs/math.md §3): a classifier trained on clean images guides sampling with no training.
This adapter does the network side of it: load local weights (never download), map the suite's
``[-1, 1]`` images to the classifier's input, optionally replace every ReLU by ``Softplus(beta)``
(design 2: beta = 3 for DDPM, 5 for EDM in the reference), and return logits over the suite's classes.
The guidance term (denoised input, temperatures, schedule) lives in ``guidance/``.

Input mapping, in this order: grayscale -> 3 channels by repetition (when the model wants 3),
``[-1, 1] -> [0, 1]``, resize of the *whole* image to the model's input size (antialiased, the model's
interpolation; no resize-then-center-crop, because generated images are already framed squares), then
``(x - mean) / std``. Mean, std, size and interpolation come from timm's ``resolve_model_data_config``, or
from the torchvision weights enum's ``transforms()`` (``crop_size``, ``mean``, ``std``,
``interpolation``); a torchvision architecture without a weights enum falls back to ImageNet statistics,
224 px, bilinear. Each can be overridden.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activation_swap import SwapReport, swap_relu_for_softplus

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("timm", "torchvision")
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def map_images_to_classifier(x: Tensor, size: tuple[int, int], mean: Tensor, std: Tensor,
                             interpolation: str = "bilinear", in_channels: int = 3) -> Tensor:
    """Suite images ``x`` (B, 1 or C, h, w) in [-1, 1] -> classifier input (B, C, H, W), normalised."""
    if x.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        if x.shape[1] == 1:
            x = x.expand(-1, in_channels, -1, -1)
        else:
            raise ValueError(f"images have {x.shape[1]} channels but the classifier takes {in_channels} "
                             "(only grayscale is repeated)")
    x = (x + 1) / 2
    if tuple(x.shape[-2:]) != tuple(size):
        antialias = interpolation != "nearest"  # PIL-like resizing, as the classifiers were trained with
        x = F.interpolate(x, size=tuple(size), mode=interpolation, antialias=antialias,
                          align_corners=None if interpolation == "nearest" else False)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _weights_not_found(path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"classifier weights not found: {path} (download them on a machine with internet "
                             "access and copy the file here; weights are never downloaded at run time)")


def check_head(net: nn.Module, state: Mapping[str, Tensor], path: Path, source: str, arch: str) -> None:
    """A weights file whose class layer has another number of outputs than the built model is refused in one line
    naming the ``model_kwargs`` that builds the right head (the rest of a mismatch is left to the strict load)."""
    own = net.state_dict()
    for key, value in state.items():
        mine = own.get(key)
        if mine is None or not hasattr(value, "shape") or tuple(value.shape) == tuple(mine.shape):
            continue
        if value.ndim in (1, 2) and mine.ndim == value.ndim and tuple(value.shape[1:]) == tuple(mine.shape[1:]):
            raise ValueError(f"{path} has a class layer of {value.shape[0]} outputs ({key}: {tuple(value.shape)}) but "
                             f"the {source} {arch} model was built with {mine.shape[0]}: add model_kwargs: "
                             f"{{num_classes: {value.shape[0]}}} (and class_map: to pick the suite's classes)")


def _build_timm(arch: str, weights_path: Path | None, model_kwargs: dict) -> tuple[nn.Module, dict]:
    import timm
    import timm.data

    # pretrained=False never touches the network; the local file is loaded strictly afterwards rather than
    # through pretrained_cfg_overlay=dict(file=...), which silently drops the classifier head when
    # num_classes differs from the registry's — a random head would make a useless guide.
    net = timm.create_model(arch, pretrained=False, **model_kwargs)
    if weights_path is not None:
        check_head(net, timm.models.load_state_dict(str(weights_path)), weights_path, "timm", arch)
        timm.models.load_checkpoint(net, str(weights_path), strict=True)  # .pth/.bin/.safetensors
    cfg = timm.data.resolve_model_data_config(net)
    in_channels, height, width = cfg["input_size"]
    return net, dict(size=(height, width), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                     interpolation=cfg["interpolation"], in_channels=in_channels)


def _torchvision_data_config(arch: str, torchvision_weights: str) -> dict:
    import torchvision

    data = dict(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear", in_channels=3)
    try:
        weights_enum = torchvision.models.get_model_weights(arch)
    except ValueError:  # no weights enum for this architecture: ImageNet defaults
        return data
    if torchvision_weights not in weights_enum.__members__:
        raise ValueError(f"unknown torchvision weights {torchvision_weights!r} for {arch} "
                         f"(choose one of {', '.join(weights_enum.__members__)})")
    transform = weights_enum[torchvision_weights].transforms()  # builds the preset only; no download
    crop = list(transform.crop_size)
    data.update(size=(crop[0], crop[-1]), mean=tuple(transform.mean), std=tuple(transform.std),
                interpolation=transform.interpolation.value)
    return data


def _build_torchvision(arch: str, weights_path: Path | None, model_kwargs: dict,
                       torchvision_weights: str) -> tuple[nn.Module, dict]:
    import torchvision

    data = _torchvision_data_config(arch, torchvision_weights)
    net = torchvision.models.get_model(arch, weights=None, **model_kwargs)  # weights=None: no download
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):  # common training-checkpoint wrappers
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        check_head(net, state, weights_path, "torchvision", arch)
        net.load_state_dict(state, strict=True)
    return net, data


class OffTheShelfClassifier(nn.Module):
    """``forward(x, t=None) -> logits (B, num_classes)`` of a clean classifier on suite images in [-1, 1].

    ``t`` is ignored (a clean classifier) and is there so that the call matches the suite's
    time-dependent classifiers. Parameters are frozen and the network stays in eval mode (BatchNorm uses
    its running statistics even when a parent module is put in train mode); gradients with respect to the
    input flow.

    Args:
        source: ``"timm"`` or ``"torchvision"``.
        arch: model name (``"resnet50"``; timm accepts a pretrained tag, ``"resnet50.a1_in1k"``, whose
            data config is then used).
        weights_path: local weight file (a state dict; timm also reads ``.safetensors`` and its training
            checkpoints). ``None`` only together with ``allow_random_init=True`` (tests, benchmarks).
        softplus_beta: replace every ReLU by ``Softplus(beta)``; ``None`` keeps ReLU.
        class_map: suite class id -> classifier output index, as a list (position = suite id) or a dict
            with keys ``0..K-1``. Default: the classifier's own outputs.
        input_size, interpolation, mean, std: override the model's data config.
        torchvision_weights: which member of the torchvision weights enum describes the input
            (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ...). Only its preset is read.
        model_kwargs: passed to ``timm.create_model`` / ``torchvision.models.get_model``.
        frozen: freeze parameters and keep the network in eval mode.
        strict_swap: raise if a ReLU could not be replaced (see :func:`swap_relu_for_softplus`).
    """

    def __init__(self, source: str, arch: str, weights_path: str | os.PathLike | None = None, *,
                 allow_random_init: bool = False, softplus_beta: float | None = None,
                 class_map: Sequence[int] | Mapping[int, int] | None = None,
                 input_size: int | Sequence[int] | None = None, interpolation: str | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 torchvision_weights: str = "DEFAULT", model_kwargs: dict | None = None,
                 frozen: bool = True, strict_swap: bool = True):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"unknown classifier source {source!r} (choose one of {', '.join(SOURCES)})")
        if weights_path is None:
            if not allow_random_init:
                raise ValueError(f"weights_path is required for the {source} {arch} classifier "
                                 "(allow_random_init=True is for tests and benchmarks only)")
            path = None
        else:
            path = Path(weights_path).expanduser()
            if not path.is_file():
                raise _weights_not_found(path)
        class_indices = self._class_map_indices(class_map)
        model_kwargs = dict(model_kwargs or {})
        if source == "timm":
            net, data = _build_timm(arch, path, model_kwargs)
        else:
            net, data = _build_torchvision(arch, path, model_kwargs, torchvision_weights)

        if input_size is not None:
            data["size"] = (int(input_size),) * 2 if isinstance(input_size, int) else tuple(map(int, input_size))
        if interpolation is not None:
            data["interpolation"] = interpolation
        if data["interpolation"] not in _INTERPOLATIONS:
            raise ValueError(f"unsupported interpolation {data['interpolation']!r} "
                             f"(choose one of {', '.join(_INTERPOLATIONS)})")
        mean = tuple(mean) if mean is not None else data["mean"]
        std = tuple(std) if std is not None else data["std"]
        if not len(mean) == len(std) == data["in_channels"]:
            raise ValueError(f"mean/std need {data['in_channels']} entries (got {len(mean)} and {len(std)})")

        self.source, self.arch, self.weights_path = source, arch, None if path is None else str(path)
        self.model_kwargs = model_kwargs
        self.input_size: tuple[int, int] = data["size"]
        self.interpolation: str = data["interpolation"]
        self.in_channels: int = data["in_channels"]
        self.frozen = frozen
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

        net.eval()
        example = torch.zeros(1, self.in_channels, *self.input_size)
        with torch.no_grad():
            out = net(example)
        if out.ndim != 2:
            raise ValueError(f"{source} {arch} returns shape {tuple(out.shape)} for one image; expected logits (1, K)")
        self.model_num_outputs = int(out.shape[1])

        net, report = swap_relu_for_softplus(net, softplus_beta, example_input=example)
        if strict_swap and not report.complete:
            raise RuntimeError(f"{report.problem()}; pass strict_swap=False to accept a partial swap")
        self.net = net
        self.swap_report: SwapReport = report

        index = None
        if class_indices is not None:
            bad = [i for i in class_indices if not 0 <= i < self.model_num_outputs]
            if bad:
                raise ValueError(f"class_map indices {bad} are outside the classifier's "
                                 f"{self.model_num_outputs} outputs")
            index = torch.tensor(class_indices, dtype=torch.long)
        self.register_buffer("class_index", index, persistent=False)
        self.num_classes = self.model_num_outputs if index is None else int(index.numel())

        if frozen:
            self.net.requires_grad_(False)
            self.net.eval()

    @staticmethod
    def _class_map_indices(class_map) -> list[int] | None:
        """Classifier output index of each suite class id, in suite-id order."""
        if class_map is None:
            return None
        if isinstance(class_map, Mapping):
            keys = sorted(int(k) for k in class_map)
            if keys != list(range(len(keys))):
                raise ValueError(f"class_map keys must be the suite's class ids 0..{len(keys) - 1} (got {keys})")
            indices = [int(class_map[k]) for k in sorted(class_map, key=int)]
        else:
            indices = [int(i) for i in class_map]
        if not indices:
            raise ValueError("class_map is empty")
        return indices

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.net.eval()  # running statistics of a frozen guide must never move
        return self

    def map_input(self, x: Tensor) -> Tensor:
        """Suite images in [-1, 1] -> the network's normalised input (see module docstring)."""
        return map_images_to_classifier(x, self.input_size, self.mean.to(x.dtype), self.std.to(x.dtype),
                                        self.interpolation, self.in_channels)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        logits = self.net(self.map_input(x))
        if self.class_index is not None:
            logits = logits.index_select(1, self.class_index)
        return logits

    def extra_repr(self) -> str:
        beta = self.swap_report.beta
        mean, std = [round(v, 6) for v in self.mean.tolist()], [round(v, 6) for v in self.std.tolist()]
        return (f"source={self.source}, arch={self.arch}, num_classes={self.num_classes}, "
                f"input_size={self.input_size}, interpolation={self.interpolation}, mean={mean}, std={std}, "
                f"model_kwargs={self.model_kwargs}, softplus_beta={'ReLU kept' if beta is None else beta}"
                + (", weights=random init" if self.weights_path is None else ""))
