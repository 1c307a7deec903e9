"""Plots and the HTML / Markdown report of :func:`geosolver.analysis.analyze_stores`."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from geosolver.files import atomic_write_text
from geosolver.htmlreport import img_tag, page

from .curve import MonotoneCurve
from .pairs import MAX_KM, PairStats

PLOTS = {
    "sim_vs_distance.png": "Cosine similarity vs distance",
    "curves.png": "Mean similarity per distance bin and the ideal monotone curve",
    "sim_hist.png": "Distribution of pairwise cosine similarity",
}

# (key, column header, format, description)
TABLE_ROWS = [
    ("n_pairs", "pairs", "{:,}", "pairs analysed"),
    ("pearson", "Pearson r", "{:+.3f}", "Pearson correlation of similarity and distance (more negative = more geographic)"),
    ("spearman", "Spearman ρ", "{:+.3f}", "Spearman rank correlation of similarity and distance"),
    ("mean_pair_similarity", "mean cos (pairs)", "{:.3f}", "mean cosine over the analysed pairs"),
    ("false_friend_share", "false friends", "{:.2%}", "share of pairs > 5000 km apart more similar than the 95th percentile of pairs < 25 km"),
    ("near_p95_sim", "p95 cos < 25 km", "{:.3f}", "95th percentile of similarity of pairs < 25 km apart"),
    ("n_near_pairs", "pairs < 25 km", "{:,}", "pairs closer than 25 km"),
    ("r2_isotonic", "R² ideal curve", "{:.3f}", "1 − MSE(ideal curve) / variance of similarity"),
    ("mse_isotonic", "MSE ideal curve", "{:.2e}", "mean squared deviation of pairs from the monotone curve μ(d) (exact)"),
    ("mse_constant", "variance", "{:.2e}", "variance of similarity (MSE of the best constant)"),
    ("rising_bins", "rising bins", "{:d}", "distance bins where the mean curve rises"),
    ("monotonicity_violations", "sig. rises", "{:d}", "rises larger than 3 standard errors"),
    ("diagnostics.mean_cosine", "mean cos (sample)", "{:.3f}", "exact mean pairwise cosine of the diagnostics sample (= pairs in all-pairs mode)"),
    ("diagnostics.mean_norm", "‖mean‖", "{:.3f}", "norm of the mean embedding (cone: → 1)"),
    ("diagnostics.effective_rank", "eff. rank", "{:.1f}", "Roy & Vetterli effective rank, uncentred"),
    ("diagnostics.effective_rank_centered", "eff. rank (centred)", "{:.1f}", "effective rank of the mean-centred embeddings"),
    ("diagnostics.pc1_variance_share", "var PC1", "{:.1%}", "share of variance in the top principal component"),
    ("diagnostics.pc10_variance_share", "var PC1-10", "{:.1%}", "share of variance in the top 10 principal components"),
    ("diagnostics.uniformity", "uniformity", "{:.3f}", "Wang & Isola log E exp(−2‖x−y‖²) (lower = more uniform)"),
]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _get(d: Mapping, key: str):
    for k in key.split("."):
        d = d.get(k) if isinstance(d, Mapping) else None
    return d


def _fmt(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    try:
        return fmt.format(int(v) if fmt.endswith("d}") or fmt == "{:,}" else v)
    except (ValueError, TypeError):
        return str(v)


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (metric, one column per encoder) of the comparison table."""
    names = list(result["encoders"])
    rows = [[label] + [_fmt(_get(result["encoders"][n], key), fmt) for n in names] for key, label, fmt, _ in TABLE_ROWS]
    return ["metric"] + names, rows


def _sim_range(stats: Mapping[str, PairStats]) -> tuple[float, float]:
    """Similarity range holding all but 0.05 % of the pairs of every encoder, padded."""
    lo, hi = 1.0, -1.0
    for st in stats.values():
        h = st.sim_histogram()
        if h.sum() == 0:
            continue
        c = np.cumsum(h) / h.sum()
        e = st.sim_edges
        lo = min(lo, e[np.searchsorted(c, 0.0005)])
        hi = max(hi, e[np.searchsorted(c, 0.9995) + 1])
    if lo >= hi:
        return -1.0, 1.0
    pad = 0.05 * (hi - lo)
    return max(-1.0, lo - pad), min(1.0, hi + pad)


def plot_sim_vs_distance(stats: Mapping[str, PairStats], curves: Mapping[str, MonotoneCurve], path: Path) -> None:
    """One panel per encoder: 2-D histogram (log colour) + binned mean ± std + ideal curve."""
    import matplotlib.patheffects as pe  # matplotlib: heavy, loaded only when a figure is drawn
    import matplotlib.pyplot as plt  # matplotlib: heavy, loaded only when a figure is drawn
    from matplotlib.colors import LogNorm  # matplotlib: heavy, loaded only when a figure is drawn

    k = len(stats)
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols + 1.2, 4.2 * rows), sharex=True, sharey=True, squeeze=False, layout="constrained")
    ylo, yhi = _sim_range(stats)
    vmax = max(int(st.hist2d.max()) for st in stats.values()) or 1
    norm = LogNorm(vmin=1, vmax=max(vmax, 2))
    mesh = None
    for ax, (name, st) in zip(axes.flat, stats.items()):
        h = np.ma.masked_equal(st.hist2d.T.astype(float), 0)
        mesh = ax.pcolormesh(st.dist_edges, st.sim_edges, h, norm=norm, cmap="magma_r", shading="flat", rasterized=True)
        b = st.binned()
        ok = b["count"] > 0
        x = st.bin_centers_km[ok]
        halo = [pe.withStroke(linewidth=3.2, foreground="white")]
        ax.plot(x, b["mean"][ok], color="#0077ff", lw=1.8, label="mean", path_effects=halo)
        for sign, label in ((1, "mean ± std"), (-1, None)):
            ax.plot(x, (b["mean"] + sign * b["std"])[ok], color="white", lw=1.0, ls=(0, (3, 2)), label=label,
                    path_effects=[pe.withStroke(linewidth=2.2, foreground="#0077ff")])
        ax.plot(x, curves[name](x), color="#00b050", lw=1.6, ls="--", label="ideal monotone μ(d)", path_effects=halo)
        ax.set_title(name, fontsize=11)
        ax.grid(alpha=0.25)
    for ax in axes.flat[k:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("great-circle distance (km)")
    for ax in axes[:, 0]:
        ax.set_ylabel("cosine similarity")
    axes.flat[0].set_xlim(0, MAX_KM)
    axes.flat[0].set_xticks([0, 5000, 10000, 15000, 20000])
    axes.flat[0].set_ylim(ylo, yhi)
    axes.flat[0].legend(loc="upper right", fontsize=8, framealpha=0.85)
    fig.colorbar(mesh, ax=axes, label="pairs per cell", shrink=0.9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(stats: Mapping[str, PairStats], curves: Mapping[str, MonotoneCurve], path: Path) -> None:
    """Mean curves of all encoders (log distance axis): raw, and standardised for comparison."""
    import matplotlib.pyplot as plt  # matplotlib: heavy, loaded only when a figure is drawn

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.4))
    for c, (name, st) in zip(COLORS * 4, stats.items()):
        b = st.binned()
        ok = b["count"] > 0
        x = st.bin_centers_km[ok]
        m = b["mean"][ok]
        mu = curves[name](x)
        a1.plot(x, m, "o", ms=2.5, color=c, alpha=0.6)
        a1.plot(x, mu, "-", lw=1.8, color=c, label=name)
        h = st.moments()
        sd = math.sqrt(max(h["s2"] / h["n"] - (h["s"] / h["n"]) ** 2, 1e-30))
        mean = h["s"] / h["n"]
        a2.plot(x, (m - mean) / sd, "o", ms=2.5, color=c, alpha=0.6)
        a2.plot(x, (mu - mean) / sd, "-", lw=1.8, color=c, label=name)
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlim(0.4, MAX_KM * 1.1)
        ax.set_xlabel("great-circle distance (km, log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    a1.set_ylabel("cosine similarity")
    a1.set_title("binned mean (dots) and ideal monotone curve (line)", fontsize=10)
    a2.set_ylabel("(similarity − mean) / std")
    a2.set_title("standardised per encoder", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sim_hist(stats: Mapping[str, PairStats], path: Path) -> None:
    """Histogram (density) of pairwise cosine per encoder with its mean marked."""
    import matplotlib.pyplot as plt  # matplotlib: heavy, loaded only when a figure is drawn

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    lo, hi = _sim_range(stats)
    for c, (name, st) in zip(COLORS * 4, stats.items()):
        h = st.sim_histogram().astype(float)
        e = st.sim_edges
        dens = h / max(h.sum(), 1) / np.diff(e)
        ax.stairs(dens, e, color=c, lw=1.6, label=name, fill=False)
        ax.stairs(dens, e, color=c, alpha=0.12, fill=True)
        mean = st.mean_sim()
        ax.axvline(mean, color=c, ls="--", lw=1.2)
        ax.annotate(f"mean {mean:.3f}", (mean, 0.03), xycoords=("data", "axes fraction"), xytext=(3, 0), textcoords="offset points", color=c, fontsize=8, rotation=90, va="bottom")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _intro(result: dict) -> list[str]:
    n = result["n_images"]
    if result["mode"] == "all_pairs":
        what = f"all {result['n_pairs']:,} pairs among {n:,} images sampled from {result['n_shared_images']:,} shared images"
    else:
        what = f"{result['n_pairs']:,} random pairs drawn from {result['n_shared_images']:,} shared images ({n:,} distinct images)"
    return [
        f"Encoders: {', '.join(result['encoders'])}. Analysed {what}; the same images and pairs for every encoder.",
        f"Spearman ρ: {result['spearman_method']}. Everything else is exact over all analysed pairs "
        f"(binned in blocks; the density plot is an exact 2-D histogram). Collapse diagnostics use "
        f"{result['n_diagnostics_images']:,} images.",
        "Distance bins: 0, 1, 5, 10, 25, 50, 100 km, then every 100 km to 20 100 km. The ideal curve μ(d) is the "
        "best non-increasing fit (isotonic regression) of the binned mean similarity weighted by pair counts, "
        "interpolated linearly between bin midpoints; its MSE is exact over all pairs.",
    ]


def write_report(out: Path, result: dict, stats: Mapping[str, PairStats], curves: Mapping[str, MonotoneCurve]) -> None:
    """Write the PNGs, ``report.md`` and a self-contained ``report.html`` into ``out``."""
    import matplotlib  # matplotlib: heavy, loaded only when a figure is drawn

    matplotlib.use("Agg", force=False)
    out = Path(out)
    plot_sim_vs_distance(stats, curves, out / "sim_vs_distance.png")
    plot_curves(stats, curves, out / "curves.png")
    plot_sim_hist(stats, out / "sim_hist.png")

    header, rows = table_rows(result)
    legend = [(label, desc) for _, label, _, desc in TABLE_ROWS]
    intro = _intro(result)

    md = ["# Embedding-space analysis", ""] + [p + "\n" for p in intro]
    md += ["## Comparison", "", _md_table(header, rows), ""]
    md += ["<details><summary>What the numbers mean</summary>", ""] + [f"- **{a}**: {b}" for a, b in legend] + ["", "</details>", ""]
    for fname, title in PLOTS.items():
        md += [f"## {title}", "", f"![{title}]({fname})", ""]
    atomic_write_text(out / "report.md", "\n".join(md))

    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join(
        "<tr>" + f'<td title="{html.escape(desc)}">{html.escape(r[0])}</td>' + "".join(f"<td>{html.escape(c)}</td>" for c in r[1:]) + "</tr>"
        for r, (_, desc) in zip(rows, legend)
    )
    body = [
        "<h1>Embedding-space analysis</h1>",
        *[f"<p>{html.escape(p)}</p>" for p in intro],
        "<h2>Comparison</h2>",
        f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>",
        "<details><summary>What the numbers mean</summary><ul>"
        + "".join(f"<li><b>{html.escape(a)}</b>: {html.escape(b)}</li>" for a, b in legend)
        + "</ul></details>",
    ]
    for fname, title in PLOTS.items():
        body += [f"<h2>{html.escape(title)}</h2>", img_tag(out / fname, title)]
    atomic_write_text(out / "report.html", page("Geosolver embedding analysis", "\n".join(body)))
