"""One-line inference: ``Detector.from_pretrained(name_or_path).predict(images)``.

Pre-processing is the original validation recipe (shortest side ``image_size``, longest at most
``max_size``, ImageNet normalisation); images of different sizes are padded into one batch
(``NestedTensor``). Detections are the queries whose most likely real class (the softmax without
"no object", as in the original notebook) has a probability above ``threshold``. Mask models also
segment: ``predict(images, task="panoptic")`` gives each image's panoptic segmentation (an id map at
the image's size and its segments, :mod:`.panoptic`).

Padding changes DETR's outputs slightly (the backbone's normalisation makes the padded border
non-zero, and that leaks a few pixels into the valid region), so an image predicted alone and the
same image in a batch with larger images give detections that agree closely but not bit for bit —
the original has the same property. Use ``batch_size=1`` where exact reproducibility matters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, overload

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..data.io import load_rgb_image, to_upright_rgb
from ..data.transforms import chosen_size, validation_size
from ..engine.runtime import resolve_device
from ..errors import ConfigError, DataError
from ..models.postprocess import PostProcess, check_finite_outputs
from ..structures import NestedTensor, nested_tensor_from_tensor_list
from .attention import AttentionMaps, capture_attention
from .detection import Detection
from .loading import load_model
from .optimize import optimize
from .panoptic import PANOPTIC_THRESHOLD, PanopticPrediction, panoptic_from_outputs
from .precision import FAITHFUL, check_precision
from .tiles import DEFAULT_OVERLAP, Tiling, detect_tiled
from .tracking import DEFAULT_LOST_SECONDS, Tracker, track_predictions
from .video import DetectBatch, FramePrediction, VideoReader, VideoSource, predict_frames, video_source

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | np.ndarray | Tensor
"""A path, a PIL image, an [H, W, 3] / [H, W] numpy array or a [3, H, W] / [H, W] tensor (RGB).

Arrays and tensors are uint8 in 0..255 or float in [0, 1]."""

DEFAULT_THRESHOLD = 0.7  # the original notebook's
DEFAULT_BATCH_SIZE = 4
TASKS = ("detection", "panoptic")
Task = Literal["detection", "panoptic"]
ModelRunner = Callable[[NestedTensor], Mapping[str, Tensor]]


def _uint8_hwc(array: np.ndarray, what: str) -> np.ndarray:
    """Float [0, 1] or uint8 image array [H, W] / [H, W, C] → uint8 [H, W, 3]."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DataError(f"{what}: expected an RGB image of shape [H, W, 3] (or [H, W]), got {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[:, :, :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 1):
            raise DataError(
                f"{what}: float images must hold RGB values in [0, 1] (got {np.nanmin(array):.3g}..{np.nanmax(array):.3g}); "
                "pass un-normalised images: the detector normalises them itself"
            )
        return np.round(np.nan_to_num(array) * 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.size and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    raise DataError(f"{what}: unsupported image dtype {array.dtype} (use uint8 0..255 or float 0..1)")


def to_pil_image(image: ImageInput, what: str = "image") -> Image.Image:
    """Any accepted input → RGB PIL image; every input type goes through the same uint8 pixels.

    Paths and PIL images go through the data layer's one image loader (``torchdetr.data.io``), as in
    training: turned upright by their EXIF orientation, and converted to 8-bit RGB by its mode rules
    (alpha over white, 16-bit rescaled, ...). Tensors are channels-first [3, H, W] (or [H, W]); numpy
    arrays are channels-last [H, W, 3] (or [H, W]).
    """
    if isinstance(image, (str, Path)):
        return load_rgb_image(image)
    if isinstance(image, Image.Image):
        return to_upright_rgb(image, what)
    if isinstance(image, Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)
        elif tensor.dim() != 2:
            raise DataError(f"{what}: expected a [3, H, W] image tensor, got shape {tuple(image.shape)}")
        return Image.fromarray(_uint8_hwc(tensor.numpy(), what))
    if isinstance(image, np.ndarray):
        return Image.fromarray(_uint8_hwc(image, what))
    raise TypeError(f"{what}: expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")


@contextmanager
def _opened(source: str | Path | VideoSource | VideoReader, every: int) -> Iterator[VideoReader]:
    """An open ``VideoReader`` for ``source`` (closed afterwards), or ``source`` itself when it is one (left open)."""
    if isinstance(source, VideoReader):
        yield source
        return
    with VideoReader(source if isinstance(source, VideoSource) else video_source(source), every) as reader:
        yield reader


def _checked_threshold(threshold: float) -> float:
    """``threshold`` when it is a score threshold in [0, 1), else ``ConfigError``."""
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
    return threshold


class Detector:
    """A detection model with its pre- and post-processing.

    ``model`` maps a NestedTensor (images [B, 3, H, W], mask [B, H, W]) to ``pred_logits``
    [B, Q, K+1] and ``pred_boxes`` [B, Q, 4] (and ``pred_masks`` [B, Q, H/4, W/4] for mask models): a
    DETR/DETRsegm module, or any callable with that contract (e.g. an ONNX runner; attention maps then
    are unavailable). ``isthing``: ``{category id: is a thing}`` for panoptic segmentation (ids not in it
    follow the COCO convention: ids up to 90 are things).

    ``precision`` (PyTorch models): ``faithful`` runs the model as built (the original's computation),
    ``fp32``/``bf16``/``fp16`` its fast path ``torchdetr.optimize(model, precision)`` (same weights;
    fp32 within 1e-4 of faithful). Attention maps always come from the faithful model.
    """

    source: str | None = None  # how error messages name the model (its file or official name), when known

    def __init__(
        self,
        model: nn.Module | ModelRunner,
        category_names: Mapping[int, str] | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        image_size: int = 800,
        max_size: int | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        focal: bool = False,
        precision: str = FAITHFUL,
        isthing: Mapping[int, bool] | None = None,
    ) -> None:
        _checked_threshold(threshold)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        check_precision(precision)
        if precision != FAITHFUL and not isinstance(model, nn.Module):
            raise ConfigError(f"--precision {precision} applies to PyTorch models; an exported model runs as exported")
        self.precision = precision
        self.faithful_model = model
        self.model = optimize(model, precision) if isinstance(model, nn.Module) else model
        self.category_names = dict(category_names or {})
        self.threshold = threshold
        self.image_size, self.max_size = validation_size(image_size, max_size)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._transform: Callable | None = None
        self._postprocess = PostProcess(focal=focal)  # sigmoid top-k for models trained with --cls_loss focal
        self.isthing = dict(isthing) if isthing is not None else None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device | None = "auto",
        threshold: float = DEFAULT_THRESHOLD,
        *,
        image_size: int | None = None,
        max_size: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = FAITHFUL,
    ) -> Detector:
        """Official model name (``detr_resnet50``, … downloaded once) or a checkpoint file (ours or the original's).

        ``image_size``/``max_size`` default to the model's own (``LoadedModel.image_size``/``max_size``:
        800/1333 for the official models, the training run's validation resize for a checkpoint).
        ``precision``: ``faithful`` (default), or a fast path: ``fp32``, ``bf16``, ``fp16`` (CUDA).
        """
        check_precision(precision)
        resolved = resolve_device(device)
        loaded = load_model(name_or_path, device=resolved)
        image_size, max_size = chosen_size(image_size, max_size, (loaded.image_size, loaded.max_size))
        detector = cls(
            loaded.model,
            loaded.category_names,
            threshold=threshold,
            image_size=image_size,
            max_size=max_size,
            device=resolved,
            batch_size=batch_size,
            focal=loaded.config.cls_loss == "focal",
            precision=precision,
            isthing=loaded.isthing,
        )
        detector.source = str(name_or_path)
        return detector

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        device: str | torch.device | None = "auto",
        threshold: float = DEFAULT_THRESHOLD,
        *,
        image_size: int | None = None,
        max_size: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Detector:
        """A model exported by ``detr export`` (ONNX), run with onnxruntime.

        Class names and the input size come from the file's metadata (``torchdetr.category_names``,
        ``torchdetr.image_size``/``max_size``); without them, names are the class ids and the size
        is 800/1333. ``device``: ``cpu`` runs on onnxruntime's CPU provider, otherwise CUDA is used
        when available.
        """
        from .runtimes import OnnxRunner

        resolved = resolve_device(device)
        providers = ["CPUExecutionProvider"] if resolved.type == "cpu" else None
        runner = OnnxRunner(path, providers=providers)
        return cls._from_runner(runner, path, threshold, image_size, max_size, batch_size)

    @classmethod
    def from_exported(
        cls,
        path: str | Path,
        device: str | torch.device | None = "auto",
        threshold: float = DEFAULT_THRESHOLD,
        *,
        image_size: int | None = None,
        max_size: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Detector:
        """An exported file by its suffix: ONNX (``.onnx``, INT8 included) → :meth:`from_onnx`; OpenVINO IR (``.xml``).

        Class names and the input size come from the file's metadata, as for ONNX.
        """
        from .export_contract import format_from_path
        from .runtimes import OpenVinoRunner

        fmt = format_from_path(path)
        if fmt == "onnx":
            return cls.from_onnx(path, device, threshold, image_size=image_size, max_size=max_size, batch_size=batch_size)
        if fmt != "openvino":
            raise ConfigError(f"{path}: predict and serve run ONNX (.onnx) and OpenVINO (.xml) files, not {fmt}")
        return cls._from_runner(OpenVinoRunner(path), path, threshold, image_size, max_size, batch_size)

    @classmethod
    def _from_runner(cls, runner: ModelRunner, path: str | Path, threshold: float, image_size: int | None,
                     max_size: int | None, batch_size: int) -> Detector:
        """A detector over an exported model's runner: class names, input size and loss kind from its metadata."""
        config = runner.config
        image_size, max_size = chosen_size(image_size, max_size, runner.input_size)
        detector = cls(runner, runner.category_names, threshold=threshold, image_size=image_size, max_size=max_size,
                       device="cpu", batch_size=batch_size, focal=config is not None and config.cls_loss == "focal")
        detector.source = str(path)
        return detector

    # ------------------------------------------------------------------ pre-processing
    def preprocess(self, image: Image.Image) -> Tensor:
        """RGB PIL image → normalised [3, H', W'] tensor (resized as in the original validation)."""
        if self._transform is None:
            from ..data.transforms import make_transforms

            self._transform = make_transforms("val", self.image_size, self.max_size)
        tensor, _ = self._transform(image, None)
        return tensor

    def batch(self, images: Sequence[Image.Image]) -> NestedTensor:
        """PIL images → padded batch on the detector's device (tensors [B, 3, H, W], mask [B, H, W])."""
        return nested_tensor_from_tensor_list([self.preprocess(im) for im in images]).to(self.device)

    # ------------------------------------------------------------------ prediction
    @overload
    def predict(self, images: ImageInput, threshold: float | None = ..., batch_size: int | None = ...,
                task: Literal["detection"] = ..., *, tile: int | None = ..., overlap: float = ...,
                tile_full: bool = ...) -> list[Detection]: ...

    @overload
    def predict(self, images: Sequence[ImageInput], threshold: float | None = ..., batch_size: int | None = ...,
                task: Literal["detection"] = ..., *, tile: int | None = ..., overlap: float = ...,
                tile_full: bool = ...) -> list[list[Detection]]: ...

    @overload
    def predict(self, images: ImageInput, threshold: float | None = ..., batch_size: int | None = ...,
                task: Literal["panoptic"] = ...) -> PanopticPrediction: ...

    @overload
    def predict(self, images: Sequence[ImageInput], threshold: float | None = ..., batch_size: int | None = ...,
                task: Literal["panoptic"] = ...) -> list[PanopticPrediction]: ...

    def predict(self, images, threshold=None, batch_size=None, task="detection", *, tile=None, overlap=DEFAULT_OVERLAP,
                tile_full=False):
        """Detect objects (or, with ``task="panoptic"``, segment) in one image or a list of images.

        ``task="detection"``: a list of ``Detection`` per image, sorted by decreasing score; ``threshold``
        (default: the detector's) keeps queries whose best real-class probability exceeds it (0 keeps all Q).
        ``task="panoptic"`` (mask models): a ``PanopticPrediction`` per image, the id map at the image's size
        and its segments (``segments_info``); ``threshold`` defaults to the original's 0.85.

        ``tile`` (px, detection only): detect in overlapping ``tile`` × ``tile`` windows (``overlap``: fraction
        shared with each neighbour; ``tile_full``: the whole image too), ``batch_size`` windows per forward
        pass, and merge them (``torchdetr.inference.tiles``): for small objects in large images.
        """
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        single = not isinstance(images, (list, tuple))
        items: Sequence[ImageInput] = [images] if single else images
        batch_size = batch_size or self.batch_size
        if tile is not None and task != "detection":
            raise ConfigError(f"tile: tiled inference is for task 'detection', not {task!r}")
        tiling = None if tile is None else Tiling(tile, overlap, tile_full)
        results: list = []
        for start in range(0, len(items), batch_size):
            chunk = [to_pil_image(im, f"image {start + i}") for i, im in enumerate(items[start:start + batch_size])]
            if task == "panoptic":
                results.extend(self.segment(chunk, threshold))
            else:
                results.extend(self.detect(chunk, threshold) if tiling is None else
                               [self.detect_tiled(image, tiling, threshold, batch_size) for image in chunk])
        return results[0] if single else results

    def detect_tiled(self, image: Image.Image, tiling: Tiling, threshold: float | None = None,
                     batch_size: int | None = None) -> list[Detection]:
        """Detections of one RGB PIL image found window by window (``tiles.detect_tiled``), boxes in its pixels."""
        return detect_tiled(image, lambda crops: self.detect(crops, threshold), tiling, batch_size or self.batch_size)

    # ------------------------------------------------------------------ videos
    def _frame_detector(self, threshold: float | None, batch_size: int, tiling: Tiling | None) -> DetectBatch:
        if tiling is None:
            return lambda frames: self.detect(frames, threshold)
        return lambda frames: [self.detect_tiled(frame, tiling, threshold, batch_size) for frame in frames]

    def predict_video(
        self,
        source: str | Path | VideoSource | VideoReader,
        *,
        every: int = 1,
        threshold: float | None = None,
        batch_size: int | None = None,
        tile: int | None = None,
        overlap: float = DEFAULT_OVERLAP,
        tile_full: bool = False,
    ) -> Iterator[FramePrediction]:
        """Detections of every ``every``-th frame of a video file, stream URL or camera index, as a generator.

        ``source`` may also be an open ``VideoReader`` (its own ``every`` applies; it is left open).

        Frames are decoded and predicted ``batch_size`` at a time (``torchdetr.inference.video``);
        each ``FramePrediction`` has the frame index, its time stamp (s), the RGB frame and its
        detections. Tiling options as in ``predict``.
        """
        tiling = None if tile is None else Tiling(tile, overlap, tile_full)
        batch_size = batch_size or self.batch_size
        with _opened(source, every) as reader:
            yield from predict_frames(reader, self._frame_detector(threshold, batch_size, tiling), batch_size)

    def track(
        self,
        source: str | Path | VideoSource | VideoReader,
        *,
        every: int = 1,
        threshold: float | None = None,
        batch_size: int | None = None,
        tile: int | None = None,
        overlap: float = DEFAULT_OVERLAP,
        tile_full: bool = False,
        lost_seconds: float = DEFAULT_LOST_SECONDS,
    ) -> Iterator[FramePrediction]:
        """``predict_video`` with track ids (``FramePrediction.track_ids``) from ByteTrack (``inference.tracking``).

        A track survives ``lost_seconds`` without a matching detection.
        """
        tiling = None if tile is None else Tiling(tile, overlap, tile_full)
        batch_size = batch_size or self.batch_size
        with _opened(source, every) as reader:
            tracker = Tracker(float(reader.output_rate), self.threshold if threshold is None else threshold,
                              lost_seconds=lost_seconds)
            predictions = predict_frames(reader, self._frame_detector(threshold, batch_size, tiling), batch_size)
            yield from track_predictions(predictions, tracker)

    @torch.inference_mode()
    def detect(self, images: Sequence[Image.Image], threshold: float | None = None) -> list[list[Detection]]:
        """One forward pass over a batch of RGB PIL images (no internal splitting)."""
        outputs = self.model(self.batch(images))
        sizes = torch.tensor([(im.height, im.width) for im in images], device=outputs["pred_boxes"].device)
        return self.detections_from_outputs(outputs, sizes, threshold)

    @torch.inference_mode()
    def segment(self, images: Sequence[Image.Image], threshold: float | None = None) -> list[PanopticPrediction]:
        """Panoptic segmentation of a batch of RGB PIL images in one forward pass (mask models only).

        ``threshold``: score above which a query's segment is kept (default 0.85, the original's).
        """
        threshold = _checked_threshold(PANOPTIC_THRESHOLD if threshold is None else threshold)
        samples = self.batch(images)
        outputs = self.model(samples)
        if "pred_masks" not in outputs:
            raise ConfigError("panoptic segmentation needs a mask model (an official *_panoptic model or a checkpoint "
                              "trained with --masks); this model predicts boxes only")
        check_finite_outputs(outputs, self.source)  # NaN scores would keep no segment: an empty map, silently
        return panoptic_from_outputs(outputs, samples.image_sizes, [(im.height, im.width) for im in images],
                                     threshold=threshold, isthing=self.isthing, category_names=self.category_names)

    def detections_from_outputs(
        self, outputs: Mapping[str, Tensor], image_sizes: Tensor, threshold: float | None = None
    ) -> list[list[Detection]]:
        """``pred_logits`` [B, Q, K+1], ``pred_boxes`` [B, Q, 4], ``image_sizes`` [B, 2] (H, W) → detections."""
        threshold = _checked_threshold(self.threshold if threshold is None else threshold)
        check_finite_outputs(outputs, self.source)
        results = self._postprocess({"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]},
                                    image_sizes)
        if not results:
            return []
        # one device → host copy per output for the whole batch (not per image): [B, Q] and [B, Q, 4]
        batch = {key: torch.stack([r[key] for r in results]).cpu() for key in ("scores", "labels", "boxes", "queries")}
        detections = []
        for scores, labels, boxes, queries in zip(batch["scores"].float(), batch["labels"].tolist(),
                                                  batch["boxes"].float().tolist(), batch["queries"].tolist()):
            # queries: a row's object query (focal models: rows are (query, class) pairs)
            keep = torch.nonzero(scores > threshold).flatten()
            order = keep[scores[keep].argsort(descending=True, stable=True)].tolist()
            detections.append([
                Detection(box=tuple(boxes[r]), score=float(scores[r]), label=labels[r],  # type: ignore[arg-type]
                          name=self.category_names.get(labels[r], str(labels[r])), query=queries[r])
                for r in order
            ])
        return detections

    # ------------------------------------------------------------------ attention
    @torch.inference_mode()
    def attention(self, image: ImageInput, threshold: float | None = None) -> AttentionMaps:
        """Encoder self-attention and decoder cross-attention of the last layers for one image.

        Returns ``AttentionMaps`` with ``encoder`` [h, w, h, w] (attention of each feature cell
        over all cells), ``decoder`` [Q, h, w] (each query's attention over the feature grid, sums
        to 1 over valid cells), both averaged over heads, and the image's detections. Captured
        with forward hooks that are removed afterwards; the model is not changed.
        """
        model = self.faithful_model  # the fast path's fused attention computes no weights
        if not isinstance(model, nn.Module):
            raise ConfigError("attention maps need a PyTorch model (this detector runs an exported model)")
        pil = to_pil_image(image)
        samples = self.batch([pil])
        with capture_attention(model) as captured:
            outputs = model(samples)
        detections = self.detections_from_outputs(outputs, torch.tensor([[pil.height, pil.width]]), threshold)[0]
        if captured.decoder is None:
            raise ConfigError(f"{type(model).__name__}: no decoder attention was captured (not a DETR transformer?)")
        h, w = captured.feature_size
        encoder = None
        if captured.encoder is not None:
            encoder = captured.encoder[0].reshape(h, w, h, w).float().cpu()
        decoder = captured.decoder[0].reshape(-1, h, w).float().cpu()
        valid = ~captured.mask[0].cpu() if captured.mask is not None else torch.ones(h, w, dtype=torch.bool)
        return AttentionMaps(
            encoder=encoder,
            decoder=decoder,
            valid=valid,
            input_size=tuple(samples.tensors.shape[-2:]),  # type: ignore[arg-type]
            image_size=(pil.height, pil.width),
            detections=detections,
        )

