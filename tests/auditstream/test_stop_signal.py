"""A stop signal ends what it stops even when its handler's exception is swallowed
(auditstream.stop_signal), here through ``broker start``'s use of it (stack/broker.py).

The handler raises so that a blocking call is interrupted; where the raise lands in code that
ignores exceptions (a weakref callback, as CI once saw, a ``__del__``, a library's bare
``except``) the signal would be lost and the start would run on to exit 0 with Tansu up. These
tests call the real handler inside such code, in the main thread, as the interpreter would; the
end-to-end runs under tests/swallowing.py are in test_broker_lifecycle.py and
tests/dashboards/test_launch.py."""

from __future__ import annotations

import gc
import signal
import threading
import weakref

import pytest

from stack import broker


def _swallowed(signals: broker.StopSignal, signum: int) -> None:
    try:  # as a library's bare ``except`` would
        signals.handler(signum, None)
    except BaseException:
        pass


def _in_a_weakref_callback(signals: broker.StopSignal, signum: int) -> None:
    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _: signals.handler(signum, None))  # an exception here is only printed
    del thing
    gc.collect()
    assert ref() is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the swallowed raise, printed)
@pytest.mark.parametrize("swallow", [_swallowed, _in_a_weakref_callback])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_swallowed_signal_before_the_commit_raises_there_so_the_launch_is_undone(swallow, sig):
    undone = []
    with pytest.raises(SystemExit) as ended:
        with broker._signals_raise() as signals:
            assert signal.getsignal(sig) == signals.handler
            swallow(signals, sig)
            try:  # what _launch does: its clean-up runs on any exception up to the commit
                signals.commit()
            except BaseException:
                undone.append(True)
                raise
    assert undone == [True]
    assert ended.value.code == 128 + sig
    assert signal.getsignal(sig) == signal.SIG_DFL, "the default handler is put back"
    assert broker._start_signals is broker._NO_SIGNALS


def test_the_waits_of_a_start_raise_a_swallowed_signal_at_their_next_turn():
    with pytest.raises(SystemExit) as ended:
        with broker._signals_raise() as signals:
            _swallowed(signals, signal.SIGTERM)
            broker._start_signals.check()  # (what the lock, storage and readiness waits call)
            pytest.fail("the check did not raise")
    assert ended.value.code == 128 + signal.SIGTERM


def test_a_signal_swallowed_where_nothing_was_launched_still_sets_the_exit_code():
    with pytest.raises(SystemExit) as ended:
        with broker._signals_raise() as signals:
            _swallowed(signals, signal.SIGHUP)  # e.g. while it found the broker already running
    assert ended.value.code == 128 + signal.SIGHUP


def test_after_the_commit_a_signal_no_longer_raises_and_the_start_ends_with_its_code():
    with pytest.raises(SystemExit) as ended:
        with broker._signals_raise() as signals:
            signals.commit()
            signals.handler(signal.SIGTERM, None)  # the start succeeded: nothing to undo
            signals.check()
    assert ended.value.code == 128 + signal.SIGTERM


def test_a_start_without_a_signal_ends_normally_and_outside_the_main_thread_installs_nothing():
    with broker._signals_raise() as signals:
        signals.commit()
    seen = []

    def other() -> None:
        with broker._signals_raise() as signals:
            seen.append((signals.armed, signal.getsignal(signal.SIGTERM)))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [(False, signal.SIG_DFL)]
