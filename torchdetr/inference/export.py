"""Export a DETR model for deployment: ONNX (run with onnxruntime), TorchScript or a ``torch.export`` program.

Every format takes a padded batch as two plain tensors,

- ``images`` [B, 3, H, W] float32, normalised as for the eager model, zero padded;
- ``mask`` [B, H, W] bool, True on padding (the ``mask`` of a ``NestedTensor``),

and returns, without auxiliary decoder outputs,

- ``pred_logits`` [B, Q, K+1] and ``pred_boxes`` [B, Q, 4] ((cx, cy, w, h) in [0, 1]);
- ``pred_masks`` [B, Q, ceil(H/4), ceil(W/4)] for mask (panoptic) models (``DETRsegm``).

ONNX uses the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``) on the
same ``ExportedProgram`` that ``export_program`` saves; TorchScript is a trace of the same wrapper
(see ``docs/export.md`` for the reasons and the limits). Batch size and image size are dynamic.
Every export is checked, unless asked not to, against the eager model on inputs of sizes other
than the export sample: one image, then two images of different sizes padded into one batch.
``OnnxRunner`` runs an exported ONNX file and returns the eager model's output dict, so the
post-processors of ``torchdetr.models.postprocess`` work unchanged on its outputs.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.detr import DETR
from ..models.segmentation import DETRsegm
from ..structures import NestedTensor, as_nested_tensor, nested_tensor_from_tensor_list

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "program")
SUFFIXES = {".onnx": "onnx", ".pt2": "program", ".ts": "torchscript", ".torchscript": "torchscript", ".pt": "torchscript"}
DEFAULT_OPSET = 18  # the opset the exporter's ONNX function library is written in (no version conversion)
MIN_OPSET = 18  # converted down to 17, Split nodes keep an opset-18 attribute (invalid; torch 2.14, onnxscript 0.7)
DEFAULT_SAMPLE_SIZE = (800, 1066)  # the validation recipe's shorter side 800, longer side 4/3 of it
MIN_SAMPLE_SIDE = 64  # the validation inputs are about 3/4 of the sample: keep their feature maps > 1 pixel
TOLERANCE = 1e-4  # max |exported - eager| accepted on pred_logits / pred_boxes
EXPORT_BATCH = 2  # batch of the export sample: torch.export specialises sizes 0 and 1
INPUT_NAMES = ("images", "mask")
BOX_OUTPUTS = ("pred_logits", "pred_boxes")
MASK_OUTPUT = "pred_masks"
METADATA_FILE = "torchdetr.json"  # TorchScript / program files: the metadata as one extra JSON file
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"  # said once in docs/export.md rather than per call

Samples = NestedTensor | Tensor | Sequence[Tensor]


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
            raise ValueError(f"export supports DETR and DETRsegm models, got {type(model).__name__}")
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
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run a block with ``model`` in eval mode, then restore every submodule's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


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
        with _eval_mode(model):
            yield
    finally:
        detr.aux_loss = aux_loss


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_sample_size(sample_size: Sequence[int]) -> tuple[int, int]:
    if len(sample_size) != 2 or min(sample_size) < MIN_SAMPLE_SIDE:
        raise ValueError(f"sample_size must be (H, W) with both sides >= {MIN_SAMPLE_SIDE} px, got {tuple(sample_size)}")
    return int(sample_size[0]), int(sample_size[1])


def example_inputs(
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    batch_size: int = EXPORT_BATCH,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Random export inputs: images [B, 3, H, W] and mask [B, H, W]; the last image is padded on
    the bottom and right quarter (when B > 1) so that the padding path is traced."""
    h, w = _check_sample_size(sample_size)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, h, w, generator=generator)
    mask = torch.zeros(batch_size, h, w, dtype=torch.bool)
    if batch_size > 1:
        mask[-1, h * 3 // 4:] = True
        mask[-1, :, w * 3 // 4:] = True
        images[-1] = images[-1].masked_fill(mask[-1], 0.0)
    return images.to(device), mask.to(device)


def validation_batches(
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    *,
    dynamic: bool = True,
    device: torch.device | str = "cpu",
    seed: int = 1,
) -> list[NestedTensor]:
    """Inputs to compare an export with the eager model.

    Dynamic exports: one image of another size than the sample, then a batch of two images of
    different sizes (each padded along one side). Static exports: one image of the sample's size.
    """
    h, w = _check_sample_size(sample_size)
    generator = torch.Generator().manual_seed(seed)

    def image(height: int, width: int) -> Tensor:
        return torch.randn(3, height, width, generator=generator)

    if not dynamic:
        sizes = [[(h, w)]]
    else:
        sizes = [[(h * 3 // 4 + 1, w * 3 // 4 + 3)], [(h // 2 + 7, w * 3 // 4 + 1), (h * 3 // 4 + 5, w // 2 + 3)]]
    return [nested_tensor_from_tensor_list([image(*size) for size in batch]).to(device) for batch in sizes]


def _dynamic_shapes(dynamic: bool) -> dict[str, dict[int, Any]] | None:
    """Batch, height and width of both inputs dynamic; the wrapper's shape check ties the mask's to the images'."""
    if not dynamic:
        return None
    dim = torch.export.Dim.DYNAMIC  # an error, not a silent constant, if the trace specialises a size
    return {"images": {0: dim, 2: dim, 3: dim}, "mask": {0: dim, 1: dim, 2: dim}}


def _export(wrapper: ExportWrapper, inputs: tuple[Tensor, Tensor], dynamic: bool) -> torch.export.ExportedProgram:
    return torch.export.export(wrapper, inputs, dynamic_shapes=_dynamic_shapes(dynamic))


def default_metadata(model: nn.Module, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Key → text stored in exported files: version, classes, queries, masks, input convention, + ``extra``."""
    from .. import __version__

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


def _prepare_output(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------
def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({err.name} is missing): "
            "pip install 'torchdetr[export]'"
        ) from None


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
) -> float | None:
    """Write ``model`` as an ONNX file with inputs ``images``/``mask`` (see the module docstring).

    ``dynamic``: batch, height and width are free (else fixed to batch 1 × ``sample_size``).
    ``check``: compare with the eager model in onnxruntime on ``validation_batches`` and return the
    max abs difference on ``pred_logits``/``pred_boxes`` (``None`` without the check).
    """
    _require_onnx()
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET}, got {opset}")
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
    onnx.save_model(proto, str(path))
    log.debug("wrote %s (ONNX opset %d, %.1f MB)", path, opset, path.stat().st_size / 2**20)
    return _checked(model, path, "onnx", sample_size, dynamic) if check else None


class OnnxRunner:
    """An exported ONNX model run with onnxruntime, called like the eager model.

    ``runner(samples)`` takes a NestedTensor, a list of [3, H_i, W_i] images or a [B, 3, H, W]
    tensor and returns ``{"pred_logits" [B, Q, K+1], "pred_boxes" [B, Q, 4]}`` (+ ``"pred_masks"``
    [B, Q, H/4, W/4]) as float32 torch tensors on the device of the input images.
    ``providers`` default to CUDA (when onnxruntime has it) then CPU; ``threads`` sets
    onnxruntime's intra-op threads (default: its own choice, one per physical core).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        _require_onnx()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{self.path}: not a loadable ONNX model ({first_line})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != list(INPUT_NAMES):
            raise ValueError(f"{self.path}: not a torchdetr export (inputs {inputs}, expected {list(INPUT_NAMES)})")
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.input_shape = tuple(self.session.get_inputs()[0].shape)  # ints where static, names where dynamic

    @property
    def has_masks(self) -> bool:
        """True when the model also returns ``pred_masks``."""
        return MASK_OUTPUT in self.output_names

    @property
    def metadata(self) -> dict[str, str]:
        """The ``torchdetr.*`` (and any other) metadata stored in the file."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def category_names(self) -> dict[int, str]:
        """Class id → name, when the export stored them (``detr export`` does), else ``{}``."""
        text = self.metadata.get("torchdetr.category_names")
        return {int(k): v for k, v in json.loads(text).items()} if text else {}

    def __call__(self, samples: Samples) -> dict[str, Tensor]:
        batch = as_nested_tensor(samples)
        images, mask = batch.tensors, batch.mask
        if mask is None:
            mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        expected = self.input_shape
        if any(isinstance(e, int) and e != a for e, a in zip(expected, images.shape)):
            raise ValueError(
                f"{self.path} was exported with the fixed input shape {list(expected)}, got {list(images.shape)}; "
                "export with dynamic shapes to run other sizes"
            )
        feeds = {
            "images": images.detach().to("cpu", torch.float32).contiguous().numpy(),
            "mask": mask.detach().to("cpu", torch.bool).contiguous().numpy(),
        }
        results = self.session.run(None, feeds)
        return {name: torch.from_numpy(r).to(images.device) for name, r in zip(self.output_names, results)}

    def __repr__(self) -> str:
        return f"OnnxRunner({str(self.path)!r}, outputs={list(self.output_names)}, input={list(self.input_shape)})"


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
) -> float | None:
    """Write a ``torch.jit.trace`` of ``ExportWrapper(model)`` (see docs/export.md for why a trace).

    ``torch.jit.load(path)(images, mask)`` returns the tuple of ``ExportWrapper``. Sizes read in
    ``forward`` are traced, so batch and image size stay free (checked as ``export_onnx`` does).
    Returns the max abs difference on logits/boxes, or ``None`` without ``check``.
    """
    path = _prepare_output(path)
    wrapper = ExportWrapper(model)
    with _export_mode(model), torch.no_grad(), warnings.catch_warnings():
        # the trace notes Python ints/bools taken from sizes (the query count, the shape check);
        # the check below runs other sizes and batches, which is what these notes warn about
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        traced = torch.jit.trace(wrapper, example_inputs(sample_size, EXPORT_BATCH, _device(model)), check_trace=False)
        extra = {METADATA_FILE: json.dumps(default_metadata(model, metadata))}
        torch.jit.save(traced, str(path), _extra_files=extra)
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
) -> float | None:
    """Write a ``torch.export`` ExportedProgram of ``ExportWrapper(model)`` with ``torch.export.save``.

    ``torch.export.load(path).module()(images, mask)`` returns the wrapper's tuple; batch, height and
    width are dynamic unless ``dynamic=False``. Returns the max abs difference on logits/boxes
    (``None`` without ``check``).
    """
    path = _prepare_output(path)
    wrapper = ExportWrapper(model)
    with _export_mode(model):
        program = _export(wrapper, example_inputs(sample_size, EXPORT_BATCH if dynamic else 1, _device(model)), dynamic)
    torch.export.save(program, str(path), extra_files={METADATA_FILE: json.dumps(default_metadata(model, metadata))})
    log.debug("wrote %s (torch.export program, %.1f MB)", path, path.stat().st_size / 2**20)
    return _checked(model, path, "program", sample_size, dynamic) if check else None


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
) -> float | None:
    """Dispatch to ``export_onnx`` / ``export_torchscript`` / ``export_program`` by ``fmt``."""
    if fmt == "onnx":
        return export_onnx(model, path, opset=opset, sample_size=sample_size, dynamic=dynamic, check=check,
                           metadata=metadata)
    if fmt == "torchscript":
        if not dynamic:
            log.warning("TorchScript traces keep sizes free: dynamic=False has no effect")
        return export_torchscript(model, path, sample_size=sample_size, check=check, metadata=metadata)
    if fmt == "program":
        return export_program(model, path, sample_size=sample_size, dynamic=dynamic, check=check, metadata=metadata)
    raise ValueError(f"unknown export format {fmt!r} ({', '.join(FORMATS)})")


def format_from_path(path: str | Path) -> str:
    """``onnx`` for .onnx, ``program`` for .pt2, ``torchscript`` for .pt/.ts/.torchscript."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"cannot tell the export format from {str(path)!r}: use a {', '.join(SUFFIXES)} file name "
            f"or give the format ({', '.join(FORMATS)})"
        )
    return SUFFIXES[suffix]


# ---------------------------------------------------------------------------------------------
# Loading and checking
# ---------------------------------------------------------------------------------------------
class _ModuleRunner:
    """A TorchScript / exported-program module called like the eager model (samples → output dict)."""

    def __init__(self, module: Callable[..., Any], path: Path) -> None:
        self.module = module
        self.path = path

    def __call__(self, samples: Samples) -> dict[str, Tensor]:
        batch = as_nested_tensor(samples)
        mask = batch.mask
        if mask is None:
            mask = torch.zeros(batch.tensors.shape[0], *batch.tensors.shape[-2:], dtype=torch.bool,
                               device=batch.tensors.device)
        with torch.no_grad():
            try:
                outputs = self.module(batch.tensors, mask)
            except AssertionError as err:  # an exported program's input-range guard, e.g. "images.size()[2] >= 33"
                raise ValueError(f"{self.path}: input {list(batch.tensors.shape)} outside the exported range ({err})") from None
        names = (*BOX_OUTPUTS, MASK_OUTPUT)[: len(outputs)]
        return dict(zip(names, outputs))


def load_exported(path: str | Path, fmt: str | None = None) -> Callable[[Samples], dict[str, Tensor]]:
    """An exported file as a callable ``samples → {"pred_logits", "pred_boxes"[, "pred_masks"]}``.

    ``fmt`` defaults to the one named by the file's suffix (``format_from_path``).
    """
    path = Path(path)
    fmt = fmt or format_from_path(path)
    if fmt == "onnx":
        return OnnxRunner(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
            return _ModuleRunner(torch.jit.load(str(path), map_location="cpu"), path)
    if fmt == "program":
        return _ModuleRunner(torch.export.load(str(path)).module(), path)
    raise ValueError(f"unknown export format {fmt!r} ({', '.join(FORMATS)})")


def compare_outputs(
    model: nn.Module, runner: Callable[[Samples], Mapping[str, Tensor]], samples: Samples
) -> dict[str, float]:
    """Max abs difference per output between ``runner(samples)`` and the eager ``model`` (eval mode)."""
    device = _device(model)
    batch = as_nested_tensor(samples).to(device)
    with _eval_mode(model), torch.no_grad():
        expected = model(batch)
    got = runner(batch)
    missing = [name for name in expected if name != "aux_outputs" and name not in got]
    if missing:
        raise ValueError(f"the exported model does not return {', '.join(missing)}")
    return {name: float((got[name].to(device) - expected[name]).abs().max()) for name in got}


def check_export(model: nn.Module, exported_path: str | Path, fmt: str | None, samples: Samples) -> float:
    """Max abs difference of ``pred_logits``/``pred_boxes`` between the exported file and the eager model."""
    diffs = compare_outputs(model, load_exported(exported_path, fmt), samples)
    return max(diffs[name] for name in BOX_OUTPUTS)


def validate_export(
    model: nn.Module,
    exported_path: str | Path,
    fmt: str | None = None,
    *,
    sample_size: Sequence[int] = DEFAULT_SAMPLE_SIZE,
    dynamic: bool = True,
) -> dict[str, float]:
    """Max abs difference per output over ``validation_batches(sample_size, dynamic=dynamic)``."""
    runner = load_exported(exported_path, fmt)
    worst: dict[str, float] = {}
    for batch in validation_batches(sample_size, dynamic=dynamic, device=_device(model)):
        for name, diff in compare_outputs(model, runner, batch).items():
            worst[name] = max(diff, worst.get(name, 0.0))
    return worst


def _checked(model: nn.Module, path: Path, fmt: str, sample_size: Sequence[int], dynamic: bool) -> float:
    diffs = validate_export(model, path, fmt, sample_size=sample_size, dynamic=dynamic)
    worst = max(diffs[name] for name in BOX_OUTPUTS)
    report = ", ".join(f"{name} {diff:.2e}" for name, diff in diffs.items())
    if worst > TOLERANCE:
        log.warning("%s differs from the eager model by more than %.0e: %s", path, TOLERANCE, report)
    else:
        log.info("%s matches the eager model: max abs difference %s", path, report)
    return worst
