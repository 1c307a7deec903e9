"""`geosolver serve --gallery STORE [--play QUERIES]`: the web app (drop a photo, see the guess on a
map) + JSON API; with ``--play``, also a GeoGuessr duel against the model on the query store's photos."""

from __future__ import annotations


def register(sub) -> None:
    from geosolver.cli.args import add_overwrite_option, port, positive_float, positive_int
    from geosolver.encoders import MODEL_HELP
    from geosolver.index import KINDS
    from geosolver.locate import DEFAULT_K, DEFAULT_STRATEGY, STRATEGIES

    p = sub.add_parser("serve", help="web app: drop a photo, see the guess on a map (+ JSON API)")
    p.add_argument("--gallery", required=True, help="gallery embedding store")
    p.add_argument("--model", default=None, help="default: the encoder named in the gallery's manifest; otherwise " + MODEL_HELP)
    p.add_argument("--device", default="auto", help="encoder device: auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--index", choices=KINDS, default=KINDS[0], help=f"gallery index kind (default {KINDS[0]})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="port, 1-65535 (default 8000)")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0, help="largest photo accepted, MB (default 20)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="most pixels decoded for one photo, checked from its header before decoding; JPEGs count at their "
                        "reduced decode size (default 40000000)")
    p.add_argument("--max-decodes", type=positive_int, default=None, help="most photos decoded at the same time (default 2)")
    p.add_argument("--read-timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="seconds an upload may take to arrive before the server answers 408 (default 30)")
    p.add_argument("--k", type=positive_int, default=DEFAULT_K, help=f"default neighbours that vote (default {DEFAULT_K})")
    p.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY, help=f"default aggregation (default {DEFAULT_STRATEGY})")
    p.add_argument("--max-batch", type=positive_int, default=8, help="most concurrent photos per encoder batch (default 8)")
    p.add_argument("--save-uploads", metavar="DIR", default=None, help="keep every upload and its answer in DIR (default: keep nothing)")
    add_overwrite_option(p)
    p.add_argument("--play", metavar="QUERIES", default=None,
                   help="enable Play mode, a GeoGuessr duel against the model: QUERIES is an embedding store from the gallery's encoder "
                        "whose rows have true lat/lon and an image source (files, zip:// or tar members); each round shows one of its "
                        "photos (re-encoded, no EXIF) and the model guesses from the stored embedding with that query's own id "
                        "excluded from the gallery (leave-one-out). Default: off (the play routes answer 404)")
    p.add_argument("--round-ttl", type=positive_float, default=600.0, metavar="SECONDS",
                   help="seconds a Play round stays open for a guess (default 600; later guesses get 410)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from geosolver.serve.app import create_app, open_geolocator, serve
    except ModuleNotFoundError as e:
        from geosolver.cli import UserError

        raise UserError(f"the web app needs the [serve] extra ({e.name} is missing): pip install 'geosolver[serve]'") from None

    if args.play:  # fail fast, before the gallery's index is built: the queries must match the gallery's encoder
        from geosolver.serve.play import check_queries
        from geosolver.store import EmbeddingStore

        check_queries(args.play, EmbeddingStore(args.gallery).encoder)
    limits = {key: getattr(args, key, None) for key in ("max_pixels", "max_decodes", "read_timeout")}
    geo = open_geolocator(args.gallery, args.model, device=args.device, index_kind=args.index)
    app = create_app(
        geo, max_upload_mb=args.max_upload_mb, default_k=args.k, default_strategy=args.strategy,
        max_batch=args.max_batch, save_uploads=args.save_uploads, play=args.play, round_ttl=args.round_ttl,
        **{key: value for key, value in limits.items() if value is not None},
    )
    print(f"geosolver serve: {geo.encoder.name} over {len(geo.gallery)} gallery photos ({geo.gallery.path})")
    if app.state.serve.play is not None:
        play = app.state.serve.play
        print(f"geosolver serve: play mode on: {len(play)} query photos ({play.queries.path}); leave-one-out model guesses")
    print(f"geosolver serve: open http://{args.host}:{args.port}/  (API docs at /docs; Ctrl-C to stop)")
    serve(app, host=args.host, port=args.port)
    return 0
