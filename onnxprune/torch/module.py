"""Run an ONNX graph as a ``torch.nn.Module`` and write trained weights back into the ONNX file.

Fine-tuning a pruned model needs autograd, which onnxruntime does not give us, and the
general-purpose converters (onnx2torch, onnx2pytorch) break on what today's exporters produce.
This bridge is deliberately small: it interprets the graph node by node, in topological order,
with one short torch function per ONNX op (see ``ops.OPS``), so the module computes exactly what
the file computes, and every trainable tensor stays tied to the initializer it came from.

    module = to_torch(model)                    # nn.Module; BN uses frozen running statistics
    loss = criterion(module(x), y); loss.backward(); optimizer.step()
    tuned = write_back(module, model)           # a new ModelProto, same structure and names

Which tensors train. A float initializer (or ``Constant`` node value) becomes an
``nn.Parameter`` when it is used as a weight or bias: Conv / ConvTranspose weight and bias, any
constant operand of Gemm and MatMul, the bias ``Add`` that follows a MatMul, BatchNormalization
scale and bias, PRelu slope, InstanceNormalization and LayerNormalization scale and bias. Chains
of ``Identity`` nodes are followed, so an initializer the exporter shared between several convs
stays one shared parameter (exactly as the graph says). Every other float constant (BN running
mean/variance, Clip bounds, Resize scales ...) is a buffer; integer constants (shapes, axes) are
plain CPU tensors.

Batch normalization. By default BN always uses its running statistics (the inference formula)
while its scale and bias still train: small fine-tuning batches would otherwise corrupt the
statistics. ``to_torch(model, train_bn=True)`` makes BN behave like ``torch.nn.BatchNorm``: in
``module.train()`` it normalises with batch statistics and updates the running mean/variance
(ONNX ``momentum`` m maps to torch momentum ``1 - m``); ``write_back`` then stores them too.
"""

from __future__ import annotations

import heapq
import re
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import onnx.inliner
import torch
from onnx import numpy_helper

from ..errors import DataError, ModelError
from .nodes import DEFAULT_DOMAINS, WEIGHT_SLOTS, Node, State
from .ops import OPS, SUPPORTED_OPS
# --------------------------------------------------------------------------------------------
# Checks done when the module is built, so that an unsupported graph fails early.


def _check_node(node: onnx.NodeProto, attrs: dict[str, Any]) -> str | None:
    """Why this node (of a supported op) cannot run, or None."""
    op, used_outputs = node.op_type, [o for o in node.output if o]
    if op in ("BatchNormalization", "LayerNormalization", "MaxPool") and len(used_outputs) > 1:
        return f"{op} with more than one output (training statistics / indices) is not supported"
    if op == "AveragePool" and any(d != 1 for d in attrs.get("dilations", [])):
        return "AveragePool with dilations is not supported"
    if op == "Resize":
        if attrs.get("mode", "nearest") not in ("nearest", "linear"):
            return f"Resize mode {attrs['mode']!r} is not supported (nearest and linear are)"
        if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
            return "Resize with coordinate_transformation_mode tf_crop_and_resize is not supported"
        if attrs.get("antialias", 0):
            return "Resize with antialias is not supported"
    if op == "Upsample" and attrs.get("mode", "nearest") not in ("nearest", "linear"):
        return f"Upsample mode {attrs['mode']!r} is not supported"
    if op == "Pad" and attrs.get("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"Pad mode {attrs['mode']!r} is not supported"
    return None


def _attr_value(attr: onnx.AttributeProto) -> Any:
    """Python value of an attribute: strings decoded, tensors as torch tensors."""
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return _to_torch_tensor(_to_numpy(value))
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _to_numpy(proto: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(proto)
    except Exception as exc:  # external data not loaded, unknown dtype ...
        raise ModelError(f"cannot read tensor {proto.name!r}: {exc}") from exc


def is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"


def _to_torch_tensor(array: np.ndarray) -> torch.Tensor:
    """numpy -> torch, keeping the dtype (bfloat16 arrives as an ml_dtypes array)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a Constant node (tensor, float(s) or int(s) attribute)."""
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None or attr.name not in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        kind = attr.name if attr is not None else "no single value attribute"
        raise ModelError(f"Constant node {node.name or node.output[0]!r}: {kind} is not supported by the torch bridge")
    if attr.name == "value":
        return _to_numpy(attr.t)
    value = onnx.helper.get_attribute_value(attr)
    dtype = np.float32 if attr.name.startswith("value_float") else np.int64
    return np.asarray(value, dtype=dtype)


# Keys that would clash with attributes of the ParameterDict / Module holding the tensors.
_RESERVED = frozenset(dir(torch.nn.ParameterDict())) | frozenset(dir(torch.nn.Module()))


def _sanitise(name: str, taken: set[str]) -> str:
    """A unique torch-safe key for an ONNX name (``layer1.0.conv1.weight`` -> ``layer1_0_conv1_weight``)."""
    base = re.sub(r"\W", "_", name) or "_"
    key, i = base, 1
    while key in taken or key in _RESERVED:
        key, i = f"{base}_{i}", i + 1
    taken.add(key)
    return key


def _alias_resolver(nodes: list[onnx.NodeProto]) -> Callable[[str], str]:
    """A function mapping a value name to the value an ``Identity`` chain forwards."""
    alias = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Identity" and n.input and n.output}

    def source(name: str) -> str:
        seen = set()
        while name in alias and name not in seen:
            seen.add(name)
            name = alias[name]
        return name

    return source


def _topological(nodes: list[Node], available: set[str]) -> list[Node]:
    """Nodes in an order where every input is computed first (Kahn's algorithm, stable)."""
    producer = {o: i for i, nd in enumerate(nodes) for o in nd.outputs if o}
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, nd in enumerate(nodes):
        for name in set(nd.inputs) - available - {""}:
            if name not in producer:
                raise ModelError(f"node {nd.name or nd.op!r} needs {name!r}, which no node or graph input provides")
            waiting[i] += 1
            users.setdefault(producer[name], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for j in users.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(ordered) < len(nodes):
        raise ModelError("the graph has a cycle")
    return ordered


# --------------------------------------------------------------------------------------------
# The module


class OnnxModule(torch.nn.Module):
    """An ONNX graph executed with torch ops. Build it with :func:`to_torch`.

    Attributes:
        weights: trainable initializers, keyed by sanitised ONNX name.
        constants: a sub-module whose buffers are the other float constants (BN statistics ...).
        onnx_names: sanitised key -> exact ONNX initializer (or Constant output) name, for both.
        input_names / output_names: the graph's inputs (without initializers) and outputs.
        input_types: ONNX element type (``onnx.TensorProto.FLOAT`` ...) of each input.
        train_bn: whether BN uses batch statistics in training mode (see the module docstring).
    """

    def __init__(self, model: onnx.ModelProto, train_bn: bool = False):
        super().__init__()
        graph = model.graph
        main_constants = {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
        if len(model.functions):
            model = onnx.inliner.inline_local_functions(model)
            graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)
        self._state = State(train_bn=train_bn)
        self.train_bn = train_bn
        self._check_supported(graph)

        values = {t.name: _to_numpy(t) for t in graph.initializer}
        kept_nodes = []
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
                values[node.output[0]] = _constant_node_value(node)
            else:
                kept_nodes.append(node)
        # Tensors write_back can store: initializers and the main graph's Constant nodes.
        self._writable = {t.name for t in graph.initializer} | (main_constants & set(values))
        trainable = self._trainable(kept_nodes, values) & self._writable
        if train_bn:
            self._check_bn_stats(kept_nodes, trainable)
        self.weights = torch.nn.ParameterDict()
        self.constants = torch.nn.Module()
        self.onnx_names: dict[str, str] = {}
        self._static: dict[str, torch.Tensor] = {}
        self._keys: dict[str, tuple[str, str]] = {}  # ONNX name -> ("weights"|"constants", key)
        taken: set[str] = set()
        for name, array in values.items():
            tensor = _to_torch_tensor(array)
            if not tensor.is_floating_point():
                self._static[name] = tensor
                continue
            key = _sanitise(name, taken)
            self.onnx_names[key] = name
            if name in trainable:
                self.weights[key] = torch.nn.Parameter(tensor)
                self._keys[name] = ("weights", key)
            else:
                self.constants.register_buffer(key, tensor)
                self._keys[name] = ("constants", key)

        self.input_names = [i.name for i in graph.input if i.name not in values]
        self.input_types = {i.name: i.type.tensor_type.elem_type for i in graph.input if i.name not in values}
        self.output_names = [o.name for o in graph.output]
        nodes = [self._parse(node, opset) for node in kept_nodes]
        self._nodes = _topological(nodes, set(self.input_names) | set(values))
        self._free_after = self._last_uses()

    # -- construction helpers ---------------------------------------------------------------

    @staticmethod
    def _check_supported(graph: onnx.GraphProto) -> None:
        """Raise one ModelError naming every op this bridge cannot run."""
        bad = sorted(
            {
                n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}"
                for n in graph.node
                if n.domain not in DEFAULT_DOMAINS or (n.op_type not in OPS and n.op_type != "Constant")
            }
        )
        if bad:
            what = f"op {bad[0]} is" if len(bad) == 1 else f"ops {', '.join(bad)} are"
            raise ModelError(f"{what} not supported by the torch bridge; supported: {', '.join(SUPPORTED_OPS)}")

    @staticmethod
    def _trainable(nodes: list[onnx.NodeProto], values: dict[str, np.ndarray]) -> set[str]:
        """Names of float constants used as weights or biases (they become Parameters)."""
        source = _alias_resolver(nodes)
        producer = {o: n.op_type for n in nodes for o in n.output}
        trainable = set()
        for n in nodes:
            slots = WEIGHT_SLOTS.get(n.op_type, ())
            if n.op_type == "Add" and any(producer.get(source(i)) == "MatMul" for i in n.input):
                slots = (0, 1)  # the bias of a Linear exported as MatMul + Add
            for slot in slots:
                if slot < len(n.input) and source(n.input[slot]) in values:
                    trainable.add(source(n.input[slot]))
        return {t for t in trainable if is_float(values[t])}

    @staticmethod
    def _check_bn_stats(nodes: list[onnx.NodeProto], trainable: set[str]) -> None:
        """With train_bn, running statistics are updated in place: they must not be Parameters."""
        source = _alias_resolver(nodes)
        for n in nodes:
            if n.op_type != "BatchNormalization":
                continue
            tied = [source(i) for i in n.input[3:5] if source(i) in trainable]
            if tied:
                raise ModelError(
                    f"BatchNormalization {n.name or n.output[0]!r}: running statistics {tied} share an initializer "
                    "with a trainable weight (the exporter merged identical tensors), so train_bn=True cannot "
                    "update them; use train_bn=False"
                )

    def _parse(self, node: onnx.NodeProto, opset: int) -> Node:
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        problem = _check_node(node, attrs)
        if problem:
            raise ModelError(f"node {node.name or node.output[0]!r}: {problem}")
        return Node(
            op=node.op_type,
            name=node.name,
            inputs=list(node.input),
            outputs=list(node.output),
            attrs=attrs,
            opset=opset,
            state=self._state,
            fn=OPS[node.op_type],
        )

    def _last_uses(self) -> list[list[str]]:
        """For each node, the intermediate values no later node (nor the output) needs."""
        keep = set(self.output_names)
        last: dict[str, int] = {}
        for i, nd in enumerate(self._nodes):
            for name in nd.inputs:
                last[name] = i
        produced = {o for nd in self._nodes for o in nd.outputs}
        free: list[list[str]] = [[] for _ in self._nodes]
        for name, i in last.items():
            if name in produced and name not in keep:
                free[i].append(name)
        return free

    # -- running ------------------------------------------------------------------------------

    def tensor(self, onnx_name: str) -> torch.Tensor:
        """The parameter, buffer or static tensor holding an ONNX initializer / Constant value."""
        if onnx_name in self._keys:
            where, key = self._keys[onnx_name]
            return self.weights[key] if where == "weights" else getattr(self.constants, key)
        return self._static[onnx_name]

    def onnx_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """(exact ONNX name, Parameter) pairs."""
        for key, param in self.weights.items():
            yield self.onnx_names[key], param

    def _bind_inputs(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        if len(args) > len(self.input_names):
            raise DataError(f"the model takes {len(self.input_names)} input(s) {self.input_names}, got {len(args)}")
        bound = dict(zip(self.input_names, args))
        for name, value in kwargs.items():
            if name not in self.input_names or name in bound:
                raise DataError(f"unexpected or duplicate input {name!r}; the model's inputs are {self.input_names}")
            bound[name] = value
        missing = [n for n in self.input_names if n not in bound]
        if missing:
            raise DataError(f"missing model input(s) {missing}")
        return {k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in bound.items()}

    def forward(self, *args, **kwargs):
        """Run the graph. Inputs by position (graph order) or by name; numpy arrays are accepted.

        Returns the single output tensor, or a tuple in graph output order.
        """
        self._state.training = self.training
        env: dict[str, Any] = dict(self._static)
        for name, (where, key) in self._keys.items():
            env[name] = self.weights[key] if where == "weights" else getattr(self.constants, key)
        env.update(self._bind_inputs(args, kwargs))
        for node, free in zip(self._nodes, self._free_after):
            result = node.fn(node, *[env[i] if i else None for i in node.inputs])
            if not isinstance(result, (tuple, list)):
                result = (result,)
            for name, value in zip(node.outputs, result):
                if name:
                    env[name] = value
            for name in free:
                env.pop(name, None)
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    def extra_repr(self) -> str:
        return f"nodes={len(self._nodes)}, inputs={self.input_names}, outputs={self.output_names}, train_bn={self.train_bn}"


# --------------------------------------------------------------------------------------------
# Public API


def to_torch(model: onnx.ModelProto, train_bn: bool = False) -> OnnxModule:
    """Build a torch module that executes ``model``'s graph.

    Args:
        model: an ONNX model with its weights loaded (external data included). It is not
            modified; model-local functions are inlined in a copy.
        train_bn: when False (default) BatchNormalization always uses the running statistics
            (its scale and bias still train). When True, BN in ``module.train()`` uses batch
            statistics and updates the running statistics, which :func:`write_back` then
            stores. With either setting, ``module.eval()`` gives the ONNX model's own output.

    Returns:
        An :class:`OnnxModule` (in training mode, like any new nn.Module; call ``.eval()`` for
        inference). Its ``forward(*inputs)`` / ``forward(**named_inputs)`` returns a tensor for
        a single-output graph, otherwise a tuple in graph output order.

    Raises:
        ModelError: the graph uses ops (or op variants) the bridge does not implement; the
            message names them and lists the supported ops.
    """
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"to_torch expects an onnx.ModelProto, got {type(model).__name__}")
    return OnnxModule(model, train_bn=train_bn)


def write_back(module: OnnxModule, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose weights are the module's current parameters (and buffers).

    Only tensor data changes: each initializer (or Constant node value) keeps its name, dtype,
    shape and position, and the graph, opset, IR version and metadata are copied unchanged.
    Tensors whose value did not change are left byte-for-byte as they were, so a round trip
    without training reproduces the input exactly. BN running statistics are written as well,
    which matters only for a module built with ``train_bn=True``. ``model`` is not modified.
    """
    if not isinstance(module, OnnxModule):
        raise ModelError(f"write_back needs a module made by to_torch, got {type(module).__name__}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    initializers = {t.name: t for t in out.graph.initializer}
    constants = {n.output[0]: n for n in out.graph.node if n.op_type == "Constant" and n.output}
    for name in module.onnx_names.values():
        if name not in module._writable:
            continue  # a constant from an inlined function: never trained
        tensor = module.tensor(name).detach()
        if name in initializers:
            _write_tensor(initializers[name], tensor)
        elif name in constants:
            _write_constant(constants[name], tensor)
        else:
            raise ModelError(f"the model has no initializer or Constant named {name!r}; was the module built from it?")
    return out


def _as_numpy(tensor: torch.Tensor, like: np.ndarray, name: str) -> np.ndarray:
    """A module tensor as an array with the dtype and shape of the original ONNX tensor."""
    if tuple(tensor.shape) != like.shape:
        raise ModelError(f"tensor {name!r} has shape {tuple(tensor.shape)} in the module but {like.shape} in the model")
    t = tensor.cpu()
    if like.dtype.name == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().view(like.dtype)
    return t.to(_torch_dtype_of(like)).numpy()


def _torch_dtype_of(array: np.ndarray) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=array.dtype)).dtype


def _write_tensor(proto: onnx.TensorProto, tensor: torch.Tensor) -> None:
    """Replace a TensorProto's data in place (as raw_data) unless the value is unchanged."""
    old = _to_numpy(proto)
    new = _as_numpy(tensor, old, proto.name)
    if new.tobytes() == old.tobytes():
        return
    raw = numpy_helper.from_array(new).raw_data
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        proto.ClearField(f)
    proto.raw_data = raw


def _write_constant(node: onnx.NodeProto, tensor: torch.Tensor) -> None:
    """Write a value into a Constant node, in whichever attribute form it already uses."""
    attr = node.attribute[0]
    if attr.name == "value":
        _write_tensor(attr.t, tensor)
        return
    old = _constant_node_value(node)
    new = _as_numpy(tensor, old, node.output[0])
    if new.tobytes() == old.tobytes():
        return
    if attr.name == "value_float":
        attr.f = float(new)
    else:  # value_floats
        del attr.floats[:]
        attr.floats.extend(float(v) for v in new)
