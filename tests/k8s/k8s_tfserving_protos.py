"""TF Serving's config files read as TF Serving reads them: text protos of its own messages, parsed with
`google.protobuf.text_format`, which (like the server's TextFormat parser) rejects an unknown field, a misspelt
field name or a value of the wrong type.

- ModelServerConfig (--model_config_file): tensorflow_serving.config.model_server_config_pb2, from
  tensorflow-serving-api.
- BatchingParameters (--batching_parameters_file) and MonitoringConfig (--monitoring_config_file):
  tensorflow-serving-api 2.21.0 ships only tensorflow_serving/apis and tensorflow_serving/config, without
  monitoring_config_pb2 or servables/tensorflow/session_bundle_config_pb2. Their generated modules are used if a
  later release ships them; until then the two messages are built here from their definitions in TF Serving's
  sources (tensorflow_serving/config/monitoring_config.proto and
  tensorflow_serving/servables/tensorflow/session_bundle_config.proto): the same package, message, field names,
  numbers and types, registered in a descriptor pool of their own. Only BatchingParameters is taken from
  session_bundle_config.proto (the rest of that file needs TensorFlow's ConfigProto). A field a newer TF Serving
  adds to BatchingParameters would be rejected here until it is added below.
"""
from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

__all__ = ["BatchingParameters", "ModelServerConfig", "MonitoringConfig", "parse_config"]

# tensorflow_serving/config/monitoring_config.proto
MONITORING_CONFIG_PROTO = """
name: "tensorflow_serving/config/monitoring_config.proto"
package: "tensorflow.serving"
syntax: "proto3"
message_type {
  name: "PrometheusConfig"
  field { name: "enable" number: 1 label: LABEL_OPTIONAL type: TYPE_BOOL json_name: "enable" }
  field { name: "path" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING json_name: "path" }
}
message_type {
  name: "MonitoringConfig"
  field { name: "prometheus_config" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".tensorflow.serving.PrometheusConfig" json_name: "prometheusConfig" }
}
"""

# BatchingParameters from tensorflow_serving/servables/tensorflow/session_bundle_config.proto
BATCHING_PARAMETERS_PROTO = """
name: "tensorflow_serving/servables/tensorflow/session_bundle_config.proto"
package: "tensorflow.serving"
syntax: "proto3"
dependency: "google/protobuf/wrappers.proto"
message_type {
  name: "BatchingParameters"
  field { name: "max_batch_size" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" json_name: "maxBatchSize" }
  field { name: "batch_timeout_micros" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" json_name: "batchTimeoutMicros" }
  field { name: "max_enqueued_batches" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" json_name: "maxEnqueuedBatches" }
  field { name: "num_batch_threads" number: 4 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Int64Value" json_name: "numBatchThreads" }
  field { name: "thread_pool_name" number: 5 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.StringValue" json_name: "threadPoolName" }
  field { name: "allowed_batch_sizes" number: 6 label: LABEL_REPEATED type: TYPE_INT64
          json_name: "allowedBatchSizes" }
  field { name: "pad_variable_length_inputs" number: 7 label: LABEL_OPTIONAL type: TYPE_BOOL
          json_name: "padVariableLengthInputs" }
}
"""


def _built(file_proto: str, message: str):
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(text_format.Parse(file_proto, descriptor_pb2.FileDescriptorProto()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{message}"))


try:
    from tensorflow_serving.config.monitoring_config_pb2 import MonitoringConfig
except ImportError:
    MonitoringConfig = _built(MONITORING_CONFIG_PROTO, "MonitoringConfig")
try:
    from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters
except ImportError:
    BatchingParameters = _built(BATCHING_PARAMETERS_PROTO, "BatchingParameters")


def parse_config(text: str, message_class, source: str):
    """`text` parsed as a `message_class` text proto; a parse error fails the test, naming `source` (the file)."""
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as e:
        pytest.fail(f"{source}: not a valid {message_class.DESCRIPTOR.full_name}: {e}", pytrace=False)
