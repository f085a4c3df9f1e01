"""The checks both SDK scripts report with: each prints "pass: …" or raises."""

import os
import sys


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("pass:", what, flush=True)


def raises(exc, f, what):
    try:
        f()
    except exc as e:
        print("pass:", what, "->", type(e).__name__, e, flush=True)
        return e
    except Exception as e:  # noqa: BLE001 - the wrong exception is the failure
        raise AssertionError(f"{what}: raised {type(e).__name__}: {e}, wanted {exc.__name__}")
    raise AssertionError(f"{what}: nothing raised, wanted {exc.__name__}")


def finish():
    """Prints the closing "ok" and leaves without interpreter finalization.

    The SDK's Connect transport (pyqwest, a native extension with its own
    runtime threads) now and then aborts the interpreter while it is being
    torn down, after every check has passed: "Fatal Python error: Aborted"
    with no Python frame. Exiting with os._exit skips that teardown, so the
    exit status reports the checks and not the extension's shutdown.
    """
    print("ok", flush=True)
    sys.stderr.flush()
    os._exit(0)
