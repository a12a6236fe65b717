# RSRefSeg 2's training recipe on RISBench: as clipsam2-l_rrsisd.py (300 epochs, lr 1e-4),
# validated on val, tested on test.
_base_ = ["./clipsam2-l_rrsisd.py"]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

data_root = "data/risbench"
split = dict(_delete_=True, type="RISBenchDataset", data_root=data_root)
train_dataloader = dict(dataset=dict(split, split="train", pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(dataset=dict(split, split="val", pipeline={{_base_.test_pipeline}}))
test_dataloader = dict(dataset=dict(split, split="test", pipeline={{_base_.test_pipeline}}))
