"""The supervisors' dashboard and KB-gap report: their pages (/review/dashboard, /review/gaps), their JSON
(/review/api/dashboard, /review/api/gaps) and the vendored chart library the pages load (/static/vendor/…).
docs/review.md describes them."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from rag.errors import RetrievalError
from telephony.app import Hotline, embedding_function
from telephony.review.reports import CHINA, MAX_GAP_DAYS, MAX_RANGE_DAYS, Embed, ReportError, dashboard, gap_report
from telephony.store.models import UserRole
from telephony.web.deps import HotlineDep
from telephony.web.staff_auth import Staff, staff_error, staff_member
from telephony.web.staff_pages import STATIC_DIR, staff_page

log = logging.getLogger(__name__)
router = APIRouter(tags=["review"])

REVIEW_ROLES = frozenset({UserRole.SUPERVISOR, UserRole.ADMIN})
NO_REVIEW_ROLE = "您的账号没有质检权限"
DEFAULT_DAYS = 7  # the dashboard without dates: the last week, today included
DEFAULT_GAP_DAYS = 14
LISTED_CLUSTERS = 200  # the page lists the largest clusters; the rest are counted
VENDOR_DIR = STATIC_DIR / "vendor"
VENDOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.(js|css)$")
VENDOR_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
VENDOR_CACHE = "public, max-age=86400"

ReviewStaff = Annotated[Staff, Depends(staff_member(REVIEW_ROLES, denied=NO_REVIEW_ROLE))]


def _embedder(request: Request, hotline: Hotline) -> Embed:
    """The retriever's own embedding function when the vector channel is on (loaded already, and the meaning the
    retrieval works with); else the configured one, built once per app (blocking: it may load a model)."""
    vector = getattr(hotline.answers.stack.retriever, "vector", None)
    if vector is not None:
        return vector.embedding
    embed = getattr(request.app.state, "review_gap_embedding", None)
    if embed is None:
        embed = request.app.state.review_gap_embedding = embedding_function(hotline.settings)
    return embed


def _titles(hotline: Hotline) -> dict[str, str]:
    return {item.id: item.title for item in hotline.answers.kb.items}


class BadDate(ValueError):
    pass


def _day(value: str | None) -> dt.date | None:
    """A YYYY-MM-DD date, None when not given; `BadDate` for anything else."""
    if not value:
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return dt.date.fromisoformat(value)
    except ValueError:
        pass
    raise BadDate(value)


def local_range(start_day: dt.date, end_day: dt.date, tz: dt.tzinfo = CHINA) -> tuple[dt.datetime, dt.datetime]:
    """[start_day 00:00, end_day + 1 00:00) in `tz`: both days included."""
    start = dt.datetime.combine(start_day, dt.time(), tz)
    end = dt.datetime.combine(end_day + dt.timedelta(days=1), dt.time(), tz)
    return start, end


@router.get("/review/api/dashboard")
async def dashboard_json(staff: ReviewStaff, hotline: HotlineDep,
                         date_from: Annotated[str | None, Query(alias="from")] = None,
                         date_to: Annotated[str | None, Query(alias="to")] = None) -> Response:
    """The dashboard's figures for calls that started from `from` to `to` (China dates, both included; default: the
    7 days up to `to`, and `to` today)."""
    try:
        start_day, end_day = _day(date_from), _day(date_to)
    except BadDate as exc:
        return staff_error(400, f"日期“{exc}”格式不对，应为 YYYY-MM-DD，例如 2026-03-02")
    end_day = end_day or dt.datetime.now(CHINA).date()
    start_day = start_day or end_day - dt.timedelta(days=DEFAULT_DAYS - 1)
    if end_day < start_day:
        return staff_error(400, "结束日期不能早于开始日期")
    if (end_day - start_day).days + 1 > MAX_RANGE_DAYS:
        return staff_error(400, f"时间范围最长{MAX_RANGE_DAYS}天")
    start, end = local_range(start_day, end_day)
    try:
        report = await asyncio.to_thread(dashboard, hotline.database, start, end, CHINA, _titles(hotline))
    except ReportError as exc:
        return staff_error(400, exc.detail)
    return JSONResponse(report.to_json() | {"from_day": start_day.isoformat(), "to_day": end_day.isoformat()})


@router.get("/review/api/gaps")
async def gaps_json(request: Request, staff: ReviewStaff, hotline: HotlineDep, days: int = DEFAULT_GAP_DAYS,
                    similarity: float | None = None, threshold: float | None = None) -> Response:
    """The KB-gap clusters of the last `days` days (the answer threshold: HOTLINE_ANSWER_HIGH_CONFIDENCE)."""
    if not 1 <= days <= MAX_GAP_DAYS:
        return staff_error(400, f"天数须在1到{MAX_GAP_DAYS}之间")
    options: dict[str, float] = {"threshold": hotline.settings.answer_high_confidence if threshold is None
                                 else threshold}
    if similarity is not None:
        options["similarity"] = similarity
    try:
        embed = await asyncio.to_thread(_embedder, request, hotline)
        report = await asyncio.to_thread(gap_report, hotline.database, embed, days=days,
                                         item_titles=_titles(hotline), max_clusters=LISTED_CLUSTERS, **options)
    except ReportError as exc:
        return staff_error(400, exc.detail)
    except RetrievalError as exc:
        log.error("gap report: the embedding function failed: %s", exc)
        return staff_error(503, "语义聚类所用的向量模型暂不可用，请稍后再试")
    return JSONResponse(report.to_json() | {"days": days})


@router.get("/review/dashboard", include_in_schema=False)
async def dashboard_page(request: Request) -> Response:
    return await staff_page(request, REVIEW_ROLES, "review_dashboard.html", denied=NO_REVIEW_ROLE)


@router.get("/review/gaps", include_in_schema=False)
async def gaps_page(request: Request) -> Response:
    return await staff_page(request, REVIEW_ROLES, "review_gaps.html", denied=NO_REVIEW_ROLE)


@router.get("/static/vendor/{name}", include_in_schema=False)
async def vendor_file(name: str) -> Response:
    """Third-party browser libraries shipped with the app (no CDN at runtime); their licences lie beside them."""
    path: Path = VENDOR_DIR / name
    if not VENDOR_NAME.fullmatch(name) or not path.is_file():
        return JSONResponse(status_code=404, content={"error": "not found"})
    return FileResponse(path, media_type=VENDOR_TYPES[path.suffix],
                        headers={"Cache-Control": VENDOR_CACHE, "X-Content-Type-Options": "nosniff"})
