"""Shared by the pipeline, demo and Orthanc end-to-end tests: one small synthetic data set and bundle.

The bundle is trained once per test session (``labelqa demo``'s own data and training code, small
settings) and reused by every test that imports the ``small_demo`` fixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from service.demo import DemoConfig, DemoData, make_demo_data, train_demo_bundle

# Small enough for CI on 2 cores, large enough that the ensemble learns the shapes.
SMALL = dict(studies=12, train_images=160, image_size=32, classes=2, noise_rate=0.2, epochs=6, seed=0)

_CACHE: dict[str, SmallDemo] = {}


@dataclass
class SmallDemo:
    work: Path  # a demo data dir: `labelqa demo --data-dir work` with SMALL finds the bundle cached
    cfg: DemoConfig
    data: DemoData
    bundle: Path


def small_demo_for(root: Path) -> SmallDemo:
    """Make (once per process) the small data set and train its bundle under ``root``."""
    key = str(root)
    if key not in _CACHE:
        work = root / "demo"
        cfg = DemoConfig(data_dir=work, device="cpu", **SMALL)
        data = make_demo_data(cfg, work)
        bundle, _ = train_demo_bundle(cfg, data, work, echo=lambda _m: None)
        _CACHE[key] = SmallDemo(work, cfg, data, bundle)
    return _CACHE[key]


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> SmallDemo:
    return small_demo_for(tmp_path_factory.getbasetemp() / "labelqa-small-demo")
