"""onnxprune: structured channel pruning of ONNX CNNs, ONNX in, ONNX out.

    from onnxprune import compress, Settings, Target, save_model
    result = compress("model.onnx", Settings(target=Target("flops", 0.3)))
    save_model(result.model, "model.pruned.onnx")
"""

from .allocate import Allocation, Limits, Target, allocate_uniform
from .analysis import Analysis, ChannelGroup, analyse
from .cost import Cost, CostModel
from .criteria import CRITERIA
from .errors import DataError, DependencyError, ModelError, OnnxPruneError, PlanError, TargetError
from .graph import Model, load_model, save_model
from .pipeline import Result, Settings, apply_plan, compress, inspect_model, measured_cost
from .plan import Plan
from .rewrite import rewrite, verify

__version__ = "0.1.0"

__all__ = [
    "Allocation", "Analysis", "ChannelGroup", "Cost", "CostModel", "CRITERIA", "DataError", "DependencyError",
    "Limits", "Model", "ModelError", "OnnxPruneError", "Plan", "PlanError", "Result", "Settings", "Target",
    "TargetError", "allocate_uniform", "analyse", "apply_plan", "compress", "inspect_model", "load_model",
    "measured_cost", "rewrite", "save_model", "verify",
]
