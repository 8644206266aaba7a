"""The shell entry point, light to import: ``python cli.py ...`` and the ``lightning-guidance`` script start here.

The command line installs its SIGTERM/SIGINT handlers (:mod:`.callbacks.stop_on_signal`) only once torch and
Lightning are imported, seconds after start-up. A SIGINT or SIGTERM before that is one line and exit 130 or 143 here
(nothing has been written yet), not a ``KeyboardInterrupt`` traceback from deep inside an import (or a silent death);
so is a ``KeyboardInterrupt`` that reaches the top later (a second Ctrl-C, which stops at once).
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED = 128 + signal.SIGINT


def _stop_during_start_up(signum, frame) -> None:
    sys.stderr.write(f"stopped by {signal.Signals(signum).name} during start-up; nothing was written\n")
    raise SystemExit(128 + signum)


def main() -> None:
    """Torch and Lightning are imported inside ``console_main`` (``cli.py`` itself is light), so the start-up handler
    (SIGINT and SIGTERM) stays until the command installs its own (:func:`.callbacks.stop_on_signal.install` and the
    study's replace it)."""
    try:
        previous = {s: signal.signal(s, _stop_during_start_up) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: nothing to install
        previous = None
    try:
        from .cli import console_main

        console_main()
    except KeyboardInterrupt:
        sys.stderr.write("stopped by SIGINT; every file written is whole. Re-run the same command to continue\n")
        raise SystemExit(INTERRUPTED) from None
    finally:
        for s, handler in (previous or {}).items():
            signal.signal(s, handler)


if __name__ == "__main__":
    main()
