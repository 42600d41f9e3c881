"""The viewer's static server (service.demo.viewer.ViewerServer): OHIF's files, its app-config, single-page routes
and the DICOMweb proxy, against a real HTTP server on loopback standing in for Orthanc's DICOMweb plugin."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from service.demo.viewer import OHIF_VERSION, ViewerServer, app_config, study_url


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = f"{self.path}|{self.headers.get('Accept')}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_viewer_serves_ohif_its_config_and_proxies_dicomweb(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>ohif</html>")
    (dist / "app.js").write_text("// app")
    up = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=up.serve_forever, args=(0.1,), daemon=True).start()
    viewer = ViewerServer(f"http://127.0.0.1:{up.server_address[1]}", dist=dist).start()
    try:
        base = viewer.url
        assert base.startswith("http://127.0.0.1:")
        cfg = httpx.get(f"{base}/app-config.js").text
        assert cfg == app_config() and "dataSourcesModule.dicomweb" in cfg and "'/dicom-web'" in cfg
        assert httpx.get(f"{base}/app.js").text == "// app"
        route = httpx.get(study_url(base, "1.2.3"))  # a route of the single-page app: index.html
        assert route.status_code == 200 and route.text == "<html>ohif</html>"
        r = httpx.get(f"{base}/dicom-web/studies/1.2.3/series?limit=5",
                      headers={"Accept": "application/dicom+json"})
        assert r.status_code == 200 and r.text == "/dicom-web/studies/1.2.3/series?limit=5|application/dicom+json"
        assert httpx.post(f"{base}/dicom-web/studies", content=b"x").status_code == 405  # read-only
    finally:
        viewer.stop()
        up.shutdown()
    assert OHIF_VERSION.count(".") == 2
