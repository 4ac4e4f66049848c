"""Small shared test helpers."""

from collections.abc import Callable

import tensorflow as tf


def op_types(fn: Callable, *specs: tf.TensorSpec) -> set[str]:
    """Op types of the graph ``tf.function(fn)`` traces for ``specs``, nested functions included."""
    graph = tf.function(fn).get_concrete_function(*specs).graph
    types = set()
    graphs = [graph.as_graph_def()]
    for graph_def in graphs:
        types.update(node.op for node in graph_def.node)
        types.update(n.op for f in graph_def.library.function for n in f.node_def)
    return types
