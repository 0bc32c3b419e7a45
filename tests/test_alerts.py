"""Alert emails: settings resolution (unit) and delivery to a real SMTP server on loopback (integration)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipelines import alerts
from pipelines.config import load_params


def _params(sink=None, **over):
    params = load_params("alerts")
    if sink is not None:
        params.update(smtp_host=sink.host, smtp_port=sink.port)
    params.update(over)
    return params


@pytest.mark.unit
def test_password_comes_from_the_environment_only():
    params = _params(smtp_user="bot", password_env="TEST_SMTP_PW", to="a@x.org, b@x.org")
    settings = alerts.settings_from_params(params, env={"TEST_SMTP_PW": "s3cret"})
    assert settings.password == "s3cret"
    assert settings.recipients == ("a@x.org", "b@x.org")
    assert alerts.settings_from_params(params, env={}).password is None


@pytest.mark.unit
def test_bad_settings_are_refused_with_a_clear_error():
    with pytest.raises(alerts.AlertError, match="no alert recipients"):
        alerts.settings_from_params(_params(to=[]), env={})
    with pytest.raises(alerts.AlertError, match="not a TCP port"):
        alerts.settings_from_params(_params(smtp_port=0), env={})
    with pytest.raises(alerts.AlertError, match="STARTTLS or implicit SSL"):
        alerts.settings_from_params(_params(starttls=True, ssl=True), env={})


@pytest.mark.unit
def test_airflow_connection_overrides_transport_but_not_recipients():
    conn = SimpleNamespace(
        host="mail.example.org",
        port=587,
        login="bot",
        password="pw",
        extra_dejson={"from_email": "airflow@example.org", "disable_tls": False, "disable_ssl": True},
    )
    settings = alerts.settings_for_airflow(_params(), get_connection=lambda conn_id: conn, env={})
    assert (settings.host, settings.port, settings.user, settings.password) == ("mail.example.org", 587, "bot", "pw")
    assert settings.sender == "airflow@example.org"
    assert settings.starttls and not settings.ssl
    assert settings.recipients == tuple(load_params("alerts")["to"])


@pytest.mark.unit
def test_missing_airflow_connection_falls_back_to_params():
    def missing(conn_id):
        raise LookupError(f"The conn_id `{conn_id}` isn't defined")

    settings = alerts.settings_for_airflow(_params(), get_connection=missing, env={})
    assert settings == alerts.settings_from_params(_params(), env={})


@pytest.mark.unit
def test_big_reports_are_linked_not_attached(tmp_path):
    small, big = tmp_path / "summary.json", tmp_path / "report.html"
    small.write_text('{"drift_detected": true}')
    big.write_bytes(b"x" * 2048)
    settings = alerts.settings_from_params(_params(max_attachment_mb=1 / 1024), env={})
    msg = alerts.build_message("drift", "two columns drifted", settings, [small, big])
    names = [part.get_filename() for part in msg.iter_attachments()]
    assert names == ["summary.json"]
    assert big.resolve().as_uri() in msg.get_body(("plain",)).get_content()
    with pytest.raises(alerts.AlertError, match="attachment not found"):
        alerts.build_message("x", "y", settings, [tmp_path / "nope.html"])


@pytest.mark.integration
def test_alert_is_received_with_summary_and_report(smtp_sink, tmp_path):
    report = tmp_path / "report.html"
    report.write_text("<html><body>drift report</body></html>")
    settings = alerts.settings_from_params(_params(smtp_sink, to=["ops@example.org", "ml@example.org"]), env={})

    alerts.send_alert("drift detected", "3 of 10 columns drifted: click_os", settings, [report])

    assert len(smtp_sink.messages) == 1
    msg = smtp_sink.messages[0]
    assert msg["Subject"] == "[newsrec] drift detected"
    assert sorted(smtp_sink.envelopes[0].rcpt_tos) == ["ml@example.org", "ops@example.org"]
    assert "click_os" in msg.get_body(("plain",)).get_content()
    (attachment,) = msg.iter_attachments()
    assert attachment.get_filename() == "report.html"
    assert "drift report" in attachment.get_content()


@pytest.mark.integration
def test_cli_sends_through_params_file(smtp_sink, tmp_path, capsys):
    import yaml

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"alerts": _params(smtp_sink)}))
    rc = alerts.main(["--subject", "hello", "--body", "quarantined hour 7", "--params", str(params_file)])
    assert rc == 0
    assert "quarantined hour 7" in smtp_sink.messages[0].get_body(("plain",)).get_content()
    assert "sent '[newsrec] hello'" in capsys.readouterr().out


@pytest.mark.integration
def test_unreachable_server_is_a_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = alerts.settings_from_params(_params(smtp_host="127.0.0.1", smtp_port=port, timeout_s=2), env={})
    with pytest.raises(alerts.AlertError, match=f"could not send alert through 127.0.0.1:{port}"):
        alerts.send_alert("x", "y", settings)


@pytest.mark.integration
def test_inside_a_run_an_unreachable_server_is_one_line_not_an_error(tmp_path, monkeypatch, caplog):
    import socket

    import yaml

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = alerts.settings_from_params(_params(smtp_host="127.0.0.1", smtp_port=port), env={})
    line = alerts.deliver_alert("quarantined hourly drop 005", "y", settings)
    assert line.startswith("alert 'quarantined hourly drop 005' not sent: could not send alert through "
                           f"127.0.0.1:{port}") and "\n" not in line

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"alerts": _params(smtp_host="127.0.0.1", smtp_port=port,
                                                             airflow_conn_id=None)}))
    monkeypatch.setenv("NEWSREC_PARAMS", str(params_file))
    with caplog.at_level("ERROR", logger="pipelines.alerts"):
        alerts.run_failed({"dag_run": SimpleNamespace(dag_id="clicks_hourly", run_id="r", logical_date=None)})
    (record,) = caplog.records
    assert "run failed: clicks_hourly" in record.getMessage() and f"127.0.0.1:{port}" in record.getMessage()


@pytest.mark.integration
def test_failed_run_callback_emails_the_run_and_reason(smtp_sink, tmp_path, monkeypatch):
    import yaml

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"alerts": _params(smtp_sink, airflow_conn_id=None)}))
    monkeypatch.setenv("NEWSREC_PARAMS", str(params_file))
    run = SimpleNamespace(dag_id="train_ranker", run_id="scheduled__2024-01-02T00:00:00+00:00",
                          logical_date="2024-01-02T00:00:00+00:00")
    alerts.run_failed({"dag_run": run, "reason": "timed_out"})
    msg = smtp_sink.messages[0]
    assert msg["Subject"] == "[newsrec] run failed: train_ranker"
    body = msg.get_body(("plain",)).get_content()
    assert "scheduled__2024-01-02T00:00:00+00:00" in body and "reason: timed_out" in body
