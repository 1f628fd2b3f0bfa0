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
def _blocked(signals):
    """Block `signals` for this thread while the block runs, where the platform can (not on
    Windows): one that comes meanwhile waits, and then goes to the handler in place."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Deferral:
    """Stands in for the handlers of some signals while a block runs: a signal that comes is
    noted, and once the block is over each goes to the handler it would have met."""

    def __init__(self):
        self.handlers, self.arrived, self.over = {}, [], False

    def __call__(self, signum, frame):
        if self.over:  # left in place by a stop while the handlers went back
            self.give_on(signum)
        elif signum not in self.arrived:  # twice is once, as for a pending signal
            self.arrived.append(signum)

    def give_on(self, signum):
        handler = self.handlers[signum]
        if handler in (_raise_interrupt, _note_interrupt):
            _note_interrupt(signum, None)  # raised once by check_interrupt, which spends it
        elif callable(handler):  # another's: submitit's at a job's time limit, an outer deferral
            handler(signum, None)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        # SIG_IGN: ignored, as it would have been

    def end(self):
        """Put every handler back, then give on each signal that came. The signals wait
        meanwhile (blocked), and an exception of a handler given one comes after the rest
        are given theirs (submitit's time-limit handler ends its job by one): no stand-in
        is left in place and no held signal is dropped."""
        stop = None
        # Blocking holds a signal only for this thread: one sent to the process may land on
        # another (torch's), and this thread then runs its handler at any line, not only in
        # a call below. So each loop is inside its try, and resumes where it was stopped:
        # putting a handler back twice is harmless; a signal is given on at most once.
        with _blocked(self.handlers):
            self.over = True
            to_restore, to_give = list(self.handlers.items()), list(self.arrived)
            while to_restore or to_give:
                try:
                    while to_restore:
                        signal.signal(*to_restore[0])
                        to_restore.pop(0)
                    while to_give:
                        self.give_on(to_give.pop(0))
                except BaseException as e:  # a handler already back, given a signal
                    stop = stop or e
        if stop is not None:
            raise stop


@contextlib.contextmanager
def interrupts_deferred(signals=STOP_SIGNALS):
    """Hold `signals` (Ctrl-C and SIGTERM unless told) until the block ends, so that an
    interrupt cannot fall between writing a checkpoint and the records beside it. Each that
    came then goes to the handler it would have met: this module's raise KeyboardInterrupt
    once, another's (submitit's, which only logs a SIGTERM) does what it would have done."""
    deferral = _Deferral()
    try:
        for sig in dict.fromkeys(signals):  # a signal named twice: its handler kept once
            # kept before the stand-in goes in: a stop in between still puts it back
            deferral.handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, deferral)
        yield
    finally:
        deferral.end()
    check_interrupt()
