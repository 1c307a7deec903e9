"""`geosolver info STORE`: what a store holds."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("info", help="print what an embedding store holds")
    p.add_argument("store")
    p.add_argument("--verify", action="store_true", help="also check every shard's checksum")
    p.set_defaults(func=run)


def run(args) -> int:
    from geosolver.store import EmbeddingStore

    st = EmbeddingStore(args.store)
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
        problems = st.verify()
        print("verify      ok" if not problems else "verify      PROBLEMS:\n  " + "\n  ".join(problems))
        return 1 if problems else 0
    return 0
