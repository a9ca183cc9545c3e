"""The BIF's search spaces for ``tune.trials`` (see :mod:`tdabench.harness.plugin.space`): the one
tuning searches now and the earlier ones that committed studies searched (``tune.sampler=tpe``)
and ``benchmarks/tuning_budget.py`` compares."""

from __future__ import annotations

from tdabench.harness.plugin.space import Float, Int

#: what the BIF's tuning searches (chains x draws are its cost ladder): the localization ``gamma``,
#: the SGLD step on the mean training loss ``eps * nbeta`` (too small: the chain does not move in
#: the draws given; too large: it diverges), the inverse temperature ``nbeta`` as a multiple of
#: n_train (null = 1 x n_train; it sets the posterior's width against gamma's; ``eps`` is the step
#: over it), the burn-in and the steps between draws (autocorrelation of the draws); log scales
#: where the plausible values span decades. The step, not ``eps``, is searched because it is what
#: the tuned digits studies agree on across sizes and cost rungs: their best trials have
#: eps * nbeta of 0.05 to 0.7 at 100 to 1,597 images and at 4 x 100 or 8 x 400 draws, and 29 of
#: their 31 diverged chains 1.7 or more (completed ones reach 2.35: the edge is blurred), while the
#: best eps moved from 3e-4 to 3e-3 with the draws (results/reference/settings_bif_digits,
#: results/reference/tuning_budget); bounding it at 1 keeps trials off diverging chains. nbeta
#: starts at 0.2 x n and gamma at 5: below, the posterior is so wide (and eps, the step over nbeta,
#: so large) that chains diverge at any step (a first try of this space with nbeta from 0.05 x n
#: and gamma from 3 lost 6 and 9 of the first 30 trials of two studies so); no best trial lay there. Tasks
#: where good settings lie elsewhere redeclare dimensions (Task.search_spaces: the CIFAR tasks)
BIF_SPACE = {"gamma": Float(5.0, 300.0, log=True), "eps": Float(0.02, 1.0, log=True, times="nbeta"),
             "nbeta": Float(0.2, 5.0, log=True, per_n_train=True, null=1.0),
             "burn_in": Int(0, 500), "steps_between_draws": Int(2, 32, log=True)}
#: the space before the step was searched, centred (log scale) on the best settings of the 16-trial
#: digits studies at 100 to 1,597 images (gamma 11 to 100, eps 1.4e-4 to 9e-4, nbeta 0.4 to 14 x n,
#: 5 to 18 steps between draws); benchmarks/tuning_budget.py compares it
BIF_SPACE_CENTRED = {"gamma": Float(3.0, 300.0, log=True), "eps": Float(3e-5, 3e-3, log=True),
                     "nbeta": Float(0.25, 16.0, log=True, per_n_train=True, null=1.0),
                     "burn_in": Int(0, 500), "steps_between_draws": Int(2, 24, log=True)}
#: the space before it was centred: the studies of results/reference/small_data_digits and
#: small_data_cifar10 searched it (benchmarks/tuning_budget.py compares the two)
BIF_SPACE_WIDE = {"gamma": Float(1.0, 1000.0, log=True), "eps": Float(1e-5, 1e-3, log=True),
                  "nbeta": Float(0.1, 10.0, log=True, per_n_train=True, null=1.0),
                  "burn_in": Int(0, 500), "steps_between_draws": Int(1, 20, log=True)}
