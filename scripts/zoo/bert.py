"""BERT, RoBERTa and DistilBERT for sequence classification in plain torch, written from
Hugging Face's transformers/models/bert/modeling_bert.py, roberta/modeling_roberta.py and
distilbert/modeling_distilbert.py (BertEmbeddings, BertSelfAttention, BertSelfOutput,
BertIntermediate, BertOutput, BertPooler, BertForSequenceClassification) with its parameter
names (`bert.embeddings.word_embeddings.weight`, `bert.encoder.layer.0.attention.self.query.weight`,
`classifier.weight`, ...), so that its checkpoints load by name. It covers BERT and the BERTs
that share its code (MiniLM), with absolute positions, no token type input (all zeros, as
transformers defaults), an additive padding mask of the float minimum, and eval-time dropout
as identity.

Every size the checkpoint's config.json sets is a tensor shape or a plain attribute, never a
TorchScript constant, so one scripted archive per depth takes any width, head count, epsilon,
activation and dropout rate: torchlite sets them at load (src/textzoo.ts). The layer count is
structure, hence one archive per depth (scripts/zoo/make_zoo.py).

This file is also the reference the parity tests compare with (scripts/fixtures/bert_parity.py);
scripts/zoo/check_bert_transformers.py checks it against transformers where that is installed.
"""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

GELU, GELU_TANH, RELU = 0, 1, 2
ACTIVATIONS = {"gelu": GELU, "gelu_new": GELU_TANH, "gelu_pytorch_tanh": GELU_TANH, "relu": RELU}


class LayerNorm(nn.Module):
    eps: float

    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, [x.size(-1)], self.weight, self.bias, self.eps)


class Dropout(nn.Module):
    p: float

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training)


class Embedding(nn.Module):
    padding_idx: int

    def __init__(self, count: int, dim: int, padding_idx: int = -1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(count, dim) * 0.02)
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        padding: Optional[int] = None
        if self.padding_idx >= 0:
            padding = self.padding_idx
        return F.embedding(ids, self.weight, padding)


class Embeddings(nn.Module):
    padding_positions: int

    def __init__(self, c, padding_positions: bool = False):
        super().__init__()
        # RoBERTa numbers positions from the padding index + 1 and gives padding the padding
        # index (transformers' create_position_ids_from_input_ids); BERT counts from 0.
        self.padding_positions = int(padding_positions)
        self.word_embeddings = Embedding(c["vocab_size"], c["hidden_size"], c.get("pad_token_id", 0))
        self.position_embeddings = Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = Embedding(c.get("type_vocab_size", 2), c["hidden_size"])
        self.LayerNorm = LayerNorm(c["hidden_size"], c.get("layer_norm_eps", 1e-12))
        self.dropout = Dropout(c.get("hidden_dropout_prob", 0.1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.padding_positions == 1:
            pad = self.word_embeddings.padding_idx
            keep = input_ids.ne(pad).to(torch.long)
            positions = torch.cumsum(keep, dim=1) * keep + pad
        else:
            positions = torch.arange(input_ids.size(1), device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(torch.zeros_like(input_ids)) + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    num_attention_heads: int

    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.num_attention_heads = c["num_attention_heads"]
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.dropout = Dropout(c.get("attention_probs_dropout_prob", 0.1))

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.num_attention_heads, -1).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1)) + mask
        context = torch.matmul(self.dropout(scores.softmax(-1)), v)
        return context.permute(0, 2, 1, 3).reshape(x.size(0), x.size(1), -1)


class DenseNorm(nn.Module):
    """transformers' BertSelfOutput and BertOutput, which differ only in their input width:
    a projection to the hidden size, dropout, and a post-norm residual."""

    def __init__(self, c, inputs: int):
        super().__init__()
        self.dense = nn.Linear(inputs, c["hidden_size"])
        self.LayerNorm = LayerNorm(c["hidden_size"], c.get("layer_norm_eps", 1e-12))
        self.dropout = Dropout(c.get("hidden_dropout_prob", 0.1))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseNorm(c, c["hidden_size"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


def activate(x: torch.Tensor, act: int) -> torch.Tensor:
    """transformers' ACT2FN for the activations the families use: 0 gelu (erf), 1 gelu with
    the tanh approximation, 2 relu (ACTIVATIONS)."""
    if act == 1:
        return F.gelu(x, approximate="tanh")
    if act == 2:
        return F.relu(x)
    return F.gelu(x)


class Intermediate(nn.Module):
    act: int

    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])
        self.act = ACTIVATIONS[c.get("hidden_act", "gelu")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(self.dense(x), self.act)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseNorm(c, c["intermediate_size"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class LayerStack(nn.Module):
    """transformers' BertEncoder and DistilBERT's Transformer alike: `layer.<i>`, run in turn."""

    def __init__(self, layers: List[nn.Module]):
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class Pooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


def extended_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers' extended attention mask: 0 where attended, the float minimum where padded."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * -3.4028234663852886e38


class Bert(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = Embeddings(c)
        self.encoder = LayerStack([Layer(c) for _ in range(c["num_hidden_layers"])])
        self.pooler = Pooler(c)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # transformers' extended mask: 0 where attended, the dtype's minimum where padded.
        x = self.embeddings(input_ids)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -3.4028234663852886e38
        return self.pooler(self.encoder(x, mask))


class BertForSequenceClassification(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bert = Bert(c)
        dropout = c.get("classifier_dropout")
        self.dropout = Dropout(c.get("hidden_dropout_prob", 0.1) if dropout is None else dropout)
        self.classifier = nn.Linear(c["hidden_size"], num_labels(c))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.bert(input_ids, attention_mask)))


class Roberta(nn.Module):
    """transformers' RobertaModel as RobertaForSequenceClassification builds it: BERT's
    encoder, RoBERTa's positions, no pooler."""

    def __init__(self, c):
        super().__init__()
        self.embeddings = Embeddings(c, padding_positions=True)
        self.encoder = LayerStack([Layer(c) for _ in range(c["num_hidden_layers"])])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        return self.encoder(x, extended_mask(attention_mask, x.dtype))


class RobertaClassificationHead(nn.Module):
    def __init__(self, c):
        super().__init__()
        dropout = c.get("classifier_dropout")
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.dropout = Dropout(c.get("hidden_dropout_prob", 0.1) if dropout is None else dropout)
        self.out_proj = nn.Linear(c["hidden_size"], num_labels(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x[:, 0])
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


class RobertaForSequenceClassification(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.roberta = Roberta(c)
        self.classifier = RobertaClassificationHead(c)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.roberta(input_ids, attention_mask))


class DistilEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = Embedding(c["vocab_size"], c["dim"], c.get("pad_token_id", 0))
        self.position_embeddings = Embedding(c["max_position_embeddings"], c["dim"])
        self.LayerNorm = LayerNorm(c["dim"], 1e-12)
        self.dropout = Dropout(c.get("dropout", 0.1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device).unsqueeze(0)
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions)))


class DistilAttention(nn.Module):
    """transformers' DistilBERT MultiHeadSelfAttention; its masked_fill with the float minimum
    softmaxes as the additive mask does."""

    n_heads: int

    def __init__(self, c):
        super().__init__()
        self.n_heads = c["n_heads"]
        self.q_lin = nn.Linear(c["dim"], c["dim"])
        self.k_lin = nn.Linear(c["dim"], c["dim"])
        self.v_lin = nn.Linear(c["dim"], c["dim"])
        self.out_lin = nn.Linear(c["dim"], c["dim"])
        self.dropout = Dropout(c.get("attention_dropout", 0.1))

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.n_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(self.q_lin(x)), self.heads(self.k_lin(x)), self.heads(self.v_lin(x))
        scores = torch.matmul(q / math.sqrt(q.size(-1)), k.transpose(2, 3)) + mask
        context = torch.matmul(self.dropout(scores.softmax(-1)), v)
        return self.out_lin(context.transpose(1, 2).reshape(x.size(0), x.size(1), -1))


class FFN(nn.Module):
    act: int

    def __init__(self, c):
        super().__init__()
        self.lin1 = nn.Linear(c["dim"], c["hidden_dim"])
        self.lin2 = nn.Linear(c["hidden_dim"], c["dim"])
        self.dropout = Dropout(c.get("dropout", 0.1))
        self.act = ACTIVATIONS[c.get("activation", "gelu")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.lin2(activate(self.lin1(x), self.act)))


class DistilLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = DistilAttention(c)
        self.sa_layer_norm = LayerNorm(c["dim"], 1e-12)
        self.ffn = FFN(c)
        self.output_layer_norm = LayerNorm(c["dim"], 1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.sa_layer_norm(self.attention(x, mask) + x)
        return self.output_layer_norm(self.ffn(x) + x)


class DistilBert(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = DistilEmbeddings(c)
        self.transformer = LayerStack([DistilLayer(c) for _ in range(c["n_layers"])])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        return self.transformer(x, extended_mask(attention_mask, x.dtype))


class DistilBertForSequenceClassification(nn.Module):
    """transformers' DistilBertForSequenceClassification: the first token through
    pre_classifier, ReLU and dropout, then the classifier."""

    def __init__(self, c):
        super().__init__()
        self.distilbert = DistilBert(c)
        self.pre_classifier = nn.Linear(c["dim"], c["dim"])
        self.classifier = nn.Linear(c["dim"], num_labels(c))
        self.dropout = Dropout(c.get("seq_classif_dropout", 0.2))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.distilbert(input_ids, attention_mask)[:, 0]
        return self.classifier(self.dropout(F.relu(self.pre_classifier(x))))


def num_labels(c) -> int:
    return len(c["id2label"]) if "id2label" in c else c.get("num_labels", 2)


DISTILBERT_BASE = {"vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072, "max_position_embeddings": 512,
                   "activation": "gelu", "pad_token_id": 0}
ROBERTA_BASE = {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5, "hidden_act": "gelu", "pad_token_id": 1}
BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
