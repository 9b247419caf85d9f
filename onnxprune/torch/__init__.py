"""PyTorch hand-off: run an ONNX model as a torch module, fine-tune it, write the weights back.

    from onnxprune.torch import to_torch, write_back, finetune

Needs the optional dependency: ``pip install 'onnxprune[torch]'``. Importing this package
without torch raises :class:`onnxprune.errors.DependencyError`.
"""

from ..errors import require_torch

require_torch()

from .module import OnnxModule, to_torch, write_back  # noqa: E402
from .ops import SUPPORTED_OPS  # noqa: E402
from .finetune import FinetuneResult, finetune  # noqa: E402

__all__ = ["to_torch", "write_back", "finetune", "FinetuneResult", "OnnxModule", "SUPPORTED_OPS"]
