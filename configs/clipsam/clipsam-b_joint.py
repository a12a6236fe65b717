# RSRefSeg-b trained jointly on all five datasets (Aerial-D LLM visual variations + RRSIS-D,
# RefSegRS, NWPU-Refer, Urban1960SatSeg): the model of the paper's Tables III and IV.
# Datasets are mixed with explicit shares instead of by size (plain concatenation gives Aerial-D
# ~85-90% of the samples and RefSegRS < 1%); set weights=None, temperature=1.0 for the paper's
# size-proportional mix, or a temperature > 1 to flatten it.
_base_ = [
    "../_base_/models/clipsam.py",
    "../_base_/datasets/joint.py",
    "../_base_/schedules/adamw_poly_160k.py",
    "../_base_/default_runtime.py",
]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

dataset_weights = dict(aerial_d=0.4, rrsisd=0.2, nwpu_refer=0.2, refsegrs=0.1, urban1960=0.1)
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    sampler=dict(_delete_=True, type="WeightedDatasetSampler", weights=dataset_weights),
)
val_dataloader = dict(batch_size=4, num_workers=4)
test_dataloader = dict(batch_size=4, num_workers=4)
