"""Run a script as from the shell, but send this process a real signal just before the Nth
call of a function: a deterministic Ctrl-C or SIGTERM at a chosen point (mid-epoch, during
decoding), where a signal timed from outside could land anywhere or after the run ended.

    python tests/interrupt_at.py SIGNAL MODULE.FUNCTION N SCRIPT [ARGS...]
e.g. python tests/interrupt_at.py SIGTERM kd.engine.check_interrupt 11 train_student.py ...
(check_interrupt runs once after every optimizer step, so N = 11 is right after step 11).
"""
import importlib
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    sig, target, n, script, *args = sys.argv[1:]
    module_name, function_name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original, calls = getattr(module, function_name), [0]

    def wrapped(*a, **kw):
        calls[0] += 1
        if calls[0] == int(n):
            os.kill(os.getpid(), getattr(signal, sig))
        return original(*a, **kw)
    setattr(module, function_name, wrapped)
    sys.argv = [script, *args]
    runpy.run_path(str(ROOT / script), run_name="__main__")


if __name__ == "__main__":
    main()
