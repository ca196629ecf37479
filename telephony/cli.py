"""The `hotline` command: serve, ask, the KB tools (check, ingest, build, diff, hotwords), tune, eval, the benchmarks
and the ASR server. Every engine is built through `telephony.app`."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from kb.errors import KbError
from kb.loader import load_knowledge_base
from rag.errors import InvalidQuestionError
from telephony.settings import Settings

app = typer.Typer(help="社保语音热线助手 · social-insurance voice hotline", no_args_is_help=True, add_completion=False)
kb_app = typer.Typer(help="Knowledge-base tools for bureau staff", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
bench_app = typer.Typer(help="Benchmarks that print JSON", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


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

    from telephony.web.app import create_app

    settings = load_settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings), host=host or settings.host, port=port or settings.port,
        log_level=settings.log_level.lower(), timeout_graceful_shutdown=10,
        # Media Streams carry 20 ms of base64 μ-law per message: deflating them costs CPU on both ends for little.
        ws_per_message_deflate=False,
    )


@app.command()
def ask(
    question: Annotated[Optional[str], typer.Argument(help="The question; read one per line from stdin when omitted")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one answer JSON object per line")] = False,
) -> None:
    """Answer questions as the hotline would, and store each as a turn."""
    from telephony.app import Hotline
    from telephony.store import CallChannel

    settings = load_settings()
    configure_logging("WARNING")
    hotline = Hotline.open(settings)
    questions = [question] if question is not None else (line.rstrip("\r\n") for line in sys.stdin)
    failures = 0

    async def run() -> None:
        nonlocal failures
        for text in questions:
            try:
                reply = await hotline.conversations.ask(text, CallChannel.CLI)
            except InvalidQuestionError as exc:
                failures += 1
                if as_json:
                    typer.echo(json.dumps({"question": text, "error": str(exc)}, ensure_ascii=False))
                else:
                    typer.echo(f"错误：{exc}", err=True)
                continue
            answer = reply.answer
            if as_json:
                typer.echo(json.dumps(answer.to_json(), ensure_ascii=False))
            else:
                typer.echo(f"问：{answer.question}\n答（{answer.action.value}，置信度 {answer.confidence:.2f}）：{answer.spoken}")
                if answer.sms:
                    typer.echo(f"短信：\n{answer.sms}")
                typer.echo("")

    asyncio.run(run())
    hotline.close()
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
    from telephony.kb_publish import check_items

    report = check_items(settings, kb)
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


@app.command("tune")
def tune_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
    folds: Annotated[int, typer.Option(min=2, max=12, help="Folds the KB's caller questions are held out in")] = 4,
    vectors: Annotated[bool, typer.Option("--vectors/--no-vectors", help="Include the chromadb channel")] = True,
    output: Annotated[Optional[Path], typer.Option(help="Where to write (default <data_dir>/calibration.json, which "
                                                        "the next `hotline kb build` takes)")] = None,
) -> None:
    """Fit the fusion weights and the confidence model on development data (never on the evaluation set)."""
    from kb.builds import CALIBRATION, calibration_file
    from kb.lexicon import load_lexicon
    from rag.calibration import load_calibration
    from rag.errors import RetrievalError
    from rag.evaluation.tuning import tune
    from telephony.app import embedding_function
    from telephony.settings import EmbeddingBackend

    settings = load_settings()
    configure_logging("WARNING")
    kb = load_knowledge_base(settings.kb_dir)
    progress = None if as_json else (lambda line: typer.echo(line, err=True))
    vectors = vectors and settings.embedding_backend is not EmbeddingBackend.NONE
    if output is None:
        output = settings.data_dir / CALIBRATION
        output.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not output.parent.is_dir():  # before the minutes of tuning, not after
            raise OSError(f"no directory {output.parent} to write {output.name} in")
        start = load_calibration(calibration_file(settings.data_dir)).weights  # the calibration in force now
        embedding = embedding_function(settings) if vectors else None
        report = tune(kb, load_lexicon(), start=start, output=output, folds=folds, with_vectors=vectors,
                      progress=progress, embedding=embedding, low=settings.answer_low_confidence,
                      high=settings.answer_high_confidence)
    except (ValueError, OSError, RetrievalError) as exc:
        typer.echo(f"cannot tune: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(report, ensure_ascii=False, indent=None if as_json else 2))
    if not as_json:
        typer.echo(f"calibration written to {output}; `hotline kb build` puts it into the next build "
                   "(to update the shipped one: --output kb/calibration.json)", err=True)


@app.command("eval")
def eval_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON")] = False,
    eval_set: Annotated[Optional[Path], typer.Option("--set", help="Labelled question file or directory")] = None,
    write_doc: Annotated[Optional[Path], typer.Option("--doc", help="Markdown file for the table")] = Path("docs/eval.md"),
    asr_noise: Annotated[bool, typer.Option("--asr-noise/--no-asr-noise", help="Add homophone-noise variants")] = True,
) -> None:
    """Measure retrieval and answers on the labelled question set; writes the table to docs/eval.md."""
    from rag.evaluation import DEFAULT_EVAL_SET, eval_document, evaluate, load_eval_set, markdown_table, with_asr_noise
    from telephony.app import Hotline
    from telephony.store import Database

    settings = load_settings()
    configure_logging("WARNING")
    hotline = Hotline.open(settings, Database("sqlite://"), migrate=False)  # evaluation stores nothing
    stack = hotline.answers.stack
    cases = load_eval_set(eval_set or DEFAULT_EVAL_SET)
    if asr_noise:
        cases += with_asr_noise(cases, (item.authored_text() for item in stack.kb.items))
    report = asyncio.run(evaluate(cases, stack.retriever, stack.answerer))
    table = markdown_table(report)
    if write_doc is not None:
        write_doc.parent.mkdir(parents=True, exist_ok=True)
        document = eval_document(report, stack.version, len(stack.kb), settings.answer_high_confidence,
                                 settings.answer_low_confidence, settings.answer_named_confidence)
        write_doc.write_text(document, encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        typer.echo(table)
        for failure in report.failures:
            typer.echo(f"miss: {failure}")


def passage_store(settings: Settings):
    from telephony.kb_publish import passage_store as store

    return store(settings)


@kb_app.command("ingest")
def kb_ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders: docx, pdf, xlsx FAQ sheets, md, txt")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Add the bureau's documents as passages linked to items (deduplicated; bad files are reported)."""
    from dataclasses import asdict

    from kb.ingest import ingest

    settings = load_settings()
    kb = load_knowledge_base(settings.kb_dir)
    report = ingest(paths, kb, passage_store(settings))
    if as_json:
        typer.echo(json.dumps(asdict(report), ensure_ascii=False, indent=2))
    else:
        typer.echo(f"files: {report.files}  passages added: {report.passages_added}  "
                   f"duplicates skipped: {report.duplicates_skipped}  linked to items: {report.linked}")
        for error in report.errors:
            typer.echo(f"错误：{error}", err=True)
    if report.errors:
        raise typer.Exit(1)


@kb_app.command("build")
def kb_build(
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar")] = True,
) -> None:
    """Check the KB, write a content-hashed build and publish it (a running server switches to it)."""
    from telephony.kb_publish import BuildRefused, build_and_publish

    settings = load_settings()
    try:
        published = build_and_publish(settings, progress=progress)
    except BuildRefused as exc:
        for error in exc.errors:
            typer.echo(f"error: {error}", err=True)
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    manifest = published.manifest
    state = "built" if published.written else "unchanged, already built"
    typer.echo(f"version {manifest.version} ({state}): {len(manifest.item_hashes)} items, "
               f"{manifest.passages} passages, calibration {published.calibration}; published "
               f"(previous: {published.previous or 'none'})")


@kb_app.command("diff")
def kb_diff(
    old: Annotated[Optional[str], typer.Argument(help="Older version (default: the one before the current)")] = None,
    new: Annotated[Optional[str], typer.Argument(help="Newer version (default: the current)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diff as JSON")] = False,
) -> None:
    """Show which items were added, removed or changed between two builds."""
    from dataclasses import asdict

    from kb.builds import BuildStore

    settings = load_settings()
    store = BuildStore(settings.data_dir / "kb-builds")
    versions = store.versions()
    new = new or store.current()
    if old is None:
        earlier = [version for version in versions if version != new]
        old = earlier[-1] if earlier else None
    if old is None or new is None:
        typer.echo("错误：need two builds to compare; run `hotline kb build` after a change", err=True)
        raise typer.Exit(2)
    try:
        diff = store.diff(old, new)
    except KbError as exc:
        typer.echo(f"错误：{exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(asdict(diff), ensure_ascii=False, indent=2))
        return
    typer.echo(f"{old} -> {new}")
    for item_id in diff.added:
        typer.echo(f"+ {item_id}")
    for item_id in diff.removed:
        typer.echo(f"- {item_id}")
    for item_id, fields in diff.changed.items():
        typer.echo(f"~ {item_id}: {', '.join(fields)}")
    if diff.passages_delta:
        typer.echo(f"passages: {diff.passages_delta:+d}")
    if diff.lexicon_changed:
        typer.echo("lexicon changed")
    if diff.calibration_changed:
        typer.echo("calibration changed")
    if diff.empty:
        typer.echo("no differences")


@kb_app.command("hotwords")
def kb_hotwords(
    weight: Annotated[int, typer.Option(help="Bias weight written after each word (FunASR hotword file format)")] = 20,
) -> None:
    """Print the ASR hotword list (lexicon hotwords and standard terms), one `word weight` per line."""
    from kb.lexicon import load_lexicon

    lexicon = load_lexicon()
    words = sorted(set(lexicon.hotwords) | set(lexicon.synonyms.values()), key=lambda word: (-len(word), word))
    for word in words:
        typer.echo(f"{word} {weight}")


kb_changes_app = typer.Typer(help="KB changes proposed from reviewed calls (/review/kb): list, apply (check, build "
                                  "and publish), reject", no_args_is_help=True)
kb_app.add_typer(kb_changes_app, name="changes")
KB_CHANGE_KINDS = {"add_question": "加为常见问法", "new_item": "新建条目草稿"}
KB_CHANGE_STATES = {"proposed": "待处理", "applied": "已应用", "rejected": "已驳回"}


def _kb_change_run(action, username: str | None = None):
    """Run `action(changes, operator)` on the configured database and KB; `username` (--as) must name an active KB
    editor or admin. A refusal is printed (with the check's errors, if any) and exits 1."""
    from telephony.errors import TelephonyError
    from telephony.handoff.accounts import Accounts
    from telephony.review.audit import Operator
    from telephony.review.kb_changes import DECIDE_ROLES, KbChanges, KbCheckFailedError

    settings = load_settings()
    database = _open_database(settings)
    try:
        operator = None
        if username is not None:
            account = Accounts(database).get(username)
            if not account.active:
                typer.echo(f"错误：用户 {account.username} 已停用", err=True)
                raise typer.Exit(1)
            if account.role not in DECIDE_ROLES:
                typer.echo(f"错误：用户 {account.username} 的角色是 {account.role.value}；只有知识库编辑（kb_editor）"
                           "和管理员（admin）可以应用或驳回修改", err=True)
                raise typer.Exit(1)
            operator = Operator(account.username, account.id)
        return action(KbChanges(database, settings), operator)
    except KbCheckFailedError as exc:
        for error in exc.errors:
            typer.echo(f"error: {error}", err=True)
        typer.echo(f"错误：{exc}", err=True)
        raise typer.Exit(1) from None
    except TelephonyError as exc:
        typer.echo(f"错误：{exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.close()


@kb_changes_app.command("list")
def kb_changes_list(
    state: Annotated[Optional[str], typer.Option("--status", help="proposed | applied | rejected")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list")] = False,
) -> None:
    """Proposed changes first (oldest first), then decided ones (latest first); callers' words masked."""
    rows, total = _kb_change_run(lambda changes, _operator: changes.list(state, limit=limit))
    if as_json:
        typer.echo(json.dumps([row.to_json() for row in rows], ensure_ascii=False))
        return
    if not rows:
        typer.echo("没有知识库修改")
    for row in rows:
        state_text = "应用中" if row.applying else KB_CHANGE_STATES.get(row.status, row.status)
        source = f"通话 {row.call_id} 第 {row.turn_seq} 轮" if row.call_id else "通话已删除"
        typer.echo(f"#{row.id}  {state_text}  {KB_CHANGE_KINDS.get(row.kind, row.kind)}  {row.item_id}"
                   f"「{row.item_title}」  问法：{row.question}  {source}  提出：{row.proposed_by}"
                   + (f"  版本 {row.kb_version}" if row.kb_version else "")
                   + (f"  {row.decided_by}：{row.decision_note}" if row.decision_note else ""))
    if total > len(rows):
        typer.echo(f"（共 {total} 条，只列出 {len(rows)} 条）")


@kb_changes_app.command("apply")
def kb_changes_apply(
    change_id: Annotated[int, typer.Argument(help="The change's number (kb changes list)")],
    as_user: Annotated[str, typer.Option("--as", help="Your username: a kb_editor or admin (the audit log names "
                                                      "it)")],
) -> None:
    """Write the change into the item files, check as `kb check` does, build and publish as `kb build` does
    (running servers switch to the new version); a failed check puts the files back and leaves it proposed."""
    row = _kb_change_run(lambda changes, operator: changes.apply(operator, change_id), as_user)
    typer.echo(f"已应用修改 #{row.id}（{KB_CHANGE_KINDS.get(row.kind, row.kind)} {row.item_id}）：知识库版本 "
               f"{row.kb_version} 已发布，正在运行的热线会自动切换")


@kb_changes_app.command("reject")
def kb_changes_reject(
    change_id: Annotated[int, typer.Argument(help="The change's number (kb changes list)")],
    as_user: Annotated[str, typer.Option("--as", help="Your username: a kb_editor or admin")],
    note: Annotated[str, typer.Option("--note", help="Why (the supervisor who proposed it reads this)")],
) -> None:
    """Decline a proposed change, with the reason."""
    row = _kb_change_run(lambda changes, operator: changes.reject(operator, change_id, note), as_user)
    typer.echo(f"已驳回修改 #{row.id}：{row.decision_note}")


@bench_app.command("retrieval")
def bench_retrieval(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
    rounds: Annotated[int, typer.Option(help="Passes over the question set")] = 3,
    vectors: Annotated[bool, typer.Option("--vectors/--no-vectors", help="Include the chromadb channel")] = True,
) -> None:
    """Retrieval p50/p95 on the shipped KB and on a synthetic 2.2M-character KB, plus index build time."""
    from kb.builds import calibration_file
    from kb.lexicon import load_lexicon
    from rag.calibration import load_calibration
    from rag.evaluation import DEFAULT_EVAL_SET, load_eval_set
    from rag.evaluation.bench import measure, synthetic_kb

    settings = load_settings()
    configure_logging("WARNING")
    kb = load_knowledge_base(settings.kb_dir)
    lexicon = load_lexicon()
    weights = load_calibration(calibration_file(settings.data_dir)).weights
    questions = [case.question for case in load_eval_set(DEFAULT_EVAL_SET)]
    shipped = measure(kb, lexicon, weights, questions, with_vectors=vectors, rounds=rounds)
    large = measure(synthetic_kb(kb), lexicon, weights, questions, with_vectors=vectors, rounds=1)
    result = {"shipped": shipped.to_dict(), "synthetic_2_2m": large.to_dict(), "vectors": vectors}
    typer.echo(json.dumps(result, ensure_ascii=False, indent=None if as_json else 2))


@bench_app.command("turn-latency")
def bench_turn_latency(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=500, help="Calls at the same time")] = 1,
    calls: Annotated[Optional[int], typer.Option(help="Calls in all (default: max(10, concurrency))")] = None,
    turns: Annotated[int, typer.Option(min=1, max=5, help="Questions per call")] = 2,
    asr_model: Annotated[Optional[Path], typer.Option(help="FunASR model directory (default: a tiny test model)")] = None,
    ramp_s: Annotated[Optional[float], typer.Option(help="Spread call arrivals over this many seconds")] = None,
    asr_server: Annotated[bool, typer.Option("--asr-server/--in-process-asr",
                                             help="Run the ASR as a separate `hotline asr-server` process")] = False,
    asr_engines: Annotated[int, typer.Option(min=1, max=16, help="With --asr-server: model copies it runs")] = 1,
    transcripts: Annotated[str, typer.Option(help="'model': the ASR's own text; 'known': the spoken question's "
                                                  "text (how turns behave with a correct transcript)")] = "model",
    keep: Annotated[bool, typer.Option("--keep", help="Keep the run's folder (database, recordings, TTS cache) "
                                                      "and print where it is")] = False,
    line: Annotated[str, typer.Option(help="'media-stream': the Twilio-compatible websocket; 'sip': real SIP and "
                                           "RTP on loopback (pjsua2 callers)")] = "media-stream",
) -> None:
    """Simulated callers in real time over the Media Streams websocket or SIP: end of speech → first reply audio."""
    from telephony.bench.turn_latency import run_turn_latency

    configure_logging("WARNING")
    if transcripts not in ("model", "known"):
        raise typer.BadParameter("--transcripts is 'model' or 'known'")
    if line not in ("media-stream", "sip"):
        raise typer.BadParameter("--line is 'media-stream' or 'sip'")
    result = run_turn_latency(concurrency, calls, turns, asr_model, ramp_s, asr_server, transcripts == "known",
                              asr_engines, keep_workdir=keep, line=line)
    typer.echo(json.dumps(result, ensure_ascii=False, indent=None if as_json else 2))


@bench_app.command("faults")
def bench_faults(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
    only: Annotated[Optional[str], typer.Option(help="Rows to run, comma-separated: engines (asr-server, llm, …) "
                                                     "or engine:fault (database:kill)")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the run's folder (servers' logs, databases, the spoken "
                                                      "log) and print where it is")] = False,
) -> None:
    """Each engine killed, stalled or garbled mid-call: what the caller heard, how soon, what was stored, and
    whether the next call is normal (docs/reliability.md)."""
    from telephony.bench.faults import run_faults, select_rows

    configure_logging("WARNING")
    chosen = [name.strip() for name in only.split(",") if name.strip()] if only else None
    try:
        select_rows(chosen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    result = run_faults(chosen, keep_workdir=keep)
    typer.echo(json.dumps(result, ensure_ascii=False, indent=None if as_json else 2))


@bench_app.command("soak")
def bench_soak(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=500,
                                             help="Simulated callers, each placing calls back to back")] = 100,
    minutes: Annotated[float, typer.Option("--minutes", min=0.1, max=240.0,
                                           help="How long new calls are placed (the calls in flight then finish)")
                       ] = 10.0,
    transcripts: Annotated[str, typer.Option(help="'known': the spoken question's text (correct-transcript "
                                                  "assumption); 'model': the tiny random ASR's own text")] = "known",
    asr_server: Annotated[bool, typer.Option("--asr-server/--in-process-asr",
                                             help="Run the ASR as a separate `hotline asr-server` process (as the "
                                                  "100-call turn-latency runs do)")] = True,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the run's folder (database, recordings, server log) "
                                                      "and print where it is")] = False,
) -> None:
    """Simulated callers for minutes on end: latency per minute, dropped frames, server memory and open files,
    and whether every turn and call reached the database (docs/soak.md)."""
    from telephony.bench.soak import run_soak

    configure_logging("WARNING")
    if transcripts not in ("model", "known"):
        raise typer.BadParameter("--transcripts is 'model' or 'known'")
    result = run_soak(concurrency, minutes, transcripts == "known", asr_server, keep_workdir=keep)
    typer.echo(json.dumps(result, ensure_ascii=False, indent=None if as_json else 2))


@bench_app.command("review")
def bench_review(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
    calls: Annotated[int, typer.Option(min=100, max=2_000_000, help="Calls to generate")] = 100_000,
    turns_per_call: Annotated[float, typer.Option(min=1.0, max=10.0, help="Mean turns per call")] = 5.0,
    database_url: Annotated[Optional[str], typer.Option(help="An empty database to fill (default: SQLite in a "
                                                              "temporary folder)")] = None,
    repeats: Annotated[int, typer.Option(min=1, max=100, help="Timed runs of each query")] = 9,
) -> None:
    """The review list and search on a generated month of calls (100,000 calls, 500,000 turns): p50/max ms."""
    from telephony.bench.review import run_review_bench

    settings = load_settings()
    configure_logging("WARNING")
    result = run_review_bench(load_knowledge_base(settings.kb_dir), calls, turns_per_call,
                              database_url=database_url, repeats=repeats)
    typer.echo(json.dumps(result, ensure_ascii=False, indent=None if as_json else 2))


@bench_app.command("asr-capacity")
def bench_asr_capacity(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
    model: Annotated[Optional[Path], typer.Option(help="FunASR streaming model directory")] = None,
    random_model: Annotated[str, typer.Option(help="Without --model: build random weights, 'tiny' (the tests' "
                                                   "model) or 'large' (the real Paraformer-large architecture)")] = "tiny",
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
    streams: Annotated[str, typer.Option(help="Comma-separated concurrent stream counts")] = "1,2,4",
    engines: Annotated[str, typer.Option(help="Comma-separated engine (model copy) counts")] = "1",
    seconds: Annotated[float, typer.Option(min=1.0, help="Seconds of real-time audio per run")] = 10.0,
    work_dir: Annotated[Path, typer.Option(help="Where random models are built")] = Path("var/models"),
) -> None:
    """Real-time streams per FunASR engine: chunk and final latency, share of chunks behind real time."""
    from voice.testing.capacity import measure_capacity
    from voice.testing.tiny_models import build_random_paraformer_large, build_tiny_paraformer

    configure_logging("WARNING")
    if model is None:
        if random_model not in ("tiny", "large"):
            raise typer.BadParameter("--random-model is 'tiny' or 'large'")
        builder = build_tiny_paraformer if random_model == "tiny" else build_random_paraformer_large
        model = builder(work_dir / f"paraformer-{random_model}-random")
    try:
        stream_counts = [int(value) for value in streams.split(",") if value.strip()]
        engine_counts = [int(value) for value in engines.split(",") if value.strip()]
    except ValueError as exc:
        raise typer.BadParameter("--streams and --engines take comma-separated integers") from exc
    if not stream_counts or not engine_counts or min(stream_counts + engine_counts) < 1:
        raise typer.BadParameter("--streams and --engines need positive integers")
    from voice.base import VoiceError

    try:
        result = asyncio.run(measure_capacity(model, device=device, streams=stream_counts, engines=engine_counts,
                                              seconds=seconds))
    except VoiceError as exc:  # no model, or the device cannot run it
        typer.echo(f"cannot measure: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(result, ensure_ascii=False, indent=None if as_json else 2))


@app.command("asr-server")
def asr_server(
    model: Annotated[str, typer.Option(help="FunASR streaming model directory (or hub name with internet)")] = "",
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (FunASR's runtime uses 10095)")] = 10095,
    punctuation_model: Annotated[Optional[str], typer.Option(help="ct-punc model directory")] = None,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
    engines: Annotated[int, typer.Option(min=1, max=64, help="Model copies, each decoding on its own thread "
                                                            "(size with `hotline bench asr-capacity`)")] = 1,
) -> None:
    """Serve the FunASR runtime 2pass websocket protocol from the in-process engine (e.g. on a GPU machine)."""
    from voice.funasr import run_asr_server

    settings = load_settings()
    configure_logging(settings.log_level)
    run_asr_server(model or settings.asr_model, host, port, punctuation_model=punctuation_model, device=device,
                   engines=engines)


sms_app = typer.Typer(help="SMS: send an item's guide, list the outbox, resend", no_args_is_help=True)
app.add_typer(sms_app, name="sms")


def _print_sms(data: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False))
        return
    typer.echo(f"短信 #{data['id']}  {data['state']}  {data['to']}  {data['segments']} 条  网关 {data['gateway']}"
               + (f"  错误：{data['error']}" if data.get("error") else ""))
    if data.get("text"):
        typer.echo(data["text"])


@sms_app.command("send")
def sms_send(
    to: Annotated[str, typer.Option("--to", help="Mainland mobile number")],
    item: Annotated[str, typer.Option("--item", help="KB item id whose full guide is sent")],
    key: Annotated[Optional[str], typer.Option("--key", help="Idempotency key: the same key never sends twice")] = None,
    queue_only: Annotated[bool, typer.Option("--queue-only", help="Leave it for the running server's worker")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the message as JSON")] = False,
) -> None:
    """Send an item's full guide by SMS through the configured gateway (the outbox by default)."""
    import uuid

    from telephony.app import open_sms
    from telephony.sms.base import SmsError
    from telephony.sms.outbox import SmsRefused, message_summary
    from telephony.store import Database

    settings = load_settings()
    configure_logging("WARNING")
    database = Database(settings.resolved_database_url)
    database.migrate()
    service = open_sms(settings, database)

    async def run() -> dict:
        reference = f"cli:{key}" if key else f"cli:{uuid.uuid4().hex}"
        enqueued = await service.send_guide(to, item, reference)
        if not queue_only and enqueued.created:
            await service.dispatcher.start(run_worker=False)
            try:
                await service.dispatcher.drain()
            finally:
                await service.dispatcher.close()
        message = await asyncio.to_thread(service.outbox.get, enqueued.message.id)
        return message_summary(message) | {"created": enqueued.created}

    try:
        data = asyncio.run(run())
    except (SmsError, SmsRefused) as exc:
        if as_json:
            typer.echo(json.dumps({"error": str(exc), "retryable": getattr(exc, "retryable", False)},
                                  ensure_ascii=False))
        else:
            typer.echo(f"错误：{exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.close()
    _print_sms(data, as_json)
    if data["state"] == "failed":
        raise typer.Exit(1)


@sms_app.command("list")
def sms_list(
    state: Annotated[Optional[str], typer.Option(help="queued | sending | submitted | delivered | failed | expired")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """The outbox, newest first (numbers masked)."""
    from telephony.sms.outbox import SmsOutbox, message_summary
    from telephony.store import Database, SmsStatus

    settings = load_settings()
    database = Database(settings.resolved_database_url)
    database.migrate()
    try:
        status = SmsStatus(state) if state else None
    except ValueError:
        typer.echo(f"错误：未知状态 {state}", err=True)
        raise typer.Exit(2) from None
    outbox = SmsOutbox(database)
    messages = [message_summary(message, body=False) for message in outbox.listing(status, limit)]
    counts = outbox.counts()
    database.close()
    if as_json:
        typer.echo(json.dumps({"counts": counts, "messages": messages}, ensure_ascii=False))
        return
    typer.echo("  ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "outbox empty")
    for data in messages:
        _print_sms(data, False)


hours_app = typer.Typer(help="Office hours: when human agents are on duty (kb/office_hours.yaml)", no_args_is_help=True)
app.add_typer(hours_app, name="hours")
_HOURS_FILE_HELP = "Office-hours file (default: HOTLINE_OFFICE_HOURS_FILE, the shipped kb/office_hours.yaml)"


@hours_app.command("check")
def hours_check(
    file: Annotated[Optional[Path], typer.Option("--file", help=_HOURS_FILE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Validate the office-hours calendar; exits 1 on errors, prints what is still to confirm as warnings."""
    from telephony.handoff.office_hours import check

    report = check(file or load_settings().office_hours_file)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        years = ", ".join(f"{year} ({state})" for year, state in report.years.items())
        typer.echo(f"{report.path}: years {years or 'none'}")
        for warning in report.warnings:
            typer.echo(f"warning: {warning}")
        for error in report.errors:
            typer.echo(f"error: {error}")
        typer.echo("OK" if report.ok else f"{len(report.errors)} error(s)")
    if not report.ok:
        raise typer.Exit(1)


@hours_app.command("now")
def hours_now(
    at: Annotated[Optional[str], typer.Option("--at", help="ISO time, e.g. 2026-10-01T10:00+08:00 (without an "
                                                           "offset: the calendar's time zone); default now")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help=_HOURS_FILE_HELP)] = None,
) -> None:
    """Whether an agent is on duty at a time, and when agents are next on duty."""
    from datetime import datetime

    from telephony.handoff.office_hours import OfficeHours, OfficeHoursError

    try:
        calendar = OfficeHours.load(file or load_settings().office_hours_file)
    except OfficeHoursError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        typer.echo(f"{exc.path}: fix it (hotline hours check)", err=True)
        raise typer.Exit(2) from None
    try:
        moment = datetime.fromisoformat(at) if at else datetime.now(calendar.timezone)
    except ValueError:
        raise typer.BadParameter(f"{at!r} is not an ISO time such as 2026-10-01T10:00", param_hint="--at") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=calendar.timezone)
    local = calendar.local(moment)
    day = calendar.day(local.date())
    what = {"holiday": f"节假日（{day.name}）", "working_day": f"调休上班日（{day.name}）"}.get(day.kind.value, "")
    typer.echo(f"{local:%Y-%m-%d %H:%M} {calendar.timezone.key} 星期{'一二三四五六日'[local.weekday()]}"
               f"{'  ' + what if what else ''}：{'值班中' if calendar.is_open(moment) else '非值班时间'}")
    if not day.known:
        typer.echo(f"warning: {local.year} 年的放假安排不在日历中，按每周值班时间计算")
    opening = calendar.next_opening(moment)
    if opening is None:
        typer.echo("下次上班：无（日历中没有值班时间）")
    else:
        typer.echo(f"下次上班：{opening:%Y-%m-%d %H:%M}（{calendar.describe_next_opening(moment)}）")


tickets_app = typer.Typer(help="Callback tickets: callers handed to people, for agents to call back",
                          no_args_is_help=True)
app.add_typer(tickets_app, name="tickets")
users_app = typer.Typer(help="Staff accounts: agents, supervisors, editors, admins", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _open_database(settings: Settings):
    from telephony.errors import StorageError
    from telephony.store import Database

    database = Database(settings.resolved_database_url)
    try:
        database.migrate()
    except StorageError as exc:
        database.close()
        typer.echo(f"错误：{exc}", err=True)
        raise typer.Exit(1) from None
    return database


@tickets_app.command("list")
def tickets_list(
    state: Annotated[Optional[str], typer.Option("--status", help="open | assigned | attempted | resolved | "
                                                                  "unreachable")] = None,
    owner: Annotated[Optional[str], typer.Option("--owner", help="Only the tickets this username holds")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list")] = False,
) -> None:
    """Tickets, the earliest due first (numbers masked)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from telephony.errors import TelephonyError
    from telephony.handoff.accounts import Accounts
    from telephony.handoff.tickets import TicketDesk, ticket_summary
    from telephony.store import HandoffStatus

    try:
        status = HandoffStatus(state) if state else None
    except ValueError:
        typer.echo(f"错误：未知状态 {state}（可选：{'、'.join(member.value for member in HandoffStatus)}）", err=True)
        raise typer.Exit(2) from None
    database = _open_database(load_settings())
    try:
        owner_id = Accounts(database).get(owner).id if owner else None
        tickets = [ticket_summary(ticket) for ticket in TicketDesk(database).list(status, owner_id, limit=limit)]
    except TelephonyError as exc:
        typer.echo(f"错误：{exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.close()
    if as_json:
        typer.echo(json.dumps(tickets, ensure_ascii=False))
        return
    if not tickets:
        typer.echo("没有工单")
    bureau_time = ZoneInfo("Asia/Shanghai")
    for data in tickets:
        due = datetime.fromisoformat(data["due_at"]).astimezone(bureau_time)
        typer.echo(f"工单 #{data['id']}  {data['state']}  {data['trigger']}  到期 {due:%Y-%m-%d %H:%M}  "
                   f"{data['number']}  已拨 {data['attempts']} 次  {data['owner'] or '未领取'}")
        if data["question"]:
            typer.echo(f"  问题：{data['question']}")


ROLE_HELP = "agent (坐席) | supervisor (质检主管) | kb_editor (知识库编辑) | admin (管理员)"
PASSWORD_STDIN_HELP = "Read the password from the first line of stdin instead of prompting"


def _cli_operator():
    """Who the audit log names for changes made with these commands."""
    from telephony.review.audit import Operator

    return Operator("cli")


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            typer.echo("错误：no password on stdin", err=True)
            raise typer.Exit(2)
        return password
    return typer.prompt("密码", hide_input=True, confirmation_prompt="再次输入密码")


def _account_change(change) -> object:
    """Run `change(accounts, operator)` on the configured database; a refusal is one line on stderr, exit 1."""
    from telephony.errors import TelephonyError
    from telephony.handoff.accounts import Accounts

    database = _open_database(load_settings())
    try:
        return change(Accounts(database), _cli_operator())
    except TelephonyError as exc:
        typer.echo(f"错误：{exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.close()


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Sign-in name: letters, digits, '.', '_', '-'")],
    name: Annotated[str, typer.Option("--name", help="Display name, e.g. 王小明")],
    role: Annotated[str, typer.Option("--role", help=ROLE_HELP)] = "agent",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help=PASSWORD_STDIN_HELP)] = False,
) -> None:
    """Create a staff account; the password is asked twice (or read from stdin) and stored only as a hash. The first
    admin is made this way (`--role admin`); after that admins manage accounts at /admin too."""
    password = _read_password(password_stdin)
    account = _account_change(lambda accounts, operator: accounts.create(username, name, role, password, operator))
    typer.echo(f"已创建用户 {account.username}（{account.display_name}，{account.role.value}）")


@users_app.command("reset-password")
def users_reset_password(
    username: Annotated[str, typer.Argument(help="The account whose password is replaced")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help=PASSWORD_STDIN_HELP)] = False,
) -> None:
    """Set a new password (asked twice, or read from stdin); sessions already signed in run out within 12 hours."""
    password = _read_password(password_stdin)
    account = _account_change(lambda accounts, operator: accounts.reset_password(username, password, operator))
    typer.echo(f"已重置用户 {account.username} 的密码")


@users_app.command("role")
def users_role(
    username: Annotated[str, typer.Argument(help="The account")],
    role: Annotated[str, typer.Argument(help=ROLE_HELP)],
) -> None:
    """Change an account's role (it applies from the user's next request); the last active admin keeps theirs."""
    account = _account_change(lambda accounts, operator: accounts.set_role(username, role, operator))
    typer.echo(f"用户 {account.username} 的角色现在是 {account.role.value}")


@users_app.command("reactivate")
def users_reactivate(username: Annotated[str, typer.Argument(help="The account to reactivate")]) -> None:
    """Let a deactivated account sign in again, with its old password and role."""
    account = _account_change(lambda accounts, operator: accounts.reactivate(username, operator))
    typer.echo(f"已恢复用户 {account.username}")


@users_app.command("list")
def users_list(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list")] = False) -> None:
    """Staff accounts by username (never their passwords)."""
    from telephony.handoff.accounts import Accounts

    database = _open_database(load_settings())
    try:
        accounts = [account.to_json() for account in Accounts(database).list()]
    finally:
        database.close()
    if as_json:
        typer.echo(json.dumps(accounts, ensure_ascii=False))
        return
    if not accounts:
        typer.echo("没有用户")
    for data in accounts:
        typer.echo(f"{data['username']}  {data['display_name']}  {data['role']}"
                   + ("" if data["active"] else "  已停用"))


@users_app.command("deactivate")
def users_deactivate(username: Annotated[str, typer.Argument(help="The account to deactivate")]) -> None:
    """Stop an account from signing in and taking tickets; its past work keeps its name."""
    account = _account_change(lambda accounts, operator: accounts.deactivate(username, operator))
    typer.echo(f"已停用用户 {account.username}")


@app.command("retention")
def retention_command(
    days: Annotated[Optional[int], typer.Option("--days", min=1, help="Keep this many days instead of "
                                                                        "HOTLINE_RETENTION_DAYS")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Delete the recordings and transcripts of calls older than the retention period (docs/review.md
    "Retention"); the server also does it daily. The audit log records each run and is never purged."""
    from telephony.errors import TelephonyError
    from telephony.review.retention import purge

    settings = load_settings()
    database = _open_database(settings)
    try:
        report = purge(database, settings, dry_run=dry_run, days=days, actor=_cli_operator())
    except TelephonyError as exc:
        typer.echo(f"错误：{exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.close()
    if as_json:
        typer.echo(json.dumps(report.to_json(), ensure_ascii=False))
    elif report.skipped:
        typer.echo("另一个进程正在清理，本次未执行")
    else:
        verb = "将删除" if dry_run else "已删除"
        typer.echo(f"保留期 {report.days} 天：{report.cutoff:%Y-%m-%d %H:%M} UTC 之前开始的通话")
        typer.echo(f"{verb}通话 {report.calls} 通、对话轮次 {report.turns} 条、录音文件 {report.recordings} 个"
                   f"（另有无主录音 {report.orphan_recordings} 个）；短信内容清除 {report.sms_blanked} 条")
        if report.kept_open_tickets:
            typer.echo(f"有 {report.kept_open_tickets} 通过期通话的回访单尚未办结，暂时保留")
    if report.file_errors:
        for line in report.file_errors[:10]:
            typer.echo(f"警告：录音文件未能删除：{line}", err=True)
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
