"""SegmentationModel: a YOLOv8-seg, YOLO11-seg or YOLO26-seg network built from a model YAML.

Imports nothing from ``pipeline``. The model YAML has Ultralytics' layout (``nc``, ``scales``,
``backbone``, ``head`` rows of ``[from, repeats, module, args]``); ``yolov8s-seg.yaml`` means scale
``s`` of ``yolov8-seg.yaml``, ``yolo11s-seg.yaml`` scale ``s`` of ``yolo11-seg.yaml`` (looked up in
``engines/cfg``). Each module name maps to one builder in ``_BUILDERS`` that turns a YAML row into
keyword arguments, so an unknown name or a malformed row fails at build time naming its YAML path.

Two rules follow Ultralytics' ``parse_model`` so its YAMLs and checkpoints build unchanged: a model
with a ``C3k2`` layer (YOLO11) gets the depth-wise class branch in its head (``legacy=False``), and
its ``C3k2`` layers use ``C3k`` blocks at scales m, l and x whatever the row says. The top-level keys
``reg_max`` (box bins, 16 by default; YOLO26: 1) and ``end2end`` (one-to-one head branches, which can run
NMS-free) reach the head row, as in Ultralytics; ``Segment26`` is a Segment whose prototypes read every
detection level.
"""

from __future__ import annotations

import ast
import copy
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor, nn

from engines.errors import ConfigError, ModelError
from engines.nn.modules import C2PSA, SPPF, C2f, C3k2, Concat, Conv, Segment, SegTrainOutput

log = logging.getLogger(__name__)

CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"
# "yolov8s-seg" -> ("yolov8", "s", "-seg"), "yolo11s-seg" -> ("yolo11", "s", "-seg"); the letter is the
# scale when the file itself is absent.
_SCALED_NAME = re.compile(r"^(yolov?\d+)([a-z])(-.*)?$")
# Modules whose presence makes Ultralytics build the head's non-legacy (depth-wise) class branch.
_NON_LEGACY = frozenset({"C3k2", "A2C2f", "C2fCIB"})
# Top-level YAML keys of architectures segpipe cannot build, with the value each must have here.
_UNSUPPORTED_KEYS = {"activation": (None,)}
_ARCHITECTURES = "YOLOv8-seg, YOLO11-seg and YOLO26-seg"


@dataclass(frozen=True, slots=True)
class LayerRow:
    """One built layer, as printed by ``segpipe info``: ``from`` index/indices, repeats after
    depth scaling, parameter count, module name and the resolved constructor arguments."""

    index: int
    source: int | tuple[int, ...]
    repeats: int
    params: int
    module: str
    args: tuple[Any, ...]


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= ``x``."""
    return int(math.ceil(x / divisor) * divisor)


def resolve_model_cfg(cfg: str | Path | dict[str, Any], scale: str | None = None) -> dict[str, Any]:
    """Load a model YAML (path, bundled name like ``yolov8s-seg.yaml``, or dict) and pick its scale.

    Returns a new dict with ``scale`` set (and ``yaml_file`` for files). Raises ``ModelError`` for
    a missing file or an unknown scale, ``ConfigError`` for a YAML that does not parse.
    """
    if isinstance(cfg, dict):
        d = copy.deepcopy(cfg)
        name = str(d.get("yaml_file", "<model dict>"))
    else:
        path, guessed = _find_cfg(Path(cfg))
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(str(path), f"not valid YAML ({type(e).__name__})") from None
        if not isinstance(d, dict):
            raise ConfigError(str(path), "a model YAML must be a mapping with backbone/head rows")
        d["yaml_file"], name = Path(cfg).name, str(path)
        scale = scale or guessed
    scales = d.get("scales")
    scale = scale or d.get("scale") or None
    if scales:
        if not isinstance(scales, dict):
            raise ConfigError(f"{name}: scales", "must map a scale letter to [depth, width, max_channels]")
        if scale is None:
            scale = next(iter(scales))
            log.warning("%s: no model scale given, using scale '%s'", name, scale)
        if scale not in scales:
            raise ModelError(f"unknown model scale '{scale}' for {name} (known: {', '.join(scales)})")
        row = scales[scale]
        if not (isinstance(row, list | tuple) and len(row) == 3
                and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in row)):
            raise ConfigError(f"{name}: scales.{scale}", f"expected [depth, width, max_channels] > 0, got {row!r}")
    elif scale:
        raise ModelError(f"{name} has no 'scales', so scale '{scale}' cannot be applied")
    d["scale"] = scale
    return d


def _find_cfg(path: Path) -> tuple[Path, str | None]:
    """Return ``(yaml file, scale letter guessed from its name or None)``."""
    candidates = [path] if path.is_file() else []
    if not path.is_absolute() and path.parent == Path("."):
        candidates.append(CFG_DIR / path.name)
    m = _SCALED_NAME.match(path.stem)
    guess = m.group(2) if m else None
    if m:
        unified = path.with_name(f"{m.group(1)}{m.group(3) or ''}{path.suffix}")
        candidates += [unified] if unified.is_file() else []
        if not path.is_absolute() and path.parent == Path("."):
            candidates.append(CFG_DIR / unified.name)
    for cand in candidates:
        if cand.is_file():
            # A file named exactly like the request is taken as is; only the unified name implies a scale.
            return cand, (guess if cand.stem != path.stem else None)
    bundled = ", ".join(sorted(p.name for p in CFG_DIR.glob("*.yaml")))
    raise ModelError(f"model config '{path}' not found (bundled: {bundled}; scales via e.g. yolov8s-seg.yaml)")


class SegmentationModel(nn.Module):
    """YOLOv8-seg / YOLO11-seg / YOLO26-seg. Input float32 ``(N, 3, H, W)`` RGB in [0, 1], H and W multiples
    of 32.

    eval: ``(pred (N, 4 + nc + 32, A), proto (N, 32, H/s, W/s))`` with xywh boxes in input pixels
    (``s = proto_stride``: 4, or 2 for a Segment row with finer prototypes)
    and sigmoid scores; train: :class:`SegTrainOutput`. ``A = H*W/64 + H*W/256 + H*W/1024``.
    """

    # A buffer (registered in __init__), which the torch stubs would type as Tensor | Module.
    stride: Tensor

    def __init__(self, cfg: str | Path | dict[str, Any] = "yolov8n-seg.yaml", *, nc: int | None = None,
                 scale: str | None = None, ch: int = 3) -> None:
        super().__init__()
        d = resolve_model_cfg(cfg, scale)
        if nc is not None:
            if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
                raise ConfigError("nc", f"number of classes must be a positive integer, got {nc!r}")
            d["nc"] = nc
        d["channels"] = ch
        self.yaml: dict[str, Any] = d
        self.model, self.save, self.layers, self.sources = _build(d, ch)
        head = self.model[-1]
        if not isinstance(head, Segment):
            raise ConfigError(f"{d.get('yaml_file', 'model')}: head[-1]", "the last layer must be Segment")
        self.nc: int = head.nc
        self.register_buffer("stride", head.stride.clone(), persistent=False)

    @property
    def head(self) -> Segment:
        return self.model[-1]  # type: ignore[return-value]

    @property
    def proto_stride(self) -> int:
        """Input pixels per prototype pixel: 4 (YOLOv8), or 2."""
        return self.head.proto.stride

    @property
    def end2end(self) -> bool:
        """Whether eval runs the one-to-one (NMS-free) branches: its output is then post-processed by top-k
        selection (``engines.ops.select_rows``), not NMS. Off by default, as in Ultralytics."""
        return self.head.end2end

    @end2end.setter
    def end2end(self, value: bool) -> None:
        if value and not self.head.one2one:
            raise ModelError("this model has no NMS-free (one-to-one) head: only end-to-end models such as "
                             "YOLO26 have one")
        self.head.end2end = bool(value)

    def use_nms_free_head(self, where: str) -> None:
        """Run the one-to-one head from now on (``end2end``); ``ModelError`` naming ``where`` (the file and
        the option that asked) when the model has none."""
        try:
            self.end2end = True
        except ModelError as e:
            raise ModelError(f"{where}: {e}") from None

    def forward(self, x: Tensor) -> SegTrainOutput | tuple[Tensor, Tensor]:
        outs: list[Tensor | None] = []
        y: Any = x
        for i, (m, f) in enumerate(zip(self.model, self.sources, strict=True)):
            if f != -1:
                y = outs[f] if isinstance(f, int) else [y if j == -1 else outs[j] for j in f]
            y = m(y)
            outs.append(y if i in self.save else None)
        return y

    def fuse(self) -> SegmentationModel:
        """Fold every BatchNorm into its conv for inference (in place; returns self)."""
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self

    def is_fused(self) -> bool:
        return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())


def _build(d: dict[str, Any], ch_in: int) -> tuple[nn.Sequential, set[int], list[LayerRow], list[Any]]:
    """YAML dict -> (layers, indices whose outputs later layers read, info rows, 'from' per layer)."""
    name = str(d.get("yaml_file", "model"))
    depth, width, max_ch = (d["scales"][d["scale"]] if d.get("scales") else
                            (d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0), float("inf")))
    rows = _rows(d, name)
    _check_supported(d, name, rows)
    legacy = not any(mname in _NON_LEGACY for _, (_, _, mname, _) in rows)
    reg_max, one2one = d.get("reg_max") or 16, bool(d.get("end2end"))
    ch: list[int] = []
    strides: list[float] = []
    layers, infos, sources = [], [], []
    save: set[int] = set()
    for i, (ypath, (f, n, mname, args)) in enumerate(rows):
        n_ = max(round(n * depth), 1) if n > 1 else n
        idx = _as_list(f)
        ctx = _Ctx(path=ypath, f=f, n=n_, width=width, max_ch=max_ch, nc=d.get("nc"), scale=d.get("scale"),
                   legacy=legacy, reg_max=reg_max, one2one=one2one,
                   c_in=[ch[j] for j in idx] if i else [ch_in], s_in=[strides[j] for j in idx] if i else [1.0])
        try:
            module, c_out, s_out, shown = _BUILDERS[mname](args, ctx)
        except (TypeError, ValueError, IndexError) as e:
            raise ConfigError(ypath, f"bad arguments {args!r} for {mname}: {e}") from None
        params = sum(p.numel() for p in module.parameters())
        layers.append(module)
        sources.append(f if isinstance(f, int) else list(f))
        infos.append(LayerRow(i, f if isinstance(f, int) else tuple(f), n_, params, mname, tuple(shown)))
        save.update(j % i for j in _as_list(f) if j != -1)
        ch.append(c_out)
        strides.append(s_out)
    return nn.Sequential(*layers), save, infos, sources


def _check_supported(d: dict[str, Any], name: str, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Refuse, in one line naming every offending module or key, an architecture segpipe cannot build
    (YOLO26's NMS-free head and 1-bin boxes, YOLOE, RT-DETR, custom activations, ...)."""
    unknown = list(dict.fromkeys(mname for _, (_, _, mname, _) in rows if mname not in _BUILDERS))
    if unknown:
        first = next(ypath for ypath, (_, _, mname, _) in rows if mname in unknown)
        raise ConfigError(first, f"unknown module{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                                 f"(segpipe builds {_ARCHITECTURES}; known: {', '.join(_BUILDERS)})")
    for key, ok in _UNSUPPORTED_KEYS.items():
        if d.get(key) not in ok:
            raise ConfigError(f"{name}: {key}", f"{key}: {d[key]!r} is not supported (segpipe builds {_ARCHITECTURES})")
    reg_max, end2end = d.get("reg_max"), d.get("end2end")
    if reg_max is not None and (isinstance(reg_max, bool) or not isinstance(reg_max, int) or not 1 <= reg_max <= 64):
        raise ConfigError(f"{name}: reg_max", f"expected an integer number of box bins in 1..64, got {reg_max!r}")
    if end2end not in (None, True, False):
        raise ConfigError(f"{name}: end2end", f"expected true or false, got {end2end!r}")


def _rows(d: dict[str, Any], name: str) -> list[tuple[str, tuple[Any, ...]]]:
    out = []
    for part in ("backbone", "head"):
        rows = d.get(part)
        if not isinstance(rows, list) or not rows:
            raise ConfigError(f"{name}: {part}", "missing or empty list of [from, repeats, module, args] rows")
        for k, row in enumerate(rows):
            ypath = f"{name}: {part}[{k}]"
            if not (isinstance(row, list | tuple) and len(row) == 4 and isinstance(row[1], int)
                    and isinstance(row[2], str) and isinstance(row[3], list | tuple)):
                raise ConfigError(ypath, f"expected [from, repeats, module, args], got {row!r}")
            f = row[0]
            if not (isinstance(f, int) or (isinstance(f, list) and f and all(isinstance(j, int) for j in f))):
                raise ConfigError(ypath, f"'from' must be an int or a list of ints, got {f!r}")
            out.append((ypath, (f, row[1], row[2], [_literal(a) for a in row[3]])))
    for i, (ypath, (f, *_)) in enumerate(out):
        # -1 is the previous layer (the image for layer 0); other indices must already be built.
        ok = f == -1 if i == 0 else all(0 <= j < i or -i <= j < 0 for j in _as_list(f))
        if not ok:
            raise ConfigError(ypath, f"'from' {f!r} refers to a layer not built before layer {i}")
    return out


def _literal(a: Any) -> Any:
    """YAML args like ``None``/``True`` arrive as strings in Ultralytics YAMLs; read them as Python
    literals (``ast.literal_eval`` only: no names, no calls). Other strings (``nearest``, ``nc``) stay."""
    if isinstance(a, str):
        try:
            return ast.literal_eval(a)
        except (ValueError, SyntaxError):
            return a
    return a


def _as_list(f: int | list[int]) -> list[int]:
    return [f] if isinstance(f, int) else list(f)


@dataclass(frozen=True, slots=True)
class _Ctx:
    path: str
    f: int | list[int]
    n: int
    width: float
    max_ch: float
    nc: Any
    c_in: list[int]
    s_in: list[float]
    scale: str | None = None
    legacy: bool = True
    reg_max: int = 16
    one2one: bool = False

    def scale_ch(self, c: int) -> int:
        return make_divisible(min(c, self.max_ch) * self.width, 8)

    def one_input(self) -> tuple[int, float]:
        if not isinstance(self.f, int):
            raise ValueError("takes exactly one input ('from' must be an int)")
        return self.c_in[0], self.s_in[0]


_Built = tuple[nn.Module, int, float, list[Any]]


def _repeat(make: Callable[[], nn.Module], n: int) -> nn.Module:
    return nn.Sequential(*(make() for _ in range(n))) if n > 1 else make()


def _conv(args: list[Any], ctx: _Ctx) -> _Built:
    c1, s_in = ctx.one_input()
    c2, k, s = ctx.scale_ch(args[0]), (args[1] if len(args) > 1 else 1), (args[2] if len(args) > 2 else 1)
    m = _repeat(lambda: Conv(c1=c1, c2=c2, k=k, s=s), ctx.n)
    return m, c2, s_in * s, [c1, c2, k, s]


def _c2f(args: list[Any], ctx: _Ctx) -> _Built:
    c1, s_in = ctx.one_input()
    c2, shortcut = ctx.scale_ch(args[0]), bool(args[1]) if len(args) > 1 else False
    return C2f(c1=c1, c2=c2, n=ctx.n, shortcut=shortcut), c2, s_in, [c1, c2, ctx.n, shortcut]


def _c3k2(args: list[Any], ctx: _Ctx) -> _Built:
    # Row args [c2, c3k, e, attn, g, shortcut] as Ultralytics' C3k2(c1, c2, n, c3k, e, attn, g, shortcut).
    c1, s_in = ctx.one_input()
    if len(args) > 6:
        raise ValueError("expected at most [c2, c3k, e, attn, g, shortcut]")
    c3k, e, attn, g, shortcut = (list(args[1:]) + [False, 0.5, False, 1, True][len(args) - 1:])[:5]
    c3k = True if ctx.scale in ("m", "l", "x") else bool(c3k)  # Ultralytics' parse_model does the same
    c2 = ctx.scale_ch(args[0])
    m = C3k2(c1=c1, c2=c2, n=ctx.n, c3k=c3k, e=float(e), attn=bool(attn), g=int(g), shortcut=bool(shortcut))
    return m, c2, s_in, [c1, c2, ctx.n, c3k, e, *([attn] if attn else [])]


def _c2psa(args: list[Any], ctx: _Ctx) -> _Built:
    c1, s_in = ctx.one_input()
    c2, e = ctx.scale_ch(args[0]), (args[1] if len(args) > 1 else 0.5)
    return C2PSA(c1=c1, c2=c2, n=ctx.n, e=float(e)), c2, s_in, [c1, c2, ctx.n]


def _sppf(args: list[Any], ctx: _Ctx) -> _Built:
    # [c2, k] (YOLOv8, YOLO11) or YOLO26's [c2, k, n, shortcut], whose cv1 has no activation (as
    # Ultralytics' parse_model: a row with n or shortcut is a YOLO26 one)
    c1, s_in = ctx.one_input()
    if len(args) > 4:
        raise ValueError("expected [c2, k] or [c2, k, n, shortcut]")
    c2, k, n, shortcut = (list(args) + [None, 5, 3, False][len(args):])[:4]
    c2 = ctx.scale_ch(c2)
    m = SPPF(c1=c1, c2=c2, k=int(k), n=int(n), shortcut=bool(shortcut), act=len(args) <= 2)
    return m, c2, s_in, [c1, c2, k] if len(args) <= 2 else [c1, c2, k, n, shortcut]


def _upsample(args: list[Any], ctx: _Ctx) -> _Built:
    c1, s_in = ctx.one_input()
    size, factor, mode = (list(args) + [None, 2, "nearest"][len(args):])[:3]
    return nn.Upsample(size=size, scale_factor=factor, mode=mode), c1, s_in / factor, [size, factor, mode]


def _concat(args: list[Any], ctx: _Ctx) -> _Built:
    dim = args[0] if args else 1
    if len(set(ctx.s_in)) != 1:
        raise ValueError(f"inputs have different strides {ctx.s_in}")
    return Concat(dim=dim), sum(ctx.c_in), ctx.s_in[0], [dim]


def _head_args(args: list[Any], ctx: _Ctx) -> tuple[int, int, int]:
    """A Segment or Segment26 row's ``[nc, nm, npr]``: classes ("nc": the YAML's), mask coefficients and
    prototype channels (scaled by width)."""
    nc = ctx.nc if args[0] == "nc" else args[0]
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
        raise ValueError(f"nc must be a positive integer, got {nc!r}")
    return nc, (args[1] if len(args) > 1 else 32), ctx.scale_ch(args[2] if len(args) > 2 else 256)


def _segment(args: list[Any], ctx: _Ctx) -> _Built:
    nc, nm, npr = _head_args(args, ctx)
    proto_stride = args[3] if len(args) > 3 else 4  # segpipe's 4th argument: 2 for finer prototypes (Proto checks)
    # Inputs finer than the first (P3) are segpipe's prototype skips: detection never sees them.
    n_det = next((k for k, s in enumerate(ctx.s_in) if s < ctx.s_in[0]), len(ctx.s_in))
    ch, strides = tuple(ctx.c_in[:n_det]), tuple(ctx.s_in[:n_det])
    skips = tuple((int(s), c) for s, c in zip(ctx.s_in[n_det:], ctx.c_in[n_det:], strict=True))
    m = Segment(nc=nc, ch=ch, strides=strides, nm=nm, npr=npr, proto_stride=proto_stride, skips=skips,
                legacy=ctx.legacy, reg_max=ctx.reg_max, one2one=ctx.one2one)
    shown = [nc, nm, npr, list(ch)] if proto_stride == 4 and not skips else [nc, nm, npr, proto_stride, list(ch)]
    return m, nc, max(strides), shown


def _segment26(args: list[Any], ctx: _Ctx) -> _Built:
    if len(args) > 3:
        raise ValueError("expected [nc, nm, npr]")
    nc, nm, npr = _head_args(args, ctx)
    ch, strides = tuple(ctx.c_in), tuple(ctx.s_in)
    m = Segment(nc=nc, ch=ch, strides=strides, nm=nm, npr=npr, legacy=ctx.legacy, reg_max=ctx.reg_max,
                one2one=ctx.one2one, proto26=True)
    return m, nc, max(strides), [nc, nm, npr, list(ch)]


# Registry of YAML module names; names are Ultralytics' so its YAMLs and checkpoints read unchanged.
_BUILDERS: dict[str, Callable[[list[Any], _Ctx], _Built]] = {
    "Conv": _conv,
    "C2f": _c2f,
    "C3k2": _c3k2,
    "SPPF": _sppf,
    "C2PSA": _c2psa,
    "nn.Upsample": _upsample,
    "Concat": _concat,
    "Segment": _segment,
    "Segment26": _segment26,
}
