# RefSegRSDataset (see docs/datasets.md for the expected layout under data/refsegrs).
_base_ = ["./referring_loaders.py"]

refsegrs_root = "data/refsegrs"
refsegrs_train = dict(
    type="RefSegRSDataset",
    data_root=refsegrs_root,
    split="train",
    pipeline={{_base_.train_pipeline}},
)
refsegrs_val = dict(
    type="RefSegRSDataset", data_root=refsegrs_root, split="val", pipeline={{_base_.test_pipeline}}
)
refsegrs_test = dict(
    type="RefSegRSDataset", data_root=refsegrs_root, split="test", pipeline={{_base_.test_pipeline}}
)

train_dataloader = dict(dataset=refsegrs_train)
val_dataloader = dict(dataset=refsegrs_val)
test_dataloader = dict(dataset=refsegrs_test)
