"""An optimizer-wrapper constructor for models whose pretrained towers are mostly frozen.

mmengine's ``DefaultOptimWrapperConstructor`` (needed for ``paramwise_cfg``, e.g. no weight decay
on norms and biases) logs one warning per frozen parameter: thousands of lines for SigLIP so400m +
SAM. This constructor walks the model the same way but passes over modules whose own parameters
are all frozen, so only trainable parameters reach the optimizer and the log stays readable.
"""

from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableParamsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that silently leaves out frozen modules.

    Use with ``optim_wrapper=dict(constructor='TrainableParamsOptimWrapperConstructor', ...)``;
    ``paramwise_cfg`` works as usual on the trainable parameters.
    """

    def add_params(
        self, params: list[dict], module: nn.Module, prefix: str = "", is_dcn_module=None
    ) -> None:
        own = [parameter for _, parameter in module.named_parameters(recurse=False)]
        if any(parameter.requires_grad for parameter in own) or not own:
            if any(p.requires_grad for p in module.parameters()):
                super().add_params(params, module, prefix, is_dcn_module)
            return
        # Every parameter of this module is frozen: only its children may train.
        for name, child in module.named_children():
            child_prefix = f"{prefix}.{name}" if prefix else name
            self.add_params(params, child, child_prefix, is_dcn_module)
