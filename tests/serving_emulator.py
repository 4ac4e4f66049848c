"""A stand-in for TF Serving's predict APIs over a loaded SavedModel, for client tests.

There is no ``tensorflow_model_server`` binary in the registries reachable here. This emulator
serves one SavedModel on 127.0.0.1 with the two request formats the real server accepts for
``Predict`` — REST row format (``{"instances": [...]}``, ``{"b64": ...}`` for binary strings; TF
Serving's tensorflow_serving/util/json_tensor.h) and gRPC ``PredictionService/Predict`` — and
answers as it does: ``{"predictions": [{output: value, ...}, ...]}`` (strings as text, errors as
``{"error": ...}`` with HTTP 400) and a ``PredictResponse``. It checks clients and payloads; it is
not the server.
"""

from __future__ import annotations

import base64
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf


def rest_instances_to_tensor(instances: list) -> tf.Tensor:
    """Row-format instances of a single-input signature to its input tensor."""
    values = [
        base64.b64decode(r["b64"]) if isinstance(r, dict) and "b64" in r else r for r in instances
    ]
    if values and all(isinstance(v, bytes) for v in values):
        return tf.constant(values, tf.string)
    return tf.constant(values, tf.float32)


def _jsonable(value: np.ndarray):
    if value.dtype == object:
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()]
    return value.tolist()


class ServingEmulator:
    """REST and gRPC predict endpoints for ``model_name``, on free loopback ports."""

    def __init__(self, saved_model_dir: str, model_name: str):
        self.model_name = model_name
        self.loaded = tf.saved_model.load(saved_model_dir)
        self._lock = threading.Lock()  # one inference at a time: signatures are not reentrant
        self.rest_port = self.grpc_port = None

    def predict(self, signature: str, inputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
        fn = self.loaded.signatures[signature or "serving_default"]
        with self._lock:
            return {k: v.numpy() for k, v in fn(**inputs).items()}

    # -- REST ------------------------------------------------------------------------------------

    def _rest_handler(self):
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802  (http.server's name)
                if self.path != f"/v1/models/{emulator.model_name}:predict":
                    return self._answer(404, {"error": f"Servable not found for {self.path}"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                signature = body.get("signature_name", "serving_default")
                try:
                    fn = emulator.loaded.signatures[signature]
                    (key,) = fn.structured_input_signature[1]
                    tensor = rest_instances_to_tensor(body["instances"])
                    out = emulator.predict(signature, {key: tensor})
                except (KeyError, ValueError, tf.errors.OpError) as e:
                    return self._answer(400, {"error": str(e).splitlines()[0]})
                rows = len(next(iter(out.values())))
                predictions = [{k: _jsonable(np.asarray(v[i])) for k, v in out.items()}
                               for i in range(rows)]  # fmt: skip
                return self._answer(200, {"predictions": predictions})

        return Handler

    # -- gRPC ------------------------------------------------------------------------------------

    def _grpc_servicer(self):
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        emulator = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802  (the RPC's name)
                if request.model_spec.name != emulator.model_name:
                    context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found")
                inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
                try:
                    out = emulator.predict(request.model_spec.signature_name, inputs)
                except tf.errors.OpError as e:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e).splitlines()[0])
                response = predict_pb2.PredictResponse()
                response.model_spec.CopyFrom(request.model_spec)
                for k, v in out.items():
                    response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
                return response

        return Servicer()

    # -- life cycle ------------------------------------------------------------------------------

    def __enter__(self) -> ServingEmulator:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._rest_handler())
        self.rest_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._http_thread.start()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            self._grpc_servicer(), self._grpc
        )
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        return self

    def __exit__(self, *exc) -> None:
        self._grpc.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()
        self._http_thread.join(timeout=10)
