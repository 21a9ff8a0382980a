"""Builds the five small image datasets of the recipe sweep (bench/recipes/sweep.mjs).

Usage: /usr/bin/python3 make_datasets.py OUT_DIR

Each dataset has 5 classes, 200 training and 100 validation images per class, written as
raw uint8 arrays in two layouts, one per model family of the sweep:
  NAME.grey28.u8  [N, 1, 28, 28]   (the shipped Fashion-MNIST CNN)
  NAME.rgb32.u8   [N, 3, 32, 32]   (the mobilenet_v3_small of pretrain_mobilenet.py)
  NAME.json       {"classes", "train": N_train, "val": N_val, "labels": [...]}
Training images come first, then validation images; labels follow the same order.

The domains differ on purpose: real photos (Fashion-MNIST classes 5-9, from Debian's
dataset-fashion-mnist), rendered letters (fonts-dejavu), geometric shapes, textures, and
colour (classes by hue). Everything but Fashion-MNIST is generated, seeded.
"""
import gzip
import json
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FASHION = "/usr/share/datasets/fashion-mnist"
FONTS = "/usr/share/fonts/truetype/dejavu"
PER_CLASS = {"train": 200, "val": 100}


def idx(path):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion(rng):
    images = {"train": idx(f"{FASHION}/train-images-idx3-ubyte.gz"), "val": idx(f"{FASHION}/t10k-images-idx3-ubyte.gz")}
    labels = {"train": idx(f"{FASHION}/train-labels-idx1-ubyte.gz"), "val": idx(f"{FASHION}/t10k-labels-idx1-ubyte.gz")}
    out = {split: [] for split in PER_CLASS}
    for split, n in PER_CLASS.items():
        for c in range(5, 10):
            picked = rng.choice(np.flatnonzero(labels[split] == c), n, replace=False)
            out[split] += [(Image.fromarray(images[split][i]).convert("RGB"), c - 5) for i in picked]
    return ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"], out


def jitter(image, rng, size=28):
    """Random rotation, scale and shift, then Gaussian noise, on a square RGB image."""
    angle = rng.uniform(-20, 20)
    scale = rng.uniform(0.75, 1.1)
    image = image.rotate(angle, resample=Image.BILINEAR, fillcolor=image.getpixel((0, 0)))
    side = int(image.width * scale)
    image = image.resize((side, side), Image.BILINEAR)
    canvas = Image.new("RGB", (size * 2, size * 2), image.getpixel((0, 0)))
    dx, dy = rng.integers(-4, 5, size=2)
    canvas.paste(image, (size - side // 2 + dx, size - side // 2 + dy))
    canvas = canvas.crop((size // 2, size // 2, size // 2 + size, size // 2 + size))
    noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def letters(rng):
    fonts = [os.path.join(FONTS, f) for f in sorted(os.listdir(FONTS)) if f.endswith(".ttf") and "Math" not in f]
    classes = ["A", "K", "R", "S", "W"]
    def one(c):
        back, ink = sorted(rng.integers(0, 256, size=2))[::-1] if rng.random() < 0.5 else sorted(rng.integers(0, 256, size=2))
        if abs(int(back) - int(ink)) < 90:
            back, ink = 230, 30
        image = Image.new("RGB", (56, 56), (int(back),) * 3)
        font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.integers(30, 44)))
        ImageDraw.Draw(image).text((28, 28), classes[c], fill=(int(ink),) * 3, font=font, anchor="mm")
        return jitter(image.resize((28, 28), Image.BILINEAR), rng)
    return classes, generate(one, rng)


def shapes(rng):
    classes = ["circle", "square", "triangle", "cross", "ring"]
    def one(c):
        image = Image.new("RGB", (56, 56), (int(rng.integers(0, 100)),) * 3)
        draw = ImageDraw.Draw(image)
        ink = (int(rng.integers(150, 256)),) * 3
        r = int(rng.integers(12, 22))
        box = (28 - r, 28 - r, 28 + r, 28 + r)
        if c == 0:
            draw.ellipse(box, fill=ink)
        elif c == 1:
            draw.rectangle(box, fill=ink)
        elif c == 2:
            draw.polygon([(28, 28 - r), (28 - r, 28 + r), (28 + r, 28 + r)], fill=ink)
        elif c == 3:
            w = max(3, r // 3)
            draw.rectangle((28 - r, 28 - w, 28 + r, 28 + w), fill=ink)
            draw.rectangle((28 - w, 28 - r, 28 + w, 28 + r), fill=ink)
        else:
            draw.ellipse(box, outline=ink, width=max(3, r // 3))
        return jitter(image.resize((28, 28), Image.BILINEAR), rng)
    return classes, generate(one, rng)


def textures(rng):
    classes = ["stripes", "checker", "dots", "rings", "noise"]
    y, x = np.mgrid[0:28, 0:28].astype(np.float32)
    def one(c):
        period = rng.uniform(4, 9)
        phase = rng.uniform(0, 2 * math.pi)
        if c == 0:
            angle = rng.uniform(0, math.pi)
            field = np.sin((x * math.cos(angle) + y * math.sin(angle)) * 2 * math.pi / period + phase)
        elif c == 1:
            field = np.sign(np.sin(x * 2 * math.pi / period + phase)) * np.sign(np.sin(y * 2 * math.pi / period + phase))
        elif c == 2:
            field = (np.sin(x * 2 * math.pi / period + phase) * np.sin(y * 2 * math.pi / period + phase) > 0.6) * 2.0 - 1
        elif c == 3:
            cx, cy = rng.uniform(6, 22, size=2)
            field = np.sin(np.hypot(x - cx, y - cy) * 2 * math.pi / period + phase)
        else:
            coarse = rng.normal(0, 1, (7, 7)).astype(np.float32)
            field = np.asarray(Image.fromarray(coarse).resize((28, 28), Image.BICUBIC))
            field = field / (np.abs(field).max() + 1e-6)
        contrast = rng.uniform(50, 110)
        grey = np.clip(128 + contrast * field + rng.normal(0, 15, field.shape), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return classes, generate(one, rng)


def colour(rng):
    classes = ["red", "green", "blue", "yellow", "purple"]
    hues = [0.0, 0.33, 0.62, 0.15, 0.8]
    def one(c):
        image = Image.new("HSV", (56, 56), (int(rng.integers(0, 256)), int(rng.integers(0, 60)), int(rng.integers(60, 200))))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 5))):
            hue = (hues[c] + rng.normal(0, 0.03)) % 1.0
            fill = (int(hue * 255), int(rng.integers(150, 256)), int(rng.integers(120, 256)))
            x0, y0 = rng.integers(0, 40, size=2)
            w, h = rng.integers(10, 30, size=2)
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=fill)
        return jitter(image.convert("RGB").filter(ImageFilter.SMOOTH).resize((28, 28), Image.BILINEAR), rng)
    return classes, generate(one, rng)


def generate(one, rng):
    return {split: [(one(c), c) for c in range(5) for _ in range(n)] for split, n in PER_CLASS.items()}


def write(out, name, classes, splits):
    samples = splits["train"] + splits["val"]
    grey = np.stack([np.asarray(img.convert("L").resize((28, 28), Image.BILINEAR))[None] for img, _ in samples])
    rgb = np.stack([np.asarray(img.convert("RGB").resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1) for img, _ in samples])
    grey.astype(np.uint8).tofile(os.path.join(out, f"{name}.grey28.u8"))
    rgb.astype(np.uint8).tofile(os.path.join(out, f"{name}.rgb32.u8"))
    meta = {"classes": classes, "train": len(splits["train"]), "val": len(splits["val"]), "labels": [int(c) for _, c in samples]}
    with open(os.path.join(out, f"{name}.json"), "w") as handle:
        json.dump(meta, handle)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for seed, (name, make) in enumerate([("fashion", fashion), ("letters", letters), ("shapes", shapes), ("textures", textures), ("colour", colour)]):
        classes, splits = make(np.random.default_rng(seed))
        write(out, name, classes, splits)
        print(name, classes, {k: len(v) for k, v in splits.items()})


if __name__ == "__main__":
    main()
