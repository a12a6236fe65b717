"""Aerial-D dataset generation: sources -> patches -> rules -> unique expressions -> exports.

Stages (each a module with a function and a ``datagen`` subcommand): :mod:`datagen.synthetic`,
:mod:`datagen.isaid_patches`, :mod:`datagen.loveda_patches`, :mod:`datagen.rules`,
:mod:`datagen.expressions` (with :mod:`datagen.uniqueness`), :mod:`datagen.historic`,
:mod:`datagen.export`; :mod:`datagen.pipeline` runs them all from one config
(:mod:`datagen.config`). Importing this package is light: ``aerialseg`` (and torch) are only
imported by the historic and export stages.
"""
