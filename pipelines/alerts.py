"""`newsrec alert`: email a short plain-text summary with the report attached (or linked when too big).

There is one way to send (smtplib). Only where the SMTP settings come from differs:
- on the command line, from params.yaml `alerts`, the password read from the environment variable
  that `alerts.password_env` names (secrets never live in params.yaml);
- inside an Airflow task, from Airflow's SMTP connection `alerts.airflow_conn_id` when it is defined
  (host, port, login, password; extras `from_email`, `disable_tls`, `disable_ssl`, `timeout` as the
  SMTP provider reads them), falling back to params.yaml when it is not.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import smtplib
import ssl as ssl_lib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from pipelines.config import load_params, parse_step, step_parser
from pipelines.errors import NewsrecError

log = logging.getLogger(__name__)


class AlertError(NewsrecError, RuntimeError):
    """An alert could not be built or delivered."""


@dataclass(frozen=True)
class SmtpSettings:
    """Everything needed to deliver one message."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    starttls: bool = False
    ssl: bool = False
    user: str | None = None
    password: str | None = None
    timeout_s: float = 30.0
    subject_prefix: str = ""
    max_attachment_bytes: int = 10 * 2**20

    def __post_init__(self) -> None:
        if not self.host:
            raise AlertError("SMTP host is empty")
        if not 0 < int(self.port) < 65536:
            raise AlertError(f"SMTP port {self.port} is not a TCP port")
        if not self.recipients:
            raise AlertError("no alert recipients configured (params.yaml alerts.to)")
        if self.starttls and self.ssl:
            raise AlertError("choose STARTTLS or implicit SSL, not both")


def _recipients(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(a.strip() for a in items if a and a.strip())


def settings_from_params(params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> SmtpSettings:
    """SMTP settings from the `alerts` section; the password only from the environment."""
    env = os.environ if env is None else env
    password_env = params.get("password_env")
    return SmtpSettings(
        host=str(params["smtp_host"]),
        port=int(params["smtp_port"]),
        sender=str(params["from"]),
        recipients=_recipients(params.get("to")),
        starttls=bool(params.get("starttls", False)),
        ssl=bool(params.get("ssl", False)),
        user=params.get("smtp_user") or None,
        password=(env.get(password_env) or None) if password_env else None,
        timeout_s=float(params.get("timeout_s", 30)),
        subject_prefix=str(params.get("subject_prefix") or ""),
        max_attachment_bytes=int(float(params.get("max_attachment_mb", 10)) * 2**20),
    )


def settings_from_connection(conn: Any, base: SmtpSettings) -> SmtpSettings:
    """Overlay an Airflow SMTP connection (host, port, login, password, extras) on `base`.

    Recipients stay those of params.yaml: a connection says how to send, not to whom.
    """
    extra = dict(getattr(conn, "extra_dejson", None) or {})
    return replace(
        base,
        host=conn.host or base.host,
        port=int(conn.port or base.port),
        user=conn.login or base.user,
        password=conn.password or base.password,
        sender=extra.get("from_email") or base.sender,
        starttls=not _truthy(extra.get("disable_tls", not base.starttls)),
        ssl=not _truthy(extra.get("disable_ssl", not base.ssl)),
        timeout_s=float(extra.get("timeout", base.timeout_s)),
    )


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def airflow_connection(conn_id: str) -> Any:
    """Airflow's connection `conn_id` (from its secrets backends); LookupError when it is not defined."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException as exc:
        raise LookupError(f"Airflow connection {conn_id!r} is not defined") from exc


def settings_for_airflow(
    params: Mapping[str, Any],
    get_connection: Callable[[str], Any] = airflow_connection,
    env: Mapping[str, str] | None = None,
) -> SmtpSettings:
    """Settings inside an Airflow task: the SMTP connection when defined, else params.yaml.

    `get_connection(conn_id)` raises LookupError for a connection that is not defined.
    """
    base = settings_from_params(params, env)
    conn_id = params.get("airflow_conn_id")
    if not conn_id:
        return base
    try:
        conn = get_connection(conn_id)
    except LookupError as exc:
        log.info("%s; using params.yaml alerts settings", exc)
        return base
    return settings_from_connection(conn, base)


def build_message(
    subject: str,
    body: str,
    settings: SmtpSettings,
    attachments: Sequence[str | Path] = (),
    links: Sequence[str] = (),
) -> EmailMessage:
    """A plain-text message; files over the size limit are linked (absolute file URI) instead of attached."""
    linked = list(links)
    attached: list[Path] = []
    for item in attachments:
        path = Path(item)
        if not path.is_file():
            raise AlertError(f"attachment not found: {path}")
        if path.stat().st_size > settings.max_attachment_bytes:
            linked.append(path.resolve().as_uri())
        else:
            attached.append(path)
    text = body.rstrip() + "\n"
    if linked:
        text += "\nReports:\n" + "".join(f"  {link}\n" for link in linked)

    msg = EmailMessage()
    msg["Subject"] = f"{settings.subject_prefix} {subject}".strip()
    msg["From"] = settings.sender
    msg["To"] = ", ".join(settings.recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or None)
    msg.set_content(text)
    for path in attached:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return msg


def send_message(msg: EmailMessage, settings: SmtpSettings) -> None:
    """Deliver `msg` to `settings.recipients`; connection and protocol failures raise AlertError."""
    where = f"{settings.host}:{settings.port}"
    try:
        if settings.ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=settings.timeout_s, context=ssl_lib.create_default_context()
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
        with client:
            if settings.starttls:
                client.starttls(context=ssl_lib.create_default_context())
            if settings.user:
                if not settings.password:
                    raise AlertError(f"SMTP user {settings.user!r} set but no password in the environment")
                client.login(settings.user, settings.password)
            refused = client.send_message(msg, to_addrs=list(settings.recipients))
    except (OSError, smtplib.SMTPException) as exc:
        raise AlertError(f"could not send alert through {where}: {exc}") from exc
    if refused:
        raise AlertError(f"SMTP server {where} refused recipients: {sorted(refused)}")


def send_alert(
    subject: str,
    body: str,
    settings: SmtpSettings,
    attachments: Sequence[str | Path] = (),
    links: Sequence[str] = (),
) -> EmailMessage:
    """Build and send one alert; returns the message sent."""
    msg = build_message(subject, body, settings, attachments, links)
    send_message(msg, settings)
    log.info("alert %r sent to %s", msg["Subject"], ", ".join(settings.recipients))
    return msg


def deliver_alert(
    subject: str,
    body: str,
    settings: SmtpSettings,
    attachments: Sequence[str | Path] = (),
) -> str | None:
    """Send one alert from inside a pipeline run: None when it was delivered, else one line saying why not.

    A run's outcome never depends on mail: with no reachable server the caller logs that line and goes on
    (no retries that keep a finished run busy for half an hour; the SMTP timeout bounds the wait).
    """
    try:
        send_alert(subject, body, settings, attachments)
    except AlertError as exc:
        return f"alert {subject!r} not sent: {exc}"
    return None


def run_failed(context: Mapping[str, Any]) -> None:
    """Airflow DAG `on_failure_callback`: a run failed, including one stopped by its `dagrun_timeout`
    (the SLA-like bound Airflow 3 offers), so somebody hears of it."""
    from pipelines.flows import params_file

    dag_run = context.get("dag_run")
    dag_id = getattr(dag_run, "dag_id", None) or context.get("dag", {}).get("dag_id", "?")
    lines = [
        f"DAG {dag_id} run {getattr(dag_run, 'run_id', '?')} failed.",
        f"logical date: {getattr(dag_run, 'logical_date', None)}",
        f"reason: {context.get('reason') or 'a task failed after its retries'}",
    ]
    ti = context.get("ti") or context.get("task_instance")
    if ti is not None:
        lines.append(f"task: {getattr(ti, 'task_id', ti)}")
    params = load_params("alerts", params_file())
    try:
        settings = settings_for_airflow(params)
    except AlertError as exc:
        log.error("alert 'run failed: %s' not sent: %s", dag_id, exc)
        return
    failure = deliver_alert(f"run failed: {dag_id}", "\n".join(lines), settings)
    if failure:
        log.error("%s", failure)


def main(argv: list[str] | None = None) -> int:
    parser = step_parser("alert", __doc__)
    parser.add_argument("--subject", required=True)
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", help="the summary text")
    body.add_argument("--body-file", type=Path, help="read the summary text from this file")
    parser.add_argument("--attach", type=Path, action="append", default=[], help="a report file (repeatable)")
    parser.add_argument("--link", action="append", default=[], help="a report URL (repeatable)")
    args, config = parse_step(parser, argv)

    text = args.body if args.body is not None else args.body_file.read_text()
    try:
        settings = settings_from_params(config["alerts"])
        msg = send_alert(args.subject, text, settings, args.attach, args.link)
    except AlertError as exc:
        parser.exit(1, f"newsrec alert: {exc}\n")
    print(f"sent {msg['Subject']!r} to {', '.join(settings.recipients)}")
    return 0
