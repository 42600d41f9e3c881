"""A real multi-node Ray cluster on this machine (tests, benchmarks), inside a private network namespace.

``ray start`` binds all interfaces (GCS, raylet, object manager), so the nodes run in a network
namespace with only loopback (:class:`service.demo.peers.NetNamespace`), on 127.0.0.1; whatever
talks to them (``labelqa serve``, a driver script) runs in the same namespace. A script that already
runs under ``unshare -n`` passes :class:`service.demo.peers.HostNetwork` instead. Every node is one
``ray start --block`` process started in its own session: its daemons (gcs_server, raylet, agents,
workers) share that session id, so a node is stopped by the PIDs of that session, never by name
and never with ``ray stop`` (which would stop other people's Ray too).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.commands import labelqa_env
from service.demo.peers import Network, free_port

__all__ = ["FAST_FAILURE_DETECTION", "RAY_BIN", "RayCluster", "RayNode", "ray_env"]

RAY_BIN = Path(sys.executable).with_name("ray")

# Node failure is noticed within ~2 s instead of ~30 s (GCS health checks of raylets).
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


def _session_pids(sid: int) -> list[int]:
    """PIDs whose session id is ``sid`` (everything one ``ray start`` made)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session ...
            out.append(int(d.name))
    return out


@dataclass
class RayNode:
    """One node: its ``ray start --block`` process (a session leader) and its resources."""

    name: str
    proc: subprocess.Popen
    resources: dict[str, float]
    log: Path
    node_id: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # what this node's environment adds to the cluster's

    def pids(self) -> list[int]:
        return _session_pids(self.proc.pid)

    def raylet_pid(self) -> int | None:
        for pid in self.pids():
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            if exe.endswith("/raylet"):
                return pid
        return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process of this node, by PID."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


class _StartupGaveUp(RuntimeError):
    """``ray start`` exited because its raylet did not register in Ray's fixed start-up wait."""

    def __init__(self, message: str, node: RayNode) -> None:
        super().__init__(message)
        self.node = node


@dataclass
class RayCluster:
    """A head node (no audit resources) and worker nodes, all on 127.0.0.1 in ``ns``."""

    ns: Network
    env: dict[str, str]
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lqray")))  # short: unix sockets
    port: int = 0
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str], resources: dict[str, float], timeout: float,
               attempts: int = 3, extra_env: dict[str, str] | None = None) -> RayNode:
        """Start one node; a ``ray start`` that gives up during start-up is started again (``attempts`` in all).

        Ray waits a fixed 30 s for a new raylet to register with the GCS; on a loaded 2-core machine that
        wait is sometimes too short ("The current node timed out during startup") and ``ray start`` exits.
        That is Ray's start-up racing the load, not something under test: the node's leftovers are
        stopped by PID and it is started again.
        """
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(name if attempt == 1 else f"{name}-{attempt}", args, resources, timeout,
                                        extra_env or {})
            except _StartupGaveUp as e:
                node = e.node
                node.kill()
                self.nodes.remove(node)
                if attempt == attempts:
                    raise RuntimeError(str(e)) from None
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    def _start_once(self, name: str, args: list[str], resources: dict[str, float], timeout: float,
                    extra_env: dict[str, str]) -> RayNode:
        log = self.temp_dir / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(self.ns.cmd([str(RAY_BIN), "start", "--block", "--disable-usage-stats",
                                                 "--node-ip-address", "127.0.0.1", *args]),
                                    stdout=fh, stderr=subprocess.STDOUT, env={**self.env, **extra_env},
                                    start_new_session=True)
        node = RayNode(name, proc, resources, log, extra_env=dict(extra_env))
        self.nodes.append(node)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                text = log.read_text(errors="replace")
                msg = f"ray start ({name}) exited {proc.returncode}: {text[-2000:]}"
                if "timed out during startup" in text:
                    raise _StartupGaveUp(msg, node)
                raise RuntimeError(msg)
            if node.raylet_pid() is not None and node.node_id is None:
                node.node_id = self._node_id_of(node)
            if node.node_id:
                return node
            time.sleep(0.5)
        raise RuntimeError(f"ray node {name} not up within {timeout:.0f} s: {log.read_text()[-2000:]}")

    def _node_id_of(self, node: RayNode) -> str | None:
        pid = node.raylet_pid()
        if pid is None:
            return None
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        for a in args:
            if a.startswith(b"--node_id="):
                return a.split(b"=", 1)[1].decode()
        return None

    def start_head(self, num_cpus: int = 1, resources: dict[str, float] | None = None,
                   timeout: float = 180.0) -> RayNode:
        self.port = free_port()
        extra = ["--resources", json.dumps(resources)] if resources else []
        return self._start("head", ["--head", "--port", str(self.port), "--num-cpus", str(num_cpus), *extra,
                                    "--include-dashboard", "false", "--temp-dir", str(self.temp_dir)],
                           dict(resources or {}), timeout)

    def add_worker(self, name: str, resources: dict[str, float], num_cpus: int = 1,
                   timeout: float = 180.0, env: dict[str, str] | None = None) -> RayNode:
        """Start a worker node; ``env`` adds to its environment (its raylet's, so its workers' and actors'),
        e.g. the test hooks of :mod:`dicom_io.hooks` for this node only."""
        return self._start(name, ["--address", self.address, "--num-cpus", str(num_cpus),
                                  "--resources", json.dumps(resources)], resources, timeout, extra_env=env)

    def alive_node_ids(self, expect: set[str] | None = None, timeout: float = 120.0) -> set[str]:
        """Node ids the GCS reports alive (a driver script in the namespace asks; with ``expect``, it
        waits until exactly those are alive)."""
        code = (
            "import json, sys, time, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False)\n"
            f"want = set({sorted(expect) if expect is not None else None!r} or [])\n"
            f"deadline = time.monotonic() + {timeout}\n"
            "while True:\n"
            "    alive = {n['NodeID'] for n in ray.nodes() if n['Alive']}\n"
            "    if not want or alive == want or time.monotonic() > deadline:\n"
            "        break\n"
            "    time.sleep(0.3)\n"
            "print(json.dumps(sorted(alive)))\n"
        )
        r = self.ns.run([sys.executable, "-c", code], env=self.env, timeout=timeout + 60)
        if r.returncode != 0:
            raise RuntimeError(f"cannot ask the cluster: {r.stderr[-1000:]}")
        return set(json.loads(r.stdout.strip().splitlines()[-1]))

    def stop(self) -> None:
        """Stop every node this cluster started (by the PIDs of their sessions), then remove the temp dir."""
        for node in reversed(self.nodes):
            node.kill(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(n.pids() for n in self.nodes):
            time.sleep(0.2)
        for node in self.nodes:
            node.kill(signal.SIGKILL)
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def ray_env(extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Environment of the nodes and drivers: this checkout importable by the workers, quiet Ray."""
    env = labelqa_env(RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0", OMP_NUM_THREADS="1",
                      **FAST_FAILURE_DETECTION)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env
