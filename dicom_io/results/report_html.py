"""A QA officer's HTML rendering of a labelqa QA report SR, heatmaps and mask overlays inline.

Our own summary (counts, cohort findings, a table ranked by re-annotation priority with each
heatmap Secondary Capture inline as PNG; audited masks in a second table with their verdict, kind,
Dice/HD95 to the consensus, regions and the mask overlay SC inline), followed by dcmtk
``dsr2html``'s full rendering of the SR when dcmtk is installed.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom

from dicom_io import codes
from dicom_io.results.sr import read_report

__all__ = ["find_instances", "dsr2html", "render_html"]


def _png_data_uri(ds: pydicom.Dataset) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(ds.pixel_array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def find_instances(uids: set[str], folders: Iterable[Path]) -> dict[str, Path]:
    """Files among ``folders`` (not recursive) whose SOP Instance UID is in ``uids``."""
    found: dict[str, Path] = {}
    for folder in folders:
        for p in sorted(Path(folder).glob("*")):
            if not p.is_file() or len(found) == len(uids):
                continue
            try:
                uid = str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            except Exception:  # noqa: BLE001 - not DICOM: skip
                continue
            if uid in uids:
                found[uid] = p
    return found


def dsr2html(sr_path: Path) -> str | None:
    """dcmtk's HTML rendering of the SR (the body only), or None when dsr2html is absent or fails."""
    exe = shutil.which("dsr2html")
    if exe is None:
        return None
    r = subprocess.run([exe, str(sr_path)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return None
    out = r.stdout
    lo, hi = out.lower().find("<body"), out.lower().rfind("</body>")
    if lo >= 0 and hi > lo:
        out = out[out.index(">", lo) + 1 : hi]
    return out


def _fmt(x: float | None, nd: int = 3) -> str:
    return "" if x is None else (f"{x:.{nd}f}" if x != int(x) else str(int(x)))


def _mask_table(masks: list[dict], files: dict[str, Path]) -> list[str]:
    """The audited-masks table: highest priority first, the overlay SC inline."""
    e = html.escape
    m_dice, m_hd, m_agree, m_pri = (codes.DICE_TO_CONSENSUS.meaning, codes.HD95_TO_CONSENSUS.meaning,
                                    codes.MASK_AGREEMENT.meaning, codes.REANNOTATION_PRIORITY.meaning)
    parts = [
        "<h2>Audited segmentation masks (highest re-annotation priority first)</h2>"
        "<p>Overlay: green = given mask, magenta = model consensus, red = missing from the given mask, "
        "blue = given but not in the consensus; numbered boxes are the regions.</p>"
        "<table><tr><th>#</th><th>verdict</th><th>class</th><th>kind</th><th>Dice to consensus</th>"
        "<th>HD95 (mm)</th><th>agreement</th><th>priority</th><th>regions</th><th>image / segmentation</th>"
        "<th>overlay</th></tr>"
    ]
    for it in sorted(masks, key=lambda it: -it["measurements"].get(m_pri, 0.0)):
        m = it["measurements"]
        pic = ""
        if it["overlay_uid"] in files:
            uri = _png_data_uri(pydicom.dcmread(files[it["overlay_uid"]]))
            pic = f"<img alt='mask overlay' width='320' src='{uri}'>"
        elif it["overlay_uid"]:
            pic = f"(overlay {e(it['overlay_uid'])} not found)"
        where = f"image <code>{e(str(it['source_image_uid']))}</code>"
        if it.get("frame"):
            where += f" frame {it['frame']}"
        where += f"<br>segmentation <code>{e(str(it['annotation_uid']))}</code>"
        if it["segment_number"]:
            where += f" segment {it['segment_number']}"
        if it.get("suggestion_uid"):
            where += f"<br>suggested correction <code>{e(str(it['suggestion_uid']))}</code>"
        cls = it["class_label"].meaning if it["class_label"] else ""
        regions = "<br>".join(e(r) for r in it["regions"])
        parts.append(
            f"<tr class='{e(str(it['verdict']))}'><td>{e(it['tracking_id'])}</td><td>{e(str(it['verdict_code']))}</td>"
            f"<td>{e(cls)}</td><td>{e(str(it['kind'] or '').replace('_', ' '))}</td><td>{_fmt(m.get(m_dice))}</td>"
            f"<td>{_fmt(m.get(m_hd), 1)}</td><td>{_fmt(m.get(m_agree))}</td><td>{_fmt(m.get(m_pri))}</td>"
            f"<td>{regions}</td><td>{where}</td><td>{pic}</td></tr>"
        )
    parts.append("</table>")
    return parts


def render_html(sr_path: Path, heatmap_dirs: Iterable[Path] = ()) -> str:
    """The HTML report of the SR at ``sr_path``; heatmaps are looked up next to it and in ``heatmap_dirs``."""
    ds = pydicom.dcmread(sr_path)
    report = read_report(ds)
    want = {it["heatmap_uid"] for it in report["items"] if it["heatmap_uid"]}
    want |= {it["overlay_uid"] for it in report.get("masks", []) if it["overlay_uid"]}
    heat_files = find_instances(want, [Path(sr_path).parent, *heatmap_dirs]) if want else {}
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(report['title'])}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top}"
        ".suspected_label_error{background:#fdd}.suspected_mask_error{background:#fdd}.hard_case{background:#ffd}"
        ".consistent{background:#efe}"
        ".warn{color:#a00;font-weight:bold}</style></head><body>",
        f"<h1>{e(report['title'])}</h1>",
        "<p class='warn'>NOT FOR DIAGNOSIS - annotation quality assurance only.</p>",
        f"<p>Study Instance UID: <code>{e(str(ds.StudyInstanceUID))}</code><br>"
        f"Report SOP Instance UID: <code>{e(str(ds.SOPInstanceUID))}</code></p>",
        "<h2>Summary</h2><ul>",
    ]
    for name, value in report["summary"].items():
        parts.append(f"<li>{e(name)}: {_fmt(value)}</li>")
    parts.append("</ul>")
    if report.get("cannot_judge"):
        parts.append("<h2>Masks the models cannot judge</h2><ul>")
        parts += [f"<li class='warn'>{e(t)}</li>" for t in report["cannot_judge"]]
        parts.append("</ul>")
    if report["cohort_findings"]:
        parts.append("<h2>Systematic disagreement (cohort findings)</h2><ul>")
        parts += [f"<li>{e(t)}</li>" for t in report["cohort_findings"]]
        parts.append("</ul>")
    if report["items"] or not report.get("masks"):  # a mask-only report shows no empty label table
        parts += _label_table(report["items"], heat_files)
    if report.get("masks"):
        parts += _mask_table(report["masks"], heat_files)
    full = dsr2html(Path(sr_path))
    if full is not None:
        parts.append("<h2>Full structured report (dcmtk dsr2html)</h2><details open><summary>SR content</summary>")
        parts.append(full)
        parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _label_table(items: list[dict[str, Any]], heat_files: dict[str, Path]) -> list[str]:
    """The audited class labels, highest re-annotation priority first, with their heatmaps."""
    e = html.escape
    parts = [
        "<h2>Audited annotations (highest re-annotation priority first)</h2><table><tr><th>#</th><th>verdict</th>"
        "<th>given label</th><th>model consensus</th><th>saliency agreement</th><th>p(given)</th>"
        "<th>priority</th><th>members disagreeing</th><th>image / annotation</th><th>heatmap</th></tr>"
    ]
    m_agree, m_p, m_pri = (codes.SALIENCY_AGREEMENT.meaning, codes.P_GIVEN_LABEL.meaning,
                           codes.REANNOTATION_PRIORITY.meaning)
    ranked = sorted(items, key=lambda it: -it["measurements"].get(m_pri, 0.0))
    for it in ranked:
        m = it["measurements"]
        heat = ""
        if it["heatmap_uid"] in heat_files:
            uri = _png_data_uri(pydicom.dcmread(heat_files[it["heatmap_uid"]]))
            heat = f"<img alt='heatmap' width='320' src='{uri}'>"
        elif it["heatmap_uid"]:
            heat = f"(heatmap {e(it['heatmap_uid'])} not found)"
        n_dis = _fmt(m.get(codes.N_MEMBERS_DISAGREEING.meaning))
        n_all = _fmt(m.get(codes.N_MEMBERS.meaning))
        where = f"image <code>{e(str(it['source_image_uid']))}</code>"
        if it.get("frame"):
            where += f" frame {it['frame']}"
        where += f"<br>annotation <code>{e(str(it['annotation_uid']))}</code>"
        if it["segment_number"]:
            where += f" segment {it['segment_number']}"
        given = it["given_label"].meaning if it["given_label"] else ""
        cons = it["consensus_label"].meaning if it["consensus_label"] else ""
        parts.append(
            f"<tr class='{e(str(it['verdict']))}'><td>{e(it['tracking_id'])}</td><td>{e(str(it['verdict_code']))}</td>"
            f"<td>{e(given)}</td><td>{e(cons)}</td><td>{_fmt(m.get(m_agree))}</td><td>{_fmt(m.get(m_p))}</td>"
            f"<td>{_fmt(m.get(m_pri))}</td><td>{n_dis} / {n_all}</td><td>{where}</td><td>{heat}</td></tr>"
        )
    parts.append("</table>")
    return parts
