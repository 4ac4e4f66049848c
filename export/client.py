"""Query a TF Serving model exported by tfsd, over REST or gRPC, and print the top classes.

    python export/client.py --model=cifar IMAGE.jpg [IMAGE.png ...]             # REST, :8501
    python export/client.py --model=cifar --protocol=grpc --port=8500 IMAGE.jpg  # gRPC

Images are sent as they are on disk (JPEG/PNG/BMP/GIF bytes) to the ``serving_bytes`` signature,
which decodes them and applies the run's eval preprocessing inside the server: no client-side
resizing or normalisation. REST sends ``{"signature_name": "serving_bytes", "instances":
[{"b64": ...}, ...]}`` (TF Serving decodes ``b64`` objects into the string input); gRPC sends a
``PredictRequest`` through ``PredictionServiceStub`` from tensorflow-serving-api.

For each image it prints the top-k class names (or indices when the export has no names) and
scores. An image the server refused (``valid`` false: over the export's size limits, not an
image, corrupt) is reported on stderr with the server's ``error`` for it; the others are still
printed, and the exit status is 1.

Images are sent in requests of at most the server's ``max_batch_size`` (read from
``batching_parameters.txt`` beside this script, the file ``docker-compose.yml`` mounts): TF
Serving rejects a larger request with "Task size N is larger than maximum input batch size"
(tensorflow/serving#1401).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

SIGNATURE = "serving_bytes"
INPUT_KEY = "image_bytes"
BATCHING_PARAMETERS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   "batching_parameters.txt")  # fmt: skip


def read_max_batch_size(path: str = BATCHING_PARAMETERS) -> int:
    """``max_batch_size`` of a ``BatchingParameters`` text proto (the server's request limit).

    Read with a pattern, not the proto: the message is not in tensorflow-serving-api, and the
    REST client needs no TensorFlow (tests/test_serving_client.py parses the file with the
    schema and checks this function agrees).
    """
    with open(path, encoding="utf-8") as f:
        text = "\n".join(line.split("#", 1)[0] for line in f)
    found = re.findall(r"^\s*max_batch_size\s*:?\s*\{\s*value\s*:\s*(\d+)\s*\}", text, re.M)
    if len(found) != 1 or int(found[0]) < 1:
        raise ValueError(f"{path}: expected one max_batch_size {{ value: N }}, found {found}.")
    return int(found[0])


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive pieces of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


# -------------------------------------------------------------------------------------------------
# REST.
# -------------------------------------------------------------------------------------------------


def rest_body(blobs: Sequence[bytes], signature: str = SIGNATURE) -> dict[str, Any]:
    """The JSON body of a REST predict request (row format, binary values as ``b64``)."""
    instances = [{"b64": base64.b64encode(b).decode("ascii")} for b in blobs]
    return {"signature_name": signature, "instances": instances}


def rest_predict(
    host: str, port: int, model: str, blobs: Sequence[bytes], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """POSTs to ``/v1/models/<model>:predict``; returns one prediction dict per image."""
    url = f"http://{host}:{port}/v1/models/{model}:predict"
    data = json.dumps(rest_body(blobs)).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        # TF Serving answers errors as {"error": "..."} with a 4xx/5xx status.
        detail = e.read().decode("utf-8", "replace")
        raise RuntimeError(f"{url}: HTTP {e.code}: {detail}") from e
    except urllib.error.URLError as e:
        raise RuntimeError(f"{url}: cannot reach the server ({e.reason}).") from e
    if "predictions" not in answer:
        raise RuntimeError(f"{url}: unexpected answer {str(answer)[:300]}")
    return answer["predictions"]


# -------------------------------------------------------------------------------------------------
# gRPC.
# -------------------------------------------------------------------------------------------------


def grpc_request(model: str, blobs: Sequence[bytes], signature: str = SIGNATURE):
    """A ``tensorflow.serving.PredictRequest`` carrying the encoded images."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs[INPUT_KEY].CopyFrom(tf.make_tensor_proto(list(blobs), dtype=tf.string))
    return request


def grpc_predictions(response) -> list[dict[str, Any]]:
    """A ``PredictResponse`` as REST-style prediction dicts (one per image)."""
    import tensorflow as tf

    rows = {k: tf.make_ndarray(v).tolist() for k, v in response.outputs.items()}
    return [{k: v[i] for k, v in rows.items()} for i in range(len(rows["classes"]))]


def grpc_predict(
    host: str, port: int, model: str, blobs: Sequence[bytes], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Calls ``PredictionService/Predict``; returns one prediction dict per image."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    # Encoded photos can exceed gRPC's 4 MB default message size.
    options = [("grpc.max_send_message_length", 64 << 20),
               ("grpc.max_receive_message_length", 64 << 20)]  # fmt: skip
    with grpc.insecure_channel(f"{host}:{port}", options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(grpc_request(model, blobs), timeout=timeout)
        except grpc.RpcError as e:
            raise RuntimeError(f"{host}:{port}: {e.code().name}: {e.details()}") from e
    return grpc_predictions(response)


# -------------------------------------------------------------------------------------------------
# Command line.
# -------------------------------------------------------------------------------------------------


def format_prediction(path: str, prediction: dict[str, Any]) -> str:
    """``path`` then one ``name  score`` line per top-k class."""
    names = prediction.get("class_names")
    lines = [path]
    for i, (cls, score) in enumerate(zip(prediction["classes"], prediction["scores"])):
        name = names[i] if names is not None else f"class {cls}"
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        lines.append(f"  {name:<24} {score:.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, GIF)")
    parser.add_argument("--model", required=True, help="model name in TF Serving")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--port", type=int, help="default: 8501 for REST, 8500 for gRPC")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds")
    parser.add_argument(
        "--max_batch_size", type=int, default=None,
        help="images per request; default: max_batch_size of the batching_parameters.txt "
        "beside this script (the server's limit)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    batch = args.max_batch_size or read_max_batch_size()
    if batch < 1:
        parser.error("--max_batch_size must be positive")
    port = args.port or (8501 if args.protocol == "rest" else 8500)
    blobs = []
    for path in args.images:
        try:
            with open(path, "rb") as f:
                blobs.append(f.read())
        except OSError as e:
            print(f"client: cannot read {path}: {e}", file=sys.stderr)
            return 2
    predict = rest_predict if args.protocol == "rest" else grpc_predict
    predictions = []
    try:
        for piece in chunks(blobs, batch):
            predictions += predict(args.host, port, args.model, piece, timeout=args.timeout)
    except RuntimeError as e:
        print(f"client: {e}", file=sys.stderr)
        return 1
    refused = 0
    for path, prediction in zip(args.images, predictions):
        if not prediction_is_valid(prediction):
            refused += 1
            print(f"client: {path}: refused by the server: {prediction_error(prediction)}",
                  file=sys.stderr)  # fmt: skip
            continue
        print(format_prediction(path, prediction))
    return 1 if refused else 0


def prediction_is_valid(prediction: dict[str, Any]) -> bool:
    """The export's per-image ``valid`` output (exports without it: always valid)."""
    valid = prediction.get("valid", True)
    return bool(valid[0] if isinstance(valid, list) else valid)


def prediction_error(prediction: dict[str, Any]) -> str:
    error = prediction.get("error", "")
    return error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)


if __name__ == "__main__":
    sys.exit(main())
