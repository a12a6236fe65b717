# NWPUReferDataset (see docs/datasets.md for the expected layout under data/nwpu_refer).
_base_ = ["./referring_loaders.py"]

nwpu_refer_root = "data/nwpu_refer"
nwpu_refer_train = dict(
    type="NWPUReferDataset",
    data_root=nwpu_refer_root,
    split="train",
    pipeline={{_base_.train_pipeline}},
)
nwpu_refer_val = dict(
    type="NWPUReferDataset",
    data_root=nwpu_refer_root,
    split="val",
    pipeline={{_base_.test_pipeline}},
)
nwpu_refer_test = dict(
    type="NWPUReferDataset",
    data_root=nwpu_refer_root,
    split="test",
    pipeline={{_base_.test_pipeline}},
)

train_dataloader = dict(dataset=nwpu_refer_train)
val_dataloader = dict(dataset=nwpu_refer_val)
test_dataloader = dict(dataset=nwpu_refer_test)
