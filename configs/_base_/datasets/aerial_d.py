# AerialDDataset (see docs/datasets.md for the expected layout under data/aerial_d).
_base_ = ["./referring_loaders.py"]

aerial_d_root = "data/aerial_d"
aerial_d_train = dict(
    type="AerialDDataset",
    data_root=aerial_d_root,
    split="train",
    pipeline={{_base_.train_pipeline}},
)
aerial_d_val = dict(
    type="AerialDDataset", data_root=aerial_d_root, split="val", pipeline={{_base_.test_pipeline}}
)
aerial_d_test = dict(
    type="AerialDDataset", data_root=aerial_d_root, split="val", pipeline={{_base_.test_pipeline}}
)

train_dataloader = dict(dataset=aerial_d_train)
val_dataloader = dict(dataset=aerial_d_val)
test_dataloader = dict(dataset=aerial_d_test)
# Aerial-D has no test split: its val split is both validated on and reported (tables say so).
allow_val_test_overlap = dict(aerial_d="Aerial-D has no test split; its val split is reported")
