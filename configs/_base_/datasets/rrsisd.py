# RRSISDDataset (see docs/datasets.md for the expected layout under data/rrsisd).
_base_ = ["./referring_pipelines.py"]

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

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=rrsisd_train,
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=rrsisd_val,
)
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=rrsisd_test,
)
val_evaluator = {{_base_.referring_evaluator}}
test_evaluator = {{_base_.referring_evaluator}}
