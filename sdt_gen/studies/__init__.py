"""Studies: train one model per arm and seed under one fixed protocol, score them alike, and publish what the
paired runs say, with the provenance of every number.

``protocol`` (defaults, arms, the record a rerun must repeat), ``runs`` (run folders, training to a step with
resume, timing records), ``evaluation`` (the evaluator, samples and their scores), ``statistics`` (paired
differences by seed, Holm), ``equal_time`` (arms at equal compute), ``report`` (``results.json``'s analysis and
``summary.md``), ``plots`` (the pictures; the ``plots`` extra), ``driver`` (a study from its command line to its
folder) and ``comparisons`` (the sampler comparisons' scores). The study scripts are in ``experiments/``. Nothing
else in the library imports this package.
"""
