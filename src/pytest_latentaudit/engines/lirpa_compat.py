"""Lazy, version-gated import of auto_LiRPA.

auto_LiRPA 0.3 (the only release on PyPI) was written for torch < 1.13 and numpy 1.x.
On current stacks it fails to import; :func:`import_auto_lirpa` applies the smallest set
of patches that makes it work, each one only when the installed versions need it.
auto_LiRPA >= 0.6 (installed from source) needs none of them and gets none.

auto_LiRPA also changes process-wide state when imported (warning filters, the root
logger, the recursion limit, TorchScript executor flags); a pytest plugin must not
leave such footprints, so they are snapshotted and restored around the import.

Nothing here imports torch, numpy or auto_LiRPA at module import time: collecting a
test suite that never asks for bounds must not pay for (or require) them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import threading
import types
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Tuple

__all__ = ["import_auto_lirpa", "applied_patches", "auto_lirpa_version", "INSTALL_HINT"]

INSTALL_HINT = (
    "auto_LiRPA is not installed; install with `pip install --no-deps auto_LiRPA==0.3` "
    "(its metadata pins torch<1.13, hence --no-deps; pytest-latentaudit patches it for "
    "torch 2.x) plus its runtime needs `pip install packaging appdirs pyyaml`, "
    "or install auto_LiRPA >= 0.6 from source (https://github.com/Verified-Intelligence/auto_LiRPA)."
)

# Releases from this version on import cleanly on torch 2.x / numpy 2.x.
_FIRST_CLEAN_VERSION = (0, 6)

_lock = threading.Lock()
_module: Optional[types.ModuleType] = None
_applied: List[str] = []


def applied_patches() -> Tuple[str, ...]:
    """Names of the compatibility patches applied by :func:`import_auto_lirpa` (for
    diagnostics and spec-sheet provenance). Empty before the first import."""
    return tuple(_applied)


def auto_lirpa_version() -> Optional[str]:
    """Installed auto_LiRPA distribution version, without importing it (None if absent)."""
    for dist in ("auto_LiRPA", "auto-LiRPA", "auto_lirpa"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _version_tuple(version: str) -> Tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())  # "0rc1" -> 0, "6dev" -> 6
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def import_auto_lirpa() -> types.ModuleType:
    """Import and return the ``auto_LiRPA`` module (cached after the first call).

    Raises ImportError with installation instructions when auto_LiRPA is missing.
    """
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            _module = _import_uncached()
    return _module


def _import_uncached() -> types.ModuleType:
    version = auto_lirpa_version()
    # Without metadata (a bare source checkout on sys.path) fall back to per-patch
    # feature detection; every patch is a no-op where the feature already exists.
    legacy = version is None or _version_tuple(version) < _FIRST_CLEAN_VERSION

    mod = sys.modules.get("auto_LiRPA")
    if mod is None:  # not imported yet (or blocked with sys.modules[...] = None)
        if "auto_LiRPA" in sys.modules or importlib.util.find_spec("auto_LiRPA") is None:
            raise ImportError(INSTALL_HINT)
        # torch first, outside the snapshot: its own import-time warning filters stay.
        import torch

        with _preserve_global_state(), _import_time_patches(legacy):
            try:
                mod = importlib.import_module("auto_LiRPA")
            except ImportError as exc:
                raise ImportError(
                    f"auto_LiRPA {version or '(unknown version)'} failed to import on "
                    f"torch {torch.__version__}: {exc}. pytest-latentaudit patches "
                    "auto_LiRPA 0.3 for torch 2.x; for other combinations install "
                    "auto_LiRPA >= 0.6 from source."
                ) from exc
    if legacy:
        _ensure_node_getitem()
        _patch_named_members(mod)
        _patch_conv_transpose_matrix_mode(mod)
        _patch_s_shaped_alpha_matrix_mode(mod)
    return mod


# --------------------------------------------------------------------------------------
# Patches


@contextmanager
def _import_time_patches(legacy: bool) -> Iterator[None]:
    """Patches that 0.3 only needs while its modules execute their top-level imports.

    They are removed again afterwards: auto_LiRPA has bound the names it needed, and
    nobody else should see e.g. a fake ``numpy.lib.arraysetops`` or ``tqdm``.
    """
    undo: List[Callable[[], None]] = []
    try:
        if legacy:
            for patch in (_patch_arraysetops, _patch_set_opset_version, _patch_tqdm):
                restore = patch()
                if restore is not None:
                    undo.append(restore)
        yield
    finally:
        for restore in reversed(undo):
            restore()


def _temporary_module(name: str, module: types.ModuleType) -> Callable[[], None]:
    sys.modules[name] = module

    def restore() -> None:
        if sys.modules.get(name) is module:
            del sys.modules[name]

    return restore


def _patch_arraysetops() -> Optional[Callable[[], None]]:
    # 0.3's operators/base.py does `from numpy.lib.arraysetops import isin`; numpy 2.0
    # made that module private (numpy.lib._arraysetops_impl). The functions themselves
    # are still public at numpy top level.
    if importlib.util.find_spec("numpy.lib.arraysetops") is not None:
        return None
    import numpy as np

    alias = types.ModuleType("numpy.lib.arraysetops", "pytest-latentaudit alias for numpy>=2")
    for name in ("ediff1d", "in1d", "intersect1d", "isin", "setdiff1d", "setxor1d", "union1d", "unique"):
        if hasattr(np, name):  # in1d is gone in numpy 2.4
            setattr(alias, name, getattr(np, name))
    _applied.append("numpy.lib.arraysetops alias (numpy>=2 made it private)")
    return _temporary_module("numpy.lib.arraysetops", alias)


def _patch_set_opset_version() -> Optional[Callable[[], None]]:
    # 0.3's parse_graph.py imports torch.onnx.symbolic_helper._set_opset_version and
    # calls it with 12 before running the TorchScript->ONNX graph pass, so the graph
    # uses opset-12 ops its operator table knows. torch 2.x moved the exporter to
    # torch.onnx._internal.torchscript_exporter and dropped the deprecated helper; what
    # it did since torch 1.13 was exactly `GLOBALS.export_onnx_opset_version = v`.
    import torch.onnx.symbolic_helper as symbolic_helper

    if hasattr(symbolic_helper, "_set_opset_version"):
        return None
    globals_obj = None
    for path in ("torch.onnx._internal.torchscript_exporter._globals", "torch.onnx._globals"):
        try:
            globals_obj = importlib.import_module(path).GLOBALS
            break
        except (ImportError, AttributeError):
            continue
    if globals_obj is None:
        return None  # unknown torch layout: let the import fail with torch's own message

    def _set_opset_version(opset_version: int) -> None:
        globals_obj.export_onnx_opset_version = opset_version

    symbolic_helper._set_opset_version = _set_opset_version
    _applied.append("torch.onnx.symbolic_helper._set_opset_version shim (deprecated in torch 1.13, since removed)")

    def restore() -> None:
        if getattr(symbolic_helper, "_set_opset_version", None) is _set_opset_version:
            del symbolic_helper._set_opset_version

    return restore


def _patch_tqdm() -> Optional[Callable[[], None]]:
    # 0.3's backward_bound.py imports tqdm but does not declare it; it only wraps the
    # loop of `crown_batch_size` batching (off by default) in a progress bar.
    if importlib.util.find_spec("tqdm") is not None:
        return None
    stub = types.ModuleType("tqdm", "pytest-latentaudit stand-in: no progress bar")
    stub.tqdm = lambda iterable=None, *args, **kwargs: iterable  # type: ignore[attr-defined]
    _applied.append("tqdm stand-in (undeclared dependency of auto_LiRPA 0.3)")
    return _temporary_module("tqdm", stub)


# Attribute kinds of TorchScript graph nodes (torch/csrc/jit/ir/attributes.h); each has
# an accessor method of the same name on torch._C.Node.
_NODE_ATTR_KINDS = frozenset(
    {"f", "fs", "c", "cs", "i", "is", "s", "ss", "t", "ts", "g", "gs", "ty", "tys", "ival", "z", "zs"}
)


def _node_getitem(node: Any, name: str) -> Any:
    """``node[name]``: the attribute ``name`` with the accessor matching its kind."""
    if not node.hasAttribute(name):
        raise KeyError(name)
    kind = node.kindOf(name)
    if kind not in _NODE_ATTR_KINDS or not hasattr(node, kind):
        raise KeyError(f"{name!r} has attribute kind {kind!r}, which has no accessor")
    return getattr(node, kind)(name)


def _ensure_node_getitem() -> None:
    # 0.3 reads graph-node attributes as `n[k]`. Older torch patched exactly that onto
    # torch._C.Node itself (torch.onnx.utils._node_getitem); newer torch does not. This
    # patch stays: it is used whenever a BoundedModule is built, and it only adds a
    # method torch itself used to provide.
    import torch

    if hasattr(torch._C.Node, "__getitem__"):
        return
    torch._C.Node.__getitem__ = _node_getitem  # type: ignore[attr-defined]
    _applied.append("torch._C.Node.__getitem__ (removed from torch; 0.3 indexes nodes n[k])")


def _patch_named_members(mod: types.ModuleType) -> None:
    # 0.3's BoundedModule overrides nn.Module._named_members without the
    # `remove_duplicate` argument torch added later, so `bounded.parameters()` raises
    # TypeError. 0.3 itself calls it when CROWN builds identity specs for intermediate
    # bounds (convolutions, MaxPool, SiLU, ...). Same body, plus the argument.
    import inspect

    cls = mod.BoundedModule
    if "remove_duplicate" in inspect.signature(cls._named_members).parameters:
        return

    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        memo = set()
        if recurse:
            modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
        else:
            modules = [(prefix, self)]
        for module_prefix, module in modules:
            for k, v in get_members_fn(module):
                if v is None or v in memo:
                    continue
                if remove_duplicate:
                    memo.add(v)
                name = module_prefix + ("." if module_prefix else "") + k
                yield self.node_name_map.get(name, name), v  # graph node name -> original name

    cls._named_members = _named_members
    _applied.append("BoundedModule._named_members accepts remove_duplicate (added to torch later)")


def _patch_conv_transpose_matrix_mode(mod: types.ModuleType) -> None:
    # 0.3's BoundConvTranspose asserts padding == 0 and output_padding == 0 in its
    # constructor, a restriction of its "patches" code path. In "matrix" mode its
    # backward pass is conv2d(A, W, stride, padding), the exact adjoint of
    # conv_transpose2d for any padding/output_padding, and its IBP already passes both
    # through; DCGAN-style generators (kernel 4, stride 2, padding 1) need them. Only
    # matrix mode is relaxed; the remaining checks (symmetric pads, dilation 1,
    # groups 1, square stride) still run.
    cls = getattr(mod.bound_general, "BoundConvTranspose", None)
    if cls is None or getattr(cls.__init__, "_latentaudit_patched", False):
        return
    original_init = cls.__init__

    def __init__(self, attr, inputs, output_index, options):
        if options.get("conv_mode", "matrix") != "matrix":
            return original_init(self, attr, inputs, output_index, options)
        pads = list(attr["pads"])
        output_padding = list(attr.get("output_padding", [0, 0]))
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise NotImplementedError(f"ConvTranspose with asymmetric pads {pads}")
        original_init(self, dict(attr, pads=[0, 0, 0, 0], output_padding=[0, 0]),
                      inputs, output_index, options)
        self.padding = [pads[0], pads[1]]
        self.output_padding = output_padding[:2]

    __init__._latentaudit_patched = True  # type: ignore[attr-defined]
    cls.__init__ = __init__
    _applied.append("BoundConvTranspose: padding/output_padding in matrix mode")


def _patch_s_shaped_alpha_matrix_mode(mod: types.ModuleType) -> None:
    # alpha-CROWN through Sigmoid/Tanh followed by a convolution (a decoder feeding a
    # CNN) fails in 0.3 with a shape mismatch: BoundTanh allocates one alpha per
    # flattened start-node neuron (init_opt_parameters uses prod(shape)), but sizes
    # its relaxation buffers by the channel count only, a convention of patches mode.
    # In matrix mode the two must agree, so use the flattened size there too.
    from math import prod

    activation = getattr(getattr(mod, "operators", None), "activation", None)
    cls = getattr(activation, "BoundTanh", None)  # BoundSigmoid subclasses it
    if cls is None or getattr(cls.init_linear_relaxation, "_latentaudit_patched", False):
        return
    original = cls.init_linear_relaxation

    def init_linear_relaxation(self, x, dim_opt=None):
        if (
            dim_opt is not None
            and not isinstance(dim_opt, int)
            and self.opt_stage in ("opt", "reuse")
            and self.options.get("conv_mode") == "matrix"
        ):
            dim_opt = prod(dim_opt)
        return original(self, x, dim_opt)

    init_linear_relaxation._latentaudit_patched = True  # type: ignore[attr-defined]
    cls.init_linear_relaxation = init_linear_relaxation
    _applied.append("BoundTanh/BoundSigmoid: alpha buffers sized per neuron in matrix mode")


# --------------------------------------------------------------------------------------
# Global state auto_LiRPA 0.3 changes on import


@contextmanager
def _preserve_global_state() -> Iterator[None]:
    """Snapshot and restore the process-wide state that importing auto_LiRPA changes:

    * ``warnings.simplefilter("once")`` (utils.py, bound_general.py) would turn every
      warning of the user's code into "once";
    * ``logging.basicConfig(stream=sys.stdout)`` (utils.py) would send every library's
      log records to stdout;
    * ``sys.setrecursionlimit(1000000)`` (forward_bound.py) trades RecursionError for
      a possible hard crash;
    * ``torch._C._jit_set_profiling_executor/mode(False)`` (operators/*.py) switch the
      TorchScript executor for every scripted model in the process.

    Warnings raised while importing (torch deprecating ``torch.jit.script``, used by
    0.3's decorators) are dropped; any other import-time warning is re-issued.
    """
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    recursion_limit = sys.getrecursionlimit()
    jit_flags = _jit_executor_flags()
    with warnings.catch_warnings(record=True) as caught:  # restores warnings.filters
        try:
            yield
        finally:
            for handler in list(root.handlers):
                if handler not in root_handlers:
                    root.removeHandler(handler)
            root.setLevel(root_level)
            sys.setrecursionlimit(recursion_limit)
            _set_jit_executor_flags(jit_flags)
    for w in caught:
        if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _jit_executor_flags() -> Optional[Tuple[bool, bool]]:
    if "torch" not in sys.modules:
        return None
    torch_c = sys.modules["torch"]._C
    if not (hasattr(torch_c, "_jit_set_profiling_executor") and hasattr(torch_c, "_jit_set_profiling_mode")):
        return None
    # The setters return the previous value; set-and-set-back reads it.
    executor = torch_c._jit_set_profiling_executor(True)
    torch_c._jit_set_profiling_executor(executor)
    mode = torch_c._jit_set_profiling_mode(True)
    torch_c._jit_set_profiling_mode(mode)
    return executor, mode


def _set_jit_executor_flags(flags: Optional[Tuple[bool, bool]]) -> None:
    if flags is None:
        return
    torch_c = sys.modules["torch"]._C
    torch_c._jit_set_profiling_executor(flags[0])
    torch_c._jit_set_profiling_mode(flags[1])
