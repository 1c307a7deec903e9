"""Progress bars: the one place Geosolver makes them.

:func:`tqdm` is ``tqdm.auto.tqdm`` with one rule added: a bar is shown only when stderr is a
terminal. A log file, a pipe, a notebook cell or a test never fills with bar redraws, whatever
``progress=`` a caller passed; every module imports ``from geosolver.progress import tqdm``.
"""

from __future__ import annotations

import sys


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` is a terminal (``False`` when it is closed, replaced or missing)."""
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm(*args, **kwargs)``, disabled unless stderr is a terminal (and unless the
    caller's own ``disable`` is false)."""
    from tqdm.auto import tqdm as _tqdm  # tqdm: only when a bar is made

    kwargs["disable"] = bool(kwargs.get("disable", False)) or not stderr_is_terminal()
    return _tqdm(*args, **kwargs)
