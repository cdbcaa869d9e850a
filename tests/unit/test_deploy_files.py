"""The Dockerfile, docker-compose.yml and deploy/kubernetes/ use only what
`guardian serve` really accepts: every flag goes through the server's own
argparse parser, every environment variable is one it reads, and every port,
probe and health check points at the ports those options give. No Docker
engine here, so the files are parsed, not run; renaming a flag fails this."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import pytest
import yaml

from guardian.server.config import ENV, ServeOptions, add_arguments, options_from_args
from guardian.server.policy import load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
#: Variables the files may set that are not guardian's own.
OTHER_ENV = {"PYTHONUNBUFFERED"}


class Refused(Exception):
    pass


def serve_options(argv: Sequence[str], env: Mapping[str, str]) -> ServeOptions:
    """What `guardian <argv>` would run with, or Refused for an unknown flag or variable."""
    assert list(argv[:1]) == ["serve"], argv
    # allow_abbrev=False: the files must spell flags in full, so a rename cannot hide
    # behind a prefix that still matches.
    parser = argparse.ArgumentParser(prog="guardian serve", exit_on_error=False, allow_abbrev=False)
    add_arguments(parser)
    try:
        args, unknown = parser.parse_known_args(list(argv[1:]))
    except argparse.ArgumentError as exc:
        raise Refused(str(exc)) from exc
    if unknown:
        raise Refused(f"guardian serve does not accept {unknown}")
    stray = set(env) - set(ENV.values()) - OTHER_ENV
    if stray:
        raise Refused(f"guardian serve reads no variable {sorted(stray)}")
    return options_from_args(args, {k: str(v) for k, v in env.items()})


# --- Dockerfile ---------------------------------------------------------------


def dockerfile() -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out: List[Tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        instr, _, rest = text.partition(" ")
        out.append((instr.upper(), rest.strip()))
    return out


def exec_form(text: str) -> List[str]:
    value = json.loads(text)
    assert isinstance(value, list), f"use the exec (JSON) form: {text}"
    return value


def test_dockerfile() -> None:
    steps = dockerfile()
    froms = [rest for instr, rest in steps if instr == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS builder"), "multi-stage: a builder, then the runtime"
    final = steps[max(i for i, (instr, _) in enumerate(steps) if instr == "FROM"):]
    assert any(instr == "COPY" and "--from=builder" in rest for instr, rest in final)
    assert any(instr == "RUN" and "pip wheel" in rest for instr, rest in steps), "the builder builds a wheel"
    users = [rest for instr, rest in final if instr == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime is not root"
    for instr, rest in steps:  # sources copied from the build context exist
        if instr == "COPY" and not rest.startswith("--from"):
            for src in shlex.split(rest)[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
    env: Dict[str, str] = {}
    for instr, rest in final:
        if instr == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))  # type: ignore[misc]
    entry = exec_form(next(rest for instr, rest in final if instr == "ENTRYPOINT"))
    cmd = exec_form(next(rest for instr, rest in final if instr == "CMD"))
    assert entry == ["guardian"]
    opts = serve_options(cmd, env)
    assert opts.config == "/etc/guardian/policy.yaml"
    load_policy(str(ROOT / "deploy" / "policy.yaml"))
    exposed = {int(p) for instr, rest in final if instr == "EXPOSE" for p in rest.split()}
    assert exposed == {opts.grpc_port, opts.http_port}
    health = next(rest for instr, rest in final if instr == "HEALTHCHECK")
    assert f"127.0.0.1:{opts.http_port}/health" in health
    assert opts.bind == "0.0.0.0", "inside a container the ports must be reachable"


# --- docker-compose.yml --------------------------------------------------------


def test_docker_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    guardian = services["guardian"]
    assert guardian["build"] == "."  # the Dockerfile above: ENTRYPOINT guardian
    env = {k: str(v) for k, v in guardian["environment"].items()}
    opts = serve_options(guardian["command"], env)
    assert opts.redis_url == "redis://redis:6379/0" and "redis" in services
    container_ports = {int(p.split(":")[-1]) for p in guardian["ports"]}
    assert container_ports == {opts.grpc_port, opts.http_port}
    if not opts.admin_token and not opts.admin_token_file:
        # ResetLimit is open without a token: never published beyond the host's loopback
        assert all(p.startswith("127.0.0.1:") for p in guardian["ports"]), guardian["ports"]
    for volume in guardian.get("volumes", ()):
        assert (ROOT / volume.split(":")[0]).exists(), volume
    assert guardian["depends_on"]["redis"]["condition"] == "service_healthy"


# --- deploy/kubernetes ------------------------------------------------------------


def k8s_docs() -> Iterator[Tuple[str, Dict[str, Any]]]:
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def guardian_containers() -> Iterator[Tuple[str, Dict[str, Any]]]:
    for name, doc in k8s_docs():
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", ()):
            if c["image"].startswith("guardian-ratelimit"):
                yield f"{name}:{doc['metadata']['name']}/{c['name']}", c


def test_kubernetes_files_exist_with_a_cluster_variant() -> None:
    names = {where.split(":")[0] for where, _ in guardian_containers()}
    assert names == {"sidecar.yaml", "redis-cluster.yaml"}
    cluster = [c for where, c in guardian_containers() if where.startswith("redis-cluster.yaml")]
    assert any("redis+cluster://" in " ".join(c["args"]) for c in cluster)


@pytest.mark.parametrize("where", [w for w, _ in guardian_containers()])
def test_kubernetes_guardian_container(where: str) -> None:
    c = dict(guardian_containers())[where]
    env = {e["name"]: str(e.get("value", "x")) for e in c.get("env", ())}
    opts = serve_options(c["args"], env)
    ports = {p["containerPort"] for p in c["ports"]}
    assert ports == {opts.grpc_port, opts.http_port}
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = c[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, opts.http_port), probe
    assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"]


def test_kubernetes_policy_configmap_parses() -> None:
    maps = [doc for _, doc in k8s_docs() if doc["kind"] == "ConfigMap"]
    assert maps
    for m in maps:
        for name, text in m["data"].items():
            parse_policy(text, name)


def test_a_renamed_flag_or_variable_is_refused() -> None:
    with pytest.raises(Refused):
        serve_options(["serve", "--redis", "redis://x"], {})
    with pytest.raises(Refused):
        serve_options(["serve"], {"GUARDIAN_PORT": "1"})
