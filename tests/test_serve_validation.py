"""Every bad request gets a 4xx, checked before the model sees it: a lone surrogate, JSON nested
200,000 deep, a 20000 x 20000 PNG (413 naming the pixel limit, not Pillow's own refusal), and a
fuzz of the HTTP layer (hypothesis: JSON of any shape and characters, raw bytes under every
content type, images of every mode and size) that finds no 500 and leaves the service answering."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from finetunekit.use.predict import load  # noqa: E402
from finetunekit.use.serving.app import JSON_FIELDS, ServeOptions  # noqa: E402
from service_client import call, post_form, post_json, running  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def text_service(text_run):
    options = ServeOptions(max_batch_size=8, max_wait_ms=5, max_body_bytes=1024 * 1024, max_inputs=8, max_text_chars=2000)
    with running(load(text_run), options) as (url, app):
        yield url


@pytest.fixture(scope="module")
def image_service(image_run):
    with running(load(image_run), ServeOptions(max_batch_size=4, max_image_pixels=512 * 512, max_inputs=4)) as (url, app):
        yield url


def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels: about 50 KB that decode to 1.2 GB of RGB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (1 + side // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def alive(url: str, field: str, value) -> None:
    assert call(url, "GET", "/health")[0] == 200
    assert post_json(url, {field: [value]})[0] == 200


def test_lone_surrogate_is_400_naming_the_text(text_service):
    status, answer = post_json(text_service, b'{"texts": ["good film", "\\ud800 bad"]}')
    assert status == 400 and set(answer) == {"error"}
    assert answer["error"].startswith("texts[1]: character 0 is a lone surrogate (\\ud800)"), answer
    status, answer = post_json(text_service, b'{"\\udfff": ["x"]}')
    assert status == 400 and "a field name in body" in answer["error"]
    alive(text_service, "texts", "the film was good")


def test_json_nested_200000_deep_is_400(text_service):
    for depth in (200_000, 50):
        status, answer = post_json(text_service, b'{"texts": ' + b"[" * depth + b"]" * depth + b"}")
        assert status == 400 and "nests deeper than the 8 levels a request has" in answer["error"], answer
    alive(text_service, "texts", "the film was good")


def test_20000_by_20000_png_is_413_naming_the_pixel_limit(image_service):
    bomb = png_bomb()
    status, answer = post_form(image_service, [("files", ("bomb.png", bomb, "image/png"))])
    assert status == 413 and answer["error"] == "files[0] (bomb.png): 20000x20000 pixels, more than the 262144 this service accepts"
    status, answer = post_json(image_service, {"images": [base64.b64encode(bomb).decode()]})
    assert status == 413 and answer["error"].startswith("images[0]: 20000x20000 pixels, more than the 262144")
    alive(image_service, "images", base64.b64encode(_image("RGB", (24, 24), "PNG")).decode())


# -- the fuzz --------------------------------------------------------------------------------------

# Every character, lone surrogates included (hypothesis leaves them out of text by default).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(JSON_FIELDS) | ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)
# Requests that pass the shape checks, so that what reaches the model is fuzzed too ...
WELL_SHAPED = st.fixed_dictionaries(
    {"texts": st.lists(ANY_TEXT.filter(str.strip), min_size=1, max_size=8)}, optional={"explain": st.booleans()})
# ... and any shape at all
REQUEST_SHAPES = WELL_SHAPED | JSON_VALUES | st.fixed_dictionaries(
    {"texts": st.lists(ANY_TEXT | JSON_VALUES, max_size=10)},
    optional={"explain": JSON_VALUES, "task": JSON_VALUES, "images": JSON_VALUES},
)
CONTENT_TYPES = st.sampled_from(["application/json", "multipart/form-data; boundary=x", "multipart/form-data",
                                 "text/plain", "application/x-www-form-urlencoded", ""])


@FUZZ
@given(payload=REQUEST_SHAPES)
def test_fuzzed_json_never_gets_500(text_service, payload):
    body = json.dumps(payload, allow_nan=True).encode()
    status, answer = call(text_service, "POST", "/predict", body, {"content-type": "application/json"})
    assert status < 500, (payload, answer)
    if status != 200:
        assert set(answer) == {"error"} and "\n" not in answer["error"]


@FUZZ
@given(body=st.binary(max_size=300), kind=CONTENT_TYPES, path=st.sampled_from(["/predict", "/predict?explain=1", "/health"]))
def test_fuzzed_bytes_never_get_500(text_service, body, kind, path):
    status, _ = call(text_service, "POST", path, body, {"content-type": kind} if kind else {})
    assert status < 500


def _image(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    """An image file of ``mode`` and ``size`` in ``fmt``; b"" for a pair Pillow cannot write."""
    from PIL import Image

    buffer = io.BytesIO()
    try:
        Image.new(mode, size).save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return b""
    return buffer.getvalue()


IMAGES = st.builds(
    _image,
    st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "I", "F", "I;16", "CMYK"]),
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.sampled_from(["PNG", "TIFF", "BMP", "GIF", "JPEG", "WEBP"]),
).filter(bool) | st.binary(max_size=200)


@FUZZ
@given(data=st.lists(st.one_of(IMAGES, st.builds(lambda b, n: b[:n], IMAGES, st.integers(0, 400))), min_size=1, max_size=3),
       as_form=st.booleans())
def test_fuzzed_images_never_get_500(image_service, data, as_form):
    if as_form:
        status, answer = post_form(image_service, [("files", (f"f{i}", d, "application/octet-stream")) for i, d in enumerate(data)])
    else:
        status, answer = post_json(image_service, {"images": [base64.b64encode(d).decode() for d in data]})
    assert status < 500, answer


def test_the_services_still_answer_after_the_fuzz(text_service, image_service):
    alive(text_service, "texts", "the film was good")
    alive(image_service, "images", base64.b64encode(_image("RGB", (24, 24), "PNG")).decode())
