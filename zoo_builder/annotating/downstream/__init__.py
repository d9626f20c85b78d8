"""Downstream methods on trained zoo models, the paper's uses of a population of networks
(REFERENCE §5): :mod:`~zoo_builder.annotating.downstream.permutation` (the weight-space permutation
symmetries of each architecture), :mod:`~zoo_builder.annotating.downstream.rebasin` (Git re-basin weight
matching, averaging seeds in one basin, loss barriers along linear paths),
:mod:`~zoo_builder.annotating.downstream.averaging` (epoch averaging / Wise-FT),
:mod:`~zoo_builder.annotating.downstream.pruning` (magnitude pruning),
:mod:`~zoo_builder.annotating.downstream.ensembling` (output averaging of seeds) and
:mod:`~zoo_builder.annotating.downstream.transfer` (fine-tuning on a new data set).
"""
