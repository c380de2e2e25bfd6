"""One module per evaluator of ``--mode eval``; each ``run(exp, params, ...)`` returns a dict of metrics.

- :mod:`.loss` — the test loss (``eval.enable_loss``);
- :mod:`.bpd` — bits/dim from the probability-flow ODE (``eval.enable_bpd``);
- :mod:`.samples` — FID / IS / KID of samples (``eval.enable_sampling``), and of a sample directory;
- :mod:`.classifier` — a noise-conditional classifier's accuracy per noise level.

A new evaluator is a new module here with a ``run`` and one line in :mod:`score_jax.pipeline.evaluate`.
"""
