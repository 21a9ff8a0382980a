"""Exports a PyTorch image classifier as a TorchScript file that torchlite loads.

Run it with your own Python (it needs torch; torchvision for torchvision models):

    python3 export_model.py resnet18 --weights DEFAULT --out resnet18.pt
    python3 export_model.py mypackage.models:build_net --size 96 --classes labels.txt --out net.pt

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
    args = parser.parse_args()

    torch.manual_seed(0)
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
    if isinstance(expected, tuple) or isinstance(expected, list):
        expected, got = expected[0], got[0]
    if not isinstance(expected, torch.Tensor) or expected.dim() != 2:
        raise SystemExit(f"export_model.py: the model returns {type(expected).__name__}, not class scores [N, C]")
    error = float((got - expected).abs().max())
    if error > 1e-4 * max(1.0, float(expected.abs().max())):
        raise SystemExit(f"export_model.py: the {how} model differs from the eager one by {error:.3g}; it cannot be exported faithfully")
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
