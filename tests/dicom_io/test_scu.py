"""C-STORE SCU against a real dcmtk storescp (in a private network namespace): byte-equal delivery."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dicom_io.results import save_results, write_results
from dicom_io.scu import presentation_contexts
from harness.commands import labelqa_env
from harness.peers import start_storescp
from harness.studies import ALGORITHM, COHORT, make_study
from service.demo.peers import NetNamespace, can_unshare_net, free_port
from tests.conftest import have, requires_dcmtk

needs_netns = pytest.mark.skipif(not can_unshare_net(), reason="cannot create a network namespace (unshare -n)")


@pytest.fixture(scope="module")
def result_files(tmp_path_factory) -> list[Path]:
    sources, annotations, audited = make_study()
    return save_results(write_results(sources, annotations, audited, ALGORITHM, COHORT),
                        tmp_path_factory.mktemp("results"))


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file without its preamble and file meta (which the receiver rewrites)."""
    from pynetdicom.dsutils import split_dataset

    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def test_presentation_contexts_are_exactly_those_of_the_files(result_files):
    from dicom_io.scu import file_info

    infos = [file_info(p) for p in result_files]
    ctx = presentation_contexts(infos + infos)
    assert sorted(ctx) == sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in infos})
    assert ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.1.2.1") in ctx  # Comprehensive 3D SR, explicit LE


def test_file_info_rejects_non_dicom(tmp_path):
    from dicom_io.scu import file_info

    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a readable DICOM file"):
        file_info(bad)


@requires_dcmtk
@needs_netns
def test_storescp_receives_sr_sc_kos_byte_equal(result_files, tmp_path):
    ns = NetNamespace()
    port = free_port()
    scp = start_storescp(ns, tmp_path / "rx", port)
    try:
        script = textwrap.dedent(f"""
            import json, sys
            from pathlib import Path
            from dicom_io.scu import file_info, store_files
            files = [file_info(Path(p)) for p in {[str(p) for p in result_files]!r}]
            # timeouts a loaded 2-core machine cannot outlast (an answer once took over the default 60 s)
            out = store_files(files, host="127.0.0.1", port={port}, called_ae="STORESCP", connect_timeout_s=300,
                              acse_timeout_s=300, dimse_timeout_s=600)
            print(json.dumps([[o.sop_instance_uid, o.delivered, o.status, o.error] for o in out]))
        """)
        r = ns.run([sys.executable, "-c", script], env=labelqa_env(), timeout=1200)
        assert r.returncode == 0, r.stderr
        outcomes = json.loads(r.stdout.strip().splitlines()[-1])
        assert all(delivered and status == 0 for _, delivered, status, _ in outcomes), outcomes
        received = scp.received()
        assert len(received) == len(result_files)
        want = {dataset_bytes(p) for p in result_files}
        got = {dataset_bytes(p) for p in received}
        assert got == want
    finally:
        scp.stop()
        ns.stop()


def test_warning_statuses_count_as_delivered_and_failures_are_retried(result_files, tmp_path):
    """A real pynetdicom SCP on loopback answers 0xB000, 0xB007 and 0xA700 (out of resources)."""
    from pynetdicom import AE, evt

    from dicom_io.db import make_engine
    from dicom_io.outbox import DELIVERED, PENDING, Outbox
    from dicom_io.scu import file_info
    from dicom_io.settings import OutboxSettings

    infos = {i.sop_instance_uid: i for i in (file_info(p) for p in result_files)}
    uids = sorted(infos)
    answers = dict(zip(uids, (0xB000, 0xB007, 0xA700, 0x0000), strict=True))  # QA report, drawn flags, SC, KOS
    seen: list[str] = []
    associations: list[int] = []

    def on_store(event):
        uid = str(event.request.AffectedSOPInstanceUID)
        seen.append(uid)
        return answers[uid]

    ae = AE(ae_title="WARNSCP")
    for sop_class, ts in presentation_contexts(list(infos.values())):
        ae.add_supported_context(sop_class, ts)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store),
                                                       (evt.EVT_ESTABLISHED, lambda e: associations.append(1))])
    try:
        class Dest:
            name, kind, ae_title, host, tls, url = "warn", "dicom", "WARNSCP", "127.0.0.1", False, None

        Dest.port = port
        box = Outbox(make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"), [Dest], settings=OutboxSettings())
        box.enqueue(result_files)
        assert box.deliver_once("warn") == 3
        rows = {r["sop_instance_uid"]: r for r in box.list()}
        for uid, status in answers.items():
            assert rows[uid]["last_status"] == status
            assert rows[uid]["state"] == (PENDING if status == 0xA700 else DELIVERED)
        assert "0xA700" in rows[uids[2]]["last_error"] and rows[uids[2]]["attempts"] == 1
        assert sorted(seen) == uids and len(associations) == 1  # one association carried the whole batch
    finally:
        server.shutdown()


def _pki(d: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for IP 127.0.0.1 and a client certificate (openssl CLI)."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=labelqa test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=labelqa test {name}")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {k: d / k for k in ("ca.crt", "server.key", "server.crt", "client.key", "client.crt")}


@requires_dcmtk
@needs_netns
@pytest.mark.skipif(not have("openssl"), reason="openssl not installed")
@pytest.mark.slow
def test_dicom_tls_to_storescp_with_mutual_authentication(result_files, tmp_path):
    pki = _pki(tmp_path / "pki")
    ns = NetNamespace()
    port = free_port()
    rx = tmp_path / "rx"
    rx.mkdir()
    log = open(tmp_path / "storescp.log", "w")  # noqa: SIM115
    scp = ns.popen(["storescp", "-aet", "STORESCP", "-od", str(rx), "+B", "+uf", "-pm", "+xa", "-dhl",
                    "+tls", str(pki["server.key"]), str(pki["server.crt"]), "+cf", str(pki["ca.crt"]), "-rc",
                    str(port)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        ns.wait_port(port)
        script = textwrap.dedent(f"""
            import json
            from pathlib import Path
            from dicom_io.scu import AssociationError, file_info, store_files
            files = [file_info(Path(p)) for p in {[str(p) for p in result_files]!r}]
            kw = dict(host="127.0.0.1", port={port}, called_ae="STORESCP", tls=True, connect_timeout_s=300,
                      acse_timeout_s=300, dimse_timeout_s=600)  # timeouts a loaded machine cannot outlast
            try:
                store_files(files, **kw)  # system CAs do not know our CA: refused
                untrusted = "sent"
            except AssociationError as e:
                untrusted = "refused"
            out = store_files(files, tls_ca={str(pki["ca.crt"])!r}, tls_cert={str(pki["client.crt"])!r},
                              tls_key={str(pki["client.key"])!r}, **kw)
            print(json.dumps({{"untrusted": untrusted, "ok": [o.delivered for o in out]}}))
        """)
        r = ns.run([sys.executable, "-c", script], env=labelqa_env(), timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["untrusted"] == "refused"
        assert res["ok"] == [True] * len(result_files)
        assert {dataset_bytes(p) for p in rx.iterdir()} == {dataset_bytes(p) for p in result_files}
    finally:
        scp.terminate()
        scp.wait(10)
        ns.stop()
