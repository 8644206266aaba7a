"""Study presets: how much of each experiment a run does (training steps, samples, scales, ablation lists).

``tiny`` is the README's first command (≤ 10 minutes on 2 CPU cores, one training seed), ``small`` numbers worth
reading (≤ 90 minutes on 2 CPU cores, 3 training seeds), ``full`` and ``full-cifar10`` the image sections on MNIST or
CIFAR-10 from ``data/`` on a GPU. ``micro`` is the tests' (``tests/test_study*.py``): every section, figure and claim
in seconds per step, numbers that mean nothing. A preset only sets sizes: every experiment's design (models, samplers, guidance terms) is the shipped config
it starts from. Which section reads which field: each ``Section.preset_fields`` (``cli.py study --list``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    # ---- 1D two-class mixture (classifier-centric study §D.3)
    mus: tuple[float, ...] = (1.0, 0.5, 0.1)
    toy_train_steps: int = 1200  # x 3 mus x 3 training seeds in small: the section's budget (~1700 CPU-s)
    toy_classifier_steps: int = 800
    toy_batch_size: int = 1024
    toy_samples_per_class: int = 500
    toy_num_steps: int = 50  # DDIM steps
    toy_cfg_scales: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    toy_cg_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    toy_trajectories_per_class: int = 12
    # ---- 2D fractal (Karras et al. 2024 toy; exact benchmark)
    fractal_train_steps: int = 3000
    fractal_classifier_steps: int = 1000
    fractal_samples_per_class: int = 500
    fractal_ddim_steps: int = 50
    fractal_ddpm_steps: int = 100
    fractal_cfg_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)
    fractal_guidance_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    fractal_cfg_plus_cg_scales: tuple[float, ...] = (1.5, 2.0, 3.0)
    fractal_divergences: tuple[str, ...] = ("reverse_kl", "forward_kl", "js", "hellinger")
    fractal_reference_per_class: int = 2000  # exact samples for the sliced Wasserstein distance, spread and recall
    fractal_variant_scales: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0)  # the modern CFG variants
    fractal_autoguide_bad_steps: int = 300  # autoguidance's worse model (configs/fractal/cfg_autoguide_bad.yaml)
    fractal_cg_flow_scales: tuple[float, ...] = (1.0, 10.0)  # CG of the unconditional model, Fig. 4: weak and large
    fractal_flow_steps: int = 1200  # each fractal post-processor (configs/fractal/flow_*.yaml)
    fractal_flow_euler_steps: int = 0  # 0: the configs' integrator (dopri5); n: Euler with n steps
    # ---- digits (CFG, EluCD ablations, calibration)
    digits_train_steps: int = 1500
    digits_classifier_steps: int = 1000
    digits_clean_steps: int = 600
    digits_judge_steps: int = 600
    digits_model_channels: int = 32
    digits_samples_per_class: int = 20
    digits_ddim_steps: int = 25
    digits_ddpm_steps: int = 50
    # CFG's U-shape (Ho & Salimans: best at w = 0.1-0.3, i.e. s = 1.1-1.3): s in [1, 2] by 0.1, then coarse to 6
    cfg_fine_scales: tuple[float, ...] = (*(round(1 + x / 10, 1) for x in range(11)), 2.5, 3.0, 4.0, 5.0, 6.0)
    cfg_samples_per_class: int = 40  # the CFG sweep's samples (the other runs: digits_samples_per_class)
    # every classifier-guided run sweeps these guidance scales (0: the unguided baseline, sampled by the plain CG
    # runs only) and is compared best against best, the best scale chosen on the other half of the sample ids
    cg_scales: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    tau_ratios: tuple[float, ...] = (1.0, 0.7, 0.5, 0.3)
    sine_gammas: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4)
    cfg_plus_cg_scales: tuple[float, ...] = (1.2, 1.5, 2.0, 3.0)  # CFG scales s (the term needs s != 1)
    temperatures: tuple[float, ...] = (0.25, 0.4, 0.6, 0.8, 1.25, 1.6, 2.5, 4.0, 6.0)  # the noisy guide's (section 8)
    divergences: tuple[str, ...] = ("reverse_kl", "forward_kl", "js", "hellinger")
    calibration_epochs: int = 20
    ece_time_points: int = 5  # time buckets of the integral ECE (section 8)
    ece_samples: int = 360  # held-out images, each noised into every bucket
    # ---- digits post-processor (section 7: configs/digits/flow.yaml, one flow for all scales)
    flow_train_scales: tuple[float, ...] = (1.0, 2.0, 3.0)
    flow_unseen_scales: tuple[float, ...] = (2.25, 2.5, 2.75)
    flow_per_scale: float = 2.5  # the unseen scale at which a flow trained on that scale alone is compared
    flow_train_samples_per_class: int = 100
    flow_steps: int = 1500
    flow_euler_steps: int = 20
    flow_resamples: int = 1000  # the bootstrap resamples of section 7's intervals (one draw shared by every set)
    # ---- replication: the training seeds of every model a claim rests on (the judges are instruments: one seed);
    # sampling noise is each sample's own seed (seed + id), the same for every training seed and method
    training_seeds: tuple[int, ...] = (0, 1, 2)
    # ---- execution
    threads_per_step: int = 1  # torch threads of each step: part of what a run is (training differs with it)
    accelerator: str = "cpu"
    dataset: str = "digits"  # the image family: digits (embedded), mnist or cifar10 (under data/, see data/README.md)
    # ---- --launcher slurm: every step's job resources unless the study config says otherwise (sbatch's names)
    slurm: dict = field(default_factory=lambda: {"cpus_per_task": 2, "time": "04:00:00"})

    def image_datamodule(self):
        """The DataModule class of the image sections, or None for the embedded digits (which need no edit)."""
        if self.dataset == "digits":
            return None
        from ..data.image_folders import CIFAR10DataModule, MNISTDataModule

        modules = {"mnist": MNISTDataModule, "cifar10": CIFAR10DataModule}
        if self.dataset not in modules:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose digits, {', '.join(modules)}")
        return modules[self.dataset]

    def missing_data(self) -> list[str]:
        """The data paths (under ``data/``) this preset reads that are not on disk: a missing folder, not its files."""
        module = self.image_datamodule()
        paths = module(root="data").required_paths() if module is not None else []
        return [str(p) for p in paths if not p.exists() and not any(q in p.parents and not q.exists() for q in paths)]


SMALL = Preset(
    name="small",
    summary="numbers worth reading: every section with its full lists (sized for 90 minutes on an idle 2-core CPU)",
)

TINY = replace(
    SMALL, name="tiny",
    summary="the README's first command: every section at its smallest (sized for 10 minutes on an idle 2-core CPU)",
    toy_train_steps=550, toy_classifier_steps=250, toy_samples_per_class=200, toy_cfg_scales=(1.0, 2.0, 4.0),
    toy_cg_scales=(0.0, 1.0, 4.0), toy_num_steps=40,
    fractal_train_steps=1200, fractal_classifier_steps=300, fractal_samples_per_class=250,
    fractal_cfg_scales=(1.0, 2.0, 4.0), fractal_guidance_scales=(0.0, 1.0, 4.0), fractal_cfg_plus_cg_scales=(2.0,),
    fractal_divergences=("js",), fractal_ddpm_steps=50, fractal_ddim_steps=40,
    digits_train_steps=800, digits_classifier_steps=400, digits_clean_steps=300, digits_judge_steps=300,
    digits_model_channels=16, digits_samples_per_class=10, digits_ddim_steps=15, digits_ddpm_steps=25,
    cfg_fine_scales=(1.0, 1.2, 1.5, 2.0, 3.0, 6.0), cfg_samples_per_class=10, training_seeds=(0,),
    cg_scales=(0.0, 1.0, 2.0), tau_ratios=(1.0, 0.5), temperatures=(2.0,),
    sine_gammas=(0.0, 0.3), cfg_plus_cg_scales=(1.5, 2.0), divergences=("js",), calibration_epochs=4,
    ece_time_points=4, ece_samples=200, slurm={"cpus_per_task": 2, "time": "01:00:00"},
    fractal_variant_scales=(2.0, 4.0), fractal_autoguide_bad_steps=150, fractal_flow_steps=150,
    fractal_flow_euler_steps=10, flow_train_samples_per_class=5, flow_steps=40, flow_euler_steps=5,
    flow_resamples=200,
)

MICRO = replace(
    TINY, name="micro", summary="tests only: every section and figure, meaningless numbers, seconds per step",
    mus=(1.0, 0.1), toy_train_steps=20, toy_classifier_steps=10, toy_batch_size=256, toy_samples_per_class=20,
    toy_num_steps=5, toy_trajectories_per_class=3,
    fractal_train_steps=20, fractal_classifier_steps=10, fractal_samples_per_class=10, fractal_ddpm_steps=5,
    fractal_ddim_steps=5, fractal_reference_per_class=50, fractal_autoguide_bad_steps=5, fractal_flow_steps=5,
    fractal_flow_euler_steps=2,
    digits_train_steps=4, digits_classifier_steps=4, digits_clean_steps=4, digits_judge_steps=4,
    digits_model_channels=8, digits_samples_per_class=2, digits_ddim_steps=3, digits_ddpm_steps=3,
    cfg_fine_scales=(1.0, 1.5, 2.0), cfg_samples_per_class=2, calibration_epochs=1, ece_time_points=2, ece_samples=20,
    slurm={"cpus_per_task": 1, "time": "00:30:00"},
    flow_train_samples_per_class=2, flow_steps=3, flow_euler_steps=2, flow_resamples=50,
)

FULL = replace(
    SMALL, name="full", summary="the image sections on MNIST (data/MNIST/raw) on a GPU; toy sections as in small",
    digits_train_steps=100000, digits_classifier_steps=30000, digits_clean_steps=20000, digits_judge_steps=10000,
    digits_model_channels=64, digits_samples_per_class=1000, cfg_samples_per_class=1000, digits_ddim_steps=50, digits_ddpm_steps=250,
    calibration_epochs=10, ece_samples=2000, flow_train_samples_per_class=1000, flow_steps=20000,
    accelerator="gpu", dataset="mnist",
    slurm={"cpus_per_task": 8, "time": "24:00:00", "sbatch": ["--gpus-per-node=1"]},
)

FULL_CIFAR10 = replace(
    FULL, name="full-cifar10",
    summary="the image sections on CIFAR-10 (data/cifar-10-batches-py) on a GPU; toy sections as in small",
    digits_model_channels=128, dataset="cifar10",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (MICRO, TINY, SMALL, FULL, FULL_CIFAR10)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
