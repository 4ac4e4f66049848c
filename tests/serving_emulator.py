"""A stand-in for TF Serving's predict APIs over a loaded SavedModel, for client tests.

There is no ``tensorflow_model_server`` binary in the registries reachable here. This emulator
serves one SavedModel on 127.0.0.1 with the two request formats the real server accepts for
``Predict`` — REST row format (``{"instances": [...]}``, ``{"b64": ...}`` for binary strings; TF
Serving's tensorflow_serving/util/json_tensor.h) and gRPC ``PredictionService/Predict`` — and
answers as it does: ``{"predictions": [{output: value, ...}, ...]}`` (strings as text, errors as
``{"error": ...}`` with HTTP 400) and a ``PredictResponse``. It checks clients and payloads; it is
not the server.

What the server does with ``--enable_batching`` is emulated from its source
(``tensorflow_serving/batching/batching_session.cc`` and ``shared_batch_scheduler.h``): a request
larger than ``max_batch_size`` is refused ("Task size N is larger than maximum input batch size
M"), and `run_batch` merges requests as ``BatchingSession::ProcessBatch`` does (inputs
concatenated along dimension 0, padded with the last request's first row up to an allowed batch
size, one ``Session::Run``, outputs split by request; a failed run gives every request its
status). ``GET /v1/models/<name>`` answers the model status as ``GetModelStatus`` does.
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
    if value.dtype == object or value.dtype.kind == "S":
        if value.ndim == 0:  # a scalar string per row (e.g. `error`)
            v = value.item()
            return v.decode("utf-8") if isinstance(v, bytes) else v
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()]
    return value.tolist()


class ServingEmulator:
    """REST and gRPC predict endpoints for ``model_name``, on free loopback ports."""

    def __init__(self, saved_model_dir: str, model_name: str, max_batch_size: int | None = None):
        self.model_name = model_name
        self.loaded = tf.saved_model.load(saved_model_dir)
        self._lock = threading.Lock()  # one inference at a time: signatures are not reentrant
        self.rest_port = self.grpc_port = None
        self.max_batch_size = max_batch_size  # None: no batching, no limit
        self.request_sizes: list[int] = []  # batch size of every predict request answered

    def check_task_size(self, inputs: dict[str, tf.Tensor]) -> None:
        """The batching scheduler's limit (shared_batch_scheduler.h, ``Schedule``)."""
        size = int(next(iter(inputs.values())).shape[0])
        if self.max_batch_size is not None and size > self.max_batch_size:
            raise tf.errors.InvalidArgumentError(
                None, None, f"Task size {size} is larger than maximum input batch size "
                f"{self.max_batch_size}",
            )  # fmt: skip

    def predict(self, signature: str, inputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
        self.check_task_size(inputs)
        fn = self.loaded.signatures[signature or "serving_default"]
        with self._lock:
            out = {k: v.numpy() for k, v in fn(**inputs).items()}
        self.request_sizes.append(int(next(iter(inputs.values())).shape[0]))
        return out

    def run_batch(
        self, signature: str, requests: list[dict[str, tf.Tensor]], allowed_batch_sizes=()
    ) -> list[dict[str, np.ndarray] | Exception]:
        """Requests merged into one batch and run once, as ``BatchingSession::ProcessBatch``.

        Returns per request its outputs, or the batch's error (the same for every request).
        """
        for inputs in requests:
            self.check_task_size(inputs)
        sizes = [int(next(iter(r.values())).shape[0]) for r in requests]
        total = sum(sizes)
        # MergeInputTensors: pad up to the lowest allowed batch size with the first row of the
        # last task's tensor, then concatenate each named input.
        padded = min([b for b in allowed_batch_sizes if b >= total], default=total)
        merged = {}
        for key in requests[0]:
            parts = [r[key] for r in requests]
            parts += [requests[-1][key][:1]] * (padded - total)
            merged[key] = tf.concat(parts, axis=0)
        fn = self.loaded.signatures[signature]
        try:
            with self._lock:
                out = {k: v.numpy() for k, v in fn(**merged).items()}
        except tf.errors.OpError as e:
            return [e] * len(requests)  # ProcessBatch: one status for every task
        # SplitOutputTensors: by task sizes (the padding rows are dropped).
        bounds = np.cumsum([0, *sizes])
        return [{k: v[a:b] for k, v in out.items()} for a, b in zip(bounds[:-1], bounds[1:])]

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

            def do_GET(self):  # noqa: N802  (http.server's name)
                # GetModelStatus over REST (tensorflow_serving/apis/get_model_status.proto).
                if self.path != f"/v1/models/{emulator.model_name}":
                    return self._answer(404, {"error": f"Servable not found for {self.path}"})
                status = {"error_code": "OK", "error_message": ""}
                version = {"version": "1", "state": "AVAILABLE", "status": status}
                return self._answer(200, {"model_version_status": [version]})

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
