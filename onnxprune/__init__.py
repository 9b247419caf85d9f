"""onnxprune: structured channel pruning of ONNX CNNs, ONNX in, ONNX out.

    from onnxprune import compress, Settings, Target, save_model, write_report
    result = compress("model.onnx", Settings(target=Target("flops", 0.3)))
    save_model(result.model, "model.pruned.onnx")
    write_report("model.report.html", "model.onnx", result=result)   # or build_report(...) -> Report

The public names are imported on first use (PEP 562), so ``import onnxprune`` and the CLI's
start-up stay fast and numpy/onnx load only when something needs them.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Allocation": "allocate.search", "Limits": "settings", "Target": "settings", "allocate_uniform": "allocate.uniform",
    "Analysis": "analysis", "ChannelGroup": "analysis", "analyse": "analysis",
    "Cost": "cost", "CostModel": "cost",
    "CRITERIA": "scoring.weights",
    "DataError": "errors", "DependencyError": "errors", "ModelError": "errors", "OnnxPruneError": "errors",
    "PlanError": "errors", "TargetError": "errors",
    "Model": "model.graph", "load_model": "model.graph", "save_model": "model.files",
    "Result": "pipeline", "Settings": "settings", "apply_plan": "pipeline", "compress": "pipeline",
    "inspect_model": "pipeline", "measured_cost": "pipeline", "sensitivity_analysis": "pipeline",
    "Plan": "plan",
    "Report": "report.model", "ReportSettings": "settings", "build_report": "report.build", "write_report": "report.build",
    "verify": "rewrite",
}
# ``rewrite`` (the function) is not exported here: the submodule onnxprune.rewrite has the same
# name, and once any code imports that submodule the package attribute is the module. Use
# ``from onnxprune.rewrite import rewrite``.

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__ + ["__version__"]
