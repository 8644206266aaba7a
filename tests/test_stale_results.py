"""Identity by content: a shard's key names the diffusion checkpoint and every guide's weights by digest, so a
retrained model or a swapped classifier can never pass for the one that made the shards.

Oracle: the files' own SHA-256 (hashlib), and whether the samples change with the model.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
from helpers import CONFIGS, cli, tiny_digits_fit

from lightning_guidance.io.digests import file_digest
from lightning_guidance.io.shards import read_shard

TINY = ["--model.init_args.net.init_args.model_channels", "8", "--model.init_args.net.init_args.channel_mult", "[1]",
        "--data.init_args.batch_size", "16", "--trainer.enable_progress_bar", "false"]


def sample_args(config, ckpt, out, *extra):
    return ["predict", "--config", CONFIGS / config, "--trainer.default_root_dir", out,
            "--trainer.enable_progress_bar", "false", "--model.init_args.checkpoint", ckpt,
            "--model.init_args.samples_per_class", "1", "--model.init_args.shard_size", "10",
            "--model.init_args.batch_size", "10", "--model.init_args.sampler_kwargs", "{num_steps: 2}",
            "--model.init_args.sweep.values", "[1.0]", *extra]


def the_shard(out):
    (path,) = sorted(out.glob("*_1/shard_*.npz"))
    return path, read_shard(path)


def test_digest_is_the_content_and_is_cached(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    assert file_digest(f) == hashlib.sha256(b"abc" * 1000).hexdigest()[:16]
    calls = []
    real_open = open

    def counting_open(path, *a, **k):
        calls.append(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", counting_open)
    for _ in range(5):
        file_digest(f)
    assert calls == []  # cached by (path, mtime, size): not read again
    monkeypatch.undo()
    f.write_bytes(b"abd" * 1000)  # same size, new content (and mtime)
    assert file_digest(f) == hashlib.sha256(b"abd" * 1000).hexdigest()[:16]


def test_retrained_model_makes_old_shards_stale(tmp_path):
    root = tmp_path / "cfg"
    ckpt = tiny_digits_fit(root, 2)
    out = tmp_path / "samples"
    cli(*sample_args("digits/sampling.yaml", ckpt, out))
    path, before = the_shard(out)
    written = path.stat().st_mtime_ns
    assert before.config["checkpoint"] == {"sha256": file_digest(ckpt)}
    tiny_digits_fit(root, 3, "--ckpt_path", "last")  # train it further: same path, same size, new content
    with pytest.raises(ValueError, match=r"stale shard .*shard_0000000.npz: .*diffusion checkpoint's content changed"
                                         r".*overwrite true"):
        cli(*sample_args("digits/sampling.yaml", ckpt, out))
    cli(*sample_args("digits/sampling.yaml", ckpt, out, "--model.init_args.overwrite", "true"))
    _, after = the_shard(out)
    assert after.config["checkpoint"] == {"sha256": file_digest(ckpt)} != before.config["checkpoint"]
    assert path.stat().st_mtime_ns != written  # sampled again (a 3-step model's samples may well saturate alike)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    cfg = tiny_digits_fit(base / "cfg", 2)
    classifiers = []
    for seed in (1, 2):
        root = base / f"classifier{seed}"
        cli("fit", "--config", CONFIGS / "digits/classifier.yaml", "--trainer.default_root_dir", root,
            "--trainer.max_steps", "2", "--model.init_args.noise_seed", str(seed), "--seed_everything", str(seed),
            *TINY)
        classifiers.append(root / "checkpoints" / "last.ckpt")
    judge = base / "judge"
    cli("fit", "--config", CONFIGS / "digits/judge.yaml", "--trainer.default_root_dir", judge,
        "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false")
    return cfg, classifiers, judge / "checkpoints" / "last.ckpt"


def test_swapped_classifier_weights_make_cg_shards_stale(models, tmp_path):
    cfg, (first, second), _ = models
    guide = tmp_path / "guide.ckpt"
    shutil.copy(first, guide)
    out = tmp_path / "samples"
    (tmp_path / "guide.yaml").write_text(f"""
model:
  init_args:
    sweep:
      terms:
        - class_path: lightning_guidance.guidance.ClassifierGuidance
          init_args:
            scale: 1.0
            classifier: {{class_path: lightning_guidance.nets.TrainedClassifier, init_args: {{checkpoint: {guide}}}}}
""")
    args = sample_args("digits/sampling.yaml", cfg, out, "--config", tmp_path / "guide.yaml")
    cli(*args)
    path, before = the_shard(out)
    written = path.stat().st_mtime_ns
    assert file_digest(guide) in str(before.config["guidance"])
    shutil.copy(second, guide)  # the same architecture and size, other weights
    with pytest.raises(ValueError, match="stale shard .*a guide's weights file changed"):
        cli(*args)
    cli(*args, "--model.init_args.overwrite", "true")
    _, after = the_shard(out)
    assert file_digest(guide) in str(after.config["guidance"]) and file_digest(first) not in str(after.config)
    assert path.stat().st_mtime_ns != written


def test_test_refuses_to_grade_shards_of_an_older_checkpoint(models, tmp_path):
    _, _, judge = models
    root = tmp_path / "cfg"
    ckpt = tiny_digits_fit(root, 2)
    out = tmp_path / "samples"
    cli(*sample_args("digits/sampling.yaml", ckpt, out))
    grade = ["--config", CONFIGS / "digits/grade_with_judge.yaml", "--model.init_args.judge.init_args.checkpoint",
             judge]
    cli("test", *sample_args("digits/sampling.yaml", ckpt, out, *grade)[1:])
    assert (out / "metrics_table.md").is_file()
    tiny_digits_fit(root, 3, "--ckpt_path", "last")
    with pytest.raises(ValueError, match="stale shard .*diffusion checkpoint's content changed"):
        cli("test", *sample_args("digits/sampling.yaml", ckpt, out, *grade)[1:])
