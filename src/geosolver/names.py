"""The kNN vote's and the location prior's option values and defaults, import-free: what the CLI's
parsers need (``--strategy``, ``--prior``, ...) without loading :mod:`geosolver.locate` or
:mod:`geosolver.prior` (numpy, pandas, PIL). Those modules re-export them. Packages keep theirs
in their own ``names`` module (:mod:`geosolver.encoders.names`, :mod:`geosolver.data.names`).
"""

from __future__ import annotations

#: how the neighbours' votes become one guess (:meth:`geosolver.locate.Neighbours.vote`).
STRATEGIES = ("nn", "weighted-mean", "densest")
DEFAULT_STRATEGY = "densest"
DEFAULT_K = 10
DEFAULT_TEMPERATURE = 0.05
DEFAULT_RADIUS_KM = 500.0

#: the priors fused with the vote (``--prior``).
PRIORS = ("none", "text")
#: What a neighbour's prior probability is looked up by: its country, or its first-level region.
PRIOR_BY = ("country", "region")
DEFAULT_PRIOR_WEIGHT = 1.0

#: zero-shot label levels (:mod:`geosolver.zeroshot`).
ZERO_SHOT_LEVELS = ("countries", "regions", "cities")
#: StreetCLIP paper's prompt forms (Haas et al., 2023).
ZERO_SHOT_TEMPLATES = {
    "countries": "A Street View photo in {country}.",
    "regions": "A Street View photo in {region}, {country}.",
    "cities": "A Street View photo close to the town of {city} in the region of {region} in {country}.",
}
#: default population threshold of the ``cities`` level (about 6 200 labels).
ZERO_SHOT_MIN_POPULATION = 100_000

#: the encoders the built-in demo compares (:mod:`geosolver.demo`).
DEMO_MODELS = ("efficientnet-lite0@64", "histogram")
