"""Runnable reference models for layouts that come without a module class (BERT), and the rebuild of
Hugging Face models from a recorded config (:mod:`qegraph.models.hf`)."""

from qegraph.models.bert import BertLayout, bert_encoder, bert_pooler
from qegraph.models.hf import HFModel, build_hf_model

__all__ = ["BertLayout", "HFModel", "bert_encoder", "bert_pooler", "build_hf_model"]
