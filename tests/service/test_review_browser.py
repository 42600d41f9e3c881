"""The review workbench in a real browser, end to end, against real parts.

Debian's chromium (headless, driven through chromedriver by Selenium) works the flagged items of the
demo's audited studies with the keyboard: it logs in, opens the first item from the worklist with
Enter, corrects two labels (``c``) and dismisses one (``d``). Then the test checks the decisions in
the database, the corrected SR and the VERIFIED QA reports arriving at a dcmtk ``storescp`` archive,
and the export's rows; screenshots are saved as artifacts (``$LABELQA_TEST_ARTIFACTS`` or the
test's tmp dir).

storescp listens on every interface, so everything runs in a private network namespace that has
only loopback: the test's main thread joins it (``setns``) before it starts the service, storescp
and the browser, which all inherit it, and leaves it at the end.
"""

from __future__ import annotations

import csv
import ctypes
import io
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
import pytest

from service.demo.peers import can_unshare_net, free_port
from tests.conftest import have, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REVIEWER = ("rita", "Xw4kP9zR2mN7cL5q")

pytestmark = [
    pytest.mark.slow, pytest.mark.browser, pytest.mark.dcmtk,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="chromium / chromedriver not installed"),
    pytest.mark.skipif(not have("storescp"), reason="dcmtk not installed"),
    pytest.mark.skipif(not can_unshare_net(), reason="needs a private network namespace (unshare -n)"),
]

CLONE_NEWNET = 0x40000000


@contextmanager
def inside(ns):
    """Run the calling thread (and every thread and process it starts) in ``ns``'s network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/proc/{ns.pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            pytest.skip(f"setns failed: {os.strerror(ctypes.get_errno())}")
        yield
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(there)


def _browser(download_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
              "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    return webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=opts)


def test_reviewer_works_the_flags_with_the_keyboard(small_demo, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from harness.peers import start_storescp
    from service.demo import send_studies
    from service.demo.peers import NetNamespace
    from service.runtime.jobs import DONE, NO_ANNOTATIONS
    from service.runtime.process import Service
    from service.serve import service_components
    from service.settings import load_settings

    shots = Path(os.environ.get("LABELQA_TEST_ARTIFACTS", tmp_path / "artifacts")) / "review-browser"
    shots.mkdir(parents=True, exist_ok=True)
    ns = NetNamespace()
    try:
        with inside(ns):
            scp = start_storescp(ns, tmp_path / "archive", port=free_port(), ae_title="ARCHIVE")
            api_port = free_port()
            s = load_settings(None, {
                "store": {"data_dir": tmp_path / "labelqa", "stable_after_s": 0.5},
                "listener": {"port": free_port(), "min_free_disk_mb": 0},
                "audit": {"bundle": small_demo.bundle, "vocabulary": small_demo.data.vocabulary, "device": "cpu"},
                "outbox": {"destinations": [{"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1",
                                             "port": scp.port}], "backoff_base_s": 0.2, "poll_interval_s": 0.1},
                "api": {"host": "127.0.0.1", "port": api_port},
                "auth": {"users": [{"name": REVIEWER[0], "token": REVIEWER[1], "role": "reviewer",
                                    "display_name": "Reviewer^Rita"}]},
            })
            svc = Service(s)
            for spec in service_components(s):
                svc.add(spec)
            audit = svc.components[0]
            svc.start()
            driver = None
            try:
                send_studies(small_demo.data.studies_dir, "127.0.0.1", s.listener.port, "LABELQA")
                studies = sorted({r["study_uid"] for r in small_demo.data.manifest})
                wait_for(lambda: all((j := audit.jobs.latest_for_study(u)) and j.state in (DONE, NO_ANNOTATIONS)
                                     for u in studies), 600, "the audits", step=0.5)
                wait_for(lambda: audit.outbox.counts().get("pending", 0) == 0, 120, "the audit results delivered")
                delivered_before = set(scp.received())
                base = f"http://127.0.0.1:{api_port}"
                auth = {"Authorization": f"Bearer {REVIEWER[1]}"}
                flagged = httpx.get(f"{base}/api/worklist", params={"verdict": "flagged"}, headers=auth).json()
                verdict = "flagged" if flagged["total"] >= 3 else "any"  # too few flags: the whole ranked list
                listed = httpx.get(f"{base}/api/worklist", params={"verdict": verdict},
                                   headers=auth).json()["items"][:3]
                assert len(listed) == 3

                driver = _browser(tmp_path / "downloads")
                wait = WebDriverWait(driver, 30)
                driver.get(f"{base}/review?verdict={verdict}")
                wait.until(EC.presence_of_element_located((By.ID, "login-form")))
                driver.save_screenshot(str(shots / "01-login.png"))
                driver.find_element(By.ID, "name").send_keys(REVIEWER[0])
                driver.find_element(By.ID, "token").send_keys(REVIEWER[1] + Keys.ENTER)
                wait.until(EC.presence_of_element_located((By.ID, "worklist")))
                assert "flag precision" in driver.find_element(By.ID, "stats").text
                driver.save_screenshot(str(shots / "02-worklist.png"))
                rows = driver.find_elements(By.CSS_SELECTOR, "tr.row")
                assert [int(r.get_attribute("data-item")) for r in rows[:3]] == [it["id"] for it in listed]
                body = driver.find_element(By.TAG_NAME, "body")
                body.send_keys("j")
                body.send_keys("k")
                body.send_keys(Keys.ENTER)  # opens the highest-priority item
                for n, (it, key) in enumerate(zip(listed, ("c", "c", "d"), strict=True), start=1):
                    want = str(it["id"])
                    wait.until(lambda d, want=want: d.find_element(By.ID, "item").get_attribute("data-item") == want)
                    wait.until(lambda d: d.execute_script(
                        "var i = document.getElementById('image'); return i.complete && i.naturalWidth > 0;"))
                    if driver.find_elements(By.ID, "toggle-heatmap"):
                        driver.find_element(By.TAG_NAME, "body").send_keys("h")  # heatmap on
                        assert "hidden" not in driver.find_element(By.ID, "heatmap").get_attribute("class")
                    driver.save_screenshot(str(shots / f"{2 + n:02d}-item-{n}.png"))
                    if key == "c":
                        options = driver.find_elements(By.CSS_SELECTOR, "input[name=corrected_label]")
                        keyno = next(o.get_attribute("data-key") for o in options if o.is_enabled())
                        driver.find_element(By.TAG_NAME, "body").send_keys(keyno)
                    driver.find_element(By.TAG_NAME, "body").send_keys(key)
                    wait.until(EC.presence_of_element_located((By.ID, "saved")))
                driver.save_screenshot(str(shots / "06-after.png"))
                driver.get(f"{base}/review?verdict={verdict}")
                wait.until(EC.presence_of_element_located((By.ID, "worklist")))
                assert "3 reviewed" in driver.find_element(By.ID, "stats").text
                driver.save_screenshot(str(shots / "07-worklist-after.png"))

                # the decisions, in the database
                review = audit.review
                decided = {x["annotation_uid"]: x for x in review.store.export_rows()}
                assert len(decided) == 3
                for it, want in zip(listed, ("label_wrong", "label_wrong", "label_right"), strict=True):
                    row = decided[it["annotation_uid"]]
                    assert row["decision"] == want and row["reviewer"] == REVIEWER[0], row
                    assert row["writeback_state"] == "done"
                    if want == "label_wrong":
                        assert row["corrected_label"] and row["corrected_label"] != it["given_label"]
                # ... arriving at the archive: two corrected SRs and VERIFIED QA reports
                wait_for(lambda: audit.outbox.counts().get("pending", 0) == 0, 120, "the write-backs delivered")
                got = [pydicom.dcmread(p, stop_before_pixels=True) for p in set(scp.received()) - delivered_before]
                corrected = [d for d in got if int(d.get("SeriesNumber", 0)) == 9907]
                reports = [d for d in got if int(d.get("SeriesNumber", 0)) == 9901]
                assert len(corrected) == 2, [d.SeriesNumber for d in got]
                for d in corrected:
                    assert d.VerificationFlag == "VERIFIED" and "PredecessorDocumentsSequence" in d
                assert len(reports) >= 2 and all(d.VerificationFlag == "VERIFIED" for d in reports)
                assert {str(d.VerifyingObserverSequence[0].VerifyingObserverName) for d in reports} == {"Reviewer^Rita"}
                # ... and in the export
                r = httpx.get(f"{base}/api/export.csv", headers=auth)
                rows_out = list(csv.DictReader(io.StringIO(r.text)))
                assert sorted(x["annotation_uid"] for x in rows_out) == sorted(it["annotation_uid"] for it in listed)
                assert all(x["reviewer"] == REVIEWER[0] and x["decided_at"] for x in rows_out)
                (shots / "export.csv").write_text(r.text)
            finally:
                if driver is not None:
                    driver.quit()
                svc.stop()
                scp.stop()
    finally:
        ns.stop()
    assert sorted(p.name for p in shots.glob("*.png"))[:2] == ["01-login.png", "02-worklist.png"]
    if not os.environ.get("LABELQA_TEST_ARTIFACTS"):
        shutil.copytree(shots, tmp_path / "kept-screenshots", dirs_exist_ok=True)
