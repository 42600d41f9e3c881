"""``labelqa audit --bundle B --dicom DIR --out OUT``: every study of a folder, audited without a network.

The result objects go to ``OUT/dicom/*.dcm`` (:func:`dicom_io.results.save_results`), the verdict rows
and the summary to ``OUT/verdicts.json``. One model step runs over every study's inputs together.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from dicom_io.results import save_results
from dicom_io.study import open_studies
from models.bundles import load_bundle
from models.verdict import Verdict
from service.audit.task import ResultOptions, audit_inputs, resolve_vocabulary, task_for

__all__ = ["audit_dicom_dir"]

log = logging.getLogger("labelqa.audit")


def audit_dicom_dir(bundle_path: Path | str, dicom_dir: Path | str, out_dir: Path | str, *,
                    vocabulary: Path | str | None = None, device: str = "auto", batch_size: int = 64,
                    options: ResultOptions = ResultOptions()) -> dict[str, object]:
    """Audit every study under ``dicom_dir`` offline: ``out_dir/dicom/*.dcm`` + ``out_dir/verdicts.json``.

    Returns the summary written into verdicts.json (without the per-annotation items).

    Raises
    ------
    ValueError
        ``dicom_dir`` is not a folder; ``models.bundles.BundleError`` (a ValueError) for a bad bundle.
    """
    t0 = time.perf_counter()
    dicom_dir, out_dir = Path(dicom_dir), Path(out_dir)
    if not dicom_dir.is_dir():
        raise ValueError(f"{dicom_dir} is not a folder of DICOM studies")
    bundle = load_bundle(bundle_path)
    vocab = resolve_vocabulary(bundle, Path(bundle_path), vocabulary)
    task = task_for(bundle)
    studies = open_studies(dicom_dir)
    inputs = [task.read(s, bundle, vocab) for s in studies]
    audits = audit_inputs(task, inputs, bundle, vocab, device=device, batch_size=batch_size, options=options)
    written: list[str] = []
    for sa in audits:
        written += [str(p.relative_to(out_dir)) for p in save_results(sa.datasets, out_dir / "dicom")]
    items = [r.to_dict() for sa in audits for r in sa.rows]
    counts = {str(v): sum(r["verdict"] == v for r in items) for v in Verdict
              if any(r["verdict"] == v for r in items) or v in task.verdicts}
    summary = {
        "bundle": {"path": str(bundle_path), "content_hash": bundle.content_hash, "version": bundle.version},
        "task": bundle.task, "dims": bundle.dimension,
        "studies": sum(1 for sa in audits if sa.study_uid), "annotations": len(items), "verdicts": counts,
        **({"cannot_judge": cj} if (cj := sorted({str(r["cannot_judge"]) for r in items if r.get("cannot_judge")}))
           else {}),
        "objects": written, "issues": [dict(i, study_uid=sa.study_uid) for sa in audits for i in sa.issues],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "verdicts.json").write_text(json.dumps({**summary, "items": items}, indent=2, default=_json))
    log.info("audited %d annotation(s) of %d study(ies): %s; %d object(s) in %s", len(items), summary["studies"],
             counts, len(written), out_dir / "dicom")
    return summary


def _json(v: object) -> object:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)
