# RSRefSeg-l trained jointly on all five datasets: SAM ViT-L with LoRA rank 32.
_base_ = ["./clipsam-b_joint.py"]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

lora_l = dict(r=32, alpha=32, dropout=0.1)
model = dict(
    sam=dict(arch="vit_l", checkpoint="checkpoints/sam_vit_l_0b3195.pth"),
    lora=dict(sam_image_encoder=lora_l, vlm_vision=lora_l, vlm_text=lora_l),
)
