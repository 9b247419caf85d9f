"""Entry point of the ``onnxprune`` command.

Importing numpy, onnx and onnxruntime takes a second or two; a Ctrl-C in that window would end
in a KeyboardInterrupt traceback. So this module imports nothing heavy: ``main`` first installs
a SIGINT handler that exits with the one-line message, then imports the CLI (``app.py``), whose
own error handling takes over (it removes partial outputs on interruption).
"""

import os
import signal
import sys

INTERRUPTED = "error: interrupted; no output was written"


def _early_interrupt(signum, frame):  # pragma: no cover - timing dependent
    sys.stderr.write(INTERRUPTED + "\n")
    sys.stderr.flush()
    os._exit(130)


def main(argv=None) -> None:
    signal.signal(signal.SIGINT, _early_interrupt)
    from .app import run

    signal.signal(signal.SIGINT, signal.default_int_handler)
    run(argv)


if __name__ == "__main__":
    main()
