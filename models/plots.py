"""Evaluation plots: precision-recall curves, relabelling efficacy, montage of top flagged samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_plots"]


def write_plots(out_dir: Path, methods: dict, truth: np.ndarray, efficacy: dict, data, sc, cand: np.ndarray,
                maps: dict[str, np.ndarray], n_montage: int = 8) -> list[Path]:
    """Write pr_curves.png, efficacy.png and top_flagged.png into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    paths = []
    fig, ax = plt.subplots(figsize=(6, 5))
    if truth.any():
        for name, (_flags, scores) in methods.items():
            p, r, _ = precision_recall_curve(truth, scores)
            ax.plot(r, p, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Recovering flipped labels")
    ax.legend(fontsize=8)
    paths.append(out_dir / "pr_curves.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    for name in ("alc", "labelqa", "random"):
        ax.plot(efficacy["fraction_reviewed"], efficacy[name], label=name)
    ax.set_xlabel("fraction of data reviewed")
    ax.set_ylabel("fraction of flipped labels found")
    ax.legend()
    paths.append(out_dir / "efficacy.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    pos = {int(i): j for j, i in enumerate(cand)}
    flagged = [i for i in np.argsort(-sc.score, kind="stable") if sc.labelqa_flag[i] and int(i) in pos][:n_montage]
    archs = list(maps)
    if flagged:
        fig, axes = plt.subplots(len(flagged), 1 + len(archs), figsize=(2 * (1 + len(archs)), 2 * len(flagged)),
                                 squeeze=False)
        for r, i in enumerate(flagged):
            axes[r, 0].imshow(data.images[i], cmap="gray")
            axes[r, 0].set_title(f"given {data.class_names[sc.given[i]]}\n-> {data.class_names[sc.consensus[i]]}",
                                 fontsize=7)
            for c, a in enumerate(archs):
                axes[r, c + 1].imshow(data.images[i], cmap="gray")
                axes[r, c + 1].imshow(maps[a][pos[int(i)]], cmap="jet", alpha=0.45,
                                      extent=(-0.5, data.images.shape[-1] - 0.5, data.images.shape[-2] - 0.5, -0.5))
                axes[r, c + 1].set_title(a, fontsize=7)
            for ax in axes[r]:
                ax.axis("off")
        paths.append(out_dir / "top_flagged.png")
        fig.savefig(paths[-1], dpi=90, bbox_inches="tight")
        plt.close(fig)
    return paths
