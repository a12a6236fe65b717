"""LoRA adapters through ``peft``, configured as data (rank, alpha, dropout, target modules).

A tower's LoRA config is a dict ``dict(r=16, alpha=16, dropout=0.1, target_modules=[...])``.
Targets use peft's matching: a name matches a module whose qualified name equals it or ends with
``'.' + name`` (``'attn.qkv'`` matches ``blocks.3.attn.qkv``). Every target must match at least
one layer: a misspelt or absent name (``o_proj`` in SigLIP) is an error, never silently ignored.
"""

from __future__ import annotations

from torch import nn

from aerialseg.models.lora_fused import use_fused_lora

LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


def _matches(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)


def apply_lora(module: nn.Module, cfg: dict, where: str) -> list[str]:
    """Inject LoRA layers into ``module`` in place and return the adapted layer names.

    peft freezes every non-LoRA parameter of ``module``.

    Args:
        module: the tower to adapt.
        cfg: ``dict(r, alpha, dropout, target_modules)``.
        where: the tower's name, for error messages.

    Raises:
        ValueError: unknown keys, or a target that matches no layer.
    """
    from peft import LoraConfig, inject_adapter_in_model

    unknown = set(cfg) - LORA_KEYS
    if unknown or "target_modules" not in cfg or "r" not in cfg:
        raise ValueError(
            f"LoRA config of {where} must have keys r, alpha, dropout, target_modules; "
            f"got {sorted(cfg)}"
        )
    targets = list(cfg["target_modules"])
    names = [name for name, _ in module.named_modules()]
    unmatched = [t for t in targets if not any(_matches(name, t) for name in names)]
    if unmatched:
        raise ValueError(f"LoRA targets {unmatched} match no layer of {where}")
    config = LoraConfig(
        r=cfg["r"],
        lora_alpha=cfg.get("alpha", cfg["r"]),
        lora_dropout=cfg.get("dropout", 0.0),
        target_modules=targets,
        bias="none",
    )
    inject_adapter_in_model(config, module)
    use_fused_lora(module)  # same maths, fewer full-size passes (aerialseg.models.lora_fused)
    return [name for name in names if any(_matches(name, t) for t in targets)]


def lora_parameter_count(module: nn.Module) -> int:
    """Number of LoRA parameters (``lora_A``/``lora_B`` weights) in ``module``."""
    return sum(p.numel() for name, p in module.named_parameters() if "lora_" in name)
