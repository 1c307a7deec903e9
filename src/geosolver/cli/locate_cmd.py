"""``geosolver locate PHOTO ... --gallery STORE``: where were these photos taken?"""

from __future__ import annotations

import argparse
import json
import sys

from geosolver.cli.args import non_negative_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from geosolver.encoders import MODEL_HELP, TTA_MODES
    from geosolver.index import KINDS
    from geosolver.locate import DEFAULT_K, DEFAULT_RADIUS_KM, DEFAULT_STRATEGY, DEFAULT_TEMPERATURE, STRATEGIES

    p = sub.add_parser("locate", help="geolocate photos against a gallery store")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="image files or zip://ARCHIVE::MEMBER sources")
    p.add_argument("--gallery", required=True, help="gallery embedding store")
    p.add_argument("--model", default=None, help="default: the encoder named in the gallery's manifest; otherwise " + MODEL_HELP)
    p.add_argument("--k", type=positive_int, default=DEFAULT_K, help=f"neighbours that vote (default {DEFAULT_K})")
    p.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY, help=f"aggregation (default {DEFAULT_STRATEGY})")
    p.add_argument("--temperature", type=positive_float, default=DEFAULT_TEMPERATURE, help="softmax temperature on similarities")
    p.add_argument("--radius-km", type=positive_float, default=DEFAULT_RADIUS_KM, help="neighbourhood radius in km")
    p.add_argument("--tta", choices=TTA_MODES, default=None, help="test-time augmentation")
    p.add_argument("--index", choices=KINDS, default=KINDS[0], help=f"gallery index kind (default {KINDS[0]})")
    p.add_argument("--show", type=non_negative_int, default=5, help="neighbours to print per photo")
    p.add_argument("--json", action="store_true", help="print one JSON object per photo")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.images import ImageReadError, open_image
    from geosolver.locate import Geolocator

    geo = Geolocator.from_store(args.gallery, encoder=args.model, index_kind=args.index)
    images, names, failed = [], [], 0
    for src in args.photos:
        try:
            images.append(open_image(src))
            names.append(src)
        except (ImageReadError, OSError) as e:
            print(f"geosolver locate: error: {src}: {e}", file=sys.stderr)
            failed += 1
    preds = geo.locate(images, k=args.k, strategy=args.strategy, tta=args.tta, temperature=args.temperature, radius_km=args.radius_km) if images else []
    for name, p in zip(names, preds):
        if args.json:
            print(json.dumps({"photo": name, **p.to_dict()}))
            continue
        print(f"{name}")
        print(f"  guess       {p.lat:.5f}, {p.lon:.5f}  country {p.country or '?'}  confidence {p.confidence:.2f}  ({p.strategy}, k={p.k})")
        print(f"  map         {p.osm_url}")
        print(f"  {'#':>3} {'similarity':>10} {'lat':>10} {'lon':>11} {'km':>8}  id")
        for j, nb in enumerate(p.neighbours[: args.show], 1):
            print(f"  {j:>3} {nb['similarity']:>10.4f} {nb['lat']:>10.4f} {nb['lon']:>11.4f} {nb['distance_km']:>8.0f}  {nb['id']}")
    return 2 if failed else 0
