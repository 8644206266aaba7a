"""The command line read one way: LightningCLI's subcommands, and where an argument list names its config files."""

from __future__ import annotations

from collections.abc import Sequence

#: the LightningCLI subcommands a study step or a SLURM job runs (``cli.py`` adds ``study``)
COMMANDS = ("fit", "validate", "test", "predict")
CONFIG_FLAGS = ("--config", "-c")


def config_arguments(argv: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(index, number of items, file)`` of every ``--config FILE``, ``-c FILE`` and ``--config=FILE``, in order."""
    found = []
    for i, arg in enumerate(argv):
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            found.append((i, 2, str(argv[i + 1])))
        elif str(arg).startswith("--config="):
            found.append((i, 1, str(arg).split("=", 1)[1]))
    return found


def config_files(argv: Sequence[str]) -> list[str]:
    """The config files an argument list gives, in the order LightningCLI merges them."""
    return [value for _, _, value in config_arguments(argv)]


def last_value(argv: Sequence[str], flag: str) -> str | None:
    """The value the last ``flag VALUE`` or ``flag=VALUE`` gives (what the parser keeps), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif str(arg).startswith(flag + "="):
            value = str(arg).split("=", 1)[1]
    return value


def without_options(argv: Sequence[str], with_value: Sequence[str] = (), flags: Sequence[str] = ()) -> list[str]:
    """``argv`` less each ``--opt VALUE`` / ``--opt=VALUE`` of ``with_value`` and each flag of ``flags`` (e.g. what a
    job that runs the same command on its own is given)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in with_value:
            skip = True
        elif not any(arg.startswith(f"{opt}=") for opt in with_value) and arg not in flags:
            out.append(arg)
    return out
