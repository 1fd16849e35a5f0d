"""Runnable reference models for layouts that come without a module class (BERT)."""

from qegraph.models.bert import BertLayout, bert_encoder, bert_pooler

__all__ = ["BertLayout", "bert_encoder", "bert_pooler"]
