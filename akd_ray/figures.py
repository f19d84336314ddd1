"""Saving a matplotlib figure the way every report plot is saved (tight, 110 dpi, closed after)."""

from __future__ import annotations

from pathlib import Path


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
