"""A transformers model class for finetunekit's text models: an encoder (``AutoModel``), mean or
CLS pooling of its last hidden states, and a linear head. The config's ``problem_type`` says what
the outputs are: class logits (``single_label_classification``), per-label logits
(``multi_label_classification``; ``thresholds`` holds each label's decision threshold on the
sigmoid), or values in target units (``regression``).

``finetunekit export RUN_DIR --format hf`` copies this file into the export directory as
``modeling_finetunekit.py`` and points the config's ``auto_map`` at it, so the directory loads with
transformers alone (no finetunekit installed)::

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained("export/hf", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained("export/hf")
    batch = tokenizer(["a gripping film"], padding=True, truncation=True, return_tensors="pt")
    model.config.id2label[model(**batch).logits.argmax(-1).item()]

Why not a stock class: ``BertForSequenceClassification`` (and its siblings) classify
``tanh(dense(hidden[CLS]))``, through a pooler layer this model does not have, while finetunekit
classifies the mean of the token states (or the raw CLS state). No stock class computes that, so
loading these weights into one would silently give other predictions. The config therefore has its
own ``model_type``: without ``trust_remote_code=True`` transformers refuses to load it rather than
guessing.

This file must import nothing but torch and transformers: it runs where finetunekit is absent.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class FinetunekitTextConfig(PretrainedConfig):
    model_type = "finetunekit_text_classifier"

    def __init__(self, encoder_config: dict | None = None, pooling: str = "mean", **kwargs) -> None:
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder_config = dict(encoder_config or {})
        self.pooling = pooling
        super().__init__(**kwargs)


class FinetunekitForSequenceClassification(PreTrainedModel):
    config_class = FinetunekitTextConfig
    base_model_prefix = "encoder"

    def __init__(self, config: FinetunekitTextConfig) -> None:
        super().__init__(config)
        encoder_config = AutoConfig.for_model(**config.encoder_config)
        # The saved encoder config names its own dtype (float32); from_pretrained(dtype=...) sets only
        # this config's, and an encoder left in float32 under a bfloat16 head fails in the head.
        if getattr(config, "dtype", None) is not None:
            encoder_config.dtype = config.dtype
        try:  # BERT-like encoders: the pooler layer is unused (pooling happens below)
            self.encoder = AutoModel.from_config(encoder_config, add_pooling_layer=False)
        except TypeError:
            self.encoder = AutoModel.from_config(encoder_config)
        self.classifier = nn.Linear(encoder_config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only reached for weights missing from the checkpoint; exports contain every weight.
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.data.zero_()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            if attention_mask is None:
                attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:  # by the config's problem_type, as transformers' own classifiers
            if self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.float(), labels.float().view_as(logits))
            elif self.config.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
