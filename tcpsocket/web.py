"""HTTP resources: the JavaScript client library (``/api/v1/``) and the demo page (``/``).

Files come from the package's ``static`` directory through :mod:`importlib.resources` and are
read once, at construction. The library's sources are ES modules, served unchanged to
``import``. The three entry URLs api-daemon's webpack era loaded with ``<script src>``
(``_CLASSIC``) also have a classic-script form, a bundle made at load time from the same
modules; which form a request gets depends on its fetch mode (design in doc/javascript.md,
"Two generations from one URL"). No build step.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import posixpath
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

__all__ = ["ApiV1Resource", "DemoResource", "ModuleSource", "classic_bundle", "wants_module"]

_STATIC_PACKAGE = "tcpsocket"
_STATIC_DIR = "static"

#: Directories of ``static/`` served under ``/api/v1/``.
_API_DIRS = ("shared", "tcpsocket")
#: Files of ``static/`` served by the demo resource (``""`` is ``/``).
_DEMO_FILES = {
    "": "index.html",
    "index.html": "index.html",
    "demo.js": "demo.js",
    "demo.css": "demo.css",
}
#: ``/api/v1/`` aliases: alias path -> served path.
_ALIASES = {
    "apps/service.js": "tcpsocket/service.js",
    "apps/service.d.ts": "tcpsocket/service.d.ts",
}

#: Entry modules with a classic-script form: path -> (global name, enumerable keys). The
#: global gets every export of the module; the listed ones enumerable (api-daemon's keys),
#: the others not, plus a non-enumerable ``__esModule``.
_CLASSIC: dict[str, tuple[str, tuple[str, ...]]] = {
    "shared/core.js": ("ExternalAPI", ("core",)),
    "shared/session.js": ("lib_session", ("Session",)),
    "tcpsocket/service.js": ("lib_tcpsocket", ("TcpSocketManager",)),
}

#: The request headers that choose the form of a ``_CLASSIC`` path.
_VARY = b"Sec-Fetch-Mode, Origin"

_IMPORT = re.compile(
    r"""import\s+(?:(?P<default>\w+)\s*,?\s*)?(?:\{(?P<names>[^}]*)\})?\s*from\s*(?P<q>["'])(?P<spec>[^"']+)(?P=q);\s*"""
)
_EXPORT_DECL = re.compile(
    r"export\s+(?P<default>default\s+)?(?:class|function|const|let)\s+(?P<name>\w+)"
)
_EXPORT_PREFIX = re.compile(r"^export\s+(?:default\s+)?")
_EXPORT_DEFAULT = re.compile(r"export\s+default\s+(?P<name>\w+);\s*")
_EXPORT_LIST = re.compile(r"export\s*\{(?P<names>[^}]*)\};\s*")


class ModuleSyntaxError(ValueError):
    """A library module uses a form of import/export the bundler does not handle."""


@dataclass(frozen=True)
class ModuleSource:
    """One ES module of the library, parsed for bundling into a classic script.

    Only the forms the library uses are accepted, each on its own top-level line:
    ``import D from "x";``, ``import { a, b } from "x";``, ``import D, { a } from "x";``,
    ``export class|function|const|let N``, ``export default class|function N``,
    ``export default N;`` and ``export { a, b };``.
    """

    path: str
    body: str
    #: (resolved path, [(imported name, local name)]); "default" is the default export.
    imports: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    #: (exported name, local name).
    exports: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, path: str, text: str) -> ModuleSource:
        """Split ``text`` into its imports, exports and a body with both removed."""
        imports: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        exports: list[tuple[str, str]] = []
        lines = []
        for number, line in enumerate(text.split("\n"), 1):
            if line.startswith("import "):
                m = _IMPORT.fullmatch(line)
                if m is None:
                    raise ModuleSyntaxError(f"{path}:{number}: unsupported import: {line}")
                names: list[tuple[str, str]] = []
                if m["default"]:
                    names.append(("default", m["default"]))
                for item in (m["names"] or "").split(","):
                    parts = item.split()
                    if parts:
                        names.append((parts[0], parts[-1]))
                spec = posixpath.normpath(posixpath.join(posixpath.dirname(path), m["spec"]))
                imports.append((spec, tuple(names)))
                lines.append("")
            elif line.startswith("export "):
                if m := _EXPORT_DEFAULT.fullmatch(line):
                    exports.append(("default", m["name"]))
                    lines.append("")
                elif m := _EXPORT_LIST.fullmatch(line):
                    for item in m["names"].split(","):
                        parts = item.split()
                        if parts:
                            exports.append((parts[-1], parts[0]))
                    lines.append("")
                elif m := _EXPORT_DECL.match(line):
                    exports.append(("default" if m["default"] else m["name"], m["name"]))
                    lines.append(_EXPORT_PREFIX.sub("", line, count=1))
                else:
                    raise ModuleSyntaxError(f"{path}:{number}: unsupported export: {line}")
            else:
                lines.append(line)
        body = "\n".join(lines).replace("import.meta.url", "__tcpsocket_script_url")
        if re.search(r"\bimport\s*[.(]", body):
            raise ModuleSyntaxError(f"{path}: dynamic import or import.meta other than .url")
        return cls(path, body, tuple(imports), tuple(exports))


def _dependency_order(entry: str, modules: Mapping[str, ModuleSource]) -> list[str]:
    order: list[str] = []

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in order:
            return
        if path in stack:
            raise ModuleSyntaxError(f"import cycle: {' -> '.join((*stack, path))}")
        if path not in modules:
            raise ModuleSyntaxError(f"{stack[-1]} imports {path}, which is not served")
        for dependency, _ in modules[path].imports:
            visit(dependency, (*stack, path))
        order.append(path)

    visit(entry, ())
    return order


def classic_bundle(entry: str, modules: Mapping[str, ModuleSource]) -> str:
    """The classic-script form of the module ``entry``: a UMD bundle defining its global.

    Every module the entry needs is inlined once, in dependency order, each in its own
    function scope; its imports become parameters bound to earlier modules' exports. The
    bundle is self-contained (no load order between the classic scripts).
    """
    global_name, enumerable = _CLASSIC[entry]
    order = _dependency_order(entry, modules)
    index = {path: n for n, path in enumerate(order)}
    out = [
        f"/* tcpsocket client library: {entry} as a classic script, defining `{global_name}`.",
        " * Bundled by tcpsocket.web from the ES modules served at the same URLs",
        f" * ({', '.join(order)}); see doc/javascript.md. */",
        "(function (root, factory) {",
        '  if (typeof module === "object" && module && typeof module.exports === "object") {',
        "    module.exports = factory();",
        '  } else if (typeof define === "function" && define.amd) {',
        f'    define("{global_name}", [], factory);',
        "  } else {",
        f"    root.{global_name} = factory();",
        "  }",
        "})(this, function () {",
        '"use strict";',
        "const __tcpsocket_script_url =",
        '  typeof document !== "undefined" && document && document.currentScript',
        '    ? String(document.currentScript.src || "")',
        '    : "";',
    ]
    for path in order:
        module = modules[path]
        bindings = []
        for dependency, names in module.imports:
            for imported, local in names:
                bindings.append(f"const {local} = __tcpsocket_m{index[dependency]}.{imported};")
        exported = ", ".join(f"{json.dumps(name)}: {local}" for name, local in module.exports)
        out.append(f"// ---- {path}")
        out.append(f"const __tcpsocket_m{index[path]} = (function () {{")
        out.extend(bindings)
        out.append(module.body.strip("\n"))
        out.append(f"return {{ {exported} }};")
        out.append("})();")
    out.append(f"const __tcpsocket_entry = __tcpsocket_m{index[entry]};")
    out.append('const __tcpsocket_api = Object.defineProperty({}, "__esModule", { value: true });')
    for name, _ in modules[entry].exports:
        if name == "default":
            continue
        visible = "true" if name in enumerable else "false"
        out.append(
            f"Object.defineProperty(__tcpsocket_api, {json.dumps(name)}, "
            f"{{ value: __tcpsocket_entry.{name}, enumerable: {visible}, writable: true, "
            "configurable: true });"
        )
    out.append("return __tcpsocket_api;")
    out.append("});")
    return "\n".join(out) + "\n"


def wants_module(request: Request) -> bool:
    """Whether a request for a ``_CLASSIC`` path gets the ES module (else the classic script).

    Module scripts are fetched in CORS mode (``Sec-Fetch-Mode: cors``), classic
    ``<script src>`` without ``crossorigin`` in ``no-cors`` mode. Without Fetch Metadata,
    an ``Origin`` header marks a CORS request.
    """
    mode = request.getHeader(b"sec-fetch-mode")
    if mode is not None:
        return mode.strip().lower() == b"cors"
    return request.getHeader(b"origin") is not None


_CONTENT_TYPES = {
    ".js": b"text/javascript; charset=utf-8",
    ".ts": b"text/plain; charset=utf-8",
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".json": b"application/json",
}

_ALLOWED_METHODS = b"GET, HEAD, OPTIONS"


@dataclass(frozen=True)
class StaticAsset:
    """One served file: its bytes and the validators sent with it."""

    body: bytes
    content_type: bytes
    etag: bytes
    last_modified: int

    @classmethod
    def build(cls, body: bytes, content_type: bytes, last_modified: float) -> StaticAsset:
        """Make an asset with a strong, content-derived ETag."""
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, content_type, b'"' + digest.encode("ascii") + b'"', int(last_modified))


def _static_root() -> Traversable:
    return files(_STATIC_PACKAGE).joinpath(_STATIC_DIR)


def _mtime(item: Traversable, fallback: float) -> float:
    if isinstance(item, pathlib.Path):
        try:
            return item.stat().st_mtime
        except OSError:
            return fallback
    return fallback


def _content_type(name: str) -> bytes | None:
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    return _CONTENT_TYPES.get(suffix)


def _iter_files(directory: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    for item in directory.iterdir():
        if item.is_file():
            yield prefix + item.name, item


@dataclass(frozen=True)
class ApiAssets:
    """What ``/api/v1/`` serves: each path's default form, and the module form where it differs."""

    files: Mapping[str, StaticAsset]
    #: ES-module forms of the ``_CLASSIC`` paths (their ``files`` entry is the classic script).
    modules: Mapping[str, StaticAsset]


def _load_api_assets() -> ApiAssets:
    root = _static_root()
    now = time.time()
    files_: dict[str, StaticAsset] = {}
    sources: dict[str, ModuleSource] = {}
    mtimes: dict[str, float] = {}
    for sub in _API_DIRS:
        for path, item in _iter_files(root.joinpath(sub), sub + "/"):
            content_type = _content_type(path)
            if content_type is None:
                continue
            body = item.read_bytes()
            mtimes[path] = _mtime(item, now)
            files_[path] = StaticAsset.build(body, content_type, mtimes[path])
            if path.endswith(".js"):
                sources[path] = ModuleSource.parse(path, body.decode("utf-8"))
    modules: dict[str, StaticAsset] = {}
    for entry in _CLASSIC:
        if entry not in sources:
            continue
        order = _dependency_order(entry, sources)
        modules[entry] = files_[entry]
        files_[entry] = StaticAsset.build(
            classic_bundle(entry, sources).encode("utf-8"),
            _CONTENT_TYPES[".js"],
            max(mtimes[path] for path in order),
        )
    for alias, target in _ALIASES.items():
        if target in files_:
            files_[alias] = files_[target]
        if target in modules:
            modules[alias] = modules[target]
    return ApiAssets(files_, modules)


def _load_demo_assets() -> dict[str, StaticAsset]:
    root = _static_root()
    now = time.time()
    loaded: dict[str, StaticAsset] = {}
    assets: dict[str, StaticAsset] = {}
    for route, name in _DEMO_FILES.items():
        if name not in loaded:
            item = root.joinpath(name)
            content_type = _content_type(name)
            if content_type is None or not item.is_file():
                continue
            loaded[name] = StaticAsset.build(item.read_bytes(), content_type, _mtime(item, now))
        assets[route] = loaded[name]
    return assets


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """Weak comparison of If-None-Match against our ETag (RFC 9110 13.1.2)."""
    if header.strip() == b"*":
        return True
    opaque = etag.removeprefix(b"W/")
    for candidate in header.split(b","):
        if candidate.strip().removeprefix(b"W/") == opaque:
            return True
    return False


def _not_modified(request: Request, asset: StaticAsset) -> bool:
    if_none_match = request.getHeader(b"if-none-match")
    if if_none_match is not None:
        return _etag_matches(if_none_match, asset.etag)
    if_modified_since = request.getHeader(b"if-modified-since")
    if if_modified_since is not None:
        try:
            since = http.stringToDatetime(if_modified_since)
        except (ValueError, IndexError, KeyError):
            return False
        return asset.last_modified <= int(since)
    return False


def _cors(request: Request) -> None:
    request.setHeader(b"access-control-allow-origin", b"*")
    # Pages never leak their URL (which may carry a token) to the sites they link to.
    request.setHeader(b"referrer-policy", b"no-referrer")


def _without_body(request: Request, code: int) -> int:
    """Finish a 204/304 now, so that Twisted adds no ``Content-Length: 0``."""
    request.setResponseCode(code)
    request.finish()
    return NOT_DONE_YET


def _preflight(request: Request) -> int:
    request.setHeader(b"access-control-allow-methods", _ALLOWED_METHODS)
    requested = request.getHeader(b"access-control-request-headers")
    if requested:
        request.setHeader(b"access-control-allow-headers", requested)
    request.setHeader(b"access-control-max-age", b"86400")
    request.setHeader(b"allow", _ALLOWED_METHODS)
    return _without_body(request, http.NO_CONTENT)


def _body(request: Request, body: bytes) -> bytes:
    """``body`` for a GET; for a HEAD, its length only (Twisted warns about a HEAD body)."""
    if request.method != b"HEAD":
        return body
    request.setHeader(b"content-length", b"%d" % len(body))
    return b""


def _not_found(request: Request) -> bytes:
    request.setResponseCode(http.NOT_FOUND)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return _body(request, b"Not Found\n")


def _render_asset(request: Request, asset: StaticAsset | None) -> bytes | int:
    """Answer ``request`` with ``asset`` (``None``: 404), handling methods and validators."""
    _cors(request)
    if asset is None:
        return _not_found(request)
    method = request.method
    if method == b"OPTIONS":
        return _preflight(request)
    if method not in (b"GET", b"HEAD"):
        request.setResponseCode(http.NOT_ALLOWED)
        request.setHeader(b"allow", _ALLOWED_METHODS)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Method Not Allowed\n"
    request.setHeader(b"etag", asset.etag)
    request.setHeader(b"last-modified", http.datetimeToString(asset.last_modified))
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-content-type-options", b"nosniff")
    if _not_modified(request, asset):
        return _without_body(request, http.NOT_MODIFIED)
    request.setHeader(b"content-type", asset.content_type)
    return _body(request, asset.body)


def _decode_path(segments: list[bytes]) -> str | None:
    """``a/b`` from path segments, or ``None`` for anything but plain file names."""
    names = []
    for segment in segments:
        try:
            name = segment.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            return None
        names.append(name)
    return "/".join(names)


class ApiV1Resource(Resource):
    """``/api/v1/``: the client library (``shared/``, ``tcpsocket/``, ``apps/service.js``).

    Serves only the files loaded at construction, looked up by exact path: anything else,
    directories included, is a 404. The ``_CLASSIC`` paths answer in two forms (see
    :func:`wants_module`), with ``Vary`` naming the headers that choose.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        loaded = _load_api_assets()
        self.assets: Mapping[str, StaticAsset] = loaded.files
        self.modules: Mapping[str, StaticAsset] = loaded.modules

    def render(self, request: Request) -> bytes | int:
        """Serve the file named by the remaining path."""
        path = _decode_path(list(request.postpath or []))
        if path is None:
            return _render_asset(request, None)
        module = self.modules.get(path)
        if module is not None:
            request.setHeader(b"vary", _VARY)
            if wants_module(request):
                return _render_asset(request, module)
        return _render_asset(request, self.assets.get(path))


class _AssetResource(Resource):
    """A single preloaded file; any deeper path is a 404."""

    isLeaf = True

    def __init__(self, asset: StaticAsset) -> None:
        super().__init__()
        self.asset = asset

    def render(self, request: Request) -> bytes | int:
        """Serve the file if the path ends here."""
        return _render_asset(request, None if request.postpath else self.asset)


class _NotFoundResource(Resource):
    """A 404 with CORS headers, whatever the method or the deeper path."""

    isLeaf = True

    def render(self, request: Request) -> bytes | int:
        """Answer 404."""
        return _render_asset(request, None)


class DemoResource(Resource):
    """``/``: the demo page (index.html, demo.js, demo.css).

    Usable as the site root: children added with ``putChild`` (``api``, ``ws``) take precedence.
    """

    def __init__(self) -> None:
        super().__init__()
        self.assets: Mapping[str, StaticAsset] = _load_demo_assets()

    def getChild(self, path: bytes, request: Request) -> Resource:
        """The demo file named ``path`` (``b""`` is the page), else a 404 resource."""
        asset = self.assets.get(path.decode("utf-8", "replace"))
        return _NotFoundResource() if asset is None else _AssetResource(asset)

    def render(self, request: Request) -> bytes | int:
        """Mounted below the root and asked without the trailing slash: redirect to it."""
        request.setResponseCode(http.MOVED_PERMANENTLY)
        path, sep, query = request.uri.partition(b"?")
        request.setHeader(b"location", path + b"/" + sep + query)
        _cors(request)
        return b""
