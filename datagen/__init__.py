"""Aerial-D dataset generation: sources -> patches -> rules -> unique expressions -> exports.

Stages (each a module with a function and a ``datagen`` subcommand): :mod:`datagen.synthetic`,
:mod:`datagen.isaid_patches`, :mod:`datagen.loveda_patches`, :mod:`datagen.rules`,
:mod:`datagen.expressions` (with :mod:`datagen.uniqueness`), :mod:`datagen.historic`,
:mod:`datagen.export`; :mod:`datagen.pipeline` runs them all from one config
(:mod:`datagen.config`). ``datagen`` never imports ``aerialseg``: the Aerial-D format, the atomic
writers and the historic filter come from the light bottom package :mod:`aerialformats`, so no
stage imports torch or mmseg (``tests/datagen/test_light_imports.py`` checks it).
"""
