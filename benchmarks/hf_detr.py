"""torchdetr against Hugging Face transformers' DETR (``DetrForObjectDetection``): the same weights, in one process.

The model (``--model``: an official name or a checkpoint, read by torchdetr's own loader; default: the
``detr_resnet50`` architecture with random weights, see :func:`randomize_constant_tensors_`) is
converted into transformers' ``DetrForObjectDetection`` (:func:`to_transformers`): its configuration
(:func:`hf_config`: timm's ResNet, whose parameter names are torchvision's, no pretrained download,
dropout off) and its state dict, renamed from the original facebookresearch/detr layout
(:func:`hf_state_dict`; the packed attention projections ``in_proj_weight`` [3C, C] are split into
transformers' separate q/k/v projections [C, C]). The conversion is checked before anything is
timed: on a padded batch of two images, transformers' ``logits`` [B, Q, K+1] and ``pred_boxes``
[B, Q, 4] must equal torchdetr's faithful outputs within ``CONVERSION_TOLERANCE``; a model whose
conversion does not match is not timed.

Timed, on one random image of ``--size``, under ``torch.inference_mode``, ``--runs`` runs of each way
after ``--warmup`` untimed ones, interleaved (A, B, C, D, E, A, …) so that a change of machine load
hits all of them alike: torchdetr's faithful path, ``torchdetr.optimize(model, "fp32")`` and
``"bf16"``, transformers in float32 (its default attention implementation) and transformers under
bfloat16 autocast. Reported: p50 latency, its ratio to torchdetr faithful and to transformers fp32,
achieved GFLOP/s against this machine's measured matmul peak, and the largest logit and box
differences from the faithful path. Writes ``benchmarks/results/hf_comparison.md`` (``--output``;
an existing file is kept unless ``--overwrite``; ``benchmarks/results_file.py``).

    pip install -e '.[bench]'
    python benchmarks/hf_detr.py [--model detr_resnet50] [--size 800x1066] [--threads 2] [--runs 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import machine_description  # noqa: E402
from results_file import add_output_arguments, output_path, write_results  # noqa: E402

from torchdetr.config import DETRConfig, ModelConfig  # noqa: E402
from torchdetr.errors import ConfigError, MissingExtraError, UserError  # noqa: E402
from torchdetr.inference.benchmark import cpu_flags, gemm_peak, model_flops, parse_size, time_runner  # noqa: E402
from torchdetr.structures import NestedTensor, nested_tensor_from_tensor_list  # noqa: E402

if TYPE_CHECKING:
    from transformers import DetrConfig as HFDetrConfig
    from transformers import DetrForObjectDetection

RESULTS = ROOT / "benchmarks" / "results" / "hf_comparison.md"
EXTRA_HINT = "pip install 'torchdetr[bench]'"
CONVERSION_TOLERANCE = 1e-4  # max |Δ| of logits and boxes, transformers vs torchdetr faithful, on the check batch
CHECK_SIZES = ((320, 427), (288, 352))  # the check batch: two images of other sizes, so the smaller one is padded
RANDOM_SCALE = (0.5, 1.5)  # constant-initialised scales and variances become uniform in this range
RANDOM_SHIFT_STD = 0.1  # constant-initialised shifts (biases, means) become normal with this deviation
Runner = Callable[[NestedTensor], dict[str, Tensor]]


# ---------------------------------------------------------------------------------------------
# The conversion: original layout → transformers' DetrForObjectDetection
# ---------------------------------------------------------------------------------------------
# module paths outside the transformer layers: the original's → transformers'
TOP_LEVEL = {
    "backbone.0.body": "model.backbone.model",  # torchvision ResNet → timm ResNet: the same parameter names
    "backbone.1.row_embed": "model.position_embedding.row_embeddings",  # learned position encoding
    "backbone.1.col_embed": "model.position_embedding.column_embeddings",
    "input_proj": "model.input_projection",
    "query_embed": "model.query_position_embeddings",
    "transformer.decoder.norm": "model.decoder.layernorm",
    "class_embed": "class_labels_classifier",
    "bbox_embed": "bbox_predictor",
}
# the parts of one encoder / decoder layer: the original's → transformers'
LAYER_PARTS = {
    "encoder": {"self_attn": "self_attn", "linear1": "mlp.fc1", "linear2": "mlp.fc2",
                "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"},
    "decoder": {"self_attn": "self_attn", "multihead_attn": "encoder_attn", "linear1": "mlp.fc1", "linear2": "mlp.fc2",
                "norm1": "self_attn_layer_norm", "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm"},
}
ATTENTIONS = ("self_attn", "multihead_attn")
PACKED_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # nn.MultiheadAttention's in_proj thirds, in this order
OUTPUT_PROJECTION = ("out_proj", "o_proj")
LAYER_KEY = re.compile(r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.+)$")
BASIC_BLOCK_BACKBONES = ("resnet18", "resnet34")  # DC5 of these: timm's dilation rule is not torchdetr's
DROPPED_LEAVES = ("num_batches_tracked",)  # batch-norm counters: transformers' frozen batch norms have none
# transformers before its DETR refactor (4.x) names a few modules otherwise: current name → earlier name
EARLIER_LAYOUT = ((r"^model\.backbone\.model\.", "model.backbone.conv_encoder.model."),
                  (r"^model\.position_embedding\.", "model.backbone.position_embedding."),
                  (r"\.o_proj\.", ".out_proj."), (r"\.mlp\.fc([12])\.", r".fc\1."))


class ConversionError(UserError, ValueError):
    """A model transformers' DETR cannot hold, or a conversion whose outputs do not match."""


def import_transformers() -> Any:
    """The ``transformers`` module (timm checked too), or ``MissingExtraError`` naming the extra."""
    try:
        import timm  # noqa: F401  (transformers builds DETR's ResNet with it)
        import transformers
    except ImportError as err:
        raise MissingExtraError(f"the Hugging Face comparison needs transformers and timm ({err.name} is missing): "
                                f"{EXTRA_HINT}") from None
    transformers.logging.set_verbosity_error()
    return transformers


def check_convertible(cfg: ModelConfig) -> None:
    """``ConversionError`` naming the option of ``cfg`` that transformers' ``DetrForObjectDetection`` cannot express."""
    if cfg.variant != "detr":
        raise ConversionError(f"--model: transformers' DetrForObjectDetection is the original DETR, not --variant {cfg.variant}")
    if cfg.masks:
        raise ConversionError("--model: converts detection models only (this one has the mask head, --masks)")
    if cfg.pre_norm:
        raise ConversionError("--model: transformers' DETR has post-norm layers only (this model has --pre_norm)")
    if cfg.position_embedding not in ("sine", "learned"):
        raise ConversionError(f"--model: transformers' DETR has sine or learned position encodings, not "
                              f"{cfg.position_embedding!r}")
    if cfg.dilation and cfg.backbone in BASIC_BLOCK_BACKBONES:
        raise ConversionError(f"--model: timm dilates {cfg.backbone}'s basic blocks otherwise than torchdetr (--dilation)")
    if cfg.resolved_backbone_norm == "group":
        raise ConversionError("--model: transformers' DETR backbone has batch norms, not --backbone_norm group")


def hf_config(cfg: ModelConfig) -> HFDetrConfig:
    """transformers' ``DetrConfig`` of the architecture ``cfg`` (inference: dropout off, no auxiliary outputs).

    ``num_labels`` = ``num_classes`` (transformers adds the no-object class, as the original's K+1 head).
    """
    check_convertible(cfg)
    transformers = import_transformers()
    return transformers.DetrConfig(
        use_timm_backbone=True, backbone=cfg.backbone, use_pretrained_backbone=False, dilation=cfg.dilation,
        num_queries=cfg.num_queries, d_model=cfg.hidden_dim, encoder_layers=cfg.enc_layers,
        decoder_layers=cfg.dec_layers, encoder_attention_heads=cfg.nheads, decoder_attention_heads=cfg.nheads,
        encoder_ffn_dim=cfg.dim_feedforward, decoder_ffn_dim=cfg.dim_feedforward, num_labels=cfg.num_classes,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, position_embedding_type=cfg.position_embedding,
        auxiliary_loss=False,
    )


def _layer_entries(key: str, value: Tensor) -> dict[str, Tensor]:
    """transformers' entries of one transformer-layer entry ``key`` of the original layout."""
    match = LAYER_KEY.match(key)
    if match is None:
        raise ConversionError(f"--model: state-dict entry {key!r} has no place in transformers' DETR")
    stack, index, part, rest = match.groups()
    if part not in LAYER_PARTS[stack]:
        raise ConversionError(f"--model: state-dict entry {key!r} has no place in transformers' DETR {stack} layer")
    prefix = f"model.{stack}.layers.{index}.{LAYER_PARTS[stack][part]}"
    if part in ATTENTIONS and rest.startswith("in_proj_"):  # [3C, C] weight or [3C] bias → three [C, C] / [C]
        leaf = rest.removeprefix("in_proj_")
        return {f"{prefix}.{projection}.{leaf}": third.clone()
                for projection, third in zip(PACKED_PROJECTIONS, value.chunk(len(PACKED_PROJECTIONS), dim=0))}
    if part in ATTENTIONS and rest.startswith(OUTPUT_PROJECTION[0] + "."):
        rest = OUTPUT_PROJECTION[1] + rest.removeprefix(OUTPUT_PROJECTION[0])
    return {f"{prefix}.{rest}": value}


def hf_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The original layout's DETR state dict (torchdetr's, the official checkpoints') in transformers' layout.

    Every entry is placed or the conversion fails (``ConversionError`` naming it): nothing is dropped
    silently except batch-norm counters. Values are shared, except the split attention projections.
    """
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if leaf in DROPPED_LEAVES:
            continue
        top = next((prefix for prefix in TOP_LEVEL if module == prefix or module.startswith(prefix + ".")), None)
        if top is not None:
            converted[TOP_LEVEL[top] + key[len(top):]] = value
        else:
            converted.update(_layer_entries(key, value))
    return converted


def in_earlier_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` (current transformers layout) renamed for transformers before its DETR refactor (4.x)."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in EARLIER_LAYOUT:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def to_transformers(model: nn.Module, cfg: ModelConfig) -> DetrForObjectDetection:
    """transformers' ``DetrForObjectDetection`` holding ``model``'s weights (eval mode, float32)."""
    transformers = import_transformers()
    hf_model = transformers.DetrForObjectDetection(hf_config(cfg))
    converted = hf_state_dict(model.state_dict())
    if "model.backbone.conv_encoder.model.conv1.weight" in hf_model.state_dict():
        converted = in_earlier_layout(converted)
    result = hf_model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        problem = (f"transformers' model has no {result.unexpected_keys[0]!r}" if result.unexpected_keys
                   else f"nothing fills transformers' {result.missing_keys[0]!r}")
        raise ConversionError(f"the conversion does not fit transformers {transformers.__version__}: {problem} "
                              f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected)")
    return hf_model.eval()


def hf_runner(hf_model: DetrForObjectDetection, autocast: torch.dtype | None = None) -> Runner:
    """A callable taking a NestedTensor (mask True = padding) and returning ``pred_logits``/``pred_boxes`` (float32)."""

    def run(samples: NestedTensor) -> dict[str, Tensor]:
        pixel_mask = (~samples.mask).long()  # transformers: 1 = a real pixel
        device_type = samples.tensors.device.type
        context = torch.autocast(device_type, dtype=autocast) if autocast else contextlib.nullcontext()
        with context:
            out = hf_model(pixel_values=samples.tensors, pixel_mask=pixel_mask)
        return {"pred_logits": out.logits.float(), "pred_boxes": out.pred_boxes.float()}

    return run


def max_differences(outputs: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> tuple[float, float]:
    """(max |Δ logits|, max |Δ boxes|) of ``outputs`` against ``reference``."""
    return tuple(float((outputs[k].float() - reference[k].float()).abs().max()) for k in ("pred_logits", "pred_boxes"))


def check_batch(sizes: tuple[tuple[int, int], ...] = CHECK_SIZES, seed: int = 0) -> NestedTensor:
    """Random images of ``sizes`` (H, W) padded into one batch [B, 3, max H, max W] (mask True = padding)."""
    generator = torch.Generator().manual_seed(seed)
    return nested_tensor_from_tensor_list([torch.randn(3, h, w, generator=generator) for h, w in sizes])


def check_conversion(model: nn.Module, hf_model: DetrForObjectDetection, samples: NestedTensor,
                     tolerance: float = CONVERSION_TOLERANCE) -> tuple[float, float]:
    """(max |Δ logits|, max |Δ boxes|) of transformers vs ``model`` on ``samples``; ``ConversionError`` above ``tolerance``."""
    with torch.inference_mode():
        differences = max_differences(hf_runner(hf_model)(samples), model(samples))
    if not max(differences) <= tolerance:
        raise ConversionError(f"the converted model does not compute the original's outputs (max |Δ logits| "
                              f"{differences[0]:.1e}, max |Δ boxes| {differences[1]:.1e} > {tolerance:.0e}): not timing it")
    return differences


def randomize_constant_tensors_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every constant-initialised floating tensor of ``model`` random values; returns ``model``.

    A fresh model's norms are 1 and 0, its attention biases 0: two such tensors mapped to each other's
    place would leave the outputs unchanged. Constants of 1 (scales, variances) become uniform in
    ``RANDOM_SCALE``, other constants (shifts, means) get normal noise of ``RANDOM_SHIFT_STD``.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict(keep_vars=True).values():
            if not tensor.is_floating_point() or tensor.numel() < 2 or bool((tensor != tensor.flatten()[0]).any()):
                continue
            if float(tensor.flatten()[0]) == 1.0:
                low, high = RANDOM_SCALE
                noise = torch.rand(tensor.shape, generator=generator) * (high - low) + low
            else:
                noise = tensor.flatten()[0] + torch.randn(tensor.shape, generator=generator) * RANDOM_SHIFT_STD
            tensor.copy_(noise.to(tensor.dtype))
    return model


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------
@dataclass
class Way:
    """One way of running the model, its timings and differences from the faithful path."""

    name: str
    runner: Runner
    dtype: str  # the compute dtype of its GEMMs (for the fraction of the measured peak)
    times: list[float] = field(default_factory=list)
    max_logit_diff: float = float("nan")
    max_box_diff: float = float("nan")

    @property
    def p50(self) -> float:
        return float(np.percentile(self.times, 50))


def build_model(name: str | None) -> tuple[nn.Module, ModelConfig, str]:
    """(model in eval mode, its architecture, a description) of ``--model``, or of the random-weight default."""
    if name:
        from torchdetr.inference.loading import load_model

        loaded = load_model(name)
        return loaded.model.eval(), loaded.config.model, f"`{name}` (its own weights)"
    from torchdetr.losses.build import build_model as build_detr

    torch.manual_seed(0)
    cfg = DETRConfig(backbone_weights="none", backbone_norm="frozen", aux_loss=False)
    model, _, _ = build_detr(cfg)
    randomize_constant_tensors_(model)
    return model.eval(), cfg.model, ("the `detr_resnet50` architecture (frozen batch norm, 6+6 layers, 100 queries, "
                                     "91 classes) with random weights (speed does not depend on them)")


def markdown(args: argparse.Namespace, command: str, description: str, ways: list[Way], check: tuple[float, float],
             peaks: dict[str, float], gflop: float, load: list[float] | None, transformers_version: str,
             attention: str) -> str:
    """The results with the machine, the command and the method described."""
    faithful, hf = ways[0], next(w for w in ways if w.name.startswith("transformers fp32"))
    flags = cpu_flags()
    rows = ["| way | latency p50 s | × torchdetr faithful | × transformers fp32 | GFLOP/s (of peak) | "
            "max Δ logits vs faithful | max Δ boxes |", "|---|---:|---:|---:|---:|---:|---:|"]
    for way in ways:
        rate = gflop / way.p50
        rows.append(f"| {way.name} | {way.p50:.2f} | {faithful.p50 / way.p50:.2f}× | {hf.p50 / way.p50:.2f}× | "
                    f"{rate:.1f} ({rate / peaks[way.dtype]:.0%} of {way.dtype}) | {way.max_logit_diff:.1e} | "
                    f"{way.max_box_diff:.1e} |")
    h, w = args.size
    import timm

    return "\n".join([
        "# torchdetr against Hugging Face transformers' DETR",
        "",
        f"`{command}`",
        "",
        f"- machine: {machine_description()}; AVX-512 BF16: {'yes' if 'avx512_bf16' in flags else 'no'}, AMX: "
        f"{'yes' if any(f.startswith('amx') for f in flags) else 'no'}; load average before: "
        + (", ".join(f"{v:.1f}" for v in load) if load else "–"),
        f"- transformers {transformers_version} (`DetrForObjectDetection`, attention implementation `{attention}`), "
        f"timm {timm.__version__}",
        f"- model: {description}; {gflop:.1f} GFLOP per {h}×{w} image (FlopCounterMode); measured GEMM peak "
        f"(1024² matmul): fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s",
        f"- conversion check (torchdetr's state dict renamed into transformers' layout, q/k/v split): on a padded "
        f"batch of two images ({', '.join(f'{a}×{b}' for a, b in CHECK_SIZES)}) transformers' outputs vs torchdetr "
        f"faithful: max |Δ logits| {check[0]:.1e}, max |Δ boxes| {check[1]:.1e} (tolerance {CONVERSION_TOLERANCE:.0e})",
        f"- one random {h}×{w} image, {args.threads} thread(s), `torch.inference_mode`, {args.warmup} warm-up and "
        f"{args.runs} timed runs per way, interleaved across ways; ratios are p50 against p50 in the same process; "
        "differences are on the timed image",
        "",
        *rows,
        "",
        "Ways: `torchdetr faithful` is the model as built (the original's computation); `torchdetr fp32` / `bf16` are "
        "`torchdetr.optimize(model, \"fp32\")` / `(model, \"bf16\")`; `transformers fp32` is `DetrForObjectDetection` "
        "as it comes; `transformers bf16 autocast` is the same under `torch.autocast(dtype=torch.bfloat16)`.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="official name (detr_resnet50, …) or checkpoint; default: the detr_resnet50 "
                        "architecture with random weights")
    parser.add_argument("--size", default="800x1066", help="input HxW in pixels (default 800x1066)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per way (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per way first (default 1)")
    add_output_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/hf_detr.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.size = parse_size(args.size)
        if args.runs < 1 or args.warmup < 0 or args.threads < 1:
            raise ConfigError("--runs and --threads must be positive, --warmup at least 0")
        output = output_path(args.output, args.overwrite)
        transformers = import_transformers()
        run(args, command, output, transformers.__version__)
    except UserError as err:
        print(f"hf_detr.py: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, command: str, output: Path | None, transformers_version: str) -> None:
    from torchdetr.inference.optimize import optimize

    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model, cfg, description = build_model(args.model)
    print(f"converting {description} …", flush=True)
    hf_model = to_transformers(model, cfg)
    check = check_conversion(model, hf_model, check_batch())
    print(f"conversion check: max |Δ logits| {check[0]:.1e}, max |Δ boxes| {check[1]:.1e}", flush=True)

    generator = torch.Generator().manual_seed(1)
    samples = NestedTensor(torch.randn(1, 3, *args.size, generator=generator), torch.zeros(1, *args.size, dtype=torch.bool))
    print("measuring the machine's matmul peak and the model's FLOPs …", flush=True)
    peaks = {"fp32": gemm_peak(torch.float32, device), "bf16": gemm_peak(torch.bfloat16, device)}
    gflop = model_flops(model, samples) / 1e9
    ways = [Way("torchdetr faithful", model, "fp32"), Way("torchdetr fp32 (`optimize`)", optimize(model, "fp32"), "fp32"),
            Way("torchdetr bf16 (`optimize`)", optimize(model, "bf16"), "bf16"),
            Way("transformers fp32", hf_runner(hf_model), "fp32"),
            Way("transformers bf16 autocast", hf_runner(hf_model, torch.bfloat16), "bf16")]
    for way in ways:
        print(f"{way.name}: warm-up …", flush=True)
        time_runner(way.runner, samples, args.warmup, 0, device)
    for index in range(args.runs):
        for way in ways:
            way.times += time_runner(way.runner, samples, 0, 1, device)
            print(f"run {index + 1}/{args.runs}: {way.name} {way.times[-1]:.2f} s", flush=True)
    with torch.inference_mode():
        reference = model(samples)
        for way in ways:
            way.max_logit_diff, way.max_box_diff = max_differences(way.runner(samples), reference)
    text = markdown(args, command, description, ways, check, peaks, gflop, load, transformers_version,
                    hf_model.config._attn_implementation)
    write_results(output, text)


if __name__ == "__main__":
    sys.exit(main())
