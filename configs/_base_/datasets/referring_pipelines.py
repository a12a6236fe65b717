# Pipelines shared by the referring datasets. Images are resized so the longer side is img_scale
# (ClipSAM pads to a square canvas); test pipelines leave the target mask at the original size so
# ReferringMetric scores at the original resolution.
img_scale = (1024, 1024)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadReferringMask"),
    # Pillow: SAM's own ResizeLongestSide resizes with PIL (antialiased); cv2 aliases when
    # shrinking (tests/models/test_referee_sam.py).
    dict(type="ReferringResize", scale=img_scale, keep_ratio=True, backend="pillow"),
    # After resizing, so the grain strength does not depend on the source resolution.
    dict(type="HistoricFilter", prob=0.2),
    dict(type="PackReferringInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadReferringMask"),
    dict(
        type="ReferringResize",
        scale=img_scale,
        keep_ratio=True,
        resize_mask=False,
        backend="pillow",
    ),
    dict(type="PackReferringInputs"),
]
