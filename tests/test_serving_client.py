"""examples/serving_client.py: the requests it builds, decoded as TF Serving would, reproduce direct signature calls.

No server and no network: REST bodies go through a JSON round trip and a small decoder of TF Serving's JSON
conventions written here; gRPC requests go through a protobuf wire round trip and ``tf.make_ndarray``.
"""
import base64
import importlib.util
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from probface_tf import export as E
from probface_tf.models.probface import build_probface

CLIENT_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "serving_client.py")


def load_client():
    spec = importlib.util.spec_from_file_location("serving_client", CLIENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = load_client()


def encode(array, fmt):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    model = build_probface(image_size=(32, 32), backbone_filters=[8, 8, 16, 16], backbone_blocks=[1, 1, 1, 1],
                           embedding_size=16)
    model.get_layer("UncertaintyModule").scale_and_shift.alpha.assign(1.5)  # sigma_sq that varies per image
    path = E.export_saved_model(model, str(tmp_path_factory.mktemp("serving")))
    rng = np.random.default_rng(0)
    images = [encode(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8), "PNG"),
              encode(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "JPEG"),
              encode(np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((6, 6, 1))).astype(np.uint8), "PNG")]
    return tf.saved_model.load(path).signatures, images


# ---- an independent reading of TF Serving's JSON request format ------------------------------------------------

def decode_json_value(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [decode_json_value(v) for v in value]
    return value


def serving_decode(body, signatures):
    """(signature, {input: tensor}) as TF Serving reads a predict body (row or columnar format)."""
    signature = signatures[body.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]
    if "instances" in body:
        rows = body["instances"]
        named = isinstance(rows[0], dict) and set(rows[0]) == set(specs)
        if len(specs) == 1 and not named:
            columns = {next(iter(specs)): [decode_json_value(r) for r in rows]}
        else:
            columns = {k: [decode_json_value(r[k]) for r in rows] for k in specs}
    else:
        inputs = body["inputs"]
        columns = {k: decode_json_value(v) for k, v in inputs.items()} if isinstance(inputs, dict) and \
            set(inputs) == set(specs) else {next(iter(specs)): decode_json_value(inputs)}
    return signature, {k: tf.constant(v, dtype=specs[k].dtype) for k, v in columns.items()}


def serving_respond(body, signatures):
    """What TF Serving answers: row format for ``instances`` requests, columnar for ``inputs``."""
    signature, feed = serving_decode(body, signatures)
    outputs = {k: v.numpy() for k, v in signature(**feed).items()}
    if "instances" in body:
        n = len(next(iter(outputs.values())))
        return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(n)]}
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


def direct(signatures, images):
    return {k: v.numpy() for k, v in signatures["from_image_bytes"](image_bytes=tf.constant(images)).items()}


def brute_force_scores(mu, s):
    n = len(mu)
    mls, cos = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            a, b = mu[i].astype(np.float64), mu[j].astype(np.float64)
            mutual = float(s[i, 0]) + float(s[j, 0])
            mls[i, j] = -(2 * (1 - a @ b) / (1e-10 + mutual) + np.log(mutual))
            cos[i, j] = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    return mls, cos


# ---- REST ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row_format", [True, False])
def test_rest_image_request_feeds_the_signature(served, row_format):
    signatures, images = served
    body = json.loads(json.dumps(client.build_rest_image_request(images, row_format=row_format)))
    assert body["signature_name"] == "from_image_bytes"
    values = body["instances"] if row_format else body["inputs"]["image_bytes"]
    assert [base64.b64decode(v["b64"]) for v in values] == images
    signature, feed = serving_decode(body, signatures)
    got = {k: v.numpy() for k, v in signature(**feed).items()}
    want = direct(signatures, images)
    assert set(got) == set(E.OUTPUT_KEYS)
    for key in E.OUTPUT_KEYS:
        np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0)
    assert np.ptp(want["sigma_sq"]) > 1e-4  # the images really differ in uncertainty


@pytest.mark.parametrize("all_pairs", [True, False])
def test_rest_compare_request_feeds_the_signature(served, all_pairs):
    signatures, images = served
    emb = direct(signatures, images)
    body = json.loads(json.dumps(client.build_rest_compare_request(emb["mu"], emb["sigma_sq"], emb["mu"][::-1],
                                                                   emb["sigma_sq"][::-1], all_pairs=all_pairs)))
    assert body["signature_name"] == ("compare_all" if all_pairs else "compare")
    signature, feed = serving_decode(body, signatures)
    got = {k: v.numpy() for k, v in signature(**feed).items()}
    mls, cos = brute_force_scores(np.concatenate([emb["mu"], emb["mu"][::-1]]),
                                  np.concatenate([emb["sigma_sq"], emb["sigma_sq"][::-1]]))
    n = len(images)
    mls, cos = mls[:n, n:], cos[:n, n:]  # set 1 against set 2
    if not all_pairs:
        mls, cos = np.diag(mls), np.diag(cos)
    np.testing.assert_allclose(got["mls"], mls, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["cosine"], cos, atol=1e-5, rtol=0)


def test_parse_rest_response_reads_both_formats(served):
    signatures, images = served
    want = direct(signatures, images)
    for body in (serving_respond(client.build_rest_image_request(images), signatures),
                 serving_respond(client.build_rest_image_request(images, row_format=False), signatures)):
        got = client.parse_rest_response(json.loads(json.dumps(body)))
        for key in E.OUTPUT_KEYS:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(RuntimeError, match="TF Serving error: .*not an image"):
        client.parse_rest_response({"error": "not an image"})


class FakeServing:
    """Stands in for ``urllib.request.urlopen``: answers a POST as TF Serving would, from the SavedModel."""

    def __init__(self, signatures):
        self.signatures, self.requests = signatures, []

    def __call__(self, request, timeout=None):
        self.requests.append(request)
        answer = json.dumps(serving_respond(json.loads(request.data.decode("utf-8")), self.signatures))
        return _Response(answer.encode("utf-8"))


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_rest_predict_and_command_line(served, monkeypatch, tmp_path, capsys):
    signatures, images = served
    fake = FakeServing(signatures)
    monkeypatch.setattr(client.urllib.request, "urlopen", fake)
    url = client.rest_url("models.example", 8501, "probface", version=3)
    assert url == "http://models.example:8501/v1/models/probface/versions/3:predict"
    got = client.rest_predict(client.build_rest_image_request(images), url)
    (sent,) = fake.requests
    assert sent.full_url == url and sent.get_method() == "POST"
    assert sent.get_header("Content-type") == "application/json"
    want = direct(signatures, images)
    np.testing.assert_array_equal(got["mu"], want["mu"])

    paths = []
    for i, data in enumerate(images):
        paths.append(str(tmp_path / f"face{i}.img"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    assert client.main(paths) == 0
    lines = capsys.readouterr().out.splitlines()
    mls, cos = brute_force_scores(want["mu"], want["sigma_sq"])
    assert f"{paths[0]} vs {paths[2]}: mls {mls[0, 2]:.4f} cosine {cos[0, 2]:.4f}" in lines
    assert f"{paths[1]}: sigma_sq [{want['sigma_sq'][1, 0]:.4f}]" in lines
    assert fake.requests[-1].full_url == "http://localhost:8501/v1/models/probface:predict"


# ---- gRPC ------------------------------------------------------------------------------------------------------

def test_grpc_image_request_feeds_the_signature(served):
    from tensorflow_serving.apis import predict_pb2

    signatures, images = served
    request = client.build_grpc_image_request(images, model_name="faces", version=7)
    wire = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert (wire.model_spec.name, wire.model_spec.signature_name, wire.model_spec.version.value) == (
        "faces", "from_image_bytes", 7)
    assert list(wire.inputs) == ["image_bytes"]
    array = tf.make_ndarray(wire.inputs["image_bytes"])
    assert array.shape == (3,) and list(array) == images
    got = signatures[wire.model_spec.signature_name](image_bytes=tf.constant(array))
    want = direct(signatures, images)
    for key in E.OUTPUT_KEYS:
        np.testing.assert_allclose(got[key].numpy(), want[key], atol=1e-6, rtol=0)


def test_grpc_compare_request_and_predict(served, monkeypatch):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    signatures, images = served
    emb = direct(signatures, images)

    class FakeStub:  # answers from the SavedModel, as the Serving process would
        def __init__(self, channel):
            pass

        def Predict(self, request, timeout=None):  # noqa: N802 - the gRPC method name
            request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
            feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            response = predict_pb2.PredictResponse()
            for k, v in signatures[request.model_spec.signature_name](**feed).items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
            return response

    monkeypatch.setattr(prediction_service_pb2_grpc, "PredictionServiceStub", FakeStub)
    request = client.build_grpc_compare_request(emb["mu"], emb["sigma_sq"], emb["mu"], emb["sigma_sq"])
    assert request.model_spec.signature_name == "compare_all" and not request.model_spec.HasField("version")
    got = client.grpc_predict(request, "localhost:8500")
    mls, cos = brute_force_scores(emb["mu"], emb["sigma_sq"])
    np.testing.assert_allclose(got["mls"], mls, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["cosine"], cos, atol=1e-5, rtol=0)
    embedded, scores = client.embed_and_compare(images, protocol="grpc")
    np.testing.assert_array_equal(embedded["sigma_sq"], emb["sigma_sq"])
    np.testing.assert_allclose(scores["mls"], mls, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="protocol must be 'rest' or 'grpc'"):
        client.embed_and_compare(images, protocol="http")
