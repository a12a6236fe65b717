# RSRefSeg 2's training recipe on RRSIS-D (shared/reference/rsrefseg2.md §3-4): SigLIP 2
# so400m/16@512 + SAM 2.1 Hiera-L, LoRA r16, 300 epochs at 8 samples per GPU, lr 1e-4. Unlike
# RSRefSeg 2 (which validated and chose its best checkpoint on test), validation uses val.
_base_ = [
    "../_base_/models/clipsam2.py",
    "../_base_/datasets/rrsisd.py",
    "../_base_/schedules/rsrefseg2_adamw_cosine.py",
    "../_base_/default_runtime.py",
]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"
# RSRefSeg 2's metric: strict Pr@X, an empty union gives NaN (configs/_base_/evaluators/).
val_evaluator = dict(type="ReferringMetric", protocol="rsrefseg_strict")
test_evaluator = val_evaluator
log_processor = dict(by_epoch=True)  # epoch-based schedule

img_scale = (1024, 1024)
# No augmentation of any kind, as RSRefSeg 2. Both pipelines resize with mmcv's cv2 bilinear
# (RSRefSeg 2's Resize), not with the Pillow backend of the shared referring pipelines.
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadReferringMask"),
    dict(type="ReferringResize", scale=img_scale, keep_ratio=True, backend="cv2"),
    dict(type="PackReferringInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadReferringMask"),
    dict(
        type="ReferringResize", scale=img_scale, keep_ratio=True, resize_mask=False, backend="cv2"
    ),
    dict(type="PackReferringInputs"),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(pipeline=train_pipeline),
)
val_dataloader = dict(batch_size=8, num_workers=4, dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(batch_size=8, num_workers=4, dataset=dict(pipeline=test_pipeline))
