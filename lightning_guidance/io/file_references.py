"""How one written file names another (a post-processed shard its source, the memorisation file its shard folders):
relative to the naming file's own folder, so that a run folder can be moved, or read from another working
directory, as a whole."""

from __future__ import annotations

import os
from pathlib import Path


def reference_to(path: str | Path, writer: str | Path) -> str:
    """``path`` as named from the file ``writer`` (relative to its folder; absolute where no relative path exists,
    e.g. another drive)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(writer).resolve().parent)
    except ValueError:
        return str(Path(path).resolve())


def resolve_reference(name: str | Path, writer: str | Path) -> Path:
    """The path that ``writer`` named ``name`` (``reference_to``). Files written before names were relative to the
    writer's folder named paths relative to their writer's working directory: such a name is read as that when it
    is found there and not beside ``writer``."""
    name = Path(name)
    if name.is_absolute():
        return name
    beside = Path(writer).parent / name
    return name.resolve() if not beside.exists() and name.exists() else beside.resolve()
