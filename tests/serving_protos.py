"""TF Serving's text-proto schemas that tensorflow-serving-api does not ship, for tests.

``tensorflow_serving.config.model_server_config_pb2`` (ModelServerConfig) is in the pip package;
``BatchingParameters`` (``tensorflow_serving/servables/tensorflow/session_bundle_config.proto``)
and ``MonitoringConfig`` (``tensorflow_serving/config/monitoring_config.proto``) are not. Their
messages are declared here field by field (names, numbers, types as in those files of
tensorflow/serving) and parsed with protobuf's own text format parser, which rejects unknown
fields and wrong types as the server's ``ParseProtoTextFile`` does (model_servers/server.cc).
"""

from __future__ import annotations

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

_F = descriptor_pb2.FieldDescriptorProto
_INT64_VALUE = ".google.protobuf.Int64Value"
_STRING_VALUE = ".google.protobuf.StringValue"

# (name, number, type, type_name, repeated) per field, in the .proto files' order (fields 1-7
# of BatchingParameters; later releases add more, which the shipped file does not use).
_MESSAGES = {
    # session_bundle_config.proto, `message BatchingParameters`.
    "BatchingParameters": [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, _INT64_VALUE, False),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _INT64_VALUE, False),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _INT64_VALUE, False),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, _INT64_VALUE, False),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, _STRING_VALUE, False),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, None, True),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, None, False),
    ],
    # monitoring_config.proto.
    "PrometheusConfig": [
        ("enable", 1, _F.TYPE_BOOL, None, False),
        ("path", 2, _F.TYPE_STRING, None, False),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig", False),
    ],
}


def _classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="tfsd_tests/serving_protos.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )  # fmt: skip
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field, number, kind, type_name, repeated in fields:
            label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            f = message.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                f.type_name = type_name
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in _MESSAGES
    }


CLASSES = _classes()


def parse(message: str, text: str):
    """``text`` parsed as the text proto of ``message`` (raises text_format.ParseError)."""
    return text_format.Parse(text, CLASSES[message]())
