"""Checks scripts/zoo/bert.py (torchlite's BERT, RoBERTa and DistilBERT) against transformers' own, where
transformers is installed (it is not installable on the Debian machine the tests run on):

    python3 scripts/zoo/check_bert_transformers.py [model ...]
    (default: prajjwal1/bert-tiny, hf-internal-testing/tiny-random-RobertaForSequenceClassification
    and hf-internal-testing/tiny-random-DistilBertForSequenceClassification)

For each Hub model: transformers' *ForSequenceClassification (eager attention, eval mode) and
bert.py's, given the same config and state dict, on random token ids with padding; prints the
largest relative difference of the logits and exits non-zero above 1e-5.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bert  # noqa: E402


def check(name):
    import transformers

    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(name, attn_implementation="eager").eval()
    config = theirs.config.to_dict()
    make = {"roberta": bert.RobertaForSequenceClassification, "distilbert": bert.DistilBertForSequenceClassification}.get(config["model_type"], bert.BertForSequenceClassification)
    ours = make(config).eval()
    state = {k: v for k, v in theirs.state_dict().items() if not k.endswith(("position_ids", "token_type_ids"))}
    ours.load_state_dict(state, strict=True)
    torch.manual_seed(0)
    ids = torch.randint(2, config["vocab_size"], (3, 16))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    mask[2, 4:] = 0
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    error = float((got - expected).abs().max() / expected.abs().max())
    print(f"{name}: largest relative difference {error:.2e}")
    return error <= 1e-5


if __name__ == "__main__":
    names = sys.argv[1:] or ["prajjwal1/bert-tiny", "hf-internal-testing/tiny-random-RobertaForSequenceClassification",
                             "hf-internal-testing/tiny-random-DistilBertForSequenceClassification"]
    sys.exit(0 if all([check(name) for name in names]) else 1)
