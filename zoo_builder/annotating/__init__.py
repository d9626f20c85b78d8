"""Annotating zoos: landscape metrics (Hessian, CKA, mode connectivity), downstream methods
(averaging, re-basin, pruning, ensembles, transfer) and the phase labels built on them."""
