"""What CFG training claims, checked by counting and by hand: null-class dropout at rate ``p_uncond`` (Ho & Salimans
2021, alg. 1), an untrained null class when ``p_uncond = 0``, and the EMA of the weights with its decay warm-up and
``update_every_n_steps`` (lightning_guidance/callbacks/ema.py), recomputed here from the raw weights of every step.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from helpers import CONFIGS, cli, load
from lightning_guidance.callbacks.ema import EMA
from lightning_guidance.nets import MLPDenoiser

# what RecordingMLPDenoiser saw while training, and its null-class vector at construction
SEEN_LABELS: list[torch.Tensor] = []
INITIAL_NULL: list[torch.Tensor] = []


class RecordingMLPDenoiser(MLPDenoiser):
    """The shipped toy denoiser, recording the class ids of every training batch (used in YAML as
    ``test_cfg_training.RecordingMLPDenoiser``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        INITIAL_NULL.append(self.class_embed.table.weight[self.num_classes].detach().clone())

    def forward(self, x, t, y=None):
        if self.training:
            SEEN_LABELS.append(y.detach().clone())
        return super().forward(x, t, y)


def fit_toy(root, p_uncond: float, steps: int = 12) -> dict:
    SEEN_LABELS.clear()
    INITIAL_NULL.clear()
    cli("fit", "--config", CONFIGS / "toy/cfg_1d.yaml", "--trainer.default_root_dir", root,
        "--trainer.max_steps", steps, "--trainer.enable_progress_bar", "false",
        "--model.init_args.net.class_path", f"{__name__}.RecordingMLPDenoiser",
        "--model.init_args.net.init_args.hidden_dim", "16", "--model.init_args.p_uncond", p_uncond,
        "--model.init_args.warmup_steps", "0",
        "--data.init_args.n_train", "4096", "--data.init_args.batch_size", "1024")
    return load(root / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("p_uncond", [0.1, 0.3])
def test_null_class_dropout_rate_is_p_uncond(tmp_path, p_uncond):
    """The share of null labels (id 2) in the training batches is ``p_uncond`` within 4 binomial standard errors,
    and a dropped label becomes the null id, never another class. Catches ``p_uncond`` ignored (no null label),
    a dropout of the wrong rate (e.g. ``1 - p_uncond``), and dropout replaced by a random class."""
    fit_toy(tmp_path, p_uncond)
    labels = torch.cat(SEEN_LABELS)
    n = len(labels)
    assert n == 12 * 1024
    share = (labels == 2).double().mean().item()
    assert abs(share - p_uncond) < 4 * (p_uncond * (1 - p_uncond) / n) ** 0.5, share
    # the data's labels are balanced 0/1: what is not dropped keeps its class (both classes stay near (1 - p) / 2)
    for k in (0, 1):
        assert abs((labels == k).double().mean().item() - (1 - p_uncond) / 2) < 0.03


def test_p_uncond_zero_leaves_the_null_class_untrained(tmp_path):
    """With ``p_uncond = 0`` no batch holds the null label and its class vector is bit-for-bit the initial one,
    while the class vectors that trained moved; with ``p_uncond = 0.3`` the null vector moves too. Catches a null
    class trained whatever ``p_uncond`` says, or one never trained (the second half)."""
    for p_uncond, null_trains in ((0.0, False), (0.3, True)):
        ckpt = fit_toy(tmp_path / f"p{p_uncond}", p_uncond)
        raw = ckpt["current_model_state"]["net.class_embed.table.weight"]
        initial = INITIAL_NULL[0]
        assert bool((torch.cat(SEEN_LABELS) == 2).any()) == null_trains
        assert torch.equal(raw[2], initial) != null_trains
        assert ckpt["global_step"] == 12


# ---- EMA by hand ----------------------------------------------------------------------------------------------


class TinyRegression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return ((self.lin(x) - 1.0) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


class RawWeights(Callback):
    """The raw weights after every optimizer step."""

    def __init__(self):
        self.after_step: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def hand_ema(raw: list[dict], decay: float, warmup: bool, every: int) -> dict:
    """The EMA the callback documents: updated after optimizer steps 1, 1 + every, 1 + 2 every, ...; the first
    update copies the weights, the update after n earlier ones uses ``min(decay, (1 + n) / (10 + n))``."""
    average, n = None, 0
    for step, weights in enumerate(raw):
        if step % every:
            continue
        if average is None:
            average = {k: v.clone() for k, v in weights.items()}
        else:
            d = min(decay, (1 + n) / (10 + n)) if warmup else decay
            average = {k: average[k] + (weights[k] - average[k]) * (1 - d) for k in average}
        n += 1
    return average


@pytest.mark.parametrize("decay,warmup,every", [(0.9, True, 1), (0.9, True, 3), (0.5, False, 2), (0.95, False, 1)])
def test_ema_weights_are_the_hand_computed_average(tmp_path, decay, warmup, every):
    """The checkpoint's ``state_dict`` (the EMA) equals the average computed here from the raw weights of every
    step. Catches a decay that is not warmed up (or warmed up when ``warmup=False``), ``update_every_n_steps``
    ignored or off by one, and the EMA's ``1 - decay`` weight swapped with ``decay``."""
    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 3)), batch_size=8)
    raw = RawWeights()
    trainer = L.Trainer(max_steps=8, callbacks=[EMA(decay=decay, warmup=warmup, update_every_n_steps=every), raw],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(TinyRegression(), data)
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    ckpt = load(tmp_path / "end.ckpt")
    assert len(raw.after_step) == 8
    expected = hand_ema(raw.after_step, decay, warmup, every)
    for name, value in expected.items():
        torch.testing.assert_close(ckpt["state_dict"][name], value, rtol=1e-6, atol=1e-7)
        # and the raw weights are kept for resuming
        torch.testing.assert_close(ckpt["current_model_state"][name], raw.after_step[-1][name], rtol=0, atol=0)
    # the alternatives differ from it by far more than the tolerance, so the comparison can tell them apart
    other = hand_ema(raw.after_step, decay, not warmup, every)
    assert max((other[k] - expected[k]).abs().max().item() for k in expected) > 1e-3


def test_ema_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\), got 1.0"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="update_every_n_steps must be >= 1, got 0"):
        EMA(update_every_n_steps=0)
