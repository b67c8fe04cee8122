"""Run an exported file like the eager model: ``samples → {"pred_logits", "pred_boxes"[, "pred_masks"]}``.

``OnnxRunner`` runs an ONNX file with onnxruntime; ``ModuleRunner`` a TorchScript trace or a
``torch.export`` program; ``load_exported`` picks the one for a file (format from its suffix).
Every runner takes a NestedTensor, a list of [3, H_i, W_i] images (padded for you) or a
[B, 3, H, W] tensor and returns float32 torch tensors, so the post-processors of
``torchdetr.models.postprocess`` and ``Detector`` work unchanged on its outputs.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import DETRConfig
from ..data.build import config_validation_size
from ..errors import ConfigError, InputFileError, MissingExtraError, MissingFileError
from ..models.weight_files import TORCH_ZIP_ADVICE
from ..structures import NestedTensor, as_nested_tensor
from .export_contract import BOX_OUTPUTS, INPUT_NAMES, MASK_OUTPUT, RUNTIME_FORMATS, check_format, format_from_path

log = logging.getLogger(__name__)

Samples = NestedTensor | Tensor | Sequence[Tensor]
ExportedRunner = Callable[[Samples], dict[str, Tensor]]
JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"  # said once in docs/export.md rather than per call


def require_onnx() -> None:
    """``MissingExtraError`` unless onnx, onnxscript and onnxruntime are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({err.name} is missing): "
            "pip install 'torchdetr[export]'"
        ) from None


@contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    """Hide torch 2.14's deprecation warning of ``torch.jit`` calls made by torchdetr itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
        yield


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0].split(TORCH_ZIP_ADVICE)[0] if lines else type(err).__name__


def _padded_inputs(samples: Samples) -> tuple[Tensor, Tensor]:
    """images [B, 3, H, W] and mask [B, H, W] (all False when the samples carry no padding)."""
    batch = as_nested_tensor(samples)
    images, mask = batch.tensors, batch.mask
    if mask is None:
        mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
    return images, mask


class ExportedModelFile:
    """What an exported model file tells from its stored metadata (``metadata``: the ``torchdetr.*`` keys that
    ``detr export`` writes, given by each runtime) and its outputs (``output_names``)."""

    path: Path
    output_names: tuple[str, ...]

    @property
    def metadata(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def has_masks(self) -> bool:
        """True when the model also returns ``pred_masks``."""
        return MASK_OUTPUT in self.output_names

    @property
    def category_names(self) -> dict[int, str]:
        """Class id → name, when the export stored them (``detr export`` does), else ``{}``."""
        text = self.metadata.get("torchdetr.category_names")
        return {int(k): v for k, v in json.loads(text).items()} if text else {}

    @property
    def config(self) -> DETRConfig | None:
        """The ``DETRConfig`` that ``detr export`` stores (``torchdetr.config``), or None when absent/unreadable."""
        text = self.metadata.get("torchdetr.config")
        if not text:
            return None
        try:
            values = json.loads(text)
            if not isinstance(values, dict):
                raise ConfigError(f"expected a JSON object, got {type(values).__name__}")
            return DETRConfig.from_checkpoint_args(values, source=f"{self.path} (torchdetr.config)")
        except (json.JSONDecodeError, ConfigError) as err:
            log.warning("%s: unreadable torchdetr.config metadata, ignored (%s)", self.path, _first_line(err))
            return None

    @property
    def input_size(self) -> tuple[int, int]:
        """(shorter side, longer-side cap) the model expects: ``torchdetr.image_size`` / ``max_size``.

        Files exported before these keys existed get the size of their stored config, else 800 / 1333.
        """
        metadata = self.metadata
        if "torchdetr.image_size" in metadata:
            try:
                return int(metadata["torchdetr.image_size"]), int(metadata["torchdetr.max_size"])
            except (KeyError, ValueError):
                raise InputFileError(f"{self.path}: unreadable torchdetr.image_size / max_size metadata") from None
        return config_validation_size(self.config or DETRConfig())


class OnnxRunner(ExportedModelFile):
    """An exported ONNX model run with onnxruntime, called like the eager model.

    ``runner(samples)`` returns ``{"pred_logits" [B, Q, K+1], "pred_boxes" [B, Q, 4]}`` (+
    ``"pred_masks"`` [B, Q, H/4, W/4]) as float32 torch tensors on the device of the input images.
    ``providers`` default to CUDA (when onnxruntime has it) then CPU; ``threads`` sets
    onnxruntime's intra-op threads (default: its own choice, one per physical core); ``spinning=False``
    lets them sleep between calls instead of spin-waiting.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 spinning: bool = True) -> None:
        require_onnx()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"ONNX model not found: {self.path}")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        if not spinning:  # idle threads sleep at once (fair when other work shares the cores, e.g. a benchmark)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            raise InputFileError(f"{self.path}: not a loadable ONNX model ({_first_line(err)})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != list(INPUT_NAMES):
            raise InputFileError(f"{self.path}: not a torchdetr export (inputs {inputs}, expected {list(INPUT_NAMES)})")
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.input_shape = tuple(self.session.get_inputs()[0].shape)  # ints where static, names where dynamic

    @property
    def metadata(self) -> dict[str, str]:
        """The ``torchdetr.*`` (and any other) metadata stored in the file."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, samples: Samples) -> dict[str, Tensor]:
        images, mask = _padded_inputs(samples)
        expected = self.input_shape
        if any(isinstance(e, int) and e != a for e, a in zip(expected, images.shape)):
            raise InputFileError(
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


def require_openvino() -> None:
    """``MissingExtraError`` unless OpenVINO is installed."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise MissingExtraError("OpenVINO export and inference need the openvino package: pip install "
                                "'torchdetr[openvino]'") from None


OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # OpenVINO's inference precision hint on CPU
OPENVINO_METADATA_KEY = "torchdetr_metadata"  # rt_info entry: the export metadata as one JSON object


class OpenVinoRunner(ExportedModelFile):
    """An OpenVINO IR file (``.xml`` + ``.bin``, from ``detr export --format openvino``) on OpenVINO's CPU plugin.

    Called like the eager model; returns float32 torch tensors on the input's device. ``precision``
    ``fp32`` (default: the export check's parity) or ``bf16`` (OpenVINO's own choice on CPUs with AMX);
    ``threads``: inference threads (default: OpenVINO's). Metadata as ``OnnxRunner`` (``metadata``,
    ``category_names``, ``config``, ``input_size``), stored in the IR's ``rt_info``.
    """

    runtime_name = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32") -> None:
        require_openvino()
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"OpenVINO model not found: {self.path}")
        if precision not in OPENVINO_PRECISIONS:
            raise ConfigError(f"OpenVINO precision must be one of {', '.join(OPENVINO_PRECISIONS)}, got {precision!r}")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as err:  # OpenVINO raises RuntimeError subclasses of its own
            raise InputFileError(f"{self.path}: not a loadable OpenVINO model ({_first_line(err)})") from None
        inputs = [port.get_any_name() for port in model.inputs]
        if inputs != list(INPUT_NAMES):
            raise InputFileError(f"{self.path}: not a torchdetr export (inputs {inputs}, expected {list(INPUT_NAMES)})")
        self.output_names = tuple(port.get_any_name() for port in model.outputs)
        self._metadata = read_openvino_metadata(model)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    @property
    def metadata(self) -> dict[str, str]:
        """The ``torchdetr.*`` metadata stored in the IR's ``rt_info``."""
        return dict(self._metadata)

    def __call__(self, samples: Samples) -> dict[str, Tensor]:
        images, mask = _padded_inputs(samples)
        results = self.request.infer({
            "images": images.detach().to("cpu", torch.float32).contiguous().numpy(),
            "mask": mask.detach().to("cpu", torch.bool).contiguous().numpy(),
        })
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return {name: torch.from_numpy(by_name[name].copy()).to(images.device) for name in self.output_names}

    def __repr__(self) -> str:
        return f"OpenVinoRunner({str(self.path)!r}, outputs={list(self.output_names)})"


def read_openvino_metadata(model: Any) -> dict[str, str]:
    """The metadata ``export_openvino`` stored in an OpenVINO model's rt_info (one JSON object), or ``{}``."""
    if not model.has_rt_info([OPENVINO_METADATA_KEY]):
        return {}
    try:
        values = json.loads(str(model.get_rt_info([OPENVINO_METADATA_KEY]).astype(str)))
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {}


class ModuleRunner:
    """A TorchScript trace or a ``torch.export`` program module, called like the eager model."""

    def __init__(self, module: Callable[..., Any], path: Path) -> None:
        self.module = module
        self.path = path

    def __call__(self, samples: Samples) -> dict[str, Tensor]:
        images, mask = _padded_inputs(samples)
        with torch.no_grad():
            try:
                outputs = self.module(images, mask)
            except AssertionError as err:  # an exported program's input-range guard, e.g. "images.size()[2] >= 33"
                raise InputFileError(
                    f"{self.path}: input {list(images.shape)} outside the exported range ({err})"
                ) from None
        names = (*BOX_OUTPUTS, MASK_OUTPUT)[: len(outputs)]
        return dict(zip(names, outputs))

    def __repr__(self) -> str:
        return f"ModuleRunner({str(self.path)!r})"


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_exported(path: str | Path, fmt: str | None = None) -> ExportedRunner:
    """An exported file as a callable ``samples → {"pred_logits", "pred_boxes"[, "pred_masks"]}``.

    ``fmt`` defaults to the one named by the file's suffix (``format_from_path``). A missing file is a
    ``MissingFileError``, one that cannot be read as ``fmt`` an ``InputFileError`` naming it.

    **Not safe for untrusted files**: a TorchScript file or a ``torch.export`` program is a program;
    loading and running it executes the code and operators stored in it. Load only files you trust
    (ONNX files run in onnxruntime's interpreter of ONNX operators).
    """
    path = Path(path)
    fmt = check_format(fmt or format_from_path(path))
    fmt = RUNTIME_FORMATS.get(fmt, fmt)
    if fmt == "onnx":
        return OnnxRunner(path)
    if fmt == "openvino":
        return OpenVinoRunner(path)
    if not path.is_file():
        raise MissingFileError(f"exported model not found: {path}")
    try:
        if fmt == "torchscript":
            with quiet_jit_deprecation():
                return ModuleRunner(torch.jit.load(str(path), map_location="cpu"), path)
        with _quiet_logger("torch.export"):  # it logs the traceback of a damaged file before failing itself
            return ModuleRunner(torch.export.load(str(path)).module(), path)
    except Exception as err:  # torch raises many kinds (RuntimeError, KeyError, zip errors…) for damaged files
        raise InputFileError(f"{path}: not a loadable {fmt} file ({type(err).__name__}: {_first_line(err)})") from None
