"""Writes models/tinydet.pt: the architecture of `torchlite demo detect`, a CenterNet-style
detector small enough to train on two CPU cores in seconds (random weights; the demo
pretrains it in torchlite). torchvision's interface: forward(images, targets=None) returns
(losses, detections), the losses in train mode with targets, the detections in eval mode.

Objects are found as peaks of a per-class heatmap at stride 4 (images of one size), with a size and a sub-cell
offset regressed at each peak (Zhou et al., "Objects as Points", 2019).

    /usr/bin/python3 scripts/detect/tinydet.py models/tinydet.pt
"""
import sys
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def head(cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, cout, 1))


class TinyDet(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.backbone = nn.Sequential(block(3, 24), block(24, 32, 2), block(32, 48, 2), block(48, 64), block(64, 64, dilation=2), block(64, 64, dilation=3))
        self.heatmap = head(num_classes)
        self.size = head(2)
        self.offset = head(2)
        # A 0.1 prior on every cell, as CenterNet starts: the focal loss is then not swamped by background.
        nn.init.constant_(self.heatmap[2].bias, -2.19)
        self.max_detections = 20
        self.stride = 4

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None) -> Tuple[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        x = (torch.stack(images) - 0.5) / 0.25
        features = self.backbone(x)
        heat = self.heatmap(features)
        size = self.size(features)
        offset = self.offset(features)
        losses: Dict[str, torch.Tensor] = {}
        detections: List[Dict[str, torch.Tensor]] = []
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training")
            losses = self.losses(heat, size, offset, targets)
        else:
            detections = self.detect(heat, size, offset)
        return losses, detections

    def losses(self, heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        n, k, h, w = heat.shape
        goal = torch.zeros_like(heat)
        ys = torch.arange(h, dtype=heat.dtype, device=heat.device).view(h, 1)
        xs = torch.arange(w, dtype=heat.dtype, device=heat.device).view(1, w)
        size_loss = torch.zeros((), device=heat.device)
        offset_loss = torch.zeros((), device=heat.device)
        count = 0
        for i, target in enumerate(targets):
            boxes = target["boxes"] / self.stride
            labels = target["labels"] - 1
            for j in range(boxes.shape[0]):
                x1, y1, x2, y2 = boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3]
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                ix, iy = int(cx.clamp(0, w - 1)), int(cy.clamp(0, h - 1))
                sigma = torch.clamp(torch.maximum(x2 - x1, y2 - y1) / 6, min=0.5)
                blob = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
                c = int(labels[j])
                goal[i, c] = torch.maximum(goal[i, c], blob)
                size_loss = size_loss + (size[i, :, iy, ix] - torch.stack([x2 - x1, y2 - y1])).abs().sum()
                offset_loss = offset_loss + (offset[i, :, iy, ix] - torch.stack([cx - ix, cy - iy])).abs().sum()
                count += 1
        p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
        peak = goal.eq(1).to(heat.dtype)
        focal = -(peak * (1 - p) ** 2 * torch.log(p) + (1 - peak) * (1 - goal) ** 4 * p ** 2 * torch.log(1 - p)).sum()
        norm = max(count, 1)
        return {"loss_heatmap": focal / norm, "loss_size": 0.1 * size_loss / norm, "loss_offset": offset_loss / norm}

    def detect(self, heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        n, k, h, w = heat.shape
        p = torch.sigmoid(heat)
        peaks = p * p.eq(F.max_pool2d(p, 3, stride=1, padding=1)).to(p.dtype)
        out: List[Dict[str, torch.Tensor]] = []
        for i in range(n):
            scores, index = peaks[i].flatten().topk(min(self.max_detections, k * h * w))
            cls = torch.div(index, h * w, rounding_mode="floor")
            cell = index % (h * w)
            cy = torch.div(cell, w, rounding_mode="floor")
            cx = cell % w
            ox = offset[i, 0].flatten()[cell]
            oy = offset[i, 1].flatten()[cell]
            bw = size[i, 0].flatten()[cell].clamp(min=0)
            bh = size[i, 1].flatten()[cell].clamp(min=0)
            x = cx.to(p.dtype) + ox
            y = cy.to(p.dtype) + oy
            boxes = torch.stack([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], 1) * self.stride
            out.append({"boxes": boxes, "labels": cls + 1, "scores": scores})
        return out


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.jit.script(TinyDet(num_classes=5)).save(sys.argv[1])
