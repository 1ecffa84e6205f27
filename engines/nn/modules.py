"""YOLOv8-seg, YOLO11-seg and YOLO26-seg building blocks.

Imports nothing from segpipe but :mod:`engines.nn.head`. Attribute names (``conv``, ``bn``, ``cv1``,
``m``, ``cv2``/``cv3``/``cv4``, ``dfl``, ``proto``) are part of the checkpoint format: they make
the state-dict keys match Ultralytics' one to one, so do not rename them. Constructors take
keyword-only arguments; the YAML row -> arguments mapping lives in :mod:`engines.nn.model`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.nn.head import dist2bbox, make_anchors

# Ultralytics trains with these BatchNorm settings; they are part of reproducing its training.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03
# BatchNorm scale a new residual branch of Proto starts at: small, so seeded weights predict nearly as
# before, but not zero. At zero the branch's conv gets no gradient and Adam moves the scale itself by
# about lr a step: at lr 5e-4 a zero-started refine still had scales of ~0.002 after 1,470 steps.
NEW_BRANCH_SCALE = 0.1

_Pair = tuple[int, int]


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'Same' padding for an odd kernel ``k`` with dilation ``d`` (unless ``p`` is given)."""
    if p is not None:
        return p
    k = d * (k - 1) + 1 if d > 1 else k
    return k // 2


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the preceding convolution (returns a new conv with bias)."""
    # The stubs type a conv's geometry as tuple[int, ...]; a Conv2d's are pairs.
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, cast(_Pair, conv.kernel_size),
                      cast(_Pair, conv.stride), cast("str | _Pair", conv.padding), cast(_Pair, conv.dilation),
                      conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
    # Fusing needs the running statistics, which a BatchNorm built with track_running_stats=False lacks.
    assert bn.running_mean is not None and bn.running_var is not None
    assert fused.bias is not None  # built with bias=True
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused.requires_grad_(False)


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU. ``(N, c1, H, W) -> (N, c2, H/s, W/s)``."""

    def __init__(self, *, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 d: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        """Fold the BatchNorm into the conv; afterwards the state dict has ``conv.weight/bias`` only."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


class DWConv(Conv):
    """Depth-wise Conv (groups ``gcd(c1, c2)``) + BatchNorm2d + SiLU: YOLO11's classification branch."""

    def __init__(self, *, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool = True) -> None:
        super().__init__(c1=c1, c2=c2, k=k, s=s, g=math.gcd(c1, c2), d=d, act=act)


class Bottleneck(nn.Module):
    """Two convs with an optional residual: ``(N, c1, H, W) -> (N, c2, H, W)``."""

    def __init__(self, *, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple[int, int] = (3, 3),
                 e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1=c1, c2=c_, k=k[0])
        self.cv2 = Conv(c1=c_, c2=c2, k=k[1], g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two convs and ``n`` bottlenecks whose outputs are all concatenated.
    ``(N, c1, H, W) -> (N, c2, H, W)``."""

    def __init__(self, *, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1,
                 e: float = 0.5, block: Callable[[int], nn.Module] | None = None) -> None:
        """``block(c)`` makes each of the ``n`` inner blocks over ``c = int(c2 * e)`` channels (default:
        a full-width 3x3 :class:`Bottleneck`, YOLOv8's)."""
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1=c1, c2=2 * self.c, k=1)
        self.cv2 = Conv(c1=(2 + n) * self.c, c2=c2, k=1)
        make = block or (lambda c: Bottleneck(c1=c, c2=c, shortcut=shortcut, g=g, k=(3, 3), e=1.0))
        self.m = nn.ModuleList(make(self.c) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class C3k(nn.Module):
    """CSP block with three convs around ``n`` ``k x k`` bottlenecks (Ultralytics' C3 layout).
    ``(N, c1, H, W) -> (N, c2, H, W)``."""

    def __init__(self, *, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 k: int = 3) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1=c1, c2=c_, k=1)
        self.cv2 = Conv(c1=c1, c2=c_, k=1)
        self.cv3 = Conv(c1=2 * c_, c2=c2, k=1)
        self.m = nn.Sequential(*(Bottleneck(c1=c_, c2=c_, shortcut=shortcut, g=g, k=(k, k), e=1.0) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k2(C2f):
    """YOLO11's C2f: its inner blocks are half-width bottlenecks, :class:`C3k` blocks (``c3k``, scales m/l/x)
    or a bottleneck followed by a :class:`PSABlock` (``attn``). ``(N, c1, H, W) -> (N, c2, H, W)``."""

    def __init__(self, *, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, attn: bool = False,
                 g: int = 1, shortcut: bool = True) -> None:
        def block(c: int) -> nn.Module:
            if attn:
                return nn.Sequential(Bottleneck(c1=c, c2=c, shortcut=shortcut, g=g),
                                     PSABlock(c=c, attn_ratio=0.5, num_heads=max(c // 64, 1)))
            if c3k:
                return C3k(c1=c, c2=c, n=2, shortcut=shortcut, g=g)
            return Bottleneck(c1=c, c2=c, shortcut=shortcut, g=g)

        super().__init__(c1=c1, c2=c2, n=n, shortcut=shortcut, g=g, e=e, block=block)


class Attention(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions of a map, plus a depth-wise 3x3 positional
    term on the values. ``(N, dim, H, W) -> (N, dim, H, W)``; keys/queries have ``head_dim * attn_ratio``
    channels per head."""

    def __init__(self, *, dim: int, num_heads: int = 8, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        self.qkv = Conv(c1=dim, c2=dim + 2 * self.key_dim * num_heads, k=1, act=False)
        self.proj = Conv(c1=dim, c2=dim, k=1, act=False)
        self.pe = Conv(c1=dim, c2=dim, k=3, g=dim, act=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(x).view(n, self.num_heads, 2 * self.key_dim + self.head_dim, h * w).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)  # (N, heads, HW, HW)
        y = (v @ attn.transpose(-2, -1)).view(n, c, h, w) + self.pe(v.reshape(n, c, h, w))
        return self.proj(y)


class PSABlock(nn.Module):
    """Attention then a 1x1 feed-forward pair, each residual when ``shortcut``. ``(N, c, H, W)`` kept."""

    def __init__(self, *, c: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True) -> None:
        super().__init__()
        self.attn = Attention(dim=c, attn_ratio=attn_ratio, num_heads=num_heads)
        self.ffn = nn.Sequential(Conv(c1=c, c2=2 * c, k=1), Conv(c1=2 * c, c2=c, k=1, act=False))
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    """YOLO11's attention stage: half of the channels pass ``n`` :class:`PSABlock` s, the other half skips
    them. ``(N, c1, H, W) -> (N, c2, H, W)`` with ``c1 == c2``."""

    def __init__(self, *, c1: int, c2: int, n: int = 1, e: float = 0.5) -> None:
        super().__init__()
        if c1 != c2:
            raise ValueError(f"C2PSA keeps its channel count, got {c1} in and {c2} out")
        self.c = int(c1 * e)
        self.cv1 = Conv(c1=c1, c2=2 * self.c, k=1)
        self.cv2 = Conv(c1=2 * self.c, c2=c1, k=1)
        self.m = nn.Sequential(*(PSABlock(c=self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1)) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): ``n`` chained max-pools, equal to SPP(k=(5, 9, 13)) for k=5, n=3.
    ``(N, c1, H, W) -> (N, c2, H, W)``. YOLO26's (``act=False``, ``shortcut``) has no activation after
    ``cv1`` and adds its input back when ``c1 == c2``; YOLOv8's and YOLO11's keep the activation."""

    def __init__(self, *, c1: int, c2: int, k: int = 5, n: int = 3, shortcut: bool = False,
                 act: bool = True) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1=c1, c2=c_, k=1, act=act)
        self.cv2 = Conv(c1=c_ * (n + 1), c2=c2, k=1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.n, self.add = n, shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(self.n):
            y.append(self.m(y[-1]))
        out = self.cv2(torch.cat(y, 1))
        return out + x if self.add else out


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dim`` (channels by default)."""

    def __init__(self, *, dim: int = 1) -> None:
        super().__init__()
        self.d = dim

    def forward(self, x: list[Tensor]) -> Tensor:
        return torch.cat(x, self.d)


class DFL(nn.Module):
    """Distribution focal loss integral: expectation over ``c1`` bins with a fixed 1x1 conv.
    ``(N, 4*c1, A) -> (N, 4, A)`` distances in grid units."""

    def __init__(self, *, c1: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x: Tensor) -> Tensor:
        # (N, 4*c1, A) -> (N, c1, 4, A) so the conv integrates over the bins. view() with the traced sizes, not
        # unflatten(), which the ONNX exporter writes only from opset 13 (TensorRT 7 and OpenCV's DNN read 11-12).
        n, _, a = x.shape
        return self.conv(x.view(n, 4, self.c1, a).transpose(2, 1).softmax(1)).view(n, 4, a)


class Proto(nn.Module):
    """Mask prototypes from the P3 map: ``(N, c1, H/8, W/8) -> (N, c2, H/stride, W/stride)``.

    ``stride`` 4 is YOLOv8's. ``stride`` 2 adds one upsampling step after the last conv (``upsample2``,
    then a residual 3x3 conv ``refine`` over the ``c2`` prototypes): maps fine enough for strokes 1-3 px
    wide, which a quarter-resolution map cannot draw (n scale: 12.0 -> 17.2 GFLOPs, +28 % CPU time). The
    step starts as a plain bilinear x2 upsampling plus a faint ``refine`` (BatchNorm scale
    ``NEW_BRANCH_SCALE``), so a stride-4 model's weights load into it and predict nearly as before until
    training teaches it detail.

    ``skips`` (segpipe): backbone maps finer than P3 to draw on, ``((stride, channels), ...)`` in the
    order ``forward`` gets them: coarsest first, one per stride, 4 and/or 2 (2 needs ``stride`` 2). P3 has no detail below 8 px; these early maps still hold
    the edges of 1-3 px strokes. Each enters through a residual conv started faint like ``refine``
    (``skip4``: 1x1 into the upsampled hidden map; ``skip2``: 3x3 over the half-resolution prototypes and
    the map together, beside ``refine``), so weights without them load and predict nearly as before.
    """

    def __init__(self, *, c1: int, c_: int = 256, c2: int = 32, stride: int = 4,
                 skips: tuple[tuple[int, int], ...] = ()) -> None:
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"prototype stride must be 4 or 2, got {stride!r}")
        self.stride, self.skip_strides = stride, tuple(s for s, _ in skips)
        if list(self.skip_strides) != sorted(set(self.skip_strides), reverse=True):
            raise ValueError(f"prototype skip inputs must come coarsest first, one per stride, got strides "
                             f"{list(self.skip_strides)}")
        if not set(self.skip_strides) <= {4, 2} or (2 in self.skip_strides and stride != 2):
            raise ValueError(f"prototype skip inputs must be at stride 4 or 2 (2 only for prototype stride 2), "
                             f"got strides {list(self.skip_strides)}")
        skip_ch = dict(skips)
        self.cv1 = Conv(c1=c1, c2=c_, k=3)
        self.upsample = nn.ConvTranspose2d(c_, c_, 2, 2, 0, bias=True)
        self.skip4 = Conv(c1=skip_ch[4], c2=c_) if 4 in skip_ch else None
        self.cv2 = Conv(c1=c_, c2=c_, k=3)
        self.cv3 = Conv(c1=c_, c2=c2)
        if stride == 2:
            self.upsample2 = nn.ConvTranspose2d(c2, c2, 4, 2, 1, bias=True)
            self.refine = Conv(c1=c2, c2=c2, k=3)
            with torch.no_grad():  # per-channel bilinear x2
                taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
                self.upsample2.weight.zero_()
                self.upsample2.weight[range(c2), range(c2)] = torch.outer(taps, taps)
                assert self.upsample2.bias is not None  # built with bias=True
                self.upsample2.bias.zero_()
        self.skip2 = Conv(c1=c2 + skip_ch[2], c2=c2, k=3) if 2 in skip_ch else None
        for m in (self.skip4, self.skip2, getattr(self, "refine", None)):
            if m is not None:
                # Conv.bn is typed Module (fusing swaps it out); here it is still the BatchNorm2d.
                nn.init.constant_(cast(Tensor, m.bn.weight), NEW_BRANCH_SCALE)

    def forward(self, x: Tensor, *skips: Tensor) -> Tensor:
        """x: P3; skips: the maps named by ``skips``, coarsest first (stride 4, then 2)."""
        if len(skips) != len(self.skip_strides):
            raise ValueError(f"Proto: expected {len(self.skip_strides)} skip maps, got {len(skips)}")
        fine = dict(zip(self.skip_strides, skips, strict=True))
        x = self.upsample(self.cv1(x))
        if self.skip4 is not None:
            x = x + self.skip4(fine[4])
        x = self.cv3(self.cv2(x))
        if self.stride == 2:
            x = self.upsample2(x)
            y = x + self.refine(x)
            x = y if self.skip2 is None else y + self.skip2(torch.cat((x, fine[2]), 1))
        return x


class Proto26(Proto):
    """YOLO26's prototypes: P4 and P5 (1x1 convs to P3's channels, nearest-upsampled) are added to P3 and
    fused by a 3x3 conv before :class:`Proto`'s stride-4 stack. ``semseg`` is a semantic-segmentation branch
    trained beside it (:meth:`with_semantic`, ``engines.train.loss.semantic_loss``); inference never runs
    it."""

    def __init__(self, *, ch: tuple[int, ...], c_: int = 256, c2: int = 32, nc: int = 80) -> None:
        super().__init__(c1=c_, c_=c_, c2=c2)
        self.feat_refine = nn.ModuleList(Conv(c1=c, c2=ch[0], k=1) for c in ch[1:])
        self.feat_fuse = Conv(c1=ch[0], c2=c_, k=3)
        self.semseg = nn.Sequential(Conv(c1=ch[0], c2=c_, k=3), Conv(c1=c_, c2=c_, k=3), nn.Conv2d(c_, nc, 1))

    def forward(self, x: Tensor, *levels: Tensor) -> Tensor:
        """x: P3; levels: P4, P5."""
        return super().forward(self.feat_fuse(self._fused(x, levels)))

    def with_semantic(self, x: Tensor, *levels: Tensor) -> tuple[Tensor, Tensor]:
        """Training's output: the prototypes and ``(N, nc, H/8, W/8)`` semantic logits."""
        feat = self._fused(x, levels)
        return super().forward(self.feat_fuse(feat)), self.semseg(feat)

    def _fused(self, x: Tensor, levels: tuple[Tensor, ...]) -> Tensor:
        if len(levels) != len(self.feat_refine):
            raise ValueError(f"Proto26: expected {len(self.feat_refine)} coarser levels, got {len(levels)}")
        feat = x
        for i, (refine, level) in enumerate(zip(self.feat_refine, levels, strict=True)):
            # a constant factor, as Ultralytics: exported graphs keep H and W symbolic
            feat = feat + F.interpolate(refine(level), scale_factor=2 ** (i + 1), mode="nearest")
        return feat


class SegTrainOutput(NamedTuple):
    """Train-mode output of :class:`Segment`.

    feats: per level ``(N, 4*reg_max + nc, h_i, w_i)`` raw box-distribution logits then class logits.
    coeffs: ``(N, nm, A)`` mask coefficients, levels concatenated like the anchors.
    proto: ``(N, nm, H/4, W/4)`` mask prototypes.
    semantic: YOLO26's ``(N, nc, H/8, W/8)`` semantic logits (:class:`Proto26`), else None.
    one2one: a head with one-to-one branches: their outputs, made from detached inputs (with the
    prototypes and semantic logits detached), so that their loss trains those branches alone.
    """

    feats: list[Tensor]
    coeffs: Tensor
    proto: Tensor
    semantic: Tensor | None = None
    one2one: SegTrainOutput | None = None


def _branch(c1: int, c_: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(Conv(c1=c1, c2=c_, k=3), Conv(c1=c_, c2=c_, k=3), nn.Conv2d(c_, c_out, 1))


def _dw_branch(c1: int, c_: int, c_out: int) -> nn.Sequential:
    """YOLO11's class branch: two (depth-wise 3x3, point-wise 1x1) pairs, then the output conv."""
    return nn.Sequential(nn.Sequential(DWConv(c1=c1, c2=c1, k=3), Conv(c1=c1, c2=c_, k=1)),
                         nn.Sequential(DWConv(c1=c_, c2=c_, k=3), Conv(c1=c_, c2=c_, k=1)),
                         nn.Conv2d(c_, c_out, 1))


class Detect(nn.Module):
    """Anchor-free detection head over the P3-P5 maps.

    ``strides`` are the input-pixel strides of the input levels (8, 16, 32). ``legacy`` (YOLOv8) makes
    the class branch ``cv3`` of plain 3x3 convs; otherwise (YOLO11, YOLO26) of depth-wise + point-wise
    pairs. ``reg_max`` 1 (YOLO26) regresses box sides directly instead of over 16 DFL bins.
    ``one2one`` (YOLO26) adds one-to-one copies of the branches (``one2one_*``), trained by Ultralytics to
    give each object one box. Eval runs them when ``end2end`` is set (Ultralytics' ``nms=False``; off by
    default, as there), and the caller then takes the top scores with no NMS (``engines.ops.topk_rows``).
    Eval output: ``(N, 4 + nc, A)``: boxes ``(cx, cy, w, h)`` in input pixels, then sigmoid class scores.
    """

    # A buffer (registered in __init__), which the torch stubs would type as Tensor | Module.
    stride: Tensor
    # Only with one2one.
    one2one_cv2: nn.ModuleList
    one2one_cv3: nn.ModuleList

    def __init__(self, *, nc: int, ch: tuple[int, ...], strides: tuple[float, ...], reg_max: int = 16,
                 legacy: bool = True, one2one: bool = False) -> None:
        super().__init__()
        if len(strides) != len(ch):
            raise ValueError(f"Detect: {len(ch)} input levels but {len(strides)} strides")
        self.nc, self.nl, self.reg_max = nc, len(ch), reg_max
        self.no = nc + 4 * reg_max
        self.strides = tuple(float(s) for s in strides)
        # Not persistent: Ultralytics' state dict has no stride key, and stride is derived from the YAML.
        self.register_buffer("stride", torch.tensor(self.strides), persistent=False)
        c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(_branch(x, c2, 4 * reg_max) for x in ch)
        self.legacy = legacy
        self.cv3 = nn.ModuleList((_branch if legacy else _dw_branch)(x, c3, nc) for x in ch)
        self.dfl = DFL(c1=reg_max) if reg_max > 1 else nn.Identity()
        # Every shape's grid is kept, never replaced: a captured CUDA graph reads its grid by address, so
        # the grid of one shape must outlive the use of another (a few KB per shape).
        self._anchor_cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.bias_init()
        self.one2one, self.end2end = one2one, False
        if one2one:
            self.one2one_cv2, self.one2one_cv3 = copy.deepcopy(self.cv2), copy.deepcopy(self.cv3)

    def bias_init(self) -> None:
        """Prior biases: box logits 2.0; class logits for ~5 objects per 640 image over ``nc`` classes."""
        with torch.no_grad():
            for a, b, s in zip(self.cv2, self.cv3, self.strides, strict=True):
                # ModuleList items are typed Module; these are _branch Sequentials ending in a biased Conv2d.
                a[-1].bias.fill_(2.0)  # type: ignore[index]
                b[-1].bias[: self.nc] = math.log(5 / self.nc / (640 / s) ** 2)  # type: ignore[index]

    def raw(self, x: list[Tensor], *, one2one: bool = False) -> list[Tensor]:
        """Per level ``(N, 4*reg_max + nc, h_i, w_i)``: box-distribution logits then class logits."""
        cv2, cv3 = (self.one2one_cv2, self.one2one_cv3) if one2one else (self.cv2, self.cv3)
        return [torch.cat((cv2[i](x[i]), cv3[i](x[i])), 1) for i in range(self.nl)]

    def anchors(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(anchors (2, A) grid units, strides (1, A) pixels)``, cached per feature-map shape."""
        if _tracing():  # computed in-graph so exported graphs keep H and W symbolic
            torchscript = torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
            a, s = make_anchors(feats, self.strides, 0.5, device_free=torchscript)
            return a.transpose(0, 1), s.transpose(0, 1)
        f0 = feats[0]
        key = (tuple((f.shape[2], f.shape[3]) for f in feats), f0.device, f0.dtype)
        if key not in self._anchor_cache:
            a, s = make_anchors(feats, self.strides, 0.5)
            self._anchor_cache[key] = (a.transpose(0, 1), s.transpose(0, 1))
        return self._anchor_cache[key]

    def decode(self, feats: list[Tensor]) -> Tensor:
        """Raw level maps -> ``(N, 4 + nc, A)`` xywh boxes in input pixels + sigmoid scores."""
        x = torch.cat([f.flatten(2) for f in feats], 2)
        box, cls = x.split((4 * self.reg_max, self.nc), 1)
        anchors, strides = self.anchors(feats)
        dbox = dist2bbox(self.dfl(box), anchors.unsqueeze(0), xywh=True, dim=1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)

    def forward(self, x: list[Tensor]) -> list[Tensor] | Tensor:
        if self.training:
            return self.raw(x)
        return self.decode(self.raw(x, one2one=self.end2end))


class Segment(Detect):
    """Detect plus ``nm`` mask coefficients per anchor and a :class:`Proto` of ``npr`` channels.

    Eval: ``(pred (N, 4 + nc + nm, A), proto (N, nm, H/s, W/s))``, ``s = proto_stride`` (4, or 2 for
    finer prototypes, see :class:`Proto`); train: :class:`SegTrainOutput` (of the one-to-many branches).
    ``ch``/``strides`` are the detection levels; ``skips`` ``((stride, channels), ...)``, coarsest first,
    are inputs that follow them and feed only the prototypes. ``proto26``: YOLO26's :class:`Proto26`,
    fed by every detection level.
    """

    one2one_cv4: nn.ModuleList  # only with one2one

    def __init__(self, *, nc: int, ch: tuple[int, ...], strides: tuple[float, ...], nm: int = 32,
                 npr: int = 256, reg_max: int = 16, proto_stride: int = 4,
                 skips: tuple[tuple[int, int], ...] = (), legacy: bool = True, one2one: bool = False,
                 proto26: bool = False) -> None:
        super().__init__(nc=nc, ch=ch, strides=strides, reg_max=reg_max, legacy=legacy, one2one=one2one)
        self.nm, self.npr = nm, npr
        if proto26 and (skips or proto_stride != 4):
            raise ValueError("YOLO26's prototypes take no skip inputs and have stride 4")
        self.proto = (Proto26(ch=ch, c_=npr, c2=nm, nc=nc) if proto26 else
                      Proto(c1=ch[0], c_=npr, c2=nm, stride=proto_stride, skips=skips))
        c4 = max(ch[0] // 4, nm)
        self.cv4 = nn.ModuleList(_branch(x, c4, nm) for x in ch)
        if one2one:
            self.one2one_cv4 = copy.deepcopy(self.cv4)

    @property
    def proto26(self) -> bool:
        return isinstance(self.proto, Proto26)

    def coeffs(self, x: list[Tensor], *, one2one: bool = False) -> Tensor:
        cv4 = self.one2one_cv4 if one2one else self.cv4
        return torch.cat([cv4[i](x[i]).flatten(2) for i in range(self.nl)], 2)

    def forward(self, x: list[Tensor]) -> SegTrainOutput | tuple[Tensor, Tensor]:  # type: ignore[override]
        if self.training:
            return self._train_forward(x)
        proto = self.proto(*self._proto_inputs(x))
        feats = self.raw(x, one2one=self.end2end)
        return torch.cat((self.decode(feats), self.coeffs(x, one2one=self.end2end)), 1), proto

    def _proto_inputs(self, x: list[Tensor]) -> list[Tensor]:
        """Proto26 reads every detection level; a Proto, P3 and the inputs after the detection levels."""
        return x if self.proto26 else [x[0], *x[self.nl:]]

    def _train_forward(self, x: list[Tensor]) -> SegTrainOutput:
        semantic = None
        if isinstance(self.proto, Proto26):
            proto, semantic = self.proto.with_semantic(*x)
        else:
            proto = self.proto(*self._proto_inputs(x))
        one2one = None
        if self.one2one:
            xd = [xi.detach() for xi in x[:self.nl]]
            one2one = SegTrainOutput(self.raw(xd, one2one=True), self.coeffs(xd, one2one=True),
                                     proto.detach(), None if semantic is None else semantic.detach())
        return SegTrainOutput(self.raw(x), self.coeffs(x), proto, semantic, one2one)


def _tracing() -> bool:
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling() or torch.compiler.is_exporting())
