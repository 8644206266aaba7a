"""Where and with what code a run ran: the machine (host, platform, CPUs, torch and its threads, GPU, SLURM job) and
the commit of the code (and whether it had uncommitted changes), as a report's header and every step marker record
them; and :func:`publish`, which copies a finished report where readers find it."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def machine() -> dict:
    import torch

    info = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    if "SLURM_JOB_ID" in os.environ:
        info["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return info


def commit() -> dict:
    """The commit of the code (and whether it has uncommitted changes): what a step marker and the report record."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
        return {"commit": rev, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown (not a git checkout)", "dirty": None}


def publish(run_dir: Path, dest: Path) -> Path:
    """Copy what a reader needs (report.md, report.json, figures/, configs/) into ``dest``: built in a temp folder
    next to it and renamed into place; an existing ``dest`` is kept as ``<dest>.previous-<n>``."""
    import shutil
    import tempfile

    run_dir, dest = Path(run_dir), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for name in ("report.md", "report.json"):
        shutil.copy2(run_dir / name, tmp / name)
    for folder in ("figures", "configs"):
        if (run_dir / folder).is_dir():
            shutil.copytree(run_dir / folder, tmp / folder)
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp.chmod(0o755)
    if dest.exists():
        n = 1
        while dest.with_name(f"{dest.name}.previous-{n}").exists():
            n += 1
        dest.rename(dest.with_name(f"{dest.name}.previous-{n}"))
    tmp.rename(dest)
    return dest
