"""Query a ProbFace model served by TensorFlow Serving, over REST or gRPC.

    python examples/serving_client.py a.jpg b.jpg                      # REST, localhost:8501
    python examples/serving_client.py --protocol grpc a.jpg b.jpg      # gRPC, localhost:8500

The images go, encoded, to the ``from_image_bytes`` signature (decoding, resizing and standardising run in the
served graph); the returned ``mu`` / ``sigma_sq`` then go to ``compare_all`` for the MLS and cosine score of every
pair. Functions that *build* requests (``build_*``) are separate from the ones that *send* them (``rest_predict``,
``grpc_predict``), so a request can be inspected or tested without a server. REST needs only the standard
library and NumPy; gRPC needs ``tensorflow-serving-api`` (and TensorFlow for its tensor protos).
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

import numpy as np

MODEL_NAME = "probface"
IMAGE_INPUT = "image_bytes"


# ---- REST -----------------------------------------------------------------------------------------------------

def rest_url(host: str = "localhost", port: int = 8501, model_name: str = MODEL_NAME, version: int | None = None):
    """``http://HOST:PORT/v1/models/NAME[/versions/N]:predict``."""
    versioned = f"/versions/{version}" if version is not None else ""
    return f"http://{host}:{port}/v1/models/{model_name}{versioned}:predict"


def _b64(data: bytes) -> dict:
    # TF Serving's JSON convention for binary strings.
    return {"b64": base64.b64encode(data).decode("ascii")}


def build_rest_image_request(encoded_images, signature_name: str = "from_image_bytes", row_format: bool = True):
    """JSON body for ``from_image_bytes``: ``{"signature_name", "instances": [{"b64": ...}, ...]}`` (row format)
    or ``{"signature_name", "inputs": {"image_bytes": [{"b64": ...}, ...]}}`` (columnar)."""
    values = [_b64(bytes(data)) for data in encoded_images]
    if row_format:
        return {"signature_name": signature_name, "instances": values}
    return {"signature_name": signature_name, "inputs": {IMAGE_INPUT: values}}


def build_rest_compare_request(mu1, sigma_sq1, mu2, sigma_sq2, all_pairs: bool = True):
    """JSON body for ``compare_all`` (every pair, [N1, N2] scores) or ``compare`` (row i with row i, [N])."""
    inputs = {"mu1": mu1, "sigma_sq1": sigma_sq1, "mu2": mu2, "sigma_sq2": sigma_sq2}
    return {"signature_name": "compare_all" if all_pairs else "compare",
            "inputs": {k: np.asarray(v, np.float32).tolist() for k, v in inputs.items()}}


def parse_rest_response(body: dict) -> dict[str, np.ndarray]:
    """``{"predictions": [...]}`` (row format) or ``{"outputs": {...}}`` (columnar) -> {output name: array}."""
    if "error" in body:
        raise RuntimeError(f"TF Serving error: {body['error']}")
    if "outputs" in body:
        outputs = body["outputs"]
        return {k: np.asarray(v, np.float32) for k, v in outputs.items()} if isinstance(outputs, dict) \
            else {"output": np.asarray(outputs, np.float32)}
    if "predictions" in body:
        rows = body["predictions"]
        if rows and isinstance(rows[0], dict):  # several outputs: one dict per instance
            return {k: np.asarray([row[k] for row in rows], np.float32) for k in rows[0]}
        return {"output": np.asarray(rows, np.float32)}
    raise ValueError(f"not a TF Serving predict response: keys {sorted(body)}")


def rest_predict(request: dict, url: str, timeout: float = 30.0) -> dict[str, np.ndarray]:
    """POST ``request`` to a TF Serving REST endpoint and parse the answer."""
    data = json.dumps(request).encode("utf-8")
    http = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(http, timeout=timeout) as response:
            return parse_rest_response(json.loads(response.read().decode("utf-8")))
    except urllib.error.HTTPError as exc:  # Serving puts the reason in a JSON body
        raise RuntimeError(f"{url}: HTTP {exc.code}: {exc.read().decode('utf-8', 'replace')}") from exc


# ---- gRPC -----------------------------------------------------------------------------------------------------

def _predict_request(model_name: str, signature_name: str, version: int | None):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    return request


def build_grpc_image_request(encoded_images, model_name: str = MODEL_NAME,
                             signature_name: str = "from_image_bytes", version: int | None = None):
    """A ``PredictRequest`` with the encoded images as a string tensor [N] named ``image_bytes``."""
    import tensorflow as tf

    request = _predict_request(model_name, signature_name, version)
    images = [bytes(data) for data in encoded_images]
    request.inputs[IMAGE_INPUT].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)]))
    return request


def build_grpc_compare_request(mu1, sigma_sq1, mu2, sigma_sq2, all_pairs: bool = True,
                               model_name: str = MODEL_NAME, version: int | None = None):
    """A ``PredictRequest`` for ``compare_all`` (every pair) or ``compare`` (row i with row i)."""
    import tensorflow as tf

    request = _predict_request(model_name, "compare_all" if all_pairs else "compare", version)
    for name, value in (("mu1", mu1), ("sigma_sq1", sigma_sq1), ("mu2", mu2), ("sigma_sq2", sigma_sq2)):
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value, np.float32)))
    return request


def parse_grpc_response(response) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def grpc_predict(request, target: str = "localhost:8500", timeout: float = 30.0) -> dict[str, np.ndarray]:
    """Send a ``PredictRequest`` to TF Serving's gRPC port."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return parse_grpc_response(stub.Predict(request, timeout=timeout))


# ---- command line ---------------------------------------------------------------------------------------------

def embed_and_compare(encoded_images, protocol: str = "rest", host: str = "localhost", port: int | None = None,
                      model_name: str = MODEL_NAME, version: int | None = None):
    """(embedding outputs, compare_all outputs) for a list of encoded images."""
    if protocol == "rest":
        url = rest_url(host, port or 8501, model_name, version)
        embedded = rest_predict(build_rest_image_request(encoded_images), url)
        scores = rest_predict(build_rest_compare_request(embedded["mu"], embedded["sigma_sq"], embedded["mu"],
                                                         embedded["sigma_sq"]), url)
    elif protocol == "grpc":
        target = f"{host}:{port or 8500}"
        embedded = grpc_predict(build_grpc_image_request(encoded_images, model_name, version=version), target)
        scores = grpc_predict(build_grpc_compare_request(embedded["mu"], embedded["sigma_sq"], embedded["mu"],
                                                         embedded["sigma_sq"], model_name=model_name,
                                                         version=version), target)
    else:
        raise ValueError(f"protocol must be 'rest' or 'grpc', got {protocol!r}")
    return embedded, scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="JPEG / PNG files of aligned faces")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, help="default 8501 (REST) or 8500 (gRPC)")
    parser.add_argument("--model_name", default=MODEL_NAME)
    parser.add_argument("--version", type=int, help="a model version (default: the newest Serving loaded)")
    args = parser.parse_args(argv)
    encoded = []
    for path in args.images:
        with open(path, "rb") as f:
            encoded.append(f.read())
    try:
        embedded, scores = embed_and_compare(encoded, args.protocol, args.host, args.port, args.model_name,
                                             args.version)
    except (OSError, RuntimeError) as exc:
        print(f"serving_client: error: {exc}", file=sys.stderr)
        return 1
    for path, sigma_sq in zip(args.images, embedded["sigma_sq"]):
        # A D-dim sigma_sq is summarised by its mean; a 1-d one is printed as is.
        text = np.array2string(sigma_sq, precision=4) if sigma_sq.size == 1 else f"mean {sigma_sq.mean():.4f}"
        print(f"{path}: sigma_sq {text}")
    for i in range(len(args.images)):
        for j in range(i + 1, len(args.images)):
            print(f"{args.images[i]} vs {args.images[j]}: mls {scores['mls'][i, j]:.4f} "
                  f"cosine {scores['cosine'][i, j]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
