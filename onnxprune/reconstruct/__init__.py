"""Reconstruction: re-express removed channels through kept ones and fold the fit into the
next layers' weights (README, "How it works").

    moments.py      streamed first/second moments (the one Gram implementation, float64)
    consumers.py    the linear layers that read a pruned tensor
    fit.py          ridge least squares, principal-subspace embedding, output errors
    fold.py         folding a fit into weights and biases
    ldrf.py         the passes: waves of consumers over the calibration data (``reconstruct``)
    compensator.py  the same fit for the sensitivity analysis' masked evaluation
    obs_fold.py     folding the structured OBS refit (``--reconstruct obs``, issue 17)
"""

from .compensator import Compensator
from .consumers import LINEAR_CONSUMERS, Consumer, channels_of, find_consumers
from .fit import fit, output_errors
from .fold import apply_folds, fold, weight_blocks
from .ldrf import ReconstructionSummary, reconstruct, stream_moments
from .moments import Moments, gram

__all__ = ["Compensator", "Consumer", "LINEAR_CONSUMERS", "Moments", "ReconstructionSummary", "apply_folds",
           "channels_of", "find_consumers", "fit", "fold", "gram", "output_errors", "reconstruct", "stream_moments",
           "weight_blocks"]
