"""Run a script as from the shell, but send this process a real signal just before the Nth
call of a function: a deterministic Ctrl-C or SIGTERM at a chosen point (mid-epoch, during
decoding), where a signal timed from outside could land anywhere or after the run ended.

    python tests/interrupt_at.py SIGNAL MODULE.FUNCTION N SCRIPT [ARGS...]
e.g. python tests/interrupt_at.py SIGTERM kd.engine.check_interrupt 11 train_student.py ...
(check_interrupt runs once after every optimizer step, so N = 11 is right after step 11).
`import:MODULE` as the function (N = 1) sends it as the script first imports MODULE: a Ctrl-C
during the seconds its imports take. `lost:MODULE.FUNCTION` delivers it inside a finalizer
(__del__), where Python prints the handler's KeyboardInterrupt and drops it, as it does when
a signal lands while a library closes a figure or a file.
"""
import importlib
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class SignalOnImport:
    """A finder that sends the signal when `name` is first imported, and finds nothing."""
    def __init__(self, name, sig):
        self.name, self.sig = name, sig

    def find_spec(self, fullname, path, target=None):
        if fullname == self.name:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), self.sig)
        return None


class SignalInFinalizer:
    def __init__(self, sig):
        self.sig = sig

    def __del__(self):
        os.kill(os.getpid(), self.sig)
        for _ in range(1000):  # the handler runs at this loop's first turn, inside __del__
            pass


def main():
    sig, target, n, script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    if target.startswith("import:"):
        sys.meta_path.insert(0, SignalOnImport(target.removeprefix("import:"),
                                               getattr(signal, sig)))
        runpy.run_path(str(ROOT / script), run_name="__main__")
        return
    lost = target.startswith("lost:")
    module_name, function_name = target.removeprefix("lost:").rsplit(".", 1)
    module = importlib.import_module(module_name)
    original, calls = getattr(module, function_name), [0]

    def wrapped(*a, **kw):
        calls[0] += 1
        if calls[0] == int(n):
            if lost:
                SignalInFinalizer(getattr(signal, sig))  # collected, and finalized, at once
            else:
                os.kill(os.getpid(), getattr(signal, sig))
        return original(*a, **kw)
    setattr(module, function_name, wrapped)
    runpy.run_path(str(ROOT / script), run_name="__main__")


if __name__ == "__main__":
    main()
