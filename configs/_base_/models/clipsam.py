# ClipSAM / RSRefSeg-b: SigLIP 2 so400m/14@384 + SAM ViT-B at 1024 (see docs/model.md).
# Checkpoints are local: a Hugging Face SigLIP folder and the official segment-anything .pth.
vlm_checkpoint = "checkpoints/siglip2-so400m-patch14-384"
sam_checkpoint = "checkpoints/sam_vit_b_01ec64.pth"

# LoRA targets as in the original RSRefSeg: SAM encoder attention + MLP + neck convs, SigLIP vision
# attention, SigLIP text attention + the pooling head.
sam_lora_targets = ["attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2", "neck.0", "neck.2"]
vision_lora_targets = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
]
text_lora_targets = vision_lora_targets + ["head"]

model = dict(
    type="ClipSAM",
    data_preprocessor=dict(
        type="ReferringDataPreProcessor",
        size=1024,  # SAM sees the source image resized to 1024, never upsampled from 384
        bgr_to_rgb=True,
        text_length=64,  # SigLIP's fixed text length: pad and truncate to 64 tokens
        lowercase=True,  # SigLIP 2 was trained on lower-cased text
    ),
    vlm=dict(
        pretrained=vlm_checkpoint,
        text_attention_mask=False,  # SigLIP's text tower was trained without a padding mask
        gradient_checkpointing=False,
    ),
    sam=dict(arch="vit_b", checkpoint=sam_checkpoint, with_cp=False),
    prompter=dict(num_downsample=2, norm_cfg=dict(type="GN", num_groups=32)),
    lora=dict(
        sam_image_encoder=dict(r=16, alpha=16, dropout=0.1, target_modules=sam_lora_targets),
        vlm_vision=dict(r=16, alpha=16, dropout=0.1, target_modules=vision_lora_targets),
        vlm_text=dict(r=16, alpha=16, dropout=0.1, target_modules=text_lora_targets),
    ),
    # Trained fully besides LoRA. SigLIP's logit_scale/logit_bias stay frozen unless listed
    # ("vlm.logit_scale", "vlm.logit_bias").
    trainable=["prompter", "sam.mask_decoder", "sam.prompt_encoder"],
    dense_prompt=True,
    loss_mask=[
        dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=0.9, avg_non_ignore=True),
        dict(type="DiceLoss", use_sigmoid=True, naive_dice=True, eps=1.0, loss_weight=0.1),
    ],
    loss_iou_weight=1.0,  # supervise SAM's IoU head; its output is the prediction score
    save_frozen_weights=False,  # checkpoints hold only what trains (tens of MB)
    test_cfg=dict(threshold=0.5),
)
