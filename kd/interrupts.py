"""Ctrl-C and SIGTERM: a run stops between steps, never between writing a checkpoint and the
records beside it, and an interrupt is never lost."""
import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_interrupt_requested = False


def _note_interrupt(signum, frame):
    global _interrupt_requested
    _interrupt_requested = True


def _raise_interrupt(signum, frame):
    _note_interrupt(signum, frame)
    raise KeyboardInterrupt


def install_handlers():
    """Turn Ctrl-C and SIGTERM into KeyboardInterrupt, and forget any earlier interrupt."""
    global _interrupt_requested
    _interrupt_requested = False
    # SIGINT explicitly too: a shell starts background jobs with SIGINT ignored, and Python
    # then keeps ignoring it; a signal sent to this process on purpose should stop it cleanly.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_interrupt)


def hold():
    """From here on, Ctrl-C and SIGTERM are only noted: for a process already stopping, so
    that the further signals a stop brings (a terminal's Ctrl-C reaches a sweep, its job
    and the run alike, and each passes it on) cannot cut its last words short. Returns the
    handlers it replaced."""
    return {sig: signal.signal(sig, _note_interrupt) for sig in STOP_SIGNALS}


def check_interrupt():
    """Raise KeyboardInterrupt if a Ctrl-C or SIGTERM came whose exception was lost: Python
    ignores exceptions raised inside finalizers (weakref callbacks, __del__), and a signal
    that lands in one, e.g. while matplotlib closes a figure, would otherwise be dropped."""
    global _interrupt_requested
    if _interrupt_requested:
        _interrupt_requested = False  # raised once: a later run in this process starts clean
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C and SIGTERM until the block ends (then raise KeyboardInterrupt), so that
    an interrupt cannot fall between writing a checkpoint and the records beside it."""
    handlers = hold()
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    check_interrupt()
