"""Before a resume: the checkpoint must be of the module class and architecture this run configures.

LightningCLI would load the checkpoint's hyper-parameters over the command line's (an override silently lost, or a
classifier trained inside a CFG run). Here a checkpoint that disagrees with the run's config is refused in one line
naming the file, the expected and found class, and every hyper-parameter or weight that differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io.checkpoints import checkpoint_class_path, read_checkpoint
from ..io.instantiate import import_class_path


def resolve_ckpt_path(ckpt_path: str | None, default_root_dir: str) -> Path | None:
    """The file ``--ckpt_path`` names (``last``: the newest ``last*.ckpt`` in ``<root>/checkpoints``), or None."""
    if not ckpt_path or ckpt_path in ("best", "hpc", "registry"):
        return None
    if ckpt_path == "last":
        found = sorted(Path(default_root_dir, "checkpoints").glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None
    return Path(ckpt_path)


def _plain(value: Any) -> Any:
    """A JSON-comparable form (tuples as lists, namespaces as dicts)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def _differences(found: Any, expected: Any, where: str) -> list[str]:
    if isinstance(found, dict) and isinstance(expected, dict):
        out = []
        for k in sorted(set(found) & set(expected)):
            if k in ("_instantiator", "_class_path", "dict_kwargs"):
                continue
            out += _differences(found[k], expected[k], f"{where}.{k}" if where else k)
        return out
    if isinstance(found, list) and isinstance(expected, list) and len(found) == len(expected):
        return [d for i, (a, b) in enumerate(zip(found, expected)) for d in _differences(a, b, f"{where}[{i}]")]
    return [] if found == expected else [f"{where}: checkpoint {json.dumps(found)}, this run {json.dumps(expected)}"]


def _same_class(found: str, expected: str) -> bool:
    if found == expected:
        return True
    try:
        a, b = import_class_path(found), import_class_path(expected)
    except ImportError:
        return False
    return isinstance(a, type) and isinstance(b, type) and issubclass(b, a)


def check_resume_config(path: Path, model_config: Any) -> dict:
    """Refuse a checkpoint whose module class or hyper-parameters differ from ``model_config`` (the run's
    ``model`` namespace: class_path + init_args). Returns the loaded checkpoint."""
    ckpt = read_checkpoint(path)
    model = _plain(model_config)
    expected = model.get("class_path")
    found = checkpoint_class_path(ckpt)
    if expected and found and not _same_class(found, expected):
        raise ValueError(f"cannot resume from {path}: it is a checkpoint of {found}, this run trains {expected}; "
                         "give --ckpt_path a checkpoint of the same model (or none to start fresh)")
    hp = _plain({k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")})
    diffs = _differences(hp, model.get("init_args") or {}, "model.init_args")
    if diffs:
        raise ValueError(f"cannot resume from {path}: the command line or config contradicts its hyper-parameters "
                         f"({'; '.join(diffs)}); use the checkpoint's values, or start a fresh run in another "
                         "--trainer.default_root_dir")
    return ckpt


def check_resume_weights(path: Path, ckpt: dict, module) -> None:
    """Refuse a checkpoint whose weights do not fit the module (missing, unexpected or reshaped tensors)."""
    own = module.state_dict()
    theirs = ckpt.get("state_dict") or {}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    reshaped = sorted(k for k in set(own) & set(theirs)
                      if hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(own[k].shape))
    if missing or unexpected or reshaped:
        parts = [f"{name} {keys[:4]}{' ...' if len(keys) > 4 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped)) if keys]
        raise ValueError(f"cannot resume from {path}: its weights do not fit {type(module).__name__} as configured "
                         f"({'; '.join(parts)}): it is another architecture; give a checkpoint of this one")
