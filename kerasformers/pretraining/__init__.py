"""Pretraining on your own text: shards on disk, objectives on the fly, `fit` on any backend.

Filled in by the modules of this package (see the README section "Pretraining").
"""
