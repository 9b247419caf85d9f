"""Errors that onnxprune raises for problems a user can fix.

Every error carries a one-line message that names the problem; the CLI prints it as
``error: <message>`` and exits with status 1. Anything else escaping the library is a bug.
"""


class OnnxPruneError(Exception):
    """Base class: a problem with the user's input, settings or environment."""


class ModelError(OnnxPruneError):
    """The model cannot be read, is not valid ONNX, or has an unsupported structure."""


class DataError(OnnxPruneError):
    """Calibration or evaluation data does not match the model's inputs."""


class TargetError(OnnxPruneError):
    """The requested FLOPs/parameter reduction is invalid or cannot be reached."""


class PlanError(OnnxPruneError):
    """A pruning plan does not fit the model it is applied to."""


class DependencyError(OnnxPruneError):
    """An optional dependency (onnxruntime, torch, pillow, matplotlib) is missing."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type name:
    third-party errors (protobuf, onnxruntime) become one-line messages."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def require_onnxruntime():
    """Import onnxruntime or raise a DependencyError naming the extra to install."""
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError(
            "onnxruntime is not installed: pip install 'onnxprune[cpu]' (or 'onnxprune[gpu]' for CUDA)"
        ) from exc
    return onnxruntime


def require_torch():
    """Import torch or raise a DependencyError naming the extra to install."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError("torch is not installed: pip install 'onnxprune[torch]'") from exc
    return torch
