"""The light bottom layer: file formats and I/O shared by ``datagen``, ``llm`` and ``aerialseg``.

- :mod:`aerialformats.aerial_d`: the Aerial-D per-patch XML format (dataclasses, reader, writer);
- :mod:`aerialformats.rle`: COCO RLE masks (record, text parsing, numpy decoders);
- :mod:`aerialformats.atomic`: atomic file writes (temp file + ``os.replace``);
- :mod:`aerialformats.historic`: the historic-imagery filter maths;
- :mod:`aerialformats.seeds`: stable seeds from ids.

Dependencies point one way: these modules import numpy, OpenCV and pycocotools only, never torch,
mmseg or the packages above them (``tests/datagen/test_light_imports.py`` checks it).
"""
