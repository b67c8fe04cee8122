"""Augmentation files: each operation moves a marked box with its pixels, photometric ones leave boxes alone, boxes
leaving the image are dropped and counted, the presets draw what the built-in recipes draw, errors name the file,
the operation and the argument; ``detr data preview`` writes the grid and never replaces an input."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms.v2 import functional as F

from torchdetr.cli import main as cli_main
from torchdetr.data.augment import Augmentation, ClipToImage, augment_transforms, load_augmentation, presets
from torchdetr.data.synthetic import write_coco_folder
from torchdetr.data.transforms import make_transforms, prepare_sample
from torchdetr.errors import ConfigError
from torchdetr.viz.preview import grid_size

WIDTH, HEIGHT = 160, 120
MARK = (60, 30, 110, 70)  # x1, y1, x2, y2 of the red rectangle
GREY = 128

GEOMETRIC = {  # operation → whether the box stays tight around the mark (no rotation)
    "RandomHorizontalFlip: {p: 1.0}": True,
    "RandomVerticalFlip: {p: 1.0}": True,
    "RandomZoomOut: {p: 1.0, fill: 0, side_range: [1.5, 2.5]}": True,
    "RandomIoUCrop: {}": True,
    "RandomAffine: {degrees: 0, translate: [0.2, 0.2], scale: [0.7, 1.3]}": True,
    "RandomAffine: {degrees: [15, 25], shear: 5}": False,
    "RandomRotation: {degrees: [-30, -10]}": False,
    "RandomPerspective: {p: 1.0, distortion_scale: 0.4}": False,
    "RandomResize: {sizes: [90, 200], max_size: auto}": True,
    "RandomSizeCrop: {min_size: 90, max_size: 120}": True,
}
PHOTOMETRIC = [
    "ColorJitter: {brightness: 0.5, contrast: 0.5, saturation: 0.5, hue: 0.1}",
    "RandomPhotometricDistort: {p: 1.0}",
    "RandomGrayscale: {p: 1.0}",
    "GaussianBlur: {kernel_size: 5, sigma: [0.5, 2.0]}",
    "RandomAutocontrast: {p: 1.0}",
    "RandomEqualize: {p: 1.0}",
]


def _augmentation(tmp_path, *operations: str, name: str = "aug.yaml", image_size: int = 120) -> Augmentation:
    path = tmp_path / name
    path.write_text("train:\n" + "".join(f"  - {op}\n" for op in operations))
    return load_augmentation(str(path), image_size)


def _marked_sample():
    pixels = np.full((HEIGHT, WIDTH, 3), GREY, np.uint8)
    x1, y1, x2, y2 = MARK
    pixels[y1:y2, x1:x2] = (255, 0, 0)
    mask = torch.zeros((1, HEIGHT, WIDTH), dtype=torch.uint8)
    mask[0, y1:y2, x1:x2] = 1
    target = {"boxes": torch.tensor([MARK], dtype=torch.float32), "labels": torch.tensor([3]),
              "area": torch.tensor([float((x2 - x1) * (y2 - y1))]), "iscrowd": torch.tensor([0]), "masks": mask}
    return prepare_sample(PIL.Image.fromarray(pixels), target)


def _red_box(image) -> list[float] | None:
    """The box around the clearly red pixels (interpolation blurs the edges: only the core counts)."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else F.to_pil_image(image))
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    ys, xs = np.nonzero(red)
    if not len(xs):
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.mark.parametrize("operation", list(GEOMETRIC))
def test_each_geometric_operation_moves_the_box_with_its_pixels(tmp_path, operation):
    augmentation = _augmentation(tmp_path, operation)
    checked = 0
    for seed in range(6):
        torch.manual_seed(seed)
        image, target = augmentation(*_marked_sample())
        red = _red_box(image)
        if len(target["boxes"]) == 0:  # cropped away: dropped and counted, never a box without its pixels
            assert red is None and augmentation.dropped >= 1
            continue
        box = target["boxes"].as_subclass(torch.Tensor)[0].tolist()
        assert red is not None, operation
        tolerance = 1.5
        assert box[0] - tolerance <= red[0] and box[1] - tolerance <= red[1], (operation, box, red)
        assert red[2] <= box[2] + tolerance and red[3] <= box[3] + tolerance, (operation, box, red)
        if GEOMETRIC[operation]:  # no rotation: the box stays tight around the mark
            assert box_iou(torch.tensor([box]), torch.tensor([red]))[0, 0] > 0.8, (operation, box, red)
        mask = target["masks"].as_subclass(torch.Tensor)[0]
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(xs) and box[0] - tolerance <= xs.min() and xs.max() + 1 <= box[2] + tolerance  # the mask follows
        assert box[1] - tolerance <= ys.min() and ys.max() + 1 <= box[3] + tolerance
        assert len(target["labels"]) == len(target["area"]) == len(target["iscrowd"]) == 1
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("operation", PHOTOMETRIC)
def test_photometric_operations_leave_boxes_and_masks_alone(tmp_path, operation):
    augmentation = _augmentation(tmp_path, operation)
    sample = _marked_sample()
    torch.manual_seed(0)
    image, target = augmentation(*sample)
    assert F.get_size(image) == [HEIGHT, WIDTH]
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor), torch.tensor([MARK], dtype=torch.float32))
    assert torch.equal(target["masks"].as_subclass(torch.Tensor), sample[1]["masks"].as_subclass(torch.Tensor))


def test_boxes_leaving_the_image_are_dropped_from_every_entry_and_counted():
    def push_right(image, target):  # moves the left object (x 0-30) out of the image, the right one stays
        return F.affine(image, angle=0.0, translate=[WIDTH - 40, 0], scale=1.0, shear=[0.0]), {
            **target, "boxes": F.affine(target["boxes"], angle=0.0, translate=[WIDTH - 40, 0], scale=1.0, shear=[0.0]),
            "masks": F.affine(target["masks"], angle=0.0, translate=[WIDTH - 40, 0], scale=1.0, shear=[0.0])}

    image, target = _marked_sample()
    target = {**target, "boxes": tv_tensors.BoundingBoxes([[120.0, 10, 150, 40], [0, 10, 30, 40]], format="XYXY",
                                                          canvas_size=(HEIGHT, WIDTH)),
              "labels": torch.tensor([1, 2]), "area": torch.tensor([900.0, 900.0]), "iscrowd": torch.tensor([0, 0]),
              "masks": tv_tensors.Mask(torch.zeros((2, HEIGHT, WIDTH), dtype=torch.uint8))}
    augmentation = Augmentation([ClipToImage(push_right)], "test")
    _, out = augmentation(image, target)
    assert out["labels"].tolist() == [2] and len(out["masks"]) == len(out["area"]) == len(out["iscrowd"]) == 1
    assert out["boxes"].as_subclass(torch.Tensor).tolist() == [[120.0, 10.0, 150.0, 40.0]]  # clipped to the image
    assert out["area"].tolist() == [900.0]
    assert (augmentation.dropped, augmentation.seen) == (1, 2)


@pytest.mark.parametrize("recipe", ["original", "small"])
@pytest.mark.parametrize("image_size", [800, 128, 333])
def test_presets_draw_what_the_recipes_draw(recipe, image_size):
    assert set(presets()) == {"original", "small"}
    image, target = _marked_sample()
    builtin = make_transforms("train", image_size, recipe=recipe)
    from_file = augment_transforms(recipe, image_size)
    for seed in range(8):
        torch.manual_seed(seed)
        expected_image, expected = builtin(image, target)
        torch.manual_seed(seed)
        got_image, got = from_file(image, target)
        assert torch.equal(got_image, expected_image) and torch.equal(got["boxes"], expected["boxes"])
        assert torch.equal(got["masks"], expected["masks"]) and torch.equal(got["labels"], expected["labels"])


@pytest.mark.parametrize(("lines", "message"), [
    (["Blur: {radius: 3}"], r"aug\.yaml: train\[0\]: unknown operation 'Blur'"),
    (["ColorJitter: {brightnes: 0.2}"], r"aug\.yaml: ColorJitter: unknown argument 'brightnes'"),
    (["ColorJitter: {brightness: -1}"], r"aug\.yaml: ColorJitter\(brightness=-1\): .*brightness"),
    (["RandomResize: {sizes: []}"], r"aug\.yaml: RandomResize: sizes: \[\] is not a non-empty list"),
    (["RandomResize: {sizes: [100], max_size: big}"], r"aug\.yaml: RandomResize: max_size: 'big' is not a positive"),
    (["RandomApply: {transforms: [GaussianBlur: {kernel_size: 4}], p: 0.5}"], r"aug\.yaml: GaussianBlur\(kernel_size=4\)"),
    (["RandomChoice: {transforms: [[RandomHorizontalFlip: {}]], weights: [1]}"],
     r"aug\.yaml: train\[0\]: RandomChoice: unknown argument 'weights'"),
    (["RandomHorizontalFlip: {}", "RandomApply: {p: 0.5}"],
     r"^\S*aug\.yaml: train\[1\]: RandomApply: missing argument 'transforms' \(a list\)$"),
    (["RandomApply: {transforms: [RandomChoice: {p: [1]}]}"],
     r"^\S*aug\.yaml: train\[0\]\.transforms\[0\]: RandomChoice: missing argument 'transforms' \(a list\)$"),
    (["RandomChoice: {transforms: [[RandomHorizontalFlip: {}]], p: [1, 2]}"], r"aug\.yaml: train\[0\]: RandomChoice: p: "),
])
def test_mistakes_are_one_line_errors_naming_file_operation_and_argument(tmp_path, lines, message):
    with pytest.raises(ConfigError, match=message) as err:
        _augmentation(tmp_path, *lines)
    assert "\n" not in str(err.value)


def test_files_that_are_not_augmentation_files_and_conflicting_options_are_refused(tmp_path):
    from torchdetr import DETRConfig
    from torchdetr.errors import MissingFileError

    (tmp_path / "list.yaml").write_text("- RandomHorizontalFlip: {}\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: an augmentation file holds 'train'"):
        load_augmentation(str(tmp_path / "list.yaml"), 128)
    with pytest.raises(MissingFileError, match="not a preset"):
        load_augmentation(str(tmp_path / "nothing.yaml"), 128)
    with pytest.raises(ConfigError, match=r"--augment .* --train_recipe small"):
        DETRConfig(augment="original", train_recipe="small")


def test_preview_writes_the_grid_and_never_replaces_an_input(tmp_path, capsys):
    data = write_coco_folder(tmp_path / "data", num_train=6, num_val=2, seed=0)
    out = tmp_path / "grid.png"
    argv = ["data", "preview", "--augment", "small", "--coco_path", str(data), "--out", str(out), "--images", "3",
            "--repeats", "2", "--image_size", "128"]
    assert cli_main(argv) == 0
    assert "9 panels" in capsys.readouterr().out
    with PIL.Image.open(out) as grid:
        assert grid.size == grid_size(3, 3)  # 3 rows (images) × (the original + 2 draws)
    before = out.read_bytes()
    assert cli_main(argv) == 2  # exists: refused without --overwrite
    assert out.read_bytes() == before
    assert cli_main([*argv, "--overwrite", "--images", "1"]) == 0
    with PIL.Image.open(out) as grid:
        assert grid.size == grid_size(1, 3)
    image = next((data / "images").iterdir())
    original = image.read_bytes()
    assert cli_main([*argv[:-8], "--out", str(image), "--overwrite"]) == 2  # an input, even with --overwrite
    assert image.read_bytes() == original
