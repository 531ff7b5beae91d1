"""``spcl report RUN_DIR``: one self-contained HTML page about a training run, and the PNGs it shows.

Everything comes from what a run leaves in its folder: ``metrics.csv`` (one row per epoch: losses,
clusters, un-clustered instances, alpha, pseudo-label quality when the truth is known, evaluations),
``config.yaml``, the newest evaluation's ranked lists (``eval-epochN/``), and the checkpoint
(``last.pth``), whose memory holds the last epoch's labels (and, for SpCL's hybrid memory, one
feature per target training image: the embedding is drawn from those with no image read; for the
methods whose memory holds clusters or proxies the training images' features are extracted). The
page inlines its images (base64) and its style: no script, no font, nothing from
outside, so it can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spcl.utils.files import atomic_output, write_text

__all__ = ["write_report"]

_STYLE = """
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 0; color: #222; background: #f4f5f7; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 32px 0 8px; border-bottom: 2px solid #e3e5e8; padding-bottom: 4px; }
p.sub { color: #555; margin: 0 0 16px; font-size: 15px; }
p.note { color: #555; font-size: 14px; max-width: 900px; }
table.summary { border-collapse: collapse; font-size: 15px; margin: 8px 0; }
table.summary td, table.summary th { padding: 5px 14px 5px 0; text-align: left; vertical-align: top; }
table.summary th { color: #555; font-weight: normal; }
table.data { border-collapse: collapse; font-size: 14px; }
table.data th, table.data td { border: 1px solid #dde0e4; padding: 4px 10px; text-align: right; }
table.data th { background: #f0f2f5; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; border: 1px solid #e3e5e8; }
figcaption { color: #555; font-size: 14px; margin-top: 4px; max-width: 900px; }
pre { background: #f6f8fa; border: 1px solid #e3e5e8; padding: 12px; font-size: 13px; overflow-x: auto; max-height: 520px; }
"""

# What matplotlib writes into every PNG unless told otherwise (it names a web address).
_NO_METADATA = {"Software": None}


def _read_metrics(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, np.ndarray] = {}
    for key in rows[0] if rows else []:
        values = []
        for row in rows:
            try:
                values.append(float(row[key]) if row[key] not in ("", None) else math.nan)
            except ValueError:
                values.append(math.nan)
        columns[key] = np.array(values)
    return columns


def _has(metrics: dict[str, np.ndarray], key: str) -> bool:
    return key in metrics and bool(np.isfinite(metrics[key]).any())


def _figure(width: float = 8.0, height: float = 3.8) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11, "legend.fontsize": 10,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt.subplots(figsize=(width, height), dpi=110)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_output(path, what="a picture of the report") as tmp:
            fig.savefig(tmp, format="png", metadata=_NO_METADATA)
    finally:
        plt.close(fig)
    return path


def _epochs_axis(ax: Any, epochs: np.ndarray) -> None:
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if len(epochs) <= 20:
        ax.set_xticks(epochs)


_TERM_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def _plot_losses(m: dict[str, np.ndarray], out: Path) -> Path | None:
    if not _has(m, "loss"):
        return None
    fig, ax = _figure()
    epochs = m["epoch"]
    # the method's named terms (loss_source, loss_target, loss_intra, ...), those that ever moved
    terms = [key for key in m if key.startswith("loss_") and _has(m, key) and not np.allclose(np.nan_to_num(m[key]), 0)]
    if len(terms) != 1:  # one term alone is the total
        ax.plot(epochs, m["loss"], "o-", color="#333333", label="total")
    for key, colour in zip(terms, _TERM_COLOURS * 2):
        label = key[len("loss_"):]
        ax.plot(epochs, m[key], "o-", color=colour, label=label if len(terms) > 1 else f"{label} (the total)")
    ax.set_ylabel("loss (epoch mean)")
    ax.set_title("Training loss")
    _epochs_axis(ax, epochs)
    ax.legend(frameon=False)
    return _save(fig, out)


def _plot_clusters(m: dict[str, np.ndarray], out: Path) -> Path | None:
    if not _has(m, "clusters"):
        return None
    fig, ax = _figure()
    epochs = m["epoch"]
    ax.plot(epochs, m["clusters"], "o-", color="#2ca02c", label="clusters")
    if _has(m, "outliers"):
        ax.plot(epochs, m["outliers"], "s--", color="#9467bd", label="un-clustered instances")
    ax.set_ylabel("count")
    ax.set_title("Pseudo labels per epoch")
    _epochs_axis(ax, epochs)
    alpha = m.get("alpha", np.array([]))
    alpha = alpha[np.isfinite(alpha)]
    if len(alpha) and np.ptp(alpha) < 1e-9:
        ax.set_title(f"Pseudo labels per epoch (self-paced alpha {alpha[0]:.3f} throughout)")
        ax.legend(frameon=False)
    elif len(alpha):
        twin = ax.twinx()
        twin.plot(epochs, m["alpha"], ":", color="#ff7f0e", label="alpha (self-paced threshold)")
        twin.set_ylabel("alpha")
        twin.spines["top"].set_visible(False)
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], frameon=False, loc="best")
    else:
        ax.legend(frameon=False)
    return _save(fig, out)


def _plot_quality(m: dict[str, np.ndarray], out: Path) -> Path | None:
    keys = [("pl_pair_precision", "pairwise precision", "#1f77b4"), ("pl_pair_recall", "pairwise recall", "#d62728"),
            ("pl_nmi", "NMI", "#2ca02c")]
    if not any(_has(m, k) for k, _, _ in keys):
        return None
    fig, ax = _figure()
    epochs = m["epoch"]
    for key, label, colour in keys:
        if _has(m, key):
            ax.plot(epochs, 100 * m[key], "o-", color=colour, label=label)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Pseudo labels against the true identities")
    _epochs_axis(ax, epochs)
    ax.legend(frameon=False)
    return _save(fig, out)


def _plot_accuracy(m: dict[str, np.ndarray], out: Path) -> Path | None:
    if not _has(m, "mAP"):
        return None
    fig, ax = _figure()
    done = np.isfinite(m["mAP"])
    epochs = m["epoch"][done]
    ax.plot(epochs, 100 * m["mAP"][done], "o-", color="#1f77b4", label="mAP")
    if _has(m, "rank1"):
        ax.plot(epochs, 100 * m["rank1"][done], "s-", color="#ff7f0e", label="rank-1")
    for x, y in zip(epochs, 100 * m["mAP"][done]):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, -15), ha="center", fontsize=9, color="#1f77b4")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Evaluation on the target test set")
    _epochs_axis(ax, m["epoch"])
    ax.legend(frameon=False, loc="best")
    return _save(fig, out)


def _memory_embedding(run: Path, config: dict[str, Any], out: Path, max_points: int, seed: int) -> tuple[Path | None, str]:
    """t-SNE (or UMAP) of the target features of the checkpoint's memory, coloured by pseudo label;
    returns the PNG (None when the checkpoint has no target memory) and a caption."""
    from spcl.models import load_checkpoint

    checkpoint = run / "last.pth"
    if not checkpoint.is_file():
        return None, "no last.pth in the run folder: no embedding"
    state = load_checkpoint(checkpoint)
    memory = state.get("memory", {})
    if "features" not in memory:
        return None, "the checkpoint has no memory: no embedding"
    method = _method_class(config)
    if method is None:
        return None, f"the run's memory.kind {config.get('memory', {}).get('kind')!r} is not registered here: no embedding"
    rng = np.random.default_rng(seed)
    labels = method.state_target_labels(memory)
    features = method.state_target_features(memory)
    if features is None:
        # the memory holds no instance features (one per cluster or proxy): they are extracted from the images
        chosen = np.sort(rng.choice(len(labels), min(max_points, len(labels)), replace=False))
        x, total, where = _target_features(checkpoint, config, chosen)
        if x is None:
            return None, where
        labels = np.where(labels >= 0, labels, -1 - np.arange(len(labels)))  # an outlier is a class of its own
        y = labels[chosen]
        kind = "the training images' features under the final encoder"
    else:
        total = len(features)
        if total < 10:
            return None, "the memory holds no target features (a run without target training): no embedding"
        chosen = np.sort(rng.choice(total, min(max_points, total), replace=False))
        x, y = features[chosen], labels[chosen]
        kind = "the memory's target instance features"
    points, method = _embed(x, seed)
    values, counts = np.unique(labels, return_counts=True)
    size = dict(zip(values.tolist(), counts.tolist()))
    clustered = np.array([size[v] > 1 for v in y])
    palette = [c for i, c in enumerate(_tab20()) if i not in (14, 15)]  # tab20 without its greys
    shown = [v for v, _ in sorted(((v, c) for v, c in size.items() if c > 1), key=lambda t: (-t[1], t[0]))]
    shown = shown[: len(palette)]
    fig, ax = _figure(7.5, 6.2)
    ax.scatter(points[~clustered, 0], points[~clustered, 1], s=7, c="#c7c7c7", marker="x", linewidths=0.6,
               label=f"un-clustered ({int((~clustered).sum())})")
    others = clustered & ~np.isin(y, shown)
    ax.scatter(points[others, 0], points[others, 1], s=9, c="#8c8c8c", alpha=0.6,
               label=f"other clusters ({int(others.sum())})")
    for i, v in enumerate(shown):
        mask = y == v
        ax.scatter(points[mask, 0], points[mask, 1], s=16, color=palette[i],
                   label=f"the {len(shown)} largest clusters" if i == 0 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(f"Target training features ({len(x)} of {total} images), by pseudo label")
    ax.legend(frameon=False, loc="upper right", markerscale=2)
    _save(fig, out)
    caption = (f"{method} of {len(x)} of {kind} after the last epoch ({total} in all). The "
               f"{len(shown)} largest clusters have a colour each; the other clusters are dark grey, un-clustered "
               "instances light grey crosses.")
    return out, caption


def _target_features(checkpoint: Path, config: dict[str, Any], chosen: np.ndarray) -> tuple[np.ndarray | None, int, str]:
    """Features of the chosen target training images (sorted training-list order) under the
    checkpoint's encoder, their total number, or None and why not."""
    from spcl.data import load
    from spcl.inference.extractor import FeatureExtractor

    data = config.get("data", {})
    try:
        target = load(data["target"], data.get("root"))
    except Exception as exc:  # the data may have moved since training: the rest of the report still stands
        return None, 0, f"the target training images could not be read ({exc}): no embedding"
    items = target.train
    if len(items) <= int(chosen.max(initial=0)):
        return None, 0, "the target's training images are not the ones the run trained on: no embedding"
    extractor = FeatureExtractor(checkpoint, "cuda" if _cuda() else "cpu")
    return extractor([items[i][0] for i in chosen]), len(items), ""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _tab20() -> list[tuple[float, ...]]:
    import matplotlib

    return [matplotlib.colormaps["tab20"](i) for i in range(20)]


def _embed(x: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    try:
        import umap  # noqa: PLC0415 (optional)

        return umap.UMAP(random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        pass
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"


def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _figure_html(path: Path | None, alt: str, caption: str) -> str:
    if path is None:
        return ""
    return f"<figure>{_image_tag(path, alt)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _method_class(config: dict[str, Any]) -> Any:
    """The registered memory class of the run's ``memory.kind`` (None when it is not registered here)."""
    from spcl.memory import registered_memories

    return registered_memories().get(config.get("memory", {}).get("kind", "hybrid"))


def _clusters_caption(m: dict[str, np.ndarray], config: dict[str, Any]) -> str:
    from spcl.config import PseudoLabelConfig  # noqa: PLC0415 (the report's imports stay light)

    method = _method_class(config)
    known = PseudoLabelConfig.__dataclass_fields__
    pseudo = PseudoLabelConfig(**{k: v for k, v in config.get("pseudo", {}).items() if k in known})
    discarded = (method.pseudo_settings(pseudo) if method is not None else pseudo).discard_outliers
    outliers = "left out of the epoch's training" if discarded else "trained on as their own classes"
    alpha = m.get("alpha", np.array([]))
    tail = ", and the self-paced threshold alpha." if np.isfinite(alpha).any() else "."
    return (f"Clusters found by DBSCAN on the Jaccard distance each epoch and the target instances left "
            f"un-clustered ({outliers}){tail}")


def _method(config: dict[str, Any]) -> str:
    memory = config.get("memory", {})
    method = _method_class(config)
    if method is None:
        return f"memory.kind {memory.get('kind')}"
    if config.get("mode") not in ("uda", "usl"):  # a baseline: the memory, not the method, is what it shares
        return f"memory.kind {method.kind}"
    title = method.title or f"memory.kind {method.kind}"
    update = memory.get("cluster_update")
    return f"{title}, {update} update" if update else title


def _summary_rows(m: dict[str, np.ndarray], config: dict[str, Any]) -> list[tuple[str, str]]:
    data, model, optim = config.get("data", {}), config.get("model", {}), config.get("optim", {})
    rows = [("mode", str(config.get("mode", "?"))), ("method", _method(config))]
    if config.get("mode") in ("uda", "source-only") and data.get("source"):
        rows.append(("source", str(data["source"])))
    rows.append(("target", str(data.get("target", "?"))))
    rows.append(("model", f"{model.get('arch', '?')}, {data.get('height', '?')}x{data.get('width', '?')} images"))
    done = int(np.nanmax(m["epoch"])) if _has(m, "epoch") else 0
    rows.append(("epochs", f"{done} of {optim.get('epochs', '?')}"))
    if _has(m, "seconds"):
        total = float(np.nansum(m["seconds"]))
        rows.append(("training time", f"{total / 60:.1f} min"))
    if _has(m, "mAP"):
        done_eval = np.flatnonzero(np.isfinite(m["mAP"]))
        last = done_eval[-1]
        best = done_eval[np.argmax(m["mAP"][done_eval])]
        ranks = " ".join(f"rank-{r} {100 * m[f'rank{r}'][last]:.1f}%" for r in (1, 5, 10) if _has(m, f"rank{r}"))
        rows.append(("last evaluation", f"epoch {int(m['epoch'][last])}: mAP {100 * m['mAP'][last]:.1f}%  {ranks}"))
        rows.append(("best mAP", f"{100 * m['mAP'][best]:.1f}% at epoch {int(m['epoch'][best])} (chosen on the test set)"))
    return rows


def _epoch_table(m: dict[str, np.ndarray]) -> str:
    columns = [("epoch", "epoch", "{:.0f}"), ("loss", "loss", "{:.3f}"), ("clusters", "clusters", "{:.0f}"),
               ("outliers", "un-clustered", "{:.0f}"), ("pl_pair_precision", "precision %", "{:.1%}"),
               ("pl_pair_recall", "recall %", "{:.1%}"), ("mAP", "mAP %", "{:.1%}"), ("rank1", "rank-1 %", "{:.1%}"),
               ("seconds", "seconds", "{:.0f}")]
    columns = [c for c in columns if _has(m, c[0])]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in columns)
    body = []
    for i in range(len(m["epoch"])):
        cells = []
        for key, _, fmt in columns:
            v = m[key][i]
            text = "" if not math.isfinite(v) else fmt.format(v).rstrip("%")
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="data"><tr>{head}</tr>{"".join(body)}</table>'


def write_report(
    run_dir: str | Path, *, max_points: int = 3000, seed: int = 0, log: Callable[[str], None] = print
) -> Path:
    """Write ``RUN_DIR/report.html`` and its PNGs (``RUN_DIR/report/``); returns the HTML file."""
    import yaml

    from spcl.config import upgrade_settings

    from spcl.inference.visualize import find_evaluation, visualize_run

    run = Path(run_dir)
    metrics_file = run / "metrics.csv"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{run}: no metrics.csv: expected the output folder of spcl train")
    metrics = _read_metrics(metrics_file)
    if not metrics or not len(metrics.get("epoch", [])):
        raise ValueError(f"{metrics_file} holds no finished epoch yet")
    config_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    config = upgrade_settings(yaml.safe_load(config_text) or {}) if config_text else {}
    pictures = run / "report"
    pictures.mkdir(exist_ok=True)
    sections: list[str] = []
    curves = [
        (_plot_losses(metrics, pictures / "loss.png"), "loss curves",
         "Mean contrastive loss per epoch; in UDA the total is the sum of the source and target terms."),
        (_plot_clusters(metrics, pictures / "clusters.png"), "clusters per epoch", _clusters_caption(metrics, config)),
        (_plot_quality(metrics, pictures / "pseudo_labels.png"), "pseudo-label quality",
         "Pairwise precision (same-cluster pairs that are one identity), pairwise recall (same-identity pairs put "
         "in one cluster) and normalised mutual information against the true target identities."),
        (_plot_accuracy(metrics, pictures / "evaluation.png"), "evaluation",
         "Target-domain mAP and rank-1 (CMC) of each evaluation, on the query / gallery split."),
    ]
    sections.append("<h2>Training</h2>" + "".join(_figure_html(p, alt, cap) for p, alt, cap in curves))
    sections.append("<h2>Epochs</h2>" + _epoch_table(metrics))
    try:
        folder = find_evaluation(run)
        lists = visualize_run(folder, pictures, count=8, topk=10)
        part = [f'<h2>Ranked lists ({html.escape(folder.name)})</h2>']
        for name, label in (("worst", "lowest"), ("best", "highest")):
            for path in lists[name]:
                part.append(_figure_html(path, f"{name} queries", f"The queries with the {label} average precision, "
                                         "and the first 10 entries of their ranked gallery (protocol-ignored entries removed)."))
        sections.append("".join(part))
    except (FileNotFoundError, ValueError) as exc:
        sections.append(f'<h2>Ranked lists</h2><p class="note">{html.escape(str(exc))}</p>')
    try:
        embedding, caption = _memory_embedding(run, config, pictures / "embedding.png", max_points, seed)
    except (OSError, ValueError, KeyError) as exc:
        embedding, caption = None, f"no embedding: {exc}"
    sections.append("<h2>Target features</h2>" + (_figure_html(embedding, "embedding", caption) if embedding
                                                   else f'<p class="note">{html.escape(caption)}</p>'))
    sections.append(f"<h2>Configuration</h2><pre>{html.escape(config_text or '(no config.yaml)')}</pre>")
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _summary_rows(metrics, config))
    title = f"spcl run: {run.resolve().name}"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><main><h1>{html.escape(title)}</h1>"
        f'<p class="sub">{html.escape(str(run.resolve()))}</p>'
        f'<table class="summary">{summary}</table>{"".join(sections)}</main></body></html>\n'
    )
    out = write_text(run / "report.html", page, what="the report")
    log(f"report: {out} (pictures in {pictures})")
    return out
