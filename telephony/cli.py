"""The `hotline` command: serve, ask, kb check, eval."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from kb.check import check_knowledge_base
from kb.errors import KbError
from kb.loader import load_knowledge_base
from rag.errors import InvalidQuestionError
from telephony.settings import Settings

app = typer.Typer(help="社保语音热线助手 · social-insurance voice hotline", no_args_is_help=True, add_completion=False)
kb_app = typer.Typer(help="Knowledge-base tools for bureau staff", no_args_is_help=True)
app.add_typer(kb_app, name="kb")


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            typer.echo(f"configuration error: HOTLINE_{field.upper()}: {error['msg']}", err=True)
        raise typer.Exit(2) from None


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port to listen on")] = None,
) -> None:
    """Start the hotline server (API, health checks) on its configured engines."""
    import uvicorn

    from telephony.api import create_app

    settings = load_settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings), host=host or settings.host, port=port or settings.port,
        log_level=settings.log_level.lower(), timeout_graceful_shutdown=10,
    )


@app.command()
def ask(
    question: Annotated[Optional[str], typer.Argument(help="The question; read one per line from stdin when omitted")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one answer JSON object per line")] = False,
) -> None:
    """Answer questions as the hotline would, and store each as a turn."""
    from telephony.service import HotlineService
    from telephony.store import CallChannel, Database

    settings = load_settings()
    configure_logging("WARNING")
    database = Database(settings.resolved_database_url)
    database.migrate()
    service = HotlineService(settings, database)
    questions = [question] if question is not None else (line.rstrip("\r\n") for line in sys.stdin)
    failures = 0

    async def run() -> None:
        nonlocal failures
        for text in questions:
            try:
                result = await service.ask(text, CallChannel.CLI)
            except InvalidQuestionError as exc:
                failures += 1
                if as_json:
                    typer.echo(json.dumps({"question": text, "error": str(exc)}, ensure_ascii=False))
                else:
                    typer.echo(f"错误：{exc}", err=True)
                continue
            answer = result.answer
            if as_json:
                typer.echo(json.dumps(answer.to_json(), ensure_ascii=False))
            else:
                typer.echo(f"问：{answer.question}\n答（{answer.action.value}，置信度 {answer.confidence:.2f}）：{answer.spoken}")
                if answer.sms:
                    typer.echo(f"短信：\n{answer.sms}")
                typer.echo("")

    asyncio.run(run())
    database.close()
    if failures and question is not None:
        raise typer.Exit(1)


@kb_app.command("check")
def kb_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    directory: Annotated[Optional[Path], typer.Option("--dir", help="KB items directory")] = None,
) -> None:
    """Validate every item: schema, required fields, citations, lengths, duplicate aliases, references."""
    settings = load_settings()
    try:
        kb = load_knowledge_base(directory or settings.kb_dir)
    except KbError as exc:
        typer.echo(f"错误：{exc}", err=True)
        raise typer.Exit(2) from None
    report = check_knowledge_base(kb, signature=settings.sms_signature)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        typer.echo(f"items: {report.items} ({report.referrals} referral)  characters: {report.characters}  "
                   f"unverified marks: {report.unverified}")
        for category, count in sorted(report.categories.items(), key=lambda pair: -pair[1]):
            typer.echo(f"  {category}: {count}")
        for warning in report.warnings:
            typer.echo(f"warning: {warning}")
        for error in report.errors:
            typer.echo(f"error: {error}")
        typer.echo("OK" if report.ok else f"{len(report.errors)} error(s)")
    if not report.ok:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
