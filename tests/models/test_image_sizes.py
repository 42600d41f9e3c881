"""Any input size either works or is refused up front with one line naming the minimum."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from harness.commands import labelqa_cmd, labelqa_env
from models.ensemble import ARCHITECTURES, build_model, check_input_size, parse_archs
from models.evaluate import EvalSettings, run_evaluation
from models.train import TrainConfig

TINY = ("densenet-tiny", "resnet-tiny", "efficientnet-tiny")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("densenet") else n
                                  for n in sorted(ARCHITECTURES)])  # densenet: ~3 s, full suite only
def test_declared_minimum_input_size_is_exact(name):
    spec = ARCHITECTURES[name]
    model = build_model(spec, 2).eval()
    with torch.no_grad():
        model(torch.zeros(2, 1, spec.min_size, spec.min_size))  # runs at its minimum
        if spec.min_size > 2:
            with pytest.raises((RuntimeError, ValueError)):
                model(torch.zeros(2, 1, spec.min_size - 1, spec.min_size - 1))


@pytest.mark.slow
def test_too_small_size_is_refused_in_one_line_before_reading_data(tmp_path):
    with pytest.raises(ValueError, match=r"densenet121 \(needs 29 px\).*--image-size 32 or more"):
        check_input_size(parse_archs("densenet121,resnet18,efficientnet-b0"), 28)
    check_input_size(parse_archs(TINY), 16)  # the tiny members run at 16 px
    ds = tmp_path / "ds"
    for c in ("a", "b"):
        (ds / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((28, 28), 40 + 100 * (c == "b"), np.uint8)).save(ds / c / f"{i}.png")
    r = subprocess.run([*labelqa_cmd(), "evaluate", "--dataset", str(ds), "--out", str(tmp_path / "ev"),
                        "--image-size", "28", "--no-progress"], env=labelqa_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs 29 px" in lines[0] and "needs 32 px" in lines[0], r.stderr
    assert not (tmp_path / "ev" / "results.json").exists()


def _dataset(n: int, shape: tuple[int, int], seed: int):
    from models.preprocess import resize_image

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = []
    for y in labels:
        img = rng.normal(0.3, 0.05, shape).astype(np.float32)
        h, w = shape
        if y:  # a bright square in class 1
            img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] += 0.5
        images.append(np.clip(img, 0, 1))
    return images, labels, resize_image


@pytest.mark.slow
@pytest.mark.parametrize(("size", "shape"), [(16, (28, 28)), (28, (28, 28)), (32, (28, 28)), (32, (40, 24))])
def test_tiny_members_evaluate_at_small_and_non_square_sizes(tmp_path, size, shape):
    from models.data import LabelledImages

    images, labels, resize = _dataset(60, shape, seed=size)
    data = LabelledImages(np.stack([resize(im, size) for im in images]), labels, ["dark", "bright"])
    s = EvalSettings(dataset=f"squares-{shape[0]}x{shape[1]}", noise_rate=0.1, folds=2, image_size=size,
                     archs=TINY, device="cpu", train=TrainConfig(epochs=2, batch_size=16, lr=3e-3))
    res = run_evaluation(s, tmp_path, data=data, plots=False)
    assert res["settings"]["image_size"] == size
    assert res["n_flipped"] == 6
    assert 0.0 <= res["methods"]["labelqa"]["f1"] <= 1.0
