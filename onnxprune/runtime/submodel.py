"""Cutting sub-models out of a graph and walking it: the nodes a set of tensors depends on,
the nodes a set of tensors can change, a segment between stored tensors, a model exposing
chosen tensors as outputs. Used by the calibration pass, the reconstruction's frontier and the
sensitivity analysis' prefix cache."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx


def subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read, possibly from the outer scope."""
    names = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for n in g.node:
                names += list(n.input) + subgraph_inputs(n)
    return names


def needed_nodes(graph: onnx.GraphProto, targets: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes the targets depend on, in their original (topological) order."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    keep: set[int] = set()
    stack = list(targets)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in keep:
            continue
        keep.add(i)
        node = graph.node[i]
        stack += [name for name in list(node.input) + subgraph_inputs(node) if name]
    return [node for i, node in enumerate(graph.node) if i in keep]


def producers_above(graph, producer: dict[str, int], names: set[str], stop: set[str] = frozenset()) -> set[int]:
    """The nodes that ``names`` depend on, not looking above the tensors in ``stop``."""
    seen, stack = set(), [producer[t] for t in names if t in producer and t not in stop]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(producer[t] for t in graph.node[i].input if t in producer and t not in stop)
    return seen


def changed_nodes(graph: onnx.GraphProto, names: set[str]) -> set[int]:
    """Indices of the nodes whose result can change with the tensors ``names``: their readers
    and everything downstream."""
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    changed, stack = set(), [i for t in names for i in consumers.get(t, [])]
    while stack:
        i = stack.pop()
        if i not in changed:
            changed.add(i)
            stack.extend(j for t in graph.node[i].output for j in consumers.get(t, []))
    return changed


def segment(proto: onnx.ModelProto, nodes: list[int], inputs: dict[str, np.dtype], outputs: list[str],
            shapes: dict[str, list] | None = None, graph_inputs: set[str] | None = None,
            value_info: bool = False) -> onnx.ModelProto:
    """The model made of ``nodes`` (indices, in graph order) reading the stored tensors ``inputs``
    (name -> dtype) as graph inputs, besides the original inputs they read (only those in
    ``graph_inputs`` where given: the others stay initializers, constants to onnxruntime).
    Stored tensors' shapes are ``shapes[name]`` where given, else left to onnxruntime;
    ``value_info`` keeps the declared shapes of the tensors the segment reads and makes."""
    graph = proto.graph
    used = {t for i in nodes for t in graph.node[i].input}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    del g.node[:], g.output[:], g.initializer[:], g.value_info[:], g.input[:]
    g.node.extend(graph.node[i] for i in nodes)
    g.initializer.extend(t for t in graph.initializer if t.name in used)
    g.input.extend(i for i in graph.input if i.name in used and i.name not in inputs
                   and (graph_inputs is None or i.name in graph_inputs))
    for name, dtype in inputs.items():
        shape = None if shapes is None else shapes.get(name)
        g.input.append(onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(dtype), shape))
    if value_info:
        known = {t for i in nodes for t in graph.node[i].output} | set(inputs)
        g.value_info.extend(v for v in graph.value_info if v.name in known)
    for name in outputs:
        g.output.append(onnx.ValueInfoProto(name=name))
    return out


def exposing(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A model whose graph outputs are ``names``: only the nodes and initializers they need (an
    LDRF wave deep in the network runs the whole prefix, an early wave a few layers), types
    left for onnxruntime to infer."""
    graph = proto.graph
    producer = {t: i for i, n in enumerate(graph.node) for t in n.output}
    needed, stack = set(), [producer[n] for n in names if n in producer]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(producer[t] for t in graph.node[i].input if t in producer)
        for a in graph.node[i].attribute:  # a subgraph may read outer tensors: keep everything
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                needed = set(range(len(graph.node)))
                stack = []
                break
    used = {t for i in needed for t in graph.node[i].input}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    del g.node[:], g.output[:], g.initializer[:], g.value_info[:]
    g.node.extend(graph.node[i] for i in sorted(needed))
    g.initializer.extend(t for t in graph.initializer if t.name in used)
    kept_inputs = [i for i in graph.input if i.name in used or i.name in names]
    del g.input[:]
    g.input.extend(kept_inputs)
    for name in names:
        g.output.append(onnx.ValueInfoProto(name=name))
    return out


# --- compensation inside the masked evaluator ---------------------------------------------------
