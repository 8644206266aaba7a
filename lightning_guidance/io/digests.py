"""Content digests of files, so that a retrained model or a swapped weights file is never taken for the old one.

``file_digest(path)`` is the SHA-256 of the file's bytes (its first 16 hex digits; ``digits=64`` gives all of it).
It is computed once per file version: cached by (real path, mtime in ns, size), so a large checkpoint named by many
shards is hashed once. The package's one file digest: shards, guides, neighbour caches and study markers use it.
A model stored as a folder (diffusers' ``save_pretrained`` layout) is named by :func:`folder_digest`: the SHA-256 of
its files' relative paths and digests.
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


def folder_digest(path: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) over every file below a folder: each one's path relative to it and its
    :func:`file_digest`, in sorted order (hidden files and folders, such as caches, left out)."""
    root = os.path.realpath(path)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(folder, f) for f in files if not f.startswith(".")]
    h = hashlib.sha256()
    for full in sorted(found):
        h.update(f"{os.path.relpath(full, root)}\0{file_digest(full)}\n".encode())
    return h.hexdigest()[:16]


def file_identity(path: str | os.PathLike | None) -> dict:
    """``{"sha256": <digest>}`` of a file (or model folder) a result depends on (empty for no file). The content,
    not the path: a copied run folder keeps its identities, a retrained model at the same path does not."""
    if not path:
        return {}
    return {"sha256": folder_digest(path) if os.path.isdir(path) else file_digest(path)}
