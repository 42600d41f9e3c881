"""labelqa's results in a real viewer: OHIF (npm ``@ohif/app``, its prebuilt dist) over a real Orthanc's
DICOMweb, in Debian's Chromium driven by Selenium.

Two flagged studies (``harness.viewer_studies``: an MR image with a TID 1500 SR label the
models disagree with, and one with a SEG mask the models place elsewhere, each written with its
results by ``write_results``) go into an Orthanc with the DICOMweb plugin; ``service.demo.viewer.ViewerServer``
serves OHIF and proxies DICOMweb to it. Orthanc listens on every interface, so everything runs in a
private network namespace with only loopback (the test thread joins it; the server thread, Orthanc and
the browser inherit it). In the browser: the drawn SR shows its region on the source image, the QA
report's text view shows the given and consensus labels, the suggestion SEG overlays the image; no
error page, no uncaught error in the console. Screenshots and the console log are saved as artifacts
(``$LABELQA_TEST_ARTIFACTS/ohif-viewer`` or the test's tmp dir). Every wait waits for a DOM element.

OHIF comes from ``python -m service.demo.viewer install`` (``deploy/bootstrap.sh``); without it, the test
is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest

from service.demo.peers import ORTHANC_PLUGINS, can_unshare_net, orthanc_binary
from service.demo.viewer import ohif_dist

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.slow, pytest.mark.browser,
    pytest.mark.skipif(ohif_dist() is None, reason="OHIF not installed (python -m service.demo.viewer install)"),
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="chromium / chromedriver not installed"),
    pytest.mark.skipif(orthanc_binary() is None or not (ORTHANC_PLUGINS / "libOrthancDicomWeb.so").exists(),
                       reason="Orthanc with its DICOMweb plugin not installed"),
    pytest.mark.skipif(not can_unshare_net(), reason="needs a private network namespace (unshare -n)"),
]

HAS_ANNOTATIONS_JS = """
const all = window.cornerstoneTools ? window.cornerstoneTools.annotation.state.getAllAnnotations() : [];
const have = new Set(all.map(a => a.annotationUID));
return arguments[0].every(uid => have.has(uid));
"""
RENDER_JS = "window.cornerstone.getRenderingEngines().forEach(e => e.render());"
RED_PIXELS_JS = """
const canvases = document.querySelectorAll('[data-cy="viewport-pane"] canvas');
let n = 0;
for (const c of canvases) {
  const ctx = c.getContext('2d');
  if (!ctx || !c.width || !c.height) continue;
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4) if (d[i] > d[i + 1] + 60 && d[i] > d[i + 2] + 60) n++;
}
return n;
"""


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
              "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=opts)


def _drawn_uids(study) -> list[str]:
    """The tracking UIDs of the drawn SR's groups (OHIF names each drawn annotation by it)."""
    path = next(p for p in study.files if p.name.startswith("ROI_"))
    ds = pydicom.dcmread(path)
    return [it.UID for c in ds.ContentSequence if c.ValueType == "CONTAINER" for g in c.get("ContentSequence") or []
            for it in g.get("ContentSequence") or [] if it.ValueType == "UIDREF"
            and it.ConceptNameCodeSequence[0].CodeValue == "112040"]


def test_ohif_shows_the_flags_the_report_and_the_suggested_mask(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from harness.viewer_studies import (
        CONSENSUS_LABEL,
        GIVEN_LABEL,
        MASK_CLASS,
        flagged_label_study,
        flagged_mask_study,
    )
    from service.demo.peers import NetNamespace, free_port, start_orthanc
    from service.demo.viewer import ViewerServer, study_url

    shots = Path(os.environ.get("LABELQA_TEST_ARTIFACTS", tmp_path / "artifacts")) / "ohif-viewer"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    label = flagged_label_study(tmp_path / "label")
    mask = flagged_mask_study(tmp_path / "mask")
    assert label.descriptions["report"] == "labelqa QA: 1 suspected error"
    ns = NetNamespace()
    console: list[dict] = []
    try:
        with ns.joined():
            orthanc = start_orthanc(ns, tmp_path / "orthanc", dicom_port=free_port(), http_port=free_port())
            viewer = None
            driver = None
            try:
                for study in (label, mask):
                    for f in study.files:
                        ns.http("POST", orthanc.url + "/instances", f.read_bytes(), content_type="application/dicom")
                viewer = ViewerServer(orthanc.url).start()
                driver = _browser()
                wait = WebDriverWait(driver, 60)

                def open_series(number: int):
                    el = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, f'[data-series="{number}"]')))
                    ActionChains(driver).double_click(el).perform()

                def open_study(study) -> None:
                    """Open the study and wait until its first viewport shows the source image."""
                    driver.get(study_url(viewer.url, study.study_uid))
                    wait.until(EC.text_to_be_present_in_element(
                        (By.CSS_SELECTOR, '[data-cy="viewport-overlay-top-left"]'), study.descriptions["image"]))

                def drawn_on_image(study, name: str) -> None:
                    """The drawn SR: each flag's outline (an SVG polyline) and its values, on the source image."""
                    open_study(study)
                    open_series(9908)
                    uids = _drawn_uids(study)
                    wait.until(lambda d: d.execute_script(HAS_ANNOTATIONS_JS, uids))
                    # OHIF 3.13 may add an SR's annotations after its viewport's first render and draw them at the
                    # next one (any pan, zoom or window change); ask for that render
                    driver.execute_script(RENDER_JS)
                    for uid in uids:
                        box = wait.until(EC.presence_of_element_located(
                            (By.CSS_SELECTOR, f'[data-cy="viewport-pane"] g[data-annotation-uid="{uid}"]')))
                        assert "Re-annotation priority" in box.get_attribute("textContent")
                    layer = driver.find_element(By.CSS_SELECTOR, '[data-cy="viewport-pane"] svg.svg-layer')
                    assert layer.find_elements(By.TAG_NAME, "polyline"), "no outline drawn"
                    driver.save_screenshot(str(shots / name))

                # a flagged label: the drawn flag, then the QA report as text
                drawn_on_image(label, "label-drawn-sr.png")
                open_series(9901)
                given = wait.until(EC.presence_of_element_located(
                    (By.XPATH, "//span[normalize-space()='Given label:']/following-sibling::span")))
                assert given.text == GIVEN_LABEL
                consensus = driver.find_element(
                    By.XPATH, "//span[normalize-space()='Model consensus label:']/following-sibling::span")
                assert consensus.text == CONSENSUS_LABEL
                driver.save_screenshot(str(shots / "label-report-text.png"))
                assert "Something went wrong" not in driver.page_source
                console += driver.get_log("browser")

                # a flagged mask: the drawn flag, then the suggestion SEG over the image
                drawn_on_image(mask, "mask-drawn-sr.png")
                open_series(9905)
                wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, '[data-cy="yes-hydrate-btn"]'))).click()
                wait.until(lambda d: d.execute_script(RED_PIXELS_JS) > 500)  # the segment, drawn in its colour
                driver.find_element(By.CSS_SELECTOR, '[data-cy="panelSegmentation-btn"]').click()
                wait.until(EC.presence_of_element_located(
                    (By.XPATH, f"//*[normalize-space(text())='SUGGESTION {MASK_CLASS}']")))
                driver.save_screenshot(str(shots / "mask-suggestion-seg.png"))
                assert "Something went wrong" not in driver.page_source
                console += driver.get_log("browser")
            except BaseException:
                if driver is not None:
                    driver.save_screenshot(str(shots / "failure.png"))
                    (shots / "failure.html").write_text(driver.page_source)
                raise
            finally:
                if driver is not None:
                    driver.quit()
                if viewer is not None:
                    viewer.stop()
                orthanc.stop()
    finally:
        ns.stop()
        (shots / "console.json").write_text(json.dumps(console, indent=1))
    uncaught = [e["message"] for e in console if e.get("level") == "SEVERE"
                and ("Uncaught" in e["message"] or "TypeError" in e["message"])]
    assert uncaught == []
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "label-drawn-sr.png", "label-report-text.png", "mask-drawn-sr.png", "mask-suggestion-seg.png"]
