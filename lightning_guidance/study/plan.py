"""The study's plan: its steps (``launch.steps.Step``: one ``cli.py fit | validate | test | predict`` call each, a
shipped config plus edits), built with paths under the run's folder and sizes from the preset, one per training seed
for the models a claim rests on. The shipped configs are read from the plan's configs root (:func:`configs_root`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..launch.steps import Step, merge

# where a sampling config keeps its sweep values (one place to change if the config layout moves)
SWEEP_VALUES = "model.init_args.sweep.values"


def term(index: int = 0) -> str:
    """The dotted path of guidance term ``index`` of a sampling config."""
    return f"model.init_args.sweep.terms.{index}"


def guide_checkpoint(index: int = 0) -> str:
    return f"{term(index)}.init_args.classifier.init_args.checkpoint"


def seeded(name: str, seed: int) -> str:
    """The name of a step (or folder) of training seed ``seed``: ``name-s<seed>``; seed 0 keeps ``name``, so a one-seed
    preset plans the steps it always did."""
    return name if seed == 0 else f"{name}-s{seed}"


def configs_root(study_config: str | Path | None = None) -> Path:
    """The folder of shipped configs: the one holding the study config's folder (``configs/digits/study.yaml`` ->
    ``configs``), else ``./configs``, else the one beside the package (a checkout)."""
    candidates = [Path(study_config).parent.parent] if study_config else []
    candidates += [Path("configs"), Path(__file__).resolve().parents[2] / "configs"]
    for root in candidates:
        if (root / "digits" / "cfg.yaml").is_file():
            return root
    raise FileNotFoundError(f"the study's configs are not in {' nor '.join(str(c) for c in candidates)}: pass "
                            "--config <checkout>/configs/digits/study.yaml (the configs root is its folder's parent)")


# ---- step builders ------------------------------------------------------------------------------------------------
class Plan:
    """Collects the steps of the chosen sections (each step once, in dependency order); ``section`` is the key of the
    section planning now (its steps carry it)."""

    def __init__(self, preset, root: Path, configs: Path):
        self.preset, self.root, self.configs = preset, Path(root), Path(configs)
        self.steps: dict[str, Step] = {}
        self.section = ""

    def add(self, step: Step) -> Step:
        if step.name not in self.steps:
            missing = [n for n in step.needs if n not in self.steps]
            if missing:
                raise ValueError(f"step {step.name} needs {missing}, which are not planned before it")
            self.steps[step.name] = step
        return self.steps[step.name]

    def dir(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    def config(self, name: str) -> str:
        return str(self.configs / name)

    def configs_of(self, config: str | tuple[str, ...]) -> list[str]:
        """The files of a shipped config, or of several combined in order (``--config a --config b``: a dataset's
        ``sampling.yaml`` and a ``guidance/`` file)."""
        return [self.config(c) for c in ((config,) if isinstance(config, str) else config)]

    def shipped(self, config: str | tuple[str, ...]) -> dict:
        """A shipped config as it is on disk (several: merged in order, ``${...}`` left as written)."""
        out: dict = {}
        for path in self.configs_of(config):
            out = merge(out, yaml.safe_load(Path(path).read_text()) or {})
        return out

    def seed_edits(self, config: str | tuple[str, ...], seed: int) -> dict:
        """Training seed ``seed``: the config's ``seed_everything`` and its model's ``noise_seed`` offset by ``seed``
        (seed 0 is the shipped config). The data seed is the train/held-out split, the same for every model and seed
        (a model of another split would have trained on the images it is graded against), so it is not varied."""
        if seed == 0:
            return {}
        shipped = self.shipped(config)
        model = (shipped.get("model") or {}).get("init_args") or {}
        e = {"seed_everything": int(shipped.get("seed_everything") or 0) + seed}
        if "noise_seed" in model:
            e["model.init_args.noise_seed"] = int(model["noise_seed"]) + seed
        return e

    def fit(self, name: str, config: str | tuple[str, ...], folder: str, max_steps: int | None,
            edits: dict | None = None, needs: list[str] | None = None, product: str = "checkpoints/last.ckpt",
            seed: int = 0) -> Step:
        """``fit`` of ``config`` (training seed ``seed``: step ``seeded(name, seed)`` in ``seeded(folder, seed)``)."""
        name, root = seeded(name, seed), self.dir(seeded(folder, seed))
        e = {"trainer.default_root_dir": root, "trainer.enable_progress_bar": False,
             "trainer.accelerator": self.preset.accelerator, **self.seed_edits(config, seed)}
        if max_steps is not None:
            e["trainer.max_steps"] = max_steps  # the last step writes last.ckpt whatever the config's period
            e["trainer.callbacks[ModelCheckpoint].init_args.every_n_train_steps"] = max_steps
        e.update(edits or {})
        return self.add(Step(name, self.section, "fit", self.configs_of(config), e, list(needs or []),
                             str(Path(root) / product), resume=True))

    def sample(self, name: str, config: str | tuple[str, ...], folder: str, checkpoint: str, edits: dict,
               needs: list[str], seed: int = 0) -> Step:
        """``predict`` of ``config`` from the models of training seed ``seed`` (step ``seeded(name, seed)``, folder
        ``seeded(folder, seed)``; ``checkpoint`` and ``needs`` name seed 0's steps and are mapped to ``seed``'s).
        Sampling noise is the config's per-sample seeds (``seed + id``), the same for every training seed."""
        name, out = seeded(name, seed), self.dir(seeded(folder, seed))
        checkpoint, needs = seeded(checkpoint, seed), [seeded(n, seed) if seeded(n, seed) in self.steps else n
                                                       for n in needs]
        e = {"trainer.default_root_dir": out, "trainer.accelerator": self.preset.accelerator,
             "trainer.enable_progress_bar": False, "model.init_args.output_dir": out,
             "model.init_args.checkpoint": self.product(checkpoint), **edits}
        return self.add(Step(name, self.section, "predict", self.configs_of(config), e, needs,
                             str(Path(out) / "manifest.json")))

    def grade(self, sample: Step, judge: str, data_edits: dict, by: str = "") -> Step:
        """``test`` of a sampling step's shards with the judge (same sampling config: the shards' hash matches): step
        ``grade-<sample>`` writing beside the shards; with ``by`` (another judge), step ``grade-<by>-<sample>`` writing
        to ``<shards>/graded-<by>/``."""
        out = sample.out_dir / f"graded-{by}" if by else sample.out_dir
        e = {**sample.edits, "model.init_args.judge.init_args.checkpoint": self.product(judge), **data_edits,
             **({"model.init_args.grade_dir": str(out)} if by else {})}
        return self.add(Step(f"grade-{by + '-' if by else ''}{sample.name.removeprefix('sample-')}", self.section,
                             "test", [*sample.configs, self.config("digits/grade_with_judge.yaml")], e,
                             [*sample.needs, sample.name, judge], str(out / "metrics_table.json")))

    def flow(self, name: str, config: str | tuple[str, ...], folder: str, max_steps: int, edits: dict,
             needs: list[str]) -> tuple[Step, Step]:
        """A rectified-flow post-processor: ``fit`` of ``config`` and the ``predict`` that applies the trained flow to
        the config's ``predict_shards`` (same config and edits, ``ckpt_path`` the fit's last checkpoint); the predict's
        product is ``<output_dir>/postprocess_summary.json``, its shards ``<output_dir>/<source folder>/``."""
        out = self.dir(folder, "postprocessed")
        fit = self.fit(name, config, folder, max_steps, {"model.init_args.output_dir": out, **edits}, needs=needs)
        e = {**fit.edits, "ckpt_path": fit.product, "trainer.logger": False}
        e.pop("trainer.max_steps", None)
        post = self.add(Step(f"{name}-postprocess", self.section, "predict", list(fit.configs), e, [*needs, name],
                             str(Path(out) / "postprocess_summary.json")))
        return fit, post

    def product(self, step_name: str) -> str:
        return self.steps[step_name].product
