"""`labelqa demo`: the whole loop on embedded defaults, with nothing from outside the project.

1. Make a small annotated data set: synthetic images whose class is a visible shape in a known
   place (``models.synthetic``), turned into DICOM studies with TID 1500 SR labels by
   ``dicom_io.dicomize``; a fraction of the labels is deliberately flipped (recorded in its manifest).
2. Train a small model bundle on separate synthetic images with the same kind of label errors
   (``models.bundle.train_bundle``, 3-fold crossfit so the score cut is learned on out-of-fold
   predictions); cached under the data dir, keyed by the settings, so the next run starts at once.
3. Start the service in this process (listener, store, audit workers, outbox, HTTP API) with a
   local DICOM archive as the results' destination, or a local Orthanc (``--orthanc``) that
   auto-routes the studies to labelqa through ``deploy/orthanc/labelqa-route.lua``; with
   ``--viewer``, OHIF over that Orthanc's DICOMweb (``service.demo.viewer``) shows a flagged study.
4. Send the studies with real C-STORE (dcmtk ``storescu`` with TCP_NODELAY, else pynetdicom),
   wait for the audits and their delivery, and report each annotation: given vs consensus label,
   verdict, agreement, and whether its label was planted wrong.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from dicom_io.db import make_engine
from dicom_io.results.series import SR_SERIES_NUMBER, is_own_output
from dicom_io.scu import file_info, store_files
from models.verdict import FLAGGED
from service.demo.common import REPO, DemoConfig, DemoData, DemoError, DemoReport, demo_task
from service.demo.peers import HostNetwork, LocalArchive, Orthanc, OrthancError, free_port
from service.demo.viewer import ViewerError, ViewerServer, study_url
from service.migrations import upgrade
from service.runtime.jobs import DONE, FAILED, NO_ANNOTATIONS, AuditJobRow
from service.runtime.process import Service
from service.settings import Destination, load_settings

if TYPE_CHECKING:  # annotation-only types
    from service.runtime.executor import Executor
    from service.runtime.jobs import JobStore

__all__ = ["train_demo_bundle", "dicom_files", "send_studies", "orthanc_routing_config", "demo_orthanc", "run_demo",
           "render_text", "report_json", "quiet_logging"]

log = logging.getLogger("labelqa.demo")


def train_demo_bundle(cfg: DemoConfig, data: DemoData, work: Path,
                      echo: Callable[[str], None] = print) -> tuple[Path, bool]:
    """The demo's bundle, trained once per settings (cached under the data dir); (path, was_cached)."""
    bundle_dir = work / "bundles" / cfg.bundle_key()
    if (bundle_dir / "configs" / "metadata.json").is_file():
        return bundle_dir, True
    tmp = bundle_dir.with_name(bundle_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    demo_task(cfg.task, cfg.dims).train_bundle(cfg, data, tmp, echo)
    tmp.replace(bundle_dir)
    return bundle_dir, False


# -- sending ---------------------------------------------------------------------------------------
def dicom_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm") if p.is_file())


class Sent(TypedDict):
    """What :func:`send_studies` did: the client used, the files sent, the seconds it took."""

    method: str
    files: int
    seconds: float


def send_studies(root: Path, host: str, port: int, called_ae: str, calling_ae: str = "LABELQADEMO",
                 sender: str = "auto") -> Sent:
    """C-STORE every DICOM file under ``root``: dcmtk storescu (TCP_NODELAY) when installed, else pynetdicom."""
    files = dicom_files(root)
    if not files:
        raise DemoError(f"no DICOM files under {root}")
    t0 = time.perf_counter()
    use_dcmtk = sender == "storescu" or (sender == "auto" and shutil.which("storescu"))
    if use_dcmtk:
        env = dict(os.environ, TCP_NODELAY="1")
        cmd = ["storescu", "-aet", calling_ae, "-aec", called_ae, "-R", "+sd", "+r", "+sp", "*.dcm", host, str(port),
               str(root)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            raise DemoError(f"storescu failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return {"method": "dcmtk storescu", "files": len(files), "seconds": time.perf_counter() - t0}

    infos = [file_info(p) for p in files]
    outcomes = store_files(infos, host=host, port=port, called_ae=called_ae, calling_ae=calling_ae)
    failed = [o for o in outcomes if not o.delivered]
    if failed:
        raise DemoError(f"{len(failed)} of {len(files)} files not stored: {failed[0]}")
    return {"method": "pynetdicom", "files": len(files), "seconds": time.perf_counter() - t0}


# -- a local Orthanc -------------------------------------------------------------------------------
def orthanc_routing_config(work: Path) -> dict[str, object]:
    """``deploy/orthanc/orthanc.json`` (labelqa's routing example) for a throw-away Orthanc under ``work``.

    Orthanc listens on all interfaces; this configuration refuses remote HTTP and only accepts DICOM
    from the declared peers (labelqa and the demo sender on 127.0.0.1). Storage, ports, AE title,
    peers and stable age are set by :class:`service.demo.peers.Orthanc`.
    """
    base = json.loads((REPO / "deploy" / "orthanc" / "orthanc.json").read_text())
    for key in ("StorageDirectory", "IndexDirectory", "DicomAet", "DicomPort", "HttpPort", "DicomModalities",
                "StableAge"):
        base.pop(key, None)
    work.mkdir(parents=True, exist_ok=True)
    lua = work / "labelqa-route.lua"
    shutil.copy(REPO / "deploy" / "orthanc" / "labelqa-route.lua", lua)
    plugins = [p for p in ("/usr/share/orthanc/plugins",) if Path(p).is_dir()]
    base.update({"Name": "labelqa demo", "Plugins": plugins, "LuaScripts": [str(lua)],
                 "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True})
    return base


def demo_orthanc(work: Path, *, http_port: int, dicom_port: int, labelqa_port: int, labelqa_ae: str = "LABELQA",
                 sender_ae: str = "LABELQADEMO", stable_age_s: int = 2, dicomweb: bool = False) -> Orthanc:
    """The demo's Orthanc (not started), on this machine's loopback, routing annotated studies to labelqa
    (``dicomweb``: with its DICOMweb plugin at ``/dicom-web``, for a web viewer)."""
    modalities = {
        "labelqa": {"AET": labelqa_ae, "Host": "127.0.0.1", "Port": labelqa_port, "AllowEcho": True,
                    "AllowStore": True},
        "sender": {"AET": sender_ae, "Host": "127.0.0.1", "Port": 104, "AllowEcho": True, "AllowStore": True},
    }
    config = orthanc_routing_config(work)
    if dicomweb:
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    return Orthanc(HostNetwork(), work, dicom_port=dicom_port, http_port=http_port, modalities=modalities,
                   dicomweb=dicomweb, stable_age_s=stable_age_s, config=config)


# -- the run ---------------------------------------------------------------------------------------
def run_demo(cfg: DemoConfig, echo=print) -> DemoReport:
    """Run the demo end to end; returns the report (rows per annotation, summary, outputs, timings)."""
    from service.serve import AuditService, service_components  # highdicom: loaded only when the demo runs

    t_start = time.perf_counter()
    work = Path(cfg.data_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report = DemoReport(settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()})

    task = demo_task(cfg.task, cfg.dims)
    t0 = time.perf_counter()
    data = task.make_data(cfg, work)
    report.timings_s["make_data"] = time.perf_counter() - t0
    echo(task.describe_data(cfg, data))

    t0 = time.perf_counter()
    bundle, cached = train_demo_bundle(cfg, data, work, echo)
    report.timings_s["train_bundle"] = time.perf_counter() - t0
    echo(f"model bundle {'(cached) ' if cached else ''}{bundle}")

    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh service state per run: every study is audited again
    lq_port, api_port = free_port(), free_port()
    archive: LocalArchive | None = None
    orthanc: Orthanc | None = None
    if cfg.orthanc:
        orthanc = demo_orthanc(run_dir / "orthanc", http_port=free_port(), dicom_port=free_port(),
                               labelqa_port=lq_port, stable_age_s=1, dicomweb=cfg.viewer)
        dest = Destination(name="orthanc", kind="dicom", ae_title=orthanc.aet, host="127.0.0.1",
                           port=orthanc.dicom_port)
    else:
        archive = LocalArchive(run_dir / "archive", free_port())
        dest = Destination(name="archive", kind="dicom", ae_title=archive.ae_title, host="127.0.0.1",
                           port=archive.port)
    if cfg.executor not in ("inprocess", "ray"):
        raise DemoError(f"--executor must be inprocess or ray, not {cfg.executor!r}")
    study_uids = sorted({r["study_uid"] for r in data.manifest})
    if cfg.database_url:
        _forget_demo_jobs(cfg.database_url, study_uids)
    # with --keep-running a person reviews the flags in the browser: login on, a fresh reviewer token
    reviewer_token = secrets.token_urlsafe(18) if cfg.keep_running else None
    settings = load_settings(None, {
        "store": {"data_dir": run_dir / "labelqa", "stable_after_s": 1.0, "database_url": cfg.database_url},
        "executor": {"kind": cfg.executor, "address": cfg.ray_address},
        "listener": {"host": "127.0.0.1", "port": lq_port, "min_free_disk_mb": 0},
        "audit": {"bundle": bundle, "vocabulary": data.vocabulary, "device": cfg.device},
        "outbox": {"destinations": [dest.model_dump()], "backoff_base_s": 0.5, "poll_interval_s": 0.2},
        "api": {"host": "127.0.0.1", "port": api_port},
        **({"auth": {"users": [{"name": "reviewer", "role": "reviewer", "token": reviewer_token,
                                "display_name": "Demo^Reviewer"},
                               {"name": "admin", "role": "admin", "token": secrets.token_urlsafe(18)}]}}
           if reviewer_token else {}),
    })
    svc = Service(settings)
    for spec in service_components(settings):
        svc.add(spec)
    audit_service = cast(AuditService, svc.components[0])  # service_components' only component
    viewer = None
    if cfg.viewer and orthanc is None:
        raise DemoError("--viewer shows the results in OHIF over Orthanc's DICOMweb: add --orthanc")
    try:
        if archive is not None:
            archive.start()
        if orthanc is not None:
            try:
                orthanc.start()
            except OrthancError as e:
                raise DemoError(str(e)) from None
        try:
            svc.start()
        except ValueError as e:  # e.g. service.runtime.executor_ray.RayUnavailable: the cluster cannot be used
            raise DemoError(str(e)) from None
        echo(f"labelqa is listening on 127.0.0.1:{lq_port} (AE LABELQA); API http://127.0.0.1:{api_port}/docs")
        t0 = time.perf_counter()
        if orthanc is not None:
            sent = send_studies(data.studies_dir, "127.0.0.1", orthanc.dicom_port, orthanc.aet, sender=cfg.sender)
            echo(f"sent {sent['files']} files to Orthanc with {sent['method']} in {sent['seconds']:.1f} s; "
                 "Orthanc routes annotated studies to labelqa")
        else:
            sent = send_studies(data.studies_dir, "127.0.0.1", lq_port, "LABELQA", sender=cfg.sender)
            echo(f"sent {sent['files']} files to labelqa with {sent['method']} in {sent['seconds']:.1f} s")
        report.timings_s["send"] = sent["seconds"]
        report.outputs["sent"] = sent
        jobs: JobStore = audit_service.jobs
        _wait_for(lambda: _all_audited(jobs, study_uids, (DONE, NO_ANNOTATIONS, FAILED)), cfg.timeout_s,
                  "audits", echo)
        report.timings_s["audit"] = time.perf_counter() - t0
        outbox = audit_service.outbox
        if outbox is not None:
            _wait_for(lambda: outbox.counts().get("pending", 0) == 0, cfg.timeout_s, "result delivery", echo)
        report.timings_s["until_delivered"] = time.perf_counter() - t0
        task.collect(report, jobs, data, study_uids)
        _html_reports(report, run_dir)
        if orthanc is not None:
            report.outputs["orthanc"] = _orthanc_outputs(orthanc, report)
        elif archive is not None:
            report.outputs["archive"] = {"ae_title": archive.ae_title, "port": archive.port,
                                         "dir": str(archive.root / "studies"),
                                         "instances": len(archive.store.instances())}
        report.outputs["results_dir"] = str(Path(settings.store.data_dir) / "results")
        report.outputs["api"] = f"http://127.0.0.1:{api_port}"
        report.outputs["job_counts"] = jobs.counts()
        report.executor = _executor_report(audit_service.pipeline.executor, jobs, study_uids)
        if outbox is not None:
            report.outputs["outbox"] = outbox.counts()
        report.timings_s["total"] = time.perf_counter() - t_start
        report.outputs["worklist"] = f"http://127.0.0.1:{api_port}/review"
        if cfg.viewer and orthanc is not None:
            try:
                viewer = ViewerServer(orthanc.url).start()
            except ViewerError as e:
                raise DemoError(str(e)) from None
            flagged = [r["study_uid"] for r in report.rows if r["verdict"] in FLAGGED] or [
                r["study_uid"] for r in report.rows]
            report.outputs["viewer"] = study_url(viewer.url, flagged[0]) if flagged else viewer.url
        if cfg.keep_running or viewer is not None:
            echo(_render(report))
            echo(f"worklist: http://127.0.0.1:{api_port}/review")
            if viewer is not None:
                echo(f"OHIF (a flagged study): {report.outputs['viewer']}")
                echo(f"OHIF study list: {viewer.url}/")
            if reviewer_token:
                echo(f"reviewer token: {reviewer_token}")
                echo("(log in as 'reviewer' with that token; the API takes it as 'Authorization: Bearer <token>')")
            echo("the service keeps running; press Ctrl-C to stop")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        if viewer is not None:
            viewer.stop()
        svc.stop()
        if orthanc is not None:
            orthanc.stop()
        if archive is not None:
            archive.stop()
    return report


def _forget_demo_jobs(database_url: str, study_uids: list[str]) -> None:
    """Delete the audit jobs of the demo's own studies (same UIDs every run) from an existing database,
    so this run audits them again; nothing else in that database is touched."""
    from sqlalchemy import delete
    from sqlalchemy.exc import SQLAlchemyError

    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with engine.begin() as c:
            c.execute(delete(AuditJobRow).where(AuditJobRow.study_uid.in_(study_uids)))
    except SQLAlchemyError as e:
        raise DemoError(f"cannot use the database {database_url.split('@')[-1]}: {e}") from None
    finally:
        engine.dispose()


def _executor_report(executor: Executor, jobs: JobStore, study_uids: list[str]) -> dict[str, object]:
    """Which executor ran the audits, on how many nodes, and how many audits each node ran."""
    import socket

    status = executor.status()
    kind = "ray" if status.get("kind") == "ray" else "inprocess"
    by_node: dict[str, int] = {}
    for uid in study_uids:
        job = jobs.latest_for_study(uid)
        if job is None or job.state != "done" or not job.result:
            continue
        node = (job.result.get("worker") or {}).get("node_id") or socket.gethostname()
        by_node[node] = by_node.get(node, 0) + 1
    n = status.get("nodes")
    nodes = int(n) if kind == "ray" and isinstance(n, int | float | str) and n else 1
    return {"kind": kind, "nodes": nodes, "jobs_by_node": by_node, "address": status.get("address")}


def _all_audited(jobs: JobStore, study_uids: list[str], final: tuple[str, ...]) -> bool:
    for uid in study_uids:
        j = jobs.latest_for_study(uid)
        if j is None or j.state not in final:
            return False
    return True


def _wait_for(cond, timeout_s: float, what: str, echo) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def _html_reports(report: DemoReport, run_dir: Path) -> None:
    """One HTML page per audited study (``report_html``) and an index with the demo table."""
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    pages: dict[str, str] = {}
    render_html: Callable[[Path, Iterable[Path]], str] | None
    try:
        from dicom_io.results.report_html import render_html  # guarded: without it the report stays text
    except ImportError:
        render_html = None
    import pydicom

    srs = [o for o in report.outputs.get("result_files", []) if o.get("modality") == "SR"
           and pydicom.dcmread(o["path"], stop_before_pixels=True).get("SeriesNumber") == SR_SERIES_NUMBER]
    for o in srs:
        if render_html is None:
            break
        p = Path(o["path"])
        study = p.parent.name
        try:
            html = render_html(p, [p.parent])
        except Exception as e:  # noqa: BLE001 - the index still lists the study
            log.warning("cannot render %s: %s", p, e)
            continue
        page = out / f"{study}.html"
        page.write_text(html, encoding="utf-8")
        pages[study] = page.name
    from html import escape

    lines = ["<!doctype html><meta charset='utf-8'><title>labelqa demo</title>",
             "<h1>labelqa demo: annotation audit</h1>", f"<p>{escape(_summary_line(report))}</p>",
             "<table border=1 cellpadding=4><tr><th>study</th><th>given</th><th>consensus</th><th>verdict</th>"
             "<th>agreement</th><th>planted error</th></tr>"]
    for r in report.rows:
        study = r["study_uid"]
        link = f"<a href='{escape(pages[study])}'>{escape(study[-12:])}</a>" if study in pages else escape(study[-12:])
        agr = "" if r.get("agreement") is None else f"{r['agreement']:.2f}"
        lines.append(f"<tr><td>{link}</td><td>{escape(str(r.get('given_label')))}</td>"
                     f"<td>{escape(str(r.get('consensus_label') or r.get('kind') or ''))}</td>"
                     f"<td>{escape(r['verdict'])}</td>"
                     f"<td>{agr}</td><td>{'yes' if r['planted_error'] else ''}</td></tr>")
    lines.append("</table>")
    index = out / "index.html"
    index.write_text("\n".join(lines), encoding="utf-8")
    report.outputs["html_report"] = str(index)


def _orthanc_outputs(orthanc: Orthanc, report: DemoReport) -> dict[str, Any]:
    n_sr = n_sc = n_kos = 0
    for uid in {r["study_uid"] for r in report.rows}:
        for s in orthanc.study_series(uid):
            tags = s.get("MainDicomTags", {})
            if not is_own_output(tags.get("Manufacturer"), tags.get("SeriesNumber")):
                continue  # not one of labelqa's result series
            n = len(s.get("Instances", []))
            mod = tags.get("Modality")
            n_sr += n if mod == "SR" else 0
            n_kos += n if mod == "KO" else 0
            n_sc += n if mod not in ("SR", "KO") else 0
    return {"url": f"{orthanc.url}/app/explorer.html", "sr": n_sr, "sc": n_sc, "kos": n_kos}


def _summary_line(report: DemoReport) -> str:
    s = report.summary
    p = "n/a" if s.get("precision") is None else f"{s['precision']:.2f}"
    r = "n/a" if s.get("recall") is None else f"{s['recall']:.2f}"
    task = demo_task(str(s.get("task") or report.settings.get("task") or "labels"),
                     int(report.settings.get("dims") or 2))
    what, errors = task.noun, task.errors
    return (f"{s.get('annotations', 0)} {what} in {s.get('studies', 0)} studies; "
            f"{s.get('planted_errors', 0)} planted {errors}; flagged {s.get('flagged_and_planted', 0)} of them, "
            f"{s.get('flagged_not_planted', 0)} false alarms (precision {p}, recall {r}); verdicts {s.get('verdicts')}")


def _render(report: DemoReport) -> str:
    """The table and where things went, as text."""
    lines = demo_task(str(report.settings.get("task") or "labels"),
                      int(report.settings.get("dims") or 2)).render_rows(report)
    lines += ["", _summary_line(report)]
    o = report.outputs
    files = o.get("result_files", [])
    kinds: dict[str, int] = {}
    for f in files:
        kinds[f.get("modality", "?")] = kinds.get(f.get("modality", "?"), 0) + 1
    lines.append(f"result objects written: {kinds} under {o.get('results_dir')}")
    if "archive" in o:
        a = o["archive"]
        lines.append(f"delivered by C-STORE to the local archive {a['ae_title']}@127.0.0.1:{a['port']} "
                     f"({a['instances']} instances in {a['dir']})")
    if "orthanc" in o:
        a = o["orthanc"]
        lines.append(f"in Orthanc: {a['sr']} SR, {a['sc']} heatmap SC, {a['kos']} KOS; see {a['url']}"
                     + ("" if report.settings.get("keep_running") or report.settings.get("viewer")
                        else " (run with --keep-running to browse it)"))
    if "html_report" in o:
        lines.append(f"HTML report: {o['html_report']}")
    ex = report.executor
    if ex.get("kind") == "ray":
        lines.append(f"executor: Ray at {ex.get('address') or 'a local instance'}, {ex.get('nodes')} node(s); "
                     f"audits per node: {ex.get('jobs_by_node')}")
    t = report.timings_s
    lines.append("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    return "\n".join(lines)


def render_text(report: DemoReport) -> str:
    return _render(report)


def report_json(report: DemoReport) -> str:
    return json.dumps(asdict(report), indent=2, default=str)


def quiet_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

