"""The shipped configs: every command the configs' headers, the README and the docs show parses with the CLI's own
parser (``${...}`` resolved, every value checked against the signatures), every shipped config is shown run by its
own header, every dataset/guidance combination a guidance file documents parses, and no two shipped configs differ
only in paths and sizes (a near copy is a combination waiting to be made)."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
import yaml

from helpers import CONFIGS, ROOT, composed, config_parser, guidance_combinations

COMMANDS = ("fit", "validate", "test", "predict")
#: where commands are documented besides the configs' own headers
DOCUMENTS = ("README.md", "docs/architecture.md", "slurm/README.md")


def shipped_configs() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*.yaml") if p.name != "study.yaml")  # study.yaml: the study's own file


def header(path: Path) -> str:
    """A config's leading comment block, without the ``#``."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)


def commands_in(text: str) -> list[list[str]]:
    """``[argv after 'python cli.py']`` of every LightningCLI command in ``text`` (lines ending in a backslash
    continue; a command ends at an inline note in parentheses, a backtick or a shell comment)."""
    joined = re.sub(r"\\\n\s*#?\s*", " ", text)
    found = []
    for match in re.finditer(r"python cli\.py ((?:%s) [^\n`]*)" % "|".join(COMMANDS), joined):
        line = re.split(r"\s{2,}\(|\s#\s|\)(?=[.,;]?(?:\s|$))", match.group(1))[0]
        argv = shlex.split(line)
        argv = [a.rstrip(").,;") for a in itertools.takewhile(lambda a: not a.startswith("("), argv)]
        if any("$" in a or "<" in a or "..." in a for a in argv):  # placeholders: not a runnable command
            continue
        if any(a in ("-h", "--help") or a.endswith(".help") for a in argv):  # help prints and exits: no config
            continue
        found.append(argv)
    return found


def documented() -> dict[str, list[list[str]]]:
    """``{where: [argv, ...]}`` over the configs' headers and the documents."""
    out = {str(p.relative_to(ROOT)): commands_in(header(p)) for p in shipped_configs()}
    out.update({doc: commands_in((ROOT / doc).read_text()) for doc in DOCUMENTS})
    return out


def parse(argv: list[str]) -> dict:
    """The whole config the CLI makes of ``argv`` (run from the repository root, as the commands are written)."""
    parser = config_parser()
    argv = [str(ROOT / a) if a.startswith("configs/") else a for a in argv]
    return yaml.safe_load(parser.dump(parser.parse_args(argv)))[argv[0]]


ALL = sorted({shlex.join(argv) for argvs in documented().values() for argv in argvs})


@pytest.mark.parametrize("command", ALL)
def test_every_documented_command_parses(command):
    config = parse(shlex.split(command))
    unresolved = re.findall(r"\$\{[^}]*\}", yaml.safe_dump(config))
    assert not unresolved, f"{command}: left unresolved: {unresolved}"


def test_every_shipped_config_shows_how_to_run_it():
    """Each config's header has a command that uses it, so a reader knows what to combine it with."""
    missing = []
    for path in shipped_configs():
        rel = str(path.relative_to(ROOT))
        if not any(rel in argv for argv in commands_in(header(path))):
            missing.append(rel)
    assert not missing, f"configs whose header shows no command using them: {missing}"
    assert len(ALL) >= len(shipped_configs())


@pytest.mark.parametrize("dataset, guidance", guidance_combinations())
def test_every_documented_combination_parses(dataset, guidance):
    """Each guidance file on each dataset its ``# Datasets:`` line names: the file's paths resolve to that
    dataset's models, and the output goes to that dataset's run folder."""
    config = composed(dataset, guidance)
    runs = composed(dataset)["paths"]["runs"]
    assert config["trainer"]["default_root_dir"] == f"{runs}/samples_{Path(guidance).stem}"
    assert config["model"]["init_args"]["checkpoint"].startswith(f"{runs}/")
    sweep = config["model"]["init_args"]["sweep"]
    for term in sweep["terms"] or []:
        assert term["init_args"]["classifier"]["init_args"]["checkpoint"].startswith(f"{runs}/")
    rule = (sweep.get("cfg_rule") or {}).get("init_args") or {}
    assert rule.get("guide_checkpoint", runs).startswith(runs)


# ---- sampling configs are composed ------------------------------------------------------------------------------
#: sampling configs that stand alone instead of being a dataset's sampling.yaml plus a configs/guidance/ file, and why
STANDALONE_SAMPLING = {
    "cifar10/pretrained_ddpm_cg.yaml": "an unconditional diffusers DDPM: it has no null class, so no CFG sweep can be "
                                       "its skeleton (CFG is refused); its one guidance is this file's sweep",
    "imagenet/pretrained_dit_cfg.yaml": "a diffusers DiT + VAE folder (pretrained: options, decoded images): the "
                                        "guidance files' classifiers read the model's own samples, not decoded ones",
    "imagenet/pretrained_dit_elucd.yaml": "EluCD's row: its classifier reads the decoded image through the VAE "
                                          "(DecodedImageClassifier), which no configs/guidance/ file does",
}


def test_sampling_configs_are_a_dataset_skeleton_or_stand_alone_with_a_reason():
    sampling = {str(p.relative_to(CONFIGS)) for p in shipped_configs()
                if "SamplingModule" in str(((read(p).get("model") or {}).get("class_path")))}
    skeletons = {f"{d}/sampling.yaml" for d in ("digits", "fractal", "toy")}
    assert sampling - skeletons == set(STANDALONE_SAMPLING), sorted(sampling - skeletons)
    for rel in STANDALONE_SAMPLING:  # each runs on its own: its header shows the command
        assert any(f"configs/{rel}" in argv for argv in commands_in(header(CONFIGS / rel))), rel


def read(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


# ---- no near copies ------------------------------------------------------------------------------------------------
def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
        return {k: v for i, value in enumerate(node) for k, v in _flat(value, f"{prefix}[{i}]").items()}
    return {prefix: node}


def _is_path_or_size(value) -> bool:
    """A file or folder (a string with a slash, a checkpoint name, or a list of them), or a size (a whole number, or
    a list of them). Floats are settings (scales, rates, decays), not sizes."""
    if isinstance(value, list):
        return bool(value) and all(_is_path_or_size(v) for v in value)
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and ("/" in value or value.endswith((".ckpt", ".pt")))


def skeleton(path: Path) -> dict:
    """A config with its paths and sizes blanked."""
    return {k: None if _is_path_or_size(v) else v for k, v in _flat(yaml.safe_load(path.read_text()) or {}).items()}


def near_copies(paths: list[Path]) -> list[tuple[str, str]]:
    shapes = {p: skeleton(p) for p in paths}
    return [(a.name if a.parent == b.parent else str(a), str(b)) for a, b in itertools.combinations(paths, 2)
            if shapes[a] == shapes[b]]


def test_no_two_shipped_configs_differ_only_in_paths_and_sizes():
    assert near_copies(shipped_configs()) == []


def test_the_near_copy_check_finds_one(tmp_path):
    """A copy of a shipped config with other paths, steps and sizes is caught; one with another setting is not."""
    source = CONFIGS / "fractal" / "cfg.yaml"
    text = source.read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text.replace("runs/fractal/cfg", "runs/fractal/other").replace("max_steps: 4000",
                                                                                                    "max_steps: 10"))
    (tmp_path / "c.yaml").write_text(text.replace("decay: 0.999", "decay: 0.99"))
    assert text.count("decay: 0.999") == 1 and "max_steps: 4000" in text
    assert near_copies(sorted(tmp_path.glob("*.yaml"))) == [("a.yaml", str(tmp_path / "b.yaml"))]
