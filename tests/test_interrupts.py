"""kd.interrupts.interrupts_deferred with real signals: each one held until its block ends,
then given to the handler it would have met, whoever installed that handler."""
import os
import signal

import pytest

from kd import interrupts


def deliver(sig):
    """Send this process `sig` and give Python the turns it needs to run its handler."""
    os.kill(os.getpid(), sig)
    for _ in range(1000):
        pass


@pytest.fixture
def handler_of():
    """handler_of(sig, handler): install `handler` for the test, the previous one back after."""
    previous = {}

    def install(sig, handler):
        previous.setdefault(sig, signal.getsignal(sig))
        signal.signal(sig, handler)
    yield install
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def no_interrupt_pending(monkeypatch):
    monkeypatch.setattr(interrupts, "_interrupt_requested", False)


def test_a_ctrl_c_in_the_block_is_raised_once_after_it(handler_of):
    handler_of(signal.SIGINT, interrupts._raise_interrupt)  # a script's, as run_cli sets it
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.interrupts_deferred():
            deliver(signal.SIGINT)
            steps.append("the rest of the block")
    assert steps == ["the rest of the block"]
    assert signal.getsignal(signal.SIGINT) is interrupts._raise_interrupt
    interrupts.check_interrupt()  # spent: a later run in this process is not stopped by it


def test_a_signal_the_process_ignores_stays_ignored(handler_of):
    """A submitit job ignores SIGTERM (it only logs it): held, it must not become a stop."""
    handler_of(signal.SIGTERM, signal.SIG_IGN)
    with interrupts.interrupts_deferred():
        deliver(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_another_handler_gets_its_signal_once_the_block_has_ended(handler_of):
    """submitit's handler of its time-limit signal: called after the block, not inside it
    and not turned into a Ctrl-C; a signal that came twice is called once, as the kernel
    keeps one of a pending signal."""
    steps = []

    def time_limit(signum, frame):
        steps.append(("handler", signum))
    handler_of(signal.SIGUSR2, time_limit)
    with interrupts.interrupts_deferred((*interrupts.STOP_SIGNALS, signal.SIGUSR2)):
        deliver(signal.SIGUSR2)
        deliver(signal.SIGUSR2)
        steps.append("block")
    assert steps == ["block", ("handler", signal.SIGUSR2)]
    assert signal.getsignal(signal.SIGUSR2) is time_limit
    interrupts.check_interrupt()  # no Ctrl-C was made of it


def test_signals_are_given_on_in_the_order_they_came(handler_of):
    steps = []
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        handler_of(sig, lambda signum, frame: steps.append(signum))
    with interrupts.interrupts_deferred((signal.SIGUSR1, signal.SIGUSR2)):
        deliver(signal.SIGUSR2)
        deliver(signal.SIGUSR1)
    assert steps == [signal.SIGUSR2, signal.SIGUSR1]


def test_a_deferral_inside_another_holds_its_signal_for_the_outer_one(handler_of):
    handler_of(signal.SIGINT, interrupts._raise_interrupt)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.interrupts_deferred():
            with interrupts.interrupts_deferred():
                deliver(signal.SIGINT)
            steps.append("the outer block's rest")
    assert steps == ["the outer block's rest"]
    assert signal.getsignal(signal.SIGINT) is interrupts._raise_interrupt
