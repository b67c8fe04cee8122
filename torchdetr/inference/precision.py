"""The precisions a model can run in: names, meaning, and the check of a ``--precision`` value.

Plain Python without torch, so that command-line parsers offer the choices without loading torch.
``inference.optimize`` builds the fast paths these names select.
"""

from __future__ import annotations

from ..errors import ConfigError

FAITHFUL = "faithful"  # the model as built: the original's computation, operation for operation
PRECISIONS = (FAITHFUL, "fp32", "bf16", "fp16")
FAST_PRECISIONS = PRECISIONS[1:]
PRECISION_HELP = (
    "faithful: the original's computation exactly; fp32: the fast path (fused attention, folded and prepacked "
    "convolutions), outputs within 1e-4 of faithful; bf16: the fast path in bfloat16 (CPUs with AVX-512-bf16/AMX, "
    "GPUs); fp16: float16 autocast, CUDA only"
)


def check_precision(precision: str, option: str = "--precision") -> str:
    """``precision`` when it is one of ``PRECISIONS``, else a ``ConfigError`` naming ``option``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{option}: unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    return precision
