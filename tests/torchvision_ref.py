"""torchvision's five classifiers, for comparing :mod:`convnn.models` with them.

:func:`build` returns ``torchvision.models.<name>(num_classes=...)`` where torchvision imports
(it does not beside a CPU-only torch wheel from PyPI, whose ``torchvision::nms`` operator is
missing), else the PyTorch modules below, which copy torchvision's definitions (blocks, channel
counts, strides, initialisation and the attribute names that make the state-dict keys). They
depend on torch only, never on convnn. torch is passed in, so that importing this module does not
import it.
"""

from __future__ import annotations

import importlib
import math
from functools import partial


def torchvision_models():
    """``torchvision.models``, or None where torchvision is missing or cannot load."""
    try:
        return importlib.import_module("torchvision.models")
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        return None


def build(torch, name: str, num_classes: int):
    """A torchvision model in eval mode (real torchvision when importable)."""
    tv = torchvision_models()
    ctor = getattr(tv, name) if tv is not None else _reference(torch)[name]
    return ctor(num_classes=num_classes).eval()


def _make_divisible(v, divisor=8, min_value=None):
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _reference(torch):  # noqa: C901 (one closure per model family, as in torchvision's files)
    nn = torch.nn

    def stochastic_depth(x, p, training):
        if not training or p == 0.0:
            return x
        survival = 1.0 - p
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device)
        noise = noise.bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    class StochasticDepth(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            return stochastic_depth(x, self.p, self.training)

    class Conv2dNormActivation(nn.Sequential):
        def __init__(self, cin, cout, kernel_size=3, stride=1, padding=None, groups=1,
                     norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU, bias=None):
            padding = (kernel_size - 1) // 2 if padding is None else padding
            bias = norm_layer is None if bias is None else bias
            layers = [nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups,
                                bias=bias)]
            if norm_layer is not None:
                layers.append(norm_layer(cout))
            if activation_layer is not None:
                layers.append(activation_layer(inplace=True))
            super().__init__(*layers)

    # ---- ResNet ---------------------------------------------------------------------------
    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, 64, layers[0])
            self.layer2 = self._make_layer(block, 128, layers[1], 2)
            self.layer3 = self._make_layer(block, 256, layers[2], 2)
            self.layer4 = self._make_layer(block, 512, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

        def _make_layer(self, block, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    # ---- ConvNeXt -------------------------------------------------------------------------
    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                                         self.eps)
            return x.permute(0, 3, 1, 2)

    class Permute(nn.Module):
        def __init__(self, dims):
            super().__init__()
            self.dims = dims

        def forward(self, x):
            return torch.permute(x, self.dims)

    class CNBlock(nn.Module):
        def __init__(self, dim, layer_scale, sd_prob):
            super().__init__()
            self.block = nn.Sequential(
                nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=True),
                Permute([0, 2, 3, 1]),
                nn.LayerNorm(dim, eps=1e-6),
                nn.Linear(dim, 4 * dim),
                nn.GELU(),
                nn.Linear(4 * dim, dim),
                Permute([0, 3, 1, 2]),
            )
            self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
            self.stochastic_depth = StochasticDepth(sd_prob)

        def forward(self, x):
            return self.stochastic_depth(self.layer_scale * self.block(x)) + x

    class ConvNeXt(nn.Module):
        def __init__(self, setting, stochastic_depth_prob=0.0, layer_scale=1e-6,
                     num_classes=1000):
            super().__init__()
            norm = partial(LayerNorm2d, eps=1e-6)
            layers = [Conv2dNormActivation(3, setting[0][0], 4, 4, 0, norm_layer=norm,
                                           activation_layer=None, bias=True)]
            total = sum(s[2] for s in setting)
            block_id = 0
            for cin, cout, n in setting:
                stage = []
                for _ in range(n):
                    sd = stochastic_depth_prob * block_id / (total - 1.0)
                    stage.append(CNBlock(cin, layer_scale, sd))
                    block_id += 1
                layers.append(nn.Sequential(*stage))
                if cout is not None:
                    layers.append(nn.Sequential(norm(cin), nn.Conv2d(cin, cout, 2, 2)))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            last = setting[-1][1] or setting[-1][0]
            self.classifier = nn.Sequential(norm(last), nn.Flatten(1), nn.Linear(last, num_classes))
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)))

    # ---- MobileNetV2 ----------------------------------------------------------------------
    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            hidden = int(round(inp * expand_ratio))
            self.use_res_connect = stride == 1 and inp == oup
            layers = []
            if expand_ratio != 1:
                layers.append(Conv2dNormActivation(inp, hidden, 1, activation_layer=nn.ReLU6))
            layers += [
                Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden,
                                     activation_layer=nn.ReLU6),
                nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes=1000, dropout=0.2):
            super().__init__()
            setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                       [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
            cin = _make_divisible(32)
            self.last_channel = _make_divisible(1280)
            features = [Conv2dNormActivation(3, cin, stride=2, activation_layer=nn.ReLU6)]
            for t, c, n, s in setting:
                cout = _make_divisible(c)
                for i in range(n):
                    features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                    cin = cout
            features.append(Conv2dNormActivation(cin, self.last_channel, 1,
                                                 activation_layer=nn.ReLU6))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(dropout),
                                            nn.Linear(self.last_channel, num_classes))
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    # ---- EfficientNet ---------------------------------------------------------------------
    class SqueezeExcitation(nn.Module):
        def __init__(self, cin, squeeze):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(cin, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, cin, 1)
            self.activation = nn.SiLU(inplace=True)
            self.scale_activation = nn.Sigmoid()

        def forward(self, x):
            s = self.fc2(self.activation(self.fc1(self.avgpool(x))))
            return self.scale_activation(s) * x

    class MBConv(nn.Module):
        def __init__(self, expand, k, stride, cin, cout, sd_prob):
            super().__init__()
            self.use_res_connect = stride == 1 and cin == cout
            expanded = _make_divisible(cin * expand)
            layers = []
            if expanded != cin:
                layers.append(Conv2dNormActivation(cin, expanded, 1, activation_layer=nn.SiLU))
            layers += [
                Conv2dNormActivation(expanded, expanded, k, stride, groups=expanded,
                                     activation_layer=nn.SiLU),
                SqueezeExcitation(expanded, max(1, cin // 4)),
                Conv2dNormActivation(expanded, cout, 1, activation_layer=None),
            ]
            self.block = nn.Sequential(*layers)
            self.stochastic_depth = StochasticDepth(sd_prob)

        def forward(self, x):
            y = self.block(x)
            return self.stochastic_depth(y) + x if self.use_res_connect else y

    class EfficientNet(nn.Module):
        def __init__(self, setting, dropout, stochastic_depth_prob=0.2, num_classes=1000):
            super().__init__()
            layers = [Conv2dNormActivation(3, setting[0][3], 3, 2, activation_layer=nn.SiLU)]
            total = sum(s[5] for s in setting)
            block_id = 0
            for expand, k, stride, cin, cout, n in setting:
                stage = []
                for i in range(n):
                    sd = stochastic_depth_prob * float(block_id) / total
                    stage.append(MBConv(expand, k, stride if i == 0 else 1,
                                        cin if i == 0 else cout, cout, sd))
                    block_id += 1
                layers.append(nn.Sequential(*stage))
            last_in = setting[-1][4]
            layers.append(Conv2dNormActivation(last_in, 4 * last_in, 1,
                                               activation_layer=nn.SiLU))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                            nn.Linear(4 * last_in, num_classes))
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    r = 1.0 / math.sqrt(m.out_features)
                    nn.init.uniform_(m.weight, -r, r)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    b0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
          (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
          (6, 3, 1, 192, 320, 1))
    tiny = ((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3))
    return {
        "resnet18": lambda num_classes: ResNet(BasicBlock, (2, 2, 2, 2), num_classes),
        "resnet50": lambda num_classes: ResNet(Bottleneck, (3, 4, 6, 3), num_classes),
        "convnext_tiny": lambda num_classes: ConvNeXt(tiny, 0.1, num_classes=num_classes),
        "mobilenet_v2": lambda num_classes: MobileNetV2(num_classes),
        "efficientnet_b0": lambda num_classes: EfficientNet(b0, 0.2, num_classes=num_classes),
    }
