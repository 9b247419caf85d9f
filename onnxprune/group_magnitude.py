"""Group magnitude: a data-free score that reads every weight a channel decision removes.

A channel of a group lives in several tensors: the producers' filters (output axis), the
consumers' input slices (input axis), BatchNorm scales. ``l1`` looks at the producers only;
Torch-Pruning's ``GroupMagnitudeImportance`` (the default of its pruners) scores each member
and reduces over the group, so a filter whose output the next layers barely read counts as
unimportant. Following it:

    member score  = sum over the member's slice of |w|^p     (p = 2: squared L2 norm, no root)
    channel score = mean over the members that carry the channel, then divided by the mean
                    over the group's channels

(a member is one weight dim with role out, in or bn_scale; a Flatten block's atoms sum into
their channel). ``group_l1`` is the same with p = 1.
"""

from __future__ import annotations

import numpy as np

from .analysis import BN_SCALE, IN, OUT, Analysis, ChannelGroup

_ROLES = (OUT, IN, BN_SCALE)


def _magnitude(p: int):
    def criterion(group: ChannelGroup, analysis: Analysis, stats=None, seed: int = 0) -> np.ndarray:
        from .criteria import _per_channel, _weight_rows

        total = np.zeros(group.size)
        members = np.zeros(group.size)
        for d in group.dims:
            dim = analysis.dims[d]
            if dim.role not in _ROLES or not dim.constant:
                continue
            rows = _weight_rows(analysis, d)
            values = (np.abs(rows) ** p).sum(1)
            total += _per_channel(group, d, values)
            members += _per_channel(group, d, np.ones(len(values))) > 0
        score = total / np.maximum(members, 1)
        mean = score.mean()
        return score / mean if mean > 0 else score

    return criterion


group_magnitude = _magnitude(2)
group_l1 = _magnitude(1)
