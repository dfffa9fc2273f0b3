"""Brevitas model zoo: FINN-style MLPs (TFC/SFC/LFC) and a small VGG3-like CNN.

Conventions every later stage relies on (export, FINN build, fault models):

- The network input is the integer tensor from :func:`mcel_train.data.encode_inputs` (pixels
  0..255, or +-1 for binarized inputs), fed in unscaled: there is no input Mul or Reshape node in
  the exported graph. MLPs take flat ``(N, H*W)`` inputs; the CNN takes ``(N, 1, H, W)``.
- Layers carry no bias. Each hidden layer is ``QuantLinear/QuantConv2d -> BatchNorm -> act``, which
  FINN turns into a matrix-vector unit followed by thresholds.
- Weights are signed, narrow range, per tensor. 1-bit weights are bipolar with a constant scale
  of 1 (FINN's BNN-PYNQ recipe); wider weights use a scale from the weight statistics, or a
  constant scale (``weight_scaling="const"``) that cannot grow with the weights.
- Activations are unsigned ``QuantReLU`` from 2 bits and a bipolar sign (constant scale 1) at
  1 bit, so a binarized network's logits are integers.
- The last layer has no activation: its output are the logits.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import torch
from brevitas.core.bit_width import BitWidthImplType
from brevitas.core.quant import QuantType
from brevitas.core.restrict_val import RestrictValueType
from brevitas.core.scaling import ScalingImplType
from brevitas.core.zero_point import ZeroZeroPoint
from brevitas.inject import ExtendedInjector
from brevitas.inject.enum import FloatToIntImplType
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from brevitas.quant import Int8WeightPerTensorFloat
from brevitas.quant.solver import ActQuantSolver, WeightQuantSolver
from dependencies import value
from torch import nn

ARCHS = ("tfc", "sfc", "lfc", "mlp", "vgg3")
MLP_DEFAULT_HIDDEN = {"tfc": (64, 64, 64), "sfc": (256, 256, 256), "lfc": (1024, 1024, 1024)}
BIT_PRESETS = {"w1a1": (1, 1), "w1a2": (1, 2), "w2a2": (2, 2), "w4a4": (4, 4), "w8a8": (8, 8)}
SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
WEIGHT_SCALINGS = ("stats", "const")


class _ConstScaleQuant(ExtendedInjector):
    """Signed narrow-range quantizer with a constant scale (binary at 1 bit, integer above)."""

    bit_width_impl_type = BitWidthImplType.CONST
    scaling_impl_type = ScalingImplType.CONST
    restrict_scaling_type = RestrictValueType.FP
    zero_point_impl = ZeroZeroPoint
    float_to_int_impl_type = FloatToIntImplType.ROUND
    scaling_per_output_channel = False
    narrow_range = True
    signed = True

    @value
    def quant_type(bit_width):  # noqa: N805 - brevitas dependency-injection signature
        return QuantType.BINARY if bit_width == 1 else QuantType.INT


class ConstScaleWeightQuant(_ConstScaleQuant, WeightQuantSolver):
    """Weights quantized with a fixed scale: the integer grid cannot follow the weights' growth."""

    scaling_const = 1.0


class BipolarActQuant(_ConstScaleQuant, ActQuantSolver):
    """Sign activation to {-1, +1} with scale 1, FINN's BNN-PYNQ recipe."""

    min_val = -1.0
    max_val = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a zoo model (saved in the run's config)."""

    arch: str
    weight_bits: int
    act_bits: int
    hidden: tuple[int, ...] = ()
    channels: tuple[int, ...] = (64, 64)
    input_kind: str = ""
    image_shape: tuple[int, int] = (28, 28)
    num_classes: int = 10
    weight_scaling: str = "stats"
    const_weight_scale: float = 0.0
    extra: dict = field(default_factory=dict)

    def resolved(self) -> ModelSpec:
        """Fill defaults that depend on other fields and validate every field."""
        if self.arch not in ARCHS:
            raise ValueError(f"unknown model architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        for what, bits in (("weight_bits", self.weight_bits), ("act_bits", self.act_bits)):
            if bits not in SUPPORTED_BITS:
                raise ValueError(f"{what} must be an integer in 1..8, got {bits!r}")
        if self.weight_scaling not in WEIGHT_SCALINGS:
            raise ValueError(
                f"weight_scaling must be one of {', '.join(WEIGHT_SCALINGS)}, got {self.weight_scaling!r}"
            )
        hidden = tuple(self.hidden) or MLP_DEFAULT_HIDDEN.get(self.arch, (256,))
        if any(int(h) <= 0 for h in hidden):
            raise ValueError(f"hidden sizes must be positive, got {hidden}")
        input_kind = self.input_kind or ("bipolar" if self.act_bits == 1 else "uint8")
        if input_kind not in ("uint8", "bipolar"):
            raise ValueError(f"input_kind must be uint8 or bipolar, got {input_kind!r}")
        const_scale = self.const_weight_scale
        if self.weight_scaling == "const" and const_scale <= 0:
            # Default: the scale Brevitas' abs-max statistics give the first layer at PyTorch's
            # init, (1/sqrt(fan_in)) / (2**(b-1) - 1). A larger one (0.5 / ... was tried) rounds
            # every initial weight of a 784-input layer to 0 and the network stays at chance.
            fan_in = self.image_shape[0] * self.image_shape[1] if self.arch != "vgg3" else 9
            const_scale = fan_in ** -0.5 / (2 ** (self.weight_bits - 1) - 1) if self.weight_bits > 1 else 1.0
        return ModelSpec(
            arch=self.arch,
            weight_bits=int(self.weight_bits),
            act_bits=int(self.act_bits),
            hidden=tuple(int(h) for h in hidden),
            channels=tuple(int(c) for c in self.channels),
            input_kind=input_kind,
            image_shape=tuple(int(s) for s in self.image_shape),  # type: ignore[arg-type]
            num_classes=int(self.num_classes),
            weight_scaling=self.weight_scaling,
            const_weight_scale=float(const_scale),
            extra=dict(self.extra),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"], d["channels"], d["image_shape"] = list(self.hidden), list(self.channels), list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model fields: {', '.join(sorted(unknown))}")
        d = dict(d)
        for key in ("hidden", "channels", "image_shape"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d).resolved()


def parse_model_name(name: str) -> ModelSpec:
    """``tfc_w1a1``, ``sfc_w2a2``, ``vgg3_w4a4``, ... -> a resolved :class:`ModelSpec`."""
    m = re.fullmatch(r"([a-z0-9]+)_w(\d+)a(\d+)", name)
    if not m or m.group(1) not in ARCHS:
        raise ValueError(
            f"unknown model {name!r}; expected <arch>_w<bits>a<bits> with arch in {', '.join(ARCHS)}, "
            f"for example tfc_w1a1, sfc_w2a2, vgg3_w4a4 (presets: {', '.join(BIT_PRESETS)})"
        )
    return ModelSpec(arch=m.group(1), weight_bits=int(m.group(2)), act_bits=int(m.group(3))).resolved()


def _weight_quant_kwargs(spec: ModelSpec) -> dict:
    if spec.weight_bits == 1:
        return {"weight_quant": ConstScaleWeightQuant, "weight_bit_width": 1}
    if spec.weight_scaling == "const":
        return {
            "weight_quant": ConstScaleWeightQuant,
            "weight_bit_width": spec.weight_bits,
            "weight_scaling_const": spec.const_weight_scale,
        }
    return {"weight_quant": Int8WeightPerTensorFloat, "weight_bit_width": spec.weight_bits}


def _output_weight_quant_kwargs(spec: ModelSpec, fan_in: int) -> dict:
    """Weight quantizer of the logit layer.

    Bipolar weights have scale 1, so a binarized network's logits are raw accumulators of up to
    +-fan_in: cross-entropy on them saturates (loss ~7 in the first epoch, 79 % instead of 84 %
    on sfc_w1a1). The output layer therefore gets the constant scale 2**-round(log2(sqrt(fan_in))),
    a power of two so that ``logits / scale`` stays exactly the integer accumulator and argmax
    (all the accelerator computes) is unchanged.
    """
    kwargs = _weight_quant_kwargs(spec)
    if spec.weight_bits == 1:
        kwargs["weight_scaling_const"] = 2.0 ** -round(math.log2(math.sqrt(fan_in)))
    return kwargs


def _activation(spec: ModelSpec) -> nn.Module:
    if spec.act_bits == 1:
        return QuantIdentity(act_quant=BipolarActQuant, bit_width=1, return_quant_tensor=True)
    return QuantReLU(bit_width=spec.act_bits, return_quant_tensor=True)


def _value_and_scale(out) -> tuple[torch.Tensor, torch.Tensor]:
    if not hasattr(out, "scale"):  # during ONNX export Brevitas hands back plain tensors
        return out, torch.ones(())
    scale = out.scale.reshape(()) if out.scale.numel() == 1 else out.scale
    return out.value, scale


class QuantMLP(nn.Module):
    """Fully connected network of FINN's TFC/SFC/LFC family on flattened images."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        in_features = spec.image_shape[0] * spec.image_shape[1]
        self.input_shape = (in_features,)
        wq = _weight_quant_kwargs(spec)
        layers: list[nn.Module] = []
        for width in spec.hidden:
            layers += [
                QuantLinear(in_features, width, bias=False, **wq),
                nn.BatchNorm1d(width),
                _activation(spec),
            ]
            in_features = width
        layers.append(
            QuantLinear(in_features, spec.num_classes, bias=False, return_quant_tensor=True,
                        **_output_weight_quant_kwargs(spec, in_features))
        )
        self.layers = nn.Sequential(*layers)

    def logits_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and their quantization scale: ``logits / scale`` are the integer accumulators."""
        return _value_and_scale(self.layers(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_scale(x)[0]


class QuantVGG3(nn.Module):
    """Small CNN in the spirit of the MCEL paper's VGG3: two 3x3 conv blocks, then two FC layers."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        h, w = spec.image_shape
        self.input_shape = (1, h, w)
        wq = _weight_quant_kwargs(spec)
        layers: list[nn.Module] = []
        in_ch = 1
        for ch in spec.channels:
            layers += [
                QuantConv2d(in_ch, ch, kernel_size=3, padding=1, bias=False, **wq),
                nn.BatchNorm2d(ch),
                _activation(spec),
                nn.MaxPool2d(2),
            ]
            in_ch, h, w = ch, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        fc_width = spec.hidden[0]
        self.classifier = nn.Sequential(
            QuantLinear(in_ch * h * w, fc_width, bias=False, **wq),
            nn.BatchNorm1d(fc_width),
            _activation(spec),
            QuantLinear(fc_width, spec.num_classes, bias=False, return_quant_tensor=True,
                        **_output_weight_quant_kwargs(spec, fc_width)),
        )

    def logits_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and their quantization scale: ``logits / scale`` are the integer accumulators."""
        return _value_and_scale(self.classifier(torch.flatten(self.features(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_scale(x)[0]


def build_model(spec: ModelSpec | str) -> nn.Module:
    """Model factory: a spec (or a zoo name such as ``sfc_w2a2``) -> a freshly initialised model."""
    if isinstance(spec, str):
        spec = parse_model_name(spec)
    spec = spec.resolved()
    if spec.arch == "vgg3":
        return QuantVGG3(spec)
    return QuantMLP(spec)


def quant_layers(model: nn.Module) -> list[nn.Module]:
    """The weight-carrying quantized layers, in forward order (the fault models' targets)."""
    return [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
