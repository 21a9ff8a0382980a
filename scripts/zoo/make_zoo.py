"""Makes torchlite's architecture zoo: torchvision's own model classes, scripted, with every
parameter and buffer replaced by a zero-stride placeholder that keeps its shape and dtype but
no data, so that each archive holds the code and the names (a few hundred KB), not the weights.

    /usr/bin/python3 scripts/zoo/make_zoo.py models/zoo [name ...]

Text: bert-L1 ... bert-L24, roberta-L1 ... and distilbert-L1 ..., scripts/zoo/bert.py's BERT,
RoBERTa and DistilBERT for sequence classification at each depth torchlite offers (TorchScript fixes the layer count; widths, heads, epsilons and
activations are set from a checkpoint's config.json at load).

Each archive's torchlite metadata (extra file torchlite.json) records the architecture, the
input spec and ImageNet classes of torchvision's DEFAULT weights, and every published weights
file (its URL; the file name carries the sha256 prefix torch.hub checks). torchlite fills the
placeholders with PyTorch's default initialisation on load, or with weights from a file.
Run with Debian's torchvision 0.14 (python3-torchvision), which defines these classes.
"""
import json
import os
import sys

import torch
import torchvision

VISION = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "wide_resnet50_2",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "convnext_tiny", "regnet_y_400mf", "densenet121", "vit_b_16",
]


def hollow(model):
    """Every parameter and buffer becomes a zero-stride view of one zero: shape and dtype kept, no data stored."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, torch.nn.Parameter(torch.zeros((), dtype=param.dtype).expand(param.shape), requires_grad=param.requires_grad))
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None:
                module.register_buffer(name, torch.zeros((), dtype=buffer.dtype).expand(buffer.shape))
    return model


def describe(name):
    weights_enum = torchvision.models.get_model_weights(name)
    default = weights_enum.DEFAULT
    preset = default.transforms()
    published = {}
    for weights in weights_enum:
        published[weights.name] = {"url": weights.url, "classes": len(weights.meta.get("categories") or []),
                                   "crop": int(weights.transforms().crop_size[0]), "resize": int(weights.transforms().resize_size[0])}
    return {
        "input": {"shape": [3, int(preset.crop_size[0]), int(preset.crop_size[0])], "mean": [float(v) for v in preset.mean],
                  "std": [float(v) for v in preset.std], "resize": "center-crop", "resizeTo": int(preset.resize_size[0])},
        "classes": list(default.meta["categories"]),
        "zoo": {"architecture": name, "source": f"torchvision {torchvision.__version__}", "default": default.name, "weights": published},
    }


TEXT_DEPTHS = [1, 2, 3, 4, 6, 8, 10, 12, 24]


def text_archive(name):
    """bert-L<depth> and roberta-L<depth>: the base model's shapes as placeholders, resized from a config at load."""
    sys.path.insert(0, os.path.dirname(__file__))
    import bert

    family, depth = name.split("-L")[0], int(name.split("-L")[1])
    make, base, depth_key = {
        "bert": (bert.BertForSequenceClassification, bert.BASE, "num_hidden_layers"),
        "roberta": (bert.RobertaForSequenceClassification, bert.ROBERTA_BASE, "num_hidden_layers"),
        "distilbert": (bert.DistilBertForSequenceClassification, bert.DISTILBERT_BASE, "n_layers"),
    }[family]
    model = make({**base, depth_key: depth}).eval()
    metadata = {"zoo": {"architecture": name, "family": family, "layers": depth, "source": "scripts/zoo/bert.py"}}
    return torch.jit.script(hollow(model)), metadata


def main():
    out = sys.argv[1]
    names = sys.argv[2:] or VISION + [f"{family}-L{depth}" for family in ("bert", "roberta", "distilbert") for depth in TEXT_DEPTHS]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    for name in names:
        if name.startswith(("bert-L", "roberta-L", "distilbert-L")):
            scripted, metadata = text_archive(name)
        else:
            scripted, metadata = torch.jit.script(hollow(torchvision.models.get_model(name, weights=None).eval())), describe(name)
        path = os.path.join(out, f"{name}.pt")
        scripted.save(path, _extra_files={"torchlite.json": json.dumps(metadata)})
        print(f"{name}: {os.path.getsize(path) / 1024:.0f} KB")


if __name__ == "__main__":
    main()
