# RSRefSeg-l on Aerial-D alone: SAM ViT-L with LoRA rank 32 (the paper's -l setting), otherwise as
# clipsam-b_aerial-d.py.
_base_ = ["./clipsam-b_aerial-d.py"]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

lora_l = dict(r=32, alpha=32, dropout=0.1)
model = dict(
    sam=dict(arch="vit_l", checkpoint="checkpoints/sam_vit_l_0b3195.pth"),
    lora=dict(sam_image_encoder=lora_l, vlm_vision=lora_l, vlm_text=lora_l),
)
