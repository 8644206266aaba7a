"""Content digests of files, so that a retrained model or a swapped weights file is never taken for the old one.

``file_digest(path)`` is the SHA-256 of the file's bytes (its first 16 hex digits; ``digits=64`` gives all of it).
It is computed once per file version: cached by (real path, mtime in ns, size), so a large checkpoint named by many
shards is hashed once. The package's one file digest: shards, guides, neighbour caches and study markers use it.
"""

from __future__ import annotations

import hashlib
import os

_CACHE: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike, digits: int = 16) -> str:
    """SHA-256 of the file's content, its first ``digits`` hex digits; ``FileNotFoundError`` naming the file if it
    is missing."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    key = (real, st.st_mtime_ns, st.st_size)
    digest = _CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _CACHE[key] = h.hexdigest()
    return digest[:digits]


def file_identity(path: str | os.PathLike | None) -> dict:
    """``{"sha256": <digest>}`` of a file a result depends on (empty for no file). The content, not the path: a
    copied run folder keeps its identities, a retrained model at the same path does not."""
    if not path:
        return {}
    return {"sha256": file_digest(path)}
