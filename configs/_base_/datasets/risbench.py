# RISBenchDataset (see docs/datasets.md for the expected layout under data/risbench). Model
# selection on val, reporting on test (RSRefSeg 2's own configs validate on test).
_base_ = ["./referring_loaders.py"]

risbench_root = "data/risbench"
risbench_train = dict(
    type="RISBenchDataset",
    data_root=risbench_root,
    split="train",
    pipeline={{_base_.train_pipeline}},
)
risbench_val = dict(
    type="RISBenchDataset", data_root=risbench_root, split="val", pipeline={{_base_.test_pipeline}}
)
risbench_test = dict(
    type="RISBenchDataset", data_root=risbench_root, split="test", pipeline={{_base_.test_pipeline}}
)

train_dataloader = dict(dataset=risbench_train)
val_dataloader = dict(dataset=risbench_val)
test_dataloader = dict(dataset=risbench_test)
