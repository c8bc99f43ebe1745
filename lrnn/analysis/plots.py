"""The files of a token-dynamics diagnosis: a JSON summary, the spectra per layer and the token norms against time."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lrnn.analysis.dynamics import LayerDynamics
from lrnn.atomic import atomic_write_text, save_figure
from lrnn.paths import check_not_replacing, check_writable_directory

OUTPUT_NAMES = {"summary": "dynamics.json", "spectra": "spectra.png", "norms": "norms.png"}
"""The files ``write_dynamics`` writes into its directory."""

_REGIME_COLOURS = {"convergent": "tab:blue", "divergent": "tab:red", "mixed": "tab:purple", "none": "tab:gray"}


def _figure(rows: int, cols: int, width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)


def plot_spectra(results: list[LayerDynamics], path: str | Path) -> Path:
    """One column of points per layer: the non-zero eigenvalues of sym(S_C^T S_B) (symlog axis), coloured by
    the layer's regime."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(1, 1, max(4.0, 0.4 * len(results) + 2.0), 3.6)
    ax = axes[0][0]
    smallest = math.inf
    for result in results:
        spectrum = result.spectrum
        values = spectrum.eigenvalues[spectrum.eigenvalues.abs() > spectrum.tolerance]
        smallest = min(smallest, values.abs().min().item() if values.numel() else math.inf)
        ax.scatter([result.layer] * values.numel(), values.tolist(), s=12, color=_REGIME_COLOURS[spectrum.regime],
                   label=spectrum.regime)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_yscale("symlog", linthresh=smallest if math.isfinite(smallest) else 1.0)  # linear only below every point
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="layer", ylabel="eigenvalue of sym(S_C^T S_B)", title="interaction spectra (zeros omitted)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=110)


def plot_norms(results: list[LayerDynamics], path: str | Path) -> Path:
    """One panel per layer: every token's norm against time (log-log), later tokens darker."""
    import matplotlib

    cols = min(4, len(results))
    rows = math.ceil(len(results) / cols)
    fig, axes = _figure(rows, cols, 3.4, 2.8)
    cmap = matplotlib.colormaps["viridis"]
    for ax, result in zip((ax for row in axes for ax in row), results):
        times, norms = result.trajectory.times[1:], result.trajectory.norms[1:]  # t = 0 has no log
        if times.numel() == 0:  # blew up within the first step: nothing to draw
            ax.set_title(f"layer {result.layer}: blew up at t = {result.trajectory.blowup_time:.3g}", fontsize=9)
            continue
        tokens = norms.shape[-1]
        for token in range(tokens):
            ax.plot(times.tolist(), norms[:, token].tolist(), color=cmap(token / max(tokens - 1, 1)), linewidth=1.0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.tick_params(which="minor", labelbottom=False, labelleft=False)  # minor labels overlap on short ranges
        ax.set_title(f"layer {result.layer}: {result.spectrum.regime}", fontsize=9)
        ax.set_xlabel("t")
        ax.set_ylabel("|x_l(t)|")
        ax.grid(alpha=0.3)
    for ax in [ax for row in axes for ax in row][len(results):]:
        ax.set_visible(False)
    return save_figure(fig, path, dpi=110)


def check_output_directory(directory: str | Path, overwrite: bool = False) -> Path:
    """``directory`` as a Path, after refusing one that is a file or already holds one of ``OUTPUT_NAMES``
    (unless ``overwrite``): checked before any work, so nothing is replaced by accident."""
    directory = check_writable_directory(directory, "the output directory")
    check_not_replacing(directory, list(OUTPUT_NAMES.values()), overwrite, "pass overwrite (--force)")
    return directory


def write_dynamics(results: list[LayerDynamics], directory: str | Path, metadata: dict) -> dict[str, Path]:
    """Write ``dynamics.json`` (``metadata`` and every layer's ``to_dict``), ``spectra.png`` and ``norms.png``
    into ``directory``, each atomically; returns their paths by kind."""
    directory = Path(directory)
    paths = {kind: directory / name for kind, name in OUTPUT_NAMES.items()}
    summary = {**metadata, "layers": [result.to_dict() for result in results]}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=1) + "\n")
    plot_spectra(results, paths["spectra"])
    plot_norms(results, paths["norms"])
    return paths
