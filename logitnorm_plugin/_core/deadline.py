"""A deadline for importing a plugin's module.

The rule: **a plugin that never finishes importing is reported, not waited for** where the
platform allows it. :func:`import_deadline` arms a ``SIGALRM`` timer (:func:`signal.setitimer`)
around the import; when it fires, :class:`ImportDeadlineError` is raised inside the import (a
``BaseException``, so ``except Exception`` in the plugin does not swallow it; raised again
every second until the import ends), the import machinery drops the half-imported module, and
the caller reports the plugin by name (``Entry.load`` of
:mod:`logitnorm_plugin.registry.entry_points` turns it into a ``RegistryLoadError`` naming the
entry point and its distribution, so ``logitnorm-ood list`` skips it with a warning and
``bench --detectors all`` skips it the same way).

Where it applies: POSIX (``signal.setitimer`` exists), on the main thread, and only when no
other ``SIGALRM`` timer or handler is in use (someone else's alarm is never replaced). Anywhere
else the import runs without a deadline, as before. A loop in C code that never returns to the
interpreter cannot be interrupted by a signal handler and still hangs, and so does a plugin
that replaces the ``SIGALRM`` handler itself.

The deadline is :data:`DEFAULT_SECONDS` (generous: the first import of a plugin may import
torch on a busy machine) or the number of seconds in the environment variable
:data:`DEADLINE_ENV` (``0`` switches it off). Hand-written: no kept library offers an
interrupting timeout for code running in this process (``signal`` is the mechanism).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

__all__ = ["DEADLINE_ENV", "DEFAULT_SECONDS", "ImportDeadlineError", "deadline_seconds",
           "import_deadline"]

#: environment variable with the deadline in seconds (``0``: none)
DEADLINE_ENV = "LOGITNORM_PLUGIN_IMPORT_TIMEOUT"

#: the deadline when :data:`DEADLINE_ENV` is not set
DEFAULT_SECONDS = 120.0


class ImportDeadlineError(BaseException):
    """The import of a plugin's module ran past its deadline. A ``BaseException`` (like
    ``KeyboardInterrupt``), so a plugin's ``except Exception`` cannot swallow it; the caller
    that armed the deadline catches it by name."""


def deadline_seconds() -> float:
    """The deadline from :data:`DEADLINE_ENV` (:data:`DEFAULT_SECONDS` when unset or not a
    non-negative number)."""
    try:
        seconds = float(os.environ.get(DEADLINE_ENV, DEFAULT_SECONDS))
    except ValueError:
        return DEFAULT_SECONDS
    return seconds if seconds >= 0 and seconds == seconds else DEFAULT_SECONDS


def _can_arm() -> bool:
    return (hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
            and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))


@contextlib.contextmanager
def import_deadline(what: str, seconds: float | None = None):
    """Raise :class:`ImportDeadlineError` naming ``what`` if the block runs longer than
    ``seconds`` (default: :func:`deadline_seconds`), where the platform allows (see the
    module's docstring); otherwise run the block without a deadline.

    :param what: what is imported, for the message, e.g. ``"my_plugin.detector"``
    :param seconds: the deadline; ``0`` means none
    """
    seconds = deadline_seconds() if seconds is None else seconds
    if not seconds or not _can_arm():
        yield
        return

    def expired(signum, frame):
        raise ImportDeadlineError(
            f"importing {what} did not finish within {seconds:g} s (a plugin that loops or "
            f"waits while it is imported; set {DEADLINE_ENV} to change the deadline)"
        )

    signal.signal(signal.SIGALRM, expired)
    # then again every second until the block ends: a plugin that catches the first one
    # (``except BaseException``) and goes on is interrupted again
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
