"""The minimal DETR of the paper's appendix / the original README and notebook (about 40 lines).

It shows the idea without the details: a ResNet-50, a 1x1 projection, ``nn.Transformer``,
learned row/column position embeddings added once at the input, 100 learned query positions,
and two linear heads. Differences from the full model: position is only given at the input,
no auxiliary losses, no padding mask (one image at a time), ordinary (eval-mode) BatchNorm.

Why ``pos + 0.1 * h``? The position embeddings are uniform in [0, 1) while the projected
ResNet features are much larger; the demo feeds one sum to the encoder (instead of adding
position at every attention layer as the full model does), and scaling the features by 0.1
keeps the spatial signal from being drowned out. The released demo weights were trained with
that factor, so it is part of the model: change it and the weights stop working.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import resnet50


class DETRdemo(nn.Module):
    """``forward(images [B, 3, H, W])`` → ``pred_logits`` [B, 100, K+1], ``pred_boxes`` [B, 100, 4]."""

    def __init__(self, num_classes: int = 91, hidden_dim: int = 256, nheads: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6) -> None:
        super().__init__()
        self.backbone = resnet50(weights=None)
        del self.backbone.fc
        self.conv = nn.Conv2d(2048, hidden_dim, 1)
        self.transformer = nn.Transformer(hidden_dim, nheads, num_encoder_layers, num_decoder_layers)
        self.linear_class = nn.Linear(hidden_dim, num_classes + 1)
        self.linear_bbox = nn.Linear(hidden_dim, 4)
        self.query_pos = nn.Parameter(torch.rand(100, hidden_dim))
        self.row_embed = nn.Parameter(torch.rand(50, hidden_dim // 2))
        self.col_embed = nn.Parameter(torch.rand(50, hidden_dim // 2))

    def forward(self, inputs: Tensor) -> dict[str, Tensor]:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(inputs))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        h = self.conv(x)
        height, width = h.shape[-2:]
        pos = torch.cat([
            self.col_embed[:width].unsqueeze(0).repeat(height, 1, 1),
            self.row_embed[:height].unsqueeze(1).repeat(1, width, 1),
        ], dim=-1).flatten(0, 1).unsqueeze(1)
        h = self.transformer(pos + 0.1 * h.flatten(2).permute(2, 0, 1),
                             self.query_pos.unsqueeze(1).repeat(1, inputs.shape[0], 1)).transpose(0, 1)
        return {"pred_logits": self.linear_class(h), "pred_boxes": self.linear_bbox(h).sigmoid()}
