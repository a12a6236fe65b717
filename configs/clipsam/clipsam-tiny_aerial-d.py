# Tiny ClipSAM for CPU: trains in seconds on the tiny Aerial-D set. Write the tiny random-init
# SigLIP folder + SAM .pth and the data first:  python -m aerialseg.models.tiny
# (checkpoints/tiny, data/tiny_aerial_d). Same model, LoRA and loss code as the real recipes.
_base_ = [
    "../_base_/models/clipsam.py",
    "../_base_/datasets/tiny_aerial_d.py",
    "../_base_/schedules/adamw_poly_tiny.py",
    "../_base_/default_runtime.py",
]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

model = dict(
    data_preprocessor=dict(size=128),
    # Trained from scratch, so the text tower may mask padding; this makes the pooled (last
    # position) feature depend on the words quickly. Real SigLIP configs keep it False.
    vlm=dict(pretrained="checkpoints/tiny/siglip", text_attention_mask=True),
    sam=dict(arch="tiny", checkpoint="checkpoints/tiny/sam_tiny.pth"),
    # An 8 x 8 patch grid: one stride-2 block leaves 16 prompt tokens (two would leave 4).
    prompter=dict(num_downsample=1, norm_cfg=dict(type="GN", num_groups=8)),
    lora=dict(
        sam_image_encoder=dict(r=4, alpha=4, dropout=0.0),
        vlm_vision=dict(r=4, alpha=4, dropout=0.0),
        vlm_text=dict(r=4, alpha=4, dropout=0.0),
    ),
    # Random towers have no text-image alignment to start from (pretrained SigLIP does);
    # supervising the global activation map with the target teaches it directly. Without it the
    # tiny model settles on ignoring the expression.
    loss_activation=[
        dict(
            type="CrossEntropyLoss",
            use_sigmoid=True,
            loss_weight=1.0,
            avg_non_ignore=True,
            loss_name="loss_activation",
        )
    ],
)

env_cfg = dict(dist_cfg=dict(backend="gloo"))
randomness = dict(seed=0)
