"""Sample shards: one ``.npz`` per block of sample ids at one guidance setting, written atomically.

Keys: ``images`` (uint8, N×C×H×W) for image data or ``points`` (float32, N×D) for toy data, ``labels``,
``seeds``, ``sample_ids`` (int64), ``value`` (float: the swept value, the glossary of docs/architecture.md),
``config_hash`` (str), ``config`` (the JSON the hash is of: it names every checkpoint and weights file the samples
depend on by content digest), ``data_shape`` (int array); a post-processed shard adds ``source_config_hash`` (the
sampling config of its source, what ``check_shards`` grades it as), ``source_value``, ``source_file``,
``displacement`` and ``nfe``; a shard sampled with ``save_trajectory`` adds ``trajectory`` (float32, (steps + 1)×N×D:
the state each sampler step starts from, then the samples).
Images are mapped from [-1, 1] to uint8 only here, at the file boundary. A sweep value's shards live in one folder
as ``shard_<first id, 7 digits>.npz``. This module is the only one that knows the format: everyone else reads and
writes shards through it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_write, atomic_write_text
from .file_references import resolve_reference
from .figures import save_sample_picture


def config_hash(config: dict) -> str:
    """Short stable hash of a JSON-able config (sorted keys)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def to_uint8(images: Tensor) -> np.ndarray:
    """[-1, 1] float → uint8, rounding to nearest (values outside are clipped)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def from_uint8(images: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(images)).float() / 127.5 - 1


@dataclass
class Shard:
    samples: Tensor  # float in data space ([-1, 1] for images)
    labels: Tensor
    seeds: Tensor
    sample_ids: Tensor
    value: float  # the swept value the shard was sampled at
    config_hash: str
    config: dict | None = None


def write_shard(path: str | Path, shard: Shard, extra: dict | None = None) -> Path:
    """``extra``: more arrays stored as they are (a post-processed shard's source identity, its moves)."""
    is_image = shard.samples.ndim == 4
    payload = dict(
        labels=shard.labels.cpu().numpy().astype(np.int64),
        seeds=shard.seeds.cpu().numpy().astype(np.int64),
        sample_ids=shard.sample_ids.cpu().numpy().astype(np.int64),
        value=np.float64(shard.value),
        config_hash=np.array(shard.config_hash),
        config=np.array(json.dumps(shard.config or {}, sort_keys=True, default=str)),
        data_shape=np.array(shard.samples.shape[1:], dtype=np.int64),
    )
    if is_image:
        payload["images"] = to_uint8(shard.samples)
    else:
        payload["points"] = shard.samples.detach().float().cpu().numpy()
    payload.update({k: np.asarray(v) for k, v in (extra or {}).items()})
    return atomic_write(path, lambda tmp: np.savez(tmp, **payload), suffix=".npz")


def _samples(z, rows: np.ndarray | slice = slice(None)) -> Tensor:
    return from_uint8(z["images"][rows]) if "images" in z else torch.from_numpy(z["points"][rows])


def unreadable_shard(path: str | Path, err: BaseException) -> str:
    """One line for a shard file that does not load (empty, truncated, not an .npz of this suite)."""
    size = Path(path).stat().st_size if Path(path).exists() else 0
    what = "is empty (0 bytes)" if size == 0 else f"cannot be read ({type(err).__name__}: {str(err)[:120]})"
    return (f"sample shard {path} {what}: it was damaged after it was written; re-run predict with "
            "--model.init_args.overwrite true to regenerate it")


def open_shard(path: str | Path):
    """``np.load`` of a shard with the keys every shard has, or a one-line ValueError naming the file."""
    try:
        z = np.load(path)
        for key in ("labels", "sample_ids", "config_hash", "data_shape"):
            z[key]
    except FileNotFoundError:
        raise FileNotFoundError(f"sample shard not found: {path}") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is one message naming it
        raise ValueError(unreadable_shard(path, err)) from err
    return z


def read_shard(path: str | Path) -> Shard:
    with open_shard(path) as z:
        return Shard(samples=_samples(z), labels=torch.from_numpy(z["labels"]), seeds=torch.from_numpy(z["seeds"]),
                     sample_ids=torch.from_numpy(z["sample_ids"]), value=float(z["value"]),
                     config_hash=str(z["config_hash"]), config=_config_of(z))


def read_extra(path: str | Path, key: str) -> np.ndarray | None:
    """One of a shard's optional arrays (``trajectory``, ``source_file``, ...), or None if it has none."""
    with open_shard(path) as z:
        return np.asarray(z[key]) if key in z.files else None


def _config_of(z) -> dict | None:
    return json.loads(str(z["config"])) if "config" in z else None


def shard_config(path: str | Path) -> dict | None:
    """The sampling config a shard records (None for shards written before shards recorded it)."""
    with open_shard(path) as z:
        return _config_of(z)


def config_difference(old: dict | None, new: dict) -> str:
    """Which top-level settings differ between two shard configs, in words (for the stale-shard message)."""
    if not old:
        return "the shard does not record its config"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    parts = []
    for k in keys:
        if k == "checkpoint":
            parts.append("the diffusion checkpoint's content changed (retrained?)")
        elif k == "guidance" and _digests(old.get(k)) != _digests(new.get(k)):
            parts.append("a guide's weights file changed (retrained or swapped classifier?)")
        else:
            parts.append(f"{k}: {json.dumps(old.get(k), default=str)[:60]} -> {json.dumps(new.get(k), default=str)[:60]}")
    return "; ".join(parts)


def _digests(value) -> list[str]:
    found = []
    if isinstance(value, dict):
        found += [str(v) for k, v in value.items() if k == "sha256"]
        for v in value.values():
            found += _digests(v)
    elif isinstance(value, list):
        for v in value:
            found += _digests(v)
    return found


def source_of(path: str | Path) -> Path:
    """The source shard that the post-processed shard at ``path`` names (``source_file``, ``reference_to`` it)."""
    return resolve_reference(str(read_extra(path, "source_file")), path)


def read_postprocessed(folder: str | Path) -> tuple[Tensor, Tensor, Tensor]:
    """(samples after, their sources before, labels) of a folder of post-processed shards (in the same order)."""
    paths = shard_paths(folder)
    if not paths:
        raise FileNotFoundError(f"no post-processed shards in {folder}")
    after = [read_shard(p) for p in paths]
    before = [read_shard(source_of(p)).samples.float() for p in paths]
    return torch.cat([s.samples.float() for s in after]), torch.cat(before), torch.cat([s.labels for s in after])


def read_shard_rows(path: str | Path, rows: np.ndarray) -> tuple[Tensor, Tensor]:
    """``(samples, labels)`` of some rows of a shard (images back in [-1, 1], toy points as written)."""
    with np.load(path) as z:
        return _samples(z, rows), torch.from_numpy(np.asarray(z["labels"][rows]))


def shard_path(folder: str | Path, first_id: int) -> Path:
    return Path(folder) / f"shard_{first_id:07d}.npz"


def shard_paths(folder: str | Path) -> list[Path]:
    """The shards of one folder, in sample-id order."""
    return sorted(Path(folder).glob("shard_*.npz"))


def read_folder(folder: str | Path) -> tuple[Tensor, Tensor] | None:
    """``(samples, labels)`` of every shard of one folder, in sample-id order; None when it holds none."""
    loaded = [read_shard(p) for p in shard_paths(folder)]
    return (torch.cat([sh.samples for sh in loaded]), torch.cat([sh.labels for sh in loaded])) if loaded else None


def plan_shards(folder: str | Path, num_samples: int, shard_size: int) -> list[tuple[Path, tuple[int, ...]]]:
    """``[(path, sample ids)]``: ids ``0..num_samples-1`` cut into shards of ``shard_size``."""
    return [(shard_path(folder, start), tuple(range(start, min(start + shard_size, num_samples))))
            for start in range(0, num_samples, shard_size)]


def check_shards(folder: str | Path, expected_hash: str, num_samples: int, data_shape: Sequence[int],
                 num_classes: int, real_name: str, expected_config: dict | None = None) -> list[tuple[Path, np.ndarray]]:
    """``[(shard path, its sample ids)]`` of one folder, after checking that the shards were written with
    ``expected_hash``, hold samples of ``data_shape`` with labels in ``0..num_classes-1``, and together hold every
    sample id ``0..num_samples-1`` (``real_name`` names the data they are graded against, for the errors)."""
    folder = Path(folder)
    paths = shard_paths(folder)
    if not paths:
        raise FileNotFoundError(f"no sample shards in {folder}: sample them first with `python cli.py predict` "
                                "and the same model arguments as this test config")
    found = []
    for path in paths:
        with open_shard(path) as z:
            # a post-processed shard (RectifiedFlowPostprocessor) is graded as the samples it came from
            got = str(z["source_config_hash"] if "source_config_hash" in z.files else z["config_hash"])
            ids = np.asarray(z["sample_ids"]).astype(np.int64)
            shape, labels = tuple(int(v) for v in z["data_shape"]), np.asarray(z["labels"])
        if got != expected_hash:
            why = config_difference(shard_config(path), expected_config) if expected_config else f"hash {got}"
            raise ValueError(f"stale shard {path}: sampled with another config than this test's ({why}); re-run "
                             "predict with the same arguments (--model.init_args.overwrite true regenerates it)")
        if shape != tuple(data_shape):
            raise ValueError(f"{path} holds samples of shape {shape} but the real data ({real_name}) has shape "
                             f"{tuple(data_shape)}: grade shards against the dataset and resolution they were "
                             "generated for")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{path} holds labels outside 0..{num_classes - 1} (the real data's classes): it was "
                             "generated for another dataset")
        found.append((path, ids))
    all_ids = np.sort(np.concatenate([ids for _, ids in found]))
    if not np.array_equal(all_ids, np.arange(num_samples)):
        raise ValueError(f"the shards in {folder} hold {len(np.unique(all_ids))} distinct of the {num_samples} "
                         "sample ids this config asks for: predict was interrupted; re-run it (it resumes)")
    return found


def shard_hash(path: str | Path) -> str | None:
    """The config hash a finished shard was written with, or None if the file is unreadable (e.g. truncated)."""
    found = finished_shard(path)
    return None if found is None else found[0]


def finished_shard(path: str | Path) -> tuple[str, tuple[int, ...]] | None:
    """``(config hash, sample ids)`` of a finished shard, or None if the file is unreadable (e.g. truncated)."""
    try:
        with np.load(path) as z:
            return str(z["config_hash"]), tuple(int(i) for i in z["sample_ids"])
    except Exception:  # noqa: BLE001 - any unreadable file counts as unfinished
        return None


def write_manifest(output_dir: str | Path, folders: dict[str, Path], configs: dict[str, dict], num_samples: int,
                   classes: list[int], titles: dict[str, str], per_class: int) -> dict:
    """``<output_dir>/manifest.json``: per swept value (``folders``: its label -> its shard folder) the shard files,
    the sample count, the config they were written with, and a picture of the samples (``grid.png`` in the folder,
    titled ``titles[label]``)."""
    manifest = {"num_samples_per_value": num_samples, "classes": classes, "values": {}}
    for label, folder in folders.items():
        paths, got = shard_paths(folder), read_folder(folder)
        if got is None:
            continue
        x, y = got
        picture = save_sample_picture(x, y, Path(folder) / "grid.png", title=titles[label], per_class=per_class)
        manifest["values"][label] = {"shards": [p.name for p in paths], "count": int(len(y)),
                                     "grid": _relative(picture, output_dir), "config": configs[label]}
    atomic_write_text(Path(output_dir) / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def write_sample_folder(output_dir: str | Path, sets: dict[float, tuple[Tensor, Tensor]], source: str,
                        target: str = "cfg", shard_size: int = 1000, per_class: int = 10) -> dict:
    """Samples made anywhere, written as a folder the suite grades like a ``predict`` output: per sweep value
    ``(samples, labels)`` (images (N, C, H, W) in [-1, 1], or points (N, D); the same N for every value) become
    shards in ``<output_dir>/<target>_<value>`` and a ``manifest.json``; each shard's config records ``source``."""
    counts = {len(labels) for _, labels in sets.values()}
    if len(counts) != 1 or not counts.pop():
        sizes = [len(y) for _, y in sets.values()]
        raise ValueError(f"every sweep value needs the same, non-zero number of samples; got {sizes}")
    folders, configs = {}, {}
    for value, (samples, labels) in sets.items():
        classes = sorted(int(c) for c in torch.unique(labels))
        config = {"source": source, "target": target, "value": float(value), "classes": classes}
        folder = Path(output_dir) / f"{target}_{value:g}"
        for path, ids in plan_shards(folder, len(labels), shard_size):
            rows = torch.tensor(ids)
            write_shard(path, Shard(samples[rows], labels[rows], torch.full_like(rows, -1), rows, float(value),
                                    config_hash(config), config))
        folders[f"{value:g}"], configs[f"{value:g}"] = folder, config
    classes = sorted({c for config in configs.values() for c in config["classes"]})
    titles = {label: f"{source}, {target} {float(label):g}" for label in folders}
    return write_manifest(output_dir, folders, configs, len(labels), classes, titles, per_class)


def _relative(path: Path, folder: str | Path) -> str:
    """``path`` relative to ``folder`` when inside it (so a copied run folder keeps its links)."""
    try:
        return Path(path).resolve().relative_to(Path(folder).resolve()).as_posix()
    except ValueError:
        return str(path)


def read_manifest(output_dir: str | Path) -> dict | None:
    """The manifest a ``predict`` wrote in ``output_dir``, or None if there is none."""
    path = Path(output_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def manifest_shards(output_dir: str | Path) -> dict[str, list[Path]]:
    """``{sweep value label: its shard files}`` of a finished ``predict`` (its manifest; each value's folder holds
    its ``grid.png``)."""
    manifest = read_manifest(output_dir)
    if manifest is None:
        raise FileNotFoundError(f"no manifest.json in {output_dir}: its predict step did not finish")
    return {label: [(Path(output_dir) / info["grid"]).parent / name for name in info["shards"]]
            for label, info in manifest["values"].items()}
