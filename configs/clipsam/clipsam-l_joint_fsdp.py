# RSRefSeg-l joint training sharded with FSDP through mmengine's FlexibleRunner, for GPUs that
# cannot hold the whole model and optimizer state:
#   tools/dist_train.sh configs/clipsam/clipsam-l_joint_fsdp.py 8
_base_ = ["./clipsam-l_joint.py"]
custom_imports = dict(imports=["aerialseg"], allow_failed_imports=False)
default_scope = "mmseg"

runner_type = "FlexibleRunner"
strategy = dict(
    type="FSDPStrategy",
    model_wrapper=dict(
        auto_wrap_policy=dict(
            type="torch.distributed.fsdp.wrap.size_based_auto_wrap_policy",
            min_num_params=int(1e7),
        ),
        # frozen base weights and trainable LoRA tensors end up in the same flat parameters
        use_orig_params=True,
    ),
)
optim_wrapper = dict(use_fsdp=True)  # AmpOptimWrapper with a ShardedGradScaler
# FSDP gathers full state dicts itself; keep every tensor rather than filtering frozen ones.
model = dict(save_frozen_weights=True)
