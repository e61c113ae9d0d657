"""The network edge under httpx: which transport carries a request, and a cap on every body read.

httpx stays the API (requests, auth flows, `MockTransport` in tests); the transport is where speed changes.
Direct connections go over `wire.Http1Transport` (HTTP/1.1 keep-alive on asyncio streams, docs/benchmarks.md
has why), connections through a proxy from the environment over httpx's own transport. `Routes` applies
httpx's mount rules once per origin. `CappedTransport` wraps whichever transport is used, so the body cap
holds for every response, the 401s read inside an auth flow included: at most `cap` bytes are read off the
wire and at most `cap` bytes come out of decoding, so a gzip bomb is refused instead of inflated.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import httpx

CAP_EXTENSION: Final = "digest_audit.cap"  # request extension: bytes of a 200 body the caller will read
MAX_ERROR_BODY: Final = 64 * 1024  # any other status: enough for an error document, never more
DEFAULT_CAP: Final = MAX_ERROR_BODY
_DECODABLE: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyTooLarge(Exception):
    """A response body (on the wire or decoded) was longer than the cap of its request."""


def body_cap(request: httpx.Request, status: int) -> int:
    cap = request.extensions.get(CAP_EXTENSION, DEFAULT_CAP)
    return int(cap) if status == 200 else MAX_ERROR_BODY


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, cap: int, wbits: int | None) -> None:
        self._inner = inner
        self._cap = cap
        self._decoder = zlib.decompressobj(wbits) if wbits is not None else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = produced = 0
        async for chunk in self._inner:
            read += len(chunk)
            if read > self._cap:
                raise BodyTooLarge(f"body longer than {self._cap} bytes")
            if self._decoder is None:
                produced += len(chunk)
                yield chunk
                continue
            try:
                # max_length bounds what one chunk may inflate to: a bomb stops here, not after decoding
                out = self._decoder.decompress(chunk, self._cap - produced + 1)
            except zlib.error as exc:
                raise httpx.DecodingError(f"malformed compressed body: {exc}") from None
            produced += len(out)
            if produced > self._cap or self._decoder.unconsumed_tail:
                raise BodyTooLarge(f"decoded body longer than {self._cap} bytes")
            if out:
                yield out

    async def aclose(self) -> None:
        await self._inner.aclose()


class CappedTransport(httpx.AsyncBaseTransport):
    """Wraps a transport so no body is read or decoded beyond its request's cap (`CAP_EXTENSION`).

    gzip and deflate are decoded here, within the cap (registries are asked for `identity`, but a proxy or CDN
    may compress anyway); the response then carries no Content-Encoding, so httpx does not decode again.
    Any other encoding cannot be read safely and is refused.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        encoding = response.headers.get("content-encoding", "").strip().lower()
        wbits: int | None = None
        if encoding not in ("", "identity"):
            if encoding not in _DECODABLE:
                await response.aclose()
                raise httpx.DecodingError(f"unsupported content encoding {encoding[:40]!r}")
            wbits = _DECODABLE[encoding]
        assert isinstance(response.stream, httpx.AsyncByteStream)
        cap = body_cap(request, response.status_code)
        if wbits is None:  # the common case: the same response, its stream capped (no second Response built)
            response.stream = _CappedStream(response.stream, cap, None)
            return response
        dropped = ("content-encoding", "content-length")  # decoded here: httpx must not decode again
        headers = httpx.Headers([(k, v) for k, v in response.headers.multi_items() if k.lower() not in dropped])
        return httpx.Response(
            response.status_code,
            headers=headers,
            stream=_CappedStream(response.stream, cap, wbits),
            request=request,
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def proxied_transport(ssl_context: ssl.SSLContext, *, per_host: int, proxy: str) -> httpx.AsyncBaseTransport:
    """httpx's own transport through `proxy` (absolute-form for http, CONNECT tunnels for https).

    Proxies are the uncommon case, so they get httpx's well-trodden proxy support rather than a second
    implementation in wire.py; at most `per_host` connections, as for direct ones.
    """
    limits = httpx.Limits(max_connections=per_host, max_keepalive_connections=per_host)
    return httpx.AsyncHTTPTransport(verify=ssl_context, proxy=httpx.Proxy(proxy), limits=limits, trust_env=False)


def environment_mounts(
    direct: Mapping[str, httpx.AsyncBaseTransport],
    proxied: Callable[[str, str], httpx.AsyncBaseTransport],
    environ: Mapping[str, str] | None = None,
) -> dict[str, httpx.AsyncBaseTransport | None]:
    """httpx mounts for HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY (either case), as httpx reads them.

    `direct[scheme]` is the transport without a proxy; `proxied(scheme, proxy_url)` builds one through a proxy.
    NO_PROXY entries map to the direct transport: `*` (no proxy at all), hosts, IPs and domain suffixes.
    """
    env = os.environ if environ is None else environ
    found = {name.lower(): value.strip() for name, value in env.items() if name.lower().endswith("_proxy")}
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
    no_proxy = [entry.strip() for entry in found.get("no_proxy", "").split(",") if entry.strip()]
    if "*" in no_proxy:
        return mounts
    for scheme in ("http", "https"):
        url = found.get(f"{scheme}_proxy") or found.get("all_proxy")
        if url:
            mounts[f"{scheme}://"] = proxied(scheme, url if "://" in url else f"http://{url}")
            for entry in no_proxy:
                host = entry.removeprefix(".")
                if "://" in host:
                    continue  # a scheme-qualified entry: not a host
                pattern = f"[{host}]" if ":" in host and not host.startswith("[") else host
                mounts[f"{scheme}://{pattern}"] = direct[scheme]
                if not _is_ip(host) and host != "localhost":
                    mounts[f"{scheme}://*.{pattern}"] = direct[scheme]
    return mounts


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Mount:
    scheme: str  # "" for all schemes
    host: re.Pattern[str] | None  # None for all hosts
    port: int | None
    transport: httpx.AsyncBaseTransport
    priority: tuple[int, int, int]  # httpx's order: a port first, then the longer host, then the longer scheme

    @classmethod
    def parse(cls, pattern: str, transport: httpx.AsyncBaseTransport) -> _Mount:
        url = httpx.URL(pattern)
        host = url.host
        if not host or host == "*":
            regex = None
        elif host.startswith("*."):  # subdomains only
            regex = re.compile(f"^.+\\.{re.escape(host[2:])}$")
        elif host.startswith("*"):  # the domain and its subdomains
            regex = re.compile(f"^(.+\\.)?{re.escape(host[1:])}$")
        else:
            regex = re.compile(f"^{re.escape(host)}$")
        scheme = "" if url.scheme == "all" else url.scheme
        priority = (0 if url.port is not None else 1, -len("" if host == "*" else host), -len(scheme))
        return cls(scheme, regex, url.port, transport, priority)


class Routes:
    """Which transport carries a request: httpx's mount rules, decided once per origin instead of per request.

    Patterns are httpx's (`all://`, `https://`, `http://host`, `http://*.domain`, `http://host:port`), tried
    from the most specific as httpx orders them; a mount of `None` means the default transport.
    """

    def __init__(
        self, default: httpx.AsyncBaseTransport, mounts: Mapping[str, httpx.AsyncBaseTransport | None]
    ) -> None:
        self._default = default
        mounted = (_Mount.parse(pattern, transport or default) for pattern, transport in mounts.items())
        self._mounts = sorted(mounted, key=lambda mount: mount.priority)
        self._by_origin: dict[tuple[str, str, int | None], httpx.AsyncBaseTransport] = {}

    def transport_for(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        origin = (url.scheme, url.host, url.port)
        transport = self._by_origin.get(origin)
        if transport is None:
            transport = self._by_origin[origin] = self._match(*origin)
        return transport

    def _match(self, scheme: str, host: str, port: int | None) -> httpx.AsyncBaseTransport:
        for mount in self._mounts:
            if mount.scheme and mount.scheme != scheme:
                continue
            if mount.host is not None and not mount.host.match(host):
                continue
            if mount.port is not None and mount.port != port:
                continue
            return mount.transport
        return self._default

    async def aclose(self) -> None:
        closed: set[int] = set()
        for transport in [self._default, *(mount.transport for mount in self._mounts)]:
            if id(transport) not in closed:
                closed.add(id(transport))
                await transport.aclose()
