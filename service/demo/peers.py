"""Local DICOM peers: Orthanc and labelqa's own archive, on this machine's network or in a private
network namespace. ``labelqa demo`` starts them from here, and so do the tests and the benchmarks
(which add dcmtk ``storescp``: ``harness.peers``).

Orthanc and storescp always listen on all interfaces. Tests and benchmarks therefore run them in a
private network namespace that has only loopback (:class:`NetNamespace`, ``unshare -n``, needs root or
user namespaces). Anything that must talk to them runs in the same namespace: ``ns.cmd([...])`` /
``ns.popen([...])`` / ``ns.run([...])`` wrap a command line with ``nsenter --net=/proc/<holder>/ns/net``.
Files are shared as usual (only the network is private), so a test can enqueue into a DB, run the
sender inside the namespace, and read what the peer wrote to disk. :class:`HostNetwork` has the same
interface for this machine's own network: ``labelqa demo --orthanc`` (an Orthanc that refuses remote
HTTP and only accepts DICOM from the declared peers on 127.0.0.1), or a script that already runs under
``unshare -n``. Typical use::

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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_io.scp import Listener
from dicom_io.settings import ListenerSettings
from dicom_io.store import StudyStore

if TYPE_CHECKING:
    from dicom_io.scp import Listener
    from dicom_io.store import StudyStore

__all__ = [
    "ORTHANC_PLUGINS",
    "HostNetwork",
    "LocalArchive",
    "NetNamespace",
    "Network",
    "Orthanc",
    "OrthancError",
    "Peer",
    "can_unshare_net",
    "orthanc_binary",
    "peer_env",
    "start_orthanc",
    "free_port",
]

ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


def orthanc_binary() -> str | None:
    """The Orthanc executable (``Orthanc`` on PATH, else Debian's ``/usr/sbin/Orthanc``), or None when absent."""
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def can_unshare_net() -> bool:
    """Whether `unshare -n` (a private network namespace with only loopback) works here."""
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return r.returncode == 0


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with ``TCP_NODELAY=1`` (dcmtk, Orthanc) and ``extra``."""
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


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Network:
    """Where peers run and who can reach them: command lines wrapped for that network, HTTP from inside it."""

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this network."""
        raise NotImplementedError

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        kw.setdefault("env", peer_env())
        return subprocess.Popen(self.cmd(argv), **kw)

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("env", peer_env())
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.cmd(argv), **kw)

    def wait_port(self, port: int, timeout: float = 20.0) -> None:
        """Wait until something listens on 127.0.0.1:``port`` in this network."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._port_open(port):
                return
            time.sleep(0.1)
        raise TimeoutError(f"nothing listens on port {port} after {timeout} s")

    def _port_open(self, port: int) -> bool:
        probe = f"import socket; socket.create_connection(('127.0.0.1', {int(port)}), 1).close()"
        return self.run([sys.executable, "-c", probe]).returncode == 0

    def http(self, method: str, url: str, body: bytes | None = None, content_type: str = "application/json",
             timeout: float = 60.0) -> bytes:
        """The response body of an HTTP request made from inside this network (curl); RuntimeError on failure."""
        argv = ["curl", "-s", "-f", "-X", method, url]
        if body is not None:
            argv += ["-H", f"Content-Type: {content_type}", "--data-binary", "@-"]
        r = self.run(argv, input=body, text=False, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{method} {url} failed (curl rc {r.returncode}): {r.stderr.decode(errors='replace')}")
        return r.stdout

    def stop(self) -> None:
        """Release the network (nothing to do for this machine's own)."""


class HostNetwork(Network):
    """This machine's own network namespace: commands run as they are, HTTP with urllib."""

    def cmd(self, argv: Sequence[str]) -> list[str]:
        return [str(a) for a in argv]

    def _port_open(self, port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", int(port)), 1).close()
        except OSError:
            return False
        return True

    def http(self, method: str, url: str, body: bytes | None = None, content_type: str = "application/json",
             timeout: float = 60.0) -> bytes:
        req = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback URL
                return r.read()
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(f"{method} {url} failed: {e}") from e


class NetNamespace(Network):
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
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *map(str, argv)]

    @contextmanager
    def joined(self) -> Iterator[None]:
        """Run the calling thread (and every thread and process it starts meanwhile) in this namespace;
        back home at the end. Raises OSError when ``setns`` is refused."""
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(there, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), f"setns failed: {os.strerror(ctypes.get_errno())}")
            yield
        finally:
            libc.setns(home, 0x40000000)
            os.close(home)
            os.close(there)

    def stop(self) -> None:
        _stop(self.holder)
        for f in (self.holder.stdout, self.holder.stderr):
            if f:
                f.close()


class Peer:
    """A server process started in a network; ``.stop()`` ends it (by PID)."""

    def __init__(self, ns: Network, proc: subprocess.Popen | None, port: int, log_path: Path | None = None) -> None:
        self.ns, self.proc, self.port, self.log_path = ns, proc, port, log_path

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            _stop(self.proc, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


class OrthancError(RuntimeError):
    """Orthanc is not installed, exited, or did not answer; the message says which (and where its log is)."""


class Orthanc(Peer):
    """A throw-away Orthanc (Debian package) with its own storage and index under ``work``: the one place
    that launches Orthanc. Configured in :meth:`config`, started by :meth:`start`, REST through ``ns``.

    ``modalities``: Orthanc's ``DicomModalities`` (name -> [AET, host, port] or a dict with AET, Host,
    Port, AllowStore ...). ``dicomweb`` loads the DICOMweb plugin (STOW-RS at ``<url>/dicom-web``) when
    installed. ``stable_age_s`` (None: Orthanc's default) is when OnStableStudy fires. ``config`` is
    merged last (e.g. ``LuaScripts``, or labelqa's routing example from ``deploy/orthanc``).
    Orthanc refuses remote HTTP (``RemoteAccessAllowed`` false) unless ``config`` says otherwise.
    """

    def __init__(self, ns: Network, work: Path, *, dicom_port: int, http_port: int, aet: str = "ORTHANC",
                 modalities: Mapping[str, object] | None = None, dicomweb: bool = True,
                 stable_age_s: float | None = None, config: Mapping[str, object] | None = None) -> None:
        self.work = Path(work)
        super().__init__(ns, None, dicom_port, self.work / "orthanc.log")
        self.dicom_port, self.http_port, self.aet = dicom_port, http_port, aet
        self.modalities, self.dicomweb, self.stable_age_s = modalities or {}, dicomweb, stable_age_s
        self.extra_config = dict(config or {})
        self.url = f"http://127.0.0.1:{http_port}"

    def config(self) -> dict[str, object]:
        """The Orthanc configuration file's content."""
        web_plugin = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
        config: dict[str, object] = {
            "Name": "labelqa-local",
            "StorageDirectory": str(self.work / "storage"),
            "IndexDirectory": str(self.work / "index"),
            "DicomAet": self.aet,
            "DicomPort": int(self.dicom_port),
            "HttpPort": int(self.http_port),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": self.modalities,
            "DicomCheckCalledAet": False,
            "Plugins": [str(web_plugin)] if self.dicomweb and web_plugin.exists() else [],
        }
        if self.dicomweb:
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        if self.stable_age_s is not None:
            config["StableAge"] = self.stable_age_s
        config.update(self.extra_config)
        return config

    def start(self, timeout_s: float = 60.0) -> Orthanc:
        """Write the configuration, start Orthanc in ``ns`` and wait until REST and DICOM answer."""
        exe = orthanc_binary()
        if exe is None:
            raise OrthancError("Orthanc is not installed (Debian: apt-get install orthanc)")
        self.work.mkdir(parents=True, exist_ok=True)
        cfg_path = self.work / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2))
        assert self.log_path is not None
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = self.ns.popen([exe, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.work)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   f"{self.log()[-3000:]}")
            try:
                self.rest("GET", "/system", timeout=10)
            except RuntimeError:
                time.sleep(0.2)
                continue
            self.ns.wait_port(self.dicom_port)
            return self
        self.stop()
        raise OrthancError(f"Orthanc did not answer within {timeout_s:.0f} s; see {self.log_path}:\n"
                           f"{self.log()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)

    def rest(self, method: str, path: str, body: object = None, timeout: float = 60.0) -> Any:
        """Call Orthanc's REST API (from inside ``ns``) and return the decoded JSON (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        try:
            out = self.ns.http(method, self.url + path, data, timeout=timeout)
        except RuntimeError as e:
            raise RuntimeError(f"Orthanc {method} {path}: {e}") from None
        return json.loads(out) if out.strip() else None

    def rest_get(self, path: str) -> Any:
        return self.rest("GET", path)

    def download(self, path: str, dest: Path) -> Path:
        """GET ``path`` (e.g. ``/instances/<id>/preview``, a PNG Orthanc renders) into the file ``dest``."""
        try:
            Path(dest).write_bytes(self.ns.http("GET", self.url + path))
        except RuntimeError as e:
            raise RuntimeError(f"Orthanc GET {path}: {e}") from None
        return Path(dest)

    def find_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Instances of the study as Orthanc has them (with MainDicomTags and parent series)."""
        return self.rest("POST", "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid},
                                                  "Expand": True})

    def study_series(self, study_uid: str) -> list[dict[str, Any]]:
        """Series (with MainDicomTags and Instances) of the study with this Study Instance UID; [] if none."""
        found = self.rest("POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        if not found:
            return []
        return self.rest_get(f"/studies/{found[0]}/series")


def start_orthanc(ns: Network, tmpdir: Path, dicom_port: int, http_port: int,
                  modalities: dict[str, list[str | int]] | None = None, aet: str = "ORTHANC",
                  dicomweb: bool = True, extra_config: dict[str, object] | None = None) -> Orthanc:
    """A started :class:`Orthanc` in ``ns`` under ``tmpdir`` (``StableAge`` 2 s unless ``extra_config`` sets it)."""
    return Orthanc(ns, tmpdir, dicom_port=dicom_port, http_port=http_port, aet=aet, modalities=modalities,
                   dicomweb=dicomweb, stable_age_s=2, config=extra_config).start()


class LocalArchive:
    """A stand-in PACS: labelqa's own listener and store in a separate folder, on 127.0.0.1 (no namespace
    needed: it binds loopback only). ``start()``, ``stop()``; what it received is in ``store``."""

    store: StudyStore
    listener: Listener

    def __init__(self, root: Path, port: int, ae_title: str = "ARCHIVE") -> None:
        self.store = StudyStore(root, None, 3600.0)
        self.listener = Listener(
            ListenerSettings(host="127.0.0.1", port=port, ae_title=ae_title, min_free_disk_mb=0), self.store)
        self.port, self.ae_title, self.root = port, ae_title, root

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()
        self.store.close()
