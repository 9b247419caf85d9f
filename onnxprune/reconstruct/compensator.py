"""Local reconstruction for the sensitivity analysis, without rewriting the model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..analysis import Analysis
from .consumers import find_consumers
from .fit import fit, output_errors
from .fold import attach_bias, fold, weight_blocks
from .ldrf import stream_moments


class Compensator:
    """Local reconstruction for the sensitivity analysis, without rewriting the model.

    The masked evaluator (allocate/sensitivity.py) evaluates a candidate by feeding zeroed consumer
    weights to one session. With a compensator it feeds the *folded* weights instead, scattered
    back to the full input width (zeros at the removed channels), plus the corrected biases: the
    same function as the locally reconstructed pruned model, so each group's curve measures the
    damage that reconstruction leaves, not the damage of plain removal. The moments are those of
    the original model over all channels, gathered once; any kept subset is a sub-block of them
    (``Moments.restrict``), so an evaluation costs one small ridge solve per touched consumer.
    """

    def __init__(self, analysis: Analysis, batches, ridge: float = 1e-3, max_positions: int = 256, seed: int = 0):
        self.analysis = analysis
        self.ridge = ridge
        self.consumers = [c for c in find_consumers(analysis) if analysis.model.graph.nodes[c.node].op != "ConvTranspose"]
        observed = sorted({c.observed for c in self.consumers})
        everything = analysis.kept_atoms(analysis.full_keep())
        self.moments = stream_moments(analysis, everything, None, observed, batches, max_positions, seed) if observed else {}
        self.biases: dict[int, str] = {}
        self.base: dict[str, np.ndarray] = {}

    def add_bias_inputs(self, proto: onnx.ModelProto) -> list[str]:
        """Give every compensated Conv/Gemm a bias input (zeros where it had none: the same
        function) and return the bias names the evaluator must feed."""
        inits = {t.name: t for t in proto.graph.initializer}
        for i, c in enumerate(self.consumers):
            node = proto.graph.node[c.node]
            if node.op_type not in ("Conv", "Gemm") or c.out_axis is None:
                continue
            if c.bias is not None:
                name = c.bias
            else:
                w = inits[c.weight]
                zeros = np.zeros(w.dims[c.out_axis], dtype=numpy_helper.to_array(w).dtype)
                name = attach_bias(proto, inits, node, f"{c.weight}_onnxprune_bias", zeros)
            self.biases[i] = name
            self.base[name] = numpy_helper.to_array(inits[name])
        return sorted(set(self.biases.values()))

    def weights(self, keep: np.ndarray) -> dict[str, np.ndarray]:
        """Folded full-width weights and corrected biases of the consumers ``keep`` touches
        (consumers where compensation does not lower the output error are left out: the
        evaluator masks them plainly)."""
        analysis = self.analysis
        atoms = analysis.kept_atoms(keep)
        out: dict[str, np.ndarray] = {}
        for i, c in enumerate(self.consumers):
            if atoms[c.in_dim.offset : c.in_dim.offset + c.in_dim.size].all():
                continue
            o_dim = analysis.by_key[(c.observed, c.observed_axis)]
            kept = np.flatnonzero(atoms[o_dim.offset : o_dim.offset + o_dim.size])
            if not len(kept):
                continue
            m = self.moments[c.observed].restrict(kept)
            a = fit(m, kept, self.ridge, None, local=True)
            plain = np.zeros_like(a)
            plain[kept, np.arange(len(kept))] = 1.0
            w = np.asarray(analysis.model.tensors[c.weight].values, dtype=np.float64)
            w3, _ = weight_blocks(w, c)
            e_fit, e_plain = output_errors(w3, [a, plain], m)
            if not e_fit < e_plain:
                continue
            folded, delta = fold(w, c, a, kept)
            moved = np.zeros(np.moveaxis(w, c.in_dim.axis, -1).shape)
            moved[..., c.positions[kept].reshape(-1)] = np.moveaxis(folded, c.in_dim.axis, -1)
            dtype = np.asarray(analysis.model.tensors[c.weight].values).dtype
            out[c.weight] = np.moveaxis(moved, -1, c.in_dim.axis).astype(dtype)
            name = self.biases.get(i)
            if name is not None and delta is not None:
                node = analysis.model.graph.nodes[c.node]
                if node.op == "Gemm":
                    delta = delta * node.attrs.get("alpha", 1.0) / (node.attrs.get("beta", 1.0) or 1.0)
                current = out.get(name, self.base[name])
                out[name] = (current + delta.reshape(current.shape)).astype(current.dtype)
        return out
