"""The retrieval run's report (recall curves, the top images found for some test captions) and
its model card, read from the run directory's files.

Example::

    write_report("runs/flickr8k")     # runs/flickr8k/report.html
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

from .metrics import KS, recall_curve


def _curves_png(ranks: dict[str, dict[str, list[int]]]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for split, styles in (("test", "-"), ("val", "--")):
        for way, label in (("i2t", "image->text"), ("t2i", "text->image")):
            if split in ranks:
                curve = recall_curve(ranks[split][way], 50)
                ax.plot(range(1, 51), curve, styles, label=f"{split} {label}")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report.html, written atomically."""
    from ..report.html import thumbnail
    from ..run.artifacts import atomic_write_text

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ranks = json.loads((run_dir / "ranks.json").read_text())
    examples = json.loads((run_dir / "examples.json").read_text()) if (run_dir / "examples.json").is_file() else []
    rows = []
    for prefix, name in (("", "validation"), ("test_", "test")):
        if f"{prefix}i2t_r1" not in metrics:
            continue
        for way, label in (("i2t", "image->text"), ("t2i", "text->image")):
            cells = "".join(f"<td>{metrics[f'{prefix}{way}_r{k}']:.3f}</td>" for k in KS)
            rows.append(f"<tr><td>{name}</td><td>{label}</td>{cells}<td>{metrics[f'{prefix}{way}_median_rank']:.0f}</td></tr>")
    tiles = []
    for ex in examples:
        found = "".join(
            f'<figure class="{"hit" if f["path"] == ex["answer"] else ""}"><img src="{thumbnail(f["path"]) or ""}" '
            f'alt="{escape(Path(f["path"]).name)}"><figcaption>{f["score"]:.3f}</figcaption></figure>' for f in ex["found"]
        )
        tiles.append(f'<div class="query"><p>&ldquo;{escape(ex["caption"])}&rdquo; (the right image ranked {ex["rank"]})</p>{found}</div>')
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>retrieval report: {escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} table{{border-collapse:collapse}} td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}
figure{{display:inline-block;margin:4px;text-align:center}} figure img{{width:140px;height:140px;object-fit:cover}} figure.hit img{{outline:4px solid #2a2}}
</style></head><body><h1>Image-text retrieval: {escape(run_dir.name)}</h1>
<h2>Recall</h2><table><tr><th>set</th><th>direction</th>{''.join(f'<th>R@{k}</th>' for k in KS)}<th>median rank</th></tr>{''.join(rows)}</table>
<h2>Recall curves</h2><img src="{_curves_png(ranks)}" alt="recall@K curves">
<h2>Top images for some test captions</h2><p>The right image is outlined in green.</p>{''.join(tiles) or '<p>(no test set)</p>'}
</body></html>"""
    atomic_write_text(run_dir / "report.html", html)
    return run_dir / "report.html"


def model_card(recipe: Any, metrics: dict[str, Any]) -> str:
    """README.md of a retrieval run."""
    m, s = recipe.model, recipe.strategy
    lines = [
        "---", "library_name: finetunekit", "pipeline_tag: zero-shot-image-classification", "tags: [image-text-retrieval, dual-encoder]", "---",
        f"# Image-text dual encoder ({s.name})", "",
        f"Image tower `{m.image_backbone}`, text tower `{m.text_backbone}`, each projected to a shared {recipe.task.embed_dim}-d space and "
        f"trained with the symmetric InfoNCE loss (learned temperature, in-batch negatives, batch size {recipe.train.batch_size}) "
        f"on `{recipe.data.train}` for {recipe.train.epochs} epochs; strategy `{s.name}`"
        + (" (image tower locked: LiT)" if s.image_locked and not s.caches_text else "") + ".", "",
        "| set | direction | R@1 | R@5 | R@10 | median rank |", "| --- | --- | --- | --- | --- | --- |",
    ]
    for prefix, name in (("", "validation"), ("test_", "test")):
        if f"{prefix}i2t_r1" in metrics:
            for way, label in (("i2t", "image->text"), ("t2i", "text->image")):
                lines.append(f"| {name} | {label} | " + " | ".join(f"{metrics[f'{prefix}{way}_r{k}']:.3f}" for k in KS)
                             + f" | {metrics[f'{prefix}{way}_median_rank']:.0f} |")
    lines += ["", "## Use", "", "```python", "import finetunekit", "model = finetunekit.load('RUN_DIR')",
              "model.embed_text(['a dog running on the beach']); model.embed_images(['photo.jpg'])", "```", "",
              "`finetunekit index RUN_DIR photos/ --output photos.index` then `finetunekit search photos.index \"a dog\"`; "
              "`finetunekit predict RUN_DIR --classes ants,bees photo.jpg` classifies from class names alone.", "",
              "## Limitations", "", "Trained on a few thousand captioned photos: it knows the everyday scenes of its training captions "
              "(people, dogs, sports) and little else; scores are cosine similarities, not probabilities.", ""]
    return "\n".join(lines)
