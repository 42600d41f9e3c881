"""Real DICOM peers for tests: a private network namespace, dcmtk storescp and Orthanc inside it.

Orthanc and storescp always listen on all interfaces, so tests run them in a private network
namespace that has only loopback (``unshare -n``, needs root or user namespaces). Anything that must
talk to them runs in the same namespace: ``ns.cmd([...])`` / ``ns.popen([...])`` / ``ns.run([...])``
wrap a command line with ``nsenter --net=/proc/<holder>/ns/net``. Files are shared as usual (only the
network is private), so a test can enqueue into a DB, run the sender inside the namespace, and read
what the peer wrote to disk. Typical use::

    ns = NetNamespace()                      # skip the test when can_unshare_net() is False
    scp = start_storescp(ns, tmp / "rx", port=11112, ae_title="STORESCP")
    orthanc = start_orthanc(ns, tmp / "orthanc", dicom_port=4242, http_port=8042,
                            modalities={"labelqa": ["LABELQA", "127.0.0.1", 11113]})
    ns.run([sys.executable, "-m", "service", "outbox", "send", ...], env=labelqa_env())
    orthanc.rest_get("/studies")             # REST goes through the namespace too
    orthanc.stop(); scp.stop(); ns.stop()

Every process started here is stopped by its own PID (never by name). ``TCP_NODELAY=1`` is put in
the environment of dcmtk and Orthanc (Debian builds stall ~44 ms per C-STORE without it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if extra:
        env.update(extra)
    return env


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class NetNamespace:
    """A private network namespace with only loopback (up), held open by a sleeping process."""

    def __init__(self, ready_timeout: float = 10.0) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep 86400"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.holder.stdout.readline() if self.holder.stdout else ""
        if line.strip() != "up":
            err = self.holder.stderr.read() if self.holder.stderr else ""
            _stop(self.holder)
            raise RuntimeError(f"could not create a network namespace: {err.strip()}")
        self.pid = self.holder.pid

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *map(str, argv)]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        kw.setdefault("env", _env())
        return subprocess.Popen(self.cmd(argv), **kw)

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("env", _env())
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.cmd(argv), **kw)

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        """Wait until something listens on 127.0.0.1:``port`` inside the namespace."""
        deadline = time.monotonic() + timeout
        probe = f"import socket; socket.create_connection(('127.0.0.1', {int(port)}), 1).close()"
        while time.monotonic() < deadline:
            if self.run([sys.executable, "-c", probe]).returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"nothing listens on port {port} in the namespace after {timeout} s")

    def stop(self) -> None:
        _stop(self.holder)
        for f in (self.holder.stdout, self.holder.stderr):
            if f:
                f.close()


class Peer:
    """A server process started in a namespace; ``.stop()`` ends it (by PID)."""

    def __init__(self, ns: NetNamespace, proc: subprocess.Popen, port: int, log_path: Path | None = None) -> None:
        self.ns, self.proc, self.port, self.log_path = ns, proc, port, log_path

    def stop(self) -> None:
        _stop(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


class StoreSCP(Peer):
    """dcmtk storescp writing each received instance, bit-preserving, under a unique file name."""

    def __init__(self, ns: NetNamespace, proc: subprocess.Popen, port: int, out_dir: Path, log_path: Path) -> None:
        super().__init__(ns, proc, port, log_path)
        self.out_dir = out_dir

    def received(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())


def start_storescp(ns: NetNamespace, out_dir: Path, port: int, ae_title: str = "STORESCP",
                   wait: bool = True) -> StoreSCP:
    """dcmtk ``storescp`` in ``ns`` on ``port``: accepts all storage classes, writes received bytes as is
    (``+B``) under unique names (``+uf``: a re-sent instance is a second file, so duplicates are visible)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir.parent / f"storescp-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    proc = ns.popen(["storescp", "-aet", ae_title, "-od", str(out_dir), "+B", "+uf", "-pm", "+xa", "-dhl", str(port)],
                    stdout=log, stderr=subprocess.STDOUT)
    log.close()
    scp = StoreSCP(ns, proc, port, out_dir, log_path)
    if wait:
        ns.wait_port(port)
    return scp


class Orthanc(Peer):
    """An Orthanc server in a namespace, with REST access through the namespace."""

    def __init__(self, ns: NetNamespace, proc: subprocess.Popen, dicom_port: int, http_port: int, log_path: Path,
                 aet: str) -> None:
        super().__init__(ns, proc, dicom_port, log_path)
        self.dicom_port, self.http_port, self.aet = dicom_port, http_port, aet
        self.url = f"http://127.0.0.1:{http_port}"

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        """Call Orthanc's REST API (from inside the namespace) and return the decoded JSON."""
        argv = ["curl", "-s", "-f", "-X", method, self.url + path]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        r = self.ns.run(argv, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"Orthanc {method} {path} failed (curl rc {r.returncode}): {r.stderr}")
        return json.loads(r.stdout) if r.stdout.strip() else None

    def rest_get(self, path: str) -> Any:
        return self.rest("GET", path)

    def download(self, path: str, dest: Path) -> Path:
        """GET ``path`` (e.g. ``/instances/<id>/preview``, a PNG Orthanc renders) into the file ``dest``."""
        r = self.ns.run(["curl", "-s", "-f", "-o", str(dest), self.url + path], timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"Orthanc GET {path} failed (curl rc {r.returncode}): {r.stderr}")
        return Path(dest)

    def find_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Instances of the study as Orthanc has them (with MainDicomTags and parent series)."""
        return self.rest("POST", "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid},
                                                  "Expand": True})


def start_orthanc(ns: NetNamespace, tmpdir: Path, dicom_port: int, http_port: int,
                  modalities: dict[str, list[Any]] | None = None, aet: str = "ORTHANC",
                  dicomweb: bool = True, extra_config: dict[str, Any] | None = None) -> Orthanc:
    """Debian Orthanc in ``ns`` with its own storage and index under ``tmpdir``; waits until REST answers.

    ``modalities``: Orthanc's ``DicomModalities`` (name -> [AET, host, port]). ``dicomweb`` loads the
    DICOMweb plugin (STOW-RS at ``<url>/dicom-web``) when installed.
    """
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    plugins = []
    web_plugin = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
    if dicomweb and web_plugin.exists():
        plugins.append(str(web_plugin))
    config = {
        "Name": "labelqa-test",
        "StorageDirectory": str(tmpdir / "storage"),
        "IndexDirectory": str(tmpdir / "index"),
        "DicomAet": aet,
        "DicomPort": int(dicom_port),
        "HttpPort": int(http_port),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": modalities or {},
        "DicomCheckCalledAet": False,
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 2,
    }
    config.update(extra_config or {})
    cfg_path = tmpdir / "orthanc.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    log_path = tmpdir / "orthanc.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    proc = ns.popen([ORTHANC_BIN, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    orthanc = Orthanc(ns, proc, dicom_port, http_port, log_path, aet)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}:\n{orthanc.log()[-3000:]}")
        r = ns.run(["curl", "-s", "-f", orthanc.url + "/system"], timeout=10)
        if r.returncode == 0:
            ns.wait_port(dicom_port)
            return orthanc
        time.sleep(0.2)
    orthanc.stop()
    raise TimeoutError(f"Orthanc did not answer within 60 s:\n{orthanc.log()[-3000:]}")
