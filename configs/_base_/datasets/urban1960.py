# Urban1960Dataset (see docs/datasets.md for the expected layout under data/urban1960).
_base_ = ["./referring_loaders.py"]

urban1960_root = "data/urban1960"
urban1960_train = dict(
    type="Urban1960Dataset",
    data_root=urban1960_root,
    split="train",
    pipeline={{_base_.train_pipeline}},
)
urban1960_val = dict(
    type="Urban1960Dataset",
    data_root=urban1960_root,
    split="val",
    pipeline={{_base_.test_pipeline}},
)
urban1960_test = dict(
    type="Urban1960Dataset",
    data_root=urban1960_root,
    split="test",
    pipeline={{_base_.test_pipeline}},
)

train_dataloader = dict(dataset=urban1960_train)
val_dataloader = dict(dataset=urban1960_val)
test_dataloader = dict(dataset=urban1960_test)
