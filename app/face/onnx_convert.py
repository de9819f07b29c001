"""Convert dlib_face_recognition_resnet_model_v1.dat into an equivalent ONNX model.

The .dat file is read with numpy alone; the ONNX graph is written with the ``onnx``
package's helpers. The result computes the same 128-d embedding as dlib's
``face_recognition_model_v1`` (parity tested to 1e-4 on real face chips).

dlib's serialisation, as found in dlib 20.0.1's source (dlib/serialize.h,
dlib/cuda/tensor.h, dlib/dnn/{core,layers,input,loss}.h) and in the file itself
--------------------------------------------------------------------------------------

Scalars
    - Integers are compact: one header byte, then that many little-endian magnitude
      bytes. Header bits 0-3: byte count (1..8); bit 7: negative (signed types only).
    - Floating point numbers (``float``/``double`` fields) are two such integers: an int64
      mantissa and an int16 exponent, value = mantissa * 2**exponent (exponent 32000..32002
      encode +inf, -inf, NaN).
    - ``bool`` is one ASCII byte, '0' or '1'.
    - ``std::string`` is a compact unsigned length, then the bytes.

Tensors
    - ``resizable_tensor``: int version (2), then num_samples, k, nr, nc (compact ints),
      then num_samples*k*nr*nc raw little-endian IEEE float32 (no compact encoding).
    - ``alias_tensor`` (a view into a layer's ``params`` tensor): int version (1), then
      its four dimensions only. A layer's aliases lie one after another in ``params``.

Network records
    The network object is a nest of templates, serialised from the outside in:

    - ``add_loss_layer``: int version 1, the loss details, then the subnetwork.
    - ``add_layer`` (generic, version 2): int version, **the subnetwork**, then the layer
      details, three bools (setup called, gradient stale, output disabled) and three
      tensors (x_grad, cached_output, params_grad).
    - ``add_layer`` on the input layer (version 3): int version, the input layer, the
      layer details, the three bools, three tensors (x_grad, cached_output, grad_final)
      and an unsigned int (sample expansion factor).
    - ``add_tag_layer`` (tagN) and ``add_skip_layer`` (skipN): int version 1, then the
      subnetwork. Nothing names which of the two a record is, so the reader must follow
      the network's type: :data:`ARCHITECTURE` spells it out.

    Because a layer's subnetwork is written before its details, the file holds every
    layer's version first (outermost to innermost), then the input layer, then the
    details from the innermost layer back out.

Layer details (each starts with a version string)
    - ``input_rgb_image_sized``: avg_red, avg_green, avg_blue (floats), nr, nc. The input
      tensor is planar R, G, B with value (pixel - avg) / 256.
    - ``con_4``: params tensor, num_filters, nr, nc, stride_y, stride_x, padding_y,
      padding_x, filters alias (num_filters, k, nr, nc), biases alias (1, num_filters),
      four learning-rate/decay multipliers (floats). Output size per dimension:
      1 + (in + 2*padding - kernel) // stride (cross-correlation, as ONNX Conv).
    - ``affine_``: params tensor, gamma alias, beta alias, int mode. Per channel:
      gamma * x + beta. Every affine here follows a con, so it is folded into it.
    - ``relu_``: nothing more.
    - ``max_pool_2`` / ``avg_pool_2``: nr, nc, stride_y, stride_x, padding_y, padding_x;
      output size 1 + (in + 2*padding - window) // stride (floor, as ONNX's default).
      nr = nc = 0 is ``avg_pool_everything``: the mean over the whole map.
    - ``add_prev_``: nothing more. Adds the tagged tensor to the input; where the two
      differ in channels or size the output takes the larger of each dimension and the
      missing values count as zero (dlib/cuda/cpu_dlib.cpp ``add``). In this network that
      happens in every down-sampling block: 32 -> 64 channels, and 8x8 -> 3x3 (conv) vs
      4x4 (pool) at the 256-channel stage.
    - ``fc_2``: num_outputs, num_inputs, params tensor, weights alias (num_inputs,
      num_outputs), biases alias, int bias mode, four multipliers. output = x @ weights.
    - ``loss_metric_2``: margin, dist_thresh (floats). The embedding is the fc output as
      is (no normalisation).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The network type of dlib's face recognition model, from dlib's
# tools/python/src/face_recognition.cpp (anet_type), outermost first:
#   ares<N>      = relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
#   ares_down<N> = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
#   block<N,BN,stride> = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
#   anet = loss_metric<fc_no_bias<128,avg_pool_everything<alevel0<alevel1<alevel2<alevel3<
#          alevel4<max_pool<3,3,2,2,relu<affine<con<32,7,7,2,2,input_rgb_image_sized<150>>>>>>>>>>>>
_BLOCK = ["affine", "con", "relu", "affine", "con"]
_ARES = ["relu", "add_prev1", *_BLOCK, "tag1"]
_ARES_DOWN = ["relu", "add_prev2", "avg_pool", "skip1", "tag2", *_BLOCK, "tag1"]
ARCHITECTURE: list[str] = [
    "fc",
    "avg_pool",  # avg_pool_everything
    *_ARES_DOWN,  # alevel0: 256
    *_ARES,
    *_ARES,
    *_ARES_DOWN,  # alevel1: 256
    *_ARES,
    *_ARES,
    *_ARES_DOWN,  # alevel2: 128
    *_ARES,
    *_ARES,
    *_ARES,
    *_ARES_DOWN,  # alevel3: 64
    *_ARES,
    *_ARES,
    *_ARES,  # alevel4: 32
    "max_pool",
    "relu",
    "affine",
    "con",  # on the input layer
]

ONNX_OPSET = 17
# Bump when the produced graph changes, so cached conversions are redone.
CONVERTER_VERSION = 1


class DlibFormatError(ValueError):
    """The file is not the dlib network this converter knows."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"unexpected end of file at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int_(self) -> int:
        header = self._take(1)[0]
        size = header & 0x0F
        if not 1 <= size <= 8:
            raise DlibFormatError(f"bad integer header {header:#x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if header & 0x80 else value

    def float_(self) -> float:
        mantissa, exponent = self.int_(), self.int_()
        if exponent >= 32000:
            return [float("inf"), float("-inf"), float("nan")][exponent - 32000]
        return float(mantissa) * 2.0**exponent

    def bool_(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool {ch!r} at byte {self.pos - 1}")
        return ch == b"1"

    def string(self) -> str:
        return self._take(self.int_()).decode("ascii")

    def expect(self, *versions: str) -> str:
        start = self.pos
        found = self.string()
        if found not in versions:
            raise DlibFormatError(
                f"expected {' or '.join(versions)} at byte {start}, found {found!r}"
            )
        return found

    def version(self, *allowed: int) -> int:
        start = self.pos
        found = self.int_()
        if found not in allowed:
            raise DlibFormatError(f"expected version {allowed} at byte {start}, found {found}")
        return found

    def tensor(self) -> np.ndarray:
        self.version(2)
        shape = tuple(self.int_() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count), dtype="<f4").reshape(shape).copy()

    def alias(self) -> tuple[int, int, int, int]:
        self.version(1)
        n, k, nr, nc = (self.int_() for _ in range(4))
        return (n, k, nr, nc)


@dataclass
class Layer:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def _split(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    flat = params.reshape(-1)
    out, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[offset : offset + size].reshape(shape))
        offset += size
    if offset != flat.size:
        raise DlibFormatError(f"params hold {flat.size} floats, aliases cover {offset}")
    return out


def _details(r: _Reader, kind: str) -> Layer:
    if kind == "con":
        r.expect("con_4", "con_5", "con_6")
        params = r.tensor()
        num_filters, nr, nc = r.int_(), r.int_(), r.int_()
        stride = (r.int_(), r.int_())
        padding = (r.int_(), r.int_())
        filters_shape, bias_shape = r.alias(), r.alias()
        for _ in range(4):
            r.float_()
        weights, bias = _split(params, filters_shape, bias_shape)
        if weights.shape[0] != num_filters or weights.shape[2:] != (nr, nc):
            raise DlibFormatError("con filter shape does not match its header")
        return Layer(
            "con", {"w": weights, "b": bias.reshape(-1), "stride": stride, "padding": padding}
        )
    if kind == "affine":
        r.expect("affine_")
        params = r.tensor()
        gamma_shape, beta_shape = r.alias(), r.alias()
        mode = r.int_()
        gamma, beta = _split(params, gamma_shape, beta_shape)
        return Layer("affine", {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1), "mode": mode})
    if kind == "relu":
        r.expect("relu_")
        return Layer("relu")
    if kind in ("max_pool", "avg_pool"):
        r.expect(f"{kind}_2")
        window = (r.int_(), r.int_())
        stride = (r.int_(), r.int_())
        padding = (r.int_(), r.int_())
        return Layer(kind, {"window": window, "stride": stride, "padding": padding})
    if kind.startswith("add_prev"):
        r.expect("add_prev_")
        return Layer(kind)
    if kind == "fc":
        r.expect("fc_2")
        num_outputs, num_inputs = r.int_(), r.int_()
        params = r.tensor()
        w_shape, _bias_shape = r.alias(), r.alias()
        bias_mode = r.int_()
        for _ in range(4):
            r.float_()
        if bias_mode != 1:  # FC_NO_BIAS: the model uses fc_no_bias
            raise DlibFormatError("expected an fc layer without bias")
        # fc_no_bias: params hold only the weights (the bias alias covers nothing).
        weights = params.reshape(-1)[: int(np.prod(w_shape))]
        if weights.size != num_inputs * num_outputs or params.size != weights.size:
            raise DlibFormatError("fc params do not match its header")
        return Layer("fc", {"w": weights.reshape(num_inputs, num_outputs)})
    raise AssertionError(kind)


def _layer_trailer(r: _Reader, *, bottom: bool) -> None:
    for _ in range(3):
        r.bool_()
    for _ in range(3):
        r.tensor()
    if bottom:
        r.int_()  # sample expansion factor


def read_dlib_resnet(data: bytes) -> tuple[dict[str, float], list[Layer]]:
    """Parse the .dat bytes into the input normalisation and the layers, innermost
    (next to the input) first."""
    r = _Reader(data)
    r.version(1)  # add_loss_layer
    loss = r.expect("loss_metric_", "loss_metric_2")
    if loss == "loss_metric_2":
        r.float_(), r.float_()  # margin, dist_thresh: training only
    for i, kind in enumerate(ARCHITECTURE):
        if kind.startswith(("tag", "skip")):
            r.version(1)
        else:
            r.version(3 if i == len(ARCHITECTURE) - 1 else 2)
    r.expect("input_rgb_image_sized")
    mean = {"r": r.float_(), "g": r.float_(), "b": r.float_()}
    size = (r.int_(), r.int_())
    if size != (150, 150):
        raise DlibFormatError(f"expected a 150x150 input, found {size}")
    layers = [_details(r, "con")]
    _layer_trailer(r, bottom=True)
    for kind in reversed(ARCHITECTURE[:-1]):
        if kind.startswith(("tag", "skip")):
            layers.append(Layer(kind))
            continue
        layers.append(_details(r, kind))
        _layer_trailer(r, bottom=False)
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} bytes left after the network")
    return mean, layers


class _Graph:
    """The ONNX nodes and initializers of the graph being built, named in order."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._counter = 0
        # (channels, rows, cols) of the current output, tracked for add_prev's padding
        self.shape: tuple[int, ...] = (3, 150, 150)
        self.tags: dict[str, tuple[str, tuple[int, ...]]] = {}

    def name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        n = self.name(prefix)
        self.inits.append(self._numpy_helper.from_array(np.ascontiguousarray(array), n))
        return n

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(self._helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, p: dict[str, Any], affine: Layer | None) -> str:
        w, b = p["w"].astype(np.float64), p["b"].astype(np.float64)
        if affine is not None:
            # Fold the following per-channel affine: g*(conv(x)+b)+beta.
            gamma, beta = affine.params["gamma"], affine.params["beta"]
            w = w * gamma[:, None, None, None]
            b = b * gamma + beta
        (py, px), (sy, sx) = p["padding"], p["stride"]
        x = self.node(
            "Conv",
            [x, self.const(w.astype(np.float32), "w"), self.const(b.astype(np.float32), "b")],
            kernel_shape=list(w.shape[2:]),
            strides=[sy, sx],
            pads=[py, px, py, px],
        )
        kh, kw = w.shape[2:]
        self.shape = (
            w.shape[0],
            1 + (self.shape[1] + 2 * py - kh) // sy,
            1 + (self.shape[2] + 2 * px - kw) // sx,
        )
        return x

    def pool(self, x: str, kind: str, p: dict[str, Any]) -> str:
        (wy, wx), (sy, sx), (py, px) = p["window"], p["stride"], p["padding"]
        if (wy, wx) == (0, 0):
            self.shape = (self.shape[0], 1, 1)
            return self.node("GlobalAveragePool", [x])
        op = "MaxPool" if kind == "max_pool" else "AveragePool"
        x = self.node(op, [x], kernel_shape=[wy, wx], strides=[sy, sx], pads=[py, px, py, px])
        self.shape = (
            self.shape[0],
            1 + (self.shape[1] + 2 * py - wy) // sy,
            1 + (self.shape[2] + 2 * px - wx) // sx,
        )
        return x

    def add_prev(self, x: str, tag: str) -> str:
        other, other_shape = self.tags[tag]
        out_shape = tuple(max(a, b) for a, b in zip(self.shape, other_shape, strict=True))
        x = self.node(
            "Add",
            [
                _pad_to(x, self.shape, out_shape, self.node, self.const),
                _pad_to(other, other_shape, out_shape, self.node, self.const),
            ],
        )
        self.shape = out_shape
        return x

    def layer(self, x: str, layer: Layer, affine: Layer | None) -> str:
        """``x`` through one dlib layer (``affine``: the one following a con, folded)."""
        kind, p = layer.kind, layer.params
        if kind == "con":
            return self.conv(x, p, affine)
        if kind == "affine":
            raise DlibFormatError("an affine layer that does not follow a con layer")
        if kind == "relu":
            return self.node("Relu", [x])
        if kind in ("max_pool", "avg_pool"):
            return self.pool(x, kind, p)
        if kind.startswith("tag"):
            self.tags[kind[3:]] = (x, self.shape)
            return x
        if kind.startswith("skip"):
            x, self.shape = self.tags[kind[4:]]
            return x
        if kind.startswith("add_prev"):
            return self.add_prev(x, kind[8:])
        if kind == "fc":
            x = self.node("Flatten", [x], axis=1)
            return self.node("MatMul", [x, self.const(p["w"].astype(np.float32), "fc")])
        raise AssertionError(kind)


def build_onnx(mean: dict[str, float], layers: list[Layer]) -> Any:
    """An ONNX graph: input ``chips`` (N, 150, 150, 3) uint8 RGB, output ``embeddings``
    (N, 128) float32."""
    from onnx import TensorProto, helper

    g = _Graph()
    # Input normalisation (input_rgb_image_sized): (pixel - avg) / 256, planar RGB.
    x = g.node("Cast", ["chips"], to=TensorProto.FLOAT)
    avg = np.array([mean["r"], mean["g"], mean["b"]], dtype=np.float32)
    x = g.node("Sub", [x, g.const(avg, "avg")])
    x = g.node("Mul", [x, g.const(np.array(1.0 / 256.0, dtype=np.float32), "scale")])
    x = g.node("Transpose", [x], perm=[0, 3, 1, 2])
    i = 0
    while i < len(layers):
        follows = layers[i + 1] if i + 1 < len(layers) else None
        affine = (
            follows if layers[i].kind == "con" and follows and follows.kind == "affine" else None
        )
        x = g.layer(x, layers[i], affine)
        i += 2 if affine is not None else 1
    g.nodes[-1].output[0] = "embeddings"
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["N", 150, 150, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 128])],
        g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="faceverify",
        producer_version=str(CONVERTER_VERSION),
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    return model


def _pad_to(x: str, shape: tuple[int, ...], target: tuple[int, ...], node: Any, const: Any) -> str:
    """Zero-pad (C, H, W) at the end of each dimension up to ``target`` (dlib's add)."""
    if shape == target:
        return x
    begin = [0, 0, 0, 0]
    end = [0] + [t - s for s, t in zip(shape, target, strict=True)]
    pads = const(np.array(begin + end, dtype=np.int64), "pads")
    return str(node("Pad", [x, pads], mode="constant"))


def convert(dat_path: Path, onnx_path: Path) -> str:
    """Convert ``dat_path`` and write ``onnx_path``; returns the ONNX file's sha256.

    The output is deterministic: the same .dat gives the same bytes.
    """
    import onnx

    mean, layers = read_dlib_resnet(dat_path.read_bytes())
    model = build_onnx(mean, layers)
    onnx.checker.check_model(model)
    data = model.SerializeToString(deterministic=True)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # A name of this process's own, so workers converting at once do not collide.
    tmp = onnx_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(onnx_path)
    return hashlib.sha256(data).hexdigest()
