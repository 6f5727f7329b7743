"""Tables and plots of the MHA -> MLA conversion experiments from the run directories `benchmarks/gpu.sh convert`
writes.

    python benchmarks/convert_report.py KEEP/convert --out_dir tutorials/results/convert

(b) MHA -> MLA: the source's final validation loss, each conversion's loss right after converting (its heal runs'
step-0 validation) and after healing with 5% and 10% of the source's tokens, and the same MLA shape trained from
scratch on the source's tokens + 10%; the target is "within 2% of the source at 1/4 of its KV cache after at
most 10%". (a) MLA vs MLA-o: each `litgpt compare` run's final validation loss, per seed and the mean. Writes
`results.md`, `results.json`, `heal_loss_vs_tokens.png` and `mla_o_loss_vs_tokens.png`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from litgpt.benchmark.compare import read_metrics

FRACTIONS = {"quarter": "1/4", "eighth": "1/8"}
HEALS = (5_000_000, 10_000_000)
SOURCE_TOKENS = 100_000_000


def val_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(tokens, val loss) of every validation of a run, in order (tokens 0 for a validation before the first step)."""
    return [(row.get("tokens", 0.0), row["val_loss"]) for row in read_metrics(run_dir) if "val_loss" in row]


def final_val(run_dir: Path) -> Optional[float]:
    curve = val_curve(run_dir) if (run_dir / "logs").is_dir() else []
    return curve[-1][1] if curve else None


def conversion_rows(root: Path) -> list[dict]:
    """One row per conversion: KV share, losses after conversion / healing / from scratch, and the gap to the source."""
    source = final_val(root / "mha")
    rows = []
    for name, share in FRACTIONS.items():
        if not (root / f"mla-{name}").is_dir():
            continue
        report = json.loads((root / f"mla-{name}" / "convert_report.json").read_text())
        row: dict = {"conversion": name, "kv_share": share, "source_val_loss": source,
                     "kv_bytes_per_token": report.get("kv_bytes_per_token")}
        for heal in HEALS:
            run = root / f"heal-{name}-{heal}"
            curve = val_curve(run) if (run / "logs").is_dir() else []
            if curve:
                row["converted_val_loss"] = curve[0][1]  # the initial validation: right after the conversion
                row[f"healed_{heal // 1_000_000}M_val_loss"] = curve[-1][1]
        row["scratch_val_loss"] = final_val(root / f"scratch-{name}")
        healed = row.get(f"healed_{HEALS[-1] // 1_000_000}M_val_loss")
        row["gap_to_source"] = (healed / source - 1) if healed is not None and source else None
        rows.append(row)
    return rows


def mla_o_rows(root: Path) -> list[dict]:
    """Per model of the MLA vs MLA-o comparison: the final val loss of each seed's `litgpt compare` run, and the mean."""
    per_model: dict[str, dict[int, float]] = {}
    for results in sorted(root.glob("mla-o-seed*/results.json")):
        seed = int(results.parent.name.removeprefix("mla-o-seed"))
        for name, model in json.loads(results.read_text())["models"].items():
            per_model.setdefault(name, {})[seed] = model["val_loss"]
    return [{"model": name, "seeds": seeds, "mean_val_loss": sum(seeds.values()) / len(seeds)}
            for name, seeds in per_model.items()]


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_markdown(conversions: list[dict], mla_o: list[dict], path: Path) -> None:
    lines = ["## (b) MHA -> MLA: pythia-70m, 100M tokens, converted, healed", "",
             "| KV cache | source val loss | converted | healed 5M (5%) | healed 10M (10%) | from scratch, 110M | "
             "healed 10% vs source |", "|---|---|---|---|---|---|---|"]
    for r in conversions:
        gap = "-" if r["gap_to_source"] is None else f"{100 * r['gap_to_source']:+.2f}%"
        lines.append(f"| {r['kv_share']} | {_fmt(r['source_val_loss'])} | {_fmt(r.get('converted_val_loss'))} | "
                     f"{_fmt(r.get('healed_5M_val_loss'))} | {_fmt(r.get('healed_10M_val_loss'))} | "
                     f"{_fmt(r['scratch_val_loss'])} | {gap} |")
    lines += ["", "Target: after healing with at most 10% of the source's tokens, within 2% of the source at 1/4 of "
              "its KV cache.", "", "## (a) MLA vs MLA-o: pythia-70m shapes, 50M tokens", "",
              "| model | " + " | ".join(f"seed {s}" for s in sorted({s for r in mla_o for s in r["seeds"]}))
              + " | mean |"]
    seeds = sorted({s for r in mla_o for s in r["seeds"]})
    lines.append("|---|" + "---|" * (len(seeds) + 1))
    for r in mla_o:
        cells = " | ".join(_fmt(r["seeds"].get(s)) for s in seeds)
        lines.append(f"| {r['model']} | {cells} | {_fmt(r['mean_val_loss'])} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(root: Path, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # left: the whole runs; right: the heal window, where the converted models' first validation (about 7) is off
    # the scale, with the source's final loss and the target's 2% band
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax in axes:
        _heal_curves(root, ax)
    source = final_val(root / "mha")
    if source is not None:
        zoom = axes[1]
        zoom.axhspan(source, source * 1.02, color="grey", alpha=0.2, label="within 2% of the source")
        zoom.set_xlim((SOURCE_TOKENS - 5e6) / 1e6, (SOURCE_TOKENS + max(HEALS) + 1e6) / 1e6)
        zoom.set_ylim(source - 0.05, source + 0.45)
        zoom.set_title("the heal window (the converted models start at about 7, off the scale)", fontsize=8)
    for ax in axes:
        _label(ax)
    _save(fig, out_dir / "heal_loss_vs_tokens.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for results in sorted(root.glob("mla-o-seed*/results.json")):
        for name in json.loads(results.read_text())["models"]:
            run = results.parent / name
            if (run / "logs").is_dir():
                xs, ys = zip(*val_curve(run))
                ax.plot([x / 1e6 for x in xs], ys, label=f"{name} ({results.parent.name.removeprefix('mla-o-')})")
    _label(ax)
    _save(fig, out_dir / "mla_o_loss_vs_tokens.png")


def _heal_curves(root: Path, ax) -> None:
    """The source's, the heals' and the from-scratch runs' validation loss against training tokens, on ax."""
    if (root / "mha" / "logs").is_dir():
        xs, ys = zip(*val_curve(root / "mha"))
        ax.plot([x / 1e6 for x in xs], ys, marker="o", ms=2, label="MHA source", color="black")
    for name, share in FRACTIONS.items():
        for heal in HEALS:
            run = root / f"heal-{name}-{heal}"
            if (run / "logs").is_dir():
                xs, ys = zip(*val_curve(run))
                ax.plot([(SOURCE_TOKENS + x) / 1e6 for x in xs], ys, marker="o", ms=3,
                        label=f"converted to MLA at {share} KV, healed {heal // 1_000_000}M")
        if (root / f"scratch-{name}" / "logs").is_dir():
            xs, ys = zip(*val_curve(root / f"scratch-{name}"))
            ax.plot([x / 1e6 for x in xs], ys, linestyle="--", marker="o", ms=2, label=f"MLA at {share} KV from scratch")


def _label(ax) -> None:
    """Axis labels and legend of a validation-loss-vs-tokens plot."""
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("validation loss")
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> None:
    """Write a figure and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the convert/ directory that benchmarks/gpu.sh convert leaves in KEEP")
    parser.add_argument("--out_dir", type=Path, default=Path("tutorials/results/convert"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    conversions, mla_o = conversion_rows(args.root), mla_o_rows(args.root)
    (args.out_dir / "results.json").write_text(json.dumps({"conversions": conversions, "mla_o": mla_o}, indent=1))
    write_markdown(conversions, mla_o, args.out_dir / "results.md")
    plot(args.root, args.out_dir)
    print((args.out_dir / "results.md").read_text())


if __name__ == "__main__":
    main()
