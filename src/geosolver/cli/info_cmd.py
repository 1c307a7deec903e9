"""`geosolver info STORE`: what a store holds."""

from __future__ import annotations

from geosolver.cli import summary


def register(sub) -> None:
    p = sub.add_parser("info", help=summary("info"))
    p.add_argument("store", help="embedding store directory")
    p.add_argument("--verify", action="store_true", help="check every shard (checksum, shape, finite values, metadata); exit 2 if damaged")
    p.set_defaults(func=run)


def run(args) -> int:
    from geosolver.index import verify_saved_indexes
    from geosolver.store import EmbeddingStore

    st = EmbeddingStore(args.store)
    if args.verify:  # check before describing: describe reads the metadata a damaged store may lack
        problems = st.verify()
        problems += verify_saved_indexes(st)  # the saved index files beside it
        if problems:
            print(f"verify      {len(problems)} PROBLEM(S) in {st.path}:\n  " + "\n  ".join(problems))
            return 2
    print(st.describe())
    fails = st.failures
    if len(fails):
        print(f"failures    {len(fails)}; most common reasons:")
        for reason, n in fails["reason"].str.slice(0, 80).value_counts().head(5).items():
            print(f"  {n:6d}  {reason}")
    skipped = st.skipped
    if len(skipped):
        print(f"skipped     {len(skipped)} row(s) the reader could not use (e.g. {skipped.iloc[0]['id']}: {skipped.iloc[0]['reason']})")
    if args.verify:
        print("verify      ok")
    return 0
