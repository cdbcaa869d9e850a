"""Recovery after hundreds of Redis restarts (issue 11), not in CI:

    python bench/redis_restarts.py [--restarts 300]

For each backend (sync, asyncio, batched) and pool size (max_connections=4
and redis-py's default), kills and restarts a real redis-server N times,
with 3 failed checks per outage, and requires the first check after each
restart to succeed. Prints the pool's count of connections over time."""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))

import redis_restarts  # noqa: E402
from redis_servers import Server  # noqa: E402


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
