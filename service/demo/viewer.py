"""OHIF, the web viewer most labs pair with Orthanc, over Orthanc's DICOMweb: to look at labelqa's results.

OHIF comes from the npm registry as the package ``@ohif/app`` (pinned: :data:`OHIF_VERSION`), whose
tarball ships a prebuilt ``dist/``: nothing is built. ``python -m service.demo.viewer install`` (run by
``deploy/bootstrap.sh``) fetches it once with ``npm pack`` into a cache folder (:func:`ohif_home`);
nothing is downloaded at run time.

:class:`ViewerServer` is a small static server on 127.0.0.1 that serves that ``dist/`` (single-page
routes fall back to ``index.html``), writes OHIF's ``app-config.js`` with one DICOMweb data source
on its own origin, and proxies ``/dicom-web/...`` to an Orthanc with the DICOMweb plugin, so the
browser talks to one origin only. ``labelqa demo --orthanc --viewer`` and the viewer tests use it.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = [
    "OHIF_PACKAGE", "OHIF_VERSION", "ViewerError", "ohif_home", "ohif_dist", "install_ohif", "app_config",
    "ViewerServer", "study_url",
]

log = logging.getLogger("labelqa.viewer")

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
"""The pinned OHIF release: its npm tarball ships the prebuilt viewer (``package/dist``)."""


class ViewerError(RuntimeError):
    """OHIF is not installed or cannot be installed; the message says what to do."""


def ohif_home() -> Path:
    """Where the OHIF release is kept: ``$LABELQA_OHIF_DIR``, else ``~/.cache/labelqa/ohif/<version>``."""
    env = os.environ.get("LABELQA_OHIF_DIR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "labelqa" / "ohif" / OHIF_VERSION


def ohif_dist() -> Path | None:
    """The installed prebuilt viewer (a folder with ``index.html``), or None when it is not installed."""
    dist = ohif_home() / "dist"
    return dist if (dist / "index.html").is_file() else None


def install_ohif(npm: str = "npm") -> Path:
    """Fetch the pinned ``@ohif/app`` tarball with ``npm pack`` (npm checks its integrity) and unpack its
    ``dist/`` into :func:`ohif_home`; returns that ``dist``. Does nothing when it is already there.
    Raises ViewerError without npm or when the fetch fails."""
    if (dist := ohif_dist()) is not None:
        return dist
    exe = shutil.which(npm)
    if exe is None:
        raise ViewerError("npm is not installed (Debian: apt-get install npm)")
    home = ohif_home()
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
        r = subprocess.run([exe, "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--pack-destination", tmp, "--silent"],
                           capture_output=True, text=True, timeout=900, cwd=tmp)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if r.returncode != 0 or not tarballs:
            raise ViewerError(f"npm pack {OHIF_PACKAGE}@{OHIF_VERSION} failed: {(r.stderr or r.stdout).strip()[-500:]}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")]
            tar.extractall(unpacked, members=members, filter="data")
        if not (unpacked / "package" / "dist" / "index.html").is_file():
            raise ViewerError(f"{OHIF_PACKAGE}@{OHIF_VERSION} has no prebuilt dist/index.html")
        staged = Path(tmp) / "home"
        staged.mkdir()
        (unpacked / "package" / "dist").replace(staged / "dist")
        (staged / "VERSION").write_text(OHIF_VERSION + "\n")
        if home.exists():
            shutil.rmtree(home)
        staged.replace(home)
    return home / "dist"


def app_config(data_source_name: str = "orthanc") -> str:
    """OHIF's ``app-config.js``: the study list and one DICOMweb data source at ``<this origin>/dicom-web``
    (the shape of the ``dicomweb`` entry in the package's own ``dist/app-config.js``)."""
    return f"""/** @type {{AppTypes.Config}} -- written by labelqa (service/viewer.py) */
window.config = {{
  name: 'labelqa',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {{ global: {{ 'ohif.tours': {{ $set: [] }} }} }},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: {{ option: 'never' }},
  defaultDataSourceName: '{data_source_name}',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: '{data_source_name}',
      configuration: {{
        friendlyName: 'labelqa Orthanc (DICOMweb)',
        name: '{data_source_name}',
        wadoUriRoot: window.location.origin + '/dicom-web',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: {{ enabled: true, relativeResolution: 'studies' }},
        omitQuotationForMultipartRequest: true,
      }},
    }},
  ],
}};
"""


_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("viewer: " + format, *args)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store" if self.path.startswith("/dicom-web") else "max-age=3600")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/dicom-web/") or path == "/dicom-web":
            self._proxy("GET")
        elif path == "/app-config.js":
            body = self.server.config_js.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            target = Path(self.translate_path(self.path))
            if not target.exists() and "." not in path.rsplit("/", 1)[-1]:
                self.path = "/index.html"  # a route of the single-page app
            super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if urllib.parse.urlsplit(self.path).path.startswith("/dicom-web"):
            self._proxy("HEAD")
        else:
            super().do_HEAD()

    def do_POST(self) -> None:  # noqa: N802
        self.send_error(405, "read-only viewer")

    def _proxy(self, method: str) -> None:
        up = self.server.upstream
        conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port or 80, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            conn.request(method, up.path.rstrip("/") + self.path, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP:
                    self.send_header(k, v)
            body = resp.read()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(body)
        except OSError as e:
            self.send_error(502, f"DICOMweb server not reachable: {e}")
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    config_js: str
    upstream: urllib.parse.SplitResult


class ViewerServer:
    """OHIF's ``dist`` on ``host:port`` (port 0: any free one) with DICOMweb proxied to ``orthanc_url``
    (e.g. ``http://127.0.0.1:8042``, whose plugin answers at ``/dicom-web``); ``start()``, ``stop()``, ``url``."""

    def __init__(self, orthanc_url: str, *, dist: Path | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        dist = dist or ohif_dist()
        if dist is None:
            raise ViewerError(f"OHIF {OHIF_VERSION} is not installed in {ohif_home()}: run "
                              "`python -m service.demo.viewer install` (deploy/bootstrap.sh does)")
        self.dist = Path(dist)
        self._httpd = _Server((host, port), functools.partial(_Handler, directory=str(self.dist)))
        self._httpd.config_js = app_config()
        self._httpd.upstream = urllib.parse.urlsplit(orthanc_url.rstrip("/"))
        self._thread: threading.Thread | None = None
        self.host, self.port = host, int(self._httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"

    def start(self) -> ViewerServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,), name="ohif-viewer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)


def study_url(base: str, study_uid: str) -> str:
    """The OHIF URL that opens one study in the basic viewer."""
    return f"{base.rstrip('/')}/viewer?StudyInstanceUIDs={urllib.parse.quote(study_uid)}"


def _main(argv: list[str]) -> int:
    if argv[:1] == ["install"]:
        try:
            print(install_ohif())
        except ViewerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    if argv[:1] == ["where"]:
        dist = ohif_dist()
        print(dist if dist else f"not installed (would be {ohif_home()})")
        return 0 if dist else 1
    print("usage: python -m service.demo.viewer install|where", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
