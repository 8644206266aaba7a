"""The rectified-flow post-processor through the real CLI on the digits: fit -> predict -> test (graded by the same
``SamplingModule`` test stage as any shards), exact resume, skip on re-run, and bad input as one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONFIGS, cli, load
from test_sampling_test_stage import cfg_checkpoint, judge_checkpoint, shared_run

from lightning_guidance.data.digits import DigitsDataModule
from lightning_guidance.data.generated import GeneratedShardsDataModule
from lightning_guidance.data.toy import Fractal2DDataModule
from lightning_guidance.io.shards import Shard, read_shard, write_shard

TRAIN_SCALES = ("1", "2", "3")
UNSEEN_SCALES = ("2.25", "2.5", "2.75")


#: the flow's training samples (CFG s = 1/2/3, seeds of their own) and the unseen scales it is applied to
FLOW_TRAIN = ("--config", CONFIGS / "digits/sampling.yaml", "--config", CONFIGS / "digits/flow_train_samples.yaml")
UNSEEN = ("--config", CONFIGS / "digits/sampling.yaml", "--model.init_args.sweep.values", "[2.25, 2.5, 2.75]")


def sample(config: tuple, ckpt: Path, out: Path, per_class: int) -> None:
    cli("predict", *config, "--trainer.default_root_dir", out, "--trainer.enable_progress_bar",
        "false", "--model.init_args.checkpoint", ckpt, "--model.init_args.output_dir", out,
        "--model.init_args.samples_per_class", per_class, "--model.init_args.shard_size", 16,
        "--model.init_args.batch_size", 32, "--model.init_args.sampler_kwargs", "{num_steps: 4}")


@pytest.fixture(scope="module")
def flow_inputs(tmp_path_factory):
    """(judge, tiny CFG checkpoint, CFG 1/2/3 training shards, unseen-scale shards)."""
    judge, ckpt = judge_checkpoint(tmp_path_factory), cfg_checkpoint(tmp_path_factory)
    train = shared_run(tmp_path_factory, "flow-train", lambda r: sample(FLOW_TRAIN, ckpt, r, 4))
    unseen = shared_run(tmp_path_factory, "flow-unseen", lambda r: sample(UNSEEN, ckpt, r, 7))
    return judge, ckpt, train, unseen


def flow_args(root: Path, train: Path, unseen: Path, *extra) -> list:
    return ["--config", CONFIGS / "digits/flow.yaml", "--trainer.default_root_dir", root,
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", 1,
            "--model.init_args.net.init_args.model_channels", 8, "--model.init_args.net.init_args.channel_mult", "[1]",
            "--model.init_args.k", 5, "--model.init_args.integrator_kwargs", "{num_steps: 4}", "--model.init_args.output_dir", root / "post",
            "--data.init_args.shards", "[" + ", ".join(str(train / f"cfg_{s}") for s in TRAIN_SCALES) + "]",
            "--data.init_args.predict_shards", "[" + ", ".join(str(unseen / f"cfg_{s}") for s in UNSEEN_SCALES) + "]",
            "--data.init_args.batch_size", 16, *extra]


def fit(root, train, unseen, steps: int, *extra) -> Path:
    cli("fit", *flow_args(root, train, unseen, "--trainer.max_steps", steps, *extra))
    return root / "checkpoints" / "last.ckpt"


def grade(ckpt: Path, judge: Path, shards: Path) -> dict:
    cli("test", *UNSEEN, "--config", CONFIGS / "digits/grade_with_judge.yaml",
        "--trainer.default_root_dir", shards, "--trainer.enable_progress_bar", "false",
        "--model.init_args.checkpoint", ckpt, "--model.init_args.output_dir", shards,
        "--model.init_args.samples_per_class", 7, "--model.init_args.shard_size", 16, "--model.init_args.batch_size", 32,
        "--model.init_args.sampler_kwargs", "{num_steps: 4}", "--model.init_args.judge.init_args.checkpoint", judge)
    return json.loads((shards / "metrics_table.json").read_text())


@pytest.mark.timeout(1800)  # eight CLI runs
def test_fit_predict_test_through_the_cli(flow_inputs, tmp_path):
    judge, cfg_ckpt, train, unseen = flow_inputs
    root = tmp_path / "flow"
    ckpt = fit(root, train, unseen, 6)
    assert load(ckpt)["global_step"] == 6
    caches = list((root / "neighbours").glob("topk_*.npz"))
    assert len(caches) == 1
    with np.load(caches[0]) as z:
        assert z["indices"].shape == (3 * 40, 5)  # 3 scales x 40 samples, k = 5
        assert (np.diff(z["distances"], axis=1) >= 0).all()

    cli("predict", *flow_args(root, train, unseen, "--ckpt_path", ckpt, "--trainer.logger", "false"))
    post = root / "post"
    for scale in UNSEEN_SCALES:
        sources = sorted((unseen / f"cfg_{scale}").glob("shard_*.npz"))
        assert sorted(p.name for p in (post / f"cfg_{scale}").glob("shard_*.npz")) == [p.name for p in sources]
        for src in sources:
            a, b = read_shard(src), read_shard(post / f"cfg_{scale}" / src.name)
            assert torch.equal(a.sample_ids, b.sample_ids) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.seeds, b.seeds) and a.value == b.value == float(scale)
            with np.load(post / f"cfg_{scale}" / src.name) as z:
                assert float(z["source_value"]) == float(scale)
                assert str(z["source_config_hash"]) == a.config_hash != str(z["config_hash"])
                moved = (b.samples - a.samples).flatten(1).norm(dim=1).numpy()
                # the stored move is measured before the uint8 rounding: it agrees within that rounding
                assert np.abs(z["displacement"] - moved).max() < 8 * (1 / 127.5)
                assert int(z["nfe"]) == 4 * 1  # Euler, 4 steps, one batch per shard
        assert (post / f"cfg_{scale}" / "moves.png").is_file()
    summary = json.loads((post / "postprocess_summary.json").read_text())
    assert set(summary["folders"]) == {f"cfg_{s}" for s in UNSEEN_SCALES}

    before, after = grade(cfg_ckpt, judge, unseen), grade(cfg_ckpt, judge, post)
    for table in (before, after):
        assert [r["value"] for r in table["rows"]] == [float(s) for s in UNSEEN_SCALES]
        for row in table["rows"]:
            assert {"fd_digits", "precision", "recall", "judge_accuracy"} <= set(row["metrics"])
    # the same samples before and after: at least one figure differs
    assert any(b["metrics"]["fd_digits"] != a["metrics"]["fd_digits"] for b, a in zip(before["rows"], after["rows"]))

    # re-running predict skips every finished shard (nothing rewritten)
    stamps = {p: p.stat().st_mtime_ns for p in post.glob("cfg_*/shard_*.npz")}
    cli("predict", *flow_args(root, train, unseen, "--ckpt_path", ckpt, "--trainer.logger", "false"))
    assert {p: p.stat().st_mtime_ns for p in post.glob("cfg_*/shard_*.npz")} == stamps
    # another flow (other weights) into the same output_dir: refused, not overwritten
    other = fit(tmp_path / "other", train, unseen, 2)
    with pytest.raises(ValueError, match="another flow"):
        cli("predict", *flow_args(root, train, unseen, "--ckpt_path", other, "--trainer.logger", "false"))


PERIODIC_CHECKPOINTS = """
trainer:
  callbacks:
    - {class_path: lightning_guidance.callbacks.ema.EMA, init_args: {decay: 0.99}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 3, save_top_k: -1, filename: "step{step:06d}",
                  auto_insert_metric_name: false}
"""


def test_resume_is_exact_and_inputs_change_the_neighbour_cache(flow_inputs, tmp_path):
    """A run resumed from its periodic checkpoint at step 3 (mid-epoch: 120 samples, batches of 16) ends exactly
    like a straight run (EMA and raw weights, optimizer state)."""
    _, _, train, unseen = flow_inputs
    (tmp_path / "callbacks.yaml").write_text(PERIODIC_CHECKPOINTS)
    periodic = ("--config", tmp_path / "callbacks.yaml", "--model.init_args.neighbour_cache_dir", tmp_path / "cache")
    straight = load(fit(tmp_path / "straight", train, unseen, 6, *periodic))
    (table,) = (tmp_path / "cache").glob("topk_*.npz")
    stamp = table.stat().st_mtime_ns
    resumed = load(fit(tmp_path / "resumed", train, unseen, 6, *periodic, "--ckpt_path",
                       tmp_path / "straight" / "checkpoints" / "step000003.ckpt"))
    assert resumed["global_step"] == straight["global_step"] == 6
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        for name, value in straight[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}/{name} differs after resume"
    for name, value in straight["optimizer_states"][0]["state"][0].items():
        assert torch.equal(value, resumed["optimizer_states"][0]["state"][0][name]), f"optimizer {name} differs"
    # the resumed run reused the neighbour table (same inputs); another k is another table, the first one kept
    assert [p.name for p in (tmp_path / "cache").glob("topk_*.npz")] == [table.name]
    assert table.stat().st_mtime_ns == stamp
    fit(tmp_path / "k6", train, unseen, 1, "--model.init_args.k", 6, "--model.init_args.neighbour_cache_dir",
        tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("topk_*.npz"))) == 2 and table.stat().st_mtime_ns == stamp


def _write(path: Path, samples: torch.Tensor, labels: torch.Tensor) -> Path:
    n = len(labels)
    write_shard(path / "shard_0000000.npz", Shard(samples, labels, torch.arange(n), torch.arange(n), 1.0, "x"))
    return path


@pytest.mark.parametrize("case", ["shape", "labels", "equal_mix", "missing"])
def test_bad_training_shards_are_one_clear_line(case, tmp_path):
    digits = DigitsDataModule(batch_size=16)
    if case == "shape":  # fractal points against the digits
        shards, real, match = [_write(tmp_path / "a", torch.randn(8, 2), torch.zeros(8, dtype=torch.long))], digits, "shape"
    elif case == "labels":  # right shape, labels the real data does not have
        shards = [_write(tmp_path / "a", torch.zeros(8, 1, 8, 8), torch.full((8,), 12))]
        real, match = digits, "another dataset"
    elif case == "equal_mix":
        a = _write(tmp_path / "a", torch.zeros(8, 2), torch.zeros(8, dtype=torch.long))
        write_shard(tmp_path / "b" / "shard_0000000.npz",
                    Shard(torch.zeros(5, 2), torch.zeros(5, dtype=torch.long), torch.arange(5), torch.arange(5), 2.0, "y"))
        shards, real, match = [a, tmp_path / "b"], Fractal2DDataModule(n_train=100, n_val=10), "different numbers"
    else:
        shards, real, match = [tmp_path / "nowhere"], digits, "not found"
    dm = GeneratedShardsDataModule([str(s) for s in shards], real)
    with pytest.raises((ValueError, FileNotFoundError), match=match) as err:
        dm.setup("fit")
    assert "\n" not in str(err.value)


def test_k_larger_than_the_real_set_and_shards_of_another_dataset_at_predict(flow_inputs, tmp_path):
    _, _, train, unseen = flow_inputs
    with pytest.raises(ValueError, match="only 1437"):
        fit(tmp_path / "big_k", train, unseen, 1, "--model.init_args.k", 5000, "--model.init_args.same_class", "false")
    with pytest.raises(ValueError, match="class 0 has only"):  # ~143 real digits per class
        fit(tmp_path / "class_k", train, unseen, 1, "--model.init_args.k", 1000, "--model.init_args.same_class", "true")
    ckpt = fit(tmp_path / "ok", train, unseen, 1)
    points = _write(tmp_path / "points", torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        cli("predict", *flow_args(tmp_path / "ok", train, unseen, "--ckpt_path", ckpt, "--trainer.logger", "false",
                                  "--data.init_args.predict_shards", f"[{points}]"))


def test_neighbours_in_the_judges_feature_space(flow_inputs, tmp_path):
    """feature_net: the judge -> the table is the judge-feature top-k (recomputed here), under another digest."""
    from lightning_guidance.data.generated import read_generated
    from lightning_guidance.metrics.judge import Judge
    from lightning_guidance.flow.neighbours import top_k_neighbours

    judge_ckpt, _, train, unseen = flow_inputs
    judge = ("--model.init_args.feature_net", "lightning_guidance.metrics.judge.Judge",
             "--model.init_args.feature_net.init_args.checkpoint", judge_ckpt)
    cache = ("--model.init_args.neighbour_cache_dir", tmp_path / "cache")
    fit(tmp_path / "pixels", train, unseen, 1, *cache)
    fit(tmp_path / "judge", train, unseen, 1, *cache, *judge)
    tables = sorted((tmp_path / "cache").glob("topk_*.npz"), key=lambda p: p.stat().st_mtime_ns)
    assert len(tables) == 2  # the space is part of the digest
    gen = read_generated([str(train / f"cfg_{s}") for s in TRAIN_SCALES])
    real = DigitsDataModule(batch_size=128, val_fraction=0.2, seed=0)
    real.setup("fit")
    real_x, real_y = real.train_set.tensors
    net = Judge(checkpoint=str(judge_ckpt))
    with torch.no_grad():
        _, expected = top_k_neighbours(net(gen.samples).numpy(), net(real_x).numpy(), 5, query_labels=gen.labels.numpy(),
                                       real_labels=real_y.numpy(), same_class=True)
    with np.load(tables[1]) as z:
        found = z["indices"]
        assert "Judge" in str(z["inputs"])
    assert (found == expected).mean() > 0.99  # batched vs whole-set forwards may reorder near-ties
    with np.load(tables[0]) as z:
        assert (z["indices"] != found).any()
