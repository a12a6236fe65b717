# NWPUReferDataset (see docs/datasets.md for the expected layout under data/nwpu_refer).
_base_ = ["./referring_pipelines.py"]

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

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=nwpu_refer_train,
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=nwpu_refer_val,
)
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=nwpu_refer_test,
)
val_evaluator = {{_base_.referring_evaluator}}
test_evaluator = {{_base_.referring_evaluator}}
