"""The real app with a fault switch, for gunicorn: `gunicorn 'tests.reliability.fault_app:fault_app()'`
(a module of its own, so that no test module is imported by anything else)."""

import os
import time


class EngineCrash(BaseException):
    """Not an Exception: the engine's per-step handlers let it through, so its loop itself dies."""


def fault_app():
    """`gunicorn 'tests.reliability.fault_app:fault_app()'`: the real app, plus a switch.

    Before each forward pass the model sleeps FAULT_STEP_SECONDS (so generations last long enough to
    overlap) and reads the file FAULT_SWITCH: "raise" makes this one forward pass raise RuntimeError,
    "crash" raises EngineCrash; the file is removed when it fires, so it fires once.
    """
    from textgen.server import create_app

    app = create_app()
    model = app.extensions["textgen.engine"].model
    switch = os.environ["FAULT_SWITCH"]
    pause = float(os.environ.get("FAULT_STEP_SECONDS", "0"))
    real_forward = model.forward

    def forward(*args, **kwargs):
        time.sleep(pause)
        if os.path.exists(switch):
            with open(switch) as f:
                what = f.read().strip()
            # Fire only on a complete word: a switch read between its creation and its write is empty
            # (CI caught that race once, under load: the crash never came).
            if what in ("raise", "crash"):
                os.remove(switch)
            if what == "raise":
                raise RuntimeError("injected fault in a forward pass")
            if what == "crash":
                raise EngineCrash("injected crash of the engine loop")
        return real_forward(*args, **kwargs)

    model.forward = forward
    return app


