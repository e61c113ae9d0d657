"""HTTP/2 or HTTP/1.1 to a registry 50 ms away: does one multiplexed connection beat adaptive keep-alive ones?

Docker Hub, GHCR and ECR offer h2 over TLS; so does Debian's docker-registry (Go's server negotiates it by
ALPN). The client's own transport (wire.py) speaks HTTP/1.1 only; httpx's own transport (httpcore + the h2
package) speaks h2. This starts a TLS registry, seeds it, puts the latency proxy in front (TLS is piped with
each client chunk delayed), and times `RegistryClient.observe` over every tag with both. Prints JSON.

    uv run python -m bench.http2 --repos 10 --tags 40 --latency-ms 50 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from audit.adapters.registry import RegistryClient, RegistrySettings
from audit.adapters.registry.tls import build_ssl_context
from audit.models import ImageRef
from audit.workers import drain
from bench.proxy import LatencyProxy
from bench.seed import seed_registry
from tests.support.local_registry import local_registry


def negotiated(host: str, port: int, ca_file: Path) -> str | None:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, port)) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        return tls.selected_alpn_protocol()


async def timed(
    refs: Sequence[ImageRef], settings: RegistrySettings, transport: httpx.AsyncBaseTransport | None
) -> Json:
    async with RegistryClient(settings, transport=transport) as client:
        started, cpu = time.perf_counter(), time.process_time()
        found = 0

        async def observe(ref: ImageRef) -> None:
            nonlocal found
            observation = await client.observe(ref, expected=ref.digest)
            found += observation.live_digest is not None

        await drain(refs, observe, workers=2 * settings.concurrency)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    result: Json = {"seconds": round(seconds, 3), "cpu_s": round(cpu_seconds, 3), "found": found, "tags": len(refs)}
    if isinstance(transport, VersionCount):
        result["http_versions"] = transport.versions
    return result


type Json = dict[str, object]


class VersionCount(httpx.AsyncBaseTransport):
    """Counts the HTTP version of every response (proof that h2 was spoken, not just offered)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.versions: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        version = response.extensions.get("http_version", b"?").decode()
        self.versions[version] = self.versions.get(version, 0) + 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http2")
    parser.add_argument("--repos", type=int, default=10)
    parser.add_argument("--tags", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    results: Json = {}
    with local_registry(Path(tempfile.mkdtemp(prefix="digest-audit-h2-")), auth="none", tls=True) as registry:
        ca_file = registry.process.ca_file
        assert ca_file is not None
        host, _, port = registry.host.partition(":")
        results["alpn_direct"] = negotiated(host, int(port), ca_file)
        workload = seed_registry(registry, args.repos, args.tags, tamper=1, delete=1)
        with LatencyProxy(host, int(port), latency=args.latency_ms / 1000) as proxy:
            results["alpn_through_proxy"] = negotiated("127.0.0.1", proxy.port, ca_file)
            refs = [ImageRef.parse(image.reference(proxy.host)) for image in workload.images]
            settings = RegistrySettings(ca_file=ca_file)

            def h2() -> httpx.AsyncBaseTransport:
                return VersionCount(
                    httpx.AsyncHTTPTransport(http1=False, http2=True, verify=build_ssl_context(ca_file))
                )

            variants = {
                "http/1.1: wire.py, adaptive connections (default)": lambda: None,
                "h2: httpx's own transport (httpcore + h2), one connection": h2,
            }
            by_variant: dict[str, list[Json]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, transport in variants.items():
                    by_variant[name].append(asyncio.run(timed(refs, settings, transport())))
            results["latency_ms"] = args.latency_ms
            results["tags"] = len(refs)
            results["by_variant"] = {
                name: {
                    "tags_per_s": round(len(refs) / min(float(str(r["seconds"])) for r in runs), 1),
                    "runs": runs,
                }
                for name, runs in by_variant.items()
            }
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
