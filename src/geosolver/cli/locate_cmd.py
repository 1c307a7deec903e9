"""``geosolver locate PHOTO ... --gallery STORE`` (kNN retrieval, optionally fused with a text prior)
or ``--zero-shot LEVEL`` (no gallery: the photo against prompts naming places): where were these
photos taken?"""

from __future__ import annotations

import argparse
import json
import sys

from geosolver.cli import summary
from geosolver.cli.args import add_max_photo_option, non_negative_float, non_negative_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from geosolver.encoders import MODEL_HELP, TTA_MODES
    from geosolver.index import KINDS
    from geosolver.names import (DEFAULT_K, DEFAULT_PRIOR_WEIGHT, DEFAULT_RADIUS_KM, DEFAULT_STRATEGY, DEFAULT_TEMPERATURE,
                                 PRIOR_BY, PRIORS, STRATEGIES)
    from geosolver.names import ZERO_SHOT_LEVELS as LEVELS
    from geosolver.names import ZERO_SHOT_MIN_POPULATION as DEFAULT_MIN_POPULATION
    from geosolver.names import ZERO_SHOT_TEMPLATES as DEFAULT_TEMPLATES

    p = sub.add_parser(
        "locate", help=summary("locate"),
        description="Locate photos by kNN retrieval over a gallery (--gallery STORE; --prior text fuses in the zero-shot "
        "country probabilities of a CLIP with a text tower), or with no gallery at all by comparing each photo with "
        "prompts naming places (--zero-shot countries|regions|cities, StreetCLIP's zero-shot use).",
    )
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="image files or zip://ARCHIVE::MEMBER sources")
    p.add_argument("--gallery", default=None, help="gallery embedding store (kNN retrieval); not used with --zero-shot")
    p.add_argument("--model", default=None, help="default: the encoder named in the gallery's manifest (with --zero-shot: "
                   "streetclip); otherwise " + MODEL_HELP)
    p.add_argument("--k", type=positive_int, default=DEFAULT_K, help=f"neighbours that vote (default {DEFAULT_K})")
    p.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY, help=f"aggregation (default {DEFAULT_STRATEGY})")
    p.add_argument("--temperature", type=positive_float, default=DEFAULT_TEMPERATURE, help="softmax temperature on similarities")
    p.add_argument("--radius-km", type=positive_float, default=DEFAULT_RADIUS_KM, help="neighbourhood radius in km")
    p.add_argument("--tta", choices=TTA_MODES, default=None, help="test-time augmentation")
    p.add_argument("--index", choices=KINDS, default=KINDS[0], help=f"gallery index kind (default {KINDS[0]})")
    p.add_argument("--show", type=non_negative_int, default=5, help="neighbours to print per photo")
    p.add_argument("--json", action="store_true", help="print one JSON object per photo")
    add_max_photo_option(p)
    z = p.add_argument_group("zero-shot and text prior (a CLIP with a text tower, e.g. streetclip)")
    z.add_argument("--zero-shot", choices=LEVELS, default=None, metavar="LEVEL",
                   help=f"locate without a gallery: one of {', '.join(LEVELS)}; the guess is the best place's representative "
                        "point (a populated place inside it), with the top places and their probabilities")
    z.add_argument("--hierarchical", action="store_true",
                   help="--zero-shot regions|cities: countries first, then the regions/cities inside the best --top-countries")
    z.add_argument("--top-countries", type=positive_int, default=3, help="countries kept by --hierarchical (default 3)")
    z.add_argument("--min-population", type=positive_int, default=None, help=f"--zero-shot cities: smallest city population named (default {DEFAULT_MIN_POPULATION})")
    z.add_argument("--prompt", default=None, metavar="TEMPLATE",
                   help="prompt template with {country}, {region}, {city} (default, per level: "
                        + "; ".join(f"{k}: '{v}'" for k, v in DEFAULT_TEMPLATES.items()).replace("%", "%%") + ")")
    z.add_argument("--text-temperature", type=positive_float, default=None,
                   help="zero-shot softmax temperature (default: the CLIP's own logit scale)")
    z.add_argument("--prior", choices=PRIORS, default="none",
                   help="with --gallery: 'text' multiplies each neighbour's vote by the zero-shot probability of its country "
                        "(or region, --prior-by), so a look-alike in a country the text rules out loses (default none)")
    z.add_argument("--prior-by", choices=PRIOR_BY, default=None, help=f"what --prior text matches (default {PRIOR_BY[0]})")
    z.add_argument("--prior-weight", type=non_negative_float, default=None,
                   help=f"exponent on the prior's probabilities; 0 = no prior (default {DEFAULT_PRIOR_WEIGHT:g})")
    h = p.add_argument_group("location head (geosolver head train)")
    h.add_argument("--head", default=None, metavar="DIR", help="with --gallery: a head trained on the gallery's embeddings. "
                   "Alone it answers with the head's own guess (cells: its top cell's point; flow: the densest of its samples)")
    h.add_argument("--fuse", action="store_true", help="with --head: the kNN vote with each neighbour's vote multiplied by the "
                   "head's probability of its place (cells: its cell's; flow: the density there), instead of the head alone")
    h.add_argument("--head-weight", type=non_negative_float, default=None, help="--fuse: exponent λ on the head's probabilities (default 1)")
    p.set_defaults(func=run)


def _check_modes(args: argparse.Namespace) -> None:
    """One line for option combinations that mean nothing."""
    from geosolver.errors import UserError

    if args.zero_shot is None and args.gallery is None:
        raise UserError("locate needs --gallery STORE (kNN retrieval) or --zero-shot countries|regions|cities (no gallery)")
    if args.zero_shot is not None and args.gallery is not None:
        raise UserError("--zero-shot locates without a gallery; drop --gallery, or fuse the text model with the gallery's "
                        "kNN vote with --prior text")
    if args.zero_shot is None and (args.hierarchical or args.min_population is not None):
        raise UserError("--hierarchical and --min-population apply to --zero-shot only")
    if args.hierarchical and args.zero_shot == "countries":
        raise UserError("--hierarchical needs --zero-shot regions or cities (countries are its first stage)")
    if args.gallery is not None and args.prior == "none" and (args.prompt or args.text_temperature is not None):
        raise UserError("--prompt and --text-temperature need --prior text (or --zero-shot)")
    if args.prior == "none" and (args.prior_by is not None or args.prior_weight is not None):
        raise UserError("--prior-by and --prior-weight set the text prior: add --prior text")
    if args.head is None and (args.fuse or args.head_weight is not None):
        raise UserError("--fuse and --head-weight set how a location head is used: add --head DIR")
    if args.head is not None and args.zero_shot is not None:
        raise UserError("--head needs --gallery STORE (the head was trained on a gallery's embeddings), not --zero-shot")
    if args.head is not None and args.prior != "none":
        raise UserError("one prior at a time: --prior text or --head DIR --fuse")
    if args.head_weight is not None and not args.fuse:
        raise UserError("--head-weight sets the fused vote: add --fuse")


def _open_images(srcs: list[str]) -> tuple[list, list[str], int]:
    from geosolver.images import ImageReadError, open_image

    images, names, failed = [], [], 0
    for src in srcs:
        try:
            images.append(open_image(src))
            names.append(src)
        except (ImageReadError, OSError) as e:
            print(f"geosolver locate: error: {src}: {e}", file=sys.stderr)
            failed += 1
    return images, names, failed


def run(args: argparse.Namespace) -> int:
    from geosolver.names import PRIOR_BY

    _check_modes(args)
    if args.zero_shot is not None:
        return _run_zero_shot(args)
    from geosolver.locate import Geolocator
    from geosolver.store import read_manifest

    read_manifest(args.gallery)  # a missing or broken gallery is named before any photo is decoded
    images, names, failed = _open_images(args.photos)  # the photos before the model and the index are built
    if not images:
        return 2
    geo = Geolocator.from_store(args.gallery, encoder=args.model, index_kind=args.index)
    prior = None
    if args.prior == "text":
        prior = geo.text_prior(by=args.prior_by or PRIOR_BY[0], weight=args.prior_weight, temperature=args.text_temperature,
                               template=args.prompt)
    head = _open_head(args, geo)
    if head is not None and args.fuse:
        prior = head
    emb = geo.embed(images, tta=args.tta)
    preds = geo.locate_embeddings(emb, k=args.k, strategy=args.strategy, temperature=args.temperature, radius_km=args.radius_km, prior=prior)
    if head is not None and not args.fuse:
        _answer_with_head(head, emb, preds)
    _emit(args, names, preds, _knn_lines)
    return 2 if failed else 0


def _open_head(args: argparse.Namespace, geo):
    if args.head is None:
        return None
    from geosolver.heads.train import load_head  # torch: loaded only when a head is used

    head = load_head(args.head, weight=1.0 if args.head_weight is None else args.head_weight)
    head.check_store(geo.gallery)
    return head


def _answer_with_head(head, emb, preds: list) -> None:
    """Replace each kNN guess by the head's own (the neighbours stay listed, distances to the new guess)."""
    from geosolver.geo import haversine
    from geosolver.places import country_of

    g = head.predict(emb)
    cc = country_of(g.lat, g.lon)
    for i, p in enumerate(preds):
        p.lat, p.lon, p.confidence, p.country, p.strategy, p.k = float(g.lat[i]), float(g.lon[i]), float(g.confidence[i]), str(cc[i]), f"head-{head.kind}", 0
        for nb in p.neighbours:
            nb["distance_km"] = float(haversine(p.lat, p.lon, nb["lat"], nb["lon"], check=False))


def _run_zero_shot(args: argparse.Namespace) -> int:
    from geosolver.encoders import DEFAULT_ENCODER, load_encoder
    from geosolver.zeroshot import ZeroShot

    if args.prior != "none":
        from geosolver.errors import UserError

        raise UserError("--prior text fuses the text model with a gallery's kNN vote; with --zero-shot the text model alone decides")
    images, names, failed = _open_images(args.photos)  # the photos before the model is loaded
    if not images:
        return 2
    encoder = load_encoder(args.model or DEFAULT_ENCODER)
    zs = ZeroShot(
        encoder, level=args.zero_shot, template=args.prompt, temperature=args.text_temperature,
        hierarchical=args.hierarchical, top_countries=args.top_countries, min_population=args.min_population,
    )
    preds = zs.predict(encoder.embed_images(images, tta=args.tta), top=max(args.show, 1))
    _emit(args, names, preds, _zero_shot_lines)
    return 2 if failed else 0


def _emit(args: argparse.Namespace, names: list[str], preds: list, lines) -> None:
    """One JSON object per photo (``--json``), or the photo's name and its ``lines(args, pred)``."""
    for name, p in zip(names, preds):
        if args.json:
            print(json.dumps({"photo": name, **p.to_dict()}))
            continue
        print(name)
        for line in lines(args, p):
            print(line)


def _knn_lines(args: argparse.Namespace, p) -> list[str]:
    out = [
        f"  guess       {p.lat:.5f}, {p.lon:.5f}  country {p.country or '?'}  confidence {p.confidence:.2f}  ({p.strategy}, k={p.k})",
        f"  map         {p.osm_url}",
    ]
    if p.text_prior:
        out.append("  text prior  " + ", ".join(f"{t['name']} {t['probability']:.2f}" for t in p.text_prior))
    out.append(f"  {'#':>3} {'similarity':>10} {'lat':>10} {'lon':>11} {'km':>8}  id")
    out += [
        f"  {j:>3} {nb['similarity']:>10.4f} {nb['lat']:>10.4f} {nb['lon']:>11.4f} {nb['distance_km']:>8.0f}  {nb['id']}"
        for j, nb in enumerate(p.neighbours[: args.show], 1)
    ]
    return out


def _zero_shot_lines(args: argparse.Namespace, p) -> list[str]:
    from geosolver.locate import osm_url

    return [
        f"  guess       {p.lat:.5f}, {p.lon:.5f}  {p.name} ({p.cc})  probability {p.probability:.2f}  (zero-shot {p.level})",
        f"  map         {osm_url(p.lat, p.lon)}",
        f"  {'#':>3} {'probability':>11}  place",
        *(f"  {j:>3} {t['probability']:>11.4f}  {t['name']}" for j, t in enumerate(p.top[: args.show], 1)),
    ]
