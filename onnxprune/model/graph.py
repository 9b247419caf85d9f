"""Loading, normalising and saving ONNX models.

The pruning pipeline works on two views of one model:

* ``Model.proto`` — the *normalised* model: the user's file with weights held in ``Constant``
  nodes moved into initializers. Every rewrite starts from it, so symbolic dimensions, opset,
  IR version, metadata and names survive into the pruned file.
* ``Model.graph`` — an onnx-graphsurgeon graph of a copy whose inputs have concrete shapes
  (a symbolic batch becomes 1), with every intermediate shape inferred. The dependency analysis
  and the cost model read shapes from it.

Both views have the same nodes in the same order, so a node is identified by its index.

    model = load_model("resnet50.onnx", input_shapes={"x": (1, 3, 224, 224)})
    model.graph.nodes[0].op, model.input_shapes
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from ..errors import ModelError, first_line
from .files import read_model

# Protobuf refuses to serialise a single message above 2 GiB; larger models keep their
# weights in an external data file.


@dataclass
class Model:
    """A loaded model: normalised proto, analysis graph with concrete shapes, and identity."""

    proto: onnx.ModelProto
    graph: gs.Graph
    input_shapes: dict[str, tuple[int, ...]]
    fingerprint: str
    path: str | None = None
    node_index: dict[int, int] = field(default_factory=dict)  # id(gs.Node) -> position

    def index_of(self, node: gs.Node) -> int:
        return self.node_index[id(node)]

    @property
    def tensors(self) -> dict[str, gs.Tensor]:
        return self.graph.tensors()

    @functools.cached_property
    def dequantizers(self):
        """Integer weights read by DequantizeLinear: name -> ``quant.Dequant``."""
        from .quant import dequantizers

        return dequantizers(self.proto)


def load_model(
    source: str | os.PathLike | onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> Model:
    """Load, check and normalise a model; infer concrete shapes for analysis.

    ``input_shapes`` fixes symbolic input dimensions (``{"x": (1, 3, 224, 224)}``); a symbolic
    batch dimension defaults to 1, any other symbolic dimension must be given.
    """
    path = None
    if isinstance(source, onnx.ModelProto):
        proto = copy.deepcopy(source)
    else:
        path = str(source)
        proto = read_model(source)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelError(f"invalid ONNX model: {first_line(exc)}") from exc

    proto = normalise(proto)
    fingerprint = fingerprint_of(proto)
    shapes = resolve_input_shapes(proto, input_shapes or {})
    graph = _analysis_graph(proto, shapes)
    node_index = {id(n): i for i, n in enumerate(graph.nodes)}
    return Model(proto, graph, shapes, fingerprint, path, node_index)


def normalise(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Move tensors held in Constant nodes of the main graph into initializers (a new proto).

    ``Identity`` of an initializer becomes an initializer too: the classic PyTorch exporter
    deduplicates equal biases of BN-folded convolutions that way, and each conv must own its
    bias to be pruned on its own.
    """
    proto = copy.deepcopy(proto)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        value = None
        if node.op_type == "Constant" and not node.domain:
            value = _constant_node_value(node)
        elif node.op_type == "Identity" and not node.domain and node.input[0] in inits and node.output[0] not in outputs:
            value = numpy_helper.to_array(inits[node.input[0]])
        if value is None:
            keep.append(node)
        else:
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            inits[node.output[0]] = graph.initializer[-1]
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    # Issue 15: an input dim declared 0 means "unknown" to its exporter, but onnxruntime accepts
    # only 0 there; name it instead (-1 already counts as symbolic in onnxruntime and here).
    for vi in graph_inputs(proto):
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value == 0:
                d.Clear()
                d.dim_param = "batch" if axis == 0 else f"{vi.name}_dim{axis}"
    return proto


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(attr.floats, dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(attr.ints, dtype=np.int64)
    return None  # sparse or string constants stay as nodes


def fingerprint_of(proto: onnx.ModelProto) -> str:
    """A stable identity of the model's graph (sha256 of its deterministic serialisation)."""
    h = hashlib.sha256()
    h.update(proto.graph.SerializeToString(deterministic=True))
    return "sha256:" + h.hexdigest()


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (old IR versions list both)."""
    inits = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def declared_shape(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def resolve_input_shapes(proto: onnx.ModelProto, given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every input: the given one, else the declared one with batch -> 1."""
    inputs = graph_inputs(proto)
    names = {i.name for i in inputs}
    unknown = set(given) - names
    if unknown:
        raise ModelError(f"--input-shape names unknown input(s) {sorted(unknown)}; the model's inputs are {sorted(names)}")
    shapes = {}
    for vi in inputs:
        declared = declared_shape(vi)
        if vi.name in given:
            shape = tuple(int(d) for d in given[vi.name])
            if len(shape) != len(declared):
                raise ModelError(f"input '{vi.name}' has rank {len(declared)} but --input-shape gives {len(shape)} dims")
            for axis, (d, g) in enumerate(zip(declared, shape)):
                if isinstance(d, int) and d > 0 and d != g:
                    raise ModelError(f"input '{vi.name}' has static dim {d} at axis {axis} but --input-shape gives {g}")
            shapes[vi.name] = shape
            continue
        dynamic = [axis for axis, d in enumerate(declared) if not (isinstance(d, int) and d > 0)]
        if dynamic and dynamic != [0]:
            dims = ",".join("N" if not (isinstance(d, int) and d > 0) else str(d) for d in declared)
            raise ModelError(
                f"input '{vi.name}' has dynamic dimensions at axes {dynamic} ({dims}): "
                f"pass --input-shape {vi.name}:{_shape_hint(declared)} (or give calibration data)"
            )
        shapes[vi.name] = tuple(1 if axis == 0 and dynamic else int(d) for axis, d in enumerate(declared))
    return shapes


def _shape_hint(declared) -> str:
    """An ``--input-shape`` that keeps every static dim and fills only the symbolic ones
    (issue 15.3): batch 1, 3 channels of a rank-4 input, 224 elsewhere."""
    fill = lambda axis: 1 if axis == 0 else 3 if axis == 1 and len(declared) == 4 else 224  # noqa: E731
    return ",".join(str(d) if isinstance(d, int) and d > 0 else str(fill(a)) for a, d in enumerate(declared))


def with_input_shapes(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy whose inputs have the given concrete shapes and no stale intermediate shapes."""
    proto = copy.deepcopy(proto)
    for vi in graph_inputs(proto):
        dims = vi.type.tensor_type.shape.dim
        for d, value in zip(dims, shapes[vi.name]):
            d.Clear()
            d.dim_value = int(value)
    del proto.graph.value_info[:]
    for out in proto.graph.output:  # symbolic output dims would contradict the concrete ones
        out.type.tensor_type.ClearField("shape")
    return proto


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelError(f"ONNX shape inference failed: {first_line(exc)}") from exc


def _analysis_graph(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> gs.Graph:
    inferred = infer_shapes(with_input_shapes(proto, shapes))
    graph = gs.import_onnx(inferred)
    missing = [t for t in graph.tensors().values() if isinstance(t, gs.Variable) and not _static(t.shape)]
    if missing:
        _fill_shapes_with_onnxruntime(inferred, graph, shapes)
    return graph


def _fill_shapes_with_onnxruntime(proto: onnx.ModelProto, graph: gs.Graph, shapes) -> None:
    """Shapes that ONNX inference could not derive (custom ops, some exporters' patterns) are
    read off one onnxruntime run on zeros: slower, but exact."""
    from ..runtime.session import CPU, open_session
    tensors = graph.tensors()
    names = [n for n, t in tensors.items() if isinstance(t, gs.Variable) and not _static(t.shape) and n]
    probe = copy.deepcopy(proto)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        sess = open_session(probe, [CPU]).session
    except ModelError as exc:
        cause = exc.__cause__ or exc
        raise ModelError(f"cannot infer intermediate shapes (onnxruntime could not load the model: {first_line(cause)})") from cause
    feeds = {}
    for inp in sess.get_inputs():
        dtype = _ORT_DTYPES.get(inp.type, np.float32)
        feeds[inp.name] = np.zeros(shapes[inp.name], dtype=dtype)
    outs = sess.run([o.name for o in sess.get_outputs()], feeds)
    for o, value in zip(sess.get_outputs(), outs):
        t = tensors.get(o.name)
        if isinstance(t, gs.Variable) and not _static(t.shape):
            t.shape = list(np.shape(value))
            t.dtype = np.asarray(value).dtype


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


