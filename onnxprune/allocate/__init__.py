"""Allocation: how many channels each group keeps so that the model meets the target.

    search.py        Allocation, the bisection on the cost model, ranking, blockers
    uniform.py       ACRA's uniform allocation (one ratio for every group)
    sensitivity.py   per-group damage curves (masked evaluation)
    from_scores.py   sensitivity allocation (from the curves) and global allocation (from scores)
    blocks.py        the search over aligned channel blocks (round_to > 1, exact FLOPs/params targets)
    speed.py         speed-up / latency targets (issue 16): the block search under runtime.latency's model,
                     measured and re-solved
    exclude.py       --exclude: groups the user protects, blocked before scoring and allocation
"""
