# The published RSRefSeg 2 model for RISBench (KyanChen/RSRefSeg2 risbench.pth) in parity mode: the
# same outputs as RSRefSeg 2's own inference, batch composition included (8 expressions per batch,
# text padded to the longest of the batch), scored with its metric (strict Pr@X, empty union NaN).
#   python tools/convert_rsrefseg2.py risbench.pth checkpoints/rsrefseg2_risbench.pth \
#       --config configs/clipsam2/rsrefseg2_risbench.py
#   python tools/test.py configs/clipsam2/rsrefseg2_risbench.py checkpoints/rsrefseg2_risbench.pth
# Every tensor comes from the converted checkpoint (bf16 values run in fp32); the SigLIP folder
# gives the architecture, tokenizer and processor settings, its weights are replaced. Data,
# pipelines (cv2 resize), metric and batch size are those of the training recipe it builds on.
_base_ = ["./clipsam2-l_risbench.py"]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

model = dict(
    data_preprocessor=dict(parity=True),
    sam=dict(checkpoint=None),  # SAM 2.1-L weights come from the converted checkpoint
    save_frozen_weights=True,  # the checkpoint must carry every tensor
)
