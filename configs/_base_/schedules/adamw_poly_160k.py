# AdamW 1e-4 (wd 0.01, none on norms/biases), 1k-iteration linear warm-up, then poly (power 0.9)
# to 160k iterations; bf16 autocast; gradients clipped at 1.0 AFTER unscaling (AmpOptimWrapper
# unscales before clipping). Batch 4 x 2 accumulated = effective batch 8 on one GPU, as in the
# paper; with N GPUs set accumulative_counts so that N x batch x counts stays 8 (or scale lr).
max_iters = 160000
warmup_iters = 1000
optim_wrapper = dict(
    # only trainable parameters, without a warning per frozen one
    constructor="TrainableParamsOptimWrapperConstructor",
    type="AmpOptimWrapper",
    dtype="bfloat16",  # "float16" on GPUs without bf16 (dynamic loss scaling is on)
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2),
    accumulative_counts=2,
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    # The horizon is fixed here, so resuming continues the same curve.
    dict(type="PolyLR", power=0.9, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=8000, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
