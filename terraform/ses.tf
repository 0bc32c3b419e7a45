# Drift and quarantine alerts leave through SES: a DKIM-signed domain identity, a configuration set that
# refuses unencrypted delivery, and SMTP credentials for a user that may only send as that domain.
resource "aws_sesv2_email_identity" "domain" {
  email_identity         = var.domain_name
  configuration_set_name = aws_sesv2_configuration_set.alerts.configuration_set_name

  dkim_signing_attributes {
    next_signing_key_length = "RSA_2048_BIT"
  }
}

resource "aws_sesv2_configuration_set" "alerts" {
  configuration_set_name = "${local.name}-alerts"

  delivery_options {
    tls_policy = "REQUIRE"
  }

  reputation_options {
    reputation_metrics_enabled = true
  }

  sending_options {
    sending_enabled = true
  }
}

resource "aws_iam_group" "ses_smtp" {
  name = "${local.name}-ses-smtp"
}

data "aws_iam_policy_document" "ses_send" {
  statement {
    sid       = "SendAsTheStackDomainOnly"
    actions   = ["ses:SendRawEmail", "ses:SendEmail"]
    resources = [aws_sesv2_email_identity.domain.arn, aws_sesv2_configuration_set.alerts.arn]
    condition {
      test     = "StringLike"
      variable = "ses:FromAddress"
      values   = ["*@${var.domain_name}"]
    }
  }
}

resource "aws_iam_group_policy" "ses_send" {
  name   = "ses-send"
  group  = aws_iam_group.ses_smtp.name
  policy = data.aws_iam_policy_document.ses_send.json
}

# SMTP needs a key pair: SES derives the SMTP password from an IAM user's secret key. The user can only
# send mail (group policy above) and its key lives in Secrets Manager as Airflow's SMTP connection.
resource "aws_iam_user" "ses_smtp" {
  #checkov:skip=CKV_AWS_273:SES SMTP passwords derive from an IAM user's access key; SSO cannot issue them. The user can only send mail.
  name = "${local.name}-ses-smtp"
}

resource "aws_iam_user_group_membership" "ses_smtp" {
  user   = aws_iam_user.ses_smtp.name
  groups = [aws_iam_group.ses_smtp.name]
}

resource "aws_iam_access_key" "ses_smtp" {
  user = aws_iam_user.ses_smtp.name
}

resource "aws_secretsmanager_secret" "smtp_connection" {
  #checkov:skip=CKV2_AWS_57:SES SMTP keys are rotated by re-creating aws_iam_access_key.ses_smtp (terraform apply -replace), which rewrites this secret; see the runbook.
  name                    = "${local.name}/airflow/connections/smtp_default"
  description             = "Airflow SMTP connection for alert emails (SES SMTP, STARTTLS on 587)"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "smtp_connection" {
  secret_id = aws_secretsmanager_secret.smtp_connection.id
  secret_string = jsonencode({
    conn_type = "smtp"
    host      = "email-smtp.${var.region}.amazonaws.com"
    port      = 587
    login     = aws_iam_access_key.ses_smtp.id
    password  = aws_iam_access_key.ses_smtp.ses_smtp_password_v4
    extra = {
      from_email  = "newsrec-alerts@${var.domain_name}"
      disable_ssl = true
      disable_tls = false
    }
  })
}
