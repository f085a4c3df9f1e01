"""The checks both SDK scripts report with: each prints "pass: …" or raises."""


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
