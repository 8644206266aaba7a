"""Command line: ``lightning-guidance fit|validate|test|predict --config ...`` (LightningCLI) and ``... study``.

This module imports no Lightning: the top-level ``--help``, a missing or unknown subcommand and a missing config file
are answered at once; the suite's LightningCLI (:mod:`lightning_guidance.launch.lightning_cli`) is imported when a
subcommand runs. Every error of use is one line (:func:`console_main`); ``--debug`` (or ``LG_TRACEBACK=1``) shows
the parser's whole message or the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .io.instantiate import nearest_name
from .io.atomic import DiskFullError
from .launch.arguments import config_files
from .launch.config_errors import UsageError

#: the subcommands and what each does (the top-level help, and the errors that list them)
SUBCOMMANDS = {
    "fit": "train a model (CFGDiffusion, Classifier, ...): fit --config configs/digits/cfg.yaml [--ckpt_path last]",
    "validate": "one validation epoch of a model or checkpoint",
    "test": "grade: a folder of samples with a grading config, or a classifier on its test split",
    "predict": "sample: shards of samples over a guidance sweep (SamplingModule), or post-process them",
    "study": "the embedded study, one report: study --config configs/digits/study.yaml [--preset tiny|small|full]",
}
DEBUG_FLAG = "--debug"


def program() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "cli.py"
    return "cli.py" if name in ("", "-c", "__main__.py") else name


def top_level_help() -> str:
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, what in SUBCOMMANDS.items())
    return (f"usage: {program()} {{{','.join(SUBCOMMANDS)}}} [--config FILE ...] [options]\n\n"
            "Train, guide, sample, post-process and grade class-conditional diffusion models (LightningCLI), or run "
            "the study.\n\n"
            f"subcommands:\n{rows}\n\n"
            f"{program()} <subcommand> --help lists its options; e.g. fit --model.help CFGDiffusion shows a module's "
            "arguments.\nErrors are one line; --debug (or LG_TRACEBACK=1) shows the full message or traceback.\n")


def check_subcommand(argv: list[str]) -> None:
    """The first argument must be a subcommand (or an option of the top-level parser): else one line listing them."""
    names = ", ".join(SUBCOMMANDS)
    if not argv:
        raise UsageError(f"give a subcommand: {names} (e.g. {program()} fit --config configs/digits/cfg.yaml; "
                         f"--help for more)")
    first = argv[0]
    if first.startswith("-") or first in SUBCOMMANDS:
        return
    near = nearest_name(first, SUBCOMMANDS)
    hint = f"did you mean {near}? " if near else ""
    raise UsageError(f"unknown subcommand {first!r}: {hint}the subcommands are {names}")


def check_config_files(argv: list[str]) -> None:
    """Each ``--config`` file must exist and be a YAML mapping: else one line naming it (not a parser traceback)."""
    import yaml

    for value in config_files(argv):
        if value.lstrip().startswith(("{", "[")):  # a config given inline
            continue
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text(errors="replace")
        if not text.strip():
            raise ValueError(f"config file {path} is empty: give a YAML mapping (see configs/)")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"config file {path} is not valid YAML{where}: "
                             f"{getattr(err, 'problem', None) or type(err).__name__}") from err
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} is not a YAML mapping of settings (it holds a "
                             f"{type(data).__name__}): see configs/ for the form")


def main(args: list[str] | None = None) -> None:
    """Run a subcommand; errors surface as the exception that explains them (a config the parser refused: a
    :class:`UsageError` of one line naming the key).

    SIGTERM/SIGINT stop the run at a safe point; it then exits with ``128 + signal``."""
    argv = [a for a in (sys.argv[1:] if args is None else args) if a != DEBUG_FLAG]
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(top_level_help())
        return
    check_subcommand(argv)
    check_config_files(argv)
    if argv[0] == "study":
        from .study import main as study_main

        code = study_main(argv[1:], run_in_process=main)
        if code:
            raise SystemExit(code)
        return
    from jsonargparse import ArgumentError
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .callbacks import stop_on_signal
    from .launch.config_errors import explain_parser_error
    from .launch.lightning_cli import run_lightning_cli

    previous = stop_on_signal.install()
    try:
        run_lightning_cli(argv)
    except SIGTERMException as stop:
        raise SystemExit(_signal_exit(stop)) from None
    except ArgumentError as err:
        raise UsageError(explain_parser_error(str(err), argv), detail=str(err)) from None
    except Exception as err:  # noqa: BLE001 - re-raised unchanged, just unwrapped
        raise _root_cause(err) from None
    finally:
        stop_on_signal.restore(previous)
    if stop_on_signal.received() is not None:  # the signal came as the run was ending: it ended whole
        raise SystemExit(_signal_exit(None))


def _root_cause(err: BaseException) -> BaseException:
    """jsonargparse wraps an error raised while building a class in its own ValueError; find the original."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = err.__cause__ or err.__context__
        if inner is None or not isinstance(err, ValueError) or "validate against any of the Union" not in str(err) \
                and "Problem with given class_path" not in str(err):
            return err
        err = inner
    return err


def _signal_exit(stop) -> int:
    import signal

    from .callbacks import stop_on_signal

    signum = stop_on_signal.received() or signal.SIGTERM
    sys.stderr.write(f"stopped by {signal.Signals(signum).name}; every file written is whole. Re-run the same "
                     "command to continue (fit: add --ckpt_path last; predict skips finished shards)\n")
    return 128 + int(signum)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are errors of use (one line), not bugs; Lightning's only when it is loaded."""
    kinds: list[type[BaseException]] = [FileNotFoundError, ValueError, TypeError, FloatingPointError, ImportError]
    launch = sys.modules.get("lightning_guidance.launch.slurm")
    if launch is not None:
        kinds.append(launch.SubmitError)
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")
    if exceptions is not None:
        kinds.append(exceptions.MisconfigurationException)
    return tuple(kinds)


def console_main() -> None:
    """The shell entry point: a one-line message instead of a traceback for errors of use."""
    debug = DEBUG_FLAG in sys.argv[1:] or bool(os.environ.get("LG_TRACEBACK"))
    try:
        main()
    except UsageError as err:
        if debug and err.detail:
            sys.stderr.write(err.detail.rstrip() + "\n")
        sys.exit(f"error: {err}")
    except DiskFullError as err:
        sys.exit(f"error: {err}")
    except Exception as err:  # noqa: BLE001 - only the kinds that are errors of use are turned into one line
        if debug or not isinstance(err, _user_errors()):
            raise
        sys.exit(f"error: {type(err).__name__}: {err} (--debug: the traceback)")


if __name__ == "__main__":
    console_main()
