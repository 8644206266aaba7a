"""Rebuild an object from a ``{"class_path": ..., "init_args": {...}}`` spec (the form LightningCLI records)."""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Iterable
from typing import Any


def nearest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate a mistyped or renamed ``name`` most likely meant: difflib's similarity, plus 0.1 for each of
    up to 5 leading characters in common (``clip_denoised`` -> ``clip_x0``, not ``noise_seed``); None when no
    candidate is similar (ratio < 0.5 and fewer than 4 leading characters in common)."""
    best, best_score = None, 0.0
    for candidate in sorted(set(candidates)):
        ratio = difflib.SequenceMatcher(None, name, candidate).ratio()
        prefix = len(os.path.commonprefix([name, candidate]))
        if ratio < 0.5 and prefix < 4:
            continue
        score = ratio + 0.1 * min(prefix, 5)
        if score > best_score:
            best, best_score = candidate, score
    return best


def is_spec(value: Any) -> bool:
    return isinstance(value, dict) and ("class_path" in value or "_class_path" in value)


def import_class_path(class_path: str):
    """The class named by a dotted path; ImportError naming the path if it does not exist."""
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ImportError(f"cannot import {class_path!r} named in the config/checkpoint: {err}") from err


def instantiate(spec: Any) -> Any:
    """Recursively instantiate nested class-path specs; plain values are returned unchanged."""
    if isinstance(spec, list):
        return [instantiate(v) for v in spec]
    if not is_spec(spec):
        return spec
    spec = dict(spec)
    class_path = spec.pop("class_path", None) or spec.pop("_class_path")
    kwargs = dict(spec.pop("init_args", {}) or {})
    kwargs.update(spec.pop("dict_kwargs", {}) or {})
    kwargs.update(spec)  # the flattened form Lightning stores in hparams
    cls = import_class_path(class_path)
    return cls(**{k: instantiate(v) for k, v in kwargs.items()})
