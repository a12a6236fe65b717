"""Convert a published RSRefSeg 2 model into a ClipSAM2 checkpoint:
``python tools/convert_rsrefseg2.py SRC.pth DST.pth [--config CONFIG] [--no-check]``.

See ``aerialseg.models.rsrefseg2_checkpoint`` for the key mapping and the checks."""

from aerialseg.models.rsrefseg2_checkpoint import main

if __name__ == "__main__":
    main()
