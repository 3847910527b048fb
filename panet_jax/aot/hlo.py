"""What a compiled program does, read from its optimised HLO: library calls, collectives, cost.

XLA's GPU compiler hands convolutions to cuDNN as custom calls (``__cudnn$conv...``), and
``Compiled.cost_analysis()`` is not implemented for a GPU compiled without a GPU. The cost here
is XLA's own ``HloCostAnalysis`` (the CPU client's, on the GPU program: fusions count their
operands and outputs, as on every backend), which marks each custom call "unknown" (-1 FLOP,
-1 byte); those are undone, and a custom call's bytes are its operands and results (less the
``u8`` scratch buffer cuDNN returns), read from the shapes in the text. Their FLOPs are left
to the caller: the encoder's convs have an exact analytic count; library matmuls (cuBLAS, which
XLA uses instead of its Triton GEMM fusions when these are turned off) are not counted.
"""

from __future__ import annotations

import collections
import re
from typing import Any

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_ITEMSIZE = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
# '%name = <shape> <opcode>(<operands>)...' (one instruction per line; the shape may be a tuple).
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def shape_bytes(shape: str, *, skip_scratch: bool = False) -> int:
    """Bytes of an HLO shape (``f32[2,3]{1,0}`` or a tuple of them); ``skip_scratch`` leaves
    out ``u8`` arrays (a library call's workspace)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in _ITEMSIZE or (skip_scratch and dtype == "u8"):
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _ITEMSIZE[dtype]
    return total


def _instructions(text: str) -> list[tuple[str, str, str, str]]:
    """``(name, shape, opcode, rest of line)`` of every instruction in an HLO module's text."""
    out = []
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m:
            out.append(m.groups())
    return out


def _operand_names(rest: str) -> list[str]:
    """The ``%names`` inside the operand list (up to its closing parenthesis)."""
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = i
            break
    return re.findall(r"%([\w.\-]+)", rest[:end])


def custom_calls(text: str) -> collections.Counter:
    """Custom-call targets and how often each appears (e.g. ``__cudnn$convForward``)."""
    return collections.Counter(_TARGET.findall(text))


def cudnn_convolutions(text: str) -> int:
    """Convolutions XLA handed to cuDNN (forward, fused bias-activation, both gradients)."""
    return sum(n for t, n in custom_calls(text).items() if t.startswith("__cudnn$conv"))


def collectives(text: str) -> collections.Counter:
    """Collective operations by kind (an async ``-start`` / ``-done`` pair counts once)."""
    found: collections.Counter = collections.Counter()
    for _, _, opcode, _ in _instructions(text):
        base = opcode.removesuffix("-start")
        if base in COLLECTIVES and not opcode.endswith("-done"):
            found[base] += 1
    return found


def collective_bytes(text: str) -> collections.Counter:
    """Bytes each kind of collective produces per step (e.g. the all-reduced gradients)."""
    found: collections.Counter = collections.Counter()
    for _, shape, opcode, _ in _instructions(text):
        base = opcode.removesuffix("-done")  # an async pair's results are the done's shape
        if base in COLLECTIVES and not opcode.endswith("-start"):
            found[base] += shape_bytes(shape)
    return found


def custom_call_bytes(text: str) -> int:
    """Bytes the custom calls read and write: operands and results, less scratch buffers."""
    instructions = _instructions(text)
    shapes = {name: shape for name, shape, _, _ in instructions}
    total = 0
    for _, shape, opcode, rest in instructions:
        if opcode == "custom-call":
            total += shape_bytes(shape, skip_scratch=True)
            total += sum(shape_bytes(shapes.get(n, "")) for n in _operand_names(rest))
    return total


def program_cost(compiled: Any, text: str) -> tuple[float, float] | None:
    """``(FLOPs without the custom calls, bytes accessed with them)`` of one compiled
    program's module, from XLA's cost analysis run by the CPU client; None if it cannot run."""
    try:
        from jax._src import xla_bridge
        from jax._src.lib import _jax

        (module,) = compiled.runtime_executable().hlo_modules()
        cost = _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
    except Exception:  # private API or no CPU backend: no cost
        return None
    n_calls = sum(1 for _, _, opcode, _ in _instructions(text) if opcode == "custom-call")
    flops = float(cost.get("flops", 0.0)) + n_calls
    bytes_accessed = float(cost.get("bytes accessed", 0.0)) + n_calls + custom_call_bytes(text)
    return flops, bytes_accessed
