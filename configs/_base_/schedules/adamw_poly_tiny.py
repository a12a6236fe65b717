# CPU schedule for the tiny model: 600 iterations of AdamW 5e-3 with warm-up and poly decay, fp32
# (mmengine's AmpOptimWrapper needs a GPU), clipping at 1.0.
max_iters = 600
warmup_iters = 20
optim_wrapper = dict(
    # only trainable parameters, without a warning per frozen one
    constructor="TrainableParamsOptimWrapperConstructor",
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="PolyLR", power=0.9, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
