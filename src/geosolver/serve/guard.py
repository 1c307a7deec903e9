"""What keeps the server up against hostile clients, below the routes.

* :class:`GuardedH11Protocol` (uvicorn's h11 protocol, bounded): at most ``max_connections`` open
  connections, and a request's headers must be complete ``header_timeout`` seconds after the
  connection opened (or after the previous response on a keep-alive connection). A slowloris --
  thousands of connections trickling header bytes -- used to hold one file descriptor each until
  the process ran out (then every ``accept`` failed with a traceback). Now a trickling connection
  is closed at its header deadline, and when the cap is reached a new connection evicts the oldest
  one still waiting for its headers (a connection with a request in flight is never evicted), so
  an ordinary client still gets through during an attack.
* :class:`OncePerInterval`: a logging filter that lets through one line per kind of event per
  interval (the count of the others rides on the next one) and strips tracebacks after the first
  of each kind, for the loggers a flood writes to (``asyncio``, ``uvicorn.error``, the app's).
* :class:`HostCheck`: ASGI middleware that answers 400 to a ``Host`` header that is not one of the
  names the server was bound to (loopback names by default): a page on another site that
  re-points its own domain at 127.0.0.1 (DNS rebinding) cannot read the API.
"""

from __future__ import annotations

import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: Names a loopback-bound server answers to.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Addresses that bind every interface: any Host header may be right.
WILDCARD_BINDS = ("0.0.0.0", "::", "")


# ------------------------------------------------------------------------------------------------
# connections
# ------------------------------------------------------------------------------------------------
class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a header deadline (see the module docstring).

    Configured by subclassing (:func:`guarded_protocol`): uvicorn instantiates the class itself.
    """

    max_connections: int = 1000
    header_timeout: float = 10.0

    _refused = False
    _header_timer = None
    _waiting_since = 0.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections and not self._evict_oldest_waiting():
            self._refused = True
            note("refused a connection: %d open, the limit is %d (geosolver serve --max-connections)", len(self.connections), self.max_connections)
            transport.abort()
            return
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc) -> None:
        if self._refused:
            return
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()  # the next request on this keep-alive connection

    def waiting_for_headers(self) -> bool:
        """No request in flight: the client has not finished sending the next request's headers."""
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._waiting_since = time.monotonic()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _cancel_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.waiting_for_headers() and not self.transport.is_closing():
            note("closed a connection whose request headers did not arrive within %g s (geosolver serve --header-timeout)", self.header_timeout)
            self.transport.abort()

    def _evict_oldest_waiting(self) -> bool:
        """Close the connection that has waited longest for its headers; ``False`` if none waits."""
        waiting = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and c.waiting_for_headers() and not c.transport.is_closing()]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c._waiting_since)
        note("connection limit (%d) reached: closed the connection that waited longest for its request headers", self.max_connections)
        oldest._cancel_header_deadline()
        oldest.transport.abort()
        self.connections.discard(oldest)
        return True


def guarded_protocol(max_connections: int, header_timeout: float) -> type[GuardedH11Protocol]:
    """:class:`GuardedH11Protocol` with these limits (pass it as uvicorn's ``http``)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"max_connections": int(max_connections), "header_timeout": float(header_timeout)})


def fd_budget(wanted: int, reserve: int = 64) -> int:
    """Connections this process can hold: ``wanted``, capped below the open-file limit (raised to
    its hard maximum first), keeping ``reserve`` descriptors for files, the model and logging."""
    try:
        import resource  # POSIX only

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
        return max(1, min(int(wanted), soft - reserve))
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return int(wanted)


# ------------------------------------------------------------------------------------------------
# logging
# ------------------------------------------------------------------------------------------------
class OncePerInterval(logging.Filter):
    """Let through one record per kind (logger + message template) per ``interval`` seconds.

    The first record of a kind keeps its traceback; later ones are one line, and the number
    dropped since the last one is appended to it.
    """

    def __init__(self, interval: float = 10.0, clock=time.monotonic):
        super().__init__()
        self.interval, self.clock = float(interval), clock
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        seen = key in self._last
        if seen and now - self._last[key] < self.interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        if seen:
            if record.exc_info and record.exc_info[1] is not None:
                e = record.exc_info[1]
                record.msg = f"{record.msg} ({type(e).__name__}: {e})"
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        dropped = self._dropped.pop(key, 0)
        if dropped:
            record.msg = f"{record.msg} [{dropped} more like this in the last {self.interval:g} s]"
        return True


_NOTES = logging.getLogger("geosolver.serve.guard")


def note(msg: str, *args) -> None:
    """Log a guard event (rate limited, per message, by the filter :func:`limit_logs` installs)."""
    _NOTES.warning(msg, *args)


#: Loggers a flood of bad clients writes to (not ``geosolver.serve.play``: it logs each unreadable
#: query photo once, and each is worth its line).
FLOOD_LOGGERS = ("asyncio", "uvicorn.error", "geosolver.serve.guard", "geosolver.serve.app")


def limit_logs(interval: float | None = 10.0) -> OncePerInterval | None:
    """Install one :class:`OncePerInterval` on each of :data:`FLOOD_LOGGERS` (after uvicorn has
    configured logging), replacing any installed before; ``None``: only remove them. Returns it."""
    f = OncePerInterval(interval) if interval is not None else None
    for name in FLOOD_LOGGERS:
        logger = logging.getLogger(name)
        for old in [x for x in logger.filters if isinstance(x, OncePerInterval)]:
            logger.removeFilter(old)
        if f is not None:
            logger.addFilter(f)
    return f


# ------------------------------------------------------------------------------------------------
# the Host header
# ------------------------------------------------------------------------------------------------
def host_name(header: str) -> str:
    """The host part of a ``Host`` header (port dropped; ``[::1]:8000`` -> ``::1``), lower case."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def allowed_hosts(bind: str, extra: tuple[str, ...] | list[str] = ()) -> tuple[str, ...] | None:
    """Host names the server answers to: loopback names, the bound address and ``extra``;
    ``None`` (any) when bound to every interface with no ``extra`` or when ``extra`` holds ``*``."""
    extra = tuple(host_name(h) for h in extra)
    if "*" in extra or (bind in WILDCARD_BINDS and not extra):
        return None
    names = set(LOOPBACK_HOSTS) | set(extra)
    if bind not in WILDCARD_BINDS:
        names.add(host_name(bind))
    return tuple(sorted(names))


class HostCheck:
    """ASGI middleware: 400 for an HTTP request whose ``Host`` is not in ``hosts``.

    A request without a ``Host`` header passes: browsers always send one (HTTP/1.1 requires it), so
    such a request is not a rebinding page's.
    """

    def __init__(self, app, hosts: tuple[str, ...]):
        self.app, self.hosts = app, frozenset(hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            raw = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
            if raw and host_name(raw) not in self.hosts:
                note("refused a request for Host %r (allowed: %s; geosolver serve --allow-host)", raw[:100], ", ".join(sorted(self.hosts)))
                body = f"Host {raw[:100]!r} is not served here (geosolver serve --allow-host NAME to allow it)".encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
