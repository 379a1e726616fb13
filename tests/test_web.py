"""The HTTP resources of tcpsocket.web over a real loopback Site and Agent."""

from __future__ import annotations

import warnings
from importlib.resources import files
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial import unittest
from twisted.web import http
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from tcpsocket.web import (
    ApiV1Resource,
    DemoResource,
    ModuleSource,
    ModuleSyntaxError,
    classic_bundle,
)

JS = "text/javascript; charset=utf-8"
STATIC = files("tcpsocket").joinpath("static")


def read_body(response: Any) -> defer.Deferred[bytes]:
    """readBody without its warning about Twisted's own transport proxy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using readBody", DeprecationWarning)
        return readBody(response)


def static_bytes(path: str) -> bytes:
    return STATIC.joinpath(path).read_bytes()


class Response:
    """What a test needs of an HTTP response."""

    def __init__(self, code: int, headers: Headers, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if values is None else values[0]


class WebTestCase(unittest.TestCase):
    """Serves DemoResource at / and ApiV1Resource at /api/v1/ as the daemon mounts them."""

    async def start(self) -> None:
        root = DemoResource()
        api = Resource()
        api.putChild(b"v1", ApiV1Resource())
        root.putChild(b"api", api)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root))
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}".encode()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)

    async def fetch(self, path: bytes | str, method: bytes = b"GET", **headers: str) -> Response:
        if isinstance(path, str):
            path = path.encode()
        raw = Headers({k.replace("_", "-"): [v] for k, v in headers.items()})
        response = await self.agent.request(method, self.base + path, raw)
        body = await read_body(response)
        return Response(response.code, response.headers, body)

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.start())


class ContentTests(WebTestCase):
    async def test_scripts_are_javascript(self) -> None:
        api = ApiV1Resource()
        for path in ("shared/core.js", "shared/session.js", "tcpsocket/service.js"):
            response = await self.fetch("/api/v1/" + path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(response.header("content-type"), JS)
            self.assertEqual(response.body, api.assets[path].body)
            self.assertIn(b"as a classic script", response.body)
            self.assertEqual(response.header("x-content-type-options"), "nosniff")
            self.assertEqual(response.header("cache-control"), "no-cache")
            self.assertEqual(response.header("vary"), "Sec-Fetch-Mode, Origin")

    async def test_one_url_two_forms(self) -> None:
        classic_requests: list[dict[str, str]] = [
            {},
            {"sec_fetch_mode": "no-cors", "sec_fetch_dest": "script"},
            {"sec_fetch_mode": "no-cors", "origin": "http://app.test"},
            {"sec_fetch_mode": "navigate"},
        ]
        module_requests: list[dict[str, str]] = [
            {"sec_fetch_mode": "cors", "sec_fetch_dest": "script", "origin": "http://app.test"},
            {"sec_fetch_mode": "cors", "sec_fetch_dest": "script"},  # same-origin import
            {"origin": "http://app.test"},  # no Fetch Metadata: Origin means CORS
        ]
        for path in ("shared/core.js", "shared/session.js", "tcpsocket/service.js"):
            url = "/api/v1/" + path
            etags = set()
            for headers in classic_requests:
                response = await self.fetch(url, **headers)
                self.assertIn(b"as a classic script", response.body, (path, headers))
                self.assertNotIn(b"\nexport ", response.body)
                etags.add(response.header("etag"))
            for headers in module_requests:
                response = await self.fetch(url, **headers)
                self.assertEqual(response.body, static_bytes(path), (path, headers))
                self.assertEqual(response.header("vary"), "Sec-Fetch-Mode, Origin")
                self.assertEqual(response.header("access-control-allow-origin"), "*")
                etags.add(response.header("etag"))
            self.assertEqual(len(etags), 2, path)
            # A validator of one form does not match the other.
            classic_tag = (await self.fetch(url)).header("etag")
            assert classic_tag is not None
            other = await self.fetch(url, sec_fetch_mode="cors", if_none_match=classic_tag)
            self.assertEqual(other.code, 200)
            same = await self.fetch(url, sec_fetch_mode="no-cors", if_none_match=classic_tag)
            self.assertEqual(same.code, http.NOT_MODIFIED)
            self.assertEqual(same.header("vary"), "Sec-Fetch-Mode, Origin")

    async def test_module_only_files(self) -> None:
        for name in ("bincode.js", "services.js", "sessionobject.js", "ws_transport.js"):
            for headers in ({}, {"sec_fetch_mode": "cors"}):
                response = await self.fetch("/api/v1/shared/" + name, **headers)
                self.assertEqual(response.code, 200, name)
                self.assertEqual(response.body, static_bytes("shared/" + name))
                self.assertIsNone(response.header("vary"))

    def test_classic_bundle(self) -> None:
        sources = {
            "a/x.js": ModuleSource.parse(
                "a/x.js",
                "export const one = 1;\nexport default class X {}\nconst u = import.meta.url;\n",
            ),
            "a/y.js": ModuleSource.parse(
                "a/y.js",
                'import X, { one } from "./x.js";\nexport function Session() { return one; }\n',
            ),
        }
        self.assertEqual(
            sources["a/y.js"].imports, (("a/x.js", (("default", "X"), ("one", "one"))),)
        )
        self.assertEqual(sources["a/x.js"].exports, (("one", "one"), ("default", "X")))
        self.assertIn("__tcpsocket_script_url", sources["a/x.js"].body)
        from tcpsocket import web

        web._CLASSIC["a/y.js"] = ("lib_y", ("Session",))
        try:
            text = classic_bundle("a/y.js", sources)
        finally:
            del web._CLASSIC["a/y.js"]
        self.assertLess(text.index("// ---- a/x.js"), text.index("// ---- a/y.js"))
        self.assertIn("const X = __tcpsocket_m0.default;", text)
        self.assertIn("root.lib_y = factory();", text)
        self.assertNotIn("import ", text)
        for bad in (
            'import * as all from "./x.js";',
            "export * from './x.js';",
            "import('./x.js');",
        ):
            with self.assertRaises(ModuleSyntaxError):
                ModuleSource.parse("a/z.js", bad + "\n")

    async def test_type_declarations(self) -> None:
        response = await self.fetch("/api/v1/tcpsocket/service.d.ts")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "text/plain; charset=utf-8")
        self.assertEqual(response.body, static_bytes("tcpsocket/service.d.ts"))

    async def test_apps_alias(self) -> None:
        for headers in ({}, {"sec_fetch_mode": "cors"}):
            alias = await self.fetch("/api/v1/apps/service.js", **headers)
            target = await self.fetch("/api/v1/tcpsocket/service.js", **headers)
            self.assertEqual(alias.code, 200)
            self.assertEqual(alias.body, target.body)
            self.assertEqual(alias.header("etag"), target.header("etag"))
            self.assertEqual(alias.header("content-type"), JS)

    async def test_head(self) -> None:
        response = await self.fetch("/api/v1/shared/core.js", method=b"HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"")
        self.assertEqual(response.header("content-type"), JS)
        self.assertEqual(
            response.header("content-length"),
            str(len(ApiV1Resource().assets["shared/core.js"].body)),
        )

    async def test_other_methods_are_not_allowed(self) -> None:
        for method in (b"POST", b"PUT", b"DELETE"):
            response = await self.fetch("/api/v1/shared/core.js", method=method)
            self.assertEqual(response.code, http.NOT_ALLOWED)
            self.assertEqual(response.header("allow"), "GET, HEAD, OPTIONS")
            self.assertEqual(response.header("access-control-allow-origin"), "*")

    async def test_demo_page(self) -> None:
        for path in ("/", "/index.html"):
            response = await self.fetch(path)
            self.assertEqual(response.code, 200)
            self.assertEqual(response.header("content-type"), "text/html; charset=utf-8")
            self.assertEqual(response.body, static_bytes("index.html"))
        for src in (
            b"/api/v1/shared/core.js",
            b"/api/v1/shared/session.js",
            b"/api/v1/tcpsocket/service.js",
        ):
            self.assertIn(b'<script src="' + src + b'"></script>', static_bytes("index.html"))
        js = await self.fetch("/demo.js")
        self.assertEqual((js.code, js.header("content-type")), (200, JS))
        css = await self.fetch("/demo.css")
        self.assertEqual((css.code, css.header("content-type")), (200, "text/css; charset=utf-8"))
        self.assertEqual(css.body, static_bytes("demo.css"))

    def test_files_are_read_once(self) -> None:
        api = ApiV1Resource()
        self.assertEqual(api.modules["shared/core.js"].body, static_bytes("shared/core.js"))
        self.assertIs(api.assets["apps/service.js"], api.assets["tcpsocket/service.js"])
        self.assertIs(api.modules["apps/service.js"], api.modules["tcpsocket/service.js"])
        self.assertEqual(
            sorted(api.assets),
            sorted(
                f"{d}/{n}"
                for d, names in (
                    (
                        "shared",
                        (
                            "bincode.js",
                            "core.js",
                            "services.js",
                            "session.js",
                            "sessionobject.js",
                            "ws_transport.js",
                        ),
                    ),
                    ("tcpsocket", ("service.js", "service.d.ts")),
                    ("apps", ("service.js", "service.d.ts")),
                )
                for n in names
            ),
        )


class ValidatorTests(WebTestCase):
    PATH = "/api/v1/shared/session.js"

    async def test_etag_304(self) -> None:
        first = await self.fetch(self.PATH)
        etag = first.header("etag")
        assert etag is not None
        self.assertRegex(etag, r'^"[0-9a-f]{32}"$')
        for value in (etag, f'"nope", {etag}', "W/" + etag, "*"):
            again = await self.fetch(self.PATH, if_none_match=value)
            self.assertEqual(again.code, http.NOT_MODIFIED, value)
            self.assertEqual(again.body, b"")
            self.assertEqual(again.header("etag"), etag)
            self.assertIsNone(again.header("content-length"))
            self.assertIsNone(again.header("transfer-encoding"))
            self.assertEqual(again.header("access-control-allow-origin"), "*")
        other = await self.fetch(self.PATH, if_none_match='"0123"')
        self.assertEqual(other.code, 200)
        self.assertEqual(other.body, first.body)

    async def test_etags_differ_between_files(self) -> None:
        tags = set()
        for path in (
            "shared/core.js",
            "shared/bincode.js",
            "shared/session.js",
            "tcpsocket/service.js",
        ):
            tags.add((await self.fetch("/api/v1/" + path)).header("etag"))
        self.assertEqual(len(tags), 4)

    async def test_last_modified_304(self) -> None:
        first = await self.fetch(self.PATH)
        last_modified = first.header("last-modified")
        assert last_modified is not None
        stamp = http.stringToDatetime(last_modified.encode())
        same = await self.fetch(self.PATH, if_modified_since=last_modified)
        self.assertEqual(same.code, http.NOT_MODIFIED)
        self.assertEqual(same.body, b"")
        later = await self.fetch(
            self.PATH, if_modified_since=http.datetimeToString(stamp + 3600).decode()
        )
        self.assertEqual(later.code, http.NOT_MODIFIED)
        earlier = await self.fetch(
            self.PATH, if_modified_since=http.datetimeToString(stamp - 1).decode()
        )
        self.assertEqual(earlier.code, 200)
        self.assertEqual(earlier.body, first.body)
        garbage = await self.fetch(self.PATH, if_modified_since="yesterday-ish")
        self.assertEqual(garbage.code, 200)

    async def test_if_none_match_takes_precedence(self) -> None:
        first = await self.fetch(self.PATH)
        last_modified = first.header("last-modified")
        assert last_modified is not None
        response = await self.fetch(
            self.PATH, if_none_match='"other"', if_modified_since=last_modified
        )
        self.assertEqual(response.code, 200)

    async def test_demo_validators(self) -> None:
        first = await self.fetch("/")
        etag = first.header("etag")
        assert etag is not None
        again = await self.fetch("/", if_none_match=etag)
        self.assertEqual(again.code, http.NOT_MODIFIED)


class CorsTests(WebTestCase):
    async def test_allow_origin_everywhere(self) -> None:
        for path in ("/api/v1/shared/core.js", "/api/v1/missing.js", "/", "/nothing-here"):
            response = await self.fetch(path, origin="http://app.example")
            self.assertEqual(response.header("access-control-allow-origin"), "*", path)

    async def test_preflight(self) -> None:
        response = await self.fetch(
            "/api/v1/tcpsocket/service.js",
            method=b"OPTIONS",
            origin="http://app.example",
            access_control_request_method="GET",
            access_control_request_headers="if-none-match, x-custom",
        )
        self.assertEqual(response.code, http.NO_CONTENT)
        self.assertEqual(response.body, b"")
        self.assertEqual(response.header("access-control-allow-origin"), "*")
        self.assertEqual(response.header("access-control-allow-methods"), "GET, HEAD, OPTIONS")
        self.assertEqual(response.header("access-control-allow-headers"), "if-none-match, x-custom")
        self.assertEqual(response.header("access-control-max-age"), "86400")
        self.assertIsNone(response.header("content-length"))
        self.assertIsNone(response.header("transfer-encoding"))


class NotFoundTests(WebTestCase):
    async def assertNotFound(self, *paths: str | bytes) -> None:
        for path in paths:
            response = await self.fetch(path)
            self.assertEqual(response.code, http.NOT_FOUND, path)
            self.assertEqual(response.header("content-type"), "text/plain; charset=utf-8", path)
            self.assertEqual(response.body, b"Not Found\n", path)
            self.assertNotIn(b"<a href", response.body)

    async def test_unknown_paths(self) -> None:
        await self.assertNotFound(
            "/api/v1/missing.js",
            "/api/v1/shared/missing.js",
            "/api/v1/shared/core.js/extra",
            "/api/v1/shared/core",
            "/api/v1/index.html",
            "/api/v1/web.py",
            "/nothing-here",
            "/demo.js/extra",
            "/tcpsocket/service.js",
        )

    async def test_no_directory_listing(self) -> None:
        await self.assertNotFound(
            "/api/v1/",
            "/api/v1",
            "/api/v1/shared",
            "/api/v1/shared/",
            "/api/v1/tcpsocket/",
            "/api/v1/apps/",
            "/api/v1//shared/core.js",
        )

    async def test_traversal(self) -> None:
        await self.assertNotFound(
            "/api/v1/../v1/shared/core.js",
            "/api/v1/shared/../shared/core.js",
            "/api/v1/shared/../../../web.py",
            "/api/v1/./shared/core.js",
            "/api/v1/%2e%2e/%2e%2e/web.py",
            "/api/v1/shared%2fcore.js",
            "/api/v1/shared/..%2f..%2fweb.py",
            "/api/v1/shared/..%5c..%5cweb.py",
            "/api/v1/shared/core.js%00",
            "/api/v1/shared/%ff",
            "/..%2fweb.py",
            "/%2e%2e/tcpsocket/web.py",
            "/api/v1/tcpsocket/%2e%2e%2fstatic%2findex.html",
        )


class SiteMountTests(unittest.TestCase):
    """The daemon's own Site mounts the resources where the seed expects them."""

    async def test_daemon_site(self) -> None:
        from tests.support import start_daemon

        _site, port = await start_daemon(self)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        for path in (b"/api/v1/apps/service.js", b"/api/v1/shared/core.js", b"/"):
            response: Any = await agent.request(b"GET", b"http://127.0.0.1:%d%s" % (port, path))
            await read_body(response)
            self.assertEqual(response.code, 200, path)
