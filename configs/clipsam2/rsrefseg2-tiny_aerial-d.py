# RSRefSeg 2 at tiny widths for CPU tests: the published architecture and recipe (cascaded
# prompter, SAM 2.1 with high-res features and dynamic multimask, LoRA on the same targets, parity
# mode) with a width-32 SigLIP (python -m aerialseg.models.tiny writes checkpoints/tiny) and a
# width-32 SAM 2.1 at 128 px. Like the import configs, every tensor comes from the checkpoint
# given to tools/test.py (the tests convert a synthetic RSRefSeg 2 model in the published layout).
_base_ = [
    "../_base_/models/clipsam2.py",
    "../_base_/datasets/tiny_aerial_d.py",
    "../_base_/schedules/adamw_poly_tiny.py",
    "../_base_/default_runtime.py",
]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

# Hiera with 5 blocks (1, 1, 2, 1), widths 8-64, FPN width 32, 128 px input (8 x 8 embedding).
sam2_tiny_arch = dict(
    _delete_=True,
    base="tiny",
    embed_dim=8,
    num_heads=1,
    stages=(1, 1, 2, 1),
    global_att_blocks=(3,),
    window_spec=(4, 4, 4, 4),
    window_pos_embed_bkg_spatial_size=(4, 4),
    d_model=32,
    image_size=128,
)
lora_tiny = dict(r=4, alpha=4, dropout=0.0)
model = dict(
    data_preprocessor=dict(size=128, parity=True),
    vlm=dict(pretrained="checkpoints/tiny/siglip"),
    sam=dict(arch=sam2_tiny_arch, checkpoint=None),
    prompter=dict(attn_dim=16, num_heads=2, mlp_dim=16),
    lora=dict(
        sam_image_encoder=dict(lora_tiny),
        vlm_vision=dict(lora_tiny),
        vlm_text=dict(lora_tiny),
    ),
    save_frozen_weights=True,
)

val_evaluator = dict(type="ReferringMetric", protocol="rsrefseg_strict")
test_evaluator = val_evaluator
env_cfg = dict(dist_cfg=dict(backend="gloo"))
randomness = dict(seed=0)
