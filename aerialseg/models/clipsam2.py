"""ClipSAM2 (RSRefSeg 2): SigLIP features -> cascaded prompter -> SAM 2.1, weight-compatible with
the published RSRefSeg 2 models (``KyanChen/RSRefSeg2``, converted by
:mod:`aerialseg.models.rsrefseg2_checkpoint`).

Data flow for B (image, expression) samples with SigLIP 2 so400m/16@512 + SAM 2.1 Hiera-L at 1024
(spec ``shared/reference/rsrefseg2.md`` §2):

1. :class:`Sam2ReferringDataPreProcessor`: the [0, 1] canvas, ImageNet-normalised for SAM 2
   (B x 3 x 1024 x 1024) and 0.5/0.5-normalised then resized for SigLIP (B x 3 x 512 x 512).
2. SAM 2.1 (:class:`Sam2Parts`): image embedding B x 256 x 64 x 64 (+ ``no_mem_embed``) and the
   high-resolution features B x 32 x 256 x 256, B x 64 x 128 x 128.
3. SigLIP: patches V B x 1152 x 32 x 32 (post-LayerNorm), text tokens T B x L x 1152 and the
   pooled t B x 1152 (``head`` at the last position), the text tower run without a padding mask.
4. :class:`CascadedPrompter`: 9 sparse prompts B x 9 x 256 and the dense logits B x 1 x 256 x 256.
5. SAM 2 mask decoder (9 prompt tokens, dense prompt through ``mask_downscaling``, high-res
   skips; dynamic multimask fallback in eval mode): B x 1 x 256 x 256 logits, resized to the
   1024 canvas (bilinear), then per image: crop the padding, resize to the original size,
   threshold at probability 0.5 (:meth:`ClipSAM.postprocess_result`).

Two modes, chosen by the data pre-processor's ``parity`` flag: ``parity=True`` reproduces RSRefSeg
2's inference exactly, including its batch-longest text padding (an expression's result depends on
the other expressions in its batch); ``parity=False`` pads every expression to 64 tokens, so results
never depend on batch composition. Everything else (image chain, fp32 compute of the bf16-stored
weights, unmerged LoRA, dynamic multimask) is the same in both.

Training (``loss``): 5 x sigmoid BCE (mean over all pixels) + 5 x V-Net Dice on the mask
(``loss_mask``), 0.5 x query decorrelation and 0.5 x query-image contrastive loss (§4.1). One
deliberate difference: Dice leaves padded pixels out (:class:`ReferringMaskLoss`), where RSRefSeg 2
counts them as targets; the three datasets it trained on are square, so nothing is padded there.
Construction, LoRA, trainable sets, checkpoint handling and post-processing are ClipSAM's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import nn

from aerialseg.models.cascaded_prompter import CascadedPrompter
from aerialseg.models.clipsam import ClipSAM
from aerialseg.models.sam2 import Sam2Parts
from aerialseg.models.sam2_losses import QueryImageContrastiveLoss, query_decorrelation_loss

RSREFSEG2_MASK_LOSSES = [
    dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=5.0, avg_non_ignore=False),
    dict(type="DiceLoss", use_sigmoid=True, naive_dice=False, eps=1e-3, loss_weight=5.0),
]
RSREFSEG2_TRAINABLE = (
    "prompter",
    "sam.sam_mask_decoder",
    "sam.sam_prompt_encoder",
    "sam.no_mem_embed",
    "vlm.logit_scale",
    "vlm.logit_bias",
    "loss_contrastive",
)
# Parameters no training step reaches: SAM 2's point/box inputs and "no mask" embedding (there are
# always a dense prompt and no points), and the heads read only by the eval-time multimask
# fallback or the video model (IoU, object score, mask tokens 1-3). They keep their loaded values.
_UNUSED_SAM2_PARAMETERS = (
    "sam.sam_prompt_encoder.point_embeddings",
    "sam.sam_prompt_encoder.not_a_point_embed",
    "sam.sam_prompt_encoder.no_mask_embed",
    "sam.sam_mask_decoder.iou_prediction_head",
    "sam.sam_mask_decoder.pred_obj_score_head",
    "sam.sam_mask_decoder.output_hypernetworks_mlps.1",
    "sam.sam_mask_decoder.output_hypernetworks_mlps.2",
    "sam.sam_mask_decoder.output_hypernetworks_mlps.3",
)


@MODELS.register_module()
class ClipSAM2(ClipSAM):
    """Referring segmentor: SigLIP towers + cascaded prompter + SAM 2.1 (RSRefSeg 2).

    Args:
        vlm: :class:`SiglipTowers` arguments (``pretrained`` folder or ``config``).
        sam: :class:`Sam2Parts` arguments (``arch``, ``checkpoint``, ``dynamic_multimask``).
        prompter: :class:`CascadedPrompter` arguments besides the widths and grid.
        lora: LoRA configs under ``sam_image_encoder``, ``vlm_vision``, ``vlm_text``.
        trainable: sub-modules or parameters that train fully (RSRefSeg 2's set by default).
        loss_mask: mmseg losses on the canvas-sized mask logits.
        loss_decorrelation_weight: weight of :func:`query_decorrelation_loss` (0 = off).
        loss_contrastive_weight: weight of :class:`QueryImageContrastiveLoss` (0 = off; its
            scalars exist either way so RSRefSeg 2 checkpoints load).
        save_frozen_weights: keep frozen tensors in ``state_dict()``, and require them when
            loading (the converted RSRefSeg 2 checkpoints hold the whole model, bf16-rounded
            towers included).
        data_preprocessor: :class:`Sam2ReferringDataPreProcessor` config (``parity`` flag).
        test_cfg: ``threshold`` (probability, 0.5).
    """

    def __init__(
        self,
        vlm: dict,
        sam: dict,
        prompter: dict | None = None,
        lora: dict | None = None,
        trainable: list[str] | tuple[str, ...] = RSREFSEG2_TRAINABLE,
        loss_mask: list[dict] | None = None,
        loss_decorrelation_weight: float = 0.5,
        loss_contrastive_weight: float = 0.5,
        save_frozen_weights: bool = False,
        data_preprocessor: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ):
        data_preprocessor = dict(data_preprocessor or {})
        data_preprocessor.setdefault("type", "Sam2ReferringDataPreProcessor")
        super().__init__(
            vlm=vlm,
            sam=sam,
            prompter=prompter,
            lora=lora,
            trainable=trainable,
            dense_prompt=True,
            loss_mask=loss_mask or RSREFSEG2_MASK_LOSSES,
            loss_iou_weight=0.0,
            loss_activation=None,
            save_frozen_weights=save_frozen_weights,
            data_preprocessor=data_preprocessor,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            init_cfg=init_cfg,
        )
        self.loss_decorrelation_weight = loss_decorrelation_weight
        self.loss_contrastive_weight = loss_contrastive_weight

    # ----------------------------------------------------------------------------- construction
    def _build_sam(self, cfg: dict) -> nn.Module:
        return Sam2Parts(**cfg)

    def _build_prompter(self, cfg: dict) -> nn.Module:
        # The contrastive scalars are built here so that `trainable` (resolved by ClipSAM's
        # constructor right after) can name them.
        self.loss_contrastive = QueryImageContrastiveLoss()
        return CascadedPrompter(
            self.vlm.width,
            self.sam.embed_dim,
            grid_size=self.vlm.grid_size,
            mask_input_size=self.sam.mask_input_size[0],
            **cfg,
        )

    def _unused_parameters(self) -> list[str]:
        return list(_UNUSED_SAM2_PARAMETERS)

    def _summary_parts(self) -> dict[str, nn.Module]:
        return dict(
            sam_image_encoder=self.sam.image_encoder,
            sam_prompt_encoder=self.sam.sam_prompt_encoder,
            sam_mask_decoder=self.sam.sam_mask_decoder,
            vlm_vision=self.vlm.vision,
            vlm_text=self.vlm.text,
            prompter=self.prompter,
        )

    def _ignore_missing_frozen_keys(self, module, incompatible_keys) -> None:
        if not self.save_frozen_weights:
            super()._ignore_missing_frozen_keys(module, incompatible_keys)

    def frozen_state_dict_keys(self) -> set[str]:
        """Keys a trained checkpoint may leave out (none when the model saves them all)."""
        return set() if self.save_frozen_weights else set(self._frozen_keys)

    # ------------------------------------------------------------------------------ forward path
    def encode_text(self, input_ids: torch.Tensor, text_mask: torch.Tensor):
        """N x L token ids -> per-token features N x L x C and pooled N x C.

        In parity mode the text tower gets the padding mask exactly when RSRefSeg 2's does: it
        passes on whatever its tokenizer returns, so the mask goes in only if the tokenizer's
        ``model_input_names`` include ``attention_mask`` (SigLIP 2's tokenizers return
        ``input_ids`` alone). Otherwise ``vlm.text_attention_mask`` decides (off by default).
        """
        pre = self.data_preprocessor
        if getattr(pre, "parity", False) and "attention_mask" in pre.tokenizer.model_input_names:
            output = self.vlm.text(input_ids=input_ids, attention_mask=text_mask)
            return output.last_hidden_state, output.pooler_output
        return self.vlm.encode_text(input_ids, text_mask)

    def extract_feat(self, inputs: dict) -> dict[str, torch.Tensor]:
        """Image features, computed once per image.

        Returns:
            :meth:`Sam2Parts.embed_image`'s ``image_embed``/``high_res_s0``/``high_res_s1`` and
            ``vlm``: B x C x g x g SigLIP patches.
        """
        features = self.sam.embed_image(inputs["sam_pixels"])
        features["vlm"] = self.vlm.encode_image(inputs["vlm_pixels"])
        return features

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
            input_ids: N x L token ids; text_mask: N x L (not given to the text tower).

        Returns:
            ``masks`` N x 1 x S x S logits on the input canvas, ``iou`` N x 1 (SAM 2's predicted
            IoU of the chosen mask), ``dense`` N x 1 x 4h x 4w dense-prompt logits, and the
            stage-0 queries ``queries1``/``queries2`` N x K x C.
        """
        tokens, pooled = self.encode_text(input_ids, text_mask)
        prompts = self.prompter(
            image_features["vlm"][image_index],
            tokens,
            pooled,
            self.vlm.logit_scale,
            self.vlm.logit_bias,
        )
        dense = self.sam.embed_dense_prompt(prompts["dense"])
        masks, iou = self.sam.decode(image_features, image_index, prompts["sparse"], dense)
        canvas = (self.sam.image_size, self.sam.image_size)
        masks = F.interpolate(masks, size=canvas, mode="bilinear", align_corners=False)
        return dict(
            masks=masks,
            iou=iou,
            dense=prompts["dense"],
            queries1=prompts["queries1"],
            queries2=prompts["queries2"],
        )

    def _decode_batch(self, inputs: dict, keep_features: bool = False) -> dict:
        features = self.extract_feat(inputs)
        image_index = torch.arange(len(inputs["input_ids"]), device=inputs["input_ids"].device)
        outputs = self.decode(features, image_index, inputs["input_ids"], inputs["text_mask"])
        if keep_features:
            outputs["vlm"] = features["vlm"]
        return outputs

    def loss(self, inputs: dict, data_samples: list[SegDataSample]) -> dict[str, torch.Tensor]:
        """RSRefSeg 2's losses (§4.1) against the padded S x S targets."""
        outputs = self._decode_batch(inputs, keep_features=True)
        logits = outputs["masks"]
        labels = torch.stack([sample.gt_sem_seg.data[0] for sample in data_samples]).long()
        losses = self.loss_mask(logits, labels)
        if self.loss_decorrelation_weight:
            losses["loss_query_decorrelation"] = self.loss_decorrelation_weight * (
                query_decorrelation_loss(outputs["queries1"], outputs["queries2"])
            )
        if self.loss_contrastive_weight:
            losses["loss_query_contrastive"] = self.loss_contrastive_weight * (
                self.loss_contrastive(outputs["vlm"], outputs["queries2"], labels)
            )
        losses["mask_iou"] = self.mask_iou(logits, labels).mean()
        return losses
