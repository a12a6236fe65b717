"""Render N samples of a config's dataset (image, target overlay, expression) to PNG files:
``python tools/browse_dataset.py CONFIG [--split train|val|test] [-n 20] [--output-dir D]
[--historic] [--cfg-options k=v ...]``."""

from aerialseg.datasets.browse import browse_main

if __name__ == "__main__":
    browse_main()
