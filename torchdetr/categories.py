"""Category metadata: the COCO 2017 detection ids (1..90, with gaps) and their names."""

from __future__ import annotations

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


def category_names_from_coco(categories: list[dict]) -> dict[int, str]:
    """``{id: name}`` from the ``categories`` list of a COCO annotation file."""
    return {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
