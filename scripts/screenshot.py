"""Make docs/img/report.png (and mask-report.png): screenshots of the QA officer's HTML report from `labelqa demo`.

Runs the demo (embedded defaults, or the options given after ``--``), takes the report page of one
study whose annotation was flagged as a suspected error, renders it with headless Chromium and stores
a small palette PNG. Needs Chromium (Debian: /usr/bin/chromium) and what the demo needs.

    PYTHONPATH=$PWD .venv/bin/python scripts/screenshot.py [--work /tmp/labelqa-shot] [--out docs/img/report.png]
    PYTHONPATH=$PWD .venv/bin/python scripts/screenshot.py --work /tmp/labelqa-shot-seg \
        --out docs/img/mask-report.png -- --task segmentation
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise SystemExit("Chromium not found (Debian: apt-get install chromium)")


def run_demo(work: Path, extra: list[str], reuse: bool) -> dict:
    saved = work / "demo.json"
    if reuse and saved.is_file():
        return json.loads(saved.read_text())
    cmd = [sys.executable, "-m", "service", "demo", "--json", "--data-dir", str(work), "--device", "cpu", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"labelqa demo failed ({r.returncode}):\n{r.stderr[-3000:]}")
    saved.write_text(r.stdout)
    return json.loads(r.stdout)


def flagged_page(report: dict) -> Path:
    index = Path(report["outputs"]["html_report"])
    for row in report["rows"]:
        page = index.parent / f"{row['study_uid']}.html"
        if row["verdict"] in ("suspected_label_error", "suspected_mask_error") and page.is_file():
            return page
    return index


def screenshot(page: Path, out: Path, width: int, height: int, scale_to: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}", f"--screenshot={raw}",
               page.resolve().as_uri()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if not raw.is_file():
            raise SystemExit(f"chromium made no screenshot ({r.returncode}): {r.stderr[-2000:]}")
        from PIL import Image

        img = Image.open(raw).convert("RGB")
        if img.width > scale_to:
            img = img.resize((scale_to, round(img.height * scale_to / img.width)), Image.Resampling.LANCZOS)
        img = img.quantize(colors=128)
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(out, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "labelqa-shot")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "report.png")
    ap.add_argument("--width", type=int, default=1680, help="Browser window width (px).")
    ap.add_argument("--height", type=int, default=900, help="Browser window height (px).")
    ap.add_argument("--scale-to", type=int, default=1100, help="Width of the stored PNG (px).")
    ap.add_argument("--reuse", action="store_true", help="Reuse the demo run already in --work.")
    ap.add_argument("demo_args", nargs="*", help="extra `labelqa demo` options, after --")
    a = ap.parse_args()
    report = run_demo(a.work, a.demo_args, a.reuse)
    page = flagged_page(report)
    screenshot(page, a.out, a.width, a.height, a.scale_to)
    print(f"{a.out} ({a.out.stat().st_size // 1024} KiB) from {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
