# RRSISDDataset (see docs/datasets.md for the expected layout under data/rrsisd).
_base_ = ["./referring_loaders.py"]

rrsisd_root = "data/rrsisd"
rrsisd_train = dict(
    type="RRSISDDataset", data_root=rrsisd_root, split="train", pipeline={{_base_.train_pipeline}}
)
rrsisd_val = dict(
    type="RRSISDDataset", data_root=rrsisd_root, split="val", pipeline={{_base_.test_pipeline}}
)
rrsisd_test = dict(
    type="RRSISDDataset", data_root=rrsisd_root, split="test", pipeline={{_base_.test_pipeline}}
)

train_dataloader = dict(dataset=rrsisd_train)
val_dataloader = dict(dataset=rrsisd_val)
test_dataloader = dict(dataset=rrsisd_test)
