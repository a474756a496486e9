"""report.html: one self-contained file (tables, and matplotlib PNGs inlined as base64) that an
ML engineer can mail or archive next to metrics.json. No script, no external resource.

Per finding: ROC curve with its 95 % bootstrap band, reliability diagram (10 equal-count bins),
score histograms by label, and a forest plot of the subgroups' AUROC with CIs. Flagged subgroups
and findings with too few positives are shown in red at the top.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from node.evaluate.analysis import FindingAnalysis

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222;font-size:13px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}td.l,th.l{text-align:left}.warn{color:#b00;font-weight:bold}
tr.flag td{background:#fde2e2}.banner{background:#fff3cd;border:2px solid #b00;padding:0.8em;margin:1em 0}
img{max-width:100%;border:1px solid #eee}h2{border-bottom:2px solid #ddd;padding-bottom:4px}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)  # no bbox_inches="tight": it draws the figure twice
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.{digits}f}, {v[1]:.{digits}f}]"
    return html.escape(str(v))


def _finding_figure(key: str, a: FindingAnalysis, threshold: float | None) -> str:
    import matplotlib.pyplot as plt

    p = a.plot
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.9, wspace=0.25)
    ax = axes[0]
    if "fpr" in p:
        if "band" in p:
            grid, lo, hi = p["band"]
            ax.fill_between(grid, lo, hi, color="tab:blue", alpha=0.2, label="95 % bootstrap band")
        ax.plot(p["fpr"], p["tpr"], color="tab:blue", label=f"AUROC {_fmt(a.metrics.get('auroc'))}")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "needs positives and negatives", ha="center")
    ax.set(title=f"{key}: ROC", xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    ax = axes[1]
    rel = p.get("reliability") or []
    if rel:
        ax.plot([b["mean_score"] for b in rel], [b["fraction_positive"] for b in rel], "o-", color="tab:orange")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        title=f"reliability (ECE {_fmt(a.metrics.get('ece'))})",
        xlabel="mean score (10 equal-count bins)",
        ylabel="fraction positive",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax = axes[2]
    scores, labels = np.asarray(p["scores"]), np.asarray(p["labels"])
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="label 0", color="tab:green")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="label 1", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", label="threshold")
    ax.set(title="scores by label", xlabel="score", ylabel="studies")
    ax.legend(fontsize=8)
    return _png(fig)


def _forest(key: str, subgroups: list[dict[str, Any]], cohort_auroc: float | None) -> str | None:
    import matplotlib.pyplot as plt

    rows = [s for s in subgroups if s.get("auroc") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.2))
    fig.subplots_adjust(left=0.38, right=0.97, bottom=0.6 / (0.28 * len(rows) + 1.2), top=0.9)
    y = np.arange(len(rows))[::-1]
    for yi, s in zip(y, rows):
        colour = "tab:red" if s["flagged"] else "tab:blue"
        if s.get("auroc_ci"):
            ax.plot(s["auroc_ci"], [yi, yi], color=colour)
        ax.plot([s["auroc"]], [yi], "o", color=colour)
    if cohort_auroc is not None:
        ax.axvline(cohort_auroc, color="grey", ls="--")
    ax.set_yticks(y, [f"{s['by']}={s['value']} (n={s['n']})" for s in rows], fontsize=8)
    ax.set(title=f"{key}: subgroup AUROC (95 % CI)", xlabel="AUROC", xlim=(0, 1))
    return _png(fig)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()) -> str:
    head = "".join(
        f'<th class="l">{html.escape(h)}</th>' if i == 0 else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        cells = "".join(f'<td class="l">{_fmt(v)}</td>' if j == 0 else f"<td>{_fmt(v)}</td>" for j, v in enumerate(r))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _version_section(version: str, block: dict[str, Any], analyses: dict[str, FindingAnalysis]) -> str:
    parts = [f"<h2>Preprocessing {html.escape(version)}: {block['n_studies']} studies scored</h2>"]
    if block["not_eligible"]:
        parts.append(
            "<p>Not scored (reason: studies): "
            + ", ".join(f"{html.escape(k)}: {v}" for k, v in block["not_eligible"].items())
            + "</p>"
        )
    rows = []
    for key, m in block["findings"].items():
        at = m["at_threshold"]
        rows.append(
            [
                key,
                m["n_pos"],
                m["n_neg"],
                m["auroc"],
                m["auroc_ci"],
                m["average_precision"],
                m["ece"],
                m["brier"],
                at["threshold"],
                at["sensitivity"],
                at["sensitivity_ci"],
                at["specificity"],
                at["specificity_ci"],
                at["ppv"],
                at["npv"],
                at.get("indeterminate_fraction"),
            ]
        )
    parts.append("<h3>At the profile's current operating point</h3>")
    parts.append(
        _table(
            [
                "finding",
                "n pos",
                "n neg",
                "AUROC",
                "95 % CI",
                "AP",
                "ECE",
                "Brier",
                "threshold",
                "sensitivity",
                "CI",
                "specificity",
                "CI",
                "PPV",
                "NPV",
                "indeterminate",
            ],
            rows,
        )
    )
    rows, classes = [], []
    for key, m in block["findings"].items():
        s = m["suggested"]
        if s is None:
            rows.append([key, "needs positives and negatives"] + [None] * 7)
            classes.append("flag")
            continue
        rows.append(
            [
                key,
                s["method"],
                s["threshold"],
                s["indeterminate_band"],
                s["sensitivity"],
                s["sensitivity_ci"],
                s["specificity"],
                s["specificity_ci"],
                s["indeterminate_fraction"],
            ]
        )
        classes.append("flag" if m["n_pos"] < 30 else "")
    parts.append("<h3>Suggested operating points</h3>")
    parts.append(
        _table(
            [
                "finding",
                "method",
                "threshold",
                "indeterminate band",
                "sensitivity",
                "CI",
                "specificity",
                "CI",
                "indeterminate",
            ],
            rows,
            classes,
        )
    )
    for key, m in block["findings"].items():
        a = analyses[key]
        parts.append(f"<h3>{html.escape(key)}</h3>")
        for w in m["warnings"]:
            parts.append(f'<p class="warn">WARNING: {html.escape(w)}</p>')
        parts.append(
            f'<img alt="{html.escape(key)} ROC, reliability and histograms" '
            f'src="{_finding_figure(key, a, m["at_threshold"]["threshold"])}">'
        )
        forest = _forest(key, m["subgroups"], m["auroc"])
        if forest:
            parts.append(f'<img alt="{html.escape(key)} subgroup forest plot" src="{forest}">')
        srows = [
            [
                f"{s['by']}={s['value']}",
                s["n"],
                s["n_pos"],
                s["n_neg"],
                s["auroc"],
                s["auroc_ci"],
                s["sensitivity"],
                s["sensitivity_ci"],
                "; ".join(s["flag_reasons"]),
            ]
            for s in m["subgroups"]
        ]
        parts.append(
            _table(
                ["subgroup", "n", "n pos", "n neg", "AUROC", "95 % CI", "sensitivity", "CI", "flag"],
                srows,
                ["flag" if s["flagged"] else "" for s in m["subgroups"]],
            )
        )
    return "\n".join(parts)


def write_report(
    path: Path, metrics: dict[str, Any], analyses: dict[str, dict[str, FindingAnalysis]], versions: Sequence[str]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>triage-node evaluation: "
        f"{e(metrics['profile'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Triage evaluation on local labels: profile {e(metrics['profile'])}</h1>",
        "<p><b>Research use only. Not a medical device.</b> These numbers describe this cohort; "
        "they are estimates with the uncertainty shown.</p>",
    ]
    if metrics.get("is_test_model"):
        parts.append(
            '<div class="banner warn">RANDOM TEST MODEL: these scores mean nothing. '
            "Nothing here is a clinical result.</div>"
        )
    parts.append(
        _table(
            ["fact", "value"],
            [
                ["profile version", metrics["profile_version"]],
                ["model", metrics["model_id"]],
                ["weights SHA-256", metrics["weights_sha256"]],
                ["preprocessing", ", ".join(versions)],
                ["labelled studies", metrics["n_labelled"]],
                ["studies scored", metrics["n_studies"]],
                ["bootstrap resamples (seed)", f"{metrics['bootstrap']} ({metrics['seed']})"],
                ["target sensitivity (urgent findings)", metrics["target_sensitivity"]],
                ["labels.csv SHA-256", metrics["labels_file_sha256"]],
            ],
        )
    )
    if metrics["warnings"]:
        parts.append(
            '<div class="banner">'
            + "".join(f'<p class="warn">WARNING {e(w)}</p>' for w in metrics["warnings"])
            + "</div>"
        )
    flagged = [(k, s) for k, m in metrics["findings"].items() for s in m["subgroups"] if s["flagged"]]
    if flagged:
        parts.append(
            '<div class="banner"><p class="warn">Subgroups clearly below the whole cohort:</p><ul>'
            + "".join(
                f"<li>{e(k)}: {e(s['by'])}={e(s['value'])} ({e('; '.join(s['flag_reasons']))})</li>" for k, s in flagged
            )
            + "</ul><p>Clearly below: the subgroup's 95 % interval lies wholly under the "
            "cohort's estimate. Across many findings and subgroups a few such flags arise by chance: look at "
            "the subgroup's size and at whether the same subgroup is flagged for several findings.</p></div>"
        )
    if len(versions) > 1:
        keys = list(metrics["findings"])
        rows = [[k] + [metrics["preprocessing"][v]["findings"][k]["auroc"] for v in versions] for k in keys]
        parts.append("<h2>Preprocessing compared (AUROC)</h2>")
        parts.append(_table(["finding", *versions], rows))
    for v in versions:
        parts.append(_version_section(v, metrics["preprocessing"][v], analyses[v]))
    parts.append(
        "<h2>What the numbers mean</h2><ul>"
        "<li><b>AUROC</b>: probability that a random positive study scores above a random negative one "
        "(0.5 = chance). The CI is a stratified bootstrap percentile interval.</li>"
        "<li><b>Sensitivity / specificity / PPV / NPV</b> count <i>score &ge; threshold</i> as positive; "
        "Wilson 95 % intervals. <b>indeterminate</b>: the fraction of studies whose score falls in the "
        "band (an urgent finding there gives no AI assessment).</li>"
        "<li><b>ECE</b>: mean gap between score and observed frequency over 10 equal-count bins; "
        "<b>Brier</b>: mean squared error of the score as a probability. Zero-shot scores are not "
        "calibrated probabilities: use the reliability diagram, not the raw score.</li>"
        "<li><b>Suggested</b>: urgent findings get the highest threshold reaching the target "
        "sensitivity; routine findings the Youden point. The band is the bootstrap spread of that "
        "threshold.</li></ul></body></html>"
    )
    Path(path).write_text("\n".join(parts), encoding="utf-8")
