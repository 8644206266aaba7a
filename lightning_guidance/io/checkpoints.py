"""Read the suite's checkpoint files safely (``weights_only=True``): hyper-parameters, the recorded network spec and
the weights (EMA or raw). Rebuilding a LightningModule from them is the module's own job (``from_checkpoint``)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_path
from .instantiate import import_class_path as instantiate_class_path
from .instantiate import instantiate, is_spec


def read_checkpoint(path: str | Path, hint: str = "") -> dict[str, Any]:
    """The checkpoint at ``path``; a missing one names the shipped config that writes it (else ``hint``)."""
    path = Path(path)
    if not path.is_file():
        config = config_that_writes(path)
        extra = f"train it first with: python cli.py fit --config {config}" if config else hint
        raise FileNotFoundError(f"checkpoint not found: {path}{f' ({extra})' if extra else ''}")
    return check_checkpoint_file(path, _torch_load(path))


#: the configs of a checkout (the working directory's ``configs/`` is searched first)
CHECKOUT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def config_that_writes(path: str | Path) -> str | None:
    """The shipped config whose fit writes the checkpoint ``path``: its ``trainer.default_root_dir`` is the run
    folder of ``<run>/checkpoints/<name>.ckpt`` (e.g. ``runs/fractal/cfg/checkpoints/last.ckpt`` ->
    ``configs/fractal/cfg.yaml``). Searched in ``configs/`` of the working directory, then of the checkout. None
    when no config does."""
    import yaml

    path = Path(path)
    if path.parent.name != "checkpoints":
        return None
    run = os.path.normpath(path.parent.parent)
    folders = [f for f in (Path("configs"), CHECKOUT_CONFIGS) if f.is_dir()]
    for config in (c for folder in folders for c in sorted(folder.glob("*/*.yaml"))):
        try:
            data = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError):
            continue
        root = ((data or {}).get("trainer") or {}).get("default_root_dir") if isinstance(data, dict) else None
        if isinstance(root, str) and data.get("data") and os.path.normpath(root) == run:
            return str(config)
    return None


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every way a file fails to load is one message naming it
        raise ValueError(unreadable_checkpoint(path, err)) from err


def unreadable_checkpoint(path: Path, err: BaseException) -> str:
    """One line for a checkpoint file that does not load: empty, truncated, or not a checkpoint at all."""
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        what = "is empty (0 bytes)"
    elif isinstance(err, RuntimeError) and "zip archive" in str(err):
        what = f"is truncated or damaged ({size} bytes, not a whole zip archive)"
    else:
        what = f"is not a PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
    return (f"checkpoint {path} {what}: re-create it (re-run the fit that writes it, or resume with --ckpt_path "
            "last from an earlier checkpoint) or point to another file")


def check_checkpoint_file(path: Path, ckpt) -> dict[str, Any]:
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"checkpoint {path} holds no state_dict: it is not a checkpoint written by this suite's fit")
    return ckpt


def checkpoint_class_path(ckpt: dict) -> str | None:
    """The LightningModule class a checkpoint was written by, as the command line recorded it (None if unknown)."""
    return (ckpt.get("hyper_parameters") or {}).get("_class_path")


def check_checkpoint_class(ckpt: dict, path: Path, cls: type | str, role: str = "checkpoint") -> None:
    """Refuse, in one line, a checkpoint written by a module class other than ``cls`` (a class or its path; or a
    subclass of it). ``role``: what the file was given as (``checkpoint``, ``the guidance classifier``...)."""
    found = checkpoint_class_path(ckpt)
    if not found:
        return
    try:
        expected_cls = instantiate_class_path(cls) if isinstance(cls, str) else cls
        found_cls = instantiate_class_path(found)
    except ImportError:
        found_cls = None
    if found_cls is None or (isinstance(found_cls, type) and issubclass(found_cls, expected_cls)):
        return  # a class path that has since moved cannot be judged here: the module's own arguments will tell
    expected = f"{expected_cls.__module__}.{expected_cls.__qualname__}"
    raise ValueError(f"{role} {path} was written by {found}, expected a {expected} checkpoint: "
                     "point to a checkpoint of the right kind")


def checkpoint_hparams(ckpt: dict) -> dict[str, Any]:
    """The module's recorded constructor arguments (without LightningCLI's bookkeeping keys)."""
    hp = dict(ckpt.get("hyper_parameters") or {})
    for key in ("_instantiator", "_class_path"):
        hp.pop(key, None)
    return hp


def build_net(ckpt: dict, path: Path, net: nn.Module | None = None, key: str = "net") -> nn.Module:
    """The network a checkpoint was trained with: given explicitly, or rebuilt from its recorded class-path spec."""
    if net is not None:
        return net
    spec = (ckpt.get("hyper_parameters") or {}).get(key)
    if not is_spec(spec) or spec.get("init_args") is None:
        raise ValueError(f"{path} does not record how to build its {key} (it was trained outside the CLI); "
                         f"pass `{key}:` with the same architecture")
    return instantiate(spec)


def load_module_weights(module: nn.Module, ckpt: dict, path: Path, use_ema: bool = True,
                        prefix: str = "") -> nn.Module:
    """Load ``state_dict`` (EMA weights when the EMA callback was used) or the raw weights (``use_ema=False``);
    ``prefix`` selects the entries of one submodule (``"net."``) and strips it."""
    state = ckpt["state_dict"] if use_ema or "current_model_state" not in ckpt else ckpt["current_model_state"]
    if prefix:
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the network: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return module


def write_net_checkpoint(path: str | Path, net: nn.Module, hparams: dict, **extra) -> Path:
    """A checkpoint holding only ``net``'s weights (as ``net.*`` of ``state_dict``) and the ``hparams`` of the module
    it belongs to, written atomically: what :func:`load_module_weights` (``prefix="net."``) and a module's
    ``from_checkpoint`` read back. ``extra`` entries are stored beside them."""
    state = {f"net.{k}": v.detach().cpu().clone() for k, v in net.state_dict().items()}
    payload = {"state_dict": state, "hyper_parameters": copy.deepcopy(hparams), **extra}
    with atomic_path(path, suffix=".ckpt") as tmp:
        torch.save(payload, tmp)
    return Path(path)
