"""README's "Bring your own" snippets run exactly as printed, in order, in a folder that holds what they name:
``configs/`` (the shipped ones), a tiny ImageFolder in ``data/my_images``, a timm ResNet-18 file with a 10-class head
in ``data/weights``, and tiny digits models where ``runs/digits/{cfg,judge}`` would be (the snippets take a trained
model and judge as given)."""

from __future__ import annotations

import json
import os
import re
import shlex

import numpy as np
import pytest
import torch
from helpers import CONFIGS, ROOT, cli, tiny_digits_fit


def bring_your_own_snippets() -> list[tuple[str, str]]:
    """``[(language, code)]`` of the README section's fenced blocks, in order (shell lines continued with ``\\``)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Bring your own", 1)[1].split("\n## ", 1)[0]
    return [(lang, code.replace("\\\n", " ")) for lang, code in re.findall(r"```(\w+)\n(.*?)```", section, re.S)]


def write_image_folder(root, classes=("cat", "dog"), per_class=4, size=40):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    (tmp_path / "configs").symlink_to(CONFIGS)
    write_image_folder(tmp_path / "data" / "my_images")
    (tmp_path / "data" / "weights").mkdir()
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), tmp_path / "data/weights/my_resnet18.pth")
    tiny_digits_fit(tmp_path / "runs" / "digits" / "cfg", 2)
    cli("fit", "--config", CONFIGS / "digits/judge.yaml", "--trainer.default_root_dir", tmp_path / "runs/digits/judge",
        "--model.init_args.net.init_args.hidden_dim", "16", "--trainer.max_steps", "2",
        "--trainer.enable_progress_bar", "false")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_bring_your_own_snippets_run_as_printed(user_folder):
    snippets = bring_your_own_snippets()
    assert [lang for lang, _ in snippets] == ["bash", "bash", "python", "python", "bash"]
    for lang, code in snippets:
        if lang == "python":
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
            continue
        for line in filter(None, (line.split("#")[0].strip() for line in code.splitlines())):
            words = shlex.split(line)
            assert words[:2] == ["python", "cli.py"], line
            cli(*words[2:])
    runs = user_folder / "runs"
    # your images: a fit of the template on the class folders
    assert torch.load(runs / "imagefolder/cfg/checkpoints/last.ckpt", weights_only=True)["global_step"] == 10
    # your classifier: the guided sweep sampled with the 10-class timm file as the guide
    manifest = json.loads((runs / "digits/samples_offtheshelf/manifest.json").read_text())
    assert list(manifest["values"]) == ["0", "1", "2", "4"] and manifest["num_samples_per_value"] == 20
    guide = manifest["values"]["1"]["config"]["guidance"][0]["classifier"]
    assert guide["class"] == "OffTheShelfClassifier" and guide["sha256"]
    # the Python API: its picture; grading the folder written from Python
    assert (user_folder / "my_samples.png").stat().st_size > 0
    table = json.loads((runs / "my_samples/metrics_table.json").read_text())
    assert table["rows"][0]["guidance"] == "my generator, cfg 1" and table["rows"][0]["num_samples"] == 200
    assert os.path.isfile(runs / "my_samples/test_config.yaml")
