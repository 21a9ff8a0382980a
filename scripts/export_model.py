"""Exports a PyTorch image or text classifier as a TorchScript file that torchlite loads.

Run it with your own Python (it needs torch; torchvision for torchvision models,
transformers for Hugging Face models):

    python3 export_model.py resnet18 --weights DEFAULT --out resnet18.pt
    python3 export_model.py mypackage.models:build_net --size 96 --classes labels.txt --out net.pt
    python3 export_model.py hf:distilbert-base-uncased-finetuned-sst-2-english --out sst2.pt
    python3 export_model.py mypackage.models:encoder --text --tokenizer tokenizer.json --out enc.pt

MODEL is a torchvision classification model name (resnet18, mobilenet_v3_small,
efficientnet_b0, ...) or `module:callable`, a function or class that returns an
nn.Module. The script scripts the model with torch.jit.script, or traces it when
scripting fails, checks that the result matches the eager model on a random batch, and
writes torchlite's metadata into the archive (extra file torchlite.json):

    {"classes": [...], "input": {"shape": [C, H, W], "mean": [...], "std": [...],
     "resize": "center-crop"}, "export": {...}}

Pretrained weights: `--weights DEFAULT` (or a name such as IMAGENET1K_V1) downloads
torchvision's weights on your machine, and takes the class names, input size and
normalisation from them. `--weights none` exports random weights (for tests). For your
own module, load your state dict inside the callable, or pass `--state-dict file.pt`.

Text models (`hf:NAME` for a Hugging Face AutoModelForSequenceClassification, or
module:callable with --text) are traced with example token ids and an attention mask,
their dropout kept switchable (each nn.Dropout is scripted before tracing, so train() and
eval() still turn it on and off), and their tokenizer.json goes into the metadata:

    {"classes": [...], "text": {"tokenizer": {...tokenizer.json...}, "maxLength": N,
     "inputs": ["input_ids", "attention_mask"]}, "export": {...}}

For hf:NAME the tokenizer comes from the model's repository (transformers's fast
tokenizer), for your own module from --tokenizer.
"""
import argparse
import importlib
import json
import sys

import torch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build(spec, weights_name):
    """The eager model, and what its weights know about their inputs and classes."""
    if ":" in spec:
        module_name, attr = spec.split(":", 1)
        sys.path.insert(0, ".")
        factory = getattr(importlib.import_module(module_name), attr)
        return factory(), {}
    import torchvision

    if spec not in torchvision.models.list_models(module=torchvision.models):
        raise SystemExit(f"export_model.py: {spec} is not a torchvision classification model; use module:callable for your own")
    if weights_name.lower() == "none":
        return torchvision.models.get_model(spec, weights=None), {}
    weights = torchvision.models.get_model_weights(spec)[weights_name] if weights_name != "DEFAULT" else torchvision.models.get_model_weights(spec).DEFAULT
    preset = weights.transforms()
    known = {"classes": list(weights.meta.get("categories") or [])}
    crop = getattr(preset, "crop_size", None)
    if crop:
        known["size"] = int(crop[0])
    if getattr(preset, "mean", None):
        known["mean"] = [float(v) for v in preset.mean]
        known["std"] = [float(v) for v in preset.std]
    return torchvision.models.get_model(spec, weights=weights), known


def build_text(spec):
    """A Hugging Face sequence classifier, its tokenizer.json and class names; None if spec is not hf:NAME."""
    if not spec.startswith("hf:"):
        return None
    try:
        import transformers
    except ImportError:
        raise SystemExit("export_model.py: hf: models need transformers (pip install transformers)")
    name = spec[3:]
    # Eager attention keeps attention dropout an nn.Dropout call: the fused kernel's dropout
    # probability is read from self.training in Python, which tracing would freeze.
    model = transformers.AutoModelForSequenceClassification.from_pretrained(name, attn_implementation="eager", torchscript=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    if not tokenizer.is_fast:
        raise SystemExit(f"export_model.py: {name} has no fast tokenizer (tokenizer.json), which torchlite reads")
    labels = model.config.id2label
    classes = [labels[i] for i in range(len(labels))] if labels else []
    return model, json.loads(tokenizer.backend_tokenizer.to_str()), classes, min(tokenizer.model_max_length, 512)


class Unwrap(torch.nn.Module):
    """The first output (the logits) of a model that returns a tuple or a ModelOutput."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out[0] if isinstance(out, (tuple, list)) else out


def script_dropouts(module):
    """Replaces every nn.Dropout below `module` by its scripted twin. A traced dropout reads
    self.training once, while tracing, and keeps that value for good; a scripted submodule
    is called as it is, so the traced model's train() and eval() still switch it."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.dropout._DropoutNd):
            setattr(module, name, torch.jit.script(child))
        else:
            script_dropouts(child)
    return module


def trace_text(model, ids, mask):
    """torch.jit.trace over (input_ids, attention_mask), in eval mode (so the trace check
    compares like with like), with switchable dropout."""
    with torch.no_grad():
        return torch.jit.trace(script_dropouts(model).eval(), (ids, mask))


def text_example(vocab, length):
    """Two rows of token ids, the second padded at the end, and their attention mask."""
    ids = torch.randint(1, max(2, vocab), (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    return ids * mask, mask


def export_text(args, model, tokenizer, classes, max_length, how_built):
    vocab = len(tokenizer["model"].get("vocab") or []) or 100
    ids, mask = text_example(vocab, min(max_length, 16))
    try:
        with torch.no_grad():
            expected = model(ids, mask)
    except (IndexError, RuntimeError) as error:
        raise SystemExit(f"export_model.py: the model fails on token ids below the tokenizer's {vocab} ({str(error).strip().splitlines()[0]}); "
                         "does its embedding table match the tokenizer?")
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    if args.trace or how_built == "hf":
        scripted, how, reason = trace_text(Unwrap(model) if how_built == "hf" else model, ids, mask), "traced", "--trace" if args.trace else "hf"
    else:
        try:
            scripted, how, reason = torch.jit.script(model), "scripted", None
        except Exception as error:
            scripted, how, reason = trace_text(model, ids, mask), "traced", str(error).strip().splitlines()[0]
    scripted.eval()
    with torch.no_grad():
        got = scripted(ids, mask)
    check(expected, got, how)
    # A traced model must answer alike for a length it was not traced at.
    longer = text_example(vocab, min(max_length, 16 + 3))
    with torch.no_grad():
        check(model(*longer), scripted(*longer), how)
    if classes and len(classes) != expected.shape[1]:
        raise SystemExit(f"export_model.py: {len(classes)} class names for a model with {expected.shape[1]} outputs")
    metadata = {
        "text": {"tokenizer": tokenizer, "maxLength": max_length, "inputs": ["input_ids", "attention_mask"]},
        "export": {"model": args.model, "how": how, "torch": torch.__version__},
    }
    if classes:
        metadata["classes"] = classes
    scripted.save(args.out, _extra_files={"torchlite.json": json.dumps(metadata)})
    note = f" (scripting failed: {reason})" if how == "traced" and reason not in ("--trace", "hf") else ""
    print(f"{how} {args.model} -> {args.out}: text up to {max_length} tokens, {expected.shape[1]} outputs, "
          f"{len(classes) or 'no'} class names{note}")


def check(expected, got, how):
    """Exits unless the TorchScript model's class scores match the eager model's."""
    if isinstance(expected, (tuple, list)):
        expected, got = expected[0], got[0]
    if not isinstance(expected, torch.Tensor) or expected.dim() != 2:
        raise SystemExit(f"export_model.py: the model returns {type(expected).__name__}, not class scores [N, C]")
    error = float((got - expected).abs().max())
    if error > 1e-4 * max(1.0, float(expected.abs().max())):
        raise SystemExit(f"export_model.py: the {how} model differs from the eager one by {error:.3g}; it cannot be exported faithfully")
    return error


def to_torchscript(model, example):
    """torch.jit.script when it can, else torch.jit.trace; returns the module and how."""
    try:
        return torch.jit.script(model), "scripted", None
    except Exception as error:  # scripting fails on Python constructs TorchScript lacks
        reason = str(error).strip().splitlines()[0]
        with torch.no_grad():
            return torch.jit.trace(model, example), "traced", reason


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="torchvision model name, or module:callable")
    parser.add_argument("--out", required=True, help="where to write the .pt file")
    parser.add_argument("--weights", default="DEFAULT", help="torchvision weights: DEFAULT, a weights name, or none (default: DEFAULT)")
    parser.add_argument("--state-dict", help="a state dict (torch.save) to load into the model")
    parser.add_argument("--size", type=int, help="input side in pixels (default: the weights' crop size, else 224)")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=3, help="input channels (default: 3)")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel mean (default: the weights', else ImageNet's)")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel std (default: the weights', else ImageNet's)")
    parser.add_argument("--classes", help="a text file with one class name per line, in output order")
    parser.add_argument("--trace", action="store_true", help="trace instead of trying to script first")
    parser.add_argument("--text", action="store_true", help="a text model: forward(input_ids, attention_mask)")
    parser.add_argument("--tokenizer", help="the tokenizer.json of a --text model")
    parser.add_argument("--max-length", type=int, help="the longest input of a --text model, in tokens (default: the tokenizer's, else 512)")
    args = parser.parse_args()

    torch.manual_seed(0)
    hf = build_text(args.model)
    if hf or args.text:
        if hf:
            model, tokenizer, classes, max_length = hf
        else:
            if not args.tokenizer:
                raise SystemExit("export_model.py: --text needs --tokenizer tokenizer.json")
            model, _ = build(args.model, args.weights)
            with open(args.tokenizer, encoding="utf-8") as handle:
                tokenizer = json.load(handle)
            classes, max_length = [], (tokenizer.get("truncation") or {}).get("max_length") or 512
        if args.state_dict:
            model.load_state_dict(torch.load(args.state_dict, map_location="cpu"))
        if args.classes:
            with open(args.classes, encoding="utf-8") as handle:
                classes = [line.strip() for line in handle if line.strip()]
        export_text(args, model.eval(), tokenizer, classes, args.max_length or max_length, "hf" if hf else "module")
        return
    model, known = build(args.model, args.weights)
    if args.state_dict:
        model.load_state_dict(torch.load(args.state_dict, map_location="cpu"))
    model = model.eval()
    size = args.size or known.get("size", 224)
    grey = args.channels == 1
    mean = args.mean or known.get("mean", [0.5] if grey else IMAGENET_MEAN)
    std = args.std or known.get("std", [0.5] if grey else IMAGENET_STD)
    if len(mean) != args.channels or len(std) != args.channels:
        raise SystemExit(f"export_model.py: --mean and --std need {args.channels} values each")
    classes = known.get("classes", [])
    if args.classes:
        with open(args.classes, encoding="utf-8") as handle:
            classes = [line.strip() for line in handle if line.strip()]

    example = torch.randn(2, args.channels, size, size)
    with torch.no_grad():
        expected = model(example)
    if args.trace:
        with torch.no_grad():
            scripted, how, reason = torch.jit.trace(model, example), "traced", "--trace"
    else:
        scripted, how, reason = to_torchscript(model, example)
    with torch.no_grad():
        got = scripted(example)
    error = check(expected, got, how)
    if isinstance(expected, (tuple, list)):
        expected = expected[0]
    if classes and len(classes) != expected.shape[1]:
        raise SystemExit(f"export_model.py: {len(classes)} class names for a model with {expected.shape[1]} outputs")

    metadata = {
        "input": {"shape": [args.channels, size, size], "mean": mean, "std": std, "resize": "center-crop"},
        "export": {"model": args.model, "weights": args.weights, "how": how, "torch": torch.__version__},
    }
    if classes:
        metadata["classes"] = classes
    scripted.save(args.out, _extra_files={"torchlite.json": json.dumps(metadata)})
    note = f" (scripting failed: {reason})" if how == "traced" and reason != "--trace" else ""
    print(f"{how} {args.model} -> {args.out}: input {metadata['input']['shape']}, {expected.shape[1]} outputs, "
          f"{len(classes) or 'no'} class names, max difference from eager {error:.2g}{note}")


if __name__ == "__main__":
    main()
