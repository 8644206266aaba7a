"""Replace every ReLU of a network by ``Softplus(beta)`` (EluCD, Ma et al., docs/math.md §3 design 2).

``softplus_beta(x) = log(1 + exp(beta x)) / beta`` is smooth and tends to ``relu(x)`` as ``beta -> inf``
(``0 <= softplus_beta - relu <= log(2) / beta``); a smooth classifier gives a less noisy guidance gradient.

Where ReLUs hide, and how each is found:

- ``nn.ReLU`` modules (subclasses included), wherever registered: ``nn.Sequential``, ``ModuleList``,
  ``ModuleDict``, timm's ``create_act_layer`` output, and one instance registered under several names or
  called several times (torchvision's ``Bottleneck.relu`` runs three times per block): the registered
  attribute is replaced, which replaces every call through it. Sharing is kept (one Softplus per ReLU).
- functional calls in ``forward`` (``F.relu``, ``torch.relu``, ``torch.relu_``, ``x.relu()``, ``x.relu_()``):
  found with ``torch.fx`` symbolic tracing and rewritten in the graph (in-place variants keep their
  in-place meaning: ``x.copy_(softplus(x))``). Only then is a new module returned (a ``GraphModule`` sharing
  the parameters; it keeps the state-dict keys but not the original class's extra methods/attributes).
- a model that does not trace, or that hides a ReLU where fx cannot see (inside a ``torch.nn`` leaf module
  such as ``TransformerEncoderLayer``, or in a module kept outside the module tree): pass ``example_input``;
  one forward records every relu still executed, by owning module, and reports it as not swapped.

Only ReLU is replaced. ReLU6, LeakyReLU, Hardtanh, Hardswish, GELU, SiLU, ... are left as they are and
listed in ``SwapReport.other_activations`` so that the caller sees them. ``x.clamp(min=0)`` written as a
ReLU is not recognised.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

# functional relu as seen by fx (call_function targets / call_method names) and by __torch_function__
# (F.relu_ is the very object torch.relu_)
_RELU_FUNCTIONS = {F.relu: "F.relu", torch.relu: "torch.relu", torch.relu_: "torch.relu_"}
_INPLACE_RELU_FUNCTIONS = {torch.relu_}
_RELU_METHODS = {"relu": "Tensor.relu", "relu_": "Tensor.relu_"}
_RELU_RUNTIME = {**_RELU_FUNCTIONS, torch.Tensor.relu: "Tensor.relu", torch.Tensor.relu_: "Tensor.relu_"}

# other activations worth reporting (not replaced): module classes and functional names
_NOT_ACTIVATIONS = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.MultiheadAttention)
_ACTIVATION_MODULE_PREFIXES = ("torch.nn.modules.activation", "timm.layers.activations")
_OTHER_ACTIVATION_NAMES = {
    "relu6", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "rrelu", "rrelu_", "prelu", "elu", "elu_",
    "selu", "selu_", "celu", "celu_", "gelu", "silu", "mish", "hardswish", "hardsigmoid", "threshold",
    "threshold_", "sigmoid", "sigmoid_", "tanh", "tanh_", "logsigmoid", "softsign", "tanhshrink",
    "hardshrink", "softshrink",
}


@dataclass(frozen=True)
class SwapReport:
    """What :func:`swap_relu_for_softplus` replaced and what it could not.

    Names are qualified module names (``""`` is written ``<root>``); functional calls are written
    ``"<owner module>: <call>"``.
    """

    beta: float | None  # None: ReLU kept (no swap requested)
    swapped_modules: tuple[str, ...] = ()  # every registered name of a replaced nn.ReLU
    swapped_calls: tuple[str, ...] = ()  # functional relu rewritten through fx
    not_swapped: tuple[str, ...] = ()  # relu found but left in place
    other_activations: tuple[str, ...] = ()  # non-ReLU activations seen (left as they are)
    traced: bool = False  # torch.fx traced the model (functional calls were searched)
    trace_error: str | None = None
    verified: bool = False  # a forward on example_input executed no relu

    @property
    def complete(self) -> bool:
        """True when no ReLU is known to remain and the search could see the whole forward."""
        if self.beta is None:
            return True
        return not self.not_swapped and (self.traced or self.verified)

    def problem(self) -> str | None:
        """One line saying what is left, or None when the swap is complete."""
        if self.complete:
            return None
        if self.not_swapped:
            return (f"ReLU left after the Softplus({self.beta:g}) swap: {', '.join(self.not_swapped)} "
                    "(write these as nn.ReLU modules or make the model traceable by torch.fx)")
        return (f"cannot tell whether functional relu calls remain: torch.fx could not trace the model "
                f"({self.trace_error}); pass example_input so that one forward can check")


def _name(qualname: str) -> str:
    return qualname or "<root>"


def _is_other_activation(module: nn.Module) -> bool:
    cls = type(module)
    if isinstance(module, (nn.ReLU, nn.Softplus) + _NOT_ACTIVATIONS):
        return False
    return cls.__module__.startswith(_ACTIVATION_MODULE_PREFIXES)


def _swap_relu_modules(model: nn.Module, beta: float) -> tuple[nn.Module, list[str], list[str]]:
    """Replace every registered nn.ReLU (all names of a shared one); return (model, swapped, other)."""
    if isinstance(model, nn.ReLU):
        return nn.Softplus(beta=beta), ["<root>"], []
    # collect first: editing _modules while named_modules walks it would skip or revisit children
    sites: dict[tuple[int, str], tuple[nn.Module, str]] = {}
    swapped, other = [], []
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for child_name, child in parent._modules.items():
            if child is None:
                continue
            qualname = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.ReLU):
                sites[(id(parent), child_name)] = (parent, child_name)
                swapped.append(qualname)
            elif _is_other_activation(child):
                other.append(f"{qualname}: {type(child).__name__}")
    replacement: dict[int, nn.Softplus] = {}
    for parent, child_name in sites.values():
        relu = parent._modules[child_name]
        parent._modules[child_name] = replacement.setdefault(id(relu), nn.Softplus(beta=beta))
    return model, sorted(set(swapped)), sorted(set(other))


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    # values are (qualified name, class); the last entry is the innermost module
    return _name(next(reversed(stack.values()))[0] if stack else "")


def _describe_call(node: fx.Node) -> str | None:
    """'F.relu' etc. for a relu node, None otherwise."""
    if node.op == "call_function":
        return _RELU_FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return _RELU_METHODS.get(node.target)
    return None


def _activation_name(node: fx.Node) -> str | None:
    if node.op == "call_method" and isinstance(node.target, str):
        name = node.target
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
    else:
        return None
    return name if name in _OTHER_ACTIVATION_NAMES else None


def _rewrite_functional_relu(gm: fx.GraphModule, beta: float) -> list[str]:
    """Rewrite relu nodes of the graph as softplus(beta); return their descriptions."""
    swapped = []
    graph = gm.graph
    for node in list(graph.nodes):
        what = _describe_call(node)
        if what is None:
            continue
        x = node.args[0]
        inplace = (node.target in _INPLACE_RELU_FUNCTIONS or node.target == "relu_"
                   or bool(node.kwargs.get("inplace", False))
                   or (node.target is F.relu and len(node.args) > 1 and bool(node.args[1])))
        with graph.inserting_before(node):
            new = graph.call_function(F.softplus, (x,), {"beta": beta})
            if inplace:
                # later readers of x expect the activated values, as after relu_
                new = graph.call_method("copy_", (x, new))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        swapped.append(f"{_owner(new)}: {what}")
    graph.lint()
    gm.recompile()
    return swapped


class _RecordRelu(TorchFunctionMode):
    """Records each functional relu executed, with the innermost module running at that moment."""

    def __init__(self, module_stack: list[str]):
        super().__init__()
        self.module_stack = module_stack
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        what = _RELU_RUNTIME.get(func)
        if what is not None:
            self.calls.append(f"{_name(self.module_stack[-1])}: {what}")
        return func(*args, **(kwargs or {}))


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    stack = [""]

    def enter(qualname: str):
        def hook(module, args):
            stack.append(qualname)
        return hook

    def leave(module, args, output):  # returns None: a forward hook's return value would replace the output
        stack.pop()

    handles = []
    for qualname, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(qualname)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def relu_calls_executed(model: nn.Module, example_input: Tensor) -> list[str]:
    """Functional relu calls run by one forward on ``example_input`` (``"<owner>: <call>"``, deduplicated)."""
    with torch.no_grad(), _module_stack(model) as stack, _RecordRelu(stack) as recorder:
        model(example_input)
    return sorted(set(recorder.calls))


def swap_relu_for_softplus(model: nn.Module, beta: float | None, *, strict: bool = False,
                           example_input: Tensor | None = None) -> tuple[nn.Module, SwapReport]:
    """Replace every ReLU of ``model`` by ``Softplus(beta)``; return ``(smoothed model, report)``.

    ``nn.ReLU`` modules are replaced in place. The returned model is ``model`` itself unless a functional
    relu had to be rewritten (then a ``torch.fx.GraphModule`` sharing its parameters). ``beta=None`` or
    ``inf`` keeps ReLU. ``example_input`` (optional, one batch the model accepts) lets one forward check
    that no relu is executed any more. ``strict=True`` raises ``RuntimeError`` unless the report is complete.
    """
    if beta is None or math.isinf(beta):
        return model, SwapReport(beta=None)
    beta = float(beta)
    if not beta > 0:
        raise ValueError(f"softplus beta must be positive (got {beta}); use None to keep ReLU")

    model, swapped_modules, other = _swap_relu_modules(model, beta)

    swapped_calls: list[str] = []
    traced, trace_error = False, None
    try:
        gm = fx.symbolic_trace(model)
        traced = True
    except Exception as err:  # fx raises many types (TraceError, TypeError, NameError, ...)
        trace_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if traced:
        other += sorted({f"{_owner(n)}: {_activation_name(n)}" for n in gm.graph.nodes if _activation_name(n)})
        if any(_describe_call(n) for n in gm.graph.nodes):
            swapped_calls = _rewrite_functional_relu(gm, beta)
            model = gm

    not_swapped: list[str] = []
    verified = False
    if example_input is not None:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()  # a check must not move BatchNorm running statistics
        not_swapped = relu_calls_executed(model, example_input)
        for m, mode in modes:
            m.training = mode
        verified = not not_swapped

    report = SwapReport(beta=beta, swapped_modules=tuple(swapped_modules), swapped_calls=tuple(swapped_calls),
                        not_swapped=tuple(not_swapped), other_activations=tuple(other), traced=traced,
                        trace_error=trace_error, verified=verified)
    if strict and not report.complete:
        raise RuntimeError(report.problem())
    return model, report
