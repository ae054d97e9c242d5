"""The Markdown report of a run, with PNG plots.

The report has the probe table per block (trained, random twin and, when
present, the end-to-end reference, at each label budget), the readout, the
timings, the linear CKA of every block against the reference's blocks (a
heat map, when a reference was trained), loss curves, probe accuracy against
block depth, each rule's traces (such as energy over inference steps) and
receptive fields where a rule provides them. The comparison's report adds a
cost table, the memory per schedule and one CKA heat map per variant.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger(__name__)
MODEL_ORDER = ("trained", "random", "reference")


def probe_table(results: dict[str, Any]) -> str:
    """Markdown table: one row per block and budget, one column per model."""
    acc: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for row in results["probe"]:
        acc[row["block"], row["budget"]][row["model"]] = row["accuracy"]
    models = [m for m in MODEL_ORDER if any(m in v for v in acc.values())]
    head = ["block", "labels per class", *models]
    if "random" in models:
        head.append("trained - random (points)")
    if "reference" in models:
        head.append("trained - reference (points)")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (block, budget), vals in acc.items():
        cells = [block, budget] + [
            f"{100 * vals[m]:.1f}%" if m in vals else "" for m in models
        ]
        if "random" in models:
            cells.append(f"{100 * (vals['trained'] - vals['random']):+.1f}")
        if "reference" in models:
            cells.append(f"{100 * (vals['trained'] - vals['reference']):+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _loss_plot(metrics: list[dict], path: Path) -> bool:
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for rec in metrics:
        if rec.get("event") != "step":
            continue
        for block, value in rec["loss"].items():
            curves[f"{rec['model']} {block}"].append((rec["step"], value))
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, pts in curves.items():
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, label=label, lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("local loss, energy or update size")
    ax.set_title("Training curve of each block (per logged step)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _accuracy_plot(results: dict, path: Path) -> bool:
    blocks = [b["name"] for b in results["blocks"]]
    if not results["probe"]:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.5))
    styles = {"trained": "-o", "random": "--s", "reference": ":^"}
    for model in MODEL_ORDER:
        for budget in sorted({r["budget"] for r in results["probe"]}):
            ys = [
                100 * r["accuracy"]
                for b in blocks
                for r in results["probe"]
                if r["model"] == model and r["budget"] == budget and r["block"] == b
            ]
            if ys:
                ax.plot(
                    range(1, len(ys) + 1),
                    ys,
                    styles[model],
                    label=f"{model}, {budget} labels/class",
                )
    ax.set_xticks(range(1, len(blocks) + 1), blocks)
    ax.set_xlabel("block (depth)")
    ax.set_ylabel("probe accuracy (%)")
    ax.set_title("Linear probe accuracy per block", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _diagnostics_plot(metrics: list[dict], path: Path) -> bool:
    """Each rule's per-epoch diagnostics (energy, norms, win rates) by block."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for rec in metrics:
        if rec.get("event") != "epoch" or rec.get("model") != "trained":
            continue
        for block, diag in (rec.get("diagnostics") or {}).items():
            for key, value in diag.items():
                if isinstance(value, int | float):
                    series[key][block].append((len(series[key][block]) + 1, value))
    if not series:
        return False
    keys = sorted(series)[:12]
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for block, pts in series[key].items():
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker=".", label=block)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _traces_plot(net, path: Path) -> bool:
    traces = {
        f"{name} {key}": vals
        for name in net.order
        for key, vals in net.blocks[name].rule.traces().items()
    }
    if not traces:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, vals in traces.items():
        ax.plot(vals, label=label)
    ax.set_xlabel("inference step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def field_grid(weights: torch.Tensor, max_units: int = 64) -> np.ndarray:
    """Tile ``(units, C, h, w)`` weights into one image, each scaled alone."""
    w = weights[:max_units].detach().float().cpu()
    if w.shape[1] not in (1, 3):
        w = w[:, :1]
    lo = w.flatten(1).min(1).values[:, None, None, None]
    hi = w.flatten(1).max(1).values[:, None, None, None]
    w = (w - lo) / (hi - lo).clamp_min(1e-8)
    n = len(w)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    c, h, wd = w.shape[1:]
    canvas = np.ones((rows * (h + 1), cols * (wd + 1), c))
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, q * (wd + 1) : q * (wd + 1) + wd] = (
            w[i].permute(1, 2, 0).numpy()
        )
    return canvas[..., 0] if c == 1 else canvas


def _fields_plots(net, out: Path) -> list[str]:
    names = []
    for name in net.order:
        block = net.blocks[name]
        fields = block.rule.receptive_fields(block.body)
        if fields is None:
            continue
        img = field_grid(fields)
        fname = f"fields_{name}.png"
        plt.imsave(out / fname, img, cmap="bwr" if img.ndim == 2 else None)
        names.append(fname)
    return names


def cka_heatmap(
    panels: dict[str, dict[str, Any]], path: Path, title: str, ylabel: str
) -> bool:
    """Draw CKA matrices side by side, annotated, on one 0..1 colour scale.

    Args:
        panels: panel title -> ``{"rows", "cols", "values"}`` and optionally
            ``"std"`` (a matrix of the same shape, annotated as ``± std``).
        path: the PNG to write.
        title: the figure's title.
        ylabel: what the rows are (for example "trained block").

    Returns:
        Whether anything was drawn.
    """
    if not panels:
        return False
    widths = [max(len(p["cols"]), 1) for p in panels.values()]
    height = max(len(p["rows"]) for p in panels.values())
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(1.4 * sum(widths) + 2.5, 1.0 * height + 1.8),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
        layout="constrained",
    )
    image = None
    for k, (ax, (name, panel)) in enumerate(zip(axes[0], panels.items(), strict=True)):
        values = np.asarray(panel["values"], dtype=float)
        std = panel.get("std")
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
        for (i, j), v in np.ndenumerate(values):
            text = f"{v:.2f}" if std is None else f"{v:.2f}\n±{std[i][j]:.2f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="black" if v > 0.6 else "white",
            )
        ax.set_xticks(range(len(panel["cols"])), panel["cols"], fontsize=8)
        ax.set_yticks(range(len(panel["rows"])), panel["rows"], fontsize=8)
        ax.set_xlabel("reference block (end to end)")
        if k == 0:
            ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label="linear CKA", shrink=0.8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def _mean_std(stat: dict[str, float] | None, unit: str = "s") -> str:
    if not stat:
        return ""
    return f"{stat['mean']:.2f} ± {stat['std']:.2f} {unit}"


def cost_table(cost: dict[str, dict[str, Any]]) -> str:
    """Markdown table of wall time per variant (mean ± std over seeds)."""
    lines = [
        "Wall time, mean ± standard deviation over seeds. An epoch is one pass "
        "over the training set; a sequential or cached schedule makes one per "
        "block per epoch. A resumed run counts only the time after resuming.",
        "",
        "| variant | s / epoch | reference s / epoch | training | whole run | runs |",
        "|" + " --- |" * 6,
    ]
    for variant, c in cost.items():
        n = max((v["n"] for v in c.values()), default=0)
        lines.append(
            f"| {variant} | {_mean_std(c.get('epoch_s'))} | "
            f"{_mean_std(c.get('reference_epoch_s'))} | "
            f"{_mean_std(c.get('train_s'))} | {_mean_std(c.get('total_s'))} | "
            f"{n} |"
        )
    return "\n".join(lines)


def _cka_panels(cka: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Panel titles for the entries of a ``cka`` section."""
    return {key.replace("_", " "): table for key, table in cka.items()}


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def write_comparison_report(
    out: Path, summary: dict[str, Any], results: dict[str, dict[int, dict]]
) -> Path:
    """Write the comparison's ``report.md`` with its tables and plots."""
    out = Path(out)
    parts = ["# Comparison", ""]
    parts.append(
        f"Seeds: {summary['seeds']}. Mean over seeds with standard deviation and "
        "95% confidence interval (Student's t). "
        + (
            f"Paired t-test against '{summary['baseline']}' on the same seeds. "
            if summary["baseline"]
            else ""
        )
        + "Where the runs trained an end-to-end reference, each trained row is "
        "also paired-t-tested against it (diff vs reference, in points)."
    )
    parts += [
        "",
        "| variant | block | labels per class | model | mean | std | 95% CI "
        "| n | diff vs baseline | p | diff vs reference | p |",
        "|" + " --- |" * 12,
    ]
    for r in sorted(
        summary["rows"],
        key=lambda r: (r["budget"], r["block"], r["variant"], r["model"]),
    ):
        diff = f"{100 * r['diff_mean']:+.1f}" if "diff_mean" in r else ""
        p = f"{r['p_value']:.3g}" if r.get("p_value") is not None else ""
        rdiff = (
            f"{100 * r['reference_diff_mean']:+.1f}"
            if "reference_diff_mean" in r
            else ""
        )
        rp = (
            f"{r['reference_p_value']:.3g}"
            if r.get("reference_p_value") is not None
            else ""
        )
        parts.append(
            f"| {r['variant']} | {r['block']} | {r['budget']} | {r['model']} | "
            f"{100 * r['mean']:.1f}% | {100 * r['std']:.1f} | "
            f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] | {r['n']} | "
            f"{diff} | {p} | {rdiff} | {rp} |"
        )
    for f in summary.get("failures", []):
        parts.append(f"- FAILED: {f['variant']} seed {f['seed']}: {f['error']}")
    if summary.get("cost"):
        parts += ["", "## Cost", "", cost_table(summary["cost"])]
    if summary.get("memory"):
        from localearn.costs import memory_markdown

        parts += [
            "",
            "## Memory per schedule",
            "",
            f"The base network, seed {summary['seeds'][0]}.",
            "",
            memory_markdown(summary["memory"]),
        ]
    if summary.get("cka"):
        parts += [
            "",
            "## Representation similarity",
            "",
            "Linear CKA between each block and each block of the same network "
            "trained end to end, mean (and standard deviation) over seeds; the "
            "random twin against the reference is the baseline.",
            "",
        ]
        for variant, cka in summary["cka"].items():
            panels = {
                key.replace("_", " "): {**t, "values": t["mean"]}
                for key, t in cka.items()
            }
            fname = f"cka_{_file_name(variant)}.png"
            n = max(t["n"] for t in cka.values())
            if cka_heatmap(
                panels,
                out / fname,
                f"{variant}: linear CKA against the reference, mean of {n} seed(s)",
                "block",
            ):
                parts.append(f"![linear CKA of {variant}]({fname})")
    if _depth_plot(summary, out / "depth.png"):
        parts += ["", "![probe accuracy against block depth](depth.png)"]
    if _curves_plot(out, results, out / "curves.png"):
        parts += ["", "![training curves](curves.png)"]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def _depth_plot(summary: dict, path: Path) -> bool:
    rows = [
        r
        for r in summary["rows"]
        if r["model"] == "trained" and r["block"] != "readout"
    ]
    if not rows:
        return False
    budgets = sorted({r["budget"] for r in rows})
    fig, axes = plt.subplots(
        1, len(budgets), figsize=(5 * len(budgets), 3.5), squeeze=False
    )
    for ax, budget in zip(axes[0], budgets, strict=True):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            pts = [r for r in rows if r["variant"] == variant and r["budget"] == budget]
            ys = [100 * r["mean"] for r in pts]
            err = [100 * (r["ci_high"] - r["mean"]) for r in pts]
            ax.errorbar(
                range(1, len(ys) + 1),
                ys,
                yerr=err,
                marker="o",
                capsize=3,
                label=variant,
            )
        ax.set_xlabel("block depth")
        ax.set_xticks(
            range(
                1,
                1
                + max(
                    len(
                        [r for r in rows if r["variant"] == v and r["budget"] == budget]
                    )
                    for v in {r["variant"] for r in rows}
                ),
            )
        )
        ax.set_ylabel("probe accuracy (%)")
        ax.set_title(f"{budget} labels per class")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _curves_plot(out: Path, results: dict, path: Path) -> bool:
    import json

    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for variant, by_seed in results.items():
        if not by_seed:
            continue
        seed = sorted(by_seed)[0]
        metrics = out / variant / f"seed{seed}" / "metrics.jsonl"
        if not metrics.exists():
            continue
        curves: dict[str, list[float]] = defaultdict(list)
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == "epoch" and rec.get("model") == "trained":
                for block, value in rec["loss"].items():
                    curves[block].append(value)
        for block, ys in curves.items():
            ax.plot(range(1, len(ys) + 1), ys, label=f"{variant} {block}", lw=1)
            drawn = True
    if drawn:
        ax.set_xlabel("epoch")
        ax.set_ylabel("local loss")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def write_report(
    run_dir: Path, results: dict[str, Any], models: dict, metrics: list[dict]
) -> Path:
    """Write ``report.md`` and its plots into ``run_dir``."""
    run_dir = Path(run_dir)
    parts = [f"# {results['name']}", ""]
    data = results["data"]
    parts.append(
        f"Data: {data['name']} ({data['n_train']} train, {data['n_test']} test). "
        f"Scheduler: {results['scheduler']}. Seed: {results['seed']}."
    )
    parts += [
        "",
        "## Blocks",
        "",
        "| block | rule | kind | parameters | output |",
        "| --- | --- | --- | --- | --- |",
    ]
    for b in results["blocks"]:
        parts.append(
            f"| {b['name']} | {b['rule']} | {b['kind']} | {b['parameters']:,} | "
            f"{tuple(b['out_shape'])} |"
        )
    parts += [
        "",
        "## Linear probe accuracy",
        "",
        "Accuracy over all test samples of a logistic-regression probe on each "
        "block's frozen, pooled features. 'random' is the same network at its "
        "initialisation; 'reference' is the same network trained end to end.",
        "",
        probe_table(results),
    ]
    if results.get("readout"):
        parts += ["", "## Readout", ""]
        for model, acc in results["readout"].items():
            parts.append(f"- {model}: {100 * acc:.2f}% (argmax of the last block)")
    timing = results.get("timing", {})
    if timing:
        parts += ["", "## Time", ""]
        parts += [f"- {k}: {v:.1f} s" for k, v in timing.items()]
    if results.get("cka"):
        parts += [
            "",
            "## Representation similarity",
            "",
            "Linear CKA (Kornblith et al., ICML 2019) between the pooled test-set "
            "features of every block and those of every block of the network "
            "trained end to end; the random twin against the reference is the "
            "baseline a trained block should rise above.",
            "",
        ]
        if cka_heatmap(
            _cka_panels(results["cka"]),
            run_dir / "cka.png",
            "Linear CKA against the end-to-end reference (test set)",
            "block",
        ):
            parts.append("![linear CKA against the reference](cka.png)")
    parts += ["", "## Plots", ""]
    if _loss_plot(metrics, run_dir / "loss.png"):
        parts.append("![loss curves](loss.png)")
    if _accuracy_plot(results, run_dir / "accuracy.png"):
        parts.append("![probe accuracy per block](accuracy.png)")
    if _diagnostics_plot(metrics, run_dir / "diagnostics.png"):
        parts.append("![rule diagnostics over training](diagnostics.png)")
    trained = models.get("trained")
    if trained is not None:
        if _traces_plot(trained, run_dir / "traces.png"):
            parts.append("![rule traces](traces.png)")
        for fname in _fields_plots(trained, run_dir):
            parts.append(f"![receptive fields]({fname})")
    path = run_dir / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
