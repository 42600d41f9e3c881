"""One small synthetic data set and its trained bundle, shared by the pipeline, demo and Orthanc tests
and by ``benchmarks/scaleout.py``.

The bundle is trained once per process (``labelqa demo``'s own data and training code, small
settings) and cached across runs; the tests reach it through the session fixture ``small_demo``
(``tests/conftest.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.commands import REPO
from service.demo import DemoConfig, DemoData, make_demo_data, train_demo_bundle

__all__ = ["SMALL", "SmallDemo", "small_demo_for"]

# Small enough for CI on 2 cores, large enough that the ensemble learns the shapes.
SMALL: dict[str, Any] = dict(studies=12, train_images=160, image_size=32, classes=2, noise_rate=0.2, epochs=8, seed=0)

_CACHE: dict[str, SmallDemo] = {}


@dataclass
class SmallDemo:
    work: Path  # a demo data dir: `labelqa demo --data-dir work` with SMALL finds the bundle cached
    cfg: DemoConfig
    data: DemoData
    bundle: Path


def _source_key(cfg: DemoConfig) -> str:
    """The trained bundle depends on the settings and on the training/data code: hash them all."""
    h = hashlib.sha256(cfg.bundle_key().encode())
    code = [*sorted((REPO / "models").glob("*.py")), *sorted((REPO / "service" / "demo").glob("*.py")),
            REPO / "dicom_io" / "dicomize.py"]
    for p in code:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def small_demo_for(root: Path) -> SmallDemo:
    """Make (once per process) the small data set and train its bundle under ``root``.

    The trained bundle is also kept in ``$LABELQA_TEST_CACHE`` (default ``~/.cache/labelqa-tests``),
    keyed by the settings and the source of the code that trains it, so later sessions skip training.
    """
    key = str(root)
    if key not in _CACHE:
        work = root / "demo"
        cfg = DemoConfig(data_dir=work, device="cpu", **SMALL)
        data = make_demo_data(cfg, work)
        cache = Path(os.environ.get("LABELQA_TEST_CACHE", Path.home() / ".cache" / "labelqa-tests"))
        cached = cache / f"small-bundle-{_source_key(cfg)}"
        target = work / "bundles" / cfg.bundle_key()
        if (cached / "configs" / "metadata.json").is_file() and not target.exists():
            shutil.copytree(cached, target)
        bundle, was_cached = train_demo_bundle(cfg, data, work, echo=lambda _m: None)
        if not was_cached:
            try:
                tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
                shutil.copytree(bundle, tmp)
                tmp.replace(cached)
            except OSError:
                pass  # a cache we cannot write only costs time
        _CACHE[key] = SmallDemo(work, cfg, data, bundle)
    return _CACHE[key]
