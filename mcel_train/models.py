"""Brevitas model zoo: FINN-style MLPs (TFC/SFC/LFC), the MCEL paper's VGG3 and a CNV-style CNN.

Architectures (``<arch>_w<bits>a<bits>`` names, see :data:`ARCHS`):

- ``tfc``, ``sfc``, ``lfc``, ``mlp``: fully connected, FINN's BNN-PYNQ family.
- ``vgg3``: the VGG3 of the MCEL paper (Yayla & Kumar 2026): two padded 3x3 conv blocks of 64
  channels with 2x2 max-pools, FC 3136 -> 2048 -> classes. ``vgg3s`` is the same network with a
  256-wide FC layer (the earlier default, which the results in ``docs/results.md`` used).
- ``cnv``: FINN's binarized CNV shape for 28x28 images: unpadded 3x3 convs in pairs, a 2x2
  max-pool after each pair, then FC layers; its first layer takes the 8-bit pixels.

Conventions every later stage relies on (export, FINN build, fault models):

- The network input is the integer tensor from :func:`mcel_train.data.encode_inputs` (pixels
  0..255, or +-1 for binarized inputs), fed in unscaled: there is no input Mul or Reshape node in
  the exported graph. MLPs take flat ``(N, H*W)`` inputs; the CNNs take ``(N, 1, H, W)`` (and
  reshape flat inputs to that, so callers that flatten every image still work).
- Any network, binarized ones included, may take the 8-bit pixels (``input_kind: uint8``): the
  first layer's accumulator is then an integer sum of pixels times weights, which BatchNorm and
  the activation threshold like any other.
- Layers carry no bias. Each hidden layer is ``QuantLinear/QuantConv2d -> BatchNorm -> act``
  (then, in CNNs, an optional max-pool), which FINN turns into a matrix-vector unit followed by
  thresholds.
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
from dataclasses import asdict, dataclass, field, replace

import torch
from brevitas.core.bit_width import BitWidthImplType
from brevitas.core.quant import QuantType
from brevitas.core.restrict_val import RestrictValueType
from brevitas.core.scaling import ScalingImplType
from brevitas.core.zero_point import ZeroZeroPoint
from brevitas.inject import ExtendedInjector
from brevitas.inject.enum import FloatToIntImplType
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from brevitas.quant import Int8WeightPerTensorFloat, ShiftedUint8WeightPerTensorFloat
from brevitas.quant.solver import ActQuantSolver, WeightQuantSolver
from dependencies import value
from torch import nn

ARCHS = ("tfc", "sfc", "lfc", "mlp", "vgg3", "vgg3s", "cnv")
CONV_ARCHS = ("vgg3", "vgg3s", "cnv")
DEFAULT_HIDDEN = {
    "tfc": (64, 64, 64), "sfc": (256, 256, 256), "lfc": (1024, 1024, 1024),
    "vgg3": (2048,), "vgg3s": (256,), "cnv": (256, 256),
}
# Channels of the conv layers; MLPs carry the old default too, which keeps their saved specs
# (and the sweep records that embed them) unchanged.
DEFAULT_CHANNELS = {"cnv": (32, 32, 64, 64, 128)}
OTHER_CHANNELS = (64, 64)  # the other archs' (an MLP's is unused: any other value is refused)
# FINN's CNV takes 8-bit pixels into its first (binarized) layer; the others binarize the input
# of binarized networks.
DEFAULT_INPUT_KIND = {"cnv": "uint8"}
BIT_PRESETS = {"w1a1": (1, 1), "w1a2": (1, 2), "w2a2": (2, 2), "w4a4": (4, 4), "w8a8": (8, 8)}
SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
# stats: Brevitas' symmetric abs-max scale; const: a fixed scale; minmax: per-tensor min/max with
# unsigned codes and a zero point (the MCEL paper authors' evaluation code), software only.
WEIGHT_SCALINGS = ("stats", "const", "minmax")


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
    channels: tuple[int, ...] = ()
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
            if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
                raise ValueError(f"{what} must be an integer in 1..8, got {bits!r}")
        for what, sizes in (("hidden", self.hidden), ("channels", self.channels), ("image_shape", self.image_shape)):
            if any(isinstance(v, bool) or not isinstance(v, int) for v in sizes):  # 1.7 is not a width
                raise ValueError(f"{what} must be whole numbers, got {list(sizes)}")
        if len(self.image_shape) != 2 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be [height, width] of positive sizes, got {list(self.image_shape)}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be a whole number >= 2, got {self.num_classes!r}")
        if self.extra:
            raise ValueError(f"extra is reserved and must be empty, got {self.extra!r}")
        scale = self.const_weight_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"const_weight_scale must be a finite number >= 0 (0: the default), got {scale!r}")
        if scale and self.weight_scaling != "const":
            raise ValueError("const_weight_scale applies to weight_scaling const only; set model.weight_scaling=const "
                             "or drop it")
        if self.arch not in CONV_ARCHS and self.channels and tuple(self.channels) != OTHER_CHANNELS:
            raise ValueError(f"channels applies to conv networks ({', '.join(CONV_ARCHS)}); {self.arch} is an "
                             "MLP: set hidden instead")
        if self.weight_scaling not in WEIGHT_SCALINGS:
            raise ValueError(
                f"weight_scaling must be one of {', '.join(WEIGHT_SCALINGS)}, got {self.weight_scaling!r}"
            )
        if self.weight_scaling == "minmax" and self.weight_bits < 2:
            raise ValueError("weight_scaling minmax needs weight_bits >= 2 (1-bit weights are bipolar)")
        hidden = tuple(self.hidden) or DEFAULT_HIDDEN.get(self.arch, (256,))
        if any(int(h) <= 0 for h in hidden):
            raise ValueError(f"hidden sizes must be positive, got {hidden}")
        channels = tuple(self.channels) or DEFAULT_CHANNELS.get(self.arch, OTHER_CHANNELS)
        if any(int(c) <= 0 for c in channels):
            raise ValueError(f"channels must be positive, got {channels}")
        input_kind = self.input_kind or DEFAULT_INPUT_KIND.get(
            self.arch, "bipolar" if self.act_bits == 1 else "uint8")
        if input_kind not in ("uint8", "bipolar"):
            raise ValueError(f"input_kind must be uint8 or bipolar, got {input_kind!r}")
        spec = ModelSpec(
            arch=self.arch,
            weight_bits=int(self.weight_bits),
            act_bits=int(self.act_bits),
            hidden=tuple(int(h) for h in hidden),
            channels=tuple(int(c) for c in channels),
            input_kind=input_kind,
            image_shape=tuple(int(s) for s in self.image_shape),  # type: ignore[arg-type]
            num_classes=int(self.num_classes),
            weight_scaling=self.weight_scaling,
            const_weight_scale=float(self.const_weight_scale),
            extra=dict(self.extra),
        )
        fan_ins = weight_fan_ins(spec)  # for CNNs this also checks that the feature maps fit
        if spec.weight_scaling == "const" and spec.const_weight_scale <= 0:
            spec = replace(spec, const_weight_scale=_default_const_scale(spec, fan_ins))
        return spec

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
                if not isinstance(d[key], (list, tuple)):
                    raise ValueError(f"{key} must be a list of sizes such as [64, 64], got {d[key]!r}")
                d[key] = tuple(d[key])
        return cls(**d).resolved()


def _default_const_scale(spec: ModelSpec, fan_ins: list[int]) -> float:
    """Default constant weight scale: a layer's init abs-max, ``(1/sqrt(fan_in)) / (2**(b-1) - 1)``.

    The scale Brevitas' abs-max statistics give at PyTorch's init (uniform in +-1/sqrt(fan_in)).
    A coarser one (0.5 / ... was tried) rounds every initial weight of a 784-input layer to 0
    and the network stays at chance. The layer is the first one: an MLP's widest. A CNN's first
    layer has a fan-in of only 9, the coarsest scale of the network; from 3 bits on it trains
    (vgg3_w4a4: 87.6 % after 120 Fashion-MNIST steps, 85.0 % with the finest layer's scale,
    whose 15 levels saturate the first conv), but at 2 bits it rounds every weight after the
    first conv to 0 for good (cnv_w2a2 and vgg3_w2a2 stay at 10 %). 2-bit weights are ternary,
    so a finer scale only decides which weights are 0: there CNNs take the largest fan-in.
    """
    if spec.weight_bits == 1:
        return 1.0
    fan_in = fan_ins[0]
    if spec.arch in CONV_ARCHS and spec.weight_bits == 2:
        fan_in = max(fan_ins)
    return fan_in ** -0.5 / (2 ** (spec.weight_bits - 1) - 1)


def weight_fan_ins(spec: ModelSpec) -> list[int]:
    """Fan-in (inputs per output) of each weight layer of ``spec``'s network, in forward order."""
    if spec.arch in CONV_ARCHS:
        stages = conv_plan(spec)
        fans = [9 * st.in_channels for st in stages]
        last = stages[-1]
        widths = [last.out_channels * last.out_hw[0] * last.out_hw[1], *spec.hidden]
    else:
        fans = []
        widths = [spec.image_shape[0] * spec.image_shape[1], *spec.hidden]
    return fans + widths


def parse_model_name(name: str) -> ModelSpec:
    """``tfc_w1a1``, ``sfc_w2a2``, ``vgg3_w4a4``, ``cnv_w1a1``, ... -> a resolved :class:`ModelSpec`."""
    m = re.fullmatch(r"([a-z0-9]+)_w(\d+)a(\d+)", name)
    if not m or m.group(1) not in ARCHS:
        raise ValueError(
            f"unknown model {name!r}; expected <arch>_w<bits>a<bits> with arch in {', '.join(ARCHS)}, "
            f"for example tfc_w1a1, sfc_w2a2, vgg3_w4a4, cnv_w1a1 (presets: {', '.join(BIT_PRESETS)})"
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
    if spec.weight_scaling == "minmax":
        return {"weight_quant": ShiftedUint8WeightPerTensorFloat, "weight_bit_width": spec.weight_bits}
    return {"weight_quant": Int8WeightPerTensorFloat, "weight_bit_width": spec.weight_bits}


def _output_weight_quant_kwargs(spec: ModelSpec, fan_in: int) -> dict:
    """Weight quantizer of the logit layer.

    Bipolar weights have scale 1, so a binarized network's logits are raw accumulators of up to
    +-fan_in: cross-entropy on them saturates (loss ~7 in the first epoch, 79 % instead of 84 %
    on sfc_w1a1). The output layer therefore gets the constant scale 2**-round(log2(sqrt(fan_in))),
    a power of two so that ``logits / scale`` stays exactly the integer accumulator and argmax
    (all the accelerator computes) is unchanged.

    With ``minmax`` the logit layer keeps the symmetric statistics scale: Brevitas gives no
    output scale for an accumulator with a zero point ("zero point of output accumulator not
    supported"), and the logits must stay integer accumulators times one scale.
    """
    if spec.weight_scaling == "minmax":
        return {"weight_quant": Int8WeightPerTensorFloat, "weight_bit_width": spec.weight_bits}
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


@dataclass(frozen=True)
class ConvStage:
    """One conv layer of a zoo CNN and the feature map it leaves (after its optional pool)."""

    in_channels: int
    out_channels: int
    padding: int
    pool: int
    out_hw: tuple[int, int]


def conv_plan(spec: ModelSpec) -> list[ConvStage]:
    """The conv layers of a CNN spec with their feature-map sizes (3x3 kernels, stride 1).

    ``vgg3``/``vgg3s``: padding 1 and a 2x2 max-pool after every conv. ``cnv``: no padding, a
    2x2 max-pool after each pair of convs (FINN's CNV); an odd last conv has no pool. Raises
    ``ValueError`` when a map shrinks below 1x1, naming the layer, so that a bad ``channels``
    for the image size is a config error and not a shape error deep in torch.
    """
    h, w = spec.image_shape
    stages: list[ConvStage] = []
    in_ch = 1
    for i, ch in enumerate(spec.channels):
        pad = 1 if spec.arch in ("vgg3", "vgg3s") else 0
        pool = 2 if (spec.arch != "cnv" or i % 2 == 1) else 0
        h, w = h + 2 * pad - 2, w + 2 * pad - 2
        if pool:
            h, w = h // pool, w // pool
        if h < 1 or w < 1:
            raise ValueError(
                f"{spec.arch}: channels {tuple(spec.channels)} do not fit {spec.image_shape[0]}x"
                f"{spec.image_shape[1]} images: conv {i} leaves a {h}x{w} map (use fewer conv layers)"
            )
        stages.append(ConvStage(in_ch, ch, pad, pool, (h, w)))
        in_ch = ch
    return stages


class QuantCNN(nn.Module):
    """Conv blocks ``conv3x3 -> BN -> act [-> max-pool 2x2]``, then FC blocks and the logit layer.

    The layout (padding, where pools sit) comes from :func:`conv_plan`; every later layer
    follows the zoo conventions of the module docstring. The feature extractor and classifier
    are registered in forward order, the order :func:`mcel_train.intnet.from_brevitas` walks.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.input_shape = (1, *spec.image_shape)
        wq = _weight_quant_kwargs(spec)
        layers: list[nn.Module] = []
        stages = conv_plan(spec)
        for st in stages:
            layers += [
                QuantConv2d(st.in_channels, st.out_channels, kernel_size=3, stride=1, padding=st.padding,
                            bias=False, **wq),
                nn.BatchNorm2d(st.out_channels),
                _activation(spec),
            ]
            if st.pool:
                layers.append(nn.MaxPool2d(st.pool))
        self.features = nn.Sequential(*layers)
        last = stages[-1]
        in_features = last.out_channels * last.out_hw[0] * last.out_hw[1]
        fc: list[nn.Module] = []
        for width in spec.hidden:
            fc += [QuantLinear(in_features, width, bias=False, **wq), nn.BatchNorm1d(width), _activation(spec)]
            in_features = width
        fc.append(QuantLinear(in_features, spec.num_classes, bias=False, return_quant_tensor=True,
                              **_output_weight_quant_kwargs(spec, in_features)))
        self.classifier = nn.Sequential(*fc)

    def logits_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and their quantization scale: ``logits / scale`` are the integer accumulators."""
        if x.dim() == 2:  # flat images, as MLP-minded callers pass them
            x = x.reshape(x.shape[0], *self.input_shape)
        return _value_and_scale(self.classifier(torch.flatten(self.features(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_scale(x)[0]


class QuantVGG3(QuantCNN):
    """The MCEL paper's VGG3 (``vgg3``; ``vgg3s`` has a 256-wide FC layer).

    Defaults: 3x3 conv 1->64 (padding 1), pool, 3x3 conv 64->64, pool, FC 3136->2048, FC
    2048->classes, BatchNorm and a quantized activation after every layer but the last.
    Each block is conv -> BN -> activation -> max-pool, whereas the paper pools right after the
    conv. The pool last is hardware friendly: BatchNorm plus activation fold into one monotone
    threshold unit on the accumulator, and max-pool commutes with a monotone non-decreasing
    function, so the accelerator may pool the few-bit activations, or the accumulators before
    the thresholds (``ThresholdPostOp.then_pool`` in ``mcel_train/intnet.py``), with the same
    result. The two orders differ only in channels whose BatchNorm scale is negative.
    """


class QuantCNV(QuantCNN):
    """FINN's CNV (BNN-PYNQ) shape for 28x28 images (``cnv``): binarized convs on 8-bit pixels.

    Unpadded 3x3 convs in pairs, each pair followed by a 2x2 max-pool; defaults 28 -> 26 -> 24
    -> pool 12 -> 10 -> 8 -> pool 4 -> 2 with channels (32, 32, 64, 64, 128), then FC 512 ->
    256 -> 256 -> classes. No padding because a binarized map has no zero to pad with (FINN's
    CNV pads nothing either). The first layer takes the ``uint8`` pixels with the same
    ``weight_bits`` as the rest (bipolar for ``cnv_w1a1``/``cnv_w1a2``), as FINN's CNV takes
    8-bit pixels. Channels are half of FINN's (64, 64, 128, 128, 256) and the FC layers half of
    its 512: with them an epoch on Fashion-MNIST takes minutes on a 2-core CPU.
    """


def build_model(spec: ModelSpec | str) -> nn.Module:
    """Model factory: a spec (or a zoo name such as ``sfc_w2a2``) -> a freshly initialised model."""
    if isinstance(spec, str):
        spec = parse_model_name(spec)
    spec = spec.resolved()
    if spec.arch in ("vgg3", "vgg3s"):
        return QuantVGG3(spec)
    if spec.arch == "cnv":
        return QuantCNV(spec)
    return QuantMLP(spec)


def quant_layers(model: nn.Module) -> list[nn.Module]:
    """The weight-carrying quantized layers, in forward order (the fault models' targets)."""
    return [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
