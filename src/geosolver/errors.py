"""Exception types. Every error Geosolver raises on bad input derives from :class:`GeosolverError`,
so the CLI can print it as one clear line instead of a traceback."""


class GeosolverError(Exception):
    """Base class for errors caused by input, configuration or on-disk state."""
