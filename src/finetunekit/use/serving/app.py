"""The HTTP service: ``finetunekit serve RUN_DIR [--host 127.0.0.1] [--port 8000]``.

FastAPI on uvicorn. Endpoints::

    POST /predict    {"texts": ["...", ...]}  or  {"images": [base64, ...]}  or a multipart upload
                     (field "files"); optional "explain": true and "task": "<the run's task>"
    GET  /health     {"status": "ok"}
    GET  /metadata   task, labels, backbone, validation metrics, precision, batching and limits
    GET  /           a web page: paste a text or drop an image, see scores and the explanation
    GET  /openapi.json

Every input problem (a body over the limit, wrong JSON, an unknown field, an empty or too long
text, a file that is not an image, a corrupt image, inputs of the other modality, a task the run
does not have) is a 4xx answer ``{"error": "<one line>"}``; a model failure is a 500 whose error id
is logged with its traceback. Neither stops the service.

Example::

    finetunekit serve runs/sst2 --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"texts": ["a gripping film"]}'
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import socket
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ...core.errors import DataError, FinetuneError, did_you_mean

try:  # the one place the web stack is imported (the 'serve' extra)
    import python_multipart  # noqa: F401  (FastAPI's form parser)
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:
    raise FinetuneError(
        f"finetunekit serve needs FastAPI, uvicorn and python-multipart ({exc.name} is missing): pip install 'finetunekit[serve]'"
    ) from None

from .batching import DynamicBatcher
from .validation import RequestError, json_body, open_image

log = logging.getLogger("finetunekit.serve")

JSON_FIELDS = ("texts", "images", "explain", "task")
FORM_FIELDS = ("files", "texts", "explain", "task")


@dataclass
class ServeOptions:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_inputs: int = 64  # per request
    max_text_chars: int = 20_000
    max_image_pixels: int = 40_000_000
    max_explain_inputs: int = 8  # explanations need a backward pass each

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_body_bytes", "max_inputs", "max_text_chars", "max_image_pixels", "max_explain_inputs"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"{name.replace('_', '-')}: expected at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise FinetuneError(f"max-wait-ms: expected 0 or more, got {self.max_wait_ms}")


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class BodyLimit:
    """ASGI middleware: a body longer than ``limit`` bytes gets 413 before it is read, whether its
    Content-Length says so or (chunked uploads) its bytes reach the limit while arriving."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body larger than the {self.limit} bytes this service accepts (--max-body-mb)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.limit:
                    raise BodyLimit.TooLarge()
            return event

        async def tracked_send(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyLimit.TooLarge:
            if not started:
                await JSONResponse({"error": message}, status_code=413)(scope, receive, send)


class Service:
    """What the endpoints share: the predictor, its batcher, the run's description, the limits."""

    def __init__(self, predictor, options: ServeOptions) -> None:
        self.predictor = predictor
        self.options = options
        self.batcher = DynamicBatcher(predictor.predict_items, options.max_batch_size, options.max_wait_ms)
        self.run_dir = Path(predictor.run_dir)
        info = _read_json(self.run_dir / "finetunekit.json") or {}
        self.tasks = [predictor.task.type]  # the task's type (finetunekit.json keeps the whole task)
        self.backbone = info.get("backbone", {})
        self.metrics = _read_json(self.run_dir / "metrics.json") or {}
        self._explainer = None

    @property
    def input_field(self) -> str:
        return self.predictor.kind.request_field  # the JSON field that carries this modality's inputs

    def metadata(self) -> dict[str, Any]:
        keep = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "loss", "ece", "eval_set", "num_examples", "best_epoch")
        from ..explain import explanation_method

        return {
            "run_dir": str(self.run_dir),
            "task": self.tasks[0],
            "tasks": self.tasks,
            "modality": self.predictor.modality,
            "input_field": self.input_field,
            "text_columns": self.predictor.text_columns,  # set: a sentence-pair model, texts are [first, second]
            "labels": self.predictor.classes,
            "backbone": self.backbone,
            "precision": self.predictor.precision,
            "device": str(self.predictor.device),
            "validation_metrics": {k: self.metrics[k] for k in keep if k in self.metrics},
            "explanations": explanation_method(self.predictor),
            "batching": {"max_batch_size": self.options.max_batch_size, "max_wait_ms": self.options.max_wait_ms},
            "limits": {k: v for k, v in asdict(self.options).items() if k.startswith("max_") and k not in ("max_batch_size", "max_wait_ms")},
        }

    def explainer(self):
        if self._explainer is None:
            from ..explain import Explainer

            self._explainer = Explainer(self.predictor)
        return self._explainer

    # -- reading a request ---------------------------------------------------------------------

    async def parse(self, request: Request) -> tuple[list[Any], bool]:
        """(inputs ready for the model: texts or RGB images, explain?) or a RequestError."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            fields = await self._json_fields(request)
        elif kind == "multipart/form-data":
            fields = await self._form_fields(request)
        else:
            raise RequestError(415, f"content type {kind or '(none)'!r} not accepted: send application/json "
                               '({"texts": [...]} or {"images": [base64, ...]}) or multipart/form-data (files=...)')
        task = fields.get("task")
        if task is not None and task not in self.tasks:
            raise RequestError(422, f"task {str(task)[:60]!r}: this run has only {', '.join(self.tasks)}")
        explain = _flag(fields.get("explain", request.query_params.get("explain", False)))
        sent = [name for name in self.json_fields[:-2] if fields.get(name) is not None]  # the input fields given
        if not sent:
            raise RequestError(422, f"no inputs: send {self.input_field!r} (this run takes {self.predictor.modality})")
        if len(sent) > 1:
            raise RequestError(422, "send either 'texts' or images, not both")
        given = sent[0]
        if given != self.input_field:
            raise RequestError(422, f"this run's model takes {self.predictor.modality} ({self.input_field!r}), not {given}")
        inputs = fields[given]
        if not isinstance(inputs, list):
            raise RequestError(422, f"{given}: expected a list, got {type(inputs).__name__}")
        if not inputs:
            raise RequestError(422, f"{given}: empty list, nothing to predict")
        if len(inputs) > self.options.max_inputs:
            raise RequestError(413, f"{given}: {len(inputs)} inputs, more than the {self.options.max_inputs} per request this service accepts")
        if explain and len(inputs) > self.options.max_explain_inputs:
            raise RequestError(413, f"explain: at most {self.options.max_explain_inputs} inputs per request, got {len(inputs)}")
        return [self._decode(given, i, item) for i, item in enumerate(inputs)], explain

    @property
    def json_fields(self) -> tuple[str, ...]:
        """The JSON body's fields: the input fields (a modality's own after texts and images), then explain and task."""
        return (*JSON_FIELDS[:2], *([self.input_field] if self.input_field not in JSON_FIELDS else []), *JSON_FIELDS[2:])

    def _decode(self, field: str, index: int, item: Any) -> Any:
        """One input of a request, checked and decoded as the model takes it."""
        if field == "texts":
            return self._check_text(index, item)
        if field == "images":
            return self._image(f"images[{index}]", item)
        try:  # another modality decodes what its own field carries (Modality.decode_request)
            return self.predictor.kind.decode_request(f"{field}[{index}]", item)
        except DataError as exc:
            raise RequestError(422, str(exc)) from None

    async def _json_fields(self, request: Request) -> dict[str, Any]:
        fields = json_body(await request.body())  # JSON, no deeper than a request, every string Unicode
        if not isinstance(fields, dict):
            raise RequestError(422, f"body: expected a JSON object like {{{self.input_field!r}: [...]}}, got {type(fields).__name__}")
        for name in fields:
            if name not in self.json_fields:
                raise RequestError(422, f"unknown field {str(name)[:60]!r}{did_you_mean(str(name), self.json_fields)}; "
                                   f"fields: {', '.join(self.json_fields)}")
        images = fields.get("images")
        if isinstance(images, list):
            fields["images"] = [_b64(i, item) for i, item in enumerate(images)]
        return fields

    async def _form_fields(self, request: Request) -> dict[str, Any]:
        from starlette.datastructures import UploadFile

        try:
            form = await request.form(max_files=self.options.max_inputs + 1, max_fields=self.options.max_inputs + 8)
        except Exception as exc:  # noqa: BLE001 - the multipart parser raises several types on garbage
            raise RequestError(400, f"body is not valid multipart/form-data ({_one_line(str(exc) or type(exc).__name__, 120)})") from None
        fields: dict[str, Any] = {}
        for name in form:
            if name not in FORM_FIELDS:
                raise RequestError(422, f"unknown form field {name[:60]!r}{did_you_mean(name, FORM_FIELDS)}; "
                                   f"fields: {', '.join(FORM_FIELDS)}")
        files = form.getlist("files")
        if files:
            uploads = []
            for i, item in enumerate(files):
                if not isinstance(item, UploadFile):
                    raise RequestError(422, f"files[{i}]: expected an uploaded file, got a text field")
                uploads.append((f"files[{i}] ({_one_line(item.filename or 'unnamed', 80)})", await item.read()))
            # uploaded files are images, unless the model's modality has its own field (audio)
            fields["images" if self.input_field in JSON_FIELDS else self.input_field] = uploads
        if form.getlist("texts"):
            fields["texts"] = [t if isinstance(t, str) else None for t in form.getlist("texts")]
        for name in ("explain", "task"):
            if name in form:
                fields[name] = form[name]
        return fields

    def _check_text(self, index: int, text: Any) -> Any:
        if self.predictor.text_columns:  # a sentence-pair model: each input is [first, second]
            if not (isinstance(text, list) and len(text) == 2):
                raise RequestError(422, f"texts[{index}]: this model takes sentence pairs: expected [first, second], "
                                   f"got {type(text).__name__}")
            return (self._one_text(f"texts[{index}][0]", text[0]), self._one_text(f"texts[{index}][1]", text[1]))
        if isinstance(text, list):
            raise RequestError(422, f"texts[{index}]: this model takes single texts, not pairs")
        return self._one_text(f"texts[{index}]", text)

    def _one_text(self, where: str, text: Any) -> str:
        if not isinstance(text, str):
            raise RequestError(422, f"{where}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise RequestError(422, f"{where}: empty text")
        if len(text) > self.options.max_text_chars:
            raise RequestError(413, f"{where}: {len(text)} characters, more than the {self.options.max_text_chars} this service accepts")
        return text

    def _image(self, where: str, data: Any):
        from PIL import Image, UnidentifiedImageError

        if isinstance(data, tuple):  # (name, bytes) from an upload, or from decoded base64
            where, data = data
        if not data:
            raise RequestError(422, f"{where}: empty file")
        try:
            with open_image(data) as image:  # the header only; Pillow's own bomb guard would answer 422
                if image.width * image.height > self.options.max_image_pixels:
                    raise RequestError(413, f"{where}: {image.width}x{image.height} pixels, more than the "
                                       f"{self.options.max_image_pixels} this service accepts")
                image.load()  # decodes every byte: a truncated or corrupt file fails here, not in the model
                return image.convert("RGB")
        except UnidentifiedImageError:
            raise RequestError(422, f"{where}: not an image (no image format recognised)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise RequestError(422, f"{where}: corrupt or truncated image ({_one_line(str(exc) or type(exc).__name__, 120)})") from None

    # -- answering -------------------------------------------------------------------------------

    async def predict(self, inputs: list[Any], explain: bool) -> dict[str, Any]:
        try:
            probs = await self.batcher.submit(inputs)
            answers = self.predictor.answers(probs)
            if explain:
                explainer = self.explainer()
                targets = self.predictor.task.explain_targets(probs)
                explanations = await self.batcher.run_alone(lambda: explainer.explain_items(inputs, targets))
                for answer, explanation in zip(answers, explanations, strict=True):
                    answer["explanation"] = explanation.to_json()
        except RequestError:
            raise
        except Exception:  # noqa: BLE001 - a model failure answers 500 and the service goes on
            error_id = uuid.uuid4().hex[:12]
            log.exception("error id %s: prediction failed for a request of %d input(s)", error_id, len(inputs))
            raise RequestError(500, f"internal error while predicting (error id {error_id}; the service log has the details)") from None
        return {"task": self.tasks[0], "predictions": answers}


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    raise RequestError(422, f"explain: expected true or false, got {str(value)[:40]!r}")


def _b64(index: int, item: Any) -> tuple[str, bytes]:
    where = f"images[{index}]"
    if not isinstance(item, str):
        raise RequestError(422, f"{where}: expected a base64 string, got {type(item).__name__}")
    if item.startswith("data:") and "," in item:  # a data: URL as browsers make them
        item = item.split(",", 1)[1]
    try:
        return where, base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"{where}: not valid base64") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {
                "type": "object",
                "properties": {
                    "texts": {"type": "array", "items": {"type": "string"}, "description": "text runs"},
                    "images": {"type": "array", "items": {"type": "string", "format": "byte"}, "description": "image runs: base64 files"},
                    "explain": {"type": "boolean", "default": False},
                    "task": {"type": "string", "description": "the run's task (optional)"},
                },
                "additionalProperties": False,
            }},
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "texts": {"type": "array", "items": {"type": "string"}},
                    "explain": {"type": "boolean"},
                    "task": {"type": "string"},
                },
            }},
        },
    },
    "responses": {
        "200": {"description": "one answer per input, in order: label, score, scores per class (and explanation)"},
        "4XX": {"description": '{"error": "<one line>"}: the request cannot be answered as sent'},
        "500": {"description": '{"error": "..."}: the model failed; the error id is in the service log'},
    },
}


def create_app(predictor, options: ServeOptions | None = None) -> FastAPI:
    """The ASGI application for a loaded :class:`finetunekit.use.predict.Predictor`."""
    service = Service(predictor, options or ServeOptions())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    # docs_url/redoc_url off: those pages load their scripts from a CDN; /openapi.json stays.
    app = FastAPI(title=f"finetunekit: {service.run_dir.name}", version=_version(), docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
        return JSONResponse({"error": message.get(exc.status_code, _one_line(str(exc.detail)))}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        error_id = uuid.uuid4().hex[:12]
        log.error("error id %s: %s %s failed", error_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error (error id {error_id}; the service log has the details)"}, status_code=500)

    @app.get("/health", summary="liveness: the model is loaded and the batcher runs")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "batches": service.batcher.stats.batches, "inputs": service.batcher.stats.items}

    @app.get("/metadata", summary="task, labels, backbone, validation metrics, precision, batching, limits")
    async def metadata() -> dict[str, Any]:
        return service.metadata()

    @app.post("/predict", summary="labels with scores for each input (optionally with explanations)", openapi_extra=PREDICT_OPENAPI)
    async def predict(request: Request) -> dict[str, Any]:
        inputs, explain = await service.parse(request)
        return await service.predict(inputs, explain)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))

    app.add_middleware(BodyLimit, limit=service.options.max_body_bytes)
    return app


def _version() -> str:
    from ...version import __version__

    return __version__


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one), made here so the printed address is the real one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise FinetuneError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, options: ServeOptions | None = None,
          threads: int | None = None, device: str | None = None, log_level: str = "info") -> None:
    """Load the run and answer requests until interrupted (Ctrl-C or SIGTERM); ``run_dir`` may
    also be an image index (``finetunekit index``): the search service then answers."""
    import torch

    from .search import is_index, serve_search

    if is_index(run_dir):
        return serve_search(run_dir, host, port, log_level)

    from ..predict import load
    from ...core.runtime import usable_cores

    # Intra-op threads: every core by default; the one inference thread uses them all per batch.
    torch.set_num_threads(threads or usable_cores())
    predictor = load(run_dir, device=device)
    app = create_app(predictor, options)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {run_dir} ({predictor.modality}, {len(predictor.classes)} labels, {predictor.precision}, "
          f"{torch.get_num_threads()} threads) on http://{shown}:{sock.getsockname()[1]}/", flush=True)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
