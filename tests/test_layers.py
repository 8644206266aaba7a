"""Every import in the package points down the layer table (docs/architecture.md), and nothing below the Lightning
layer imports Lightning. Read with ``ast`` from the source, function-level imports included."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_guidance"

#: bottom to top; a package may import the packages of lower tiers only (never its own tier's siblings)
LAYERS: list[tuple[str, ...]] = [
    ("io",),  # files: atomic writes, shards, figures, tables, checkpoint files
    ("diffusion",),  # the math's base: schedules, samplers and their plug (state, term protocol, sampler kinds)
    ("guidance", "calibration", "toy", "flow", "stats"),  # math built on diffusion; statistics on plain arrays
    ("nets",),  # plain nn.Modules
    ("metrics",),  # torchmetrics states and what grades with them
    ("data",),  # LightningDataModules, rank splits of evaluation data (Lightning from here up)
    ("modules",),  # the Lightning layer: LightningModules ...
    ("callbacks",),  # ... and the callbacks that act on them
    ("launch",),  # the face: where processes run (resource checks, the SLURM job chain) ...
    ("study",),  # ... the study runner chains cli calls (as subprocesses or SLURM jobs) ...
    ("cli",),  # ... and the cli runs the study
    ("console",),  # the shell entry point: imports the cli late, so that a Ctrl-C during start-up is one line
]
TIER = {name: i for i, names in enumerate(LAYERS) for name in names}
#: Lightning from here up: the data modules are LightningDataModules; everything below runs without Lightning
FIRST_LIGHTNING_TIER = TIER["data"]
#: the distributions that are Lightning (``lightning`` bundles the other two; either may be imported on its own)
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")


def _package_of(module: str) -> str | None:
    """``lightning_guidance.a.b`` -> ``a`` (the layer), or None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "lightning_guidance" else None


def _own_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in a file, at any depth (functions, classes, branches).
    ``from a import b`` counts as an import of ``a.b`` (``b`` may be a submodule: ``from lightning_guidance import
    modules``), relative or absolute."""
    own = _own_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def layer_of(path: Path) -> str | None:
    """The layer a file belongs to; None for the package root's ``__init__.py``."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem if rel.stem != "__init__" else None


# ---- the rules: each takes (where, the file's layer, the imported module) and says what is wrong, or None --------
def imports_down_the_table(where: str, layer: str | None, name: str) -> str | None:
    """A layer imports the layers below it only (never up, never a sibling of its tier)."""
    target = _package_of(name)
    if layer is None or target is None or target == layer:
        return None
    if target not in TIER:
        return f"{where}: imports {name}, in no layer of the table"
    if TIER[target] >= TIER[layer]:
        return f"{where}: {layer} imports {name} ({'sideways' if TIER[target] == TIER[layer] else 'up'})"
    return None


def no_lightning_below_the_data_layer(where: str, layer: str | None, name: str) -> str | None:
    """The math, networks and metrics run without Lightning (the package root too: every layer imports it)."""
    below = layer is None or TIER[layer] < FIRST_LIGHTNING_TIER
    return f"{where}: imports {name} below the Lightning layer" if below and name.split(".")[0] in LIGHTNING else None


def root_imports_nothing_of_the_package(where: str, layer: str | None, name: str) -> str | None:
    """Python runs the package root's ``__init__.py`` before any layer: what it imports, every layer imports."""
    if layer is None and name.split(".")[0] == "lightning_guidance":
        return f"{where}: the package root imports {name}, so every layer would import it"
    return None


#: a section never builds a model or samples: its numbers come from the products of its steps
STUDY_NEVER_IMPORTS = ("modules", "diffusion")


def study_reads_what_its_steps_wrote(where: str, layer: str | None, name: str) -> str | None:
    """The study plans steps and reads their products; it never loads a model or runs a sampler itself."""
    if layer == "study" and _package_of(name) in STUDY_NEVER_IMPORTS:
        return f"{where}: the study imports {name} (it reads what its steps wrote)"
    return None


RULES = [imports_down_the_table, no_lightning_below_the_data_layer, root_imports_nothing_of_the_package,
         study_reads_what_its_steps_wrote]


def violations() -> list[str]:
    out = []
    for path in package_files():
        layer = layer_of(path)
        if layer is not None and layer not in TIER:
            out.append(f"{path.relative_to(PACKAGE.parent)}: folder {layer!r} is in no layer of the table")
            continue
        for line, name in imports_of(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            out += [found for rule in RULES if (found := rule(where, layer, name)) is not None]
    return out


def test_every_import_points_down():
    assert violations() == []


def test_every_folder_is_in_the_table():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(TIER), f"folders missing from the layer table: {sorted(folders - set(TIER))}"


# ---- the checker itself catches what it must --------------------------------------------------------------

def _write(root: Path, rel: str, text: str) -> Path:
    path = root / "lightning_guidance" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("rel, text, expected", [
    ("io/x.py", "def f():\n    from ..modules.sampling import SamplingModule\n", "io imports lightning_guidance.modules"),
    ("diffusion/x.py", "from ..guidance.base import GuidanceState\n", "(up)"),
    ("guidance/x.py", "from ..calibration import smooth_ece\n", "(sideways)"),
    ("nets/x.py", "import lightning_guidance.data.base\n", "(up)"),
    ("metrics/x.py", "import lightning.pytorch as pl\n", "below the Lightning layer"),
    ("io/x.py", "class A:\n    def f(self):\n        from lightning.pytorch.plugins.io import TorchCheckpointIO\n",
     "below the Lightning layer"),
    ("modules/x.py", "from ..callbacks import ema\n", "(up)"),
    ("io/x.py", "from ..evaluation import plots\n", "in no layer"),
    # absolute imports through the package root
    ("io/x.py", "from lightning_guidance import modules\n", "io imports lightning_guidance.modules (up)"),
    ("guidance/x.py", "from lightning_guidance import calibration\n", "(sideways)"),
    ("diffusion/x.py", "def f():\n    import lightning_guidance.guidance.sweep\n", "(up)"),
    # Lightning under its other names
    ("diffusion/x.py", "import pytorch_lightning as pl\n", "below the Lightning layer"),
    ("metrics/x.py", "from lightning_fabric.utilities.seed import seed_everything\n", "below the Lightning layer"),
    ("nets/x.py", "from pytorch_lightning.callbacks import Callback\n", "below the Lightning layer"),
    # the package root, which every layer imports first
    ("__init__.py", "from .modules import sampling\n", "the package root imports lightning_guidance.modules"),
    ("__init__.py", "from lightning_guidance import cli\n", "the package root imports lightning_guidance.cli"),
    ("__init__.py", "import lightning\n", "__init__.py:1: imports lightning below the Lightning layer"),
])
def test_checker_finds_bad_imports(tmp_path, monkeypatch, rel, text, expected):
    _write(tmp_path, "__init__.py", "")
    path = _write(tmp_path, rel, text)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "lightning_guidance")
    found = violations()
    assert any(expected in v for v in found), (path, found)


def test_checker_accepts_downward_imports(tmp_path, monkeypatch):
    _write(tmp_path, "__init__.py", "")
    _write(tmp_path, "guidance/x.py", "from ..diffusion.plug import GuidanceTerm\nfrom . import y\n")
    _write(tmp_path, "callbacks/x.py", "import lightning as L\nfrom ..modules.sampling import SamplingModule\n")
    _write(tmp_path, "data/x.py", "import lightning as L\nfrom ..toy import fractal_2d\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "lightning_guidance")
    assert violations() == []


# ---- the study reads what its steps wrote -----------------------------------------------------------------
def study_violations() -> list[str]:
    return [v for v in violations() if "the study imports" in v]


def test_the_study_imports_no_model_and_no_sampler():
    assert study_violations() == []


@pytest.mark.parametrize("text", ["def f():\n    from ..modules.cfg_diffusion import CFGDiffusion\n",
                                  "from ..diffusion.sampling import sample\n",
                                  "import lightning_guidance.modules.sampling as m\n"])
def test_checker_finds_study_code_that_builds_a_model_or_samples(tmp_path, monkeypatch, text):
    _write(tmp_path, "__init__.py", "")
    _write(tmp_path, "study/ok.py", "from ..io.shards import read_shard\nfrom ..guidance.sweep import Sweep\n")
    path = _write(tmp_path, "study/x.py", text)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "lightning_guidance")
    found = study_violations()
    assert len(found) == 1 and found[0].startswith("lightning_guidance/study/x.py"), (path, found)
