"""Category metadata: the COCO 2017 detection ids (1..90, with gaps) and their names, and the COCO
panoptic categories (the 80 detection things plus 53 stuff classes, ids up to 200)."""

from __future__ import annotations

from collections.abc import Iterable

# Index = category id of COCO 2017 instances; "N/A" marks ids that the dataset does not use.
# The official detection checkpoints have 92 class rows: these 91 ids plus "no object".
COCO_CATEGORY_NAMES: tuple[str, ...] = (
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

COCO_CATEGORIES: dict[int, str] = {i: name for i, name in enumerate(COCO_CATEGORY_NAMES) if name != "N/A"}


# COCO panoptic 2017: the things are the 80 detection categories (same ids and names); these are the stuff.
COCO_PANOPTIC_STUFF: dict[int, str] = {
    92: "banner", 93: "blanket", 95: "bridge", 100: "cardboard", 107: "counter", 109: "curtain", 112: "door-stuff",
    118: "floor-wood", 119: "flower", 122: "fruit", 125: "gravel", 128: "house", 130: "light", 133: "mirror-stuff",
    138: "net", 141: "pillow", 144: "platform", 145: "playingfield", 147: "railroad", 148: "river", 149: "road",
    151: "roof", 154: "sand", 155: "sea", 156: "shelf", 159: "snow", 161: "stairs", 166: "tent", 168: "towel",
    171: "wall-brick", 175: "wall-stone", 176: "wall-tile", 177: "wall-wood", 178: "water-other",
    180: "window-blind", 181: "window-other", 184: "tree-merged", 185: "fence-merged", 186: "ceiling-merged",
    187: "sky-other-merged", 188: "cabinet-merged", 189: "table-merged", 190: "floor-other-merged",
    191: "pavement-merged", 192: "mountain-merged", 193: "grass-merged", 194: "dirt-merged", 195: "paper-merged",
    196: "food-other-merged", 197: "building-other-merged", 198: "rock-merged", 199: "wall-other-merged",
    200: "rug-merged",
}
COCO_PANOPTIC_CATEGORIES: dict[int, str] = {**COCO_CATEGORIES, **COCO_PANOPTIC_STUFF}
COCO_PANOPTIC_THING_IDS: frozenset[int] = frozenset(COCO_CATEGORIES)
# The class head of the original's panoptic models (``main.py``: 250 for coco_panoptic; only ids <= 200 are used).
COCO_PANOPTIC_NUM_CLASSES = 250


def num_classes_for_category_ids(ids: Iterable[int]) -> int | None:
    """Class-head size K that covers the category ``ids`` (not remapped): the largest id + 1, but at least the
    original's :data:`COCO_PANOPTIC_NUM_CLASSES` when the ids are COCO panoptic's with stuff among them
    (``main.py`` for ``coco_panoptic``; the official panoptic checkpoints have 250 + 1 class rows). None without ids.
    """
    ids = {int(i) for i in ids}
    if not ids:
        return None
    if ids <= COCO_PANOPTIC_CATEGORIES.keys() and max(ids) > max(COCO_PANOPTIC_THING_IDS):
        return max(COCO_PANOPTIC_NUM_CLASSES, max(ids) + 1)
    return max(ids) + 1


def category_names_from_coco(categories: list[dict]) -> dict[int, str]:
    """``{id: name}`` from the ``categories`` list of a COCO annotation file."""
    return {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
