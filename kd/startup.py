"""Imported first by every script, before the imports that take seconds (torch, pandas): a
Ctrl-C or SIGTERM among them ends the process with one line and exit status 130, like one
during a run (kd.cli.run_cli, or sweep.py, installs the script's own handlers once the
imports are done), instead of a traceback from inside a library or a silent death. Only
when a script is the program: a test process that imports one keeps its own handlers."""
import os
import signal
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _exit_quietly(signum, frame):
    print("interrupted while starting: nothing was written", file=sys.stderr, flush=True)
    # Not sys.exit: its SystemExit, raised inside whatever import is running, is caught by
    # libraries that catch everything, and the script went on to train. Nothing is written
    # yet, so there is nothing for exit handlers to finish.
    os._exit(130)


_program = getattr(sys.modules.get("__main__"), "__file__", None)
if _program and Path(_program).resolve().parent == PROJECT_ROOT:
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, _exit_quietly)
