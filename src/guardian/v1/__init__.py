"""guardian.v1: the sidecar's gRPC messages and stubs, generated from
proto/guardian/v1/guardian.proto by ``python proto/generate.py`` (checked in;
a test regenerates them and compares)."""
