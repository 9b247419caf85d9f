"""Channel scores: which channels of a group matter least.

    registry.py     the one list of criteria (name -> needs data?, what it measures)
    weights.py      data-free criteria on the weights (l1, l2, fpgm, bn_scale, random, group_magnitude, group_l1)
    activations.py  data criteria from calibration statistics (hrank, apoz, mean_activation, recon)
    calibrate.py    the calibration pass: one onnxruntime run feeding the collectors
    collectors.py   streamed per-channel statistics (ranks, APoZ, means, Gram matrices)
    ranks.py        exact matrix ranks of feature maps (HRank)
    obs.py          structured Optimal Brain Surgeon: statistics, greedy, per-group error profiles
    obs_select.py   OBS's sequential selection on the network pruned so far (issue 17)
"""
