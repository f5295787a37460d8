"""Run a command with most of its main thread's time inside garbage-collector callbacks, where
Python only prints a signal handler's exception (auditstream.stop_signal).

    [sys.executable, "-c", SWALLOWING, "broker", "start", ...]   # as ``-m auditstream.cli``

A ``broker start`` that trusted its handler's raise ran on to exit 0 with Tansu up in 11 of 12
tries under it (CI once met the same in a weakref callback)."""

SWALLOWING = """
import gc, runpy, sys, time
def busy(phase, info):
    end = time.perf_counter() + 0.002
    while phase == "start" and time.perf_counter() < end:
        pass
gc.callbacks.append(busy)
gc.set_threshold(50, 1, 1)
sys.argv[0] = "auditstream"
runpy.run_module("auditstream.cli", run_name="__main__")
"""
