"""vggfeat's index against autofaiss's on the same seeded vectors and the same memory budget: factory string,
index size, build seconds, peak RSS of the build, recall@10 against exact search and ms per query.

The vectors are clustered and L2-normalised, written as an embedding-reader folder (emb/<i>.npy + meta/<i>.parquet
with a `path` column), which both tools read. autofaiss pins numpy < 2 and an old faiss, so it runs in a venv of
its own (`python -m venv V && V/bin/pip install autofaiss faiss-cpu==1.8.0 'pyarrow<16'`); both indices are then
searched here, with one exact ground truth, by one recall function.

    python scripts/bench_index.py --rows 50000 --dim 128 --budget 4MB --autofaiss /work/venvs/autofaiss/bin/python
    python scripts/bench_index.py --rows 1000000 --dim 256 --budget 64MB        (vggfeat alone)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vggfeat.index.budget import format_size
from vggfeat.index.tune import ExactTopK, recall_at_k

FILE_ROWS = 100_000  # rows per emb/meta file, as clip-retrieval's partitions


def write_vectors(root: Path, rows: int, dim: int, centres: int, noise: float, seed: int) -> None:
    """Seeded clustered vectors: a Gaussian centre per cluster plus Gaussian noise, L2-normalised, file by file."""
    done = root / "DONE"
    if done.is_file() and done.read_text() == f"{rows} {dim} {centres} {noise} {seed}":
        return
    (root / "emb").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    for f, start in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - start)
        x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(root / "emb" / f"{f:04d}.npy", x)
        paths = pa.table({"path": [f"img_{i:09d}.jpg" for i in range(start, start + n)]})
        pq.write_table(paths, root / "meta" / f"{f:04d}.parquet")
    done.write_text(f"{rows} {dim} {centres} {noise} {seed}")


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes of that child alone, output) of a command."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{out[-3000:]}")
    return time.perf_counter() - t, usage.ru_maxrss * 1024, out


AUTOFAISS = """
import sys, json
from autofaiss import build_index
emb, out, budget = sys.argv[1:4]
index, infos = build_index(embeddings=emb, index_path=out + "/knn.index", index_infos_path=out + "/infos.json",
    max_index_memory_usage=budget, current_memory_available="16G", metric_type="ip", file_format="npy",
    max_index_query_time_ms=10, save_on_disk=True, verbose=40)
"""


def ground_truth(data: Path, queries: np.ndarray, k: int) -> np.ndarray:
    from vggfeat.index.source import open_source

    truth = ExactTopK(queries, k)
    for rows, start in open_source(data).iter_vector_blocks(1 << 16):
        truth.add(rows, start)
    return truth.ids()


def evaluate(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, params: str) -> tuple[float, float]:
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    index.search(queries[:10], truth.shape[1])  # warm: page in a memory-mapped index
    t = time.perf_counter()
    _, found = index.search(queries, truth.shape[1])
    return recall_at_k(found, truth), (time.perf_counter() - t) * 1000 / len(queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--budget", default="4MB")
    ap.add_argument("--centres", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("bench_index"))
    ap.add_argument("--autofaiss", default=None, help="python of a venv with autofaiss installed")
    ap.add_argument("--tools", default="vggfeat,autofaiss", help="which to build, in order (autofaiss's is reused)")
    args = ap.parse_args()
    data = args.work / f"vectors_{args.rows}x{args.dim}"
    write_vectors(data, args.rows, args.dim, args.centres, args.noise, args.seed)
    k = 10
    # the bench's own queries: another seed than the build's held-out set
    qrows = np.sort(np.random.default_rng(args.seed + 1).choice(args.rows, 1000, replace=False))
    from vggfeat.index.source import open_source

    queries = open_source(data).read_rows(qrows)
    truth = ground_truth(data, queries, k)
    table = []
    for tool in args.tools.split(","):
        if tool == "vggfeat":
            table.append(bench_vggfeat(args, data, queries, truth))
        elif tool == "autofaiss" and args.autofaiss:
            table.append(bench_autofaiss(args, data, queries, truth))
    print(f"\n{args.rows} x {args.dim} float32 ({format_size(args.rows * args.dim * 4)}), budget {args.budget}")
    print(f"{'tool':<10} {'size':>10} {'build s':>8} {'peak RSS':>10} {'recall@10':>9} {'ms/query':>8}  factory")
    for tool, fac, size, secs, rss, recall, ms in table:
        print(
            f"{tool:<10} {format_size(size):>10} {secs:>8.1f} {format_size(rss):>10} {recall:>9.4f} {ms:>8.3f}  {fac}"
        )


def bench_vggfeat(args, data, queries, truth):
    ours = args.work / f"vggfeat_{args.rows}x{args.dim}.index"
    cmd = [sys.executable, "-m", "vggfeat", "index", "build", str(data), "-o", str(ours)]
    secs, rss, out = timed(cmd + ["--max-memory", args.budget, "--device", "cpu"])
    print(out)
    meta = json.loads((ours / "index.json").read_text())
    index = faiss.read_index(str(ours / "index.faiss"))  # plain faiss: the tuned parameters are already set
    recall, ms = evaluate(index, queries, truth, "")
    size = sum(f.stat().st_size for f in ours.iterdir() if f.suffix in (".faiss", ".ivfdata"))
    return "vggfeat", meta["factory"] + f" ({meta['search_params']})", size, secs, rss, recall, ms


def bench_autofaiss(args, data, queries, truth):
    af = args.work / f"autofaiss_{args.rows}x{args.dim}_{args.budget}"
    af.mkdir(parents=True, exist_ok=True)
    if (af / "bench.json").is_file():  # autofaiss's build is long: measured once per data and budget
        secs, rss = json.loads((af / "bench.json").read_text())
    else:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        secs, rss, _ = timed([args.autofaiss, "-c", AUTOFAISS, str(data / "emb"), str(af), args.budget], env)
        (af / "bench.json").write_text(json.dumps([secs, rss]))
    infos = json.loads((af / "infos.json").read_text())
    index = faiss.read_index(str(af / "knn.index"))
    recall, ms = evaluate(index, queries, truth, infos["index_param"])
    size = (af / "knn.index").stat().st_size
    return "autofaiss", f"{infos['index_key']} ({infos['index_param']})", size, secs, rss, recall, ms


if __name__ == "__main__":
    main()
