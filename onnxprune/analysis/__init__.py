"""Channel dependency analysis: which channels of which tensors must be removed together.

    builder.py       atoms, dims, the Builder the rules tie atoms with (roles IN/OUT/...)
    rules.py         one rule per op type (one table, RULES)
    shape_rules.py   rules of the ops that move channels (Transpose, Concat, Split, Slice, ...)
    reshape_rules.py the rule of Reshape/Flatten/Squeeze/Unsqueeze (channel shuffles included)
    shape_common.py  helpers those rules and rules.py share (channel axis, pass-through)
    shape_values.py  run-time shape values (Shape -> Gather -> Concat) as affine forms
    groups.py        ``analyse``: rules over the graph, union-find, groups, shape-value checks
    oracle.py        the masking-equivalence check (tests, coverage and sensitivity share it)
    coverage.py      per-model coverage summary (``onnxprune inspect --coverage``)

    analysis = analyse(load_model("model.onnx"))
    [g.name for g in analysis.groups if g.prunable]
"""

from .builder import BN_SCALE, DEPTHWISE, IN, OUT, Builder, ChannelGroup, Dim, Spread
from .groups import Analysis, analyse

__all__ = ["Analysis", "BN_SCALE", "Builder", "ChannelGroup", "DEPTHWISE", "Dim", "IN", "OUT", "Spread", "analyse"]
