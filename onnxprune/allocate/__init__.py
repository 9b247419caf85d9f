"""Allocation: how many channels each group keeps so that the model meets the target.

    search.py        Allocation, the bisection on the cost model, ranking, blockers
    uniform.py       ACRA's uniform allocation (one ratio for every group)
    sensitivity.py   per-group damage curves (masked evaluation)
    from_scores.py   sensitivity allocation (from the curves) and global allocation (from scores)
    exclude.py       --exclude: groups the user protects, blocked before scoring and allocation
"""
