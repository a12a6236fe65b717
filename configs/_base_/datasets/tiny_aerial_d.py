# The tiny Aerial-D set of the CPU configs (python -m aerialseg.models.tiny writes
# data/tiny_aerial_d): 128 px inputs, 4 samples per batch, no worker processes.
_base_ = ["./aerial_d.py"]

img_scale = (128, 128)
# No historic filter: the tiny scenes are told apart by colour, which B&W would erase.
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadReferringMask"),
    dict(type="ReferringResize", scale=img_scale, keep_ratio=True),
    dict(type="PackReferringInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadReferringMask"),
    dict(type="ReferringResize", scale=img_scale, keep_ratio=True, resize_mask=False),
    dict(type="PackReferringInputs"),
]
data_root = "data/tiny_aerial_d"
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
