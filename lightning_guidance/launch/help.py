"""Readable ``--help`` for the suite's classes.

jsonargparse lists every known subclass of an argument's type: for a ``net: nn.Module`` that is every ``torch.nn``
layer (``--model.help SamplingModule`` ran to 1,497 lines). :func:`short_class_lists` keeps the suite's own public
classes (and Lightning's callbacks and loggers) and says how many others it left out. :func:`import_suite_classes`
imports the suite's modules, callbacks and data modules, so that ``--help`` names them and a short name
(``--model.help SamplingModule``) resolves.
"""

from __future__ import annotations

import importlib
import pkgutil

#: the packages whose classes a config names by class path
SUITE_PACKAGES = ("modules", "callbacks", "data", "nets", "metrics", "guidance")
#: Lightning's classes worth listing beside the suite's (a logger, a callback)
LIGHTNING_SHOWN = ("lightning.pytorch.loggers.", "lightning.pytorch.callbacks.")


def import_suite_classes() -> None:
    """Import every module of the suite's configurable packages (about a second: only for help and suggestions)."""
    for name in SUITE_PACKAGES:
        package = importlib.import_module(f"lightning_guidance.{name}")
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")


def is_public_suite_class(path: str) -> bool:
    """A class of the suite a user names in a config: no ``_`` segment, and exported by its package when the package
    lists its exports (``lightning_guidance.nets.UNet``, not the UNet's inner blocks)."""
    parts = path.split(".")
    if parts[0] != "lightning_guidance" or any(p.startswith("_") for p in parts):
        return False
    try:
        package = importlib.import_module(".".join(parts[:2]))
    except ImportError:
        return False
    exported = getattr(package, "__all__", None)
    return exported is None or parts[-1] in exported


def _is_module_or_metric(path: str) -> bool:
    from lightning.pytorch import LightningModule
    from torchmetrics import Metric

    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    return isinstance(cls, type) and issubclass(cls, (LightningModule, Metric))


def shorten(extra: str) -> str:
    """``, known subclasses: a, b, ...`` cut to the suite's public classes and Lightning's callbacks and loggers."""
    head, found, tail = extra.partition(", known subclasses: ")
    if not found:
        return extra
    listed = [p.strip() for p in tail.split(",") if p.strip()]
    shown = [p for p in listed if is_public_suite_class(p) or p.startswith(LIGHTNING_SHOWN)]
    if "torch.nn.Module" in listed:  # a network argument: not the suite's LightningModules and metrics
        shown = [p for p in shown if not _is_module_or_metric(p)]
    rest = len(listed) - len(shown)
    examples = f", e.g. {', '.join(shown)}" if shown else ""
    return f"{head}{examples}{f'; or any class path ({rest} others known)' if rest else ''}"


def short_class_lists() -> None:
    """Help lists the suite's classes, not every subclass of ``nn.Module`` (jsonargparse's ``extra_help`` of an
    argument typed by a class, wrapped; set only when help is printed, the process then exits)."""
    from jsonargparse._typehints import ActionTypeHint

    original = ActionTypeHint.extra_help
    if getattr(original, "shortened", False):
        return

    def extra_help(self) -> str:
        return shorten(original(self))

    extra_help.shortened = True
    ActionTypeHint.extra_help = extra_help
