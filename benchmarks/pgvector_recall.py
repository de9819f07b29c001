"""pgvector's HNSW search against exact search, on a gallery already in PostgreSQL.

    python benchmarks/pgvector_recall.py --database-url URL [--probes 400] [--ef auto,200,400]

Probes are stored faces, each left out of its own search (the answer must be its
subject's other face), as `benchmarks/gallery.py` does over HTTP. For each hnsw.ef_search
(``auto``: what the service picks for the graph's size) it prints recall@1 against exact
search in this process and the search's p50/p95 (the query as the service sends it:
app/gallery/pgvector.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np

from app.gallery import Gallery, pgvector
from app.vectors.ann import AnnIndex


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--probes", type=int, default=400)
    parser.add_argument("--ef", default="auto,200,400")
    parser.add_argument("--collection", default="default")
    parser.add_argument("--encoder", default="dlib_resnet_v1")
    args = parser.parse_args()
    store = Gallery.connect(args.database_url)
    rows = store.faces.load(dim=128)
    encoders = [args.encoder]
    exact = AnnIndex(128, exact_below=2**62)  # numpy rows, always exact
    exact.add(rows.face_ids, rows.subject_ids, rows.matrix)
    picks = np.random.default_rng(1).choice(len(rows.face_ids), size=args.probes, replace=False)
    probes = [(rows.face_ids[i], rows.matrix[i].copy()) for i in picks]
    want = [exact.search(q, 1, exclude=f)[0].subject_id for f, q in probes]
    del rows, exact
    auto = pgvector.ef_search_for(pgvector.graph_size(store.database.engine))
    for ef in (auto if x == "auto" else int(x) for x in args.ef.split(",")):
        search = functools.partial(
            pgvector.search,
            store.database.engine,
            collection=args.collection,
            k=5,
            encoders=encoders,
            ef_search=ef,
        )
        for f, q in probes[:20]:  # index pages into the cache first
            search(query=q, exclude=f)
        hits, ms = 0, []
        for (f, q), subject in zip(probes, want, strict=True):
            started = time.perf_counter()
            got = search(query=q, exclude=f)
            ms.append((time.perf_counter() - started) * 1000)
            hits += bool(got) and got[0].subject_id == subject
        line = {
            "ef_search": ef,
            "recall_at_1": round(hits / len(probes), 4),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
        }
        print(json.dumps(line), flush=True)
    store.close()


if __name__ == "__main__":
    main()
