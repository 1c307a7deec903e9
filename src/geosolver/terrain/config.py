"""Every setting of a terrain world, in one place: :class:`TerrainConfig` (no numpy, no pandas here:
``geosolver terrain build``'s options are derived from it, see :func:`geosolver.cli.args.add_config_arguments`).

Each field's ``metadata`` holds its command-line help (``help``), and where the CLI differs from
the default spelling ``--field-name``: ``flag`` (the option, or ``None`` for a field the CLI does
not offer), ``kind`` (the name of a value type of :mod:`geosolver.cli.args`, e.g. ``positive_int``) or
``choices``. A field without a default is a required option; a boolean is a switch that flips its
default (``overwrite=False`` → ``--overwrite``, ``progress=True`` → ``--no-progress``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from geosolver.errors import TerrainError

SPLITS = ("random", "held-out-cells")
QUERY_DISTRIBUTIONS = ("population", "land", "settlements")
GALLERY_SOURCES = ("geonames", "mp16")
#: ``queries_from="settlements"``: a point counts as near a settlement within this many km of a GeoNames place.
SETTLEMENT_KM = 25.0


@dataclass(frozen=True)
class TerrainConfig:
    """The settings of :func:`geosolver.terrain.run` (see it for what is written and for each field).

    Raises (from :meth:`check`, called by ``run``):
        TerrainError: an unknown split / source, no tiles, or a hold-out share outside (0, 1).
    """

    out: str = field(metadata={"help": "output folder"})
    n_gallery: int = field(metadata={"flag": "--gallery", "kind": "positive_int", "help": "number of gallery tiles"})
    n_queries: int = field(metadata={"flag": "--queries", "kind": "positive_int", "help": "number of query tiles"})
    split: str = field(default="random", metadata={
        "choices": SPLITS,
        "help": "random: queries drawn like the gallery; held-out-cells: queries only from grid cells absent from the gallery"})
    queries_from: str = field(default="population", metadata={
        "choices": QUERY_DISTRIBUTIONS,
        "help": "population: query points near GeoNames places, like the gallery (default); land: uniform over "
        "land area; settlements: uniform over land within 25 km of a GeoNames place (a near-roads proxy)"})
    gallery_from: str = field(default="geonames", metadata={
        "choices": GALLERY_SOURCES,
        "help": "geonames: gallery points near GeoNames places (default); mp16: real MP-16 photo coordinates "
        "from the GeoCLIP wheel (fetched once with pip into the cache dir)"})
    seed: int = field(default=0, metadata={"kind": "non_negative_int", "help": "everything is a deterministic function of it"})
    tile_size: int = field(default=64, metadata={"kind": "positive_int", "help": "tile side in pixels (default 64)"})
    window_px: int = field(default=32, metadata={"flag": "--window", "kind": "positive_int",
                                                 "help": "tile coverage in 0.05-degree source pixels (default 32 = 1.6 deg)"})
    cell_size: float = field(default=2.0, metadata={"kind": "positive_float", "help": "grid cell side in degrees (labels, held-out split)"})
    holdout_fraction: float = field(default=0.2, metadata={"kind": "float", "help": "share of populated cells held out (held-out-cells)"})
    jitter_km: float = field(default=7.0, metadata={"flag": None, "help": "Gaussian displacement of points from their GeoNames place, km"})
    max_shift_deg: float = field(default=0.8, metadata={"flag": None, "help": "largest tile-centre shift, degrees"})
    noise_sigma: float = field(default=6.0, metadata={"flag": None, "help": "pixel noise, grey levels"})
    overwrite: bool = field(default=False, metadata={"help": "write into a folder that already holds a world"})
    progress: bool = field(default=True, metadata={"help": "no progress bar"})

    def check(self) -> None:
        """Raise :class:`TerrainError` (one line) for a setting no world can be built with."""
        if self.split not in SPLITS:
            raise TerrainError(f"unknown split {self.split!r}; choose one of {list(SPLITS)}")
        if self.n_gallery < 0 or self.n_queries < 0 or self.n_gallery + self.n_queries == 0:
            raise TerrainError(f"need n_gallery >= 0, n_queries >= 0 and not both 0; got {self.n_gallery}, {self.n_queries}")
        if self.queries_from not in QUERY_DISTRIBUTIONS:
            raise TerrainError(f"unknown queries_from {self.queries_from!r}; choose one of {list(QUERY_DISTRIBUTIONS)}")
        if self.gallery_from not in GALLERY_SOURCES:
            raise TerrainError(f"unknown gallery_from {self.gallery_from!r}; choose one of {list(GALLERY_SOURCES)}")
        if not (0.0 < self.holdout_fraction < 1.0):
            raise TerrainError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
