# ClipSAM2 / RSRefSeg 2: SigLIP 2 so400m/16@512 + cascaded prompter + SAM 2.1 Hiera-L at 1024
# (shared/reference/rsrefseg2.md; docs/model.md). Checkpoints are local: the Hugging Face SigLIP
# folder (google/siglip2-so400m-patch16-512) and the official sam2.1_hiera_large.pt. The import
# configs (configs/clipsam2/rsrefseg2_*.py) take every tensor from a converted RSRefSeg 2 model.
vlm_checkpoint = "checkpoints/siglip2-so400m-patch16-512"
sam2_checkpoint = "checkpoints/sam2.1_hiera_large.pt"

# LoRA as RSRefSeg 2 (r16, alpha 16, dropout 0, unmerged): Hiera attention qkv/proj (not the
# stage-transition projections, not the MLPs) + the four FPN lateral convs; SigLIP vision and text
# attention; the text head (it makes the pooled text of the dense prompt).
sam2_lora_targets = [
    "attn.qkv",
    "attn.proj",
    "neck.convs.0.conv",
    "neck.convs.1.conv",
    "neck.convs.2.conv",
    "neck.convs.3.conv",
]
vision_lora_targets = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
]
text_lora_targets = vision_lora_targets + ["head"]
lora_rsrefseg2 = dict(r=16, alpha=16, dropout=0.0)

model = dict(
    type="ClipSAM2",
    data_preprocessor=dict(
        type="Sam2ReferringDataPreProcessor",
        size=1024,
        bgr_to_rgb=True,
        text_length=64,  # SigLIP's text positions: truncation (and padding unless parity)
        lowercase=False,  # RSRefSeg 2 trained on the raw expressions
        # False: pad every expression to 64 tokens (batch-independent results). True: pad to the
        # longest expression of the batch, as RSRefSeg 2's own inference does.
        parity=False,
    ),
    vlm=dict(pretrained=vlm_checkpoint, text_attention_mask=False, gradient_checkpointing=False),
    sam=dict(
        arch="large",
        checkpoint=sam2_checkpoint,
        # build_sam2's eval-time fallback from mask token 0 to the best of tokens 1-3
        dynamic_multimask=dict(enabled=True, delta=0.05, threshold=0.98),
    ),
    prompter=dict(
        num_queries=3, num_prompts=9, num_layers=2, attn_dim=512, num_heads=8, mlp_dim=512
    ),
    lora=dict(
        sam_image_encoder=dict(lora_rsrefseg2, target_modules=sam2_lora_targets),
        vlm_vision=dict(lora_rsrefseg2, target_modules=vision_lora_targets),
        vlm_text=dict(lora_rsrefseg2, target_modules=text_lora_targets),
    ),
    trainable=[
        "prompter",
        "sam.sam_mask_decoder",
        "sam.sam_prompt_encoder",
        "sam.no_mem_embed",
        "vlm.logit_scale",
        "vlm.logit_bias",
        "loss_contrastive",
    ],
    loss_mask=[
        dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=5.0, avg_non_ignore=False),
        dict(type="DiceLoss", use_sigmoid=True, naive_dice=False, eps=1e-3, loss_weight=5.0),
    ],
    loss_decorrelation_weight=0.5,
    loss_contrastive_weight=0.5,
    save_frozen_weights=False,  # training checkpoints hold only what trains
    test_cfg=dict(threshold=0.5),
)
