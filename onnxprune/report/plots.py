"""The sensitivity analysis as a picture: one damage curve per channel group (``onnxprune
sensitivity --plot``). Kept in the report package with the other renderings, so that the
analysis (``allocate.sensitivity``) does not depend on matplotlib or on the labels."""

from __future__ import annotations

from ..allocate.sensitivity import Sensitivity
from ..model.files import write_bytes_atomic
from .labels import distinct_labels, line_styles


def plot_sensitivity(sens: Sensitivity, path) -> None:
    """A PNG of the damage curves, one line per group (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    curves = sorted(sens.curves.items())
    # Issue 15.15: labels that differ (not the names' shared first characters), no repeated colour.
    labels = distinct_labels({gid: sens.names.get(gid, "") or str(gid) for gid, _ in curves}, 30)
    for (gid, curve), (colour, style) in zip(curves, line_styles(len(curves))):
        ax.plot(sens.ratios, curve, marker=".", linewidth=1, color=colour, linestyle=style, label=f"{gid}: {labels[gid]}")
    ax.set_xlabel("share of the group's channels removed")
    ax.set_ylabel({"accuracy_drop": "top-1 accuracy drop", "kl": "KL divergence to the original",
                   "error": "normalised output error", "disagreement": "top-1 disagreement"}.get(sens.metric, sens.metric))
    ax.set_title(f"Sensitivity per channel group ({sens.criterion} order)")
    ax.grid(alpha=0.3)
    if len(sens.curves) <= 40:
        ax.legend(fontsize=6, ncol=1 + len(sens.curves) // 21, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    from io import BytesIO

    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
