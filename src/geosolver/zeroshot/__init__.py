"""Zero-shot geolocation: compare a photo's CLIP embedding with text prompts naming places.

:mod:`.labels`: the label sets (countries, regions, cities) and their representative points;
:mod:`.model`: the text embeddings (cached) and :class:`ZeroShot`.
"""

from geosolver.errors import ZeroShotError
from geosolver.zeroshot.labels import DEFAULT_MIN_POPULATION, DEFAULT_TEMPLATES, LEVELS, LabelSet, label_set
from geosolver.zeroshot.model import ZeroShot, ZeroShotPrediction, text_embeddings

__all__ = [
    "DEFAULT_MIN_POPULATION",
    "DEFAULT_TEMPLATES",
    "LEVELS",
    "LabelSet",
    "ZeroShot",
    "ZeroShotError",
    "ZeroShotPrediction",
    "label_set",
    "text_embeddings",
]
