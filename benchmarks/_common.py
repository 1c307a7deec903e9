"""Helpers shared by the benchmark scripts (run them from the repo root: `python benchmarks/X.py`)."""

from __future__ import annotations


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB: ``VmRSS`` (now) or ``VmHWM`` (peak; unlike
    ``ru_maxrss`` it is not inherited from a forking parent). NaN where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def rss_mb() -> float:
    return proc_status_mb("VmRSS")


def hwm_mb() -> float:
    return proc_status_mb("VmHWM")
