"""Ask a running `guardian serve` over gRPC.
Start it:  guardian serve            (127.0.0.1:50051)
Run:       python examples/sidecar_client.py [host:port]"""

from __future__ import annotations

import sys
import uuid

from guardian.client import Client

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
key = f"client-{uuid.uuid4().hex[:8]}"
with Client(target) as client:
    results = [client.check_limit(key) for _ in range(3)]
    for r in results:
        print(f"allowed={r.allowed} remaining={r.remaining} limit={r.limit}")
    print("usage:", client.get_usage(key))
