"""The encoders' names and option values, torch-free: what the CLI's parsers need (importing
``geosolver.encoders`` itself stays cheap too; the backends load torch on first use)."""

from __future__ import annotations

#: test-time augmentation modes (``--tta``; see :func:`geosolver.encoders.base.tta_views`).
TTA_MODES = ("flip", "d4")

DEFAULT_ENCODER = "streetclip"

#: precision names :func:`load_encoder` accepts (the CLI's ``--precision`` choices).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

#: alias (lower case) → canonical name: a hub id for CLIP models, the backend name for offline ones.
ENCODER_ALIASES: dict[str, str] = {
    "streetclip": "geolocal/StreetCLIP",
    "clip-vit-l-14-336": "openai/clip-vit-large-patch14-336",
    "clip-vit-l-14": "openai/clip-vit-large-patch14",
    "clip-vit-b-32": "openai/clip-vit-base-patch32",
    "efficientnet-lite0": "efficientnet-lite0",
    "efficientnet-lite2": "efficientnet-lite2",
    "histogram": "histogram",
}

#: what ``--model`` accepts, for the CLI's help (one line, no ``%``: safe as an argparse help string).
MODEL_HELP = (
    f"encoder: an alias ({', '.join(a for a in ENCODER_ALIASES if ENCODER_ALIASES[a] != a)}: CLIP models from the "
    f"Hugging Face hub; default {DEFAULT_ENCODER} = {ENCODER_ALIASES[DEFAULT_ENCODER]}), an offline encoder that needs no "
    "download (histogram; efficientnet-lite0, efficientnet-lite2 (deeper); efficientnet-lite0@S / efficientnet-lite2@S = "
    "the network at a native input side of S px, e.g. efficientnet-lite0@64), a local model directory (a transformers save_pretrained CLIP, e.g. from "
    "`hf download ORG/NAME --local-dir DIR`, or one saved by geosolver), or a hub id org/name"
)

#: how the unknown-encoder error lists the names that need no path (the ``@S`` form included).
_KNOWN_NAMES = ", ".join([*sorted(ENCODER_ALIASES), "efficientnet-lite0@S", "efficientnet-lite2@S (S = input side in px)"])
