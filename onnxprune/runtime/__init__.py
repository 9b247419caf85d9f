"""Running models with onnxruntime: the one place sessions are opened, sub-models are cut and
prefix activations are cached.

    session.py    open_session (providers, threads, >2 GiB models), session, run
    submodel.py   graph walks (nodes above / below a set of tensors) and sub-model extraction
    frontier.py   prefix-activation caching, one implementation (PrefixCache) in two
                  configurations: Frontier (reconstruction passes), SuffixCache (the
                  sensitivity analysis' focused evaluation)
    latency.py    the latency model (onnxruntime profiles of aligned variants, cached) and the
                  interleaved speed-up measurement (issue 16)
"""
