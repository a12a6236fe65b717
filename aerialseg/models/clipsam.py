"""ClipSAM (RSRefSeg): SigLIP features turned into SAM prompts for referring segmentation.

Data flow for B (image, expression) samples, with SigLIP so400m/14@384 + SAM ViT-B at 1024:

1. SAM image encoder: sam_pixels B x 3 x 1024 x 1024 -> B x 256 x 64 x 64.
2. SigLIP vision tower: vlm_pixels B x 3 x 384 x 384 -> patches V, B x 1152 x 27 x 27.
3. SigLIP text tower: input_ids B x 64 -> tokens T, B x 64 x 1152, pooled t, B x 1152.
4. :class:`ActivationPrompter`: (V, T, t) -> 49 sparse tokens B x 49 x 256 and the global
   activation logits B x 1 x 27 x 27.
5. SAM prompt encoder's mask path: global logits (resized to 256 x 256) -> dense B x 256 x 64 x 64.
6. SAM mask decoder (one mask per prompt): B x 1 x 256 x 256 logits and B x 1 predicted IoU,
   bilinearly resized to the input canvas (1024) for the loss, and to each image's original size
   for predictions.

What trains is configuration: LoRA adapters per tower (``lora``), whole sub-modules or parameters
by name (``trainable``); everything else is frozen. By default checkpoints leave out the frozen
pretrained tensors (they are rebuilt from the SigLIP folder and SAM ``.pth``), so a ClipSAM-L
checkpoint holds tens of MB instead of 5 GB; the config saved in the checkpoint rebuilds the model.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.structures import PixelData
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import nn

from aerialseg.models.feature_cache import build_feature_cache
from aerialseg.models.lora import apply_lora, lora_parameter_count
from aerialseg.models.mask_loss import ReferringMaskLoss
from aerialseg.models.prompter import ActivationPrompter
from aerialseg.models.sam import SamParts
from aerialseg.models.siglip import SiglipTowers

DEFAULT_MASK_LOSSES = [
    dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=0.9, avg_non_ignore=True),
    dict(type="DiceLoss", use_sigmoid=True, naive_dice=True, eps=1.0, loss_weight=0.1),
]
# Parameters the architecture never uses: SAM's point/box embeddings (there are no point or box
# prompts) and the three multi-mask output heads (one mask per expression). Freezing them keeps
# DDP's find_unused_parameters off.
_UNUSED_SAM_PARAMETERS = (
    "sam.prompt_encoder.point_embeddings",
    "sam.prompt_encoder.not_a_point_embed",
    "sam.mask_decoder.output_hypernetworks_mlps.1",
    "sam.mask_decoder.output_hypernetworks_mlps.2",
    "sam.mask_decoder.output_hypernetworks_mlps.3",
)


@MODELS.register_module()
class ClipSAM(BaseSegmentor):
    """Referring segmentor: SigLIP towers + activation prompter + SAM.

    Args:
        vlm: :class:`SiglipTowers` arguments (``pretrained`` folder or ``config``).
        sam: :class:`SamParts` arguments (``arch``, ``checkpoint``, ``with_cp``).
        prompter: :class:`ActivationPrompter` arguments besides the widths.
        lora: per-tower LoRA configs under the keys ``sam_image_encoder``, ``vlm_vision`` and
            ``vlm_text`` (``dict(r, alpha, dropout, target_modules)``); absent = no LoRA.
        trainable: names of sub-modules or parameters that train fully, e.g. ``'prompter'``,
            ``'sam.mask_decoder'``, ``'vlm.logit_scale'``. LoRA parameters always train.
        dense_prompt: feed the global activation map through SAM's mask input (else SAM's
            "no mask" embedding).
        loss_mask: mmseg loss configs on the mask logits (see :class:`ReferringMaskLoss`).
        loss_iou_weight: weight of the MSE between SAM's predicted IoU and the IoU of the
            predicted mask with the target (0 disables it and freezes the IoU head).
        loss_activation: optional mmseg losses on the global activation logits (resized to the
            canvas) against the target: direct supervision of the text-image alignment, which
            towers trained from scratch need (see the tiny config); give them distinct
            ``loss_name`` values, e.g. ``'loss_activation'``.
        save_frozen_weights: keep frozen pretrained tensors in ``state_dict()``.
        feature_cache: ``dict(dir=..., towers=('sam', 'vlm'))``: in training, read the outputs
            of these frozen image towers (no LoRA) from a content-addressed disk cache instead of
            recomputing them every epoch (:mod:`aerialseg.models.feature_cache`).
        data_preprocessor: :class:`ReferringDataPreProcessor` config; ``vlm_path`` defaults to
            ``vlm['pretrained']``.
        test_cfg: ``threshold`` (probability, 0.5) for ``pred_sem_seg``.
    """

    def __init__(
        self,
        vlm: dict,
        sam: dict,
        prompter: dict | None = None,
        lora: dict | None = None,
        trainable: list[str] | tuple[str, ...] = ("prompter",),
        dense_prompt: bool = True,
        loss_mask: list[dict] | None = None,
        loss_iou_weight: float = 1.0,
        loss_activation: list[dict] | None = None,
        save_frozen_weights: bool = False,
        feature_cache: dict | None = None,
        data_preprocessor: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ):
        data_preprocessor = dict(data_preprocessor or dict(type="ReferringDataPreProcessor"))
        if data_preprocessor.get("vlm_path") is None:
            if vlm.get("pretrained") is None:
                raise ValueError(
                    "data_preprocessor.vlm_path is needed when vlm has no 'pretrained'"
                )
            data_preprocessor["vlm_path"] = vlm["pretrained"]
        # Built here from mmseg's registry, so that no default scope needs to be set.
        super().__init__(data_preprocessor=MODELS.build(data_preprocessor), init_cfg=init_cfg)
        self.train_cfg = train_cfg or {}
        self.test_cfg = test_cfg or {}
        self.vlm = SiglipTowers(**vlm)
        self.sam = self._build_sam(sam)
        self.prompter = self._build_prompter(prompter or {})
        self.loss_mask = ReferringMaskLoss(loss_mask or DEFAULT_MASK_LOSSES)
        self.dense_prompt = dense_prompt
        self.loss_iou_weight = loss_iou_weight
        self.loss_activation = ReferringMaskLoss(loss_activation) if loss_activation else None
        if self.loss_activation is not None:
            shared = {loss.loss_name for loss in self.loss_mask.losses} & {
                loss.loss_name for loss in self.loss_activation.losses
            }
            if shared:
                raise ValueError(f"loss_activation reuses the loss names {sorted(shared)}")
        self.save_frozen_weights = save_frozen_weights
        self._check_geometry()

        self.lora_cfg = dict(lora or {})
        towers = self._lora_towers()
        unknown = set(self.lora_cfg) - set(towers)
        if unknown:
            raise ValueError(f"unknown LoRA towers {sorted(unknown)}; expected {sorted(towers)}")
        for name, cfg in self.lora_cfg.items():
            if cfg:
                apply_lora(towers[name], cfg, name)
        self._set_trainable(trainable)
        self.feature_cache = build_feature_cache(
            feature_cache, dict(sam=self.sam.image_encoder, vlm=self.vlm.vision)
        )
        self._frozen_keys = self._pretrained_frozen_keys()
        self.register_load_state_dict_post_hook(self._ignore_missing_frozen_keys)
        for line in self.parameter_summary_lines():
            print_log(line, logger="current", level=logging.INFO)

    # ----------------------------------------------------------------------------- construction
    # Subclasses (ClipSAM2) swap the SAM generation and the prompter through these hooks and keep
    # everything else: towers, LoRA, trainable sets, checkpoint handling, post-processing.
    def _build_sam(self, cfg: dict) -> nn.Module:
        return SamParts(**cfg)

    def _build_prompter(self, cfg: dict) -> nn.Module:
        return ActivationPrompter(self.vlm.width, self.sam.embed_dim, **cfg)

    def _lora_towers(self) -> dict[str, nn.Module]:
        """The modules a ``lora`` config may adapt, by config key."""
        return dict(
            sam_image_encoder=self.sam.image_encoder,
            vlm_vision=self.vlm.vision,
            vlm_text=self.vlm.text,
        )

    def _unused_parameters(self) -> list[str]:
        """Prefixes of parameters the forward pass never uses (always frozen)."""
        unused = list(_UNUSED_SAM_PARAMETERS)
        if self.loss_iou_weight == 0:
            unused.append("sam.mask_decoder.iou_prediction_head")
        unused.append(
            "sam.prompt_encoder.no_mask_embed"
            if self.dense_prompt
            else "sam.prompt_encoder.mask_downscaling"
        )
        return unused

    def _summary_parts(self) -> dict[str, nn.Module]:
        return dict(
            sam_image_encoder=self.sam.image_encoder,
            sam_prompt_encoder=self.sam.prompt_encoder,
            sam_mask_decoder=self.sam.mask_decoder,
            vlm_vision=self.vlm.vision,
            vlm_text=self.vlm.text,
            prompter=self.prompter,
        )

    def _check_geometry(self) -> None:
        pre = self.data_preprocessor
        if pre.size != self.sam.image_size:
            raise ValueError(
                f"data_preprocessor.size {pre.size} must equal SAM's image size "
                f"{self.sam.image_size}"
            )
        if pre.vlm_size != self.vlm.image_size:
            raise ValueError(
                f"the SigLIP processor in '{pre.vlm_path}' resizes to {pre.vlm_size}, but the "
                f"vision tower expects {self.vlm.image_size}"
            )

    def _set_trainable(self, trainable) -> None:
        parameters = dict(self.named_parameters())
        chosen = set()
        for name in trainable:
            if name in parameters:
                chosen.add(name)
                continue
            try:
                module = self.get_submodule(name)
            except AttributeError:
                raise ValueError(
                    f"'trainable' names '{name}', which is neither a sub-module nor a parameter of "
                    f"{type(self).__name__} (e.g. 'prompter', 'vlm.logit_scale')"
                ) from None
            chosen.update(f"{name}.{key}" for key, _ in module.named_parameters())
        unused = self._unused_parameters()
        for name, parameter in parameters.items():
            never_used = any(name.startswith(prefix + ".") for prefix in unused)
            parameter.requires_grad_(("lora_" in name or name in chosen) and not never_used)
        self.trainable = tuple(trainable)

    def _pretrained_frozen_keys(self) -> set[str]:
        """state_dict keys that come from the SigLIP/SAM checkpoints and never change."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {
            key
            for key in super().state_dict()
            if key.startswith(("vlm.", "sam.")) and key not in trainable
        }

    def parameter_summary(self) -> dict[str, tuple[int, int]]:
        """``{part: (trainable, total)}`` parameter counts, plus ``'lora'`` and ``'all'``."""
        parts = self._summary_parts()
        summary = {
            name: (
                sum(p.numel() for p in module.parameters() if p.requires_grad),
                sum(p.numel() for p in module.parameters()),
            )
            for name, module in parts.items()
        }
        lora = lora_parameter_count(self)
        summary["lora"] = (lora, lora)
        summary["all"] = (
            sum(p.numel() for p in self.parameters() if p.requires_grad),
            sum(p.numel() for p in self.parameters()),
        )
        return summary

    def parameter_summary_lines(self) -> list[str]:
        lines = [f"{type(self).__name__} parameters (trainable / total):"]
        for name, (trainable, total) in self.parameter_summary().items():
            lines.append(f"  {name:<20} {trainable:>13,} / {total:>13,}")
        return lines

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        state = super().state_dict(
            *args, destination=destination, prefix=prefix, keep_vars=keep_vars
        )
        if not self.save_frozen_weights:
            for key in self._frozen_keys:
                state.pop(prefix + key, None)
        return state

    def frozen_state_dict_keys(self) -> set[str]:
        """Keys a trained checkpoint may leave out: the frozen SigLIP/SAM tensors, rebuilt from
        the pretrained files (the strict-loading contract of ``aerialseg.apis.trained_weights``)."""
        return set(self._frozen_keys)

    def _ignore_missing_frozen_keys(self, module, incompatible_keys) -> None:
        """Frozen pretrained tensors are loaded at construction, not from training checkpoints."""
        missing = incompatible_keys.missing_keys
        kept = [key for key in missing if not self._is_frozen_key(key)]
        missing[:] = kept

    def _is_frozen_key(self, key: str) -> bool:
        # mmengine passes keys relative to the module it loads into (ClipSAM or a wrapper).
        parts = key.split(".")
        return any(".".join(parts[i:]) in self._frozen_keys for i in range(len(parts)))

    # ------------------------------------------------------------------------------ forward path
    def extract_feat(self, inputs: dict) -> dict[str, torch.Tensor]:
        """Image features, computed once per image.

        Returns:
            ``sam``: B x D x h x w SAM image embedding; ``vlm``: B x C x g x g SigLIP patches.
        """
        encoders = dict(
            sam=(self.sam.embed_image, inputs["sam_pixels"]),
            vlm=(self.vlm.encode_image, inputs["vlm_pixels"]),
        )
        if self.feature_cache is not None and self.training:
            return self.feature_cache.encode_all(encoders)
        return {name: encode(pixels) for name, (encode, pixels) in encoders.items()}

    def encode_text(self, input_ids: torch.Tensor, text_mask: torch.Tensor):
        """N x L token ids -> per-token features N x L x C and pooled N x C."""
        return self.vlm.encode_text(input_ids, text_mask)

    def decode(
        self,
        image_features: dict[str, torch.Tensor],
        image_index: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Masks for N expressions over B images.

        Args:
            image_features: from :meth:`extract_feat` (B images).
            image_index: N (long), the image each expression refers to.
            input_ids, text_mask: N x L.

        Returns:
            ``masks``: mask logits N x 1 x S x S on the input canvas (the decoder's 4h x 4w
            output resized); ``iou``: SAM's predicted IoU N x 1; ``activation``: the global
            activation logits N x 1 x g x g.
        """
        tokens, pooled = self.encode_text(input_ids, text_mask)
        patches = image_features["vlm"][image_index]
        grid = patches.shape[-2:]
        sparse, global_logits = self.prompter(
            patches,
            tokens,
            text_mask,
            pooled,
            self.vlm.logit_scale,
            self.vlm.logit_bias,
            self.sam.grid_pe(tuple(grid)),
        )
        if self.dense_prompt:
            dense = self.sam.embed_dense_prompt(global_logits)
        else:
            embedding = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            dense = embedding.expand(len(image_index), -1, *image_features["sam"].shape[-2:])
        masks, iou = self.sam.decode(image_features["sam"], image_index, sparse, dense)
        canvas = (self.sam.image_size, self.sam.image_size)
        masks = F.interpolate(masks, size=canvas, mode="bilinear", align_corners=False)
        return dict(masks=masks, iou=iou, activation=global_logits)

    def _decode_batch(self, inputs: dict) -> dict[str, torch.Tensor]:
        features = self.extract_feat(inputs)
        image_index = torch.arange(len(inputs["input_ids"]), device=inputs["input_ids"].device)
        return self.decode(features, image_index, inputs["input_ids"], inputs["text_mask"])

    def encode_decode(self, inputs: dict, batch_data_samples=None) -> torch.Tensor:
        """One expression per image -> mask logits B x 1 x S x S on the input canvas."""
        return self._decode_batch(inputs)["masks"]

    def _forward(self, inputs: dict, data_samples=None) -> torch.Tensor:
        """Mask logits B x 1 x S x S (no post-processing)."""
        return self.encode_decode(inputs, data_samples)

    def loss(self, inputs: dict, data_samples: list[SegDataSample]) -> dict[str, torch.Tensor]:
        """Mask losses (BCE + Dice) against the padded targets on the S x S canvas, plus the
        IoU-head MSE and the optional activation-map loss."""
        outputs = self._decode_batch(inputs)
        logits = outputs["masks"]
        labels = torch.stack([sample.gt_sem_seg.data[0] for sample in data_samples]).long()
        losses = self.loss_mask(logits, labels)
        if self.loss_activation is not None:
            activation = F.interpolate(
                outputs["activation"], size=labels.shape[-2:], mode="bilinear", align_corners=False
            )
            losses.update(self.loss_activation(activation, labels))
        mask_iou = self.mask_iou(logits, labels)
        if self.loss_iou_weight:
            losses["loss_iou"] = self.loss_iou_weight * F.mse_loss(
                outputs["iou"][:, 0].float(), mask_iou
            )
        losses["mask_iou"] = mask_iou.mean()
        return losses

    @torch.no_grad()
    def mask_iou(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """IoU per sample (B) of the B x 1 x S x S logits > 0 with the padded B x S x S labels,
        padding excluded; 1 when both are empty."""
        valid = labels != self.loss_mask.ignore_index
        predicted = (logits[:, 0] > 0) & valid
        target = (labels == 1) & valid
        intersection = (predicted & target).flatten(1).sum(1).float()
        union = (predicted | target).flatten(1).sum(1).float()
        return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)

    def predict(self, inputs: dict, data_samples: list[SegDataSample] | None = None):
        """Predictions at each image's original size.

        Returns:
            the data samples with ``seg_logits`` (1 x H x W logits), ``pred_sem_seg``
            (1 x H x W uint8 {0, 1}) and ``pred_score`` (SAM's predicted IoU, shape 1).
        """
        outputs = self._decode_batch(inputs)
        logits, iou = outputs["masks"], outputs["iou"]
        if data_samples is None:
            shape = tuple(logits.shape[-2:])
            data_samples = [
                SegDataSample(metainfo=dict(ori_shape=shape, img_shape=shape)) for _ in logits
            ]
        return self.postprocess_result(logits, data_samples, iou)

    def postprocess_result(self, seg_logits, data_samples, iou=None):
        """Crop the padding, undo flips, resize to ``ori_shape`` and threshold each mask."""
        threshold = float(self.test_cfg.get("threshold", 0.5))
        logit_threshold = math.log(threshold / (1 - threshold))
        for index, sample in enumerate(data_samples):
            height, width = sample.metainfo["img_shape"][:2]
            logits = seg_logits[index : index + 1, :, :height, :width].float()
            if sample.metainfo.get("flip"):
                direction = sample.metainfo.get("flip_direction", "horizontal")
                logits = logits.flip(dims=(3,) if direction == "horizontal" else (2,))
            logits = F.interpolate(
                logits,
                size=tuple(sample.metainfo["ori_shape"][:2]),
                mode="bilinear",
                align_corners=False,
            )[0]
            sample.set_data(
                dict(
                    seg_logits=PixelData(data=logits),
                    pred_sem_seg=PixelData(data=(logits > logit_threshold).to(torch.uint8)),
                )
            )
            if iou is not None:
                sample.pred_score = iou[index].float().clamp(0, 1)
        return data_samples
