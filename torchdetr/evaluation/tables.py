"""The 12 COCO summary numbers: their names (the one list of the project) and tables to print."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# The 12 numbers of ``COCOeval.stats`` for boxes and masks, in order.
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
STAT_DESCRIPTIONS: dict[str, str] = {
    "AP": "AP at IoU=.50:.05:.95 (primary challenge metric)",
    "AP50": "AP at IoU=.50 (PASCAL VOC metric)",
    "AP75": "AP at IoU=.75 (strict metric)",
    "APs": "AP for small objects: area < 32²",
    "APm": "AP for medium objects: 32² < area < 96²",
    "APl": "AP for large objects: area > 96²",
    "AR1": "AR given 1 detection per image",
    "AR10": "AR given 10 detections per image",
    "AR100": "AR given 100 detections per image",
    "ARs": "AR for small objects: area < 32²",
    "ARm": "AR for medium objects: 32² < area < 96²",
    "ARl": "AR for large objects: area > 96²",
}
NUM_STATS = len(STAT_NAMES)
DECIMALS = 3  # digits printed for a score


def check_stats(stats: Sequence[float]) -> None:
    """Refuse anything but the 12 COCOeval stats (a caller's bug, not a user error)."""
    if len(stats) != NUM_STATS:
        raise ValueError(f"expected the {NUM_STATS} COCOeval stats, got {len(stats)} values")


def stats_dict(stats: Sequence[float]) -> dict[str, float]:
    """``{"AP": ..., "AP50": ..., ...}`` from the 12 COCOeval stats (values unchanged; -1: no ground truth)."""
    check_stats(stats)
    return {name: float(v) for name, v in zip(STAT_NAMES, stats)}


def format_score(value: float | None) -> str:
    """A score to 3 decimals; '-' where it is undefined (None, or COCO's -1 for "no ground truth")."""
    if value is None or value < 0 or not math.isfinite(value):
        return "-"
    return f"{value:.{DECIMALS}f}"


def format_stats_table(stats: Sequence[float], title: str = "bbox") -> str:
    """The 12 COCO stats as a fixed-width table: name, value (3 decimals, '-' for -1) and description."""
    check_stats(stats)
    lines = [f"IoU metric: {title}", f"{'metric':<7} {'value':>6}  description"]
    lines += [f"{name:<7} {format_score(v):>6}  {STAT_DESCRIPTIONS[name]}" for name, v in zip(STAT_NAMES, stats)]
    return "\n".join(lines)


def format_per_class_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-category AP (rows of ``PerClassAP``) as a fixed-width table (id, name, AP, AP50, AP75, #GT); '-' where undefined."""
    name_width = max([len("category"), *(len(str(r["name"])) for r in rows)])
    id_width = max([len("id"), *(len(str(r["category_id"])) for r in rows)])
    header = f"{'id':>{id_width}}  {'category':<{name_width}}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}  {'#GT':>6}"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['category_id']:>{id_width}}  {r['name']!s:<{name_width}}  {format_score(r['AP']):>6}  "
            f"{format_score(r['AP50']):>6}  {format_score(r['AP75']):>6}  {r['num_gt']:>6}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Panoptic quality
# ----------------------------------------------------------------------------------------------
PQ_GROUPS: tuple[str, ...] = ("All", "Things", "Stuff")
PQ_DECIMALS = 1  # PQ, SQ, RQ are printed in percent, as panopticapi does


def format_percent(value: float) -> str:
    """A score in [0, 1] as a percentage with one decimal; '-' where it is undefined (NaN)."""
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.{PQ_DECIMALS}f}"


def format_pq_table(groups: Mapping[str, Mapping[str, float]]) -> str:
    """PQ, SQ, RQ (percent) and N (categories counted) of All, Things and Stuff, as panopticapi prints them."""
    lines = [f"{'':<10}| {'PQ':>5}  {'SQ':>5}  {'RQ':>5}  {'N':>4}", "-" * 36]
    for name in PQ_GROUPS:
        g = groups[name]
        lines.append(f"{name:<10}| {format_percent(g['pq']):>5}  {format_percent(g['sq']):>5}  "
                     f"{format_percent(g['rq']):>5}  {int(g['n']):>4}")
    return "\n".join(lines)


def format_pq_per_class_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-category PQ, SQ, RQ (percent; '-' without TP, FP or FN), thing/stuff and the TP, FP, FN counts."""
    name_width = max([len("category"), *(len(str(r["name"])) for r in rows)])
    id_width = max([len("id"), *(len(str(r["category_id"])) for r in rows)])
    lines = [f"{'id':>{id_width}}  {'category':<{name_width}}  {'kind':<5}  {'PQ':>5}  {'SQ':>5}  {'RQ':>5}  "
             f"{'TP':>5}  {'FP':>5}  {'FN':>5}"]
    for r in rows:
        lines.append(
            f"{r['category_id']:>{id_width}}  {r['name']!s:<{name_width}}  {'thing' if r['isthing'] else 'stuff':<5}  "
            f"{format_percent(r['pq']):>5}  {format_percent(r['sq']):>5}  {format_percent(r['rq']):>5}  "
            f"{r['tp']:>5}  {r['fp']:>5}  {r['fn']:>5}"
        )
    return "\n".join(lines)
