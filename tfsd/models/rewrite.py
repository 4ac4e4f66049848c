"""Stochastic depth for any functional Keras residual network: `add_stochastic_depth`.

The inverse of `tfsd.models.folding.fold_stochastic_depth`: where folding turns each
`tfsd.layers.StochasticResidual` back into its branch and an ``Add``, `add_stochastic_depth`
finds each residual ``Add`` of a functional model, lifts the layers between the fork and the
``Add`` into a functional sub-model and wraps it in a `StochasticResidual` (Huang et al., "Deep
Networks with Stochastic Depth", arXiv:1603.09382), so that a dropped branch's compute is skipped.
Every layer is a copy of the original with its weights; the input model is not modified.

The structural rule (docs/rewrite.md states it with examples) for an ``Add`` of two tensors:

* The **shortcut** is one input ``s``; walking back from ``s`` through at most
  `MAX_PROJECTION` single-input projection layers (1×1 convolutions, normalisation, pooling,
  padding, identity; at most one weighted map) reaches the **fork** ``x``. Zero layers is the
  identity shortcut (ResNet identity blocks, MobileNetV2, EfficientNet, ConvNeXt); conv + BN is
  ResNet v1's projection; a 1×1 ``MaxPooling2D`` is ResNet v2's strided shortcut.
* The **branch** is every node between ``x`` and the other input ``r``: walking back from ``r``
  must end at ``x`` on every path (no other input, no model input), no tensor inside it may be
  used outside it (or be a model output), and it must hold at least one weight.
* A per-example drop-path layer directly before the ``Add`` (keras.applications EfficientNet's
  ``Dropout(noise_shape=(None, 1, 1, 1))`` "drop" layers, ConvNeXt's ``StochasticDepth``) is
  **replaced**: it is left out of the branch and its rate r gives the block p = 1 − r.
* Identity is preferred over a projection, a shorter projection over a longer one. An ``Add``
  matching neither way round (a sum of two 3×3 convolutions, two model inputs, three inputs) or
  whose branch holds another residual ``Add`` is left alone and listed in the `RewriteReport`.

Nested functional sub-models are rewritten recursively (their blocks join the schedule in call
order); shared layers stay shared (one copy, called at each use); multiple inputs and outputs are
kept. Layers that hide their graph (subclassed models, ``Sequential``) are copied whole, and any
``Add`` inside them is reported as not inspected.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import keras
from keras.src.models.functional import Functional
from keras.src.ops import numpy as knp

from tfsd import layers as sd_layers
from tfsd.models.common import POOLING, block_seed, resolve_sample_skip

MAX_PROJECTION = 3  # layers on a projection shortcut: avg-pool + 1×1 conv + BN (ResNet-D)

# Single-input layers a projection shortcut may hold (convolutions only with a 1×1 kernel).
_PROJECTION = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Identity,
    *POOLING,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


@dataclasses.dataclass(frozen=True)
class Block:
    """One rewritten block: the `StochasticResidual` ``name`` (the ``Add``'s name) and its parts."""

    name: str
    survival_prob: float
    shortcut: tuple[str, ...]  # projection layer names; () = identity
    branch: tuple[str, ...]  # layer names moved into the branch sub-model
    replaced: str = ""  # "NAME (rate r)" of the drop-path layer replaced, if any


@dataclasses.dataclass(frozen=True)
class RewriteReport:
    """What `add_stochastic_depth` rewrote (``blocks``, in depth order) and left alone."""

    blocks: tuple[Block, ...]
    skipped: tuple[tuple[str, str], ...]  # (layer name, why it was left alone)

    def __str__(self) -> str:
        lines = [f"{len(self.blocks)} residual blocks -> StochasticResidual:"]
        for b in self.blocks:
            short = "+".join(b.shortcut) or "identity"
            extra = f", replaces {b.replaced}" if b.replaced else ""
            lines.append(f"  {b.name}: p={b.survival_prob:.4f}, shortcut {short}{extra}")
        lines.append(f"{len(self.skipped)} left alone:")
        lines += [f"  {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


@dataclasses.dataclass
class _Plan:
    add: Any  # the Add node
    fork: Any  # KerasTensor
    shortcut: Any  # KerasTensor: the Add's shortcut input
    residual: Any  # KerasTensor: the branch output (before any drop-path layer)
    nodes: list  # branch nodes, topological order
    chain: tuple[str, ...]
    drop: Any = None  # the drop-path node left out
    drop_rate: float | None = None
    index: int = -1  # position in the model-wide schedule


# -------------------------------------------------------------------------------------------------
# Finding blocks.
# -------------------------------------------------------------------------------------------------


def _topological(model: Functional) -> list:
    # Keras' own execution order (keras/src/ops/function.py, Function._run_through_graph).
    depth = model._nodes_by_depth
    return [n for d in sorted(depth, reverse=True) for n in depth[d]]


def _producer(tensor: Any) -> Any:
    op, node_index, _ = tensor._keras_history
    return op._inbound_nodes[node_index]


def _is_add(node: Any) -> bool:
    return isinstance(node.operation, (keras.layers.Add, knp.Add))


def drop_path_rate(layer: Any) -> float | None:
    """The rate of a per-example drop-path layer (None for any other layer).

    keras.applications EfficientNet (V1 and V2) drop connections with ``Dropout(rate,
    noise_shape=(None, 1, 1, 1))`` (keras/src/applications/efficientnet.py, ``block``); ConvNeXt
    with its own ``StochasticDepth(drop_path_rate)`` whose mask has shape (batch, 1, 1, 1)
    despite its docstring's "batch-wise" (keras/src/applications/convnext.py). Both scale kept
    examples by 1 / (1 − rate) in training.
    """
    if isinstance(layer, keras.layers.Dropout) and layer.noise_shape is not None:
        shape = tuple(layer.noise_shape)
        if len(shape) >= 2 and shape[0] is None and all(d == 1 for d in shape[1:]):
            return float(layer.rate)
        return None
    cls = type(layer)
    if cls.__name__ == "StochasticDepth" and cls.__module__.startswith("keras.src.applications"):
        return float(layer.drop_path_rate)
    return None


def _has_weights(node: Any) -> bool:
    return bool(getattr(node.operation, "weights", None))


def _projection_layer(op: Any) -> tuple[bool, str]:
    """(is it a projection layer, what it is) for the error report."""
    if isinstance(op, _CONV):
        k = tuple(op.kernel_size)
        return all(d == 1 for d in k), f"{type(op).__name__} {'x'.join(map(str, k))}"
    if isinstance(op, keras.layers.Activation):
        return getattr(op.activation, "__name__", "") == "linear", "Activation"
    return isinstance(op, _PROJECTION), type(op).__name__


class _Graph:
    """The nodes of one functional model and which nodes use each tensor."""

    def __init__(self, model: Functional):
        self.model = model
        self.nodes = _topological(model)
        self.node_ids = {id(n) for n in self.nodes}
        self.order = {id(n): i for i, n in enumerate(self.nodes)}
        self.users: dict[int, list] = {}
        for n in self.nodes:
            for t in n.input_tensors:
                self.users.setdefault(id(t), []).append(n)
        self.outputs = {id(t) for t in model.outputs}

    def branch_nodes(self, fork: Any, residual: Any) -> list | None:
        """Nodes between ``fork`` and ``residual`` if every path back from it ends at ``fork``."""
        seen, stack = {}, [residual]
        while stack:
            t = stack.pop()
            if t is fork:
                continue
            node = _producer(t)
            if id(node) not in self.node_ids or node.is_input:
                return None  # reached a model input (or a tensor of another graph)
            if id(node) in seen:
                continue
            seen[id(node)] = node
            stack.extend(node.input_tensors)
        return sorted(seen.values(), key=lambda n: self.order[id(n)])

    def closed(self, nodes: list, allowed: set) -> bool:
        """No output of ``nodes`` is used outside ``allowed`` nodes or is a model output."""
        for n in nodes:
            for t in n.outputs:
                if id(t) in self.outputs:
                    return False
                if any(id(u) not in allowed for u in self.users.get(id(t), [])):
                    return False
        return True

    def classify(self, add: Any) -> _Plan | str:
        """A `_Plan` for a residual ``Add`` node, else why it is not one."""
        inputs = add.input_tensors
        if len(inputs) != 2:
            return f"an Add of {len(inputs)} tensors (a residual block adds two)"
        found, reasons = [], []
        for s, r in (inputs, inputs[::-1]):
            plan = self._try(add, s, r)
            (found if isinstance(plan, _Plan) else reasons).append(plan)
        if not found:
            return "; ".join(dict.fromkeys(reasons))
        return min(found, key=lambda p: len(p.chain))

    def _try(self, add: Any, s: Any, r: Any) -> _Plan | str:
        drop, rate = None, None
        node = _producer(r)
        if id(node) in self.node_ids and not node.is_input:
            rate = drop_path_rate(node.operation)
            if rate is not None and len(node.input_tensors) == 1:
                drop, r = node, node.input_tensors[0]
        chain, t, weighted = [], s, 0
        for _ in range(MAX_PROJECTION + 1):
            nodes = self.branch_nodes(t, r)
            if nodes is not None:
                break
            producer = _producer(t)
            if id(producer) not in self.node_ids or producer.is_input:
                return "its inputs do not share a fork"
            ok, what = _projection_layer(producer.operation)
            weighted += isinstance(producer.operation, (*_CONV, keras.layers.Dense))
            if not ok or weighted > 1 or len(producer.input_tensors) != 1:
                return f"neither input is the identity or a projection ({what} on a path)"
            chain.append(producer.operation.name)
            t = producer.input_tensors[0]
        else:
            return f"its shortcut is longer than {MAX_PROJECTION} projection layers"
        if not any(_has_weights(n) for n in nodes):
            return "its branch holds no weights"
        allowed = {id(n) for n in nodes} | {id(add)} | ({id(drop)} if drop else set())
        if not self.closed(nodes + ([drop] if drop else []), allowed):
            return "a tensor inside its branch is also used outside it"
        return _Plan(add, t, s, r, nodes, tuple(reversed(chain)), drop, rate)


def _find(model: Functional, plans: dict, order: list, skipped: list, seen: set) -> None:
    """Classifies every Add of ``model`` and of its nested functional models, in call order."""
    if id(model) in seen:
        return  # a shared sub-model: its blocks are counted once
    seen.add(id(model))
    graph = _Graph(model)
    found = {}
    for node in graph.nodes:
        op = node.operation
        if isinstance(op, Functional):
            _find(op, plans, order, skipped, seen)
        elif isinstance(op, keras.layers.Layer):
            hidden = [
                x.name
                for x in op._flatten_layers(include_self=False)
                if isinstance(x, keras.layers.Add)
            ]
            skipped += [(n, f"inside {op.name!r}, whose graph is not inspected") for n in hidden]
        if not _is_add(node):
            continue
        plan = graph.classify(node)
        if isinstance(plan, str):
            skipped.append((op.name, plan))
        else:
            found[id(node)] = plan
    for key, plan in list(found.items()):
        inner = [p.add.operation.name for p in found.values() if p.add in plan.nodes]
        if inner:
            del found[key]
            skipped.append((plan.add.operation.name, f"its branch holds residual blocks {inner}"))
    for plan in found.values():
        plan.index = len(order)
        order.append(plan)
    plans[id(model)] = found


# -------------------------------------------------------------------------------------------------
# Rebuilding.
# -------------------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, plans: dict, settings: dict):
        self.plans = plans
        self.settings = settings  # plan index -> StochasticResidual kwargs
        self.clones: dict[int, Any] = {}
        self.copies: list[tuple[Any, Any]] = []

    def clone(self, op: Any) -> Any:
        if id(op) in self.clones:  # shared layers stay shared
            return self.clones[id(op)]
        if isinstance(op, Functional):
            new = self.model(op)
        elif isinstance(op, keras.layers.Layer):
            try:
                new = op.__class__.from_config(op.get_config())
            except Exception as e:  # noqa: BLE001  (any failure: name the layer)
                raise ValueError(
                    f"add_stochastic_depth: cannot copy layer {op.name!r} "
                    f"({type(op).__name__}) from its get_config(): {e}"
                ) from e
            self.copies.append((op, new))
        else:
            new = op  # a stateless keras.ops operation (``x + y`` in ConvNeXt): reused
        self.clones[id(op)] = new
        return new

    def replay(self, nodes: list, tensors: dict) -> None:
        for node in nodes:
            args, kwargs = node.arguments.fill_in(tensors)
            outputs = self.clone(node.operation)(*args, **kwargs)
            for old, new in zip(node.outputs, keras.tree.flatten(outputs)):
                tensors[id(old)] = new

    def model(self, model: Functional) -> keras.Model:
        plans = self.plans[id(model)]
        inner = {id(n) for p in plans.values() for n in p.nodes + ([p.drop] if p.drop else [])}
        tensors = {}
        inputs = []
        for x in model.inputs:
            layer = x._keras_history[0]
            new = keras.Input(batch_shape=x.shape, dtype=x.dtype, name=layer.name)
            tensors[id(x)] = new
            inputs.append(new)
        for node in _topological(model):
            if node.is_input or id(node) in inner:
                continue
            plan = plans.get(id(node))
            if plan is None:
                self.replay([node], tensors)
                continue
            name = node.operation.name
            fork = plan.fork
            inp = keras.Input(batch_shape=fork.shape, dtype=fork.dtype, name=f"{name}_input")
            local = {id(fork): inp}
            self.replay(plan.nodes, local)
            branch = keras.Model(inp, local[id(plan.residual)], name=f"{name}_branch")
            layer = sd_layers.StochasticResidual(branch, name=name, **self.settings[plan.index])
            shortcut = None if plan.shortcut is fork else tensors[id(plan.shortcut)]
            tensors[id(node.outputs[0])] = layer(tensors[id(fork)], shortcut=shortcut)
        outputs = keras.tree.map_structure(lambda t: tensors[id(t)], model._outputs_struct)
        return keras.Model(inputs, outputs, name=model.name)


def find_residual_blocks(model: keras.Model) -> RewriteReport:
    """The blocks `add_stochastic_depth` would rewrite (p = 1 here) and the Adds it would not."""
    plans, order, skipped = _analyse(model)
    blocks = tuple(_block(p, 1.0) for p in order)
    return RewriteReport(blocks, tuple(skipped))


def _analyse(model: Any) -> tuple[dict, list, list]:
    if isinstance(model, keras.Sequential) or not isinstance(model, Functional):
        raise ValueError(
            f"add_stochastic_depth needs a functional keras.Model; got {type(model).__name__} "
            f"{getattr(model, 'name', '')!r} (a Sequential model has no residual Add; rebuild a "
            "subclassed model functionally)."
        )
    plans, order, skipped = {}, [], []
    _find(model, plans, order, skipped, set())
    return plans, order, skipped


def _block(plan: _Plan, p: float) -> Block:
    replaced = f"{plan.drop.operation.name} (rate {plan.drop_rate:g})" if plan.drop else ""
    branch = tuple(n.operation.name for n in plan.nodes)
    return Block(plan.add.operation.name, p, plan.chain, branch, replaced)


def add_stochastic_depth(
    model: keras.Model,
    survival_prob: float | None = None,
    rule: str = "linear",
    mode: str | None = None,
    scale_at: str = "train",
    seed: int | None = 0,
    sample_skip: bool | None = None,
    sync_replicas: bool = False,
    return_report: bool = False,
) -> keras.Model | tuple[keras.Model, RewriteReport]:
    """Returns a copy of ``model`` with every residual block a `tfsd.layers.StochasticResidual`.

    Example:
      >>> base = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
      >>> model = add_stochastic_depth(base, survival_prob=0.5)  # 16 blocks, p_L = 0.5

    Args:
      model: a functional Keras model (not modified).
      survival_prob: p_L, the end point of ``rule`` over the N blocks found, in depth order
        (`tfsd.layers.survival_schedule`, as tfsd's builders); replaced drop-path layers' rates
        are then discarded. None keeps each replaced drop-path layer's rate (p = 1 − rate) and
        gives blocks without one p = 1; refused when the model has no drop-path layer.
      rule: a name of `tfsd.layers.SCHEDULES`.
      mode: "batch" or "sample"; None: "sample" when the model has per-example drop-path layers
        (keeps their semantics), else "batch" (the paper's).
      scale_at: "train" (default: inverted scaling, the rewritten model equals the original at
        inference) or "inference" (the paper's: ``shortcut + p · branch`` at inference).
      seed: base seed; block i gets ``tfsd.models.common.block_seed(seed, i)``. None: each block
        draws its own.
      sample_skip: in sample mode, run each branch on the kept examples only (None: True, so
        dropped examples skip the branch; False is the mask form, needed under XLA).
      sync_replicas: every replica draws the same gates (`tfsd.layers.StochasticDepth`).
      return_report: also return the `RewriteReport`.

    Returns:
      The new functional model (same name, same inputs and outputs), and the report if asked. The
      report is also logged at INFO level.

    Raises:
      ValueError: ``model`` is not functional, a layer cannot be copied from its config, no drop
        path layer gives the rates when ``survival_prob`` is None, or a setting is invalid.
    """
    plans, order, skipped = _analyse(model)
    replaced = [p for p in order if p.drop is not None]
    if survival_prob is None:
        if not replaced and order:
            raise ValueError(
                f"{model.name!r} has no drop-path layer to take survival probabilities from: pass "
                "survival_prob (p_L of the schedule)."
            )
        probs = [1.0 - p.drop_rate if p.drop is not None else 1.0 for p in order]
    else:
        probs = sd_layers.survival_schedule(len(order), survival_prob, rule) if order else []
    if mode is None:
        mode = "sample" if replaced else "batch"
    skip = resolve_sample_skip(sample_skip, mode, True)
    settings = {
        p.index: dict(
            survival_prob=prob,
            mode=mode,
            scale_at=scale_at,
            sync_replicas=sync_replicas,
            seed=block_seed(seed, p.index),
            sample_skip=skip,
        )
        for p, prob in zip(order, probs)
    }
    builder = _Builder(plans, settings)
    new = builder.model(model)
    for old, copy in builder.copies:
        copy.set_weights(old.get_weights())
        if isinstance(copy, keras.layers.Normalization):
            copy.finalize_state()  # it snapshots mean/variance as constants (see folding.py)
    report = RewriteReport(tuple(_block(p, q) for p, q in zip(order, probs)), tuple(skipped))
    logging.getLogger(__name__).info("add_stochastic_depth(%s):\n%s", model.name, report)
    return (new, report) if return_report else new
