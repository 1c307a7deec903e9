"""`geosolver serve --gallery STORE [--play QUERIES]`: the web app (drop a photo, see the guess on a
map) + JSON API; with ``--play``, also a GeoGuessr duel against the model on the query store's photos.

The options other than the geolocator's (``--gallery``, ``--model``, ``--device``, ``--index``)
are derived from :class:`geosolver.serve.options.ServeOptions` (each field's ``metadata`` holds its
help), so a setting is declared once.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

DESCRIPTION = (
    "Start a local web app over a gallery embedding store: open the page, drop a photo, and see where the model thinks it was "
    "taken on a map (with the neighbours that voted); the same answer is a JSON API (POST /api/locate; docs at /docs). With "
    "--play QUERIES, the page also offers a GeoGuessr-style duel against the model on held-out photos. The server binds to "
    "127.0.0.1 by default and has no authentication."
)


def _value_type(f):
    """argparse ``type`` of a :class:`ServeOptions` field, from its default (with the project's checked number types)."""
    from geosolver.cli.args import port, positive_float, positive_int

    if f.name == "port":
        return port
    if isinstance(f.default, bool):
        return None
    if isinstance(f.default, int):
        return positive_int
    if isinstance(f.default, float):
        return positive_float
    return str


def add_options(p: argparse.ArgumentParser) -> None:
    """One ``--option`` per command-line field of :class:`ServeOptions`, its help from the field's metadata."""
    from geosolver.serve.options import cli_fields

    for f in cli_fields():
        kw = dict(f.metadata["argparse"])
        if kw.get("action") not in ("store_true", "append"):
            kw.setdefault("type", _value_type(f))
        default = f.default if f.default is not MISSING else None
        shown = "off" if default is None or default is False else ("none" if default == () else default)
        kw["help"] = f"{f.metadata['help']} (default {shown})"
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, **kw)


def register(sub) -> None:
    from geosolver.cli.args import add_overwrite_option
    from geosolver.encoders import MODEL_HELP
    from geosolver.index import KINDS

    p = sub.add_parser("serve", help="web app: drop a photo, see the guess on a map (+ JSON API, Play mode)", description=DESCRIPTION)
    p.add_argument("--gallery", required=True, help="gallery embedding store")
    p.add_argument("--model", default=None, help="default: the encoder named in the gallery's manifest; otherwise " + MODEL_HELP)
    p.add_argument("--device", default="auto", help="encoder device: auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--index", choices=KINDS, default=KINDS[0], help=f"gallery index kind (default {KINDS[0]})")
    add_options(p)
    add_overwrite_option(p)  # --save-uploads into a folder serve did not make
    p.set_defaults(func=run)


def serve_options(args: argparse.Namespace):
    """The :class:`ServeOptions` of parsed ``geosolver serve`` arguments (options not given keep their defaults)."""
    from geosolver.serve.options import ServeOptions, cli_fields

    return ServeOptions(**{f.name: getattr(args, f.name) for f in cli_fields() if getattr(args, f.name, None) is not None})


def run(args) -> int:
    try:
        from geosolver.serve.app import create_app, open_geolocator, serve
    except ModuleNotFoundError as e:
        from geosolver.cli import UserError

        raise UserError(f"the web app needs the [serve] extra ({e.name} is missing): pip install 'geosolver[serve]'") from None

    options = serve_options(args)
    if options.play or options.head:  # fail fast, before the gallery's index is built
        from geosolver.serve.headmap import open_head
        from geosolver.serve.play import check_not_gallery, check_queries
        from geosolver.store import EmbeddingStore

        gallery = EmbeddingStore(args.gallery)
        if options.play:
            queries = check_queries(options.play, gallery.encoder)
            if not options.allow_gallery_queries:
                check_not_gallery(queries, gallery)
        if options.head:  # a head of another encoder or dim: one line, before the index is built
            options.head = open_head(options.head, gallery)
    geo = open_geolocator(args.gallery, args.model, device=args.device, index_kind=args.index)
    app = create_app(geo, options)
    print(f"geosolver serve: {geo.encoder.name} over {len(geo.gallery)} gallery photos ({geo.gallery.path})")
    if app.state.serve.play is not None:
        play = app.state.serve.play
        print(f"geosolver serve: play mode on: {len(play)} query photos ({play.queries.path}); leave-one-out model guesses")
    if app.state.serve.headmap is not None:
        hm = app.state.serve.headmap
        print(f"geosolver serve: {hm.head.kind} head {hm.head.info['path']} on the map" + (", fused with the vote" if hm.fuse else " (shown; --fuse to vote with it)"))
    print(f"geosolver serve: open http://{options.host}:{options.port}/  (API docs at /docs; Ctrl-C to stop)")
    serve(app)
    return 0
