"""`saexplain serve`: server-rendered pages (Jinja2, autoescaped) and the JSON API under /api/ (pydantic
models, OpenAPI at /docs), read-only on the store. No request path reaches the filesystem: pages and API take
run ids and feature ids (integers); the only static file is a fixed resource of the package."""

from __future__ import annotations

import json
import math
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from saexplain.errors import NotFound, SaexplainError
from saexplain.web.probe import (
    MAX_CHARS,
    FeaturesResult,
    LensResult,
    ProbeOff,
    ProbeResult,
    ProbeService,
    TooMany,
)
from saexplain.web.read import FeaturePage, FeatureRow, Reader, RunPage, RunRow, SearchHit, TraceView
from saexplain.web.search import SearchIndex

_TEMPLATES = resources.files("saexplain.web") / "templates"


class ProbeRequest(BaseModel):
    text: str = Field(..., max_length=MAX_CHARS)
    feature: int | None = None


def create_app(store_path: str | Path, probe: bool = True, device: str = "cpu") -> FastAPI:
    reader = Reader(store_path)
    service = ProbeService(enabled=probe)
    index = SearchIndex(reader.db)

    def subject_of(run_id: int) -> dict:  # an explain/score run's subject, or a cache run's
        with reader.db() as db:
            cfg = json.loads(db.run(run_id)["config_json"])
        return {**cfg.get("subject", {}), "device": device}

    @asynccontextmanager
    async def lifespan(_app):  # load the latest run's subject in the background: the first probe is then quick
        runs = reader.runs()
        if runs:
            service.warm(subject_of(runs[0].id))
        yield

    app = FastAPI(title="saexplain", summary="SAE feature explanations, their scores and traces (read-only)",
                  lifespan=lifespan)
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    templates.env.filters["shade"] = lambda a, top: f"{min(1.0, abs(a) / top) if top > 0 else 0.0:.3f}"
    templates.env.filters["num"] = _num
    templates.env.globals["histogram_bars"] = histogram_bars

    @app.exception_handler(SaexplainError)
    async def _error(request: Request, e: SaexplainError):
        status = 429 if isinstance(e, TooMany) else 503 if isinstance(e, ProbeOff) else \
            404 if isinstance(e, NotFound) else 400
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(e)}, status_code=status)
        return templates.TemplateResponse(request, "error.html", {"message": str(e)}, status_code=status)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # ------------------------------------------------------------------------------------------ static
    @app.get("/static/app.js", include_in_schema=False)
    def app_js() -> Response:
        return Response((_TEMPLATES / "app.js").read_text(), media_type="text/javascript")

    @app.get("/static/app.css", include_in_schema=False)
    def app_css() -> Response:
        return Response((_TEMPLATES / "app.css").read_text(), media_type="text/css")

    # ------------------------------------------------------------------------------------------- API
    @app.get("/api/runs", response_model=list[RunRow])
    def api_runs():
        return reader.runs()

    @app.get("/api/runs/{run_id}", response_model=RunPage)
    def api_run(run_id: int):
        return reader.run(run_id)

    @app.get("/api/runs/{run_id}/features", response_model=list[FeatureRow])
    def api_features(run_id: int, sort: str = "feature", scorer: str | None = None, method: str | None = None):
        return reader.feature_rows(run_id, sort, scorer, method)

    @app.get("/api/runs/{run_id}/features/{feature}", response_model=FeaturePage)
    def api_feature(run_id: int, feature: int):
        return reader.feature(run_id, feature)

    @app.get("/api/saes/{cache_run}/features/{feature}", response_model=FeaturePage)
    def api_sae_feature(cache_run: int, feature: int):
        return reader.sae_feature(cache_run, feature)

    @app.get("/api/runs/{run_id}/features/{feature}/traces/{method}", response_model=TraceView)
    def api_trace(run_id: int, feature: int, method: str):
        return reader.trace(run_id, feature, method)

    @app.get("/api/runs/{run_id}/features/{feature}/lens", response_model=LensResult)
    def api_lens(run_id: int, feature: int):
        return service.lens(subject_of(run_id), feature)

    @app.get("/api/runs/{run_id}/probe-status")
    def api_probe_status(run_id: int) -> dict:
        return {"status": service.status(subject_of(run_id)), "max_chars": MAX_CHARS}

    @app.post("/api/runs/{run_id}/probe", response_model=ProbeResult)
    def api_probe(run_id: int, body: ProbeRequest, request: Request):
        if body.feature is None:
            raise SaexplainError("a feature id is needed")
        service.check_rate(request.client.host if request.client else "?")
        return service.probe(subject_of(run_id), body.feature, body.text)

    @app.post("/api/runs/{run_id}/probe-features", response_model=FeaturesResult)
    def api_probe_features(run_id: int, body: ProbeRequest, request: Request):
        service.check_rate(request.client.host if request.client else "?")
        return service.features(subject_of(run_id), body.text)

    @app.get("/api/search", response_model=list[SearchHit])
    def api_search(q: str, limit: int = 50):
        return index.search(q, min(max(limit, 1), 200))

    @app.get("/runs/{run_id}/export/{fmt}")
    def export(run_id: int, fmt: str):
        from saexplain.export import export_files, formats, zip_bytes

        if fmt not in formats():
            raise NotFound(f"no export format {fmt!r} (known: {', '.join(formats())})")
        with reader.db() as db:
            files = export_files(db, run_id, fmt)
        if len(files) == 1:
            name, data = next(iter(files.items()))
            return Response(data, media_type="application/json",
                            headers={"Content-Disposition": f'attachment; filename="{Path(name).name}"'})
        return Response(zip_bytes(files), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{fmt}-run{run_id}.zip"'})

    @app.get("/runs/{run_id}/plot.png", include_in_schema=False)
    def run_plot(run_id: int):
        import io

        from saexplain.report import plot, summarize

        with reader.db() as db:
            summary = summarize(db, run_id)
        buf = io.BytesIO()
        plot(summary, buf)
        return Response(buf.getvalue(), media_type="image/png")

    # ----------------------------------------------------------------------------------------- pages
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page_runs(request: Request):
        return templates.TemplateResponse(request, "runs.html", {"runs": reader.runs()})

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def page_run(request: Request, run_id: int, sort: str = "feature", scorer: str | None = None,
                 method: str | None = None):
        from saexplain.export import formats

        page = reader.run(run_id)
        rows = reader.feature_rows(run_id, sort, scorer, method)
        return templates.TemplateResponse(request, "run.html", {
            "page": page, "rows": rows, "sort": sort, "scorer": scorer or (page.run.scorers or [None])[0],
            "method": method, "formats": formats()})

    @app.get("/runs/{run_id}/features/{feature}", response_class=HTMLResponse, include_in_schema=False)
    def page_feature(request: Request, run_id: int, feature: int):
        page = reader.feature(run_id, feature)
        traces = {e.method: reader.trace(run_id, feature, e.method) for e in page.explanations if e.has_trace}
        return templates.TemplateResponse(request, "feature.html", {
            "page": page, "traces": traces, "probe_status": service.status(subject_of(run_id)),
            "max_chars": MAX_CHARS, "probe_run": run_id})

    @app.get("/saes/{cache_run}/features/{feature}", response_class=HTMLResponse, include_in_schema=False)
    def page_sae_feature(request: Request, cache_run: int, feature: int):
        page = reader.sae_feature(cache_run, feature)
        runs = sorted({e.run_id for e in page.explanations})
        traces = {f"{e.run_id}:{e.method}": reader.trace(e.run_id, feature, e.method)
                  for e in page.explanations if e.has_trace}
        return templates.TemplateResponse(request, "feature.html", {
            "page": page, "traces": traces, "max_chars": MAX_CHARS, "probe_run": runs[-1] if runs else None,
            "probe_status": service.status(subject_of(cache_run))})

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def page_search(request: Request, q: str = "", run: int | None = None):
        q = q.strip()
        if q.isdigit():  # jump to a feature: in the given run, else the latest run that explains it
            for r in reader.runs():
                if run in (None, r.id):
                    with reader.db() as db:
                        if db.explanations(r.id, int(q)):
                            return RedirectResponse(f"/runs/{r.id}/features/{int(q)}", status_code=303)
        hits = index.search(q) if q else []
        return templates.TemplateResponse(request, "search.html", {"q": q, "hits": hits})

    @app.get("/runs/{run_id}/probe", response_class=HTMLResponse, include_in_schema=False)
    def page_probe(request: Request, run_id: int):
        return templates.TemplateResponse(request, "probe.html", {
            "run_id": run_id, "cache_run": reader.run(run_id).run.cache_run,
            "probe_status": service.status(subject_of(run_id)), "max_chars": MAX_CHARS})

    app.state.reader, app.state.probe, app.state.index = reader, service, index
    return app


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def histogram_bars(edges: list[float], counts: list[int], width: int = 420, height: int = 120) -> list[dict]:
    """SVG geometry of the activation histogram (log-spaced bins up to the feature's max)."""
    top = max(counts) if counts else 0
    n = max(len(counts), 1)
    bars = []
    for i, c in enumerate(counts):
        h = 0 if top == 0 else max(1.0, (height - 14) * math.log1p(c) / math.log1p(top)) if c else 0
        bars.append({"x": i * width / n, "w": width / n - 1, "y": height - 14 - h, "h": h, "count": c,
                     "lo": edges[i], "hi": edges[i + 1] if i + 1 < len(edges) else edges[i]})
    return bars


__all__ = ["create_app", "histogram_bars"]
