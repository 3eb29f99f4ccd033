"""The search service: ``finetunekit serve INDEX`` for an index built by ``finetunekit index``.

Endpoints::

    POST /search       {"top": 10, "text": "a dog on a beach"}  or  {"top": 10, "image": <base64>}
                       -> {"results": [{"rank": 1, "path": ..., "score": ..., "url": "/image/17"}, ...]}
    GET  /image/{i}    the i-th indexed image (the page shows the matches with it)
    GET  /health       {"status": "ok", "items": N}
    GET  /             a web page with a search box that shows the matching images

Every bad request (not JSON, an unknown field, both or neither of text and image, an empty text, a
top outside 1..100, an image that does not decode) is a 4xx answer ``{"error": "<one line>"}``.

Example::

    finetunekit index runs/flickr8k photos/ --output photos.index
    finetunekit serve photos.index --port 8000
    curl -s localhost:8000/search -H 'content-type: application/json' -d '{"top": 10, "text": "a dog running on the beach"}'
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from ...core.errors import FinetuneError
from .validation import RequestError, json_body, open_image

FIELDS = ("text", "image", "top")
MAX_TOP = 100
MAX_TEXT = 2000
MAX_BODY = 20 * 1024 * 1024

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>finetunekit search</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto} input[type=text]{width:60%;font-size:1.1em;padding:4px}
figure{display:inline-block;margin:4px;text-align:center;font-size:.8em} figure img{width:180px;height:180px;object-fit:cover}
.error{color:#b00}</style></head><body><h1>Search the images</h1>
<form id="f"><input type="text" id="q" placeholder="a dog running on the beach" autofocus> <button>search</button>
 or an image: <input type="file" id="img" accept="image/*"></form><p id="status"></p><div id="results"></div>
<script>
const show = (data) => {
  const box = document.getElementById('results'); box.innerHTML = '';
  for (const r of data.results) {
    const fig = document.createElement('figure'); const img = document.createElement('img');
    img.src = r.url; img.alt = r.path; const cap = document.createElement('figcaption');
    cap.textContent = r.rank + '. ' + r.score.toFixed(3); fig.append(img, cap); box.append(fig);
  }
};
const ask = async (body) => {
  const status = document.getElementById('status'); status.className = ''; status.textContent = 'searching...';
  const res = await fetch('/search', {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)});
  const data = await res.json();
  if (!res.ok) { status.className = 'error'; status.textContent = data.error; return; }
  status.textContent = data.results.length + ' images'; show(data);
};
document.getElementById('f').onsubmit = (e) => { e.preventDefault(); ask({text: document.getElementById('q').value, top: 24}); };
document.getElementById('img').onchange = (e) => {
  const file = e.target.files[0]; if (!file) return; const reader = new FileReader();
  reader.onload = () => ask({image: reader.result.split(',')[1], top: 24}); reader.readAsDataURL(file);
};
</script></body></html>"""


def _query(body: Any) -> tuple[str | None, Any, int]:
    if not isinstance(body, dict):
        raise RequestError(422, "the body must be a JSON object with 'text' or 'image'")
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; a search takes: {', '.join(FIELDS)}")
    text, image, top = body.get("text"), body.get("image"), body.get("top", 10)
    if (text is None) == (image is None):
        raise RequestError(422, "give one of 'text' (a query) or 'image' (base64 of a picture)")
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise RequestError(422, f"top: expected an integer from 1 to {MAX_TOP}, got {top!r}")
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise RequestError(422, "text: expected a non-empty string")
        if len(text) > MAX_TEXT:
            raise RequestError(413, f"text: {len(text)} characters; at most {MAX_TEXT}")
        return text, None, top
    if not isinstance(image, str):
        raise RequestError(422, "image: expected a base64 string")
    try:
        data = base64.b64decode(image, validate=True)
        picture = open_image(data)
        picture.load()
    except (binascii.Error, ValueError):
        raise RequestError(422, "image: not valid base64") from None
    except Exception as exc:  # noqa: BLE001  (Pillow raises many kinds for undecodable bytes)
        raise RequestError(422, f"image: cannot decode the picture ({type(exc).__name__})") from None
    return None, picture.convert("RGB"), top


def create_search_app(index: Any) -> FastAPI:
    """The app answering searches over ``index`` (a :class:`finetunekit.retrieval.index.Index`)."""
    model = index.model  # loaded (and checked against the index's run) before the first request
    lock = asyncio.Lock()  # one model call at a time: torch runs each on every core already
    app = FastAPI(title=f"finetunekit search: {Path(index.path).name}", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "items": len(index)}

    @app.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise RequestError(413, f"body of {len(body):,} bytes; at most {MAX_BODY:,}")
        text, picture, top = _query(json_body(body))
        async with lock:
            vectors = await asyncio.to_thread(model.embed_text, [text]) if text is not None else \
                await asyncio.to_thread(model.embed_images, [picture])
        found = index.search(vectors, top)[0]
        position = {p: i for i, p in enumerate(index.items)}
        return {"query": text if text is not None else "(image)",
                "results": [{"rank": r, "path": p, "score": round(s, 5), "url": f"/image/{position[p]}"}
                            for r, (p, s) in enumerate(found, start=1)]}

    @app.get("/image/{number}")
    async def image(number: int):
        if not 0 <= number < len(index):
            raise RequestError(404, f"no image {number}; the index holds {len(index)}")
        path = Path(index.items[number])
        if not path.is_file():
            raise RequestError(404, f"image {number} is no longer at {path}")
        return FileResponse(path)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    return app


def is_index(path: str | Path) -> bool:
    return (Path(path) / "index.json").is_file() and (Path(path) / "items.json").is_file()


def serve_search(path: str | Path, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    from ...retrieval.index import Index
    from .app import bind

    index = Index.open(path)
    if len(index) == 0:
        raise FinetuneError(f"{path}: the index is empty")
    app = create_search_app(index)
    sock = bind(host, port)
    print(f"serving the index {path} ({len(index)} images, run {index.meta['run_dir']}) on http://{host}:{sock.getsockname()[1]}/",
          flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)).run(sockets=[sock])
