"""Every exception type Geosolver raises on purpose, in one hierarchy.

Each derives from :class:`GeosolverError`, so the CLI prints any of them as one line naming
what is wrong (exit code 2) instead of a traceback; the modules that raise them re-export them
(``from geosolver.store import StoreError`` works as before).

::

    GeosolverError
    ├── UserError            a command-line option or combination that makes no sense
    │   └── OutputDirError   an --out folder that holds something this command did not write
    ├── CoordinateError      (also a ValueError) a lat/lon missing, non-finite or out of range
    ├── InvalidValueError    (also a ValueError) a size, count, weight or name a function cannot use
    ├── ImageReadError       an image could not be read or decoded
    │   └── PhotoTooLarge    a photo over the per-photo byte cap (--max-photo-mb)
    ├── DatasetError         a dataset cannot be read at all
    ├── EncoderError         an encoder cannot be found, loaded or used that way
    ├── StoreError           a store is missing, corrupt or incompatible
    ├── EmbedError           an embedding job cannot start or continue
    ├── IndexBuildError      an index cannot be built, loaded or searched
    │   └── StaleIndexError  a saved index no longer matches its store
    ├── LocateError          bad gallery, encoder, inputs or settings for geolocation
    ├── EvaluateError        incompatible stores or bad evaluation settings
    ├── AnalysisError        stores that cannot be analysed together
    ├── EnrichError          a bad enrichment request
    ├── GeodataError         a bundled raster is missing or unreadable (broken install)
    ├── CurationError        curation cannot proceed with that store or settings
    ├── TerrainError         bad arguments to the terrain-world builder
    ├── TrainError           bad training configuration or data
    │   ├── TrainSetupError  the training setup does not fit the model
    │   └── CollapseError    training stopped: the embedding space collapsed
    ├── ZeroShotError        no text tower, bad prompt template, labels or embeddings for zero-shot
    ├── HeadError            a location head that cannot be trained, loaded or used that way
    ├── ServeError           bad settings for the web app
    └── HTTPInputError       a request the web app must refuse (``status``: the HTTP code)
        ├── UploadError      a request body that cannot be accepted
        └── PhotoError       an uploaded photo that cannot be used
"""


class GeosolverError(Exception):
    """Base class for errors caused by input, configuration or on-disk state."""


class UserError(GeosolverError):
    """A command-line option or combination that makes no sense (one line, exit code 2)."""


class OutputDirError(UserError):
    """An ``--out`` folder that is a file, or holds files this command did not write
    (the user's files, a store, another command's run); nothing was written to it."""


class CoordinateError(GeosolverError, ValueError):
    """A latitude/longitude value is missing, not finite or out of range."""


class InvalidValueError(GeosolverError, ValueError):
    """A value a library function cannot use (a cell size, an empty set of distances, an unknown
    feature name, knots that do not increase); the message names it. Also a ``ValueError``, which
    these functions raised before."""


class ImageReadError(GeosolverError):
    """An image could not be read or decoded; the message names the source and the cause."""


class PhotoTooLarge(ImageReadError):
    """A photo (file, archive member, upload) over the per-photo byte cap; nothing past the cap
    was read (:func:`geosolver.images.read_photo_bytes`)."""


class NotAnImageError(ImageReadError):
    """The bytes are not in any image format PIL recognises."""


class PixelLimitError(ImageReadError):
    """An image declares more pixels than a caller's budget (checked from its header, before decoding).

    Attributes:
        width, height: the declared size; decoded: ``(w, h)`` that would be decoded (a JPEG's
        draft-reduced size); limit: the budget.
    """

    def __init__(self, message: str, width: int, height: int, decoded: tuple[int, int], limit: int):
        super().__init__(message)
        self.width, self.height, self.decoded, self.limit = width, height, decoded, limit


class DatasetError(GeosolverError):
    """A dataset cannot be read at all (missing CSV, missing coordinate column, nothing usable).

    The message names the file or directory and what is wrong with it.
    """


class EncoderError(GeosolverError):
    """An encoder could not be found, loaded, or asked to do something its backend cannot do."""


class StoreError(GeosolverError):
    """A store is missing, corrupt, or incompatible with what was asked of it."""


class EmbedError(GeosolverError):
    """The embedding job cannot start or continue (e.g. resuming with another dataset)."""


class IndexBuildError(GeosolverError):
    """An index cannot be built, loaded or searched with the given settings / inputs."""


class StaleIndexError(IndexBuildError):
    """A saved index does not match the current content of its store."""


class LocateError(GeosolverError):
    """Bad gallery, encoder, inputs or settings for geolocation."""


class EvaluateError(GeosolverError):
    """Incompatible stores, bad settings, or an unreadable evaluation run."""


class AnalysisError(GeosolverError):
    """The stores cannot be analysed together (no shared ids, mismatched coordinates, bad names...)."""


class EnrichError(GeosolverError):
    """Bad enrichment request (unknown feature, bad cell size)."""


class GeodataError(GeosolverError):
    """A bundled raster is missing or unreadable (a broken install, not bad user input)."""


class CurationError(GeosolverError):
    """Curation cannot proceed with the given store, columns or settings."""


class TerrainError(GeosolverError):
    """Bad arguments to the terrain-world builder (sizes, split, output folder)."""


class TrainError(GeosolverError):
    """Bad training configuration or data (the message names the setting or file)."""


class TrainSetupError(TrainError):
    """The requested training setup does not fit the model (mode, blocks, LoRA)."""


class CollapseError(TrainError):
    """Training stopped because the embedding space collapsed (see the message for the numbers).

    Attributes:
        result: the :class:`~geosolver.train.TrainResult` of the stopped run (its ``model_dir``
            holds the best weights before the collapse), or ``None``.
    """

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class ZeroShotError(GeosolverError):
    """Zero-shot geolocation cannot run: an encoder without a text tower, a bad prompt template,
    level, label set or embeddings (the message names which)."""


class HeadError(GeosolverError):
    """A location head (:mod:`geosolver.heads`) cannot be trained, resumed, loaded or applied: bad
    kind or settings, a missing or damaged head directory, a head of another encoder."""


class ServeError(GeosolverError):
    """Bad settings for the web app."""


class HTTPInputError(GeosolverError):
    """A request the web app refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class UploadError(HTTPInputError):
    """A request body that cannot be accepted; ``status`` is the HTTP status to answer with."""


class PhotoError(HTTPInputError):
    """An uploaded photo that cannot be used; ``status`` is the HTTP status to answer with."""
