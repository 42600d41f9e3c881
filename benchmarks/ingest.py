"""Ingest benchmark: how fast does `labelqa serve` take in instances, against dcmtk storescp and Orthanc?

500 copies of pydicom's CT_small.dcm (new SOP Instance UIDs, one study) are sent by dcmtk
`storescu` over ONE association (TCP_NODELAY=1 in its environment) to each receiver in turn:
(a) `labelqa serve` (durable: fsync'd file + directory, index row committed before Success),
(b) dcmtk `storescp` (writes files, no fsync), (c) Orthanc (Debian package, default storage).
Receivers alternate in rotating order for several rounds; each gets a fresh, empty storage
directory per round. The rate is 500 / wall time of the storescu run (process start included,
the same for all receivers). Everything runs inside a private network namespace with only
loopback (Orthanc and storescp listen on all interfaces), so the script re-executes itself under
`unshare -n` (root needed).

    .venv/bin/python benchmarks/ingest.py [--rounds 3] [--n 500] [--out benchmarks/results/ingest.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import peers  # noqa: E402
from service.demo.peers import free_port  # noqa: E402

NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}


def make_instances(out: Path, n: int) -> list[Path]:
    """``n`` copies of CT_small.dcm with new UIDs (one new study and series)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    paths = []
    for i in range(n):
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = i + 1
        p = out / f"{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def wait_echo(port: int, aec: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        r = subprocess.run(["echoscu", "-aec", aec, "127.0.0.1", str(port)], env=NODELAY_ENV, capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("receiver did not answer C-ECHO")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Receiver:
    name = ""
    aec = ""

    def start(self, work: Path, port: int) -> subprocess.Popen:
        raise NotImplementedError

    def count(self, work: Path, port: int) -> int:
        raise NotImplementedError


class Labelqa(Receiver):
    name, aec = "labelqa", "LABELQA"
    extra_env: dict[str, str] = {}

    def start(self, work, port):
        env = {
            **NODELAY_ENV,
            "PYTHONPATH": str(REPO),
            "LABELQA_API__PORT": str(free_port()),
            "LABELQA_LOG_LEVEL": "WARNING",
            **self.extra_env,
        }
        cmd = [sys.executable, "-m", "service", "serve", "--port", str(port), "--data-dir", str(work / "data")]
        return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"))

    def count(self, work, port):
        import sqlite3

        con = sqlite3.connect(work / "data" / "index.sqlite")
        try:
            return con.execute("SELECT count(*) FROM instances").fetchone()[0]
        finally:
            con.close()


class LabelqaNoDirSync(Labelqa):
    """labelqa with [store] fsync_directory = false (one journal commit per instance, see docs/architecture.md)."""

    name = "labelqa_fsync_directory_off"
    extra_env = {"LABELQA_STORE__FSYNC_DIRECTORY": "false"}


class Storescp(Receiver):
    name, aec = "storescp", "STORESCP"

    def start(self, work, port):
        (work / "out").mkdir()
        cmd = ["storescp", "-aet", "STORESCP", "-od", str(work / "out"), str(port)]
        return subprocess.Popen(cmd, env=NODELAY_ENV, stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"))

    def count(self, work, port):
        return sum(1 for _ in (work / "out").iterdir())


class Orthanc(Receiver):
    """``service.demo.peers.Orthanc`` on this (already private) network, no plugins, default storage."""

    name, aec = "orthanc", "ORTHANC"
    orthanc: peers.Orthanc | None = None

    def start(self, work, port):
        self.orthanc = peers.Orthanc(peers.HostNetwork(), work, dicom_port=port, http_port=free_port(),
                                     aet=self.aec, dicomweb=False,
                                     config={"Name": "bench", "IndexDirectory": str(work / "storage")})
        return self.orthanc.start().proc

    def count(self, work, port):
        assert self.orthanc is not None
        return self.orthanc.rest_get("/statistics")["CountInstances"]


def tool_version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as e:  # pragma: no cover - informational only
        return f"unknown ({e})"


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(rounds: int, n: int, out: Path, command: str) -> dict:
    receivers: list[Receiver] = [Labelqa(), Storescp(), Orthanc(), LabelqaNoDirSync()]
    info = machine()
    rates: dict[str, list[float]] = {r.name: [] for r in receivers}
    counts: dict[str, list[int]] = {r.name: [] for r in receivers}
    cpu_ms: dict[str, list[float]] = {r.name: [] for r in receivers}
    with tempfile.TemporaryDirectory(prefix="labelqa-bench-") as tmp:
        files = make_instances(Path(tmp) / "instances", n)
        for rnd in range(rounds):
            order = receivers[rnd % len(receivers) :] + receivers[: rnd % len(receivers)]
            for rc in order:
                work = Path(tempfile.mkdtemp(prefix=f"{rc.name}-", dir=tmp))
                port = free_port()
                proc = rc.start(work, port)
                try:
                    wait_echo(port, rc.aec, proc)
                    c0 = cpu_seconds(proc.pid)
                    t0 = time.perf_counter()
                    r = subprocess.run(
                        ["storescu", "-aec", rc.aec, "127.0.0.1", str(port), *map(str, files)],
                        env=NODELAY_ENV,
                        capture_output=True,
                        text=True,
                        timeout=600,
                    )
                    dt = time.perf_counter() - t0
                    cpu = cpu_seconds(proc.pid) - c0
                    if r.returncode != 0:
                        raise RuntimeError(f"{rc.name}: storescu failed: {r.stderr[-2000:]}")
                    got = rc.count(work, port)
                finally:
                    stop(proc)
                rate = n / dt
                rates[rc.name].append(round(rate, 1))
                counts[rc.name].append(got)
                cpu_ms[rc.name].append(round(cpu * 1000 / n, 2))
                print(
                    f"round {rnd + 1} {rc.name:9s} {rate:7.1f} instances/s ({got} stored, "
                    f"receiver CPU {cpu * 1000 / n:.2f} ms/instance)",
                    flush=True,
                )
                shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    info["loadavg_at_end"] = os.getloadavg()
    result = {
        "benchmark": "ingest",
        "command": command,
        "what": (
            f"{n} copies of pydicom CT_small.dcm (new UIDs, one study) sent by dcmtk storescu over one association "
            "with TCP_NODELAY=1 to each receiver; receivers alternate in rotating order; rate = n / storescu wall "
            "time; fresh storage per run; all inside a private network namespace (loopback only)"
        ),
        "durability": {
            "labelqa": "default settings: temp file (named with size + hash) + fsync + atomic rename + directory "
            "fsync + index row committed before Success",
            "labelqa_fsync_directory_off": "same without the directory fsync; a complete temp file whose rename "
            "was lost is rolled forward at start-up (needs a journaling file system: ext4, xfs)",
            "storescp": "dcmtk storescp default: file written, no fsync",
            "orthanc": "Orthanc default configuration (SyncStorageArea: fdatasync of the file; SQLite index)",
        },
        "instances": n,
        "rounds": rounds,
        "machine": info,
        "versions": {
            "dcmtk": tool_version(["storescu", "--version"]),
            "orthanc": tool_version([peers.orthanc_binary() or "Orthanc", "--version"]),
            "labelqa_commit": subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
        },
        "instances_per_s": rates,
        "stored_counts": counts,
        "median_instances_per_s": med,
        "receiver_cpu_ms_per_instance": cpu_ms,
        "median_receiver_cpu_ms_per_instance": {k: statistics.median(v) for k, v in cpu_ms.items()},
        "ratio_labelqa_over_orthanc": round(med["labelqa"] / med["orthanc"], 3),
        "ratio_labelqa_over_storescp": round(med["labelqa"] / med["storescp"], 3),
        "ratio_labelqa_fsync_directory_off_over_orthanc": round(med["labelqa_fsync_directory_off"] / med["orthanc"], 3),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("median_instances_per_s", "ratio_labelqa_over_orthanc", "ratio_labelqa_over_storescp")
            },
            indent=2,
        )
    )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ingest.json")
    ap.add_argument("--inside-netns", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    command = f"{Path(sys.executable).relative_to(REPO) if REPO in Path(sys.executable).parents else sys.executable} "
    command += f"benchmarks/ingest.py --rounds {a.rounds} --n {a.n}"
    if not a.inside_netns:
        inner = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--inside-netns",
            "--rounds",
            str(a.rounds),
            "--n",
            str(a.n),
            "--out",
            str(a.out.resolve()),
        ]
        script = "ip link set lo up && exec " + " ".join(f"'{x}'" for x in inner)
        return subprocess.call(["unshare", "-n", "sh", "-c", script], cwd=REPO)
    run(a.rounds, a.n, a.out, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
