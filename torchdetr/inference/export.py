"""Export a DETR model for deployment: ONNX (run with onnxruntime), TorchScript or a ``torch.export`` program.

Every format takes a padded batch as two plain tensors (``inference.export_contract`` names them),

- ``images`` [B, 3, H, W] float32, normalised as for the eager model, zero padded;
- ``mask`` [B, H, W] bool, True on padding (the ``mask`` of a ``NestedTensor``),

and returns, without auxiliary decoder outputs,

- ``pred_logits`` [B, Q, K+1] and ``pred_boxes`` [B, Q, 4] ((cx, cy, w, h) in [0, 1]);
- ``pred_masks`` [B, Q, ceil(H/4), ceil(W/4)] for mask (panoptic) models (``DETRsegm``).

ONNX uses the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``) on the
same ``ExportedProgram`` that ``export_program`` saves; TorchScript is a trace of the same wrapper
(see ``docs/export.md`` for the reasons and the limits). Batch size and image size are dynamic.
Every export is checked, unless asked not to, by ``inference.verify.verify_export``; the files run
with ``inference.runtimes``. Files carry metadata (``default_metadata``): the model's classes and
queries, and from a loaded model (``loaded_model_metadata``) its config, category names and the
input size it expects, which ``Detector.from_onnx`` reads back.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from ..atomic_write import replace_atomic
from ..errors import ConfigError, OutputError
from ..models.detr import DETR
from ..models.segmentation import DETRsegm
from ..structures import NestedTensor
from ..version import __version__
from .export_contract import (
    BOX_OUTPUTS,
    DEFAULT_OPSET,
    DEFAULT_SAMPLE_SIZE,
    INPUT_NAMES,
    MASK_OUTPUT,
    METADATA_FILE,
    MIN_OPSET,
    check_format,
    check_sample_size,
    tolerance_for,
)
from .loading import LoadedModel
from .runtimes import OPENVINO_METADATA_KEY, quiet_jit_deprecation, require_onnx, require_openvino
from .verify import ExportCheck, eval_mode, verify_export

log = logging.getLogger(__name__)

EXPORT_BATCH = 2  # batch of the export sample: torch.export specialises sizes 0 and 1


# ---------------------------------------------------------------------------------------------
# The exported module
# ---------------------------------------------------------------------------------------------
class ExportWrapper(nn.Module):
    """Plain-tensor interface of a ``DETR`` / ``DETRsegm`` model (its own modules, no copy).

    ``forward(images [B, 3, H, W], mask [B, H, W] bool)`` → ``(pred_logits [B, Q, K+1],
    pred_boxes [B, Q, 4])`` plus ``pred_masks`` [B, Q, H/4, W/4] for mask models.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, DETR | DETRsegm):
            raise ConfigError(f"export supports DETR and DETRsegm models, got {type(model).__name__}")
        self.model = model

    @property
    def has_masks(self) -> bool:
        """True for mask (panoptic) models, which also return ``pred_masks``."""
        return isinstance(self.model, DETRsegm)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the returned tensors, in order."""
        return (*BOX_OUTPUTS, MASK_OUTPUT) if self.has_masks else BOX_OUTPUTS

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        if images.dim() != 4 or mask.shape != (images.shape[0], images.shape[2], images.shape[3]):
            raise ValueError(
                f"expected images [B, 3, H, W] and mask [B, H, W], got {tuple(images.shape)} and {tuple(mask.shape)}"
            )
        out = self.model(NestedTensor(images, mask))
        return tuple(out[name] for name in self.output_names)


@contextmanager
def _export_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode without auxiliary outputs, then restore both.

    Auxiliary outputs are for training losses; tracing them adds dead nodes, and with one decoder
    layer an empty ``unbind`` that ``torch.export.load`` cannot read back (torch 2.14).
    """
    detr = model.detr if isinstance(model, DETRsegm) else model
    aux_loss = detr.aux_loss
    detr.aux_loss = False
    try:
        with eval_mode(model):
            yield
    finally:
        detr.aux_loss = aux_loss


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def example_inputs(
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    batch_size: int = EXPORT_BATCH,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Random export inputs: images [B, 3, H, W] and mask [B, H, W]; the last image is padded on
    the bottom and right quarter (when B > 1) so that the padding path is traced."""
    h, w = check_sample_size(sample_size)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, h, w, generator=generator)
    mask = torch.zeros(batch_size, h, w, dtype=torch.bool)
    if batch_size > 1:
        mask[-1, h * 3 // 4:] = True
        mask[-1, :, w * 3 // 4:] = True
        images[-1] = images[-1].masked_fill(mask[-1], 0.0)
    return images.to(device), mask.to(device)


def _dynamic_shapes(dynamic: bool) -> dict[str, dict[int, Any]] | None:
    """Batch, height and width of both inputs dynamic; the wrapper's shape check ties the mask's to the images'."""
    if not dynamic:
        return None
    dim = torch.export.Dim.DYNAMIC  # an error, not a silent constant, if the trace specialises a size
    return {"images": {0: dim, 2: dim, 3: dim}, "mask": {0: dim, 1: dim, 2: dim}}


def _export(wrapper: ExportWrapper, inputs: tuple[Tensor, Tensor], dynamic: bool) -> torch.export.ExportedProgram:
    return torch.export.export(wrapper, inputs, dynamic_shapes=_dynamic_shapes(dynamic))


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------
def default_metadata(model: nn.Module, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Key → text stored in exported files: version, classes, queries, masks, input convention, + ``extra``."""
    wrapper = ExportWrapper(model)
    values = {
        "torchdetr.version": __version__,
        "torchdetr.num_classes": str(model.num_classes),
        "torchdetr.num_queries": str(model.num_queries),
        "torchdetr.masks": str(wrapper.has_masks).lower(),
        "torchdetr.inputs": "images [B,3,H,W] float32 ImageNet-normalised, zero padded; mask [B,H,W] bool, True = padding",
        "torchdetr.outputs": ",".join(wrapper.output_names),
    }
    values.update({str(k): str(v) for k, v in (extra or {}).items()})
    return values


def loaded_model_metadata(loaded: LoadedModel) -> dict[str, str]:
    """What a loaded model knows beyond its weights, as export metadata (``Detector.from_onnx`` reads it).

    ``torchdetr.source``, ``torchdetr.config`` (the ``DETRConfig`` as JSON), ``torchdetr.category_names``
    (id → name, JSON), ``torchdetr.image_size`` and ``torchdetr.max_size`` (the resize the model expects).
    """
    return {
        "torchdetr.source": loaded.source,
        "torchdetr.config": json.dumps(loaded.config.to_dict()),
        "torchdetr.category_names": json.dumps({str(k): v for k, v in loaded.category_names.items()}),
        "torchdetr.image_size": str(loaded.image_size),
        "torchdetr.max_size": str(loaded.max_size),
    }


def _prepare_output(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give the file to write")
    return path


def _write_file(path: Path, save: Callable[[IO[bytes]], Any]) -> None:
    """Write an exported file atomically: ``save(f)`` writes a temporary file that is renamed over ``path``
    (``torchdetr.atomic_write``); a failure (disk full, read-only…) removes it and names ``path``."""
    def produce(tmp: Path) -> None:
        with tmp.open("w+b") as f:
            save(f)

    replace_atomic(path, produce, what="exported model")


def _checked(model: nn.Module, path: Path, fmt: str, sample_size: Sequence[int], dynamic: bool) -> ExportCheck:
    """``verify_export`` of a file just written (the format's tolerance), logged (a warning when it fails)."""
    check = verify_export(model, path, fmt, sample_size=sample_size, dynamic=dynamic, tolerance=tolerance_for(fmt))
    if check.passed:
        log.info("%s matches the eager model: max abs difference %s", path, check)
    else:
        log.warning("%s differs from the eager model by more than %.0e: %s", path, check.tolerance, check)
    return check


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------
@contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence the ONNX optimiser's per-pass notes and harmless warnings ("Skipping constant folding")."""
    levels = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING,
              "onnxscript.optimizer._constant_folding": logging.ERROR}
    loggers = {name: logging.getLogger(name) for name in levels}
    saved = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(max(levels[name], logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(saved[name])


def _name_dynamic_dims(proto: Any) -> None:
    """Rename the exporter's symbols (``s31``…) to ``batch``/``height``/``width`` in every shape."""
    images = next(value for value in proto.graph.input if value.name == "images")
    dims = images.type.tensor_type.shape.dim
    names = {dims[0].dim_param: "batch", dims[2].dim_param: "height", dims[3].dim_param: "width"}
    names.pop("", None)  # static sizes have no symbol
    if not names:
        return
    symbol = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = symbol.sub(lambda m: names[m.group(0)], dim.dim_param)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    dynamic: bool = True,
    check: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> ExportCheck | None:
    """Write ``model`` as an ONNX file with inputs ``images``/``mask`` (see the module docstring).

    ``dynamic``: batch, height and width are free (else fixed to batch 1 × ``sample_size``).
    ``check``: compare with the eager model in onnxruntime (``verify_export``) and return the result
    (``None`` without the check).
    """
    require_onnx()
    import onnx

    if opset < MIN_OPSET:
        raise ConfigError(f"opset must be at least {MIN_OPSET}, got {opset}")
    path = _prepare_output(path)
    wrapper = ExportWrapper(model)
    with _export_mode(model), _quiet_onnx_exporter():
        inputs = example_inputs(sample_size, EXPORT_BATCH if dynamic else 1, _device(model))
        program = _export(wrapper, inputs, dynamic)
        onnx_program = torch.onnx.export(
            program, inputs, dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
            output_names=list(wrapper.output_names), verbose=False, optimize=True,
        )
    proto = onnx_program.model_proto
    _name_dynamic_dims(proto)
    for key, value in default_metadata(model, metadata).items():
        proto.metadata_props.add(key=key, value=value)
    _write_file(path, lambda f: onnx.save_model(proto, f, format="protobuf"))
    log.debug("wrote %s (ONNX opset %d, %.1f MB)", path, opset, path.stat().st_size / 2**20)
    return _checked(model, path, "onnx", sample_size, dynamic) if check else None


# ---------------------------------------------------------------------------------------------
# TorchScript and torch.export programs
# ---------------------------------------------------------------------------------------------
def export_torchscript(
    model: nn.Module,
    path: str | Path,
    *,
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    check: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> ExportCheck | None:
    """Write a ``torch.jit.trace`` of ``ExportWrapper(model)`` (see docs/export.md for why a trace).

    ``torch.jit.load(path)(images, mask)`` returns the tuple of ``ExportWrapper``. Sizes read in
    ``forward`` are traced, so batch and image size stay free (checked as ``export_onnx`` does).
    Returns the ``verify_export`` result, or ``None`` without ``check``.
    """
    path = _prepare_output(path)
    wrapper = ExportWrapper(model)
    with _export_mode(model), torch.no_grad(), quiet_jit_deprecation(), warnings.catch_warnings():
        # the trace notes Python ints/bools taken from sizes (the query count, the shape check);
        # the check below runs other sizes and batches, which is what these notes warn about
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example_inputs(sample_size, EXPORT_BATCH, _device(model)), check_trace=False)
        extra = {METADATA_FILE: json.dumps(default_metadata(model, metadata))}
        _write_file(path, lambda f: torch.jit.save(traced, f, _extra_files=extra))
    log.debug("wrote %s (TorchScript trace, %.1f MB)", path, path.stat().st_size / 2**20)
    return _checked(model, path, "torchscript", sample_size, True) if check else None


def export_program(
    model: nn.Module,
    path: str | Path,
    *,
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    dynamic: bool = True,
    check: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> ExportCheck | None:
    """Write a ``torch.export`` ExportedProgram of ``ExportWrapper(model)`` with ``torch.export.save``.

    ``torch.export.load(path).module()(images, mask)`` returns the wrapper's tuple; batch, height and
    width are dynamic unless ``dynamic=False``. Returns the ``verify_export`` result (``None``
    without ``check``).
    """
    path = _prepare_output(path)
    wrapper = ExportWrapper(model)
    with _export_mode(model):
        program = _export(wrapper, example_inputs(sample_size, EXPORT_BATCH if dynamic else 1, _device(model)), dynamic)
    extra = {METADATA_FILE: json.dumps(default_metadata(model, metadata))}
    _write_file(path, lambda f: torch.export.save(program, f, extra_files=extra))
    log.debug("wrote %s (torch.export program, %.1f MB)", path, path.stat().st_size / 2**20)
    return _checked(model, path, "program", sample_size, dynamic) if check else None


# ---------------------------------------------------------------------------------------------
# OpenVINO and INT8 (both from the ONNX export)
# ---------------------------------------------------------------------------------------------
def export_openvino(
    model: nn.Module,
    path: str | Path,
    *,
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    dynamic: bool = True,
    check: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> ExportCheck | None:
    """Write ``model`` as OpenVINO IR (``path`` = the ``.xml``; the weights go to the ``.bin`` beside it).

    Converted with ``openvino.convert_model`` from the ONNX export (same inputs, outputs and dynamic
    sizes), weights kept in float32; the metadata is stored in the IR's rt_info. Runs with
    ``runtimes.OpenVinoRunner``; checked like the ONNX file (``verify_export``, tolerance 1e-4).
    """
    require_openvino()
    import tempfile

    import openvino as ov

    path = _prepare_output(path)
    if path.suffix.lower() != ".xml":
        raise ConfigError(f"an OpenVINO model is written as an .xml file (+ .bin beside it), got {path}")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_path, sample_size=sample_size, dynamic=dynamic, check=False, metadata=metadata)
        converted = ov.convert_model(str(onnx_path))
        converted.set_rt_info(json.dumps(default_metadata(model, metadata)), [OPENVINO_METADATA_KEY])
        staged = Path(tmp) / "model.xml"
        ov.save_model(converted, str(staged), compress_to_fp16=False)
        # the weights first, then the .xml that names them: each appears whole or not at all
        for source, target in ((staged.with_suffix(".bin"), path.with_suffix(".bin")), (staged, path)):
            replace_atomic(target, lambda out, source=source: shutil.copyfile(source, out), what="exported model")
    log.debug("wrote %s (OpenVINO IR)", path)
    return _checked(model, path, "openvino", sample_size, dynamic) if check else None


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Hide onnxruntime.quantization's advice printed on the root logger at every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


INT8_OP_TYPES = ("Conv",)  # quantised operators: the backbone's convolutions (most of the FLOPs); attention stays float


def export_int8(
    model: nn.Module,
    path: str | Path,
    calibration: Sequence[NestedTensor],
    *,
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    check: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> ExportCheck | None:
    """Write an INT8 ONNX file: the ONNX export with its convolutions quantised by ``onnxruntime.quantization``.

    Static post-training quantisation (QDQ, per-channel int8 weights, uint8 activations) whose activation
    ranges are calibrated on ``calibration`` (padded batches of real, pre-processed images: ``detr export
    --data``). Runs with onnxruntime like any ONNX file; the check accepts ``INT8_TOLERANCE``.
    """
    require_onnx()
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ConfigError("INT8 export needs calibration images (--data DIR)")
    path = _prepare_output(path)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            mask = batch.mask if batch.mask is not None else torch.zeros_like(batch.tensors[:, 0], dtype=torch.bool)
            return {"images": batch.tensors.float().cpu().numpy(), "mask": mask.cpu().numpy()}

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_path, sample_size=sample_size, dynamic=True, check=False, metadata=metadata)
        replace_atomic(path, lambda out: quantize_static(
            str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OP_TYPES)),
            what="exported model")
    log.debug("wrote %s (INT8 ONNX)", path)
    return _checked(model, path, "int8", sample_size, True) if check else None


def export_model(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    *,
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    metadata: Mapping[str, str] | None = None,
    calibration: Sequence[NestedTensor] | None = None,
) -> ExportCheck | None:
    """Dispatch to ``export_onnx`` / ``export_torchscript`` / ``export_program`` / ``export_openvino`` /
    ``export_int8`` (which needs ``calibration`` batches) by ``fmt``."""
    check_format(fmt)
    if fmt == "openvino":
        return export_openvino(model, path, sample_size=sample_size, dynamic=dynamic, check=check, metadata=metadata)
    if fmt == "int8":
        return export_int8(model, path, calibration or [], sample_size=sample_size, check=check, metadata=metadata)
    if fmt == "onnx":
        return export_onnx(model, path, opset=opset, sample_size=sample_size, dynamic=dynamic, check=check,
                           metadata=metadata)
    if fmt == "torchscript":
        if not dynamic:
            log.warning("TorchScript traces keep sizes free: dynamic=False has no effect")
        return export_torchscript(model, path, sample_size=sample_size, check=check, metadata=metadata)
    return export_program(model, path, sample_size=sample_size, dynamic=dynamic, check=check, metadata=metadata)
