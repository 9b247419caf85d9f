"""Integer weights behind DequantizeLinear (QDQ graphs): what zero means and what a value weighs.

In a QDQ graph a Conv's weight is ``DequantizeLinear(q, scale, zero_point, axis)``: the integer
initializer ``q`` is what pruning slices, but its values only mean ``(q - zero_point) * scale``.
So a removed channel is masked with the zero point (which dequantises to 0), a magnitude
criterion reads dequantised values (otherwise the per-channel scales, which differ by orders of
magnitude between channels, are ignored), and reconstruction leaves integer weights alone
(folding a float compensation into them would need requantisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass(frozen=True)
class Dequant:
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    def _along(self, v: np.ndarray, ndim: int) -> np.ndarray:
        if v.size <= 1:
            return v.reshape([1] * ndim)
        return v.reshape([-1 if a == self.axis % ndim else 1 for a in range(ndim)])

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        zp = self._along(self.zero_point.astype(np.float64), q.ndim)
        return (q.astype(np.float64) - zp) * self._along(self.scale.astype(np.float64), q.ndim)

    def zeros_like(self, q: np.ndarray) -> np.ndarray:
        """The integer array that dequantises to 0 everywhere."""
        return np.broadcast_to(self._along(self.zero_point, q.ndim), q.shape).astype(q.dtype)


def dequantizers(proto: onnx.ModelProto) -> dict[str, Dequant]:
    """Integer initializer name -> how the DequantizeLinear reading it dequantises it."""
    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or node.input[1] not in inits:
            continue
        q = numpy_helper.to_array(inits[node.input[0]])
        if np.issubdtype(q.dtype, np.floating):
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = numpy_helper.to_array(inits[zp_name]) if zp_name in inits else np.zeros(scale.shape, q.dtype)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if any(a.name == "block_size" and a.i for a in node.attribute):
            continue  # blocked quantisation (opset 21): not a per-axis scale
        out[node.input[0]] = Dequant(scale, zp, axis)
    return out
