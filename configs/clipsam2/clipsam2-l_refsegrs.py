# RSRefSeg 2's training recipe on RefSegRS: 600 epochs, lr 2e-4, cosine from epoch 60 with
# T_max 1080 (otherwise as clipsam2-l_rrsisd.py), validated on val, tested on test.
_base_ = ["./clipsam2-l_rrsisd.py"]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

data_root = "data/refsegrs"
split = dict(_delete_=True, type="RefSegRSDataset", data_root=data_root)
train_dataloader = dict(dataset=dict(split, split="train", pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(dataset=dict(split, split="val", pipeline={{_base_.test_pipeline}}))
test_dataloader = dict(dataset=dict(split, split="test", pipeline={{_base_.test_pipeline}}))

max_epochs = 600
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(
        type="LinearLR",
        start_factor=0.01,
        by_epoch=True,
        begin=0,
        end=5,
        convert_to_iter_based=True,
    ),
    dict(
        type="CosineAnnealingLR",
        T_max=1080,
        eta_min_ratio=0.01,
        by_epoch=True,
        begin=60,
        end=max_epochs,
    ),
]
train_cfg = dict(max_epochs=max_epochs)
