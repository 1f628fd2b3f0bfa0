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
_interrupted = False


def _exit_quietly(signum, frame):
    global _interrupted
    _interrupted = True
    print("interrupted while starting: nothing was written", file=sys.stderr, flush=True)
    sys.exit(130)


def exit_if_interrupted():
    """Exit 130 where an interrupt came while starting but its SystemExit was caught by an
    import that catches everything (the script went on to train): called by run_cli and
    sweep.py before they start work."""
    if _interrupted:
        sys.exit(130)


def _interrupted_then_failed(kind, value, traceback):
    # The swallowed interrupt left a module half imported, and a later line failed on it:
    # the interrupt's line stands for the traceback. The stack has unwound, its cleanup done.
    if not _interrupted:
        return sys.__excepthook__(kind, value, traceback)
    sys.stdout.flush()
    os._exit(130)  # an exception raised in an excepthook is printed, not obeyed


_program = getattr(sys.modules.get("__main__"), "__file__", None)
if _program and Path(_program).resolve().parent == PROJECT_ROOT:
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, _exit_quietly)
    sys.excepthook = _interrupted_then_failed
