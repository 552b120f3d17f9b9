"""PyTorch model to a Relax ``IRModule`` (directly via ``torch.export`` or through ONNX),
and building and running with the Relax VM.

Two TVM 0.27 importer defects are worked around here, through the hooks the importers
offer (a custom converter map for ``from_exported_program``; a rewrite of the ONNX graph
before ``from_onnx``, which has no such hook):

- ``clamp`` of an integer tensor with one bound becomes ``R.clip(x, -inf, 15)``, which
  fails to legalize ("Cannot convert infinity to BigInt"). PyTorch's decomposition of
  ``F.interpolate(mode="linear")`` (the positional embeddings) produces exactly that.
- A bilinear resize given by a scale factor (``F.interpolate(scale_factor=0.5)`` in the
  Tiny model's AAM, ONNX ``Resize`` with ``scales``) is imported as a resize to
  ``floor(in * scale)`` pixels, whose sampling step is ``in / out`` instead of PyTorch's
  and ONNX's ``1 / scale``. The two differ when ``in * scale`` is not an integer (45 rows
  at 360x480 input), by about 1e-2 in the logits. Cropping the input to ``out / scale``
  rows first makes the steps equal, and the crop drops only rows that are never read.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import tvm
from onnx import helper, numpy_helper
from torch import fx
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx as _relax_from_onnx
from tvm.relax.frontend.torch import from_exported_program
from tvm.relax.frontend.torch.base_fx_graph_translator import BaseFXGraphImporter

from pipeline.common.files import atomic_path

InputShape = tuple[int, int, int, int]

# The dynamo exporter writes opset 18 natively; asking for 17 makes it try (and fail)
# a down-conversion of ReduceMean.
ONNX_OPSET = 18
ONNX_INPUT = "x"
ONNX_OUTPUT = "logits"


def _example(*input_shapes: InputShape) -> tuple[torch.Tensor, ...]:
    return tuple(torch.zeros(s, dtype=torch.float32) for s in input_shapes)


# ---------------------------------------------------------------- scale-factor resizes

def _scaled_resize_crop(in_sizes: Sequence[int], scales: Sequence[float]) -> list[int] | None:
    """Input extents that make a resize to ``floor(in * scale)`` sample with step
    ``1 / scale`` (TVM samples with ``in / out``). ``None`` when no crop can do that."""
    crop = []
    for n, s in zip(in_sizes, scales, strict=True):
        out = math.floor(n * s)
        if out < 1:
            return None
        extent = round(out / s)
        # extent < n only happens for s < 1; the last source coordinate is then
        # extent - 0.5/s - 0.5 <= extent - 1, so the cropped rows were never read.
        if extent > n or not math.isclose(out / s, extent, rel_tol=1e-6):
            return None
        crop.append(extent)
    return crop


def _warn_inexact(where: str, in_sizes: Sequence[int], scales: Sequence[float]) -> None:
    warnings.warn(f"{where}: bilinear resize of {list(in_sizes)} by {list(scales)} cannot be made exact; "
                  "TVM samples with step in/out instead of 1/scale", stacklevel=3)


# ---------------------------------------------------------------- torch.export frontend

def _bound(node: fx.Node, index: int, name: str) -> object:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _convert_clamp(node: fx.Node, importer: BaseFXGraphImporter) -> relax.Var:
    """``clamp``: integer tensors get finite ``maximum``/``minimum`` instead of an
    infinite clip bound; everything else goes to the importer's own converter."""
    x = importer.env[node.args[0]]
    lo, hi = _bound(node, 1, "min"), _bound(node, 2, "max")
    dtype = str(x.ty.dtype)
    if not dtype.startswith(("int", "uint")) or not all(b is None or isinstance(b, int) for b in (lo, hi)):
        return importer._clamp(node)
    bb = importer.block_builder
    if lo is not None:
        x = bb.emit(relax.op.maximum(x, relax.const(lo, dtype)))
    if hi is not None:
        x = bb.emit(relax.op.minimum(x, relax.const(hi, dtype)))
    return x


def _convert_upsample_bilinear2d(node: fx.Node, importer: BaseFXGraphImporter) -> relax.Var:
    """``upsample_bilinear2d.vec(x, size, align_corners, scale_factors)`` with PyTorch's
    sampling step ``1 / scale`` when only scale factors are given."""
    x = importer.env[node.args[0]]
    size, align_corners = _bound(node, 1, "output_size"), _bound(node, 2, "align_corners")
    scales = _bound(node, 3, "scale_factors")
    bb = importer.block_builder
    if size is None:
        in_hw = [int(d) for d in importer.shape_of(x).values[2:]]
        scales = list(scales) * 2 if len(scales) == 1 else list(scales)
        size = [math.floor(n * s) for n, s in zip(in_hw, scales, strict=True)]
        if not align_corners:  # align_corners=True ignores the scale in PyTorch too
            crop = _scaled_resize_crop(in_hw, scales)
            if crop is None:
                _warn_inexact(str(node), in_hw, scales)
            elif crop != in_hw:
                x = bb.emit(relax.op.strided_slice(x, axes=[2, 3], begin=[0, 0], end=crop))
    mode = "align_corners" if align_corners else "half_pixel"
    return bb.emit(relax.op.image.resize2d(x, [int(s) for s in size], layout="NCHW", method="linear",
                                           coordinate_transformation_mode=mode))


TORCH_CONVERTERS = {
    "clamp.default": _convert_clamp,
    "upsample_bilinear2d.vec": _convert_upsample_bilinear2d,
}


def from_torch(model: torch.nn.Module, *input_shapes: InputShape) -> tvm.IRModule:
    """``torch.export`` at static shapes (one per input), then Relax; weights become constants
    of ``main`` (``keep_params_as_input=False``) so the built library needs no parameter files."""
    with torch.no_grad(), warnings.catch_warnings():
        # torch.export's own deprecation chatter, also raised when TVM's importer copies the program
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.export.export(model.eval(), _example(*input_shapes))
        return from_exported_program(program, keep_params_as_input=False, custom_convert_map=TORCH_CONVERTERS)


# ---------------------------------------------------------------- ONNX frontend

def export_onnx(model: torch.nn.Module, input_shape: InputShape, path: str | Path,
                opset: int = ONNX_OPSET) -> Path:
    """One self-contained ``.onnx`` file (weights inside) with a static input shape,
    from torch's dynamo exporter (which also folds the positional-embedding resizes)."""
    path = Path(path)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    # The exporter's notes that torchvision's ops are not registered (it is not installed) and
    # torch's deprecation chatter: nothing a user of this export can act on.
    exporter_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(model.eval(), _example(input_shape), dynamo=True, opset_version=opset,
                                        input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT], verbose=False)
    finally:
        exporter_log.setLevel(level)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
    return path


def _onnx_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return consts


def _onnx_static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for info in [*graph.input, *graph.value_info]:
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [d.dim_value for d in dims]
    return shapes


def crop_scaled_resizes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Put a ``Slice`` before every linear half-pixel ``Resize`` given by ``scales`` whose
    output size is not ``in * scale`` exactly, so that TVM's ``in / out`` step equals
    ONNX's ``1 / scale``. Edits ``model`` in place; it means the same to any ONNX runtime."""
    graph = model.graph
    consts, shapes = _onnx_constants(graph), _onnx_static_shapes(model)
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs = list(node.input) + [""] * (4 - len(node.input))
        if (node.op_type == "Resize" and attrs.get("mode") == b"linear"
                and attrs.get("coordinate_transformation_mode", b"half_pixel") == b"half_pixel"
                and inputs[2] in consts and not inputs[3] and inputs[0] in shapes):
            in_shape, scales = shapes[inputs[0]], consts[inputs[2]].tolist()
            crop = _scaled_resize_crop(in_shape, scales)
            if crop is None:
                _warn_inexact(node.name, in_shape, scales)
            elif crop != in_shape:
                name = f"{node.name or node.output[0]}_crop"
                ends = numpy_helper.from_array(np.array(crop, np.int64), f"{name}_ends")
                starts = numpy_helper.from_array(np.zeros(len(crop), np.int64), f"{name}_starts")
                graph.initializer.extend([starts, ends])
                nodes.append(helper.make_node("Slice", [inputs[0], starts.name, ends.name], [name], name=name))
                node.input[0] = name
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def from_onnx(path: str | Path, input_shape: InputShape) -> tvm.IRModule:
    """An ONNX file to Relax, initializers bound as constants (``keep_params_in_input=False``)."""
    model = onnx.load(str(path))
    names = [i.name for i in model.graph.input]
    if len(names) != 1:
        raise ValueError(f"{path}: expected one graph input, got {names}")
    model = crop_scaled_resizes(model)
    return _relax_from_onnx(model, shape_dict={names[0]: list(input_shape)}, dtype_dict="float32",
                            keep_params_in_input=False)


# ---------------------------------------------------------------- build, run

def build(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    """The default Relax pipeline (legalize, fuse, default schedules, VM codegen)."""
    return tvm.compile(mod, target=target)


def run(executable: tvm.runtime.Executable | tvm.runtime.Module, x: np.ndarray,
        device: tvm.runtime.Device | None = None) -> np.ndarray:
    """Run ``main`` once on ``x`` with the Relax VM and return its single output."""
    dev = device if device is not None else tvm.cpu(0)
    vm = relax.VirtualMachine(executable, dev)
    out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), dev))
    # from_exported_program returns a 1-tuple, from_onnx the tensor itself.
    if isinstance(out, tvm.runtime.Tensor):
        return out.numpy()
    if len(out) != 1:
        raise ValueError(f"expected one output, got {len(out)}")
    return out[0].numpy()
