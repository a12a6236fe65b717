# Dataloader and evaluator defaults shared by the single-dataset configs (aerial_d, rrsisd,
# refsegrs, nwpu_refer, urban1960): each of them sets only the `dataset` of every loader.
# The evaluator is the default protocol preset (configs/_base_/evaluators/).
_base_ = ["./referring_pipelines.py", "../evaluators/original_resolution.py"]

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
)
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
)
