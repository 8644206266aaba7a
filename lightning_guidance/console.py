"""The shell entry point, light to import: ``python cli.py ...`` and the ``lightning-guidance`` script start here.

The command line installs its SIGTERM/SIGINT handlers (:mod:`.callbacks.stop_on_signal`) only once torch and
Lightning are imported, seconds after start-up. A SIGINT before that is one line and exit 130 here (nothing has been
written yet), not a ``KeyboardInterrupt`` traceback from deep inside an import; so is a ``KeyboardInterrupt`` that
reaches the top later (a second Ctrl-C, which stops at once).
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED = 128 + signal.SIGINT


def _stop_during_start_up(signum, frame) -> None:
    sys.stderr.write("stopped by SIGINT during start-up; nothing was written\n")
    raise SystemExit(INTERRUPTED)


def main() -> None:
    """Torch and Lightning are imported inside ``console_main`` (``cli.py`` itself is light), so the start-up handler
    stays until the command installs its own (:func:`.callbacks.stop_on_signal.install` replaces it)."""
    try:
        previous = signal.signal(signal.SIGINT, _stop_during_start_up)
    except ValueError:  # not the main thread: nothing to install
        previous = None
    try:
        from .cli import console_main

        console_main()
    except KeyboardInterrupt:
        sys.stderr.write("stopped by SIGINT; every file written is whole. Re-run the same command to continue\n")
        raise SystemExit(INTERRUPTED) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    main()
