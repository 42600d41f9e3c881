"""C-STORE SCU against a real dcmtk storescp (in a private network namespace): byte-equal delivery."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from dicom_io.results import save_results, write_results
from dicom_io.scu import presentation_contexts
from tests.conftest import can_unshare_net, free_port, labelqa_env, requires_dcmtk
from tests.orthanc_helper import NetNamespace, start_storescp
from tests.test_results import ALGORITHM, COHORT, make_study

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
            out = store_files(files, host="127.0.0.1", port={port}, called_ae="STORESCP")
            print(json.dumps([[o.sop_instance_uid, o.delivered, o.status, o.error] for o in out]))
        """)
        r = ns.run([sys.executable, "-c", script], env=labelqa_env(), timeout=120)
        assert r.returncode == 0, r.stderr
        import json

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
