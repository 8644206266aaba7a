"""faiss exact top-k (``IndexFlatL2``, what the post-processor uses) against scikit-learn's brute-force
``NearestNeighbors`` on MNIST-sized random data: a real set of 60 000 x 784, ``--queries`` generated samples, k = 20.
Both sides timed in turns (medians); the neighbour lists must be identical (random floats: no ties).

    python bench/flow_neighbours.py [--real 60000] [--dim 784] [--queries 2000] [--k 20] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import interleaved_medians, machine
from lightning_guidance.flow.neighbours import top_k_neighbours


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=int, default=60_000)
    ap.add_argument("--dim", type=int, default=784)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import faiss
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    real = rng.random((args.real, args.dim), dtype=np.float32)
    queries = rng.random((args.queries, args.dim), dtype=np.float32)
    sk = NearestNeighbors(n_neighbors=args.k, algorithm="brute")
    results = {}

    def run_faiss():
        results["faiss"] = top_k_neighbours(queries, real, args.k)

    def run_sklearn():
        with threadpool_limits(args.threads):
            results["sklearn"] = sk.fit(real).kneighbors(queries)

    times = interleaved_medians({"faiss": run_faiss, "sklearn": run_sklearn}, args.repeats)
    (fd, fi), (sd, si) = results["faiss"], results["sklearn"]
    same = float((fi == si).mean())
    max_dist = float(np.abs(np.sqrt(np.maximum(fd, 0)) - sd).max())
    print(f"machine: {machine()}")
    print(f"real {args.real} x {args.dim}, {args.queries} queries, k = {args.k}")
    print(f"faiss IndexFlatL2: {times['faiss']:.2f} s   sklearn brute: {times['sklearn']:.2f} s   "
          f"speed-up {times['sklearn'] / times['faiss']:.2f}x")
    print(f"identical neighbour indices: {same * 100:.3f} %   max |distance difference|: {max_dist:.2e}")
    # where the lists differ, are the two neighbours at the same distance (float32 rounding of ||x||^2 + ||y||^2
    # - 2 x.y in faiss against sklearn's own rounding), i.e. ties at float32 precision?
    fdist = np.sqrt(np.maximum(fd, 0))
    rows = np.nonzero((fi != si).any(axis=1))[0]
    tie_gap = max((float(np.abs(fdist[r] - sd[r]).max()) for r in rows), default=0.0)
    gaps = np.diff(sd, axis=1)
    print(f"rows with a different list: {len(rows)} of {len(fi)}; in them the swapped neighbours' distances differ "
          f"by <= {tie_gap:.2e} (median gap between consecutive neighbours: {np.median(gaps):.2e})")


if __name__ == "__main__":
    main()
