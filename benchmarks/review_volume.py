"""Seconds and peak memory of reviewing a segment audited in 3-D: the worklist item, the slice pictures
(cold: the series' grid from its headers and the segment read over it; warm: from the packed cache),
and accepting the suggestion (the corrected SEG rebuilt over the whole series).

A synthetic CT (``--slices`` x ``--size`` x ``--size``) with ``--segments`` ellipsoid segments side by
side (none overlapping, as organs) is written with ``write_volume_study`` into a study store; segment 1
is flagged (its consensus two slices lower), the others are consistent; ``write_volume_results`` writes
the real result objects and a finished job holds the ``VolumeRow``s, as the volume audit task would.
The review then runs in a fresh child process (its peak RSS, ``VmHWM``, is its own) through the HTTP
app in-process (FastAPI's TestClient: the server's work, no network). Writes JSON with the command that made it.

    .venv/bin/python benchmarks/review_volume.py --slices 100 --size 512 --segments 10 \\
        --out benchmarks/results/review_volume.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = ("bench", "bench-token")


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _build(folder: Path, slices: int, size: int, segments: int, seed: int = 0) -> dict:
    """The stored study, its results and the finished job; returns what the child needs."""
    import pydicom

    from dicom_io.annotations import read_study
    from dicom_io.db import make_engine
    from dicom_io.dicomize_volume import write_volume_study
    from dicom_io.geometry import Geometry
    from dicom_io.results import AlgorithmInfo, AuditedVolumeMask, save_results, write_volume_results
    from dicom_io.store import StudyStore
    from dicom_io.vocabulary import Vocabulary
    from service.audit.rows import VolumeRow
    from service.runtime.jobs import DONE, JobStore

    rng = np.random.default_rng(seed)
    image = rng.normal(40, 30, (slices, size, size)).astype(np.int16)
    zz, yy, xx = np.ogrid[:slices, :size, :size]
    masks = {}
    across = int(np.ceil(np.sqrt(segments)))
    cell = size / across
    for k in range(segments):  # organs side by side, as in a multi-organ CT SEG: no two overlap
        cy, cx = cell * (k // across + 0.5), cell * (k % across + 0.5)
        cz, rz = slices * rng.uniform(0.4, 0.6), slices * rng.uniform(0.2, 0.3)
        ry, rx = cell * rng.uniform(0.3, 0.45), cell * rng.uniform(0.3, 0.45)
        masks[f"organ{k + 1}"] = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    head_to_feet = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]
    geometry = Geometry.from_components(image.shape, (1.5, 0.8, 0.8), (-200.0, -200.0, 100.0), head_to_feet)
    vocab = Vocabulary.from_class_names(list(masks))
    t0 = time.perf_counter()
    written = write_volume_study(image, geometry, masks, folder / "in", dataset_name="bench", case_key="case",
                                 vocabulary=vocab, body_part="ABDOMEN")
    write_s = time.perf_counter() - t0
    data_dir = folder / "labelqa"
    store = StudyStore(data_dir, None, 3600.0)
    for p in [*written.image_paths, written.seg_path]:
        store.put(Path(p).read_bytes())
    (study,) = store.studies()
    files = store.study_files(study)
    aset = read_study(files, vocab, volumes=True)
    vol = aset.volumes[written.series_uid]
    given = {m.label: m for m in aset.mask_volumes}
    del aset
    voxel = float(np.prod(vol.spacing))
    slices_list = [[u, f] for u, f in zip(vol.slice_uids, vol.slice_frames, strict=True)]
    records, rows = [], []
    for name, m in given.items():
        flagged = name == "organ1"
        consensus = np.roll(m.mask, 2, axis=0) if flagged else None
        key: tuple[int, ...] = ()
        if consensus is not None:
            diff = (consensus ^ m.mask).sum(axis=(1, 2))
            key = tuple(int(k) for k in np.argsort(-diff, kind="stable") if diff[k] > 0)
        zs = np.flatnonzero(m.mask.any(axis=(1, 2)))
        span = (int(zs[0]), int(zs[-1]))
        verdict = "suspected_mask_error" if flagged else "consistent"
        records.append(AuditedVolumeMask(
            study_uid=study, annotation_uid=written.seg_uid,
            annotation_sop_class_uid=str(pydicom.uid.SegmentationStorage), series_uid=written.series_uid,
            slice_uids=tuple(vol.slice_uids), slice_frames=tuple(vol.slice_frames),
            spacing=tuple(vol.spacing), class_name=name, class_code=vocab.code_for(name), verdict=verdict,
            kind="shifted" if flagged else None, dice=0.6 if flagged else 0.97, hd95_mm=3.0, agreement=0.9,
            priority=0.5 if flagged else 0.01, predicted_dice=0.6 if flagged else 0.95,
            given_mm3=float(m.mask.sum() * voxel), segment_number=m.segment_number, key_slices=key,
            slice_range=span, consensus=consensus, given=m.mask if flagged else None))
        worst = key[0] if key else span[0]
        rows.append(VolumeRow(
            study_uid=study, annotation_uid=written.seg_uid, image_uid=slices_list[worst][0],
            frame=slices_list[worst][1], given_label=name, verdict=verdict, priority=0.5 if flagged else 0.01,
            score=None, agreement=0.9, segment_number=m.segment_number, class_name=name,
            kind="shifted" if flagged else None, dice=0.6 if flagged else 0.97, series_uid=written.series_uid,
            predicted_dice=0.6 if flagged else 0.95, given_mm3=float(m.mask.sum() * voxel), slice_range=list(span),
            key_slices=list(key), slices=slices_list).to_dict())
    del given
    loaded = {u: pydicom.dcmread(p) for u, p in ((str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID), f)
                                                 for f in files)}
    algorithm = AlgorithmInfo(name="bench", version="1", bundle_hash="sha256:" + "0" * 16)
    t0 = time.perf_counter()
    datasets = write_volume_results({u: loaded[u] for u in vol.slice_uids}, {written.seg_uid: loaded[written.seg_uid]},
                                    records, algorithm)
    results_s = time.perf_counter() - t0
    del loaded, records
    for i, r in enumerate(rows):
        r["overlay_uid"] = datasets.overlays.get(i)
        r["suggestion_uid"], r["suggestion_segment"] = datasets.suggestions.get(i, (None, None))
    paths = save_results(datasets, data_dir / "results" / study)
    outputs = [{"sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                "modality": str(ds.Modality), "path": str(p)} for ds, p in zip(datasets, paths, strict=True)]
    jobs = JobStore(make_engine(f"sqlite:///{data_dir / 'index.sqlite'}"))
    job = jobs.enqueue(study)
    jobs.claim("bench")
    jobs.finish(job.id, "bench", DONE, n_samples=len(rows), n_flagged=1,
                result={"inputs": [], "rows": rows, "outputs": outputs, "report_uid": datasets.report_uid})
    store.close()
    vocab_path = folder / "vocabulary.toml"
    vocab.to_toml(vocab_path)
    return {"data_dir": str(data_dir), "vocabulary": str(vocab_path), "write_study_seconds": round(write_s, 2),
            "write_results_seconds": round(results_s, 2),
            "series_mb": round(sum(Path(p).stat().st_size for p in written.image_paths) / 2**20, 1),
            "seg_mb": round(Path(written.seg_path).stat().st_size / 2**20, 1)}


def _child(data_dir: str, vocabulary: str) -> dict:
    """The review, in this (fresh) process."""
    import io

    from PIL import Image

    from dicom_io.db import make_engine
    from harness.http import api_client, review_context
    from service.settings import load_settings

    s = load_settings(None, {
        "store": {"data_dir": data_dir}, "audit": {"vocabulary": vocabulary},
        "auth": {"users": [{"name": TOKEN[0], "token": TOKEN[1], "role": "reviewer"}]},
        "outbox": {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}]}})
    ctx = review_context(s, make_engine(f"sqlite:///{Path(data_dir) / 'index.sqlite'}"))
    assert ctx.review is not None
    review = ctx.review
    c = api_client(ctx)
    h = {"Authorization": f"Bearer {TOKEN[1]}"}
    out: dict = {"rss_after_imports_mb": round(_status("VmHWM"), 1)}

    def timed(url: str, **params) -> tuple[float, bytes]:
        t0 = time.perf_counter()
        r = c.get(url, params=params, headers=h)
        dt = time.perf_counter() - t0
        assert r.status_code == 200, (url, params, r.text[:200])
        return dt, r.content

    t0 = time.perf_counter()
    listed = c.get("/api/worklist", headers=h, params={"verdict": "any"}).json()
    out["index_and_worklist_seconds"] = round(time.perf_counter() - t0, 3)
    out["items"] = listed["total"]
    item = next(it for it in listed["items"] if it["verdict"] != "consistent")
    n, worst = item["n_slices"], item["key_slices"][0]
    out["worklist_page_kb"] = round(len(json.dumps(listed)) / 1024, 1)
    t0 = time.perf_counter()
    full = c.get(f"/api/items/{item['id']}", headers=h).json()
    out["item_seconds"] = round(time.perf_counter() - t0, 4)
    out["item_kb"] = round(len(json.dumps(full)) / 1024, 1)
    base = f"/api/items/{item['id']}"
    # cold: the first picture reads the series' grid (headers) and the segment over it, and imports the readers
    out["cold_mask_seconds"], _ = timed(f"{base}/mask.png", slice=worst)
    out["cold_suggestion_seconds"], _ = timed(f"{base}/suggestion.png", slice=worst)  # the grid is known now
    other = next((it for it in listed["items"] if it["id"] != item["id"]), None)
    if other is not None:  # another segment of the same SEG: one segment read, nothing else
        out["cold_other_segment_seconds"], _ = timed(f"/api/items/{other['id']}/mask.png", slice=worst)
    ks = sorted({int(k) for k in np.linspace(0, n - 1, min(n, 25))})
    warm = {"image": [], "mask": [], "suggestion": []}
    for k in ks:
        for pic in warm:
            dt, content = timed(f"{base}/{pic}.png", slice=k)
            warm[pic].append(dt)
        assert Image.open(io.BytesIO(content)).size[0] > 0
    out["warm_ms_median"] = {p: round(1000 * float(np.median(v)), 2) for p, v in warm.items()}
    out["warm_ms_max"] = {p: round(1000 * float(np.max(v)), 2) for p, v in warm.items()}
    out["mask_cache_mb"] = round(sum(p.nbytes for p in review.volume_masks._masks.values()) / 2**20, 2)
    out["peak_rss_pictures_mb"] = round(_status("VmHWM"), 1)
    t0 = time.perf_counter()
    r = c.post(f"/api/annotations/{item['annotation_uid']}/decision", headers=h,
               json={"item_id": item["id"], "decision": "label_wrong", "corrected_mask": "suggestion"})
    out["accept_seconds"] = round(time.perf_counter() - t0, 2)
    d = r.json()
    assert r.status_code == 200 and d["writeback_state"] == "done", d
    out["peak_rss_after_accept_mb"] = round(_status("VmHWM"), 1)
    # the corrected SEG's segment is the suggestion, every slice
    from dicom_io.annotations.seg_volume import read_seg_volumes

    grid = review.volume_masks.grid(full).volume
    (m,), _ = read_seg_volumes(d["writeback"]["corrected_path"], grid, None, segment_numbers=[item["segment_number"]])
    out["corrected_equals_suggestion"] = bool(np.array_equal(m.mask, review.volume_masks.suggested_volume(full)))
    out["corrected_seg_mb"] = round(Path(d["writeback"]["corrected_path"]).stat().st_size / 2**20, 1)
    for k in ("cold_mask_seconds", "cold_suggestion_seconds", "cold_other_segment_seconds"):
        if k in out:
            out[k] = round(out[k], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--segments", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "review_volume.json")
    ap.add_argument("--child", nargs=2, metavar=("DATA_DIR", "VOCABULARY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        built = _build(Path(tmp), args.slices, args.size, args.segments)
        r = subprocess.run([sys.executable, __file__, "--child", built["data_dir"], built["vocabulary"]],
                           capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-4000:])
        review = json.loads(r.stdout.strip().splitlines()[-1])
    doc = {
        "command": "python benchmarks/review_volume.py " + shlex.join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "volume": {"slices": args.slices, "rows": args.size, "columns": args.size, "segments": args.segments,
                   "series_mb": built["series_mb"], "seg_mb": built["seg_mb"]},
        "setup": {k: built[k] for k in ("write_study_seconds", "write_results_seconds")},
        "review": review,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
