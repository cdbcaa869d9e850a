"""Recovery after hundreds of Redis restarts (issue 11), not in CI:

    python bench/redis_restarts.py [--restarts 300]

For each backend (sync, asyncio, batched) and pool size (max_connections=4
and redis-py's default), kills and restarts a real redis-server N times,
with 3 failed checks per outage, and requires the first check after each
restart to succeed. Prints the pool's count of connections over time.
Then Redis Cluster (3 masters + 3 replicas, max_connections=4): N rounds in
which every master drops every client connection (CLIENT KILL) between
checks on keys of all masters; prints each node pool's count."""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))

import redis_restarts  # noqa: E402
from redis_servers import Cluster, Server  # noqa: E402

from guardian import TokenBucketConfig  # noqa: E402
from guardian.backends.redis import RedisBackend  # noqa: E402


def cluster_rounds(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            backend = RedisBackend(TokenBucketConfig(10**9, 10**9), url=cluster.url, prefix="bench",
                                   max_connections=4, timeout=2.0)
            keys = [f"k{i}" for i in range(30)]
            counts = []
            for i in range(rounds):
                assert all(r.allowed for r in backend.take_many(keys)), i
                assert all(backend.try_take(k) for k in keys[:6]), i
                for master in cluster.masters():
                    master.cli("CLIENT", "KILL", "TYPE", "normal")
                if (i + 1) % max(rounds // 6, 1) == 0:
                    counts.append((i + 1, max(n.redis_connection.connection_pool._created_connections
                                              for n in backend.client.get_nodes())))
            assert all(r.allowed for r in backend.take_many(keys))
            print(f"cluster  max_connections=4        recovered {rounds}/{rounds} rounds of CLIENT KILL on "
                  "every master; largest node pool over time " + " ".join(f"{r}:{c}" for r, c in counts),
                  flush=True)
            backend.close()
        finally:
            cluster.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--restarts", type=int, default=300)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp)).start()
        try:
            for kind in redis_restarts.KINDS:
                for max_connections in (4, 2**31):
                    samples = redis_restarts.run(server, f"b{uuid.uuid4().hex[:8]}", kind, args.restarts,
                                                 max_connections, every=max(args.restarts // 6, 1))
                    label = "default" if max_connections == 2**31 else str(max_connections)
                    print(f"{kind:8} max_connections={label:8} recovered {samples[-1]['restart']}/"
                          f"{args.restarts} restarts in {samples[-1]['seconds']}s; pool over time "
                          + " ".join(f"{s['restart']}:{s['created']}/{s['in_use']}" for s in samples),
                          flush=True)
        finally:
            server.stop()
    cluster_rounds(args.restarts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
