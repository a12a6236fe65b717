# All five datasets for joint training (the paper's mix: Aerial-D LLM visual variations + the four
# benchmarks), a concatenated validation set, and every benchmark's test split for tools/test.py
# (Aerial-D has no test split: its val split is used). Sampling weights across datasets belong to
# the training recipe (configs/clipsam/), which wraps joint_train_datasets in its sampler.
_base_ = ["./referring_pipelines.py", "../evaluators/original_resolution.py"]

train_pipeline = {{_base_.train_pipeline}}
test_pipeline = {{_base_.test_pipeline}}
roots = dict(
    aerial_d="data/aerial_d",
    rrsisd="data/rrsisd",
    refsegrs="data/refsegrs",
    nwpu_refer="data/nwpu_refer",
    urban1960="data/urban1960",
)
types = dict(
    aerial_d="AerialDDataset",
    rrsisd="RRSISDDataset",
    refsegrs="RefSegRSDataset",
    nwpu_refer="NWPUReferDataset",
    urban1960="Urban1960Dataset",
)

joint_train_datasets = [
    dict(type=types[name], data_root=roots[name], split="train", pipeline=train_pipeline)
    for name in roots
]
joint_train_datasets[0]["expr_types"] = ("unique",)
joint_val_datasets = [
    dict(type=types[name], data_root=roots[name], split="val", pipeline=test_pipeline)
    for name in roots
]
test_sets = [
    dict(
        name=f"{name}_{'val' if name == 'aerial_d' else 'test'}",
        dataloader=dict(
            batch_size=1,
            num_workers=2,
            sampler=dict(type="DefaultSampler", shuffle=False),
            dataset=dict(
                type=types[name],
                data_root=roots[name],
                split="val" if name == "aerial_d" else "test",
                pipeline=test_pipeline,
            ),
        ),
    )
    for name in roots
]

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="ConcatDataset", datasets=joint_train_datasets),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="ConcatDataset", datasets=joint_val_datasets),
)
test_dataloader = test_sets[0]["dataloader"]
# Aerial-D has no test split: its val split is both validated on and reported (tables say so).
allow_val_test_overlap = dict(aerial_d="Aerial-D has no test split; its val split is reported")
