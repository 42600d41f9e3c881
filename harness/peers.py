"""dcmtk ``storescp`` as a local peer for the tests and the benchmarks (the product's peers, Orthanc and
labelqa's own archive, are in :mod:`service.demo.peers`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from service.demo.peers import Network, Peer

__all__ = ["StoreSCP", "start_storescp"]


class StoreSCP(Peer):
    """dcmtk storescp writing each received instance, bit-preserving, under a unique file name."""

    def __init__(self, ns: Network, proc: subprocess.Popen, port: int, out_dir: Path, log_path: Path) -> None:
        super().__init__(ns, proc, port, log_path)
        self.out_dir = out_dir

    def received(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())


def start_storescp(ns: Network, out_dir: Path, port: int, ae_title: str = "STORESCP",
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
