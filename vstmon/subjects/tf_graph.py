"""Read a frozen TensorFlow ``GraphDef`` (.pb) without TensorFlow: the ``protobuf`` package parses the bytes
against a hand-declared subset of TensorFlow's messages (the fields a frozen inference graph uses).

Why this and not a ready-made set of compiled protos: TensorFlow is a 500 MB dependency; ``tensorboard`` ships
compiled ``GraphDef`` protos but its wheel (5.5 MB) pulls grpcio, werkzeug, markdown, pillow, absl-py and a
6.6 MB data server into the daemon. ``protobuf`` (0.3 MB, no dependencies) is what both of those use underneath;
the schema subset below is the only hand-written part: field numbers and names copied from TensorFlow's
``graph.proto``, ``node_def.proto``, ``attr_value.proto``, ``tensor.proto``, ``tensor_shape.proto`` and
``types.proto``. Fields not declared are kept as unknown fields by the parser, so a graph with more in it reads
as well. The messages carry TensorFlow's own package and field names, so ``google.protobuf.text_format`` writes
them as TensorFlow's text format.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

__all__ = ["DTYPE_NUMPY", "FrozenGraph", "graph_def_class", "node_def_class", "tensor_values"]

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# TensorFlow's DataType enum (types.proto): the values a frozen detection graph holds. Others still parse
# (proto3 enums are open) and print as numbers.
_DTYPES = {"DT_INVALID": 0, "DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 5,
           "DT_INT8": 6, "DT_STRING": 7, "DT_INT64": 9, "DT_BOOL": 10, "DT_BFLOAT16": 14, "DT_UINT16": 17,
           "DT_HALF": 19}  # fmt: skip
DTYPE_NUMPY = {
    1: "<f4",
    2: "<f8",
    3: "<i4",
    4: "u1",
    5: "<i2",
    6: "i1",
    9: "<i8",
    10: "?",
    17: "<u2",
    19: "<f2",
}

# message -> fields: (name, number, type, label, message or enum type name). Copied from TensorFlow's protos.
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "TensorShapeProto.Dim": [
        ("size", 1, _F.TYPE_INT64, _OPTIONAL, ""),
        ("name", 2, _F.TYPE_STRING, _OPTIONAL, ""),
    ],
    "TensorShapeProto": [
        ("dim", 2, _F.TYPE_MESSAGE, _REPEATED, "TensorShapeProto.Dim"),
        ("unknown_rank", 3, _F.TYPE_BOOL, _OPTIONAL, ""),
    ],
    "TensorProto": [
        ("dtype", 1, _F.TYPE_ENUM, _OPTIONAL, "DataType"),
        ("tensor_shape", 2, _F.TYPE_MESSAGE, _OPTIONAL, "TensorShapeProto"),
        ("version_number", 3, _F.TYPE_INT32, _OPTIONAL, ""),
        ("tensor_content", 4, _F.TYPE_BYTES, _OPTIONAL, ""),
        ("float_val", 5, _F.TYPE_FLOAT, _REPEATED, ""),
        ("double_val", 6, _F.TYPE_DOUBLE, _REPEATED, ""),
        ("int_val", 7, _F.TYPE_INT32, _REPEATED, ""),
        ("string_val", 8, _F.TYPE_BYTES, _REPEATED, ""),
        ("int64_val", 10, _F.TYPE_INT64, _REPEATED, ""),
        ("bool_val", 11, _F.TYPE_BOOL, _REPEATED, ""),
        ("half_val", 13, _F.TYPE_INT32, _REPEATED, ""),
    ],
    "AttrValue.ListValue": [
        ("s", 2, _F.TYPE_BYTES, _REPEATED, ""),
        ("i", 3, _F.TYPE_INT64, _REPEATED, ""),
        ("f", 4, _F.TYPE_FLOAT, _REPEATED, ""),
        ("b", 5, _F.TYPE_BOOL, _REPEATED, ""),
        ("type", 6, _F.TYPE_ENUM, _REPEATED, "DataType"),
        ("shape", 7, _F.TYPE_MESSAGE, _REPEATED, "TensorShapeProto"),
        ("tensor", 8, _F.TYPE_MESSAGE, _REPEATED, "TensorProto"),
    ],
    "AttrValue": [  # all in the oneof "value"
        ("list", 1, _F.TYPE_MESSAGE, _OPTIONAL, "AttrValue.ListValue"),
        ("s", 2, _F.TYPE_BYTES, _OPTIONAL, ""),
        ("i", 3, _F.TYPE_INT64, _OPTIONAL, ""),
        ("f", 4, _F.TYPE_FLOAT, _OPTIONAL, ""),
        ("b", 5, _F.TYPE_BOOL, _OPTIONAL, ""),
        ("type", 6, _F.TYPE_ENUM, _OPTIONAL, "DataType"),
        ("shape", 7, _F.TYPE_MESSAGE, _OPTIONAL, "TensorShapeProto"),
        ("tensor", 8, _F.TYPE_MESSAGE, _OPTIONAL, "TensorProto"),
        ("placeholder", 9, _F.TYPE_STRING, _OPTIONAL, ""),
    ],
    "NodeDef.AttrEntry": [  # map<string, AttrValue> attr = 5
        ("key", 1, _F.TYPE_STRING, _OPTIONAL, ""),
        ("value", 2, _F.TYPE_MESSAGE, _OPTIONAL, "AttrValue"),
    ],
    "NodeDef": [
        ("name", 1, _F.TYPE_STRING, _OPTIONAL, ""),
        ("op", 2, _F.TYPE_STRING, _OPTIONAL, ""),
        ("input", 3, _F.TYPE_STRING, _REPEATED, ""),
        ("device", 4, _F.TYPE_STRING, _OPTIONAL, ""),
        ("attr", 5, _F.TYPE_MESSAGE, _REPEATED, "NodeDef.AttrEntry"),
    ],
    "GraphDef": [("node", 1, _F.TYPE_MESSAGE, _REPEATED, "NodeDef")],  # versions, library: kept as unknown
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The schema subset as a proto3 file ``vstmon_tf_subset.proto`` in package ``tensorflow``."""
    file = descriptor_pb2.FileDescriptorProto(
        name="vstmon_tf_subset.proto", package="tensorflow", syntax="proto3"
    )
    enum = file.enum_type.add(name="DataType")
    for name, number in _DTYPES.items():
        enum.value.add(name=name, number=number)
    declared: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full_name in sorted(_MESSAGES, key=lambda n: n.count(".")):  # parents before nested types
        parent, _, short_name = full_name.rpartition(".")
        holder = declared[parent].nested_type if parent else file.message_type
        declared[full_name] = message = holder.add(name=short_name)
        if full_name == "AttrValue":
            message.oneof_decl.add(name="value")
        if full_name == "NodeDef.AttrEntry":
            message.options.map_entry = True
        for name, number, kind, label, type_name in _MESSAGES[full_name]:
            field = message.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = ".tensorflow." + type_name
            if full_name == "AttrValue":
                field.oneof_index = 0
    return file


@cache
def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow." + name))
        for name in ("GraphDef", "NodeDef")
    }


def graph_def_class() -> Any:
    """The ``tensorflow.GraphDef`` message class of the subset (``GraphDef.FromString(data)``)."""
    return _classes()["GraphDef"]


def node_def_class() -> Any:
    """The ``tensorflow.NodeDef`` message class of the subset."""
    return _classes()["NodeDef"]


def tensor_values(tensor: Any) -> np.ndarray:
    """A ``TensorProto``'s values as a float64 array of its shape (one listed value fills the shape, as in TF).

    Raises ValueError for a dtype or a value count that does not fit the shape.
    """
    shape = tuple(int(dim.size) for dim in tensor.tensor_shape.dim)
    count = math.prod(shape)
    if tensor.tensor_content:
        numpy_type = DTYPE_NUMPY.get(tensor.dtype)
        if numpy_type is None:
            raise ValueError(f"tensor dtype {tensor.dtype} is not supported")
        values = np.frombuffer(tensor.tensor_content, dtype=numpy_type).astype(np.float64)
    else:
        listed = next(
            (
                v
                for v in (
                    tensor.float_val,
                    tensor.double_val,
                    tensor.int_val,
                    tensor.int64_val,
                    tensor.bool_val,
                )
                if v
            ),
            [],
        )
        values = np.asarray(list(listed), dtype=np.float64)
        if values.size == 1 and count > 1:
            values = np.full(count, values[0])
    if values.size != count:
        raise ValueError(f"tensor holds {values.size} values for shape {shape}")
    return values.reshape(shape)


def _base(name: str) -> str:
    """The node an input refers to (``name:1`` -> ``name``, ``^name`` -> ``name``)."""
    return name.lstrip("^").split(":", 1)[0]


class FrozenGraph:
    """The nodes of a frozen graph by name, with the look-ups a reader of its weights needs.

    ``FrozenGraph.parse(data)`` raises ValueError (with the parser's reason) on bytes that are not a GraphDef.
    """

    def __init__(self, graph_def: Any) -> None:
        self.graph_def = graph_def
        self.nodes: list[Any] = list(graph_def.node)
        self.by_name: dict[str, Any] = {node.name: node for node in self.nodes}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for inp in node.input:
                self.consumers.setdefault(_base(inp), []).append(node)

    @classmethod
    def parse(cls, data: bytes) -> FrozenGraph:
        try:
            graph_def = graph_def_class().FromString(data)
        except (DecodeError, RuntimeError, ValueError):
            raise ValueError("the bytes do not parse as a GraphDef message") from None
        if any(not node.name or not node.op for node in graph_def.node):
            raise ValueError("a node without a name or op")
        return cls(graph_def)

    def resolve(self, name: str) -> str:
        """Follow Identity nodes (``.../read``) back to the node that produces the value."""
        for _ in range(1000):
            node = self.by_name.get(_base(name))
            if node is None or node.op != "Identity" or not node.input:
                break
            name = node.input[0]
        return _base(name)

    def const(self, name: str) -> np.ndarray | None:
        """The value of the Const that ``name`` resolves to (float64, its shape), or None if it is not one."""
        node = self.by_name.get(self.resolve(name))
        if node is None or node.op != "Const" or "value" not in node.attr:
            return None
        return tensor_values(node.attr["value"].tensor)

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of the Const that ``name`` resolves to, without decoding its values."""
        node = self.by_name.get(self.resolve(name))
        if node is None or node.op != "Const" or "value" not in node.attr:
            return None
        return tuple(int(dim.size) for dim in node.attr["value"].tensor.tensor_shape.dim)

    def input_of(self, name: str, index: int = 0) -> str:
        """The resolved name of input ``index`` of node ``name`` (KeyError if there is no such node/input)."""
        node = self.by_name[name]
        return self.resolve(node.input[index])
