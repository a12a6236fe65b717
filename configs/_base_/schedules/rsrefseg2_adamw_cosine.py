# RSRefSeg 2's schedule (shared/reference/rsrefseg2.md §4.2-4.3), epoch-based: AdamW (wd 0.05 on
# every parameter), gradient clipping 3.0, bf16 autocast (RSRefSeg 2 ran DeepSpeed bf16 weights),
# linear warm-up over 5 epochs, constant to 10 % of training, then cosine with T_max longer than
# the window (it never reaches eta_min). 8 samples per GPU. Validation every 10 epochs.
max_epochs = 300
cosine_begin = 30
cosine_t_max = 390  # the 7469d09 configs; 7cda8cda used 600 (which trained the weights is unknown)
optim_wrapper = dict(
    constructor="TrainableParamsOptimWrapperConstructor",
    type="AmpOptimWrapper",
    dtype="bfloat16",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    clip_grad=dict(max_norm=3.0, norm_type=2),
)
param_scheduler = [
    dict(
        type="LinearLR",
        start_factor=0.01,
        by_epoch=True,
        begin=0,
        end=5,
        convert_to_iter_based=True,
    ),
    dict(
        type="CosineAnnealingLR",
        T_max=cosine_t_max,
        eta_min_ratio=0.01,
        by_epoch=True,
        begin=cosine_begin,
        end=max_epochs,
    ),
]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=10)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(
        type="CheckpointHook", by_epoch=True, interval=10, max_keep_ckpts=5, save_best="mIoU"
    ),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
