# guardian serve: the gRPC sidecar (guardian.v1, Envoy RLS v3) with HTTP
# /metrics, /health and /ready on 9090.
#   docker build -t guardian .
#   docker run -p 50051:50051 -p 9090:9090 guardian
# Every `guardian serve` flag is also an environment variable (guardian serve --help);
# tests/unit/test_deploy_files.py checks the ones used here against the real parser.

# --- builder: compile the C core and the native data plane into a wheel -------
FROM python:3.12-slim AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config libnghttp2-dev \
 && rm -rf /var/lib/apt/lists/*
ENV GUARDIAN_EXPECT_NATIVE=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY src ./src
COPY lua ./lua
COPY proto ./proto
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime: the wheel and its server extra, no compiler, not root ------------
FROM python:3.12-slim
# libnghttp2 for the native engine (the default, --engine auto)
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnghttp2-14 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home guardian
COPY --from=builder /wheels /wheels
RUN set -e; whl="$(ls /wheels/*.whl)"; pip install --no-cache-dir "${whl}[server]"; rm -rf /wheels
COPY deploy/policy.yaml /etc/guardian/policy.yaml
USER 10001
ENV GUARDIAN_BIND=0.0.0.0 \
    GUARDIAN_GRPC_PORT=50051 \
    GUARDIAN_HTTP_PORT=9090 \
    GUARDIAN_CONFIG=/etc/guardian/policy.yaml \
    PYTHONUNBUFFERED=1
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=2).status != 200)"]
ENTRYPOINT ["guardian"]
CMD ["serve"]
