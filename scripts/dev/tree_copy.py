"""Copy the working tree (git's tracked files and its untracked, not ignored ones) into a scratch folder, for the
scripts that break a copy of the code on purpose (``break_and_test.py``, ``mutation_test.py``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def copy_working_tree(root: Path, dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = root / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
