# RSRefSeg-b on Aerial-D alone (all expression types): SigLIP 2 so400m/14@384 + SAM ViT-B,
# LoRA r=16 on the three towers; 160k iterations at effective batch 8 (4 x 2 accumulated), bf16.
# The paper's Table V rows are this recipe with train_dataloader.dataset.expr_types set to
# ("original",), ("enhanced",) or ("unique",) (see docs/model.md).
_base_ = [
    "../_base_/models/clipsam.py",
    "../_base_/datasets/aerial_d.py",
    "../_base_/schedules/adamw_poly_160k.py",
    "../_base_/default_runtime.py",
]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

train_dataloader = dict(batch_size=4, num_workers=4)
val_dataloader = dict(batch_size=4, num_workers=4)
test_dataloader = dict(batch_size=4, num_workers=4)
